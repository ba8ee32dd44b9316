//! Write interactions: create (`POST [type]`), update or create (`PUT [type]/[id]`,
//! with `If-Match`) and delete, each imported into the vault under the server's write
//! lock; and the checks of a resource body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::access::check_visible;
use super::follow::refresh;
use super::respond::{check_id, resource_response, version_of};
use super::{AppState, Caller, Perm, ServeError};
use ehi_vault::error::EhiError;
use ehi_vault::fhir::{Input, valid_id};

/// Parses and checks a resource body for type `t` (415, 400 or 422).
fn resource_body(headers: &HeaderMap, body: &Bytes, t: &str) -> Result<Value, ServeError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let media = ct.split(';').next().unwrap_or("").trim();
        if !matches!(
            media,
            "application/fhir+json" | "application/json" | "application/json+fhir"
        ) {
            return Err(ServeError::UnsupportedMediaType(format!(
                "Content-Type {ct}: only application/fhir+json is accepted"
            )));
        }
    }
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| ServeError::BadRequest(format!("the body is not JSON: {e}")))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(ServeError::Unprocessable(
            "the body is not a FHIR resource (not a JSON object)".into(),
        ));
    };
    match obj.get("resourceType").and_then(Value::as_str) {
        None => {
            return Err(ServeError::Unprocessable(
                "the resource has no resourceType".into(),
            ));
        }
        Some(rt) if rt != t => {
            return Err(ServeError::BadRequest(format!(
                "the resource is a {rt}, the url names {t}"
            )));
        }
        Some(_) => {}
    }
    for (k, v) in obj.iter() {
        let valid_name = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(ServeError::Unprocessable(format!(
                "{k:?} is not a FHIR element name"
            )));
        }
        if v.is_null() {
            return Err(ServeError::Unprocessable(format!(
                "element {k} is null (FHIR JSON omits empty elements)"
            )));
        }
    }
    if obj.get("id").is_some_and(|id| !id.is_string()) {
        return Err(ServeError::Unprocessable("id must be a string".into()));
    }
    match obj.get_mut("meta") {
        None => {}
        Some(Value::Object(meta)) => {
            // The server numbers versions and stamps the time.
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                obj.remove("meta");
            }
        }
        Some(_) => return Err(ServeError::Unprocessable("meta must be an object".into())),
    }
    Ok(value)
}

/// Imports `value` (which writes `t/id`), under the caller's write lock. First brings
/// the vault up to date, so that other devices' changes are told apart from this
/// write: if the resources changed meanwhile the cache is emptied and warmed again,
/// otherwise only `t/id` is dropped from it.
async fn store(
    state: &Arc<AppState>,
    name: &str,
    value: &Value,
    t: &str,
    id: &str,
) -> Result<(), ServeError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| ServeError::Unprocessable(format!("encoding the resource: {e}")))?;
    refresh(state).await?;
    let result = state
        .vault
        .import(vec![Input::from_bytes(name, bytes)])
        .await;
    // Whatever happened, the written resource may have moved.
    state.cache.invalidate(t, id);
    *state.cache.known() = state.vault.resources_fingerprint().await;
    // An import rotates expired grants away.
    state.auth.refresh_grants(&state.vault).await;
    result?;
    Ok(())
}

/// A 403 when a caller with a patient context writes a resource into another
/// patient's compartment.
fn check_patients(caller: &Caller, t: &str, id: &str, resource: &Value) -> Result<(), ServeError> {
    if caller
        .confine
        .allows_patients(&ehi_vault::fhir::patient_refs(t, id, resource))
    {
        Ok(())
    } else {
        Err(ServeError::Forbidden(format!(
            "the token's patient context does not cover the patients {t}/{id} references"
        )))
    }
}

fn new_id() -> Result<String, ServeError> {
    let mut b = ehi_vault::keys::random_bytes::<16>()
        .map_err(|e| ServeError::Vault(EhiError::Keystore(e)))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

pub(super) async fn create(
    state: &Arc<AppState>,
    caller: &Caller,
    t: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Create)?;
    let mut resource = resource_body(headers, body, t)?;
    let id = new_id()?;
    check_patients(caller, t, &id, &resource)?;
    resource["id"] = Value::String(id.clone());
    let _guard = state.write.lock().await;
    store(state, &format!("POST {t}"), &resource, t, &id).await?;
    let stored = state.vault.read(t, &id).await?;
    let location = format!(
        "{}/{t}/{id}/_history/{}",
        state.base,
        version_of(&stored).unwrap_or("1")
    );
    Ok(resource_response(
        StatusCode::CREATED,
        &stored,
        Some(location),
    ))
}

/// The version in `If-Match: W/"n"` (or `"n"`, or `n`).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ServeError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let inner = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    inner.parse().map(Some).map_err(|_| {
        ServeError::BadRequest(format!(
            "If-Match {text:?}: expected a version ETag W/\"n\""
        ))
    })
}

pub(super) async fn update(
    state: &Arc<AppState>,
    caller: &Caller,
    t: &str,
    id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Update)?;
    if !valid_id(id) {
        return Err(ServeError::BadRequest(format!("{id:?} is not a valid id")));
    }
    let resource = resource_body(headers, body, t)?;
    match resource.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => {}
        Some(body_id) => {
            return Err(ServeError::BadRequest(format!(
                "the resource's id {body_id:?} differs from the url's {id:?}"
            )));
        }
        None => {
            return Err(ServeError::BadRequest(
                "an update needs the resource's id (equal to the url's)".into(),
            ));
        }
    }
    let expected = if_match(headers)?;
    check_patients(caller, t, id, &resource)?;
    let _guard = state.write.lock().await;
    if !state
        .vault
        .placements(&[(t.to_string(), id.to_string())])
        .await
        .iter()
        .all(Option::is_none)
    {
        check_visible(state, caller, t, id).await?;
    }
    let current = match state.vault.read(t, id).await {
        Ok(r) => version_of(&r).and_then(|v| v.parse::<u64>().ok()),
        Err(EhiError::NotFound(_) | EhiError::Gone(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(expected) = expected
        && current != Some(expected)
    {
        return Err(ServeError::PreconditionFailed(format!(
            "If-Match W/\"{expected}\" but the current version of {t}/{id} is {}",
            current.map_or_else(|| "none".to_string(), |v| format!("W/\"{v}\""))
        )));
    }
    store(state, &format!("PUT {t}/{id}"), &resource, t, id).await?;
    let stored = state.vault.read(t, id).await?;
    let status = if current.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let location = format!(
        "{}/{t}/{id}/_history/{}",
        state.base,
        version_of(&stored).unwrap_or("1")
    );
    Ok(resource_response(status, &stored, Some(location)))
}

pub(super) async fn delete(
    state: &Arc<AppState>,
    caller: &Caller,
    t: &str,
    id: &str,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Delete)?;
    check_id(id)?;
    check_visible(state, caller, t, id).await?;
    let _guard = state.write.lock().await;
    match state.vault.read(t, id).await {
        Ok(_) => {}
        Err(EhiError::Gone(_)) => return Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => return Err(e.into()),
    }
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": format!("{t}/{id}")}}
    ]});
    store(state, &format!("DELETE {t}/{id}"), &bundle, t, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
