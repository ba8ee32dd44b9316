//! The find protocol's routes and handlers.
//!
//! | route | answer |
//! |---|---|
//! | `GET /find/:id` | 200 `text/plain`: `HAS <container>` lines (most recently seen first, at most [`MAX_HAS_LINES`]), then `CLOSER <find>` lines (the up to [`K`] known find servers strictly nearer to `:id` than this one, nearest first) |
//! | `PUT\|POST /find/has` | JSON `{container, ids \| items}` → 200 once durably recorded |
//! | `PUT\|POST /find/gone` | JSON `{container, ids \| items}` → 200 once those records are durably removed |
//! | `PUT\|POST /find/notify` | JSON `{find}` → 200 once added; 404 when the broker cannot resolve it, 503 when the broker is unreachable |
//!
//! Malformed ids or bodies get a plain-text 400 and change nothing.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use invariant_runtime::{ApiError, ApiJson, ApiPath, ApiResult};
use invariant_spec::Id;
use invariant_spec::find::{FindAnswer, HasRequest, NotifyRequest};
use std::fmt::Write as _;

use crate::routing::K;
use crate::{AppState, FindError, blocking, forward, now_ms, peers};

/// Most `HAS` lines in one answer.
pub const MAX_HAS_LINES: usize = 1000;

/// Every route [`router`] serves, as `(method, path)` (axum path syntax). Listed for
/// tools that compare a server with its OpenAPI description (`spec/openapi/`).
pub const ROUTES: &[(&str, &str)] = &[
    ("PUT", "/find/has"),
    ("POST", "/find/has"),
    ("PUT", "/find/gone"),
    ("POST", "/find/gone"),
    ("PUT", "/find/notify"),
    ("POST", "/find/notify"),
    ("GET", "/find/{id}"),
];

/// Every find route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/find/has", put(has).post(has))
        .route("/find/gone", put(gone).post(gone))
        .route("/find/notify", put(notify).post(notify))
        .route("/find/{id}", get(find))
        .with_state(state)
}

fn internal(context: &'static str) -> impl FnOnce(FindError) -> ApiError {
    move |e| ApiError::internal(context, e)
}

async fn find(State(state): State<AppState>, ApiPath(id): ApiPath<Id>) -> ApiResult<Response> {
    let store = state.store().clone();
    let holders = blocking(move || store.holders(&id, MAX_HAS_LINES))
        .await
        .map_err(internal("reading has-records"))?;
    let closer = state.routing().closer_than_self(&id, K);
    let mut body = String::with_capacity((holders.len() + closer.len()) * 72);
    let answers = holders
        .iter()
        .map(|h| FindAnswer::Has(h.container))
        .chain(closer.into_iter().map(FindAnswer::Closer));
    for answer in answers {
        // Writing to a String cannot fail.
        let _ = writeln!(body, "{answer}");
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

async fn has(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<HasRequest>,
) -> ApiResult<Response> {
    apply_report(state, request, forward::Kind::Has).await
}

async fn gone(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<HasRequest>,
) -> ApiResult<Response> {
    apply_report(state, request, forward::Kind::Gone).await
}

/// Records (`Has`) or drops (`Gone`) the container's records of the ids, then
/// forwards the report to nearer find servers.
async fn apply_report(
    state: AppState,
    request: HasRequest,
    kind: forward::Kind,
) -> ApiResult<Response> {
    let HasRequest { container, ids } = request;
    if ids.is_empty() {
        return Ok(StatusCode::OK.into_response());
    }
    let store = state.store().clone();
    let listed = ids.clone();
    let changed = match kind {
        forward::Kind::Has => {
            let now = now_ms();
            blocking(move || store.record(&container, &listed, now))
                .await
                .map_err(internal("recording has-records"))?
        }
        forward::Kind::Gone => blocking(move || store.remove(&container, &listed))
            .await
            .map_err(internal("removing has-records"))?,
    };
    tracing::debug!(%container, ids = ids.len(), changed, ?kind, "find report");
    forward::enqueue(&state, kind, container, ids);
    Ok(StatusCode::OK.into_response())
}

async fn notify(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<NotifyRequest>,
) -> ApiResult<Response> {
    let find = request.find;
    if find == state.id() {
        return Ok(StatusCode::OK.into_response());
    }
    if state.broker().is_some() {
        match peers::client_for(&state, &find).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(ApiError::not_found(format!(
                    "the broker cannot resolve find server {find}"
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, "broker unreachable");
                return Err(ApiError::unavailable("the broker is unreachable"));
            }
        }
    }
    peers::learn(&state, find)
        .await
        .map_err(internal("recording a find server"))?;
    peers::succeeded(&state, &find);
    Ok(StatusCode::OK.into_response())
}
