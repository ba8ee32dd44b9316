//! The slots protocol's routes and handlers.
//!
//! | route | answer |
//! |---|---|
//! | `PUT\|POST /slots/register` | JSON `true`; 409 id taken; 403 claim does not verify; 400 invalid (bad key, ed25519 id not a key, proof, claim on a non-ed25519 slot) |
//! | `GET /slots/:id` | JSON state; 404 unknown |
//! | `PUT /slots/:id` | JSON `true`; 409 stale `previous`; 403 bad or missing signature, or not the owner of an unsigned slot; 404 unknown; 400 malformed |
//! | `GET /slots/config/:id` (also `/slots/configuration/:id`) | JSON `{signature, proof}`; 404 |
//! | `GET /slots/history/:id` | NDJSON states, newest first, to the registration; 404 |
//! | `GET /slots/watch/:id` | NDJSON: the current state, then each accepted state; 404 |
//!
//! Signatures are checked here, on the blocking pool, before an update reaches the
//! writer, with verifiers cached per slot ([`crate::verifiers`]); the writer only
//! compares `previous` with the current address (and that the slot's registration is
//! still the one the request was checked against).
//!
//! **Ownership (auth mode).** A registration records the caller's token subject as the
//! slot's owner. An update of an unsigned (`none`) slot that has an owner is accepted
//! only from that subject or from a caller whose token also allows `slots:admin`
//! (operators); anyone else gets 403 and nothing changes. Signed slots are governed by
//! their signature alone, and unowned slots (registered in open mode or before owners
//! were recorded) by the `slots:write` right alone. In open mode there is no caller and
//! nothing of this applies.
//!
//! **Claims.** An `ed25519` registration may carry a claim — the key's signature of the
//! registration state — which is verified here (403 if it does not verify, 400 on
//! another kind). A claimed registration replaces an unsigned or `sha256:rsa` slot
//! holding the id, so registering someone's public key first cannot lock its owner out
//! (`spec/slots.md`, "Claiming an ed25519 id").

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use invariant_runtime::{ApiError, ApiJson, ApiPath, ApiResult, Caller, Role, blocking};
use invariant_spec::Id;
use invariant_spec::slots::{
    RegisterRequest, SignatureConfig, SlotConfig, SlotState, SlotVerifier, UpdateRequest,
};

use crate::AppState;
use crate::store::{self, Op, Outcome};
use crate::verifiers::Rules;
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

/// The verified caller of a request, `None` in open mode.
type MaybeCaller = Option<Extension<Arc<Caller>>>;

/// The subject recorded as a new slot's owner: the caller's, in auth mode.
fn owner_of(caller: &MaybeCaller) -> Option<String> {
    caller
        .as_ref()
        .map(|Extension(caller)| caller.subject.clone())
        .filter(|subject| !subject.is_empty())
}

async fn register(
    State(state): State<AppState>,
    caller: MaybeCaller,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> ApiResult<Json<bool>> {
    let RegisterRequest {
        id,
        address,
        signature,
        claim,
        ..
    } = request;
    let signature = signature.unwrap_or_default();
    // Validates the configuration (parses an RSA key; checks an ed25519 id is a key).
    let verifier =
        SlotVerifier::new(id, &signature).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !store::supports(&signature) {
        return Err(unsupported());
    }
    let (verifier, claim) = match claim {
        None => (verifier, None),
        Some(_) if signature != SignatureConfig::Ed25519 => {
            return Err(ApiError::bad_request(
                "only ed25519 registrations carry a claim",
            ));
        }
        Some(text) => {
            // Signature checks are CPU work: keep them off the async workers.
            let checked = tokio::task::spawn_blocking(move || {
                let bytes = verifier.verify_claim(&address, &text);
                (verifier, bytes)
            })
            .await
            .map_err(|e| ApiError::internal("verifying a claim", e))?;
            let bytes = checked.1.map_err(|e| {
                ApiError::forbidden(format!("the claim of slot {id} is refused: {e}"))
            })?;
            (checked.0, Some(bytes))
        }
    };
    let claimed = claim.is_some();
    let owner = owner_of(&caller);
    let op = Op::Register {
        id,
        address,
        signature,
        owner: owner.clone(),
        claim,
    };
    match state.writer().submit(op).await.map_err(write_failed)? {
        Outcome::Accepted { seq, .. } | Outcome::Claimed { seq, .. } => {
            let rules = Rules {
                verifier,
                owner,
                base: seq,
            };
            state.verifiers().insert(id, Arc::new(rules));
            Ok(Json(true))
        }
        Outcome::Taken if claimed => Err(ApiError::conflict(format!(
            "slot {id} is already registered as an ed25519 slot; a claim replaces only \
             unsigned and sha256:rsa slots"
        ))),
        Outcome::Taken => Err(ApiError::conflict(format!(
            "slot {id} is already registered"
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

/// The rules of slot `id`: cached, or built from its stored registration.
async fn rules(state: &AppState, id: Id) -> ApiResult<Arc<Rules>> {
    if let Some(rules) = state.verifiers().get(&id) {
        return Ok(rules);
    }
    let store = state.store();
    let Some(registration) =
        blocking("reading a slot config", move || store.registration(&id)).await?
    else {
        return Err(unknown(&id));
    };
    // Checked at registration; a stored key that no longer parses cannot authorise.
    let verifier = SlotVerifier::new(id, &registration.config)
        .map_err(|e| ApiError::forbidden(e.to_string()))?;
    let rules = Arc::new(Rules {
        verifier,
        owner: registration.owner,
        base: registration.base,
    });
    state.verifiers().insert(id, Arc::clone(&rules));
    Ok(rules)
}

/// Whether `caller` may update an unsigned slot under `rules` (always, in open mode and
/// for unowned slots).
fn may_update_unsigned(rules: &Rules, caller: &MaybeCaller) -> bool {
    match (&rules.owner, caller) {
        (Some(owner), Some(Extension(caller))) => {
            caller.subject == *owner || caller.allows(Role::Slots, "admin")
        }
        _ => true,
    }
}

/// Checks `request` against the rules of slot `id`; returns the op for the writer.
async fn checked_update(
    state: &AppState,
    id: Id,
    caller: &MaybeCaller,
    request: &UpdateRequest,
) -> ApiResult<Op> {
    let rules = rules(state, id).await?;
    let (previous, address) = (request.previous, request.address);
    let signature = if rules.verifier.requires_signature() {
        let signature = request.signature.clone();
        let rules = Arc::clone(&rules);
        // Signature checks are CPU work: keep them off the async workers.
        let checked = tokio::task::spawn_blocking(move || {
            rules
                .verifier
                .verify(&previous, &address, signature.as_deref())
        })
        .await
        .map_err(|e| ApiError::internal("verifying a signature", e))?;
        checked.map_err(|e| ApiError::forbidden(e.to_string()))?
    } else if may_update_unsigned(&rules, caller) {
        None
    } else {
        return Err(ApiError::forbidden(format!(
            "slot {id} is unsigned and belongs to another subject: only the subject that \
             registered it (or an operator) may update it"
        )));
    };
    Ok(Op::Update {
        id,
        base: rules.base,
        previous,
        address,
        signature,
    })
}

async fn update(
    State(state): State<AppState>,
    caller: MaybeCaller,
    ApiPath(id): ApiPath<Id>,
    ApiJson(request): ApiJson<UpdateRequest>,
) -> ApiResult<Json<bool>> {
    let previous = request.previous;
    // A claim may replace the slot between the check and the write; the writer then
    // refuses the op and it is checked once more against the new registration.
    for _ in 0..2 {
        let op = checked_update(&state, id, &caller, &request).await?;
        match state.writer().submit(op).await.map_err(write_failed)? {
            Outcome::Accepted { .. } => return Ok(Json(true)),
            Outcome::Stale { current } => {
                return Err(ApiError::conflict(format!(
                    "previous {previous} is stale: slot {id} holds {current}"
                )));
            }
            Outcome::Unknown => return Err(unknown(&id)),
            Outcome::Reregistered => state.verifiers().remove(&id),
            other @ (Outcome::Taken | Outcome::Unsupported | Outcome::Claimed { .. }) => {
                return Err(ApiError::internal("updating a slot", format!("{other:?}")));
            }
        }
    }
    Err(ApiError::conflict(format!(
        "slot {id} was re-registered while this update was checked; read it again"
    )))
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
