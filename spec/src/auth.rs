//! Capability tokens: the format every server checks when it runs with a root key.
//!
//! A token is a [biscuit](https://www.biscuitsec.org/) (ed25519 signatures, offline
//! attenuation) signed by the network's root key. Its first (authority) block holds:
//!
//! - `subject("<name>")`: who holds it; servers record it as the owner of what the
//!   holder creates (broker registrations, pins, unsigned slots);
//! - one `right("<role>:<action>")` per right, where either side may be `*`
//!   (`storage:*`, `*:read`, `*` for an operator);
//! - optionally `quota(<bytes>)`: how many bytes the subject may add to one storage
//!   server;
//! - optionally `check if time($t), $t <= <date>`: the expiry.
//!
//! A holder narrows a token without the root key ([`attenuate`]): the appended block
//! holds checks only (`check if operation(..) or role(..) ...` and an earlier expiry),
//! and a later block's facts are never trusted by the authorizer (biscuit scoping), so
//! attenuation can only take rights away.
//!
//! A server authorizes a request for the operation `<role>:<action>` by giving the
//! authorizer the facts `operation`, `role`, `action`, `time` and the four wildcard
//! spellings of the operation as `wanted(..)`, with the single policy
//! `allow if wanted($w), right($w)`. See `spec/security.md` for the rights of every
//! route.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{AuthorizerBuilder, BlockBuilder, Term};
use biscuit_auth::{Biscuit, KeyPair, PrivateKey, PublicKey};

/// The role names a right may start with (besides `*`).
pub const ROLES: [&str; 8] = [
    "storage",
    "slots",
    "broker",
    "find",
    "files",
    "productions",
    "names",
    "distributor",
];

/// Errors of token handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A right is not `<role>:<action>` with a known role (or `*`).
    #[error("invalid right {0:?}: expected <role>:<action> (role one of {roles} or *; action letters, or *)", roles = ROLES.join(", "))]
    InvalidRight(String),
    /// A subject name is empty or has characters outside `[A-Za-z0-9._@:-]`.
    #[error("invalid subject {0:?}: 1 to 128 characters of A-Z a-z 0-9 . _ @ : -")]
    InvalidSubject(String),
    /// A key file or key text cannot be read.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The token is not a biscuit signed by the expected root (or is malformed).
    #[error("token not valid for this network: {0}")]
    InvalidToken(String),
    /// The token is valid but does not allow the operation (missing right, expired,
    /// or narrowed away by attenuation).
    #[error("token does not allow {operation}: {reason}")]
    Denied {
        /// The operation asked for.
        operation: String,
        /// Why (expired, missing right, ...).
        reason: String,
    },
    /// The token library failed while building a token.
    #[error("token error: {0}")]
    Token(String),
}

fn token_error(e: biscuit_auth::error::Token) -> AuthError {
    AuthError::Token(e.to_string())
}

/// One right: a role (or `*`) and an action (or `*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Right {
    role: String,
    action: String,
}

impl Right {
    /// `role:action`; `role` one of [`ROLES`] or `*`, `action` lower-case letters or `*`.
    pub fn new(role: &str, action: &str) -> Result<Right, AuthError> {
        let text = format!("{role}:{action}");
        let role_ok = role == "*" || ROLES.contains(&role);
        let action_ok = action == "*"
            || (!action.is_empty()
                && action.len() <= 32
                && action.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        if role_ok && action_ok {
            Ok(Right {
                role: role.to_string(),
                action: action.to_string(),
            })
        } else {
            Err(AuthError::InvalidRight(text))
        }
    }

    /// The operator right `*` (every role, every action).
    pub fn all() -> Right {
        Right {
            role: "*".into(),
            action: "*".into(),
        }
    }

    /// The role part.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The action part.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// Whether this right (possibly a wildcard) covers the operation `op`.
    pub fn covers(&self, op: &Right) -> bool {
        (self.role == "*" || self.role == op.role)
            && (self.action == "*" || self.action == op.action)
    }

    /// The spelling stored in tokens: `*` for the operator right, else `role:action`.
    fn token_text(&self) -> String {
        if self.role == "*" && self.action == "*" {
            "*".into()
        } else {
            format!("{}:{}", self.role, self.action)
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.token_text())
    }
}

impl FromStr for Right {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Right, AuthError> {
        let s = s.trim();
        if s == "*" {
            return Ok(Right::all());
        }
        match s.split_once(':') {
            Some((role, action)) => Right::new(role, action),
            None => Err(AuthError::InvalidRight(s.to_string())),
        }
    }
}

/// Parses `a,b,c` into rights.
pub fn parse_rights(list: &str) -> Result<Vec<Right>, AuthError> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Right::from_str)
        .collect()
}

fn check_subject(subject: &str) -> Result<(), AuthError> {
    let ok = !subject.is_empty()
        && subject.len() <= 128
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidSubject(subject.to_string()))
    }
}

/// The network's root key pair (ed25519). Its public half is what servers are given
/// with `--auth-root-key`.
pub struct RootKey {
    pair: KeyPair,
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootKey({})", self.pair.public())
    }
}

impl RootKey {
    /// A new random root key.
    pub fn generate() -> RootKey {
        RootKey {
            pair: KeyPair::new(),
        }
    }

    /// Reads the private key text written by [`RootKey::private_text`]
    /// (`ed25519-private/<hex>`).
    pub fn from_private_text(text: &str) -> Result<RootKey, AuthError> {
        let key =
            PrivateKey::from_str(text.trim()).map_err(|e| AuthError::InvalidKey(e.to_string()))?;
        Ok(RootKey {
            pair: KeyPair::from(&key),
        })
    }

    /// The private key as text (`ed25519-private/<hex>`); keep it in a 0600 file.
    pub fn private_text(&self) -> String {
        self.pair.private().to_prefixed_string()
    }

    /// The public key as text (`ed25519/<hex>`): the content of a root public key file.
    pub fn public_text(&self) -> String {
        self.pair.public().to_string()
    }

    /// The public key.
    pub fn public(&self) -> RootPublicKey {
        RootPublicKey(self.pair.public())
    }

    /// Issues a token.
    pub fn issue(&self, grant: &Grant) -> Result<String, AuthError> {
        check_subject(&grant.subject)?;
        let mut code = String::new();
        let mut params: HashMap<String, Term> = HashMap::new();
        code.push_str("subject({subject});\n");
        params.insert("subject".into(), Term::Str(grant.subject.clone()));
        for (i, right) in grant.rights.iter().enumerate() {
            code.push_str(&format!("right({{r{i}}});\n"));
            params.insert(format!("r{i}"), Term::Str(right.token_text()));
        }
        if let Some(quota) = grant.quota {
            code.push_str("quota({quota});\n");
            let quota = i64::try_from(quota).unwrap_or(i64::MAX);
            params.insert("quota".into(), Term::Integer(quota));
        }
        if let Some(expires) = grant.expires {
            code.push_str("check if time($t), $t <= {expires};\n");
            params.insert("expires".into(), Term::from(expires));
        }
        let builder = Biscuit::builder()
            .code_with_params(code, params, HashMap::new())
            .map_err(token_error)?;
        let token = builder.build(&self.pair).map_err(token_error)?;
        token.to_base64().map_err(token_error)
    }
}

/// The network root's public key: what a server verifies tokens against.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RootPublicKey(PublicKey);

impl fmt::Debug for RootPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootPublicKey({})", self.0)
    }
}

impl fmt::Display for RootPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for RootPublicKey {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<RootPublicKey, AuthError> {
        PublicKey::from_str(s.trim())
            .map(RootPublicKey)
            .map_err(|e| AuthError::InvalidKey(e.to_string()))
    }
}

/// What a new token grants.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Who holds it.
    pub subject: String,
    /// Its rights.
    pub rights: Vec<Right>,
    /// When it stops being valid (none: never).
    pub expires: Option<SystemTime>,
    /// Bytes the subject may add to one storage server.
    pub quota: Option<u64>,
}

/// Narrows `token` to `rights` (each must be covered by what the token already has
/// for the narrowing to mean anything: attenuation never adds rights) and an earlier
/// expiry. Needs no key: the holder does it offline.
pub fn attenuate(
    token: &str,
    root: RootPublicKey,
    rights: Option<&[Right]>,
    expires: Option<SystemTime>,
) -> Result<String, AuthError> {
    let biscuit = Biscuit::from_base64(token.trim(), root.0)
        .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
    let narrowed = biscuit
        .append(narrowing_block(rights, expires)?)
        .map_err(token_error)?;
    narrowed.to_base64().map_err(token_error)
}

/// [`attenuate`] without checking the token's signatures first (the root public key is
/// not needed). The result is exactly as valid as `token`: a server still verifies the
/// whole chain. For holders that do not know the root key, such as the conformance
/// suite deriving narrower tokens from the one it was given.
pub fn attenuate_unverified(
    token: &str,
    rights: Option<&[Right]>,
    expires: Option<SystemTime>,
) -> Result<String, AuthError> {
    let biscuit = biscuit_auth::UnverifiedBiscuit::from_base64(token.trim())
        .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
    let narrowed = biscuit
        .append(narrowing_block(rights, expires)?)
        .map_err(token_error)?;
    narrowed.to_base64().map_err(token_error)
}

/// The block an attenuation appends: checks only (`operation`/`role`/`action`
/// alternatives for `rights`, and the expiry).
fn narrowing_block(
    rights: Option<&[Right]>,
    expires: Option<SystemTime>,
) -> Result<BlockBuilder, AuthError> {
    let mut block = BlockBuilder::new();
    if let Some(rights) = rights {
        let mut params: HashMap<String, Term> = HashMap::new();
        let mut alternatives = Vec::new();
        for (i, right) in rights.iter().enumerate() {
            let name = format!("a{i}");
            let clause = match (right.role.as_str(), right.action.as_str()) {
                ("*", "*") => "true".to_string(),
                ("*", action) => {
                    params.insert(name.clone(), Term::Str(action.into()));
                    format!("action({{{name}}})")
                }
                (role, "*") => {
                    params.insert(name.clone(), Term::Str(role.into()));
                    format!("role({{{name}}})")
                }
                _ => {
                    params.insert(name.clone(), Term::Str(right.token_text()));
                    format!("operation({{{name}}})")
                }
            };
            alternatives.push(clause);
        }
        if alternatives.is_empty() {
            alternatives.push("false".into());
        }
        let code = format!("check if {};", alternatives.join(" or "));
        block = block
            .code_with_params(code, params, HashMap::new())
            .map_err(token_error)?;
    }
    if let Some(expires) = expires {
        let mut params: HashMap<String, Term> = HashMap::new();
        params.insert("expires".into(), Term::from(expires));
        block = block
            .code_with_params(
                "check if time($t), $t <= {expires};",
                params,
                HashMap::new(),
            )
            .map_err(token_error)?;
    }
    Ok(block)
}

/// What a verified token says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenFacts {
    /// The authority block's subject.
    pub subject: String,
    /// The authority block's rights (before attenuation).
    pub rights: Vec<Right>,
    /// The authority block's quota, if any.
    pub quota: Option<u64>,
}

/// A token whose signatures chain to the root: ready to authorize operations.
#[derive(Clone)]
pub struct VerifiedToken {
    biscuit: Biscuit,
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("blocks", &self.biscuit.block_count())
            .finish()
    }
}

/// Authorizer limits: generous enough for a loaded machine, small enough that a
/// hostile token cannot make a server think for long.
fn limits() -> biscuit_auth::AuthorizerLimits {
    biscuit_auth::AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(100),
    }
}

impl VerifiedToken {
    /// Checks the signatures of `token` against `root`.
    pub fn verify(token: &str, root: RootPublicKey) -> Result<VerifiedToken, AuthError> {
        let biscuit = Biscuit::from_base64(token.trim(), root.0)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        Ok(VerifiedToken { biscuit })
    }

    /// Authorizes the operation `op` (a concrete `role:action`) at time `now`;
    /// returns the authority block's facts.
    pub fn authorize(&self, op: &Right, now: SystemTime) -> Result<TokenFacts, AuthError> {
        let denied = |reason: String| AuthError::Denied {
            operation: op.to_string(),
            reason,
        };
        let mut params: HashMap<String, Term> = HashMap::new();
        params.insert("op".into(), Term::Str(op.token_text()));
        params.insert("role".into(), Term::Str(op.role.clone()));
        params.insert("action".into(), Term::Str(op.action.clone()));
        params.insert("w1".into(), Term::Str(format!("{}:*", op.role)));
        params.insert("w2".into(), Term::Str(format!("*:{}", op.action)));
        params.insert("now".into(), Term::from(now));
        let code = "operation({op}); role({role}); action({action}); time({now});\n\
                    wanted({op}); wanted({w1}); wanted({w2}); wanted(\"*\");\n\
                    allow if wanted($w), right($w);";
        let mut authorizer = AuthorizerBuilder::new()
            .code_with_params(code, params, HashMap::new())
            .map_err(token_error)?
            .set_limits(limits())
            .build(&self.biscuit)
            .map_err(|e| denied(e.to_string()))?;
        if let Err(e) = authorizer.authorize() {
            let reason = match e {
                biscuit_auth::error::Token::FailedLogic(logic) => describe_failure(&logic),
                other => other.to_string(),
            };
            return Err(denied(reason));
        }
        facts(&mut authorizer).map_err(|e| denied(e.to_string()))
    }

    /// The authority block's facts without authorizing anything (for `inspect`).
    pub fn facts(&self) -> Result<TokenFacts, AuthError> {
        let mut authorizer = AuthorizerBuilder::new()
            .set_limits(limits())
            .build(&self.biscuit)
            .map_err(token_error)?;
        facts(&mut authorizer).map_err(token_error)
    }

    /// The token's blocks as datalog source, block by block (for `inspect`).
    pub fn describe(&self) -> Vec<String> {
        (0..self.biscuit.block_count())
            .map(|i| {
                self.biscuit
                    .print_block_source(i)
                    .unwrap_or_else(|e| format!("<unreadable block: {e}>"))
            })
            .collect()
    }
}

fn describe_failure(logic: &biscuit_auth::error::Logic) -> String {
    use biscuit_auth::error::{FailedCheck, Logic};
    match logic {
        Logic::Unauthorized { checks, .. } if !checks.is_empty() => {
            let failed: Vec<String> = checks
                .iter()
                .map(|c| match c {
                    FailedCheck::Block(b) if b.rule.contains("time(") => {
                        "the token has expired".to_string()
                    }
                    FailedCheck::Block(b) => format!("narrowed away ({})", b.rule),
                    FailedCheck::Authorizer(a) => a.rule.clone(),
                })
                .collect();
            failed.join("; ")
        }
        Logic::Unauthorized { .. } | Logic::NoMatchingPolicy { .. } => {
            "the token has no such right".to_string()
        }
        other => format!("{other:?}"),
    }
}

fn facts(
    authorizer: &mut biscuit_auth::Authorizer,
) -> Result<TokenFacts, biscuit_auth::error::Token> {
    let subjects: Vec<(String,)> = authorizer.query("data($s) <- subject($s)")?;
    let rights: Vec<(String,)> = authorizer.query("data($r) <- right($r)")?;
    let quotas: Vec<(i64,)> = authorizer.query("data($q) <- quota($q)")?;
    let subject = subjects.into_iter().next().map(|s| s.0).unwrap_or_default();
    let mut rights: Vec<Right> = rights
        .into_iter()
        .filter_map(|(r,)| Right::from_str(&r).ok())
        .collect();
    rights.sort();
    let quota = quotas
        .into_iter()
        .filter_map(|(q,)| u64::try_from(q).ok())
        .min();
    Ok(TokenFacts {
        subject,
        rights,
        quota,
    })
}

/// Parses a duration such as `90s`, `30m`, `12h`, `7d`, `1y` (a bare number is
/// seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 90s, 30m, 12h, 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {text:?}: use s, m, h, d, w or y"
            ));
        }
    };
    n.checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(s: &str) -> Right {
        s.parse().expect("right")
    }

    fn grant(rights: &str) -> Grant {
        Grant {
            subject: "alice".into(),
            rights: parse_rights(rights).expect("rights"),
            expires: None,
            quota: None,
        }
    }

    #[test]
    fn rights_parse_and_refuse_junk() {
        assert_eq!(op("storage:write").to_string(), "storage:write");
        assert_eq!(op("*").to_string(), "*");
        assert_eq!(op("*:read").role(), "*");
        for bad in [
            "storage",
            "nope:write",
            "storage:",
            "storage:Write",
            ":x",
            "a:b:c",
        ] {
            assert!(Right::from_str(bad).is_err(), "{bad}");
        }
        assert!(op("storage:*").covers(&op("storage:write")));
        assert!(!op("storage:*").covers(&op("slots:write")));
        assert!(op("*:read").covers(&op("slots:read")));
    }

    #[test]
    fn a_token_allows_exactly_its_rights() {
        let root = RootKey::generate();
        let token = root
            .issue(&grant("storage:write,slots:*,*:read"))
            .expect("issue");
        let verified = VerifiedToken::verify(&token, root.public()).expect("verify");
        let now = SystemTime::now();
        for allowed in [
            "storage:write",
            "slots:write",
            "slots:register",
            "names:read",
        ] {
            let facts = verified.authorize(&op(allowed), now).expect(allowed);
            assert_eq!(facts.subject, "alice");
        }
        for refused in ["storage:delete", "names:write", "distributor:pin"] {
            let err = verified.authorize(&op(refused), now).expect_err(refused);
            assert!(matches!(err, AuthError::Denied { .. }), "{refused}: {err}");
        }
    }

    #[test]
    fn the_operator_right_allows_everything() {
        let root = RootKey::generate();
        let token = root.issue(&grant("*")).expect("issue");
        let verified = VerifiedToken::verify(&token, root.public()).expect("verify");
        verified
            .authorize(&op("distributor:admin"), SystemTime::now())
            .expect("operator");
    }

    #[test]
    fn expiry_is_enforced() {
        let root = RootKey::generate();
        let mut g = grant("storage:write");
        let now = SystemTime::now();
        g.expires = Some(now + Duration::from_secs(60));
        let token = root.issue(&g).expect("issue");
        let verified = VerifiedToken::verify(&token, root.public()).expect("verify");
        verified
            .authorize(&op("storage:write"), now)
            .expect("valid now");
        let err = verified
            .authorize(&op("storage:write"), now + Duration::from_secs(61))
            .expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn a_foreign_root_is_refused() {
        let root = RootKey::generate();
        let other = RootKey::generate();
        let token = other.issue(&grant("*")).expect("issue");
        assert!(matches!(
            VerifiedToken::verify(&token, root.public()),
            Err(AuthError::InvalidToken(_))
        ));
        assert!(VerifiedToken::verify("garbage", root.public()).is_err());
    }

    #[test]
    fn attenuation_only_narrows() {
        let root = RootKey::generate();
        let token = root.issue(&grant("storage:*,slots:write")).expect("issue");
        let narrowed =
            attenuate(&token, root.public(), Some(&[op("storage:read")]), None).expect("attenuate");
        let verified = VerifiedToken::verify(&narrowed, root.public()).expect("verify");
        let now = SystemTime::now();
        verified.authorize(&op("storage:read"), now).expect("kept");
        assert!(verified.authorize(&op("storage:write"), now).is_err());
        assert!(verified.authorize(&op("slots:write"), now).is_err());
        // Asking for more than the token has adds nothing.
        let wider = attenuate(&token, root.public(), Some(&[Right::all()]), None).expect("x");
        let verified = VerifiedToken::verify(&wider, root.public()).expect("verify");
        assert!(verified.authorize(&op("names:write"), now).is_err());
        // An earlier expiry in an attenuated block is enforced.
        let short = attenuate(
            &token,
            root.public(),
            None,
            Some(now + Duration::from_secs(5)),
        )
        .expect("x");
        let verified = VerifiedToken::verify(&short, root.public()).expect("verify");
        verified.authorize(&op("slots:write"), now).expect("now");
        assert!(
            verified
                .authorize(&op("slots:write"), now + Duration::from_secs(6))
                .is_err()
        );
    }

    #[test]
    fn unverified_attenuation_narrows_like_attenuate() {
        let root = RootKey::generate();
        let token = root.issue(&grant("*")).expect("issue");
        let now = SystemTime::now();
        let narrowed =
            attenuate_unverified(&token, Some(&[op("storage:read")]), None).expect("narrow");
        let verified = VerifiedToken::verify(&narrowed, root.public()).expect("verify");
        verified.authorize(&op("storage:read"), now).expect("kept");
        assert!(verified.authorize(&op("storage:write"), now).is_err());
        let expired = attenuate_unverified(&token, None, Some(now - Duration::from_secs(60)))
            .expect("expire");
        let verified = VerifiedToken::verify(&expired, root.public()).expect("verify");
        let err = verified
            .authorize(&op("storage:read"), now)
            .expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
        assert!(attenuate_unverified("garbage", None, None).is_err());
    }

    #[test]
    fn facts_are_read_from_the_authority_block() {
        let root = RootKey::generate();
        let mut g = grant("storage:write");
        g.quota = Some(1 << 20);
        let token = root.issue(&g).expect("issue");
        let verified = VerifiedToken::verify(&token, root.public()).expect("verify");
        let facts = verified.facts().expect("facts");
        assert_eq!(facts.subject, "alice");
        assert_eq!(facts.quota, Some(1 << 20));
        assert_eq!(facts.rights, vec![op("storage:write")]);
        assert!(verified.describe()[0].contains("subject(\"alice\")"));
    }

    #[test]
    fn keys_round_trip_as_text() {
        let root = RootKey::generate();
        let again = RootKey::from_private_text(&root.private_text()).expect("private");
        assert_eq!(again.public(), root.public());
        let public: RootPublicKey = root.public_text().parse().expect("public");
        assert_eq!(public, root.public());
        assert!(RootPublicKey::from_str("ed25519/zz").is_err());
    }

    #[test]
    fn subjects_are_checked() {
        let root = RootKey::generate();
        let mut g = grant("*");
        g.subject = "bad subject".into();
        assert!(matches!(root.issue(&g), Err(AuthError::InvalidSubject(_))));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5q").is_err());
    }
}
