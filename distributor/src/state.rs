//! Shared state of a running distributor: store, membership, repair queue, counters.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use invariant_runtime::peers::PeerClient;
use invariant_spec::distributor::{DistributorStatus, GcStatus, SweepReport};
use invariant_spec::{BrokerClient, Id};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::membership::Membership;
use crate::store::gc::GcTotals;
use crate::store::{HolderUpdate, Store, StoreError};
use crate::work::WorkQueue;
use crate::{BackupConfig, DistributorConfig};

/// A blocking store call that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockingError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Counters behind the status route and the gauges.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Distinct pinned blocks (updated under the write lock, after each commit).
    pub pinned: AtomicU64,
    /// Explicitly registered storage servers (distinct).
    pub registered: AtomicU64,
    pub copies_in_flight: AtomicU64,
    pub copies_completed: AtomicU64,
    pub copies_failed: AtomicU64,
    pub passes: AtomicU64,
    /// Collection totals as of the last refresh ([`Core::refresh_gc`]).
    pub gc: Mutex<GcTotals>,
}

/// Garbage collection's share of the state.
#[derive(Debug, Default)]
pub(crate) struct GcState {
    /// Held by the running sweep: one at a time.
    pub lock: tokio::sync::Mutex<()>,
    /// A sweep is running.
    pub running: AtomicBool,
    /// The last sweep's report since the start.
    pub last_report: Mutex<Option<SweepReport>>,
    /// Asks the collector to catch up owed deletions.
    pub wake: Notify,
    /// The first health round finished (sweeps wait for it: before it no storage
    /// server is known active).
    pub ready: AtomicBool,
}

/// The backup destination's share of the distributor state (the task and its
/// accounting are in `backup`).
#[derive(Debug)]
pub(crate) struct BackupState {
    pub config: BackupConfig,
    /// The backup server's id, once it answered.
    pub id: OnceLock<Id>,
    pub blocks_behind: AtomicU64,
    pub bytes_behind: AtomicU64,
    pub blocks_copied: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub passes: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Starts a walk (new pins).
    pub wake: Notify,
}

/// Counts one copy as in flight until dropped.
pub(crate) struct InFlight<'a>(&'a Stats);

impl<'a> InFlight<'a> {
    pub fn start(stats: &'a Stats) -> InFlight<'a> {
        stats.copies_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.copies_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything the handlers and background tasks share (behind one `Arc`).
#[derive(Debug)]
pub(crate) struct Core {
    pub config: DistributorConfig,
    pub store: Store,
    pub members: Membership,
    pub work: WorkQueue,
    pub stats: Stats,
    /// Serializes pin and registration changes with their in-memory effects, so the
    /// queue and counters follow the order of commits.
    pub writes: tokio::sync::Mutex<()>,
    /// Every background task and blocking call, so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// The broker (`--broker`, trusted as configured; probe timeout), when configured.
    pub broker: Option<BrokerClient>,
    /// Short-timeout client for urls learned from the broker: health checks, `HEAD`s
    /// and reports (no redirects, `--peer-allow`, the server's token).
    pub probe: PeerClient,
    /// The same for copies (timeout [`DistributorConfig::copy_timeout`]).
    pub transfer: PeerClient,
    /// Placement knowledge to write (batched by the holder writer).
    pub holder_updates: mpsc::Sender<HolderUpdate>,
    /// `(storage, block)` holdings to report to find servers.
    pub reports: mpsc::Sender<(Id, Id)>,
    /// Wakes the pass loop.
    pub pass_wake: Notify,
    /// Storage servers whose holdings the next pass must re-check (they came back).
    pub pass_verify: Mutex<HashSet<Id>>,
    pub gc: GcState,
    /// The backup destination, when configured.
    pub backup: Option<BackupState>,
}

impl Core {
    /// Runs `f` on the blocking pool (tracked, so shutdown waits for it).
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, BlockingError>
    where
        F: FnOnce() -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        Ok(self.tasks.spawn_blocking(f).await??)
    }

    /// Records that `storage` holds `block` of `size` bytes when known (durably,
    /// batched) and reports it.
    pub async fn learned_holder(&self, block: Id, storage: Id, size: Option<u64>) {
        // Fails only once the writer stopped at shutdown.
        let _ = self
            .holder_updates
            .send(HolderUpdate::Add {
                block,
                storage,
                size,
            })
            .await;
        // Best effort: a full queue drops the report, never the copy.
        let _ = self.reports.try_send((storage, block));
    }

    /// Records that `storage` does not hold `block`.
    pub async fn lost_holder(&self, block: Id, storage: Id) {
        let _ = self
            .holder_updates
            .send(HolderUpdate::Remove { block, storage })
            .await;
    }

    /// Asks for a full placement pass, re-checking `verify` servers' holdings.
    pub fn request_pass(&self, verify: impl IntoIterator<Item = Id>) {
        self.pass_verify
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(verify);
        self.pass_wake.notify_one();
    }

    /// Reads the collection totals from the store into the counters (and gauges).
    pub async fn refresh_gc(&self) -> Result<GcTotals, BlockingError> {
        let store = self.store.clone();
        let totals = self.blocking(move || store.gc_totals()).await?;
        *self.stats.gc.lock().unwrap_or_else(PoisonError::into_inner) = totals;
        Ok(totals)
    }

    /// Garbage collection's status, read from the store.
    pub async fn gc_status(&self) -> Result<GcStatus, BlockingError> {
        let totals = self.refresh_gc().await?;
        let config = &self.config;
        Ok(GcStatus {
            pending_blocks: totals.released_blocks,
            pending_bytes: totals.released_bytes,
            behind: totals.behind,
            deleted_blocks: totals.deleted_blocks,
            deleted_bytes: totals.deleted_bytes,
            sweeps: totals.sweeps,
            last_sweep: (totals.last_sweep > 0).then_some(totals.last_sweep),
            last_report: self
                .gc
                .last_report
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            grace_seconds: config.gc_grace.as_secs(),
            unpinned_after_seconds: config.gc_unpinned_after.map(|d| d.as_secs()),
            interval_seconds: config.gc_interval.map(|d| d.as_secs()),
            running: self.gc.running.load(Ordering::Relaxed),
        })
    }

    /// The current status.
    pub fn status(&self) -> DistributorStatus {
        let active = self.members.active();
        let pinned = self.stats.pinned.load(Ordering::Relaxed);
        let replicas = self.config.replicas as u64;
        let replica_shortfall = replicas.saturating_sub(active.ids.len() as u64);
        // With fewer active servers than N, placement aims at all of them and the work
        // queue empties, yet no block has N copies on live servers.
        let gc = *self.stats.gc.lock().unwrap_or_else(PoisonError::into_inner);
        let under_replicated = if replica_shortfall > 0 {
            pinned
        } else {
            self.work.len() as u64
        };
        DistributorStatus {
            pinned,
            under_replicated,
            replica_shortfall,
            copies_in_flight: self.stats.copies_in_flight.load(Ordering::Relaxed),
            storages_active: active.ids.len() as u64,
            storages_known: self.members.known() as u64,
            storages_registered: self.stats.registered.load(Ordering::Relaxed),
            replicas,
            copies_completed: self.stats.copies_completed.load(Ordering::Relaxed),
            copies_failed: self.stats.copies_failed.load(Ordering::Relaxed),
            passes: self.stats.passes.load(Ordering::Relaxed),
            gc_pending_blocks: gc.released_blocks,
            gc_pending_bytes: gc.released_bytes,
            gc_behind: gc.behind,
            gc_deleted_blocks: gc.deleted_blocks,
            gc_deleted_bytes: gc.deleted_bytes,
            gc_sweeps: gc.sweeps,
            pins_by_subject: None,
            backup: self.backup.as_ref().map(|b| b.status()),
        }
    }

    /// Sets the gauges from the current status.
    pub fn publish(&self) -> DistributorStatus {
        let status = self.status();
        crate::metrics::publish(&status);
        status
    }
}
