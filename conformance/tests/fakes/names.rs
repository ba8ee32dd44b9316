//! A names server that implements only the `core` profile of `spec/names.md`: DNS-syntax
//! names compared in lower case (`<name>.local` without a dot), registration, lookup
//! and compare-and-swap updates; no DNS fallback. Its defective variant answers 500 to
//! a body that is not JSON; its reference-like variant answers every update with `{}`,
//! applied or not (a divergence the names document records).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use super::{Answer, Refusal, json_id, json_object, refuse, serve};

/// Seconds a record may be cached when the registration names no ttl.
const DEFAULT_TTL: u64 = 1800;

#[derive(Clone)]
struct Names {
    /// Canonical name → record.
    records: Arc<Mutex<HashMap<String, Value>>>,
    /// The defect switch: true answers 500 to a body that is not JSON.
    fails_on_broken_json: bool,
    /// Update answers are `{}` instead of true or false.
    silent_updates: bool,
}

impl Names {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Value>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn body(&self, body: &[u8]) -> Result<Map<String, Value>, Refusal> {
        if self.fails_on_broken_json && serde_json::from_slice::<Value>(body).is_err() {
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "unexpected end of JSON",
            ));
        }
        json_object(body)
    }
}

/// The canonical form of a DNS-syntax name, or `None` when it is not one.
fn canonical(name: &str) -> Option<String> {
    let qualified = name.ends_with('.');
    let bare = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if bare.len() > 253 || !bare.split('.').all(label_ok) {
        return None;
    }
    let full = if qualified || bare.contains('.') {
        bare.to_string()
    } else {
        format!("{bare}.local")
    };
    Some(full.to_ascii_lowercase())
}

/// The name and record a registration or update describes; a malformed one is
/// refused with 400.
fn record(request: &Map<String, Value>) -> Result<(String, Value), Refusal> {
    let bad = |what: &'static str| refuse(StatusCode::BAD_REQUEST, what);
    let name = request
        .get("name")
        .and_then(Value::as_str)
        .and_then(canonical)
        .ok_or_else(|| bad("name must be a DNS name"))?;
    let address = json_id(request, "address").ok_or_else(|| bad("address must be an id"))?;
    let ttl = match request.get("ttl") {
        None => DEFAULT_TTL,
        Some(ttl) => ttl
            .as_u64()
            .filter(|t| *t > 0)
            .ok_or_else(|| bad("ttl must be a positive number of seconds"))?,
    };
    let slot = match request.get("slot") {
        None => false,
        Some(slot) => slot
            .as_bool()
            .ok_or_else(|| bad("slot must be a boolean"))?,
    };
    let record = json!({
        "name": name,
        "address": address,
        "ttl": ttl,
        "authoritative": true,
        "slot": slot,
    });
    Ok((name, record))
}

async fn lookup(State(names): State<Names>, Path(name): Path<String>) -> Answer {
    let name = canonical(&name).ok_or(refuse(StatusCode::BAD_REQUEST, "not a DNS name"))?;
    match names.lock().get(&name) {
        Some(record) => Ok(axum::Json(record.clone()).into_response()),
        None => Err(refuse(StatusCode::NOT_FOUND, "unknown name")),
    }
}

async fn register(State(names): State<Names>, body: Bytes) -> Answer {
    let (name, record) = record(&names.body(&body)?)?;
    let mut records = names.lock();
    if records.contains_key(&name) {
        return Err(refuse(StatusCode::CONFLICT, "name already registered"));
    }
    records.insert(name, record);
    Ok(axum::Json(true).into_response())
}

async fn update(State(names): State<Names>, body: Bytes) -> Answer {
    let request = names.body(&body)?;
    let (name, record) = record(&request)?;
    let previous = json_id(&request, "previous")
        .ok_or(refuse(StatusCode::BAD_REQUEST, "previous must be an id"))?;
    let mut records = names.lock();
    let current = records
        .get_mut(&name)
        .ok_or(refuse(StatusCode::NOT_FOUND, "unknown name"))?;
    let applied = current.get("address") == Some(&json!(previous));
    if applied {
        *current = record;
    }
    if names.silent_updates {
        return Ok(axum::Json(json!({})).into_response());
    }
    Ok(axum::Json(applied).into_response())
}

async fn start(fails_on_broken_json: bool, silent_updates: bool) -> String {
    let names = Names {
        records: Arc::default(),
        fails_on_broken_json,
        silent_updates,
    };
    let app = super::id_routes()
        .route("/names/lookup/{name}", get(lookup))
        .route("/names/lookup/{name}/", get(lookup))
        .route("/names/register", put(register))
        .route("/names/register/", put(register))
        .route("/names/update", post(update))
        .route("/names/update/", post(update))
        .with_state(names);
    serve(app, Arc::new(Notify::new())).await
}

/// A names server that does exactly what the `core` profile asks.
pub async fn core() -> String {
    start(false, false).await
}

/// The core names server, except that a body that is not JSON gets a 500.
pub async fn failing_on_broken_json() -> String {
    start(true, false).await
}

/// The core names server answering every update `{}`, as the reference does.
pub async fn silent_updates() -> String {
    start(false, true).await
}
