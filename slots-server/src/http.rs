//! The slots protocol's routes and handlers.
//!
//! | route | answer |
//! |---|---|
//! | `PUT\|POST /slots/register` | JSON `true`; 409 id taken; 400 invalid (bad key, ed25519 id not a key, proof) |
//! | `GET /slots/:id` | JSON state; 404 unknown |
//! | `PUT /slots/:id` | JSON `true`; 409 stale `previous`; 403 bad or missing signature; 404 unknown; 400 malformed |
//! | `GET /slots/config/:id` (also `/slots/configuration/:id`) | JSON `{signature, proof}`; 404 |
//! | `GET /slots/history/:id` | NDJSON states, newest first, to the registration; 404 |
//! | `GET /slots/watch/:id` | NDJSON: the current state, then each accepted state; 404 |
//!
//! Signatures are checked here, on the blocking pool, before an update reaches the
//! writer, with verifiers cached per slot ([`crate::verifiers`]); the writer only
//! compares `previous` with the current address.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use invariant_runtime::{ApiError, ApiJson, ApiPath, ApiResult};
use invariant_spec::Id;
use invariant_spec::slots::{RegisterRequest, SlotConfig, SlotState, SlotVerifier, UpdateRequest};

use crate::AppState;
use crate::store::{self, Op, Outcome, StoreError};
use crate::watch::{history_stream, state_line, watch_stream};
use crate::writer::WriteError;

/// Content type of history and watch answers.
const NDJSON: &str = "application/x-ndjson";

/// Every route [`router`] serves, as `(method, path)` (axum path syntax). Listed for
/// tools that compare a server with its OpenAPI description (`spec/openapi/`).
pub const ROUTES: &[(&str, &str)] = &[
    ("PUT", "/slots/register"),
    ("POST", "/slots/register"),
    ("GET", "/slots/config/{id}"),
    ("GET", "/slots/configuration/{id}"),
    ("GET", "/slots/history/{id}"),
    ("GET", "/slots/watch/{id}"),
    ("GET", "/slots/{id}"),
    ("PUT", "/slots/{id}"),
];

/// Every slots route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/slots/register", put(register).post(register))
        .route("/slots/config/{id}", get(config))
        .route("/slots/configuration/{id}", get(config))
        .route("/slots/history/{id}", get(history))
        .route("/slots/watch/{id}", get(watch))
        .route("/slots/{id}", get(get_slot).put(update))
        .with_state(state)
}

fn unknown(id: &Id) -> ApiError {
    ApiError::not_found(format!("slot {id} is not registered here"))
}

fn unsupported() -> ApiError {
    ApiError::bad_request("this server cannot store that signature kind")
}

fn write_failed(e: WriteError) -> ApiError {
    ApiError::internal("writing slots", e)
}

/// Runs database work on the blocking pool.
async fn blocking<T, F>(context: &'static str, f: F) -> ApiResult<T>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ApiError::internal(context, e)),
        Err(e) => Err(ApiError::internal(context, e)),
    }
}

async fn register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> ApiResult<Json<bool>> {
    let signature = request.signature.unwrap_or_default();
    // Validates the configuration (parses an RSA key; checks an ed25519 id is a key).
    let verifier = SlotVerifier::new(request.id, &signature)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !store::supports(&signature) {
        return Err(unsupported());
    }
    let op = Op::Register {
        id: request.id,
        address: request.address,
        signature,
    };
    match state.writer().submit(op).await.map_err(write_failed)? {
        Outcome::Accepted { .. } => {
            state.verifiers().insert(request.id, Arc::new(verifier));
            Ok(Json(true))
        }
        Outcome::Taken => Err(ApiError::conflict(format!(
            "slot {} is already registered",
            request.id
        ))),
        Outcome::Unsupported => Err(unsupported()),
        other => Err(ApiError::internal(
            "registering a slot",
            format!("{other:?}"),
        )),
    }
}

async fn get_slot(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Id>,
) -> ApiResult<Json<SlotState>> {
    let store = state.store();
    match blocking("reading a slot", move || store.current(&id)).await? {
        Some((_, current)) => Ok(Json(current)),
        None => Err(unknown(&id)),
    }
}

/// The verifier of slot `id`: cached, or built from its stored configuration.
async fn verifier(state: &AppState, id: Id) -> ApiResult<Arc<SlotVerifier>> {
    if let Some(verifier) = state.verifiers().get(&id) {
        return Ok(verifier);
    }
    let store = state.store();
    let Some(config) = blocking("reading a slot config", move || store.config(&id)).await? else {
        return Err(unknown(&id));
    };
    // Checked at registration; a stored key that no longer parses cannot authorise.
    let verifier =
        SlotVerifier::new(id, &config).map_err(|e| ApiError::forbidden(e.to_string()))?;
    let verifier = Arc::new(verifier);
    state.verifiers().insert(id, Arc::clone(&verifier));
    Ok(verifier)
}

async fn update(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Id>,
    ApiJson(request): ApiJson<UpdateRequest>,
) -> ApiResult<Json<bool>> {
    let UpdateRequest {
        address,
        previous,
        signature,
        ..
    } = request;
    let verifier = verifier(&state, id).await?;
    let signature = if verifier.requires_signature() {
        // Signature checks are CPU work: keep them off the async workers.
        let checked = tokio::task::spawn_blocking(move || {
            verifier.verify(&previous, &address, signature.as_deref())
        })
        .await
        .map_err(|e| ApiError::internal("verifying a signature", e))?;
        checked.map_err(|e| ApiError::forbidden(e.to_string()))?
    } else {
        None
    };
    let op = Op::Update {
        id,
        previous,
        address,
        signature,
    };
    match state.writer().submit(op).await.map_err(write_failed)? {
        Outcome::Accepted { .. } => Ok(Json(true)),
        Outcome::Stale { current } => Err(ApiError::conflict(format!(
            "previous {previous} is stale: slot {id} holds {current}"
        ))),
        Outcome::Unknown => Err(unknown(&id)),
        other @ (Outcome::Taken | Outcome::Unsupported) => {
            Err(ApiError::internal("updating a slot", format!("{other:?}")))
        }
    }
}

async fn config(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Id>,
) -> ApiResult<Json<SlotConfig>> {
    let store = state.store();
    match blocking("reading a slot config", move || store.config(&id)).await? {
        Some(signature) => Ok(Json(SlotConfig {
            signature,
            ..SlotConfig::default()
        })),
        None => Err(unknown(&id)),
    }
}

fn ndjson(body: Body) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn history(State(state): State<AppState>, ApiPath(id): ApiPath<Id>) -> ApiResult<Response> {
    let store = state.store();
    let current = blocking("reading a slot", move || store.current(&id)).await?;
    let Some((seq, _)) = current else {
        return Err(unknown(&id));
    };
    Ok(ndjson(Body::from_stream(history_stream(
        state.store(),
        id,
        seq,
    ))))
}

async fn watch(State(state): State<AppState>, ApiPath(id): ApiPath<Id>) -> ApiResult<Response> {
    // Subscribe first: every state committed after the read below is then delivered.
    let receiver = state.watchers().subscribe(&id);
    let store = state.store();
    let current = blocking("reading a slot", move || store.current(&id)).await?;
    let Some((seq, current)) = current else {
        return Err(unknown(&id));
    };
    let first = state_line(&current).map_err(|e| ApiError::internal("encoding a state", e))?;
    Ok(ndjson(Body::from_stream(watch_stream(
        state.store(),
        id,
        receiver,
        seq,
        first,
        state.shutdown().clone(),
    ))))
}
