//! The small checks and response builders every interaction handler shares: FHIR JSON
//! responses (with `ETag` and `Location` for a resource), and the type, id and version
//! checks of a request path. The handlers and the router both use them; they use
//! nothing of either.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::ServeError;
use ehi_vault::fhir::valid_id;

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A FHIR JSON response.
pub(crate) fn fhir_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

pub(super) fn known_type(t: &str) -> Result<&str, ServeError> {
    if ehi_search::supported_parameters(t).is_some() {
        Ok(t)
    } else {
        Err(ServeError::NotFound(format!(
            "{t:?} is not a supported resource type"
        )))
    }
}

pub(super) fn check_id(id: &str) -> Result<(), ServeError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ServeError::NotFound(format!("{id:?} is not a valid id")))
    }
}

pub(super) fn version_of(resource: &Value) -> Option<&str> {
    resource.pointer("/meta/versionId").and_then(Value::as_str)
}

/// A resource response with `ETag` (and `Location` when given).
pub(super) fn resource_response(
    status: StatusCode,
    resource: &Value,
    location: Option<String>,
) -> Response {
    let mut response = fhir_response(status, resource);
    if let Some(v) = version_of(resource)
        && let Ok(value) = HeaderValue::from_str(&format!("W/\"{v}\""))
    {
        response.headers_mut().insert(header::ETAG, value);
    }
    if let Some(location) = location
        && let Ok(value) = HeaderValue::from_str(&location)
    {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}
