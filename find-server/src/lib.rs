//! # find-server
//!
//! The find role: which storage servers hold a block (`/find/`), kept in redb at
//! `<data-dir>/find.redb`, and shared over a Kademlia-style network of find servers.
//!
//! - [`store`]: has-records (block, container, last seen) and known find servers.
//! - [`routing`]: the k-bucket routing table of find servers.
//! - [`http`]: routes and handlers.
//! - [`peers`]: learning of find servers (broker, notifications), telling them of this
//!   one, and reaching them through the broker.
//! - [`forward`]: sends received has-records, batched, to find servers nearer the block.
//! - [`aging`]: drops records of containers that stop answering or no longer hold the
//!   block, and records not refreshed within the TTL.
//!
//! [`start`] runs the server in-process (tests use it on port 0); `main.rs` wraps it.

pub mod aging;
pub mod forward;
pub mod http;
pub mod peers;
pub mod routing;
pub mod store;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use invariant_runtime::{Server, ServerContext};
use invariant_spec::{BrokerClient, Id};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::forward::ForwardJob;
use crate::peers::PeerBook;
use crate::routing::RoutingTable;
use crate::store::{FindStore, StoreError};

/// Default [`FindConfig::record_ttl`]: 3 hours (storage servers re-report every hour).
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(3 * 3600);
/// Default [`FindConfig::check_interval`]: 5 minutes.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(300);
/// Default [`FindConfig::check_sample`]: 16 records per container and pass.
pub const DEFAULT_CHECK_SAMPLE: usize = 16;
/// Default [`FindConfig::check_failures`]: 3 failed passes in a row.
pub const DEFAULT_CHECK_FAILURES: u32 = 3;
/// Default [`FindConfig::peer_refresh`]: 60 seconds.
pub const DEFAULT_PEER_REFRESH: Duration = Duration::from_secs(60);
/// Default [`FindConfig::peer_failures`]: 3 failed contacts in a row.
pub const DEFAULT_PEER_FAILURES: u32 = 3;
/// Default [`FindConfig::forward_delay`]: 200 ms.
pub const DEFAULT_FORWARD_DELAY: Duration = Duration::from_millis(200);
/// Default [`FindConfig::forward_fanout`]: 3 (the lookup's alpha).
pub const DEFAULT_FORWARD_FANOUT: usize = 3;

/// Find-specific settings. `FindConfig::default()` suits local use.
#[derive(Clone, Debug)]
pub struct FindConfig {
    /// A record neither re-reported nor verified for this long is dropped.
    /// Default [`DEFAULT_RECORD_TTL`].
    pub record_ttl: Duration,
    /// Period of the aging pass (expiry, then container checks).
    /// Default [`DEFAULT_CHECK_INTERVAL`].
    pub check_interval: Duration,
    /// Records per container checked with `HEAD /storage/:id` in each pass (a random
    /// window of its records). Default [`DEFAULT_CHECK_SAMPLE`].
    pub check_sample: usize,
    /// Passes in a row in which a container cannot be reached (or the broker does not
    /// know it) before all its records are dropped. Default [`DEFAULT_CHECK_FAILURES`].
    pub check_failures: u32,
    /// Period of asking the broker for find servers and notifying new ones of this
    /// server. Default [`DEFAULT_PEER_REFRESH`].
    pub peer_refresh: Duration,
    /// Failed contacts in a row before a find server leaves the routing table.
    /// Default [`DEFAULT_PEER_FAILURES`].
    pub peer_failures: u32,
    /// How long received records wait to be batched before forwarding.
    /// Default [`DEFAULT_FORWARD_DELAY`].
    pub forward_delay: Duration,
    /// Each record is forwarded to this many of the known find servers nearer to its
    /// block than this server (nearest first). Default [`DEFAULT_FORWARD_FANOUT`].
    pub forward_fanout: usize,
}

impl Default for FindConfig {
    fn default() -> FindConfig {
        FindConfig {
            record_ttl: DEFAULT_RECORD_TTL,
            check_interval: DEFAULT_CHECK_INTERVAL,
            check_sample: DEFAULT_CHECK_SAMPLE,
            check_failures: DEFAULT_CHECK_FAILURES,
            peer_refresh: DEFAULT_PEER_REFRESH,
            peer_failures: DEFAULT_PEER_FAILURES,
            forward_delay: DEFAULT_FORWARD_DELAY,
            forward_fanout: DEFAULT_FORWARD_FANOUT,
        }
    }
}

/// Why the find server could not start or a background step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FindError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Binding or serving failed.
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
}

/// Shared handler and task state. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: Id,
    store: FindStore,
    routing: Mutex<RoutingTable>,
    broker: Option<BrokerClient>,
    peers: PeerBook,
    forward: mpsc::Sender<ForwardJob>,
    config: FindConfig,
}

impl AppState {
    /// This server's id.
    pub fn id(&self) -> Id {
        self.inner.id
    }
    /// The record store.
    pub fn store(&self) -> &FindStore {
        &self.inner.store
    }
    /// The broker, when configured.
    pub fn broker(&self) -> Option<&BrokerClient> {
        self.inner.broker.as_ref()
    }
    /// The settings.
    pub fn config(&self) -> &FindConfig {
        &self.inner.config
    }
    /// The routing table, locked. Never hold it across an `.await`.
    pub fn routing(&self) -> MutexGuard<'_, RoutingTable> {
        // A panic while holding the lock cannot leave the table inconsistent (every
        // method completes its change before returning), so a poisoned lock is usable.
        self.inner
            .routing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    pub(crate) fn peer_book(&self) -> &PeerBook {
        &self.inner.peers
    }
    pub(crate) fn forward_sender(&self) -> &mpsc::Sender<ForwardJob> {
        &self.inner.forward
    }
}

/// Runs `f` (database work) on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, FindError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Opens the store (waiting, as [`FindStore::open`] does, for a database still held by
/// an earlier instance of this server in the same process) and reads the known peers.
async fn open_store(ctx: &ServerContext) -> Result<(FindStore, Vec<Id>), FindError> {
    let dir = ctx.data_dir().clone();
    blocking(move || {
        let store = FindStore::open(&dir)?;
        let peers = store.peers()?;
        Ok((store, peers))
    })
    .await
}

/// Opens the store under the context's data directory, serves it, and starts the
/// background tasks (peer discovery, forwarding, aging), which end with the server.
pub async fn start(ctx: &ServerContext, config: FindConfig) -> Result<Server, FindError> {
    let (store, known_peers) = open_store(ctx).await?;
    let mut routing = RoutingTable::new(ctx.id, routing::K);
    for peer in known_peers {
        routing.insert(peer);
    }
    let (forward_tx, forward_rx) = mpsc::channel(forward::QUEUE);
    let state = AppState {
        inner: Arc::new(Inner {
            id: ctx.id,
            store,
            routing: Mutex::new(routing),
            broker: ctx.broker.clone(),
            peers: PeerBook::default(),
            forward: forward_tx,
            config,
        }),
    };
    let server = invariant_runtime::serve(ctx, http::router(state.clone())).await?;
    let shutdown = ctx.shutdown.clone();
    spawn_until(&shutdown, forward::run(state.clone(), forward_rx));
    spawn_until(&shutdown, peers::run(state.clone()));
    spawn_until(&shutdown, aging::run(state));
    Ok(server)
}

/// Spawns `task`, dropping it (and the state it holds) when `shutdown` fires.
fn spawn_until<F>(shutdown: &CancellationToken, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = task => {}
        }
    });
}
