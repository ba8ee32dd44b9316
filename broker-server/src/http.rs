//! The broker protocol's routes and handlers.
//!
//! | route | answer |
//! |---|---|
//! | `POST /broker/register` | JSON [`Registration`] (`urls` and/or `url`) → JSON [`RegisterResponse`] with the broker's id; 400 bad kind, no or bad url, malformed JSON; in auth mode 401 without a token, 403 without `broker:register` or when another subject owns the id |
//! | `GET /broker/location/:id` | JSON [`Location`] with `urls` and `url` (the first); 404 unknown, 400 bad id |
//! | `GET /broker/registered/:kind` | JSON array of ids (`[]` when none); 400 unknown kind |
//! | `GET /broker/servers/:kind` | `text/plain`, one id per line; 400 unknown kind |
//!
//! A 200 to a registration means it is durably committed.
//!
//! Ownership (auth mode, when the request carries a verified [`Caller`]): the record
//! is bound to the caller's subject. An id owned by another subject is refused with
//! 403 and nothing changes, unless the caller also holds `broker:admin` (operator
//! tokens hold `*`), in which case the record is replaced and owned by the caller.
//! An id without an owner (registered in open mode or before owners were kept) is
//! claimed by the first authenticated registrant. In open mode there is no caller:
//! every registration replaces the id's record, as it always did, and leaves it without
//! an owner.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use invariant_runtime::{ApiError, ApiJson, ApiPath, ApiResult, Caller, Role};
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
    caller: Option<Extension<Arc<Caller>>>,
    ApiJson(registration): ApiJson<Registration>,
) -> ApiResult<Json<RegisterResponse>> {
    let mut record = Record::from_registration(&registration)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = registration.id;
    let may_override = match &caller {
        Some(Extension(caller)) => {
            record.owner = Some(caller.subject.clone());
            caller.allows(Role::Broker, "admin")
        }
        None => true,
    };
    let stored = record.clone();
    state
        .store()
        .blocking(move |s| s.put_checked(&id, &stored, may_override))
        .await
        .map_err(store_error("saving a registration"))?
        .map_err(|refused| {
            tracing::warn!(
                %id,
                subject = record.owner.as_deref().unwrap_or_default(),
                "refused a registration of an id another subject owns"
            );
            let whose = if refused.readable {
                "is registered by another subject"
            } else {
                "has a registration of unknown owner"
            };
            ApiError::forbidden(format!(
                "server {id} {whose}; only its owner or a holder of broker:admin may \
                 replace it; nothing was changed"
            ))
        })?;
    tracing::info!(%id, kind = record.kind, urls = ?record.urls, owner = ?record.owner, "registered");
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
