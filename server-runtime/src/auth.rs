//! Authorization of requests with capability tokens (see [`invariant_spec::auth`]).
//!
//! With a root public key (`--auth-root-key`), every route has a required right
//! ([`required`]): mutating routes always need one, reads only with `--auth-reads`.
//! A request to a protected route without `Authorization: Bearer <token>` is answered
//! 401; a token that does not verify against the root, has expired, or lacks the
//! right (or had it narrowed away) is answered 403. Either way the handler does not
//! run, so nothing changes. A small request body is read and dropped first so that the
//! client can read the answer.
//!
//! A request whose token verifies carries a [`Caller`] extension (subject, quota) that
//! handlers use for ownership: who registered a broker entry, whose pins these are.
//! On open routes a valid token is still recognised, so an operator can see more.
//!
//! Verification results are cached per (token, operation) for [`CACHE_TTL`]; a
//! result is cached only when the token also passes at the end of that window, so a
//! cached answer never outlives the token's expiry.
//!
//! Without a root key the server runs in open mode: no checks, no callers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use invariant_spec::auth::{AuthError, Right, RootPublicKey, VerifiedToken};
use sha2::{Digest, Sha256};

use crate::Role;
use crate::error::ApiError;

/// How long a verification result is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// Bodies up to this size are read and dropped before a 401/403, so the client gets
/// the answer instead of a reset connection.
const DRAIN_LIMIT: usize = 1 << 20;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Never checked (`GET /id`: peers must be able to identify a server).
    Open,
    /// A read: checked only with `--auth-reads`, as `<role>:read`.
    Read,
    /// A change or privileged call: `<role>:<action>`.
    Action(&'static str),
}

/// The right each route of each role requires. One table for every role; the
/// normative version is `spec/security.md`.
pub fn required(role: Role, method: &Method, path: &str) -> Access {
    if path == "/id" {
        return Access::Open;
    }
    let read = method == Method::GET || method == Method::HEAD || method == Method::OPTIONS;
    match role {
        Role::Broker if path == "/broker/register" => Access::Action("register"),
        Role::Find if matches!(path, "/find/has" | "/find/notify" | "/find/gone") => {
            Access::Action("report")
        }
        Role::Distributor => {
            let tail = path
                .strip_prefix("/distributor")
                .or_else(|| path.strip_prefix("/distribute"))
                .unwrap_or(path);
            match tail {
                "/pin" | "/unpin" => Access::Action("pin"),
                "/blocks" | "/status" => Access::Read,
                _ if read => Access::Read,
                _ => Access::Action("admin"),
            }
        }
        Role::Storage if method == Method::DELETE || (!read && path == "/storage/delete") => {
            Access::Action("delete")
        }
        Role::Storage if read && matches!(path, "/storage" | "/storage/") => Access::Action("list"),
        _ if read => Access::Read,
        _ => Access::Action("write"),
    }
}

/// The verified holder of a request's token.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's subject.
    pub subject: String,
    /// The token's storage quota, if any.
    pub quota: Option<u64>,
    token: VerifiedToken,
}

impl Caller {
    /// Whether the caller's token also allows `role:action` now (for ownership
    /// overrides such as an operator replacing someone's registration).
    pub fn allows(&self, role: Role, action: &str) -> bool {
        match Right::new(role.right_name(), action) {
            Ok(op) => self.token.authorize(&op, SystemTime::now()).is_ok(),
            Err(_) => false,
        }
    }
}

/// Token checking for one server.
#[derive(Clone, Debug)]
pub struct Authorizer {
    role: Role,
    root: RootPublicKey,
    reads: bool,
    cache: moka::sync::Cache<([u8; 32], &'static str), Arc<Caller>>,
}

/// Why a request was refused.
#[derive(Debug)]
pub enum Refusal {
    /// No bearer token where one is needed (401).
    Missing,
    /// A token was given but does not allow the operation (403).
    Forbidden(String),
}

impl Authorizer {
    /// Checks tokens against `root` for a server of `role`.
    pub fn new(role: Role, root: RootPublicKey, reads: bool) -> Authorizer {
        Authorizer {
            role,
            root,
            reads,
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// The right a request needs, or `None` when it is not checked.
    pub fn needs(&self, method: &Method, path: &str) -> Option<&'static str> {
        match required(self.role, method, path) {
            Access::Open => None,
            Access::Read if !self.reads => None,
            Access::Read => Some("read"),
            Access::Action(action) => Some(action),
        }
    }

    /// Verifies `token` for `action` on this role.
    pub fn check(&self, token: &str, action: &'static str) -> Result<Arc<Caller>, Refusal> {
        let key = (Sha256::digest(token.as_bytes()).into(), action);
        if let Some(caller) = self.cache.get(&key) {
            return Ok(caller);
        }
        let op = Right::new(self.role.right_name(), action)
            .map_err(|e| Refusal::Forbidden(e.to_string()))?;
        let verified = VerifiedToken::verify(token, self.root).map_err(forbidden)?;
        let now = SystemTime::now();
        let facts = verified.authorize(&op, now).map_err(forbidden)?;
        let caller = Arc::new(Caller {
            subject: facts.subject,
            quota: facts.quota,
            token: verified.clone(),
        });
        if verified.authorize(&op, now + CACHE_TTL).is_ok() {
            self.cache.insert(key, caller.clone());
        }
        Ok(caller)
    }

    /// The caller a valid, unexpired token names, whatever it allows (for open
    /// routes). Cached like [`Authorizer::check`].
    pub fn identify(&self, token: &str) -> Option<Arc<Caller>> {
        let key = (Sha256::digest(token.as_bytes()).into(), "");
        if let Some(caller) = self.cache.get(&key) {
            return Some(caller);
        }
        let verified = VerifiedToken::verify(token, self.root).ok()?;
        let now = SystemTime::now();
        if self.expired(&verified, now) {
            return None;
        }
        let facts = verified.facts().ok()?;
        let caller = Arc::new(Caller {
            subject: facts.subject,
            quota: facts.quota,
            token: verified.clone(),
        });
        if !self.expired(&verified, now + CACHE_TTL) {
            self.cache.insert(key, caller.clone());
        }
        Some(caller)
    }

    /// Whether the token's expiry checks fail at `at` (other refusals do not count:
    /// an identified caller need not hold any particular right).
    fn expired(&self, verified: &VerifiedToken, at: SystemTime) -> bool {
        let Ok(op) = Right::new(self.role.right_name(), "read") else {
            return true;
        };
        matches!(
            verified.authorize(&op, at),
            Err(AuthError::Denied { ref reason, .. }) if reason.contains("expired")
        )
    }
}

fn forbidden(e: AuthError) -> Refusal {
    Refusal::Forbidden(e.to_string())
}

/// The bearer token of a request: `None` without an Authorization header,
/// `Some(Err)` for another scheme or an unreadable value.
fn bearer(headers: &axum::http::HeaderMap) -> Option<Result<&str, ()>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let Ok(text) = value.to_str() else {
        return Some(Err(()));
    };
    let mut parts = text.trim().splitn(2, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(Ok(token.trim()))
        }
        _ => Some(Err(())),
    }
}

/// Reads and drops a small request body so the client reads the refusal.
async fn drain(request: Request) {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n <= DRAIN_LIMIT as u64) {
        let body = http_body_util::Limited::new(request.into_body(), DRAIN_LIMIT);
        let _ = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
    }
}

fn refuse(refusal: Refusal) -> Response {
    metrics::counter!("invariant_auth_refusals_total", "status" => match refusal {
        Refusal::Missing => "401",
        Refusal::Forbidden(_) => "403",
    })
    .increment(1);
    match refusal {
        Refusal::Missing => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server requires a capability token: send Authorization: Bearer <token>",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"invariant\""),
            );
            response
        }
        Refusal::Forbidden(reason) => ApiError::new(StatusCode::FORBIDDEN, reason).into_response(),
    }
}

/// The middleware: checks the request's token against the route's right.
pub async fn authorize(
    State(authz): State<Arc<Authorizer>>,
    mut request: Request,
    next: Next,
) -> Response {
    let needed = authz.needs(request.method(), request.uri().path());
    let token = bearer(request.headers());
    let outcome = match (needed, token) {
        (None, Some(Ok(token))) => {
            if let Some(caller) = authz.identify(token) {
                request.extensions_mut().insert(caller);
            }
            Ok(())
        }
        (None, _) => Ok(()),
        (Some(_), None) => Err(Refusal::Missing),
        (Some(_), Some(Err(()))) => Err(Refusal::Forbidden(
            "the Authorization header is not `Bearer <token>`".into(),
        )),
        (Some(action), Some(Ok(token))) => match authz.check(token, action) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(())
            }
            Err(refusal) => Err(refusal),
        },
    };
    match outcome {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            drain(request).await;
            refuse(refusal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use invariant_spec::auth::{Grant, RootKey, parse_rights};

    #[test]
    fn rights_per_route() {
        let get = Method::GET;
        let put = Method::PUT;
        let post = Method::POST;
        assert_eq!(required(Role::Storage, &get, "/id"), Access::Open);
        assert_eq!(required(Role::Storage, &get, "/storage/ab"), Access::Read);
        assert_eq!(
            required(Role::Storage, &put, "/storage/ab"),
            Access::Action("write")
        );
        assert_eq!(
            required(Role::Storage, &Method::DELETE, "/storage/ab"),
            Access::Action("delete")
        );
        assert_eq!(
            required(Role::Storage, &post, "/storage/delete"),
            Access::Action("delete")
        );
        assert_eq!(
            required(Role::Storage, &get, "/storage/"),
            Access::Action("list")
        );
        assert_eq!(
            required(Role::Find, &put, "/find/gone"),
            Access::Action("report")
        );
        assert_eq!(
            required(Role::Broker, &post, "/broker/register"),
            Access::Action("register")
        );
        assert_eq!(
            required(Role::Find, &put, "/find/has"),
            Access::Action("report")
        );
        assert_eq!(
            required(Role::Find, &post, "/find/notify"),
            Access::Action("report")
        );
        assert_eq!(
            required(Role::Distributor, &put, "/distributor/pin"),
            Access::Action("pin")
        );
        assert_eq!(
            required(Role::Distributor, &put, "/distribute/unpin"),
            Access::Action("pin")
        );
        assert_eq!(
            required(Role::Distributor, &post, "/distributor/blocks"),
            Access::Read
        );
        assert_eq!(
            required(Role::Distributor, &put, "/distributor/register/storage"),
            Access::Action("admin")
        );
        assert_eq!(
            required(Role::Slots, &put, "/slots/ab"),
            Access::Action("write")
        );
        assert_eq!(
            required(Role::Files, &post, "/files/mount"),
            Access::Action("write")
        );
    }

    fn token(root: &RootKey, rights: &str) -> String {
        root.issue(&Grant {
            subject: "bob".into(),
            rights: parse_rights(rights).expect("rights"),
            expires: None,
            quota: Some(5),
        })
        .expect("issue")
    }

    #[test]
    fn check_allows_and_refuses() {
        let root = RootKey::generate();
        let authz = Authorizer::new(Role::Storage, root.public(), false);
        let good = token(&root, "storage:write");
        let caller = authz.check(&good, "write").expect("allowed");
        assert_eq!(caller.subject, "bob");
        assert_eq!(caller.quota, Some(5));
        // Cached: the same answer again.
        assert_eq!(authz.check(&good, "write").expect("cached").subject, "bob");
        assert!(matches!(
            authz.check(&good, "delete"),
            Err(Refusal::Forbidden(_))
        ));
        let other = RootKey::generate();
        assert!(matches!(
            authz.check(&token(&other, "*"), "write"),
            Err(Refusal::Forbidden(_))
        ));
        assert!(!caller.allows(Role::Storage, "delete"));
        assert!(caller.allows(Role::Storage, "write"));
    }

    #[test]
    fn a_token_expiring_within_the_cache_window_is_not_cached() {
        let root = RootKey::generate();
        let authz = Authorizer::new(Role::Slots, root.public(), false);
        let short = root
            .issue(&Grant {
                subject: "s".into(),
                rights: parse_rights("slots:write").expect("rights"),
                expires: Some(SystemTime::now() + Duration::from_secs(2)),
                quota: None,
            })
            .expect("issue");
        authz.check(&short, "write").expect("valid now");
        assert_eq!(authz.cache.entry_count(), 0);
        authz.cache.run_pending_tasks();
        assert!(authz.cache.iter().next().is_none());
    }

    #[test]
    fn bearer_header_forms() {
        let mut headers = axum::http::HeaderMap::new();
        assert!(bearer(&headers).is_none());
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&headers), Some(Ok("abc")));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&headers), Some(Ok("abc")));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), Some(Err(())));
    }
}
