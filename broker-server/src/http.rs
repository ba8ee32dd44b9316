//! The broker protocol's routes and handlers.
//!
//! | route | answer |
//! |---|---|
//! | `POST /broker/register` | JSON [`Registration`] (`urls` and/or `url`) → JSON [`RegisterResponse`] with the broker's id; 400 bad kind, no or bad url, malformed JSON |
//! | `GET /broker/location/:id` | JSON [`Location`] with `urls` and `url` (the first); 404 unknown, 400 bad id |
//! | `GET /broker/registered/:kind` | JSON array of ids (`[]` when none); 400 unknown kind |
//! | `GET /broker/servers/:kind` | `text/plain`, one id per line; 400 unknown kind |
//!
//! A 200 to a registration means it is durably committed.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use invariant_runtime::{ApiError, ApiJson, ApiPath, ApiResult};
use invariant_spec::Id;
use invariant_spec::broker::{KINDS, Location, RegisterResponse, Registration};

use crate::AppState;
use crate::record::Record;
use crate::store::StoreError;

/// Every route [`router`] serves, as `(method, path)` (axum path syntax). Listed for
/// tools that compare a server with its OpenAPI description (`spec/openapi/`).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/broker/register"),
    ("GET", "/broker/location/{id}"),
    ("GET", "/broker/registered/{kind}"),
    ("GET", "/broker/servers/{kind}"),
];

/// Every broker route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/broker/register", post(register))
        .route("/broker/location/{id}", get(location))
        .route("/broker/registered/{kind}", get(registered))
        .route("/broker/servers/{kind}", get(servers))
        .with_state(state)
}

fn store_error(context: &'static str) -> impl FnOnce(StoreError) -> ApiError {
    move |e| ApiError::internal(context, e)
}

async fn register(
    State(state): State<AppState>,
    ApiJson(registration): ApiJson<Registration>,
) -> ApiResult<Json<RegisterResponse>> {
    let record = Record::from_registration(&registration)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = registration.id;
    let stored = record.clone();
    state
        .store()
        .blocking(move |s| s.put(&id, &stored))
        .await
        .map_err(store_error("saving a registration"))?;
    tracing::info!(%id, kind = record.kind, urls = ?record.urls, "registered");
    Ok(Json(RegisterResponse {
        id: state.id(),
        salt: None,
        minnonce: None,
    }))
}

async fn location(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Id>,
) -> ApiResult<Json<Location>> {
    let record = state
        .store()
        .blocking(move |s| s.get(&id))
        .await
        .map_err(store_error("reading a registration"))?
        .ok_or_else(|| ApiError::not_found(format!("server {id} is not registered")))?;
    Ok(Json(Location {
        id,
        url: record.urls.first().cloned(),
        urls: record.urls,
        ttl: None,
        token: None,
    }))
}

async fn ids_of_kind(state: &AppState, kind: String) -> ApiResult<Vec<Id>> {
    if !KINDS.contains(&kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "unknown kind {kind:?}; expected one of: {}",
            KINDS.join(", ")
        )));
    }
    state
        .store()
        .blocking(move |s| s.ids_of_kind(&kind))
        .await
        .map_err(store_error("listing registrations"))
}

async fn registered(
    State(state): State<AppState>,
    ApiPath(kind): ApiPath<String>,
) -> ApiResult<Json<Vec<Id>>> {
    Ok(Json(ids_of_kind(&state, kind).await?))
}

async fn servers(
    State(state): State<AppState>,
    ApiPath(kind): ApiPath<String>,
) -> ApiResult<Response> {
    let ids = ids_of_kind(&state, kind).await?;
    let mut body = String::with_capacity(ids.len() * (Id::HEX_LEN + 1));
    for id in ids {
        body.push_str(&id.to_string());
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}
