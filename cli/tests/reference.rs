//! `invariant` against loopback fakes that answer as the TypeScript reference servers
//! do: a names server whose update answers `{}` whether or not it applied and whose
//! register answers an empty body, and a slots server that knows no ed25519 slots
//! (400) and answers updates with an empty body.

mod common;

use common::{invariant, ok, text};

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use invariant_spec::Id;
use invariant_test_support::{FakeBroker, spawn_app};
use serde_json::{Value, json};

/// What a fake keeps: records by key, and its own id.
#[derive(Clone)]
struct Fake {
    id: Id,
    records: Arc<Mutex<HashMap<String, Value>>>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            id: Id::random(),
            records: Arc::default(),
        }
    }

    fn get(&self, key: &str) -> Option<Value> {
        self.records.lock().expect("records").get(key).cloned()
    }

    fn set(&self, key: String, value: Value) {
        self.records.lock().expect("records").insert(key, value);
    }
}

async fn server_id(State(fake): State<Fake>) -> String {
    fake.id.to_string()
}

/// The reference's names rules: `<name>.local` without a dot, lowercase; ttl kept as
/// given (milliseconds there), 30 minutes in milliseconds by default.
fn effective_name(name: &str) -> String {
    let name = if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.local")
    };
    name.to_lowercase()
}

async fn names_register(State(fake): State<Fake>, Json(body): Json<Value>) -> Response {
    let name = effective_name(body["name"].as_str().unwrap_or_default());
    if fake.get(&name).is_some() {
        return (StatusCode::BAD_REQUEST, "Name already registered").into_response();
    }
    let ttl = body.get("ttl").cloned().unwrap_or(json!(1_800_000));
    fake.set(
        name.clone(),
        json!({"name": name, "address": body["address"], "ttl": ttl}),
    );
    // An empty body, as the reference answers.
    StatusCode::OK.into_response()
}

async fn names_update(State(fake): State<Fake>, Json(body): Json<Value>) -> Response {
    let name = effective_name(body["name"].as_str().unwrap_or_default());
    if let Some(record) = fake.get(&name)
        && record["address"] == body["previous"]
    {
        let ttl = body.get("ttl").cloned().unwrap_or(json!(1_800_000));
        let mut record = json!({"name": name, "address": body["address"], "ttl": ttl});
        if body["slot"] == json!(true) {
            record["slot"] = json!(true);
        }
        fake.set(name, record);
    }
    // The reference answers `{}` whatever happened.
    Json(json!({})).into_response()
}

async fn names_lookup(State(fake): State<Fake>, UrlPath(name): UrlPath<String>) -> Response {
    match fake.get(&effective_name(&name)) {
        Some(mut record) => {
            record["authoritative"] = json!(true);
            Json(record).into_response()
        }
        None => (StatusCode::NOT_FOUND, "Unknown name").into_response(),
    }
}

async fn slots_register(State(fake): State<Fake>, Json(body): Json<Value>) -> Response {
    let kind = body["signature"]["kind"].as_str().unwrap_or("none");
    if kind != "none" && kind != "sha256:rsa" {
        return (StatusCode::BAD_REQUEST, "Invalid request").into_response();
    }
    let id = body["id"].as_str().unwrap_or_default().to_string();
    if fake.get(&id).is_some() {
        return Json(false).into_response();
    }
    fake.set(id, json!({"address": body["address"], "previous": "root"}));
    Json(true).into_response()
}

async fn slots_get(State(fake): State<Fake>, UrlPath(id): UrlPath<String>) -> Response {
    match fake.get(&id) {
        Some(state) => Json(state).into_response(),
        None => (StatusCode::NOT_FOUND, "Unknown id").into_response(),
    }
}

async fn slots_put(
    State(fake): State<Fake>,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<Value>,
) -> Response {
    match fake.get(&id) {
        Some(state) if state["address"] == body["previous"] => {
            fake.set(
                id,
                json!({"address": body["address"], "previous": body["previous"]}),
            );
            // An empty body, as the reference answers.
            StatusCode::OK.into_response()
        }
        _ => (StatusCode::BAD_REQUEST, "Invalid slot request").into_response(),
    }
}

/// A broker double knowing one reference-like names server and one slots server.
struct ReferenceNetwork {
    broker: FakeBroker,
    names: Fake,
    slots: Fake,
}

impl ReferenceNetwork {
    async fn start() -> ReferenceNetwork {
        let names = Fake::new();
        let router = axum::Router::new()
            .route("/id/", get(server_id))
            .route("/names/register/", put(names_register))
            .route("/names/update/", post(names_update))
            .route("/names/lookup/{name}", get(names_lookup))
            .with_state(names.clone());
        let (names_url, _) = spawn_app(router).await;
        let slots = Fake::new();
        let router = axum::Router::new()
            .route("/id/", get(server_id))
            .route("/slots/register", put(slots_register))
            .route("/slots/{id}", get(slots_get).put(slots_put))
            .with_state(slots.clone());
        let (slots_url, _) = spawn_app(router).await;
        let broker = FakeBroker::start().await;
        broker.register(names.id, "names", &names_url);
        broker.register(slots.id, "slots", &slots_url);
        ReferenceNetwork {
            broker,
            names,
            slots,
        }
    }

    async fn run(&self, config_dir: &Path, args: &[&str]) -> Output {
        invariant(self.broker.url(), config_dir)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .expect("run invariant")
    }
}

#[tokio::test]
async fn name_update_reads_the_references_empty_object_answer() {
    let net = ReferenceNetwork::start().await;
    let config = tempfile::tempdir().expect("config dir");
    let first = Id::of_content(b"first").to_string();
    let second = Id::of_content(b"second").to_string();
    let third = Id::of_content(b"third").to_string();

    let registered = net
        .run(
            config.path(),
            &["name", "register", "photos", &first, "--ttl", "60000"],
        )
        .await;
    assert_eq!(ok(&registered), "registered");
    // The ttl is passed through as the number the server holds (milliseconds there).
    let looked = net.run(config.path(), &["name", "lookup", "Photos"]).await;
    let record: Value = serde_json::from_str(&ok(&looked)).expect("JSON record");
    assert_eq!(record["ttl"], 60_000);

    // Applied: the answer is `{}` and the lookup shows the new address.
    let updated = net
        .run(
            config.path(),
            &["name", "update", "photos", &first, &second],
        )
        .await;
    assert_eq!(ok(&updated), "updated");
    assert_eq!(
        net.names.get("photos.local").expect("record")["address"],
        second
    );

    // Stale: the answer is `{}` too, but the name still holds the second address.
    let stale = net
        .run(config.path(), &["name", "update", "photos", &first, &third])
        .await;
    assert!(!stale.status.success(), "a stale update reported success");
    let stderr = text(&stale.stderr);
    assert!(
        stderr.contains("no longer holds") && !stderr.contains("not a JSON boolean"),
        "{stderr}"
    );
    assert_eq!(
        net.names.get("photos.local").expect("record")["address"],
        second
    );

    // A slot name: the lookup must show the slot flag too.
    let slot = net
        .run(
            config.path(),
            &["name", "update", "photos", &second, &third, "--slot"],
        )
        .await;
    assert_eq!(ok(&slot), "updated");

    let record = net.names.get("photos.local").expect("record");
    assert_eq!(record["address"], third);
    assert_eq!(record["slot"], true);
}

#[tokio::test]
async fn slots_without_ed25519_take_unsigned_slots() {
    let net = ReferenceNetwork::start().await;
    let config = tempfile::tempdir().expect("config dir");
    let first = Id::of_content(b"first").to_string();
    let second = Id::of_content(b"second").to_string();

    let refused = net.run(config.path(), &["slot", "create", &first]).await;
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("slot create --unsigned"),
        "{stderr}"
    );

    let created = net
        .run(config.path(), &["slot", "create", "--unsigned", &first])
        .await;
    let slot = ok(&created);
    assert!(net.slots.get(&slot).is_some(), "registered at the server");
    let set = net
        .run(config.path(), &["slot", "set", &slot, &second])
        .await;
    assert_eq!(ok(&set), second);
    let got = net.run(config.path(), &["slot", "get", &slot]).await;
    let state: Value = serde_json::from_str(&ok(&got)).expect("JSON state");
    assert_eq!(state["address"], second);
    assert_eq!(state["previous"], first);
}
