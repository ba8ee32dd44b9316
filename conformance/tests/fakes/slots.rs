//! A slots server that implements only the `core` profile of `spec/slots.md`:
//! registration (`none` and `sha256:rsa` slots), compare-and-swap updates, history and
//! watch as NDJSON. No configuration route, no ed25519 slots, lowercase ids only. Its
//! defective variant applies an update whatever its `previous`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::StreamExt;
use invariant_spec::Id;
use invariant_spec::slots::{Previous, SignatureConfig, SlotVerifier};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use super::{Answer, Refusal, id_routes, json_id, json_object, refuse, serve, strict_id};

struct Slot {
    verifier: SlotVerifier,
    /// Oldest first, as NDJSON lines.
    states: Vec<Value>,
    watchers: broadcast::Sender<Value>,
}

#[derive(Clone)]
struct Slots {
    slots: Arc<Mutex<HashMap<Id, Slot>>>,
    /// The defect switch: false applies updates whatever their `previous`.
    compare_previous: bool,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ndjson_line(state: &Value) -> Bytes {
    Bytes::from(format!("{state}\n"))
}

fn json_true() -> Response {
    axum::Json(Value::Bool(true)).into_response()
}

/// The slot id in a path; a malformed one is refused with 400.
fn slot_id(text: &str) -> Result<Id, Refusal> {
    strict_id(text).ok_or(refuse(StatusCode::BAD_REQUEST, "malformed slot id"))
}

async fn register(State(slots): State<Slots>, body: Bytes) -> Answer {
    let request = json_object(&body)?;
    let (Some(id), Some(address)) = (json_id(&request, "id"), json_id(&request, "address")) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "id and address must be ids",
        ));
    };
    let config = match request.get("signature") {
        None => SignatureConfig::None,
        Some(value) => match serde_json::from_value::<SignatureConfig>(value.clone()) {
            // ed25519 slots are this project's extension: unknown to a core server.
            Ok(SignatureConfig::Ed25519) | Err(_) => {
                return Err(refuse(StatusCode::BAD_REQUEST, "unknown signature kind"));
            }
            Ok(config) => config,
        },
    };
    let verifier = SlotVerifier::new(id, &config)
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "not an RSA public key"))?;
    let mut map = slots.lock();
    if map.contains_key(&id) {
        return Err(refuse(StatusCode::CONFLICT, "slot already registered"));
    }
    let state = json!({"address": address, "previous": "root", "time": now_millis()});
    let (watchers, _) = broadcast::channel(64);
    map.insert(
        id,
        Slot {
            verifier,
            states: vec![state],
            watchers,
        },
    );
    Ok(json_true())
}

const UNKNOWN: Refusal = Refusal(StatusCode::NOT_FOUND, "unknown slot");

async fn current(State(slots): State<Slots>, Path(id): Path<String>) -> Answer {
    let id = slot_id(&id)?;
    let map = slots.lock();
    let state = map.get(&id).and_then(|s| s.states.last()).ok_or(UNKNOWN)?;
    Ok(axum::Json(state.clone()).into_response())
}

async fn update(State(slots): State<Slots>, Path(id): Path<String>, body: Bytes) -> Answer {
    let id = slot_id(&id)?;
    let request = json_object(&body)?;
    let (Some(address), Some(previous)) =
        (json_id(&request, "address"), json_id(&request, "previous"))
    else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "address and previous must be ids",
        ));
    };
    let signature = request.get("signature").and_then(Value::as_str);
    let mut map = slots.lock();
    let slot = map.get_mut(&id).ok_or(UNKNOWN)?;
    let signed = slot
        .verifier
        .verify(&Previous::Address(previous), &address, signature)
        .map_err(|_| refuse(StatusCode::FORBIDDEN, "the signature does not verify"))?;
    let holds = slot
        .states
        .last()
        .and_then(|s| s.get("address"))
        .and_then(Value::as_str)
        .and_then(strict_id);
    if slots.compare_previous && holds != Some(previous) {
        return Err(refuse(
            StatusCode::CONFLICT,
            "previous is not the current address",
        ));
    }
    let mut state = json!({"address": address, "previous": previous, "time": now_millis()});
    if let Some(bytes) = signed {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        state["signature"] = Value::String(hex);
    }
    slot.states.push(state.clone());
    // Nobody watching is not an error.
    let _ = slot.watchers.send(state);
    Ok(json_true())
}

fn ndjson(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn history(State(slots): State<Slots>, Path(id): Path<String>) -> Answer {
    let id = slot_id(&id)?;
    let lines: String = {
        let map = slots.lock();
        let slot = map.get(&id).ok_or(UNKNOWN)?;
        slot.states.iter().rev().map(|s| format!("{s}\n")).collect()
    };
    Ok(ndjson(Body::from(lines)))
}

async fn watch(State(slots): State<Slots>, Path(id): Path<String>) -> Answer {
    let id = slot_id(&id)?;
    // Subscribed under the same lock that reads the current state: no gap between them.
    let (now, receiver) = {
        let map = slots.lock();
        let slot = map.get(&id).ok_or(UNKNOWN)?;
        let now = slot.states.last().ok_or(UNKNOWN)?.clone();
        (now, slot.watchers.subscribe())
    };
    let first = futures_util::stream::once(async move { Ok::<_, Infallible>(ndjson_line(&now)) });
    let later = futures_util::stream::unfold(receiver, |mut receiver| async move {
        // A watcher that lags behind is disconnected (the spec allows it).
        let state = receiver.recv().await.ok()?;
        Some((Ok(ndjson_line(&state)), receiver))
    });
    Ok(ndjson(Body::from_stream(first.chain(later))))
}

fn router(slots: Slots) -> Router {
    id_routes()
        .route("/slots/register", put(register).post(register))
        .route("/slots/register/", put(register).post(register))
        .route("/slots/{id}", get(current).put(update))
        .route("/slots/{id}/", get(current).put(update))
        .route("/slots/history/{id}", get(history))
        .route("/slots/history/{id}/", get(history))
        .route("/slots/watch/{id}", get(watch))
        .route("/slots/watch/{id}/", get(watch))
        .with_state(slots)
}

async fn start(compare_previous: bool) -> String {
    let slots = Slots {
        slots: Arc::default(),
        compare_previous,
    };
    serve(router(slots), Arc::new(Notify::new())).await
}

/// A slots server that does exactly what the `core` profile asks.
pub async fn core() -> String {
    start(true).await
}

/// The core slots server, except that an update is applied whatever its `previous`:
/// no compare-and-swap.
pub async fn without_compare_and_swap() -> String {
    start(false).await
}
