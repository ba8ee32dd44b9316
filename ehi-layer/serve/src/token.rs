//! Bearer tokens of `ehi serve` and SMART App Launch v2 scopes.
//!
//! ## Design
//! A token is self-contained and keyed to the vault: `ehi1.<claims>.<tag>` where
//! `<claims>` is base64url JSON `{v, patient, scope, iat, exp, jti, grant?,
//! launch_patient?}` and `<tag>` is
//! base64url `BLAKE3-keyed(K, "ehi1." ‖ claims)` with
//! `K = derive_key("invariant ehi-layer v1 serve tokens", root key)` from the keystore.
//! So `ehi token` mints tokens without talking to the server, tokens survive a restart
//! of `ehi serve`, and no token is stored anywhere (not even in memory). Checking a
//! tag compares BLAKE3 hashes in constant time.
//!
//! - The **patient token** (`patient: true`) sees and writes everything.
//! - **App tokens** carry SMART v2 scopes: `patient/Observation.rs`, `patient/*.r`,
//!   `user/…` and `system/…` alike (the vault holds one patient), the v1 forms
//!   `.read` (= `rs`), `.write` (= `cud`) and `.*` (= `cruds`). Other scopes (`openid`,
//!   `fhirUser`, `launch/patient`, `offline_access`) are ignored; granular scopes with
//!   `?param=value` are refused when minting.
//!
//! - **Grant tokens** (`ehi token <grant>`, or the authorization-code flow of
//!   [`super::oauth`]) carry the grant id (`grant` claim) and the grant's SMART v2
//!   scopes ([`ehi_vault::grant::smart_scopes`]); they expire no later than the grant. On
//!   every request the facade checks the grant against the vault's current grant list
//!   (an in-memory map refreshed with the vault, see [`super::auth`]): a revoked or
//!   expired grant makes its tokens 401. A grant token sees only the resources kept
//!   in the grant's scopes, and, when it carries a patient context
//!   (`launch_patient`, the `patient` of the `/token` answer), only that patient's
//!   compartment ([`super`] module docs, "Confinement").
//!
//! **Revoking one token**: `ehi token revoke <jti|token>` appends the token id to a
//! file beside the keystore ([`revoked_tokens_path`]); `ehi serve` re-reads that file
//! when it changes (polled every [`super::REVOKED_POLL`]) and refuses listed tokens
//! with 401. The list holds random ids only. Tokens stay stateless otherwise: no token
//! is stored, so a lost revocation file un-revokes its tokens until they expire — keep
//! expiries short (`--expires 1h`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::error::ServeError;
use ehi_vault::grant::GrantInfo;
use ehi_vault::keys::{SecretKey, random_bytes};
use ehi_vault::keystore::Keystore;

/// BLAKE3 derive_key context of the token key.
pub const CONTEXT_TOKEN: &str = "invariant ehi-layer v1 serve tokens";

const PREFIX: &str = "ehi1.";

/// The key that mints and checks tokens (derived from the keystore's root key).
#[derive(Clone, Debug)]
pub struct TokenKey(SecretKey);

/// What a token says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Claims format (1).
    pub v: u8,
    /// The patient's own token: everything is allowed.
    pub patient: bool,
    /// SMART scopes, space-separated (empty for the patient token).
    pub scope: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Random token id (hex).
    pub jti: String,
    /// The grant the token is bound to (`ehi token <grant>` or the authorization-code
    /// flow): the facade refuses it once the grant is revoked or expired. Absent in
    /// patient tokens and in tokens minted from bare scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// The SMART launch context: the id of the Patient whose compartment the token is
    /// confined to (what `/token` answers as `patient`). Set on grant tokens minted by
    /// `ehi token <grant>` and the authorization-code flow; absent in patient tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_patient: Option<String>,
}

/// SMART v2 permissions of one scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perms {
    /// create
    pub c: bool,
    /// read
    pub r: bool,
    /// update
    pub u: bool,
    /// delete
    pub d: bool,
    /// search
    pub s: bool,
}

/// An interaction a scope may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perm {
    /// `c`
    Create,
    /// `r`
    Read,
    /// `u`
    Update,
    /// `d`
    Delete,
    /// `s`
    Search,
}

impl Perms {
    fn allows(&self, perm: Perm) -> bool {
        match perm {
            Perm::Create => self.c,
            Perm::Read => self.r,
            Perm::Update => self.u,
            Perm::Delete => self.d,
            Perm::Search => self.s,
        }
    }
}

/// One parsed resource scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeRule {
    /// The resource type, `None` for `*`.
    pub resource_type: Option<String>,
    /// What it allows.
    pub perms: Perms,
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// The patient: everything.
    Patient,
    /// An app with these scopes.
    App(Vec<ScopeRule>),
}

impl Access {
    /// Whether `perm` on `resource_type` is allowed.
    pub fn allows(&self, resource_type: &str, perm: Perm) -> bool {
        match self {
            Access::Patient => true,
            Access::App(rules) => rules.iter().any(|r| {
                r.resource_type
                    .as_deref()
                    .is_none_or(|t| t == resource_type)
                    && r.perms.allows(perm)
            }),
        }
    }

    /// [`Access::allows`] or a 403.
    pub fn require(&self, resource_type: &str, perm: Perm) -> Result<(), ServeError> {
        if self.allows(resource_type, perm) {
            Ok(())
        } else {
            Err(ServeError::Forbidden(format!(
                "the token's scopes do not allow {perm:?} on {resource_type}"
            )))
        }
    }

    /// Whether this is the patient's own token.
    pub fn is_patient(&self) -> bool {
        matches!(self, Access::Patient)
    }
}

/// Parses SMART scopes (space-separated); resource scopes become rules, other scopes
/// are ignored. Errors name the offending scope.
pub fn parse_scopes(scopes: &str) -> Result<Vec<ScopeRule>, String> {
    let mut rules = Vec::new();
    for scope in scopes.split_whitespace() {
        let Some((context, rest)) = scope.split_once('/') else {
            continue; // openid, fhirUser, offline_access, launch, …
        };
        if !matches!(context, "patient" | "user" | "system") {
            continue; // launch/patient, …
        }
        if rest.contains('?') {
            return Err(format!(
                "{scope}: granular scopes (?param=) are not supported"
            ));
        }
        let (resource, perms) = rest
            .split_once('.')
            .ok_or_else(|| format!("{scope}: expected context/Type.permissions"))?;
        let resource_type = if resource == "*" {
            None
        } else if ehi_search::supported_parameters(resource).is_some() {
            Some(resource.to_string())
        } else {
            return Err(format!("{scope}: {resource:?} is not an R4 resource type"));
        };
        let perms = match perms {
            "read" => Perms {
                r: true,
                s: true,
                ..Perms::default()
            },
            "write" => Perms {
                c: true,
                u: true,
                d: true,
                ..Perms::default()
            },
            "*" => Perms {
                c: true,
                r: true,
                u: true,
                d: true,
                s: true,
            },
            letters => {
                // SMART v2: a non-empty subsequence of "cruds", in that order.
                let mut p = Perms::default();
                let mut rest = "cruds";
                if letters.is_empty() {
                    return Err(format!("{scope}: no permissions"));
                }
                for ch in letters.chars() {
                    let Some(pos) = rest.find(ch) else {
                        return Err(format!(
                            "{scope}: permissions must be a subsequence of \"cruds\""
                        ));
                    };
                    rest = &rest[pos + ch.len_utf8()..];
                    match ch {
                        'c' => p.c = true,
                        'r' => p.r = true,
                        'u' => p.u = true,
                        'd' => p.d = true,
                        _ => p.s = true,
                    }
                }
                p
            }
        };
        rules.push(ScopeRule {
            resource_type,
            perms,
        });
    }
    Ok(rules)
}

impl TokenKey {
    /// The token key of `keystore`'s vault.
    pub fn from_keystore(keystore: &Keystore) -> TokenKey {
        TokenKey(keystore.root_key().derive(CONTEXT_TOKEN))
    }

    /// A key from raw bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> TokenKey {
        TokenKey(SecretKey::from_bytes(bytes))
    }

    fn tag(&self, signed: &str) -> blake3::Hash {
        blake3::keyed_hash(self.0.expose(), signed.as_bytes())
    }

    /// Mints a token for `claims`.
    pub fn mint(&self, claims: &Claims) -> Result<String, ServeError> {
        let json = serde_json::to_vec(claims).map_err(|e| ServeError::Token(e.to_string()))?;
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let tag = URL_SAFE_NO_PAD.encode(self.tag(&signed).as_bytes());
        Ok(format!("{signed}.{tag}"))
    }

    /// Mints the patient's token, valid for `ttl_s` seconds from `now_s`.
    pub fn mint_patient(&self, now_s: u64, ttl_s: u64) -> Result<String, ServeError> {
        self.mint(&new_claims(true, String::new(), now_s, ttl_s)?)
    }

    /// Mints an app token with SMART `scopes`, valid for `ttl_s` seconds.
    pub fn mint_app(&self, scopes: &str, now_s: u64, ttl_s: u64) -> Result<String, ServeError> {
        let rules = parse_scopes(scopes).map_err(ServeError::Token)?;
        if rules.is_empty() {
            return Err(ServeError::Token(format!(
                "no resource scope in {scopes:?} (e.g. patient/Observation.rs)"
            )));
        }
        self.mint(&new_claims(false, scopes.to_string(), now_s, ttl_s)?)
    }

    /// Mints a token bound to `grant`: its scopes are the grant's SMART v2 scopes
    /// ([`ehi_vault::grant::smart_scopes`], those naming a type the facade serves) narrowed
    /// to `requested` when given (scopes outside the grant are dropped; none left is an
    /// error), and it expires at the earlier of `now_s + ttl_s` and the grant's expiry.
    pub fn mint_grant(
        &self,
        grant: &GrantInfo,
        requested: Option<&str>,
        now_s: u64,
        ttl_s: u64,
    ) -> Result<(String, Claims), ServeError> {
        self.mint_grant_for(grant, requested, None, now_s, ttl_s)
    }

    /// [`TokenKey::mint_grant`] with a patient context: the token sees only the
    /// compartment of `Patient/<patient>` (and resources in no patient's compartment)
    /// on every interaction ([`super`] module docs, "Confinement").
    pub fn mint_grant_for(
        &self,
        grant: &GrantInfo,
        requested: Option<&str>,
        patient: Option<&str>,
        now_s: u64,
        ttl_s: u64,
    ) -> Result<(String, Claims), ServeError> {
        let grant_exp = grant.expires_ms / 1000;
        if grant.expired || grant_exp <= now_s {
            return Err(ServeError::Token(format!("grant {} has expired", grant.id)));
        }
        let scopes = grant_scopes(grant, requested);
        if scopes.is_empty() {
            return Err(ServeError::Token(format!(
                "no scope of grant {} {}",
                grant.id,
                requested.map_or_else(
                    || "names a type the facade serves".to_string(),
                    |r| format!("is among the requested {r:?}")
                )
            )));
        }
        let mut claims = new_claims(false, scopes.join(" "), now_s, ttl_s)?;
        claims.exp = claims.exp.min(grant_exp);
        claims.grant = Some(grant.id.clone());
        claims.launch_patient = patient.map(str::to_string);
        Ok((self.mint(&claims)?, claims))
    }

    /// Checks a token at `now_s` and returns what it allows (401 otherwise).
    pub fn verify(&self, token: &str, now_s: u64) -> Result<(Claims, Access), ServeError> {
        let unknown = || ServeError::Unauthorized("unknown bearer token".into());
        let (signed, tag) = token.rsplit_once('.').ok_or_else(unknown)?;
        let payload = signed.strip_prefix(PREFIX).ok_or_else(unknown)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| unknown())?;
        let tag: [u8; 32] = tag.try_into().map_err(|_| unknown())?;
        // blake3::Hash equality is constant-time.
        if self.tag(signed) != blake3::Hash::from_bytes(tag) {
            return Err(unknown());
        }
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| unknown())?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| unknown())?;
        if claims.v != 1 {
            return Err(unknown());
        }
        if claims.exp <= now_s {
            return Err(ServeError::Unauthorized(
                "the bearer token has expired".into(),
            ));
        }
        let access = if claims.patient {
            Access::Patient
        } else {
            Access::App(parse_scopes(&claims.scope).map_err(|_| unknown())?)
        };
        Ok((claims, access))
    }
}

/// The grant's SMART scopes that the facade can enforce, narrowed to `requested` (SMART
/// scopes, space-separated) when given: each grant scope keeps only the permissions
/// the request asks for on its type (`patient/*.r` asked of a grant with
/// `patient/MedicationRequest.rs` gives `patient/MedicationRequest.r`); a grant scope
/// with none left is dropped. Nothing outside the grant is ever added.
pub fn grant_scopes(grant: &GrantInfo, requested: Option<&str>) -> Vec<String> {
    let wanted = match requested.map(parse_scopes) {
        None => None,
        Some(Ok(rules)) => Some(Access::App(rules)),
        Some(Err(_)) => return Vec::new(),
    };
    let mut out = Vec::new();
    for scope in &grant.smart_scopes {
        let Ok(rules) = parse_scopes(scope) else {
            continue; // a type the facade does not serve
        };
        let Some(context) = scope.split_once('/').map(|(c, _)| c) else {
            continue;
        };
        for rule in rules {
            let t = rule.resource_type.as_deref().unwrap_or("*");
            let letters: String = [
                ('c', rule.perms.c, Perm::Create),
                ('r', rule.perms.r, Perm::Read),
                ('u', rule.perms.u, Perm::Update),
                ('d', rule.perms.d, Perm::Delete),
                ('s', rule.perms.s, Perm::Search),
            ]
            .iter()
            .filter(|(_, has, perm)| *has && wanted.as_ref().is_none_or(|w| w.allows(t, *perm)))
            .map(|(letter, _, _)| *letter)
            .collect();
            if !letters.is_empty() {
                out.push(format!("{context}/{t}.{letters}"));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Revoked token ids
// ---------------------------------------------------------------------------------------

/// The file listing revoked token ids (`jti`, one per line) beside a keystore: the
/// keystore path with `.revoked-tokens` appended. `ehi token revoke <jti>` appends to
/// it; `ehi serve` re-reads it when it changes (checked every
/// [`super::REVOKED_POLL`]). It holds random token ids only, nothing about the EHI.
pub fn revoked_tokens_path(keystore: &std::path::Path) -> std::path::PathBuf {
    let mut name = keystore.as_os_str().to_os_string();
    name.push(".revoked-tokens");
    std::path::PathBuf::from(name)
}

/// Whether `jti` looks like a token id (32 lowercase hex digits).
pub fn valid_jti(jti: &str) -> bool {
    jti.len() == 32
        && jti
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Appends `jti` to the revocation file `path` (created if missing).
pub fn revoke_token(path: &std::path::Path, jti: &str) -> Result<(), ServeError> {
    use std::io::Write;
    if !valid_jti(jti) {
        return Err(ServeError::BadRequest(format!(
            "{jti:?} is not a token id (32 hex digits, the token's jti)"
        )));
    }
    let io = |e: std::io::Error| ServeError::Token(format!("writing {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    file.write_all(format!("{jti}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// The token ids listed in the revocation file `path` (empty when it does not exist).
pub fn load_revoked(
    path: &std::path::Path,
) -> Result<std::collections::HashSet<String>, ServeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| valid_jti(l))
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(ServeError::Token(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

/// Reads the `jti` of a token without checking it (for `ehi token revoke` given a
/// whole token). `None` when it is not shaped like a token.
pub fn jti_of(token: &str) -> Option<String> {
    let (signed, _) = token.rsplit_once('.')?;
    let json = URL_SAFE_NO_PAD.decode(signed.strip_prefix(PREFIX)?).ok()?;
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    Some(claims.jti)
}

fn new_claims(patient: bool, scope: String, now_s: u64, ttl_s: u64) -> Result<Claims, ServeError> {
    let jti = random_bytes::<16>().map_err(|e| ServeError::Token(e.to_string()))?;
    Ok(Claims {
        v: 1,
        patient,
        scope,
        iat: now_s,
        exp: now_s.saturating_add(ttl_s),
        jti: hex::encode(jti),
        grant: None,
        launch_patient: None,
    })
}

/// Parses a duration such as `90s`, `30m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with s, m, h or d"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(factor)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("{text:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_v1_and_v2() {
        let rules =
            parse_scopes("openid launch/patient patient/Observation.rs user/*.read").expect("ok");
        let access = Access::App(rules);
        assert!(access.allows("Observation", Perm::Search));
        assert!(access.allows("Condition", Perm::Read));
        assert!(!access.allows("Condition", Perm::Create));
        assert!(parse_scopes("patient/Observation.sr").is_err());
        assert!(parse_scopes("patient/Nope.rs").is_err());
        assert!(parse_scopes("patient/Observation.rs?category=x").is_err());
    }

    #[test]
    fn tokens_verify_expire_and_refuse_tampering() {
        let key = TokenKey::from_bytes([7; 32]);
        let token = key
            .mint_app("patient/Observation.rs", 1000, 60)
            .expect("mint");
        let (claims, access) = key.verify(&token, 1001).expect("valid");
        assert!(!claims.patient);
        assert!(access.allows("Observation", Perm::Read));
        assert!(key.verify(&token, 1060).is_err());
        let other = TokenKey::from_bytes([8; 32]);
        assert!(other.verify(&token, 1001).is_err());
        let mut bad = token.clone();
        bad.push('x');
        assert!(key.verify(&bad, 1001).is_err());
        assert!(key.verify("garbage", 1001).is_err());
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert!(parse_duration("1y").is_err());
    }
}
