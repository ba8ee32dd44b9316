//! # distributor
//!
//! The distributor role: keeps every pinned block on the N storage servers nearest to it
//! by XOR distance (`/distributor/`), and keeps them there as servers come and go.
//!
//! - [`body`]: streaming parser of id-list request bodies.
//! - [`store`]: pins, registrations and placement knowledge in redb.
//! - [`placement`]: the N nearest servers of a block.
//! - `membership`: candidate storage servers and the active set.
//! - `health`: health rounds probing the candidates.
//! - `work`: the queue of blocks needing placement work, with retries and backoff.
//! - `repair`: the copy workers and full placement passes.
//! - `report`: best-effort reports of new holders to find servers.
//! - `gc`: garbage collection: released blocks leave every storage server after
//!   their grace period.
//! - `http`: routes and handlers. [`metrics`]: gauges.
//!
//! Storage servers are reached through the broker (`--broker`): without one, none can be
//! resolved and nothing is copied (pins are still recorded). Every call to a url learned
//! from the broker goes through an [`invariant_runtime::peers::PeerClient`]: `http` and
//! `https` only, no redirects followed, only addresses `--peer-allow` permits, with the
//! server's own CAs and token (storage servers in auth mode need `storage:write` from
//! it, find servers `find:report`); a storage server is used only once its url answered
//! `GET /id/` with the expected id. The `--broker` url itself is the operator's and is
//! reached with the server's client settings but without the peer restrictions.
//!
//! Pins are counted per subject (the caller's token subject; `""` in open mode): an
//! unpin releases only the caller's own pins, and a block stays pinned while any subject
//! holds a pin. `GET /distributor/status` adds `pins_by_subject` for a caller holding
//! `distributor:admin`.
//!
//! [`launch`] runs the server in-process and returns a [`Distributor`] whose
//! [`stop`](Distributor::stop) also waits for the background tasks (tests restart on the
//! same data directory); [`start`] returns the plain [`Server`] for `main.rs`.

pub mod body;
pub mod metrics;
pub mod placement;
pub mod store;

mod backup;
mod gc;
mod health;
mod http;
mod membership;
mod repair;
mod report;
mod state;
mod work;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use invariant_runtime::peers::{PeerClient, PeerError};
use invariant_runtime::{Server, ServerContext};
use invariant_spec::http::Endpoint;
use invariant_spec::{BrokerClient, ClientError, Id};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use state::BlockingError;

use crate::membership::Membership;
use crate::state::{Core, Stats};
use crate::store::{HolderUpdate, Store, StoreError};
use crate::work::WorkQueue;

/// Distributor settings. `Default` is right for local use.
#[derive(Clone, Debug)]
pub struct DistributorConfig {
    /// Copies each pinned block should have (N). Default 3.
    pub replicas: usize,
    /// Blocks repaired at once; each runs one copy at a time. Default 8.
    pub parallelism: usize,
    /// Also distribute onto every storage server the broker lists. Default true.
    pub broker_storages: bool,
    /// Time between health rounds (±20% jitter). Default 10 s.
    pub health_interval: Duration,
    /// Timeout of one health probe or `HEAD`. Default 5 s.
    pub probe_timeout: Duration,
    /// Missed probes in a row before an active server counts as lost. Default 2.
    pub lost_after: u32,
    /// Time between full placement passes (±20%), besides those after changes.
    /// Default 5 min.
    pub repair_interval: Duration,
    /// Timeout of one copy request. Default 5 min.
    pub copy_timeout: Duration,
    /// Delay before the first retry of a failed block repair; doubles per attempt.
    /// Default 1 s.
    pub retry_base: Duration,
    /// Longest retry delay. Default 60 s.
    pub retry_max: Duration,
    /// Failed repairs of a block before it waits for the next full pass. Default 8.
    pub max_attempts: u32,
    /// Most ids in one request body (413 above). Default 4,000,000.
    pub max_ids_per_request: usize,
    /// How long a block stays on the storage servers after its last unpin. Default
    /// 24 h.
    pub gc_grace: Duration,
    /// Collect blocks never pinned (found in storage listings) this long after they
    /// were first seen. Default `None`: never.
    pub gc_unpinned_after: Option<Duration>,
    /// Time between automatic sweeps (±10%). Default 1 h; `None`: only on request.
    pub gc_interval: Option<Duration>,
    /// A storage server every pinned block is also copied to ([`backup`]). Default
    /// none.
    pub backup: Option<BackupConfig>,
}

/// The backup destination (`--backup-storage`, `--backup-mb-per-hour`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupConfig {
    /// The backup storage server's url.
    pub url: String,
    /// Most bytes copied to it per hour (`None`: as fast as the copies go).
    pub bytes_per_hour: Option<u64>,
}

impl Default for DistributorConfig {
    fn default() -> DistributorConfig {
        DistributorConfig {
            replicas: 3,
            parallelism: 8,
            broker_storages: true,
            health_interval: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(5),
            lost_after: 2,
            repair_interval: Duration::from_secs(300),
            copy_timeout: Duration::from_secs(300),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_attempts: 8,
            max_ids_per_request: 4_000_000,
            gc_grace: Duration::from_secs(24 * 3600),
            gc_unpinned_after: None,
            gc_interval: Some(Duration::from_secs(3600)),
            backup: None,
        }
    }
}

impl DistributorConfig {
    /// The same settings with zero counts raised to one.
    fn checked(mut self) -> DistributorConfig {
        self.replicas = self.replicas.max(1);
        self.parallelism = self.parallelism.max(1);
        self.lost_after = self.lost_after.max(1);
        self.max_attempts = self.max_attempts.max(1);
        self
    }
}

/// Why the distributor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The database could not be opened.
    #[error("opening the distributor database: {0}")]
    Store(#[from] StoreError),
    /// Opening the database or binding failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// An HTTP client could not be built or the broker url is unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The HTTP client library refused its configuration.
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The client for peers cannot be built from the server's settings.
    #[error(transparent)]
    Peers(#[from] PeerError),
    /// A startup task failed.
    #[error(transparent)]
    Blocking(#[from] BlockingError),
}

/// A running distributor: the server plus its background tasks.
#[derive(Debug)]
pub struct Distributor {
    server: Server,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Distributor {
    /// The url clients should use.
    pub fn url(&self) -> &str {
        self.server.url()
    }
    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
    /// The server id.
    pub fn id(&self) -> Id {
        self.server.id()
    }
    /// The plain server (background tasks keep running until its shutdown).
    pub fn into_server(self) -> Server {
        self.server
    }
    /// Stops serving and waits for every background task and blocking call, so the
    /// database is closed when this returns.
    pub async fn stop(self) -> io::Result<()> {
        self.shutdown.cancel();
        let served = self.server.join().await;
        self.tasks.close();
        self.tasks.wait().await;
        served
    }
}

/// Opens the database, serves the routes and starts the background tasks.
pub async fn launch(
    ctx: &ServerContext,
    config: DistributorConfig,
) -> Result<Distributor, StartError> {
    let config = config.checked();
    let dir = ctx.data_dir().clone();
    let tasks = TaskTracker::new();
    let (store, registered, pinned) = tasks
        .spawn_blocking(move || -> Result<_, StoreError> {
            let store = Store::open(&dir)?;
            let registered = store.registered()?;
            let pinned = store.pinned_count()?;
            Ok((store, registered, pinned))
        })
        .await
        .map_err(BlockingError::from)??;

    let probe = PeerClient::for_server(
        &ctx.options,
        config.probe_timeout,
        Some(config.probe_timeout),
    )?;
    let transfer = PeerClient::for_server(
        &ctx.options,
        config.probe_timeout,
        Some(config.copy_timeout),
    )?;
    let broker = match &ctx.broker {
        Some(broker) => {
            let http = ctx
                .options
                .client
                .http_client_builder()?
                .connect_timeout(config.probe_timeout)
                .timeout(config.probe_timeout)
                .build()?;
            Some(BrokerClient::from_endpoint(Endpoint::with_client(
                broker.endpoint().base_url(),
                http,
            )?))
        }
        None => {
            tracing::warn!(
                "no --broker: storage servers cannot be resolved, nothing will be copied"
            );
            None
        }
    };

    let (holder_tx, holder_rx) = mpsc::channel(65_536);
    let (report_tx, report_rx) = mpsc::channel(65_536);
    let stats = Stats {
        pinned: AtomicU64::new(pinned),
        registered: AtomicU64::new(registered.len() as u64),
        ..Stats::default()
    };
    let core = Arc::new(Core {
        store: store.clone(),
        members: Membership::new(registered.into_iter().map(|(id, _)| id)),
        work: WorkQueue::default(),
        stats,
        writes: tokio::sync::Mutex::new(()),
        tasks: tasks.clone(),
        shutdown: ctx.shutdown.clone(),
        broker,
        probe,
        transfer,
        holder_updates: holder_tx,
        reports: report_tx,
        pass_wake: Notify::new(),
        pass_verify: std::sync::Mutex::new(HashSet::new()),
        gc: state::GcState::default(),
        backup: config.backup.clone().map(state::BackupState::new),
        config,
    });
    core.refresh_gc().await?;

    let server = invariant_runtime::serve(ctx, http::router(Arc::clone(&core))).await?;

    tasks.spawn(write_holders(
        store,
        holder_rx,
        tasks.clone(),
        ctx.shutdown.clone(),
    ));
    tasks.spawn(report::run(Arc::clone(&core), report_rx));
    tasks.spawn(health_loop(Arc::clone(&core)));
    tasks.spawn(repair::pass_loop(Arc::clone(&core)));
    tasks.spawn(gc::run(Arc::clone(&core)));
    tasks.spawn(backup::run(Arc::clone(&core)));
    for _ in 0..core.config.parallelism {
        tasks.spawn(repair::worker(Arc::clone(&core)));
    }
    tasks.spawn(gauges(core));
    Ok(Distributor {
        server,
        tasks,
        shutdown: ctx.shutdown.clone(),
    })
}

/// [`launch`], returning the plain server (for `main.rs`).
pub async fn start(ctx: &ServerContext, config: DistributorConfig) -> Result<Server, StartError> {
    Ok(launch(ctx, config).await?.into_server())
}

/// `base` ± `fraction`.
pub(crate) fn jittered(base: Duration, fraction: f64) -> Duration {
    let factor = 1.0 - fraction + rand::random::<f64>() * 2.0 * fraction;
    base.mul_f64(factor.max(0.0))
}

/// Health rounds until shutdown; the first runs at once and is followed by a pass.
async fn health_loop(core: Arc<Core>) {
    let mut first = true;
    loop {
        let outcome = tokio::select! {
            outcome = health::round(&core) => outcome,
            _ = core.shutdown.cancelled() => return,
        };
        if outcome.changed || first {
            core.request_pass(outcome.returned);
            core.publish();
            // Servers that came (back) may owe deletions from earlier sweeps.
            // Every server seen active owes the deletions of sweeps it misses from now
            // on, even if the broker stops listing it.
            let active = core.members.active().ids.clone();
            let store = core.store.clone();
            if let Err(e) = core.blocking(move || store.gc_note_storages(&active)).await {
                tracing::warn!(error = %e, "cannot record the active storage servers");
            }
            core.gc
                .ready
                .store(true, std::sync::atomic::Ordering::Release);
            core.gc.wake.notify_one();
            if let Some(backup) = &core.backup {
                backup.wake.notify_one();
            }
        }
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(jittered(core.config.health_interval, 0.2)) => {}
            _ = core.members.wake.notified() => {}
            _ = core.shutdown.cancelled() => return,
        }
    }
}

/// Writes placement knowledge in batches (one transaction per batch). At shutdown it
/// writes what is already queued, then stops.
async fn write_holders(
    store: Store,
    mut updates: mpsc::Receiver<HolderUpdate>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    const MAX_BATCH: usize = 4096;
    loop {
        let first = tokio::select! {
            update = updates.recv() => update,
            _ = shutdown.cancelled() => None,
        };
        let mut batch: Vec<HolderUpdate> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match updates.try_recv() {
                Ok(update) => batch.push(update),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        let store = store.clone();
        match tasks
            .spawn_blocking(move || store.apply_holders(&batch))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record placement knowledge"),
            Err(e) => tracing::warn!(error = %e, "placement writer failed"),
        }
    }
}

/// Refreshes the gauges every second.
async fn gauges(core: Arc<Core>) {
    loop {
        core.publish();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = core.shutdown.cancelled() => return,
        }
    }
}
