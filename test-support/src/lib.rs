//! # invariant-test-support
//!
//! What the servers' in-process test suites share (a dev-dependency only):
//! - [`eventually`]: poll a condition until it holds, failing the test after a bound;
//! - [`spawn_app`]: serve an axum router on a free loopback port;
//! - [`FakeBroker`]: a broker double keeping registrations in memory, without liveness
//!   checks, so a test controls exactly which servers the code under test can find.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use invariant_spec::broker::{Location, Registration};
use invariant_spec::{BrokerClient, Id};
use tokio::task::JoinHandle;

/// Longest wait for background work (forwarding, discovery, repair) to show.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` every 25 ms until it returns true; panics naming `what` after
/// [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Serves `router` on a free loopback port; returns its url and the serving task.
pub async fn spawn_app(router: axum::Router) -> (String, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake server");
    let addr = listener.local_addr().expect("fake server address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), task)
}

/// id → (kind, urls).
type Registry = Arc<Mutex<HashMap<Id, (String, Vec<String>)>>>;

/// A broker double: `register` (both url forms), `location` and `registered/{kind}`
/// over an in-memory table; never checks liveness. Stops when dropped.
#[derive(Debug)]
pub struct FakeBroker {
    url: String,
    registry: Registry,
    task: JoinHandle<()>,
}

impl FakeBroker {
    /// Starts an empty broker on a free loopback port.
    pub async fn start() -> FakeBroker {
        let registry: Registry = Arc::default();
        let broker_id = Id::random();
        let on_register = {
            let registry = Arc::clone(&registry);
            move |axum::Json(registration): axum::Json<Registration>| {
                let registry = Arc::clone(&registry);
                async move {
                    let urls = registration.all_urls();
                    registry
                        .lock()
                        .expect("registry lock")
                        .insert(registration.id, (registration.kind, urls));
                    axum::Json(serde_json::json!({ "id": broker_id }))
                }
            }
        };
        let on_location = {
            let registry = Arc::clone(&registry);
            move |Path(id): Path<String>| {
                let registry = Arc::clone(&registry);
                async move {
                    let found = Id::parse(&id).ok().and_then(|id| {
                        let registry = registry.lock().expect("registry lock");
                        registry.get(&id).map(|(_, urls)| (id, urls.clone()))
                    });
                    match found {
                        Some((id, urls)) => axum::Json(Location {
                            id,
                            url: urls.first().cloned(),
                            urls,
                            ttl: None,
                            token: None,
                        })
                        .into_response(),
                        None => (StatusCode::NOT_FOUND, "unknown id").into_response(),
                    }
                }
            }
        };
        let on_registered = {
            let registry = Arc::clone(&registry);
            move |Path(kind): Path<String>| {
                let registry = Arc::clone(&registry);
                async move {
                    let registry = registry.lock().expect("registry lock");
                    let mut ids: Vec<Id> = registry
                        .iter()
                        .filter(|(_, (k, _))| *k == kind)
                        .map(|(id, _)| *id)
                        .collect();
                    ids.sort();
                    axum::Json(ids)
                }
            }
        };
        let router = axum::Router::new()
            .route("/broker/register", axum::routing::post(on_register.clone()))
            .route("/broker/register/", axum::routing::post(on_register))
            .route("/broker/location/{id}", axum::routing::get(on_location))
            .route(
                "/broker/registered/{kind}",
                axum::routing::get(on_registered),
            );
        let (url, task) = spawn_app(router).await;
        FakeBroker {
            url,
            registry,
            task,
        }
    }

    /// The broker's base url.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Records server `id` of `kind` at `url`, as a registration would.
    pub fn register(&self, id: Id, kind: &str, url: &str) {
        self.registry
            .lock()
            .expect("registry lock")
            .insert(id, (kind.to_string(), vec![url.to_string()]));
    }

    /// Whether server `id` has registered (or been registered).
    pub fn knows(&self, id: &Id) -> bool {
        self.registry
            .lock()
            .expect("registry lock")
            .contains_key(id)
    }

    /// A client of this broker.
    pub fn client(&self) -> BrokerClient {
        BrokerClient::new(&self.url).expect("broker client")
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
