//! The request path of the facade: [`handle`] (removal check, audit entry) and
//! [`route`] (format check, public endpoints, authorization, then the interaction the
//! method and path name).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::access::{Caller, authorize};
use super::everything::everything;
use super::follow::{mark_removed, removed_response};
use super::patient_summary::patient_summary;
use super::read::{history, read, type_history, vread};
use super::respond::{fhir_response, known_type};
use super::search::search;
use super::write::{create, delete, update};
use super::{AppState, MAX_BODY, Pairs, ServeError, audit, bulk, capability, oauth};
use ehi_vault::error::EhiError;
use ehi_vault::time::now_ms;

pub(super) async fn handle(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if *state.removed.borrow() {
        return removed_response();
    }
    let ms = now_ms();
    let method = request.method().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_string(), |p| p.to_string());
    let mut who: Option<Caller> = None;
    let response = match route(&state, request, &mut who).await {
        Ok(response) => response,
        Err(ServeError::Vault(EhiError::Removed { .. })) => {
            mark_removed(&state);
            return removed_response();
        }
        Err(e) => e.into_response(),
    };
    if *state.removed.borrow() {
        // Removed while this request ran: what it read is not handed out.
        return removed_response();
    }
    if state.audit {
        let segs: Vec<&str> = target
            .split('?')
            .next()
            .unwrap_or("")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let interaction = audit::Interaction::of(&method, &segs);
        let requestor = match who {
            Some(caller) => caller.requestor,
            None => Some(ehi_vault::audit::Requestor {
                name: "unauthenticated client".into(),
                grant: None,
            }),
        };
        state.vault.audit_queue().push(audit::entry(
            &method,
            &target,
            requestor,
            response.status().as_u16(),
            ms,
            interaction,
        ));
    }
    response
}

async fn route(
    state: &Arc<AppState>,
    request: Request,
    who: &mut Option<Caller>,
) -> Result<Response, ServeError> {
    let (parts, body) = request.into_parts();
    let mut pairs: Pairs = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    check_format(&parts.headers, &pairs)?;
    let segments: Vec<String> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ServeError::BadRequest(format!("path segment {s:?} is not UTF-8")))
        })
        .collect::<Result<_, _>>()?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = parts.method.clone();
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["metadata"]) => {
            return Ok(fhir_response(
                StatusCode::OK,
                &capability::capability_statement(&state.base),
            ));
        }
        ("GET", [".well-known", "smart-configuration"]) => {
            return Ok(axum::Json(oauth::smart_configuration(&state.base)).into_response());
        }
        ("GET", ["authorize"]) => return Ok(oauth::authorize(state, &pairs).await),
        ("POST", ["token"]) => {
            let body = axum::body::to_bytes(body, 64 * 1024)
                .await
                .map_err(|e| ServeError::BadRequest(format!("reading the body: {e}")))?;
            pairs.extend(form_urlencoded::parse(&body).into_owned());
            return Ok(match oauth::token(state, &pairs).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            });
        }
        _ => {}
    }
    let caller = authorize(state, &parts.headers)?;
    *who = Some(caller.clone());
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ServeError::BadRequest(format!("reading the body: {e}")))?;
    let headers = &parts.headers;
    let full_url = format!(
        "{}{}",
        state.base,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["$export"]) => {
            bulk::kickoff(
                state,
                &caller,
                headers,
                &pairs,
                bulk::Level::System,
                full_url,
            )
            .await
        }
        ("GET", ["Patient", "$export"]) => {
            bulk::kickoff(
                state,
                &caller,
                headers,
                &pairs,
                bulk::Level::Patients,
                full_url,
            )
            .await
        }
        ("GET", ["Patient", id, "$export"]) => {
            let level = bulk::Level::Patient((*id).to_string());
            bulk::kickoff(state, &caller, headers, &pairs, level, full_url).await
        }
        ("GET", ["$export-status", job]) => bulk::status(state, &caller, job),
        ("DELETE", ["$export-status", job]) => bulk::cancel(state, &caller, job),
        ("GET", ["$export-file", job, file]) => bulk::file(state, &caller, job, file),
        ("GET", [t]) => search(state, &caller, known_type(t)?, pairs, headers).await,
        ("POST", [t]) => create(state, &caller, known_type(t)?, headers, &body).await,
        ("POST", [t, "_search"]) => {
            let t = known_type(t)?;
            let form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if !form && !body.is_empty() {
                return Err(ServeError::UnsupportedMediaType(
                    "POST _search takes an application/x-www-form-urlencoded body".into(),
                ));
            }
            pairs.extend(form_urlencoded::parse(&body).into_owned());
            search(state, &caller, t, pairs, headers).await
        }
        ("GET", [t, "_history"]) => type_history(state, &caller, known_type(t)?, &pairs).await,
        ("GET", ["Patient", id, "$everything"]) => everything(state, &caller, id, &pairs).await,
        ("GET" | "POST", ["Patient", id, "$summary"]) => {
            check_operation_body(headers, &body)?;
            patient_summary(state, &caller, Some(id), &pairs).await
        }
        ("GET" | "POST", ["Patient", "$summary"]) => {
            check_operation_body(headers, &body)?;
            patient_summary(state, &caller, None, &pairs).await
        }
        ("GET", [t, id]) => read(state, &caller, known_type(t)?, id, &pairs).await,
        ("PUT", [t, id]) => update(state, &caller, known_type(t)?, id, headers, &body).await,
        ("DELETE", [t, id]) => delete(state, &caller, known_type(t)?, id).await,
        ("GET", [t, id, "_history"]) => history(state, &caller, known_type(t)?, id).await,
        ("GET", [t, id, "_history", v]) => vread(state, &caller, known_type(t)?, id, v).await,
        (_, [] | [_] | [_, _] | [_, _, "_history"] | [_, _, "_history", _]) => Err(
            ServeError::MethodNotAllowed(format!("{method} is not supported on this path")),
        ),
        _ => Err(ServeError::NotFound(format!(
            "no such endpoint: {}",
            parts.uri.path()
        ))),
    }
}

/// The body of a POSTed operation: empty, or a FHIR `Parameters` resource (whose
/// parameters this server does not read: `$summary` takes them from the url).
fn check_operation_body(headers: &HeaderMap, body: &[u8]) -> Result<(), ServeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let parameters = serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v["resourceType"] == "Parameters" && v.get("parameter").is_none());
    if json && parameters {
        Ok(())
    } else {
        Err(ServeError::BadRequest(
            "$summary takes its parameters in the url; a POSTed body must be an empty \
             Parameters resource"
                .into(),
        ))
    }
}

/// 406 unless the client accepts FHIR JSON (or ndjson for bulk files).
fn check_format(headers: &HeaderMap, pairs: &Pairs) -> Result<(), ServeError> {
    const JSON: &[&str] = &[
        "json",
        "application/json",
        "application/fhir+json",
        "application/json+fhir",
    ];
    for (k, v) in pairs {
        let media = v.split(';').next().unwrap_or("").trim();
        if k == "_format" && !JSON.contains(&media) {
            return Err(ServeError::NotAcceptable(format!(
                "_format={v}: only application/fhir+json is served"
            )));
        }
    }
    for accept in headers.get_all(header::ACCEPT) {
        let Ok(accept) = accept.to_str() else {
            continue;
        };
        let ok = accept.split(',').any(|m| {
            let m = m
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            m.is_empty()
                || m == "*/*"
                || m == "application/*"
                || JSON.contains(&m.as_str())
                || m == "application/fhir+ndjson"
                || m == "application/ndjson"
        });
        if !ok {
            return Err(ServeError::NotAcceptable(format!(
                "Accept: {accept}: only application/fhir+json is served"
            )));
        }
    }
    Ok(())
}
