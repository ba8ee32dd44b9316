//! The suite's own helper server on 127.0.0.1: fake peers for checks that need a second
//! server, and (optionally) a minimal broker.
//!
//! Each fake peer has an id and answers under `<helper>/peer/<id>`: `GET /id` with its
//! id, `GET|HEAD /storage/:address` from the blobs given to it (which may be corrupt on
//! purpose), `PUT /storage/:address` (verified), and `PUT|POST /find/has`,
//! `/find/notify` (recorded, answered 200).
//!
//! A server under test finds the peers through a broker: either the helper itself
//! (start the server with `--broker <helper url>`; the helper answers
//! `GET /broker/location/:id` for its peers and accepts registrations), or an external
//! broker given to the suite, where each peer is registered with
//! `POST /broker/register/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use invariant_spec::Id;
use tokio::task::JoinHandle;

use crate::ConformanceError;
use crate::check::Fail;

/// How the server under test resolves server ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BrokerMode {
    /// The server under test uses the helper as its broker.
    Suite,
    /// The server under test uses this broker; peers are registered there.
    External(String),
    /// Unknown: checks that need the server to find a peer are skipped.
    None,
}

/// A request a peer received.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) peer: Id,
    pub(crate) route: String,
    pub(crate) body: Bytes,
}

#[derive(Debug, Default)]
struct Peers {
    blobs: HashMap<Id, HashMap<Id, Bytes>>,
    received: Vec<Received>,
    registrations: Vec<serde_json::Value>,
}

#[derive(Debug)]
struct Shared {
    id: Id,
    url: String,
    peers: Mutex<Peers>,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Peers) -> T) -> T {
        let mut guard = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

/// The running helper server. Stops when dropped.
#[derive(Debug)]
pub(crate) struct Helper {
    shared: Arc<Shared>,
    mode: BrokerMode,
    http: reqwest::Client,
    task: JoinHandle<()>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Helper {
    /// Serves on `listener` (the suite broker the server under test was pointed at), or
    /// on a fresh 127.0.0.1 port.
    pub(crate) async fn start(
        listener: Option<std::net::TcpListener>,
        external_broker: Option<String>,
        http: reqwest::Client,
    ) -> Result<Helper, ConformanceError> {
        let suite = listener.is_some();
        let listener = match listener {
            Some(l) => {
                l.set_nonblocking(true).map_err(ConformanceError::Helper)?;
                tokio::net::TcpListener::from_std(l).map_err(ConformanceError::Helper)?
            }
            None => tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(ConformanceError::Helper)?,
        };
        let addr = listener.local_addr().map_err(ConformanceError::Helper)?;
        let shared = Arc::new(Shared {
            id: Id::random(),
            url: format!("http://{addr}"),
            peers: Mutex::new(Peers::default()),
        });
        let mode = if suite {
            BrokerMode::Suite
        } else if let Some(url) = external_broker {
            BrokerMode::External(url.trim_end_matches('/').to_string())
        } else {
            BrokerMode::None
        };
        let app = router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Helper {
            shared,
            mode,
            http,
            task,
        })
    }

    /// Whether the server under test can resolve the helper's peers.
    pub(crate) fn brokered(&self) -> bool {
        self.mode != BrokerMode::None
    }

    /// The url a peer answers at.
    pub(crate) fn peer_url(&self, peer: &Id) -> String {
        format!("{}/peer/{peer}", self.shared.url)
    }

    /// Creates a peer of `kind` holding `blobs` (address → bytes, as served, so a blob
    /// may be corrupt) and makes it resolvable through the broker.
    pub(crate) async fn add_peer(&self, kind: &str, blobs: Vec<(Id, Bytes)>) -> Result<Id, Fail> {
        let peer = Id::random();
        self.shared.with(|p| {
            p.blobs.insert(peer, blobs.into_iter().collect());
        });
        if let BrokerMode::External(broker) = &self.mode {
            let body = serde_json::json!({
                "id": peer,
                "urls": [self.peer_url(&peer)],
                "kind": kind,
            });
            let url = format!("{broker}/broker/register/");
            let response = self.http.post(&url).json(&body).send().await?;
            if !response.status().is_success() {
                return Err(Fail(format!(
                    "registering a suite peer with the broker {broker} answered {}",
                    response.status()
                )));
            }
        }
        Ok(peer)
    }

    /// Whether `peer` holds a blob stored under `address`.
    pub(crate) fn holds(&self, peer: &Id, address: &Id) -> bool {
        self.shared
            .with(|p| p.blobs.get(peer).is_some_and(|b| b.contains_key(address)))
    }

    /// Requests received by `peer` so far.
    pub(crate) fn received(&self, peer: &Id) -> Vec<Received> {
        self.shared.with(|p| {
            p.received
                .iter()
                .filter(|r| r.peer == *peer)
                .cloned()
                .collect()
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/id", get(own_id))
        .route("/id/", get(own_id))
        .route("/broker/location/{id}", get(location))
        .route("/broker/location/{id}/", get(location))
        .route("/broker/register", post(register))
        .route("/broker/register/", post(register))
        .route("/broker/registered/{kind}", get(registered))
        .route("/broker/registered/{kind}/", get(registered))
        .route("/broker/servers/{kind}", get(servers))
        .route("/broker/servers/{kind}/", get(servers))
        .route("/peer/{peer}/id", get(peer_id))
        .route("/peer/{peer}/id/", get(peer_id))
        .route(
            "/peer/{peer}/storage/fetch",
            get(cannot_fetch).put(cannot_fetch).post(cannot_fetch),
        )
        .route(
            "/peer/{peer}/storage/{address}",
            get(peer_blob).head(peer_blob).put(peer_store),
        )
        .route("/peer/{peer}/find/has", put(peer_record).post(peer_record))
        .route("/peer/{peer}/find/has/", put(peer_record).post(peer_record))
        .route(
            "/peer/{peer}/find/notify",
            put(peer_record).post(peer_record),
        )
        .route(
            "/peer/{peer}/find/notify/",
            put(peer_record).post(peer_record),
        )
        .route("/peer/{peer}/find/{block}", get(peer_find))
        .with_state(shared)
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn own_id(State(shared): State<Arc<Shared>>) -> Response {
    text(shared.id.to_string())
}

async fn location(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Ok(id) = Id::parse(&id) else {
        return (StatusCode::BAD_REQUEST, "malformed id\n").into_response();
    };
    if !shared.with(|p| p.blobs.contains_key(&id)) {
        return (StatusCode::NOT_FOUND, "unknown server\n").into_response();
    }
    let url = format!("{}/peer/{id}", shared.url);
    axum::Json(serde_json::json!({"id": id, "urls": [url.clone()], "url": url})).into_response()
}

async fn register(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    shared.with(|p| p.registrations.push(value));
    axum::Json(serde_json::json!({"id": shared.id})).into_response()
}

async fn registered() -> Response {
    axum::Json(serde_json::json!([])).into_response()
}

async fn servers() -> Response {
    text(String::new())
}

fn known_peer(shared: &Shared, peer: &str) -> Option<Id> {
    let peer = Id::parse(peer).ok()?;
    shared.with(|p| p.blobs.contains_key(&peer)).then_some(peer)
}

/// Any well-formed peer id answers with itself, so a broker's liveness checks keep the
/// fake registrations of broker checks.
async fn peer_id(Path(peer): Path<String>) -> Response {
    match Id::parse(&peer) {
        Ok(peer) => text(peer.to_string()),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn peer_blob(
    State(shared): State<Arc<Shared>>,
    Path((peer, address)): Path<(String, String)>,
) -> Response {
    let (Ok(peer), Ok(address)) = (Id::parse(&peer), Id::parse(&address)) else {
        return (StatusCode::BAD_REQUEST, "malformed id\n").into_response();
    };
    let blob = shared.with(|p| p.blobs.get(&peer).and_then(|b| b.get(&address).cloned()));
    match blob {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_LENGTH, bytes.len().to_string()),
                (header::ETAG, format!("\"{address}\"")),
            ],
            bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not held\n").into_response(),
    }
}

/// Peers have no broker: `HEAD|PUT|POST /storage/fetch` is 404.
async fn cannot_fetch() -> Response {
    (StatusCode::NOT_FOUND, "this peer cannot fetch\n").into_response()
}

/// Stores a blob on a peer when it hashes to its address (400 otherwise).
async fn peer_store(
    State(shared): State<Arc<Shared>>,
    Path((peer, address)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (Some(peer), Ok(address)) = (known_peer(&shared, &peer), Id::parse(&address)) else {
        return (StatusCode::BAD_REQUEST, "malformed id or unknown peer\n").into_response();
    };
    if Id::of_content(&body) != address {
        return (
            StatusCode::BAD_REQUEST,
            "the body does not hash to the address\n",
        )
            .into_response();
    }
    shared.with(|p| {
        if let Some(blobs) = p.blobs.get_mut(&peer) {
            blobs.insert(address, body);
        }
    });
    StatusCode::OK.into_response()
}

async fn peer_record(
    State(shared): State<Arc<Shared>>,
    Path(peer): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let Some(peer) = known_peer(&shared, &peer) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let route = request.uri().path().to_string();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    shared.with(|p| p.received.push(Received { peer, route, body }));
    StatusCode::OK.into_response()
}

async fn peer_find() -> Response {
    text(String::new())
}

/// Binds a 127.0.0.1 port for the suite broker, before the server under test starts
/// (so it can be given `--broker <url>`). Returns the listener for
/// [`crate::Options::suite_broker`] and its url.
pub fn reserve_suite_broker() -> std::io::Result<(std::net::TcpListener, String)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}
