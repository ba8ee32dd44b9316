//! The names protocol's routes and handlers.
//!
//! | route | answer |
//! |---|---|
//! | `GET /names/lookup/:name` | 200 JSON `{name, address, ttl, authoritative, slot}`; 404 unknown; 400 bad name; 503 DNS failed |
//! | `PUT /names/register` | JSON `{name, address, ttl?, slot?}` → 200 `true`; 409 taken; 400 malformed |
//! | `POST /names/update` | JSON `{name, previous, address, ttl?, slot?}` → 200 `true`/`false`; 404 unknown; 400 malformed |
//!
//! Lookups answer from the server's own records first, then from DNS when configured.
//! "Not found" in DNS (no such name, no TXT record, no invariant TXT record) is a 404; a
//! DNS failure (timeout, refusal, server failure) is a 503, since the name may exist.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post, put};
use invariant_runtime::{ApiError, ApiJson, ApiPath, ApiResult, blocking};
use invariant_spec::Id;
use invariant_spec::names::{NameRecord, RegisterRequest, UpdateRequest, canonical_name};

use crate::AppState;
use crate::store::{RegisterOutcome, StoredName, UpdateOutcome};

/// Every route [`router`] serves, as `(method, path)` (axum path syntax). Listed for
/// tools that compare a server with its OpenAPI description (`spec/openapi/`).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/names/lookup/{name}"),
    ("PUT", "/names/register"),
    ("POST", "/names/update"),
];

/// Every names route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/names/lookup/{name}", get(lookup))
        .route("/names/register", put(register))
        .route("/names/update", post(update))
        .with_state(state)
}

fn canonical(name: &str) -> ApiResult<String> {
    canonical_name(name).map_err(|e| ApiError::bad_request(format!("invalid name: {e}")))
}

async fn lookup(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<NameRecord>> {
    let name = canonical(&name)?;
    let store = state.store().clone();
    let key = name.clone();
    if let Some(held) = blocking("reading a name", move || store.get(&key)).await? {
        return Ok(Json(NameRecord {
            name,
            address: held.address,
            ttl: held.ttl,
            authoritative: true,
            slot: held.slot,
        }));
    }
    let Some(dns) = state.dns() else {
        return Err(ApiError::not_found(format!(
            "name {name} is not registered"
        )));
    };
    match dns.lookup(&name).await {
        Ok(Some(answer)) => Ok(Json(NameRecord {
            name,
            address: answer.address,
            ttl: answer.ttl,
            authoritative: false,
            slot: answer.slot,
        })),
        Ok(None) => Err(ApiError::not_found(format!(
            "name {name} is not registered and has no invariant TXT record"
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "DNS fallback failed");
            Err(ApiError::unavailable(format!(
                "name {name} is not registered and DNS did not answer"
            )))
        }
    }
}

/// The record a register or update request asks for, the server's default ttl filling
/// in an absent one.
fn stored_name(state: &AppState, address: Id, ttl: Option<u32>, slot: Option<bool>) -> StoredName {
    StoredName {
        address,
        ttl: ttl.unwrap_or(state.default_ttl()),
        slot: slot.unwrap_or(false),
    }
}

async fn register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> ApiResult<Json<bool>> {
    let name = canonical(&request.name)?;
    let record = stored_name(&state, request.address, request.ttl, request.slot);
    let store = state.store().clone();
    let key = name.clone();
    let outcome = blocking("registering a name", move || store.register(&key, &record)).await?;
    match outcome {
        RegisterOutcome::Registered => Ok(Json(true)),
        RegisterOutcome::Taken => Err(ApiError::conflict(format!(
            "name {name} is already registered"
        ))),
    }
}

async fn update(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<UpdateRequest>,
) -> ApiResult<Json<bool>> {
    let name = canonical(&request.name)?;
    let record = stored_name(&state, request.address, request.ttl, request.slot);
    let previous = request.previous;
    let store = state.store().clone();
    let key = name.clone();
    let outcome = blocking("updating a name", move || {
        store.update(&key, &previous, &record)
    })
    .await?;
    match outcome {
        UpdateOutcome::Updated => Ok(Json(true)),
        UpdateOutcome::Stale { .. } => Ok(Json(false)),
        UpdateOutcome::Unknown => Err(ApiError::not_found(format!(
            "name {name} is not registered"
        ))),
    }
}
