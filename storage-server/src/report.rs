//! Reporting holdings to find servers (`PUT /find/has/`), and deletions
//! (`PUT /find/gone/`).
//!
//! Targets: the find servers given with `--find`, or else up to [`BROKER_TARGETS`] of
//! the find servers registered with the broker (those nearest to this server's id, so
//! the choice is stable), re-read every [`TARGET_CACHE`].
//!
//! - Full reports: every held blob, streamed from the store in batches of [`BATCH`]
//!   ids, at start and every `find_refresh` (default [`DEFAULT_FIND_REFRESH`]) so find
//!   servers' records do not age out. A pass that fails for any target is retried
//!   after a backoff (1 s doubling up to `find_refresh`).
//! - Live reports: each new blob's address goes into a bounded queue without waiting
//!   ([`Reporter::added`]); a task sends what gathered every [`DELAY`] or once
//!   [`BATCH`] ids wait. A full queue or a failed send loses ids until the next full
//!   report; an upload never waits for or fails because of reporting.
//! - Deletions: each deleted blob's address goes into the same queue
//!   ([`Reporter::gone`]) and is sent with `PUT /find/gone/` in batches the same way.
//!   The queue keeps the order of events: a batch holds one kind, and a change of
//!   kind sends what gathered first, so a blob stored again after its deletion ends
//!   up reported held. A lost gone report leaves a stale record that find servers'
//!   aging drops (the full reports no longer name the blob).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use invariant_spec::http::Endpoint;
use invariant_spec::{BrokerClient, ClientError, FindClient, Id};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::BlobStore;

/// Most ids in one `PUT /find/has/`.
pub const BATCH: usize = 1000;
/// Longest a new address waits before it is reported.
pub const DELAY: Duration = Duration::from_millis(200);
/// Default period of full reports: 1 hour.
pub const DEFAULT_FIND_REFRESH: Duration = Duration::from_secs(3600);
/// Find servers from the broker reported to.
pub const BROKER_TARGETS: usize = 3;
/// How long a target list read from the broker is reused.
pub const TARGET_CACHE: Duration = Duration::from_secs(30);
/// New addresses waiting to be reported.
const QUEUE: usize = 64 * 1024;

/// What happened to a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Stored: `PUT /find/has/`.
    Has,
    /// Deleted: `PUT /find/gone/`.
    Gone,
}

/// Hands new and deleted addresses to the live-report task. Cloning shares the queue.
#[derive(Clone, Debug)]
pub struct Reporter {
    queue: mpsc::Sender<(Kind, Id)>,
}

impl Reporter {
    /// Queues `address` for reporting; never waits (drops it when the queue is full).
    pub fn added(&self, address: Id) {
        if let Err(mpsc::error::TrySendError::Full((_, id))) =
            self.queue.try_send((Kind::Has, address))
        {
            tracing::debug!(%id, "report queue full; address reported with the next full report");
        }
    }

    /// Queues the deleted `address` for a gone report; never waits (drops it when the
    /// queue is full).
    pub fn gone(&self, address: Id) {
        if let Err(mpsc::error::TrySendError::Full((_, id))) =
            self.queue.try_send((Kind::Gone, address))
        {
            tracing::debug!(%id, "report queue full; a deletion goes unreported");
        }
    }
}

/// Where reports go.
#[derive(Debug)]
enum Targets {
    /// Explicit find servers.
    Fixed(Vec<FindClient>),
    /// Find servers registered with the broker, cached.
    Broker {
        broker: BrokerClient,
        cached: Mutex<Option<(Instant, Vec<FindClient>)>>,
    },
}

impl Targets {
    async fn get(&self, own: &Id) -> Result<Vec<FindClient>, ClientError> {
        match self {
            Targets::Fixed(clients) => Ok(clients.clone()),
            Targets::Broker { broker, cached } => {
                if let Some((at, clients)) = lock(cached).as_ref()
                    && at.elapsed() < TARGET_CACHE
                {
                    return Ok(clients.clone());
                }
                let mut ids = broker.registered("find").await?;
                own.sort_by_distance(&mut ids);
                let mut clients = Vec::new();
                for id in ids {
                    if clients.len() >= BROKER_TARGETS {
                        break;
                    }
                    if let Some(url) = broker.resolve(&id).await? {
                        let endpoint =
                            Endpoint::with_client(&url, broker.endpoint().http().clone())?;
                        clients.push(FindClient::from_endpoint(endpoint));
                    }
                }
                if !clients.is_empty() {
                    *lock(cached) = Some((Instant::now(), clients.clone()));
                }
                Ok(clients)
            }
        }
    }

    /// Forgets cached broker targets (after a failed send).
    fn invalidate(&self) {
        if let Targets::Broker { cached, .. } = self {
            *lock(cached) = None;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Shared by the two report tasks.
#[derive(Debug)]
struct Shared {
    own: Id,
    targets: Targets,
}

impl Shared {
    /// Sends `ids` as `kind` to every target. True when every target accepted (and
    /// there was one).
    async fn send(&self, kind: Kind, ids: &[Id]) -> bool {
        let targets = match self.targets.get(&self.own).await {
            Ok(t) if !t.is_empty() => t,
            Ok(_) => {
                tracing::debug!("no find server to report to");
                return false;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot list find servers");
                return false;
            }
        };
        let sends = targets.iter().map(|t| async move {
            match kind {
                Kind::Has => t.has(&self.own, ids).await,
                Kind::Gone => t.gone(&self.own, ids).await,
            }
        });
        let mut all_ok = true;
        for (target, result) in targets
            .iter()
            .zip(futures_util::future::join_all(sends).await)
        {
            if let Err(e) = result {
                tracing::debug!(find = target.endpoint().base_url(), error = %e, "report failed");
                all_ok = false;
            }
        }
        if !all_ok {
            self.targets.invalidate();
        }
        all_ok
    }
}

/// Starts reporting the holdings of `store` (this server is `own`) to `find`, or
/// when empty to the broker's find servers (reached with the broker client's HTTP
/// client). `None` when there is nowhere to report to. The tasks end with `shutdown`.
pub fn spawn(
    own: Id,
    store: BlobStore,
    find: Vec<FindClient>,
    broker: Option<BrokerClient>,
    refresh: Duration,
    shutdown: CancellationToken,
) -> Option<Reporter> {
    let targets = if !find.is_empty() {
        Targets::Fixed(find)
    } else if let Some(broker) = broker {
        Targets::Broker {
            broker,
            cached: Mutex::new(None),
        }
    } else {
        return None;
    };
    let shared = Arc::new(Shared { own, targets });
    let (queue, received) = mpsc::channel(QUEUE);

    let live = live(Arc::clone(&shared), received);
    let full = full(shared, store, refresh.max(Duration::from_secs(1)));
    for task in [
        Box::pin(live) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
        Box::pin(full),
    ] {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = task => {}
            }
        });
    }
    Some(Reporter { queue })
}

/// Sends new and deleted addresses in batches, in the order they happened.
async fn live(shared: Arc<Shared>, mut received: mpsc::Receiver<(Kind, Id)>) {
    let mut batch: Vec<Id> = Vec::new();
    let mut kind = Kind::Has;
    let mut deadline: Option<Instant> = None;
    let mut healthy = true;
    // An event of the other kind waiting for the batch before it to go out.
    let mut held: Option<(Kind, Id)> = None;
    loop {
        if let Some((next_kind, id)) = held.take() {
            kind = next_kind;
            batch.push(id);
            deadline.get_or_insert_with(|| Instant::now() + DELAY);
        }
        let until = deadline;
        let wait = async move {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let flush = tokio::select! {
            event = received.recv() => match event {
                Some((event_kind, id)) if event_kind != kind && !batch.is_empty() => {
                    held = Some((event_kind, id));
                    true
                }
                Some((event_kind, id)) => {
                    kind = event_kind;
                    batch.push(id);
                    deadline.get_or_insert_with(|| Instant::now() + DELAY);
                    batch.len() >= BATCH
                }
                None => return,
            },
            () = wait => true,
        };
        if flush && !batch.is_empty() {
            deadline = None;
            let ok = shared.send(kind, &batch).await;
            if ok != healthy {
                if ok {
                    tracing::info!("reporting new blobs to find servers again");
                } else {
                    tracing::warn!(
                        "reporting new blobs to find servers failed; the next full report repairs it"
                    );
                }
                healthy = ok;
            }
            batch.clear();
        }
    }
}

/// Reports every held blob, at start and every `refresh`.
async fn full(shared: Arc<Shared>, store: BlobStore, refresh: Duration) {
    let mut backoff = Duration::from_secs(1).min(refresh);
    loop {
        let ok = full_pass(&shared, &store).await;
        let wait = if ok {
            backoff = Duration::from_secs(1).min(refresh);
            refresh
        } else {
            let wait = backoff;
            backoff = (backoff * 2).min(refresh);
            wait
        };
        tokio::time::sleep(wait).await;
    }
}

async fn full_pass(shared: &Shared, store: &BlobStore) -> bool {
    let mut blobs = crate::list_blobs(store).chunks(BATCH);
    let mut ok = true;
    let mut reported = 0usize;
    let mut any = false;
    while let Some(chunk) = blobs.next().await {
        let mut ids = Vec::with_capacity(chunk.len());
        for item in chunk {
            match item {
                Ok((id, _)) => ids.push(id),
                Err(e) => {
                    tracing::warn!(error = %e, "listing blobs for the find report failed");
                    ok = false;
                }
            }
        }
        if ids.is_empty() {
            continue;
        }
        any = true;
        if shared.send(Kind::Has, &ids).await {
            reported += ids.len();
        } else {
            ok = false;
        }
    }
    if any {
        tracing::info!(reported, complete = ok, "reported holdings to find servers");
    }
    ok
}
