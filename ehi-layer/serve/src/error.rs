//! The errors of the FHIR REST facade and their answers: every error is a FHIR
//! `OperationOutcome` with the HTTP status FHIR R4 prescribes (400 invalid request or
//! unknown search parameter, 401 no/unknown/expired token, 403 scope refused, 404
//! unknown resource or type, 406 a format other than JSON, 410 deleted, 412 version
//! conflict, 415 a body that is not FHIR JSON, 422 an invalid resource).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use ehi_vault::error::{EhiError, ImportError};
use ehi_vault::validate::Violation;

/// What went wrong serving a request (or starting the server).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No token, or an unknown or expired one (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The token's scopes do not cover the request (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such resource, version, type or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The method is not supported on this path (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Only `application/fhir+json` is served (406).
    #[error("{0}")]
    NotAcceptable(String),
    /// The resource was deleted (410).
    #[error("{0}")]
    Gone(String),
    /// `If-Match` names another version (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The body is not FHIR JSON (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The resource is not a valid FHIR resource (422).
    #[error("{0}")]
    Unprocessable(String),
    /// A token could not be minted or read.
    #[error("token: {0}")]
    Token(String),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] EhiError),
    /// Binding or serving failed.
    #[error("serving on {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    /// The HTTP status and the OperationOutcome issue code.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ServeError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid"),
            ServeError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "login"),
            ServeError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ServeError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            ServeError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "not-supported"),
            ServeError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not-supported"),
            ServeError::Gone(_) => (StatusCode::GONE, "deleted"),
            ServeError::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "conflict"),
            ServeError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported")
            }
            ServeError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ServeError::Token(_) => (StatusCode::UNAUTHORIZED, "login"),
            ServeError::Vault(e) => match e {
                EhiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
                EhiError::Gone(_) | EhiError::Removed { .. } => (StatusCode::GONE, "deleted"),
                EhiError::InvalidArgument(_) | EhiError::Search(_) => {
                    (StatusCode::BAD_REQUEST, "invalid")
                }
                EhiError::Import(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
                // A summary whose content has no canonical form to sign.
                EhiError::Signature(_) => (StatusCode::UNPROCESSABLE_ENTITY, "processing"),
                EhiError::OtherPatients { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "business-rule")
                }
                EhiError::Network { .. }
                | EhiError::MissingServer { .. }
                | EhiError::MissingBlob { .. }
                | EhiError::Contention { .. } => (StatusCode::SERVICE_UNAVAILABLE, "transient"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
            },
            ServeError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "exception"),
        }
    }
}

/// An `OperationOutcome` with one error issue.
pub fn outcome(code: &str, diagnostics: &str) -> serde_json::Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]
    })
}

/// An `OperationOutcome` with one issue per broken structure rule, each naming the
/// element in `expression`.
fn invalid_outcome(violations: &[Violation]) -> serde_json::Value {
    let issues: Vec<serde_json::Value> = violations
        .iter()
        .map(|v| {
            let code = if v.rule.starts_with("required") {
                "required"
            } else if v.rule.starts_with("unknown") || v.rule.contains("array") {
                "structure"
            } else {
                "value"
            };
            json!({"severity": "error", "code": code, "diagnostics": v.to_string(),
                   "expression": [v.path]})
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = match &self {
            ServeError::Vault(EhiError::Import(ImportError::Invalid { violations, .. })) => {
                invalid_outcome(violations)
            }
            _ => outcome(code, &self.to_string()),
        };
        let mut response = super::fhir_response(status, &body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ehi\""),
            );
        }
        response
    }
}
