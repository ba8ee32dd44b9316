//! A broker that implements only the `core` profile of `spec/broker.md`: registration
//! with `urls` (the kind optional, as the reference's documents have it), location
//! answers with `urls` only, both listings, lowercase ids only, no liveness checks. Its
//! defective variant answers 200 for the location of an id nobody registered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use invariant_spec::Id;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::{
    Answer, Refusal, fake_id, id_routes, json_id, json_object, plain, refuse, serve, strict_id,
};

struct Registration {
    urls: Vec<String>,
    kind: Option<String>,
}

#[derive(Clone)]
struct Broker {
    registrations: Arc<Mutex<HashMap<Id, Registration>>>,
    /// The defect switch: true answers 200 for an unknown id.
    unknown_is_found: bool,
}

impl Broker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Registration>> {
        self.registrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A base url the broker may store: http(s), with a host, without a query.
fn base_url(value: &Value) -> Option<String> {
    let text = value.as_str()?;
    let url = reqwest::Url::parse(text).ok()?;
    let usable =
        matches!(url.scheme(), "http" | "https") && url.host().is_some() && url.query().is_none();
    usable.then(|| text.trim_end_matches('/').to_string())
}

async fn register(State(broker): State<Broker>, body: Bytes) -> Answer {
    let request = json_object(&body)?;
    let id = json_id(&request, "id").ok_or(refuse(StatusCode::BAD_REQUEST, "id must be an id"))?;
    let urls: Option<Vec<String>> = request
        .get("urls")
        .and_then(Value::as_array)
        .and_then(|urls| urls.iter().map(base_url).collect());
    let urls = urls.filter(|u| !u.is_empty()).ok_or(refuse(
        StatusCode::BAD_REQUEST,
        "urls must be a non-empty list of urls",
    ))?;
    let kind = match request.get("kind") {
        None => None,
        Some(kind) => Some(of_kind_name(kind.as_str().unwrap_or(""))?.to_string()),
    };
    broker.lock().insert(id, Registration { urls, kind });
    Ok(axum::Json(json!({"id": fake_id()})).into_response())
}

async fn location(State(broker): State<Broker>, Path(id): Path<String>) -> Answer {
    let id = strict_id(&id).ok_or(refuse(StatusCode::BAD_REQUEST, "malformed id"))?;
    match broker.lock().get(&id) {
        Some(registration) => {
            Ok(axum::Json(json!({"id": id, "urls": registration.urls})).into_response())
        }
        None if broker.unknown_is_found => Ok(axum::Json(json!({})).into_response()),
        None => Err(refuse(StatusCode::NOT_FOUND, "unknown server")),
    }
}

/// `kind` when it is a known kind; anything else is refused with 400.
fn of_kind_name(kind: &str) -> Result<&str, Refusal> {
    invariant_spec::broker::KINDS
        .contains(&kind)
        .then_some(kind)
        .ok_or(refuse(StatusCode::BAD_REQUEST, "unknown kind"))
}

/// The ids registered with `kind`.
fn of_kind(broker: &Broker, kind: &str) -> Result<Vec<String>, Refusal> {
    let kind = of_kind_name(kind)?;
    Ok(broker
        .lock()
        .iter()
        .filter(|(_, r)| r.kind.as_deref() == Some(kind))
        .map(|(id, _)| id.to_string())
        .collect())
}

async fn registered(State(broker): State<Broker>, Path(kind): Path<String>) -> Answer {
    Ok(axum::Json(of_kind(&broker, &kind)?).into_response())
}

async fn servers(State(broker): State<Broker>, Path(kind): Path<String>) -> Answer {
    let ids = of_kind(&broker, &kind)?;
    Ok(plain(ids.iter().map(|id| format!("{id}\n")).collect()))
}

async fn start(unknown_is_found: bool) -> String {
    let broker = Broker {
        registrations: Arc::default(),
        unknown_is_found,
    };
    let app = id_routes()
        .route("/broker/register", post(register))
        .route("/broker/register/", post(register))
        .route("/broker/location/{id}", get(location))
        .route("/broker/location/{id}/", get(location))
        .route("/broker/registered/{kind}", get(registered))
        .route("/broker/registered/{kind}/", get(registered))
        .route("/broker/servers/{kind}", get(servers))
        .route("/broker/servers/{kind}/", get(servers))
        .with_state(broker);
    serve(app, Arc::new(Notify::new())).await
}

/// A broker that does exactly what the `core` profile asks.
pub async fn core() -> String {
    start(false).await
}

/// The core broker, except that the location of an unknown id is 200 with an empty
/// JSON object.
pub async fn finding_unknown_ids() -> String {
    start(true).await
}
