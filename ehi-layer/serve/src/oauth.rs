//! OAuth 2.0 authorization-code flow in the shape of SMART App Launch v2 (standalone
//! launch, public clients, PKCE S256 mandatory).
//!
//! - `GET /.well-known/smart-configuration` lists the endpoints and capabilities.
//! - `GET /authorize?response_type=code&client_id&redirect_uri&scope&state&aud
//!   &code_challenge&code_challenge_method=S256` answers `302` to
//!   `redirect_uri?code=…&state=…`.
//! - `POST /token` (form: `grant_type=authorization_code&code&redirect_uri
//!   &code_verifier&client_id`) answers `{access_token, token_type: "Bearer",
//!   expires_in, scope, patient}` — a grant token ([`super::token`]) confined to the
//!   compartment of that `patient` ([`super::context_patient`]).
//!
//! ## Approval: pre-authorized clients
//! The facade runs on the patient's device with no user interface, so the patient
//! approves **ahead of time**: `ehi serve --client <client_id>=<grant>` registers a
//! client id for one of the vault's grants ([`ehi_share::grant`]). `/authorize`
//! then approves that client at once, for the grant's scopes narrowed to the requested
//! ones. Consequences, stated plainly: anyone who can reach the facade and knows a
//! registered client id can run the flow and obtain a token for that grant (PKCE stops
//! the interception of *someone else's* code, not this) — **treat a client id as a
//! secret** (use a long random one) and keep the facade on 127.0.0.1. The grant's
//! revocation or expiry ends the client's tokens like any grant token.
//!
//! ## Codes
//! Random 256-bit, single use (removed at the first `/token` attempt, successful or
//! not), valid [`CODE_TTL`] (configurable); bound to the client id, redirect uri, scopes and the PKCE
//! challenge. Errors follow RFC 6749 §5.2: JSON `{error, error_description}`, `400`
//! (`invalid_request`, `invalid_grant`, `unsupported_grant_type`, `invalid_scope`) or
//! `401 invalid_client`. Errors at `/authorize` before the redirect uri is trusted are
//! `400` JSON; later ones redirect with `error` and `state` (RFC 6749 §4.1.2.1).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::token::grant_scopes;
use super::{AppState, Pairs};
use ehi_vault::time::now_ms;

/// How long an authorization code is valid, by default
/// ([`super::ServeOptions::code_ttl`]).
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Lifetime of an access token from `/token` (capped by the grant's expiry).
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Most outstanding codes.
const MAX_CODES: usize = 10_000;

/// An OAuth error (RFC 6749 §5.2).
#[derive(Debug)]
pub(crate) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        let status = if error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        no_store(&mut response);
        response
    }
}

fn no_store(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

#[derive(Debug)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    grant: String,
    scope: String,
    expires_ms: u64,
}

/// Registered clients and outstanding codes.
#[derive(Debug, Default)]
pub(crate) struct OAuth {
    /// client id → grant id.
    clients: HashMap<String, String>,
    codes: Mutex<HashMap<String, Code>>,
    code_ttl: Duration,
}

impl OAuth {
    pub(crate) fn new(
        clients: impl IntoIterator<Item = (String, String)>,
        code_ttl: Duration,
    ) -> OAuth {
        OAuth {
            clients: clients.into_iter().collect(),
            codes: Mutex::default(),
            code_ttl,
        }
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Code>> {
        self.codes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `/.well-known/smart-configuration`.
pub(crate) fn smart_configuration(base: &str) -> Value {
    json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "token_endpoint_auth_methods_supported": ["none"],
        "grant_types_supported": ["authorization_code"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["patient/*.rs", "patient/*.cruds", "patient/*.read",
                             "user/*.rs", "launch/patient", "openid", "fhirUser"],
        "capabilities": ["launch-standalone", "client-public", "context-standalone-patient",
                         "permission-patient", "permission-v2", "permission-v1"]
    })
}

fn param<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(pairs: &'a Pairs, name: &str) -> Result<&'a str, OAuthError> {
    match param(pairs, name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(OAuthError::new(
            "invalid_request",
            format!("{name} is required"),
        )),
    }
}

/// A PKCE verifier or challenge: 43–128 characters of `[A-Za-z0-9-._~]` (RFC 7636).
fn pkce_shaped(text: &str) -> bool {
    (43..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// `BASE64URL-NOPAD(SHA-256(verifier))` (RFC 7636 S256).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn redirect(uri: &str, query: &[(&str, &str)]) -> Response {
    let mut url = url_with(uri, query);
    if url.is_empty() {
        url = uri.to_string();
    }
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    no_store(&mut response);
    response
}

fn url_with(uri: &str, query: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in query {
        ser.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", ser.finish())
}

/// `GET /authorize`.
pub(crate) async fn authorize(state: &AppState, pairs: &Pairs) -> Response {
    // Client and redirect uri first: until both are good, errors are not redirected.
    let client_id = match required(pairs, "client_id") {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let Some(grant_id) = state.oauth.clients.get(client_id) else {
        return OAuthError::new(
            "invalid_request",
            format!("client_id {client_id:?} is not registered (ehi serve --client)"),
        )
        .into_response();
    };
    let redirect_uri = match required(pairs, "redirect_uri") {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // Visible ASCII only: anything else cannot stand in the Location header (the
    // redirect would go out without one).
    if !(redirect_uri.starts_with("https://") || redirect_uri.starts_with("http://"))
        || redirect_uri.contains('#')
        || !redirect_uri.bytes().all(|b| b.is_ascii_graphic())
    {
        return OAuthError::new(
            "invalid_request",
            "redirect_uri must be an absolute http(s) url without a fragment, in visible \
             ASCII (percent-encoded)",
        )
        .into_response();
    }
    let app_state = param(pairs, "state").unwrap_or("");
    let fail = |error: &str, description: &str| {
        let mut q = vec![("error", error), ("error_description", description)];
        if !app_state.is_empty() {
            q.push(("state", app_state));
        }
        redirect(redirect_uri, &q)
    };
    if param(pairs, "response_type") != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    if param(pairs, "code_challenge_method") != Some("S256") {
        return fail(
            "invalid_request",
            "PKCE is required: code_challenge_method=S256",
        );
    }
    let Some(challenge) = param(pairs, "code_challenge").filter(|c| pkce_shaped(c)) else {
        return fail(
            "invalid_request",
            "code_challenge is required (43-128 characters, base64url of SHA-256)",
        );
    };
    match param(pairs, "aud") {
        Some(aud) if aud.trim_end_matches('/') == state.base => {}
        Some(_) => return fail("invalid_request", "aud is not this FHIR server"),
        None => {
            return fail(
                "invalid_request",
                "aud (this server's base url) is required",
            );
        }
    }
    let Some(grant) = state.auth.grant(grant_id) else {
        return fail("access_denied", "the client's grant has been revoked");
    };
    if grant.info.expires_ms <= now_ms() {
        return fail("access_denied", "the client's grant has expired");
    }
    let requested = param(pairs, "scope").filter(|s| !s.trim().is_empty());
    let scopes = grant_scopes(&grant.info, requested);
    if scopes.is_empty() {
        return fail(
            "invalid_scope",
            "no requested scope is covered by the client's grant",
        );
    }
    let Ok(code) = ehi_vault::keys::random_bytes::<32>() else {
        return fail("server_error", "no randomness");
    };
    let code = URL_SAFE_NO_PAD.encode(code);
    let now = now_ms();
    {
        let mut codes = state.oauth.codes();
        codes.retain(|_, c| c.expires_ms > now);
        if codes.len() >= MAX_CODES {
            return fail("temporarily_unavailable", "too many outstanding codes");
        }
        codes.insert(
            code.clone(),
            Code {
                client_id: client_id.to_string(),
                redirect_uri: redirect_uri.to_string(),
                challenge: challenge.to_string(),
                grant: grant_id.clone(),
                scope: scopes.join(" "),
                expires_ms: now.saturating_add(
                    u64::try_from(state.oauth.code_ttl.as_millis()).unwrap_or(u64::MAX),
                ),
            },
        );
    }
    let mut q = vec![("code", code.as_str())];
    if !app_state.is_empty() {
        q.push(("state", app_state));
    }
    redirect(redirect_uri, &q)
}

/// `POST /token`.
pub(crate) async fn token(state: &AppState, pairs: &Pairs) -> Result<Response, OAuthError> {
    // One-time: a code presented is gone whatever happens next (even when the request
    // is refused for another parameter).
    let entry = param(pairs, "code").and_then(|code| state.oauth.codes().remove(code));
    let grant_type = required(pairs, "grant_type")?;
    if grant_type != "authorization_code" {
        return Err(OAuthError::new(
            "unsupported_grant_type",
            format!("grant_type {grant_type:?}: only authorization_code is supported"),
        ));
    }
    required(pairs, "code")?;
    let redirect_uri = required(pairs, "redirect_uri")?;
    let verifier = required(pairs, "code_verifier")?;
    let client_id = required(pairs, "client_id")?;
    if !state.oauth.clients.contains_key(client_id) {
        return Err(OAuthError::new(
            "invalid_client",
            format!("client_id {client_id:?} is not registered"),
        ));
    }
    let invalid = |why: &str| OAuthError::new("invalid_grant", why.to_string());
    let Some(entry) = entry else {
        return Err(invalid("unknown or already used authorization code"));
    };
    if entry.expires_ms <= now_ms() {
        return Err(invalid("the authorization code has expired"));
    }
    if entry.client_id != client_id {
        return Err(invalid("the code was issued to another client"));
    }
    if entry.redirect_uri != redirect_uri {
        return Err(invalid(
            "redirect_uri differs from the authorization request's",
        ));
    }
    if !pkce_shaped(verifier) {
        return Err(OAuthError::new(
            "invalid_request",
            "code_verifier must be 43-128 characters of [A-Za-z0-9-._~]",
        ));
    }
    if s256(verifier) != entry.challenge {
        return Err(invalid("code_verifier does not match the code_challenge"));
    }
    let Some(grant) = state.auth.grant(&entry.grant) else {
        return Err(invalid("the client's grant has been revoked"));
    };
    let now_s = now_ms() / 1000;
    let patient = super::context_patient(&state.vault).await;
    let (access_token, claims) = state
        .key
        .mint_grant_for(
            &grant.info,
            Some(&entry.scope),
            patient.as_deref(),
            now_s,
            ACCESS_TOKEN_TTL.as_secs(),
        )
        .map_err(|e| invalid(&e.to_string()))?;
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": claims.exp.saturating_sub(now_s),
        "scope": claims.scope,
    });
    if let Some(patient) = patient {
        body["patient"] = Value::String(patient);
    }
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    no_store(&mut response);
    Ok(response)
}
