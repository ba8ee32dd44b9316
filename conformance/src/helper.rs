//! The suite's own helper servers on 127.0.0.1: fake peers for checks that need a
//! second server, fake servers for broker registrations, and (optionally) a minimal
//! broker.
//!
//! Every fake peer has an id and its **own origin** (its own loopback port), so an
//! implementation that builds peer urls from an origin (`new URL('/id/', base)`) reaches
//! it: `GET /id` answers its id, `GET|HEAD /storage/:address` serves the blobs given to
//! it (which may be corrupt on purpose), `PUT /storage/:address` stores a verified
//! body, and `PUT|POST /find/has`, `/find/notify` are recorded and answered 200.
//!
//! A server under test finds the peers through a broker: either the helper itself
//! (start the server with `--broker <helper url>`; the helper answers
//! `GET /broker/location/:id` for its peers and accepts registrations), or an external
//! broker given to the suite, where each peer is registered with
//! `POST /broker/register/`. The external broker has no way to remove a registration:
//! when the run ends the fake servers stop answering, and the broker's liveness checks
//! drop them (`spec/broker.md#broker-liveness`).

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

use crate::error::ConformanceError;
use crate::verdict::Fail;

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
    urls: HashMap<Id, String>,
    received: Vec<Received>,
    registrations: Vec<serde_json::Value>,
}

#[derive(Debug)]
struct Shared {
    id: Id,
    peers: Mutex<Peers>,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Peers) -> T) -> T {
        let mut guard = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

/// The running helper servers. Stop when dropped.
#[derive(Debug)]
pub(crate) struct Helper {
    shared: Arc<Shared>,
    mode: BrokerMode,
    http: reqwest::Client,
    task: JoinHandle<()>,
    /// The fake peers' and fake servers' own servers.
    servers: Mutex<Vec<JoinHandle<()>>>,
    /// Ids registered with the external broker during the run.
    registered: Mutex<Vec<Id>>,
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.task.abort();
        self.stop_fakes();
    }
}

/// Binds a fresh 127.0.0.1 port and serves `app` there; returns its url and task.
async fn serve_loopback(app: Router) -> Result<(String, JoinHandle<()>), std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

impl Helper {
    /// Serves the suite broker on `listener` (the address the server under test was
    /// pointed at), or on a fresh 127.0.0.1 port.
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
        let shared = Arc::new(Shared {
            id: Id::random(),
            peers: Mutex::new(Peers::default()),
        });
        let mode = if suite {
            BrokerMode::Suite
        } else if let Some(url) = external_broker {
            BrokerMode::External(url.trim_end_matches('/').to_string())
        } else {
            BrokerMode::None
        };
        let app = broker_router(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Helper {
            shared,
            mode,
            http,
            task,
            servers: Mutex::new(Vec::new()),
            registered: Mutex::new(Vec::new()),
        })
    }

    /// Whether the server under test can resolve the helper's peers.
    pub(crate) fn brokered(&self) -> bool {
        self.mode != BrokerMode::None
    }

    fn keep(&self, task: JoinHandle<()>) {
        self.servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
    }

    /// Starts a fake server on its own port that answers `GET /id` (and `/id/`) with
    /// `id`, so a broker's liveness checks keep a registration of it; returns its url.
    pub(crate) async fn fake_server(&self, id: &Id) -> Result<String, Fail> {
        let text_id = id.to_string();
        let answer = move || {
            let text_id = text_id.clone();
            async move { text(text_id) }
        };
        let app = Router::new()
            .route("/id", get(answer.clone()))
            .route("/id/", get(answer));
        let (url, task) = serve_loopback(app)
            .await
            .map_err(|e| Fail(format!("starting a fake server: {e}")))?;
        self.keep(task);
        Ok(url)
    }

    /// Creates a peer of `kind` holding `blobs` (address → bytes, as served, so a blob
    /// may be corrupt) on its own port, and makes it resolvable through the broker.
    pub(crate) async fn add_peer(&self, kind: &str, blobs: Vec<(Id, Bytes)>) -> Result<Id, Fail> {
        let peer = Id::random();
        let (url, task) = serve_loopback(peer_router(Arc::clone(&self.shared), peer))
            .await
            .map_err(|e| Fail(format!("starting a fake peer: {e}")))?;
        self.keep(task);
        self.shared.with(|p| {
            p.blobs.insert(peer, blobs.into_iter().collect());
            p.urls.insert(peer, url.clone());
        });
        if let BrokerMode::External(broker) = &self.mode {
            let body = serde_json::json!({"id": peer, "urls": [url], "kind": kind});
            let target = format!("{broker}/broker/register/");
            let response = self.http.post(&target).json(&body).send().await?;
            if !response.status().is_success() {
                return Err(Fail(format!(
                    "registering a suite peer with the broker {broker} answered {}",
                    response.status()
                )));
            }
            self.registered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(peer);
        }
        Ok(peer)
    }

    /// The storage servers the broker of the server under test lists (besides the
    /// suite's peers): `GET /broker/registered/storage` of an external broker.
    pub(crate) async fn broker_storages(&self) -> Result<Vec<Id>, Fail> {
        let BrokerMode::External(broker) = &self.mode else {
            return Ok(Vec::new());
        };
        let url = format!("{broker}/broker/registered/storage");
        let response = self.http.get(&url).send().await?;
        if !response.status().is_success() {
            return Err(Fail(format!("GET {url} answered {}", response.status())));
        }
        let ids: Vec<String> = response.json().await?;
        Ok(ids.iter().filter_map(|t| Id::parse(t).ok()).collect())
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

    /// Stops every fake peer and fake server (they stop answering at once).
    fn stop_fakes(&self) {
        let tasks =
            std::mem::take(&mut *self.servers.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            task.abort();
        }
    }

    /// Ends the run's side effects: stops the fake servers, so an external broker's
    /// liveness checks drop their registrations. Returns how many registrations the
    /// external broker still holds until then.
    pub(crate) fn finish(&self) -> usize {
        self.stop_fakes();
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn broker_router(shared: Arc<Shared>) -> Router {
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
        .with_state(shared)
}

/// A fake peer's routes, at the root of its own origin.
fn peer_router(shared: Arc<Shared>, peer: Id) -> Router {
    Router::new()
        .route("/id", get(peer_id))
        .route("/id/", get(peer_id))
        .route(
            "/storage/fetch",
            get(cannot_fetch).put(cannot_fetch).post(cannot_fetch),
        )
        .route(
            "/storage/{address}",
            get(peer_blob).head(peer_blob).put(peer_store),
        )
        .route("/find/has", put(peer_record).post(peer_record))
        .route("/find/has/", put(peer_record).post(peer_record))
        .route("/find/notify", put(peer_record).post(peer_record))
        .route("/find/notify/", put(peer_record).post(peer_record))
        .route("/find/{block}", get(peer_find))
        .with_state((shared, peer))
}

type PeerState = State<(Arc<Shared>, Id)>;

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
    let Some(url) = shared.with(|p| p.urls.get(&id).cloned()) else {
        return (StatusCode::NOT_FOUND, "unknown server\n").into_response();
    };
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

async fn peer_id(State((_, peer)): PeerState) -> Response {
    text(peer.to_string())
}

async fn peer_blob(State((shared, peer)): PeerState, Path(address): Path<String>) -> Response {
    let Ok(address) = Id::parse(&address) else {
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
    State((shared, peer)): PeerState,
    Path(address): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(address) = Id::parse(&address) else {
        return (StatusCode::BAD_REQUEST, "malformed id\n").into_response();
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
    State((shared, peer)): PeerState,
    request: axum::extract::Request,
) -> Response {
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
