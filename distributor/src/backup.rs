//! The backup destination (`--backup-storage URL [--backup-mb-per-hour N]`): besides
//! its N placement copies, every pinned block is copied to one more storage server,
//! which may live elsewhere (another site, a storage server on an object store). The
//! backup is not a placement target: repairs and collection leave it alone, and it
//! keeps what it was given when pins go.
//!
//! One task walks the pinned blocks in id order, page by page, and copies each block
//! the backup does not hold yet from a known holder (else from any active server that
//! has it), streamed through the distributor as a `GET` piped into a `PUT`; the backup
//! server checks the hash as for any upload. A block counts as backed up once the
//! backup answers a `HEAD` for it, and that is recorded durably
//! ([`crate::store::backup`]), so a restart resumes where the walk stopped. Copies are
//! paced to the configured rate: after a copy of `n` bytes the next waits until `n`
//! bytes' worth of the hourly budget has passed. A walk starts after the first health
//! round, after new pins, after a change of the active servers, and every repair
//! interval; a walk that left a block behind (no reachable copy, the backup down) is
//! followed by another after the longest repair retry delay. Progress (blocks and bytes behind, copied, the last failure) is in the
//! status answer; what is behind is counted at the start of a walk and every few
//! seconds during one, and lowered as each copy lands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use invariant_spec::distributor::BackupStatus;
use invariant_spec::{Id, StorageClient};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::BackupConfig;
use crate::membership::Storage;
use crate::state::{BackupState, Core};
use crate::store::PinnedBlock;

/// Pinned blocks read per store call during a walk.
const PAGE: usize = 1024;
/// How often a walk counts again what is behind (sizes are learned as the placement
/// copies go, so a count made when a block was just pinned may lack them).
const RECOUNT: Duration = Duration::from_secs(5);

impl BackupState {
    pub(crate) fn new(config: BackupConfig) -> BackupState {
        BackupState {
            config,
            id: OnceLock::new(),
            blocks_behind: AtomicU64::new(0),
            bytes_behind: AtomicU64::new(0),
            blocks_copied: AtomicU64::new(0),
            bytes_copied: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            last_error: Mutex::new(None),
            wake: Notify::new(),
        }
    }

    /// The status answer's `backup` field.
    pub(crate) fn status(&self) -> BackupStatus {
        BackupStatus {
            url: self.config.url.clone(),
            id: self.id.get().copied(),
            blocks_behind: self.blocks_behind.load(Ordering::Relaxed),
            bytes_behind: self.bytes_behind.load(Ordering::Relaxed),
            blocks_copied: self.blocks_copied.load(Ordering::Relaxed),
            bytes_copied: self.bytes_copied.load(Ordering::Relaxed),
            bytes_per_hour: self.config.bytes_per_hour,
            passes: self.passes.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    fn failed(&self, why: String) {
        tracing::warn!(backup = %self.config.url, "backup: {why}");
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    fn landed(&self, size: u64) {
        self.blocks_copied.fetch_add(1, Ordering::Relaxed);
        self.bytes_copied.fetch_add(size, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// One block less behind.
    fn caught_up(&self, size: u64) {
        let _ = self
            .blocks_behind
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
        let _ = self
            .bytes_behind
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(size))
            });
    }
}

/// Spaces copies so that at most `bytes_per_hour` go out per hour on average.
#[derive(Debug)]
struct Pace {
    bytes_per_second: Option<f64>,
    next: Instant,
}

impl Pace {
    fn new(bytes_per_hour: Option<u64>) -> Pace {
        Pace {
            bytes_per_second: bytes_per_hour.map(|b| (b.max(1) as f64) / 3600.0),
            next: Instant::now(),
        }
    }

    /// When the next copy may start, after one of `bytes` bytes that ended at `now`.
    fn after(&mut self, bytes: u64, now: Instant) -> Instant {
        if let Some(rate) = self.bytes_per_second {
            let spent = Duration::from_secs_f64((bytes as f64 / rate).min(86_400.0));
            self.next = self.next.max(now) + spent;
        }
        self.next
    }
}

/// The backup task: walks until shutdown.
pub(crate) async fn run(core: std::sync::Arc<Core>) {
    let Some(state) = core.backup.as_ref() else {
        return;
    };
    let Some(backup) = connect(&core, state).await else {
        return;
    };
    let mut pace = Pace::new(state.config.bytes_per_hour);
    loop {
        // Sources are known once the first health round has found the active servers.
        while !core.gc.ready.load(Ordering::Acquire) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = core.shutdown.cancelled() => return,
            }
        }
        let complete = match walk(&core, state, &backup, &mut pace).await {
            Ok(complete) => complete,
            Err(Shutdown) => return,
        };
        // A walk that left blocks behind is tried again soon, as a failed repair is.
        let pause = if complete {
            core.config.repair_interval
        } else {
            core.config.retry_max
        };
        tokio::select! {
            _ = tokio::time::sleep(crate::jittered(pause, 0.2)) => {}
            _ = state.wake.notified() => {}
            _ = core.shutdown.cancelled() => return,
        }
    }
}

/// The backup server as a copy target, once it answers with its id (`None` at
/// shutdown).
async fn connect(core: &Core, state: &BackupState) -> Option<Storage> {
    loop {
        let answer = match core.transfer.endpoint(&state.config.url) {
            Ok(endpoint) => {
                let client = StorageClient::from_endpoint(endpoint);
                match tokio::time::timeout(core.config.probe_timeout, client.id()).await {
                    Ok(Ok(id)) => Ok((id, client)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer in time".to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok((id, client)) => {
                let _ = state.id.set(id);
                tracing::info!(backup = %state.config.url, %id, "backup storage server answered");
                return Some(Storage {
                    id,
                    client,
                    fetch: false,
                });
            }
            Err(e) => state.failed(format!("the backup storage server: {e}")),
        }
        tokio::select! {
            _ = tokio::time::sleep(core.config.health_interval) => {}
            _ = core.shutdown.cancelled() => return None,
        }
    }
}

/// Stopped by shutdown.
struct Shutdown;

/// One walk over every pinned block; whether every block it saw is on the backup.
async fn walk(
    core: &Core,
    state: &BackupState,
    backup: &Storage,
    pace: &mut Pace,
) -> Result<bool, Shutdown> {
    let mut complete = true;
    let id = backup.id;
    let mut counted = count_behind(core, state, id).await;
    let mut after = None;
    loop {
        let store = core.store.clone();
        let page = match core
            .blocking(move || store.backup_scan(&id, after, PAGE))
            .await
        {
            Ok(page) => page,
            Err(e) => {
                state.failed(format!("reading the pins: {e}"));
                return Ok(false);
            }
        };
        let Some(last) = page.last else { break };
        for pinned in page.missing {
            if core.shutdown.is_cancelled() {
                return Err(Shutdown);
            }
            if counted.elapsed() >= RECOUNT {
                counted = count_behind(core, state, id).await;
            }
            match copy_one(core, state, backup, &pinned).await {
                Some(copied) => {
                    let wait = pace.after(copied, Instant::now());
                    tokio::select! {
                        _ = tokio::time::sleep_until(wait) => {}
                        _ = core.shutdown.cancelled() => return Err(Shutdown),
                    }
                }
                None => complete = false,
            }
        }
        after = Some(last);
    }
    state.passes.fetch_add(1, Ordering::Relaxed);
    Ok(complete)
}

/// Counts the pinned blocks the backup lacks into the status; returns when.
async fn count_behind(core: &Core, state: &BackupState, backup: Id) -> Instant {
    let store = core.store.clone();
    match core.blocking(move || store.backup_behind(&backup)).await {
        Ok(behind) => {
            state.blocks_behind.store(behind.blocks, Ordering::Relaxed);
            state.bytes_behind.store(behind.bytes, Ordering::Relaxed);
        }
        Err(e) => state.failed(format!("counting the blocks behind: {e}")),
    }
    Instant::now()
}

/// Makes sure the backup holds `pinned.block`; returns the bytes copied when a copy
/// was made (0 when it already held the block), `None` when it could not be done.
async fn copy_one(
    core: &Core,
    state: &BackupState,
    backup: &Storage,
    pinned: &PinnedBlock,
) -> Option<u64> {
    let block = pinned.block;
    if let Some(size) = held(core, state, backup, &block).await? {
        record(core, state, backup, &block, size).await;
        return Some(0);
    }
    let active = core.members.active();
    let mut sources: Vec<&Storage> = pinned
        .holders
        .iter()
        .filter_map(|holder| active.storages.get(holder))
        .collect();
    sources.sort_by_key(|s| block.distance(&s.id));
    if sources.is_empty() {
        sources = crate::repair::discover(core, &active, &block, &[]).await.0;
    }
    if sources.is_empty() {
        state.failed(format!("no active storage server holds {block}"));
        return None;
    }
    if let Err(e) = crate::repair::copy(core, &block, backup, &sources).await {
        state.failed(format!("copying {block}: {e}"));
        return None;
    }
    let size = held(core, state, backup, &block).await?.or_else(|| {
        state.failed(format!("{block} copied but not held by the backup"));
        None
    })?;
    record(core, state, backup, &block, size).await;
    state.landed(size);
    Some(size)
}

/// Whether the backup holds `block` (its size); `None` when it cannot tell.
async fn held(
    core: &Core,
    state: &BackupState,
    backup: &Storage,
    block: &Id,
) -> Option<Option<u64>> {
    match tokio::time::timeout(core.config.probe_timeout, backup.client.has(block)).await {
        Ok(Ok(size)) => Some(size),
        Ok(Err(e)) => {
            state.failed(format!("asking the backup for {block}: {e}"));
            None
        }
        Err(_) => {
            state.failed(format!("asking the backup for {block}: no answer in time"));
            None
        }
    }
}

async fn record(core: &Core, state: &BackupState, backup: &Storage, block: &Id, size: u64) {
    let (store, id, block) = (core.store.clone(), backup.id, *block);
    match core
        .blocking(move || store.backed_up(&id, &block, size))
        .await
    {
        Ok(()) => state.caught_up(size),
        Err(e) => state.failed(format!("recording {block} as backed up: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_spreads_copies_over_the_hour() {
        let mut unlimited = Pace::new(None);
        // 3.6 MB per hour = 1,000 bytes per second.
        let mut pace = Pace::new(Some(3_600_000));
        let start = Instant::now();
        assert!(unlimited.after(1 << 30, start) <= start);
        assert_eq!(pace.after(2_000, start) - start, Duration::from_secs(2));
        // Debts add up while copies follow each other at once.
        assert_eq!(pace.after(500, start) - start, Duration::from_millis(2_500));
        // Idle time is not saved up.
        let later = start + Duration::from_secs(10);
        assert_eq!(pace.after(1_000, later) - later, Duration::from_secs(1));
    }
}
