//! The one place where failures become HTTP answers.
//!
//! Every handler returns [`ApiResult`]. Client mistakes get a 4xx with a short
//! plain-text reason; internal failures are logged in full and answered with a
//! generic 500 (or 503 when a peer is unreachable). Extractors [`ApiPath`] and
//! [`ApiJson`] turn malformed paths and bodies into the same plain-text 400.

use std::fmt::Display;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// Largest JSON request body accepted by [`ApiJson`] (1 MiB).
pub const MAX_JSON_BODY: usize = 1 << 20;

/// An HTTP failure with a plain-text reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    reason: String,
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason: reason.into(),
        }
    }
    /// 400: the request is malformed.
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, reason)
    }
    /// 403: the request is not authorised (bad signature).
    pub fn forbidden(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, reason)
    }
    /// 404: the thing asked for is absent.
    pub fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, reason)
    }
    /// 409: the request conflicts with current state (stale compare-and-swap).
    pub fn conflict(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, reason)
    }
    /// 413: the body exceeds a configured limit.
    pub fn too_large(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, reason)
    }
    /// 503: a peer this request depends on is unreachable.
    pub fn unavailable(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason)
    }
    /// 500: logs `detail` and answers without revealing it.
    pub fn internal(context: &str, detail: impl Display) -> ApiError {
        tracing::error!(%detail, "{context}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The plain-text reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

impl std::error::Error for ApiError {}

/// Runs `f` (blocking work, typically a store call) on tokio's blocking pool. Its
/// failure, or the task's, is an internal error logged under `context`.
pub async fn blocking<T, E, F>(context: &'static str, f: F) -> ApiResult<T>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ApiError::internal(context, e)),
        Err(e) => Err(ApiError::internal(context, e)),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.reason;
        body.push('\n');
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

/// Path parameters deserialized with serde; any failure is a plain-text 400 naming it.
///
/// `ApiPath<Id>` parses a 64-hex id from a single path parameter.
#[derive(Debug, Clone, Copy)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

/// A JSON body (any or no content type), at most [`MAX_JSON_BODY`] bytes.
/// Malformed JSON → 400; too large → 413.
#[derive(Debug, Clone, Copy)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limited = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY).await;
        let bytes: Bytes = limited.map_err(|e| {
            if is_length_limit(&e) {
                ApiError::too_large(format!("JSON body exceeds {MAX_JSON_BODY} bytes"))
            } else {
                ApiError::bad_request(format!("could not read body: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_returns_the_value() {
        let value = blocking("adding", || Ok::<_, std::io::Error>(1 + 1)).await;
        assert_eq!(value, Ok(2));
    }

    #[tokio::test]
    async fn blocking_failures_are_bare_internal_errors() {
        let failed = blocking("reading", || -> Result<(), _> {
            Err(std::io::Error::other("secret detail"))
        })
        .await;
        let error = failed.expect_err("fails");
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.reason(), "internal error");
    }

    #[tokio::test]
    async fn a_panicking_task_is_an_internal_error() {
        let failed = blocking("panicking", || -> Result<(), std::io::Error> {
            panic!("boom");
        })
        .await;
        assert_eq!(
            failed.map_err(|e| e.status()),
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        );
    }
}
