//! Small fake servers for the conformance suite's own tests, on 127.0.0.1 ephemeral
//! ports only: a storage server that implements exactly the `core` profile (no Range,
//! no If-None-Match, lowercase ids only, no delete or listing, cannot fetch), servers
//! that stop accepting connections at a chosen request (a crash), reference-like
//! distributor and files servers, and one module per other role (`slots`, `broker`,
//! `find`, `names`, `productions`) with a server that implements only that role's
//! `core` profile and a variant with one deliberate defect.

#![allow(dead_code)]

pub mod broker;
pub mod find;
pub mod names;
pub mod productions;
pub mod slots;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use invariant_spec::Id;
use tokio::sync::Notify;

/// The fake's state: its blobs, and the signal that makes it crash on a PUT.
#[derive(Clone, Default)]
struct Fake {
    blobs: Arc<Mutex<HashMap<Id, Bytes>>>,
    crash_on_put: Option<Arc<Notify>>,
}

impl Fake {
    fn blobs(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Bytes>> {
        self.blobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Only 64 lowercase hex characters are an id here (no upper case: a `full` rule).
fn strict_id(text: &str) -> Option<Id> {
    let id = Id::parse(text).ok()?;
    (id.to_string() == text).then_some(id)
}

fn bad_request() -> Response {
    (StatusCode::BAD_REQUEST, "malformed address\n").into_response()
}

/// A refused request: its status and a one-line plain-text reason.
#[derive(Debug)]
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

fn refuse(status: StatusCode, reason: &'static str) -> Refusal {
    Refusal(status, reason)
}

/// What the fakes' handlers answer.
type Answer = Result<Response, Refusal>;

/// The id every fake answers on `GET /id`.
fn fake_id() -> Id {
    Id::of_content(b"core-only fake storage")
}

async fn id() -> String {
    fake_id().to_string()
}

/// `GET /id` and `GET /id/`, answering [`fake_id`].
fn id_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/id", get(id)).route("/id/", get(id))
}

/// A plain-text answer.
fn plain(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// A JSON object body; anything else is refused with 400.
fn json_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, Refusal> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        _ => Err(refuse(StatusCode::BAD_REQUEST, "not a JSON object")),
    }
}

/// The lowercase id in string field `field`, if there is one.
fn json_id(object: &serde_json::Map<String, serde_json::Value>, field: &str) -> Option<Id> {
    object
        .get(field)
        .and_then(serde_json::Value::as_str)
        .and_then(strict_id)
}

async fn post_blob(State(fake): State<Fake>, body: Bytes) -> Response {
    let id = Id::of_content(&body);
    fake.blobs().insert(id, body);
    ([(header::CONTENT_TYPE, "text/plain")], id.to_string()).into_response()
}

async fn put_blob(State(fake): State<Fake>, Path(address): Path<String>, body: Bytes) -> Response {
    if let Some(stop) = &fake.crash_on_put {
        stop.notify_one();
        // Drop the connection mid-request, as a dying process does.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        panic!("the fake storage server crashes on purpose");
    }
    let Some(id) = strict_id(&address) else {
        return bad_request();
    };
    if Id::of_content(&body) != id {
        return (StatusCode::BAD_REQUEST, "hash mismatch\n").into_response();
    }
    fake.blobs().insert(id, body);
    ([(header::CONTENT_TYPE, "text/plain")], id.to_string()).into_response()
}

/// GET and HEAD (axum answers HEAD from GET without the body). Range and
/// If-None-Match are ignored.
async fn get_blob(State(fake): State<Fake>, Path(address): Path<String>) -> Response {
    let Some(id) = strict_id(&address) else {
        return bad_request();
    };
    match fake.blobs().get(&id) {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_LENGTH, bytes.len().to_string()),
                (header::ETAG, format!("\"{id}\"")),
                (
                    header::CACHE_CONTROL,
                    "public, max-age=31536000, immutable".to_string(),
                ),
            ],
            bytes.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

/// This fake cannot fetch from peers (`spec/storage.md#storage-fetch`): 404.
async fn cannot_fetch() -> Response {
    (StatusCode::NOT_FOUND, "cannot fetch\n").into_response()
}

fn storage_router(fake: Fake) -> Router {
    Router::new()
        .route("/id", get(id))
        .route("/id/", get(id))
        .route("/storage", post(post_blob))
        .route("/storage/", post(post_blob))
        .route("/storage/fetch", any(cannot_fetch))
        .route("/storage/{address}", get(get_blob).put(put_blob))
        .route("/storage/{address}/", get(get_blob).put(put_blob))
        .with_state(fake)
}

/// Serves `app` on 127.0.0.1:0 until `stop` is notified; returns its url.
async fn serve(app: Router, stop: Arc<Notify>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.notified().await })
            .await;
    });
    url
}

/// A storage server that does exactly what the `core` profile asks.
pub async fn core_storage() -> String {
    serve(storage_router(Fake::default()), Arc::new(Notify::new())).await
}

/// The core storage server, except that the first `PUT /storage/:address` makes it
/// stop accepting connections and drop that request (a crash).
pub async fn crashing_storage() -> String {
    let stop = Arc::new(Notify::new());
    let fake = Fake {
        crash_on_put: Some(Arc::clone(&stop)),
        ..Fake::default()
    };
    serve(storage_router(fake), stop).await
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("http://127.0.0.1:{port}")
}

/// Reference-counted pins and registrations of the fake distributor.
#[derive(Clone, Default)]
struct Counts {
    pins: Arc<Mutex<HashMap<Id, u64>>>,
    storages: Arc<Mutex<HashMap<Id, u64>>>,
}

/// Reads an id list leniently, as the reference does: any run of hex characters
/// between separators (white space, commas, quotes, brackets) that parses is an id;
/// anything else is ignored.
fn lenient_ids(body: &[u8]) -> Vec<Id> {
    String::from_utf8_lossy(body)
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '"' | '[' | ']'))
        .filter_map(|t| Id::parse(t).ok())
        .collect()
}

fn add(map: &Mutex<HashMap<Id, u64>>, ids: &[Id]) {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    for id in ids {
        *map.entry(*id).or_default() += 1;
    }
}

/// Removes one count per id, stopping at zero without complaint (the reference).
fn remove(map: &Mutex<HashMap<Id, u64>>, ids: &[Id]) {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    for id in ids {
        if let Some(n) = map.get_mut(id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(id);
            }
        }
    }
}

/// Answers items for pinned blocks only, with no active storage server.
async fn blocks(State(counts): State<Counts>, body: Bytes) -> Response {
    let pins = counts.pins.lock().unwrap_or_else(PoisonError::into_inner);
    let items: Vec<serde_json::Value> = lenient_ids(&body)
        .into_iter()
        .filter(|id| pins.contains_key(id))
        .map(|id| serde_json::json!({"block": id, "storages": []}))
        .collect();
    axum::Json(items).into_response()
}

/// A distributor that does what the reference's documents and code do: lenient id
/// lists, unpin below zero ignored (200), `blocks` items for pinned blocks only, no
/// status or gc routes.
pub async fn core_distributor() -> String {
    let app = Router::new()
        .route("/id", get(id))
        .route("/id/", get(id))
        .route(
            "/distributor/pin",
            axum::routing::put(|State(c): State<Counts>, body: Bytes| async move {
                add(&c.pins, &lenient_ids(&body));
            }),
        )
        .route(
            "/distributor/unpin",
            axum::routing::put(|State(c): State<Counts>, body: Bytes| async move {
                remove(&c.pins, &lenient_ids(&body));
            }),
        )
        .route(
            "/distributor/register/storage",
            axum::routing::put(|State(c): State<Counts>, body: Bytes| async move {
                add(&c.storages, &lenient_ids(&body));
            }),
        )
        .route(
            "/distributor/unregister/storage",
            axum::routing::put(|State(c): State<Counts>, body: Bytes| async move {
                remove(&c.storages, &lenient_ids(&body));
            }),
        )
        .route("/distributor/blocks", post(blocks))
        .with_state(Counts::default());
    serve(app, Arc::new(Notify::new())).await
}

/// A files server that knows no node and answers 400 for every node it does not know,
/// as the reference does ("Unrecognized node").
pub async fn reference_like_files() -> String {
    let unrecognized = || async { (StatusCode::BAD_REQUEST, "Unrecognized node\n") };
    let app = Router::new()
        .route("/id", get(id))
        .route("/id/", get(id))
        .route(
            "/files/sync",
            axum::routing::put(|| async { StatusCode::OK }),
        )
        .route(
            "/files/mount",
            post(|| async { (StatusCode::BAD_REQUEST, "not a content link\n") }),
        )
        .route("/files/info/{node}", get(unrecognized))
        .route("/files/directory/{node}", get(unrecognized))
        .route("/files/lookup/{node}/{name}", get(unrecognized))
        .route("/files/unmount/{node}", post(unrecognized))
        .route("/files/size/{node}", axum::routing::put(unrecognized))
        .route("/files/remove/{node}/{name}", post(unrecognized))
        .route("/files/{node}", get(unrecognized).post(unrecognized))
        .route("/files/{node}/{name}", axum::routing::put(unrecognized));
    serve(app, Arc::new(Notify::new())).await
}
