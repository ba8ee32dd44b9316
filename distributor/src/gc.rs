//! Garbage collection: blocks no subject pins leave every storage server.
//!
//! A block whose last pin goes is recorded as released ([`crate::store::gc`]). A sweep
//! (every [`crate::DistributorConfig::gc_interval`], or on `POST /distributor/gc`) works
//! through the released blocks whose grace period ([`crate::DistributorConfig::gc_grace`])
//! has passed, in batches of up to [`MAX_DELETE_BATCH`]:
//!
//! 1. take the distributor's write lock, so no pin or unpin commits until step 4;
//! 2. confirm the batch in one transaction: a block that is pinned again, or whose
//!    released row changed, is dropped from the batch (the pin wins); so is a block a
//!    repair worker is still copying (it waits for the next sweep);
//! 3. ask every active storage server to delete the batch (`POST /storage/delete`),
//!    all at once, each within a bounded time; every storage server ever seen active
//!    (kept durably) that did not delete it owes the deletion;
//! 4. record the outcome (released rows go, owed deletions are kept per server) and
//!    release the lock.
//!
//! Then every active server that owes deletions carries them out (blocks pinned
//! again meanwhile are dropped from what it owes). The health loop also asks for this
//! catch-up whenever the active set changes, so a server that was down during a sweep
//! is swept when it returns.
//!
//! Blocks written to a storage server but never pinned are unknown to the
//! distributor. With [`crate::DistributorConfig::gc_unpinned_after`] set, each sweep first
//! lists every active storage server (`GET /storage/`): a listed block with no pin and
//! no released row becomes released as of that moment, and is collected once it has
//! stayed unpinned that long. It is off by default because a client may write blocks
//! and pin them much later (or rely on another distributor); an operator opts in.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use invariant_spec::Id;
use invariant_spec::distributor::{GcProgress, SweepReport};
use invariant_spec::storage::MAX_DELETE_BATCH;

use crate::jittered;
use crate::membership::Storage;
use crate::state::{BlockingError, Core};
use crate::store::gc::{Eligibility, Released, now_ms};

/// Blocks a storage server lists per page when looking for never-pinned blocks.
const LIST_PAGE: usize = 10_000;
/// A batch deletion may take this many probe timeouts (default 5 s each).
const DELETE_TIMEOUT_PROBES: u32 = 4;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sets the running flag until dropped.
struct Running<'a>(&'a Core);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.gc.running.store(false, Ordering::Relaxed);
    }
}

/// Runs one sweep (see the module docs), calling `progress` after each batch. A dry
/// run deletes nothing and reports what a sweep would collect now.
pub(crate) async fn sweep(
    core: &Core,
    dry_run: bool,
    progress: impl Fn(GcProgress),
) -> Result<SweepReport, BlockingError> {
    let _one = core.gc.lock.lock().await;
    // Until the first health round, no storage server is known active.
    while !core.gc.ready.load(Ordering::Acquire) {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = core.shutdown.cancelled() => break,
        }
    }
    core.gc.running.store(true, Ordering::Relaxed);
    let _running = Running(core);
    let started = Instant::now();
    let mut report = SweepReport {
        dry_run,
        ..SweepReport::default()
    };
    let rules = Eligibility {
        now: now_ms(),
        grace: millis(core.config.gc_grace),
        unpinned_after: core.config.gc_unpinned_after.map(millis),
    };
    if rules.unpinned_after.is_some() && !dry_run {
        report.discovered = discover_unpinned(core, rules.now).await?;
    }
    let store = core.store.clone();
    let pending = core
        .blocking(move || store.gc_totals())
        .await?
        .released_blocks;
    progress(GcProgress { blocks: 0, pending });
    let mut cursor = None;
    let mut storages = HashSet::new();
    loop {
        let store = core.store.clone();
        let (candidates, next) = core
            .blocking(move || store.gc_candidates(&rules, cursor, MAX_DELETE_BATCH))
            .await?;
        if !candidates.is_empty() {
            if dry_run {
                report.blocks += candidates.len() as u64;
                report.bytes = candidates
                    .iter()
                    .fold(report.bytes, |sum, c| sum.saturating_add(c.size));
            } else {
                let batch = collect_batch(core, candidates, &rules).await?;
                report.blocks += batch.blocks;
                report.bytes = report.bytes.saturating_add(batch.bytes);
                report.kept += batch.kept;
                storages.extend(batch.storages);
            }
            progress(GcProgress {
                blocks: report.blocks,
                pending,
            });
        }
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        if core.shutdown.is_cancelled() {
            break;
        }
    }
    if !dry_run && !core.shutdown.is_cancelled() {
        report.caught_up = catch_up(core).await?;
        let store = core.store.clone();
        core.blocking(move || store.gc_sweep_finished(now_ms()))
            .await?;
    }
    report.storages = storages.len() as u64;
    report.millis = millis(started.elapsed());
    let totals = core.refresh_gc().await?;
    report.behind = totals.behind;
    if !dry_run {
        tracing::info!(
            blocks = report.blocks,
            bytes = report.bytes,
            kept = report.kept,
            behind = report.behind,
            millis = report.millis,
            "garbage collection sweep finished"
        );
    }
    *core
        .gc
        .last_report
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(report.clone());
    Ok(report)
}

/// What one confirmed batch did.
struct Batch {
    blocks: u64,
    bytes: u64,
    kept: u64,
    storages: Vec<Id>,
}

/// Steps 1-4 of the module docs for one batch of candidates.
async fn collect_batch(
    core: &Core,
    candidates: Vec<Released>,
    rules: &Eligibility,
) -> Result<Batch, BlockingError> {
    let asked = candidates.len() as u64;
    let _writes = core.writes.lock().await;
    // A repair that started before the block's last unpin may still be copying it;
    // deleting now could race with that copy landing. Such blocks wait for the next
    // sweep (no new repair of an unpinned block starts).
    let candidates: Vec<Released> = candidates
        .into_iter()
        .filter(|c| !core.work.is_running(&c.block))
        .collect();
    let store = core.store.clone();
    let rules = *rules;
    let (_epoch, confirmed) = core
        .blocking(move || store.gc_confirm(&candidates, &rules))
        .await?;
    let kept = asked - confirmed.len() as u64;
    if confirmed.is_empty() {
        return Ok(Batch {
            blocks: 0,
            bytes: 0,
            kept,
            storages: Vec::new(),
        });
    }
    let ids: Vec<Id> = confirmed.iter().map(|r| r.block).collect();
    let active = core.members.active();
    let deletions = futures_util::future::join_all(
        active
            .ids
            .iter()
            .filter_map(|id| active.storages.get(id))
            .map(|storage| {
                let ids = &ids;
                async move { (storage.id, delete_batch(core, storage, ids).await) }
            }),
    )
    .await;
    let mut bytes = 0u64;
    let mut done = Vec::new();
    for (storage, outcome) in deletions {
        match outcome {
            Ok(freed) => {
                bytes = bytes.saturating_add(freed);
                done.push(storage);
            }
            Err(reason) => {
                tracing::warn!(%storage, %reason, "storage server did not delete collected blocks; it owes them");
            }
        }
    }
    // Every storage server ever seen active (durably recorded, so a server the broker
    // stopped listing while it was down still catches up) owes what it did not delete.
    let active_ids = active.ids.clone();
    let store = core.store.clone();
    let seen = core
        .blocking(move || store.gc_note_storages(&active_ids))
        .await?;
    let behind: Vec<Id> = seen.into_iter().filter(|id| !done.contains(id)).collect();
    let store = core.store.clone();
    let blocks = confirmed.len() as u64;
    core.blocking(move || store.gc_collected(&confirmed, &behind, bytes))
        .await?;
    Ok(Batch {
        blocks,
        bytes,
        kept,
        storages: done,
    })
}

/// Asks `storage` to delete `ids` (`POST /storage/delete`) within a bounded time, so
/// a server that accepts connections but never answers cannot hold the write lock
/// (and with it every pin) for long. Returns the bytes it freed.
async fn delete_batch(core: &Core, storage: &Storage, ids: &[Id]) -> Result<u64, String> {
    let limit = core
        .config
        .probe_timeout
        .saturating_mul(DELETE_TIMEOUT_PROBES);
    match tokio::time::timeout(limit, storage.client.delete_many(ids)).await {
        Ok(Ok(answer)) => Ok(answer.bytes),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Active storage servers carry out the deletions they owe. Returns how many.
pub(crate) async fn catch_up(core: &Core) -> Result<u64, BlockingError> {
    let store = core.store.clone();
    let owing = core.blocking(move || store.gc_behind_storages()).await?;
    if owing.is_empty() {
        return Ok(0);
    }
    let active = core.members.active();
    let mut done = 0u64;
    for storage_id in owing {
        let Some(storage) = active.storages.get(&storage_id) else {
            continue;
        };
        loop {
            let _writes = core.writes.lock().await;
            let store = core.store.clone();
            let Some(rows) = core
                .blocking(move || store.gc_behind(&storage_id, MAX_DELETE_BATCH))
                .await?
            else {
                break;
            };
            let ids: Vec<Id> = rows.iter().map(|(id, _)| *id).collect();
            let bytes = if ids.is_empty() {
                0
            } else {
                match delete_batch(core, storage, &ids).await {
                    Ok(freed) => freed,
                    Err(reason) => {
                        tracing::warn!(storage = %storage_id, %reason, "storage server did not delete the blocks it owes");
                        break;
                    }
                }
            };
            let store = core.store.clone();
            done += ids.len() as u64;
            core.blocking(move || store.gc_behind_done(&storage_id, &ids, bytes))
                .await?;
        }
    }
    Ok(done)
}

/// Lists every active storage server and records its never-pinned blocks as released
/// now. Returns how many were new.
async fn discover_unpinned(core: &Core, now: u64) -> Result<u64, BlockingError> {
    let active = core.members.active();
    let mut new = 0u64;
    for storage in active.ids.iter().filter_map(|id| active.storages.get(id)) {
        let mut after: Option<Id> = None;
        loop {
            let page = match storage.client.list_page(after.as_ref(), LIST_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(storage = %storage.id, error = %e, "cannot list a storage server's blocks");
                    break;
                }
            };
            let listed: Vec<(Id, u64)> = page.blobs.iter().map(|b| (b.address, b.size)).collect();
            let store = core.store.clone();
            new += core
                .blocking(move || store.gc_note_listed(&listed, now))
                .await?;
            match page.next {
                Some(next) if !page.blobs.is_empty() => after = Some(next),
                _ => break,
            }
        }
    }
    Ok(new)
}

/// Sweeps every [`crate::DistributorConfig::gc_interval`] (±10%) and catches up owed
/// deletions when woken, until shutdown.
pub(crate) async fn run(core: std::sync::Arc<Core>) {
    let next = |interval: Option<Duration>| {
        interval.map(|i| tokio::time::Instant::now() + jittered(i, 0.1))
    };
    let mut next_sweep = next(core.config.gc_interval);
    loop {
        let timer = async {
            match next_sweep {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let full = tokio::select! {
            _ = timer => true,
            _ = core.gc.wake.notified() => false,
            _ = core.shutdown.cancelled() => return,
        };
        let outcome = if full {
            // Wake-ups for catch-ups do not postpone the next sweep.
            next_sweep = next(core.config.gc_interval);
            sweep(&core, false, |_| {}).await.map(|_| ())
        } else {
            catch_up(&core).await.map(|_| ())
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "garbage collection failed; retrying at the next sweep");
        }
    }
}
