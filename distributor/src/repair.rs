//! Placement and repair: the workers that copy blocks taken from the queue of blocks
//! needing work (`work`), and the full pass that finds them.
//!
//! A block is queued when it is newly pinned, when a full pass finds one of its target
//! servers (its N nearest active servers) not known to hold it, or when a pass must
//! re-check a server that came back. A worker repairing a block `HEAD`s every target
//! (skipping those that hold it), finds a source (a target or known holder that is
//! active, else by asking every active server), and copies to each missing target:
//! through the target's `PUT /storage/fetch` when it supports it, else as a streamed
//! `GET` from the source piped into a `PUT` to the target. At most `parallelism`
//! blocks are repaired at once. A failed repair is retried with exponential backoff
//! (jittered) up to `max_attempts`, then left to the next full pass. A block that used
//! up its attempts keeps its count: a pass gives it **one** more attempt (not a fresh
//! series), so a block no storage server holds (a made-up id, a lost blob) costs one
//! attempt per pass — every `repair_interval` or change of the active set — and never
//! a loop. Its count starts again only when it is repaired or unpinned.
//!
//! Full passes run after every change of the active set and every `repair_interval`.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use invariant_spec::Id;
use tokio::time::Instant;

use crate::membership::{ActiveSet, Storage};
use crate::placement::nearest;
use crate::state::{BlockingError, Core, InFlight};
use crate::work::{Next, Outcome};

/// Pinned blocks read per store call during a full pass.
const PASS_PAGE: usize = 4096;
/// `HEAD`s at once when searching every active server for a copy.
const DISCOVERY_CONCURRENCY: usize = 8;

/// A repair worker: takes blocks from the queue until shutdown.
pub(crate) async fn worker(core: Arc<Core>) {
    loop {
        let notified = core.work.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match core.work.next(Instant::now()) {
            Next::Block(block) => {
                let outcome = tokio::select! {
                    outcome = repair_block(&core, block) => outcome,
                    _ = core.shutdown.cancelled() => return,
                };
                core.work
                    .finish(block, outcome, &core.config, Instant::now());
            }
            Next::Idle(wake) => {
                let until = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(until) => {}
                    _ = core.shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Brings `block` onto all of its target servers (see the module docs).
pub(crate) async fn repair_block(core: &Core, block: Id) -> Outcome {
    let store = core.store.clone();
    let known = match core.blocking(move || store.pinned_block(&block)).await {
        Ok(Some(holders)) => holders,
        Ok(None) => return Outcome::Unpinned,
        Err(e) => {
            tracing::warn!(%block, error = %e, "cannot read placement knowledge");
            return Outcome::Retry;
        }
    };
    let active = core.members.active();
    let target_ids = nearest(&block, &active.ids, core.config.replicas);
    if target_ids.is_empty() {
        return Outcome::Stalled;
    }
    let targets: Vec<&Storage> = target_ids
        .iter()
        .filter_map(|id| active.storages.get(id))
        .collect();

    let checks = futures_util::future::join_all(targets.iter().map(|target| async move {
        let held = tokio::time::timeout(core.config.probe_timeout, target.client.has(&block)).await;
        (*target, held)
    }))
    .await;
    let mut present: Vec<&Storage> = Vec::new();
    let mut missing: Vec<&Storage> = Vec::new();
    let mut unreachable = 0usize;
    let mut size = None;
    for (target, held) in checks {
        match held {
            Ok(Ok(Some(held_size))) => {
                size = Some(held_size);
                if known.binary_search(&target.id).is_err() {
                    core.learned_holder(block, target.id, size).await;
                }
                present.push(target);
            }
            Ok(Ok(None)) => {
                if known.binary_search(&target.id).is_ok() {
                    core.lost_holder(block, target.id).await;
                }
                missing.push(target);
            }
            Ok(Err(e)) => {
                tracing::debug!(%block, storage = %target.id, error = %e, "HEAD failed");
                unreachable += 1;
            }
            Err(_) => {
                tracing::debug!(%block, storage = %target.id, "HEAD timed out");
                unreachable += 1;
            }
        }
    }
    if missing.is_empty() {
        return if unreachable == 0 {
            Outcome::Done
        } else {
            Outcome::Retry
        };
    }

    // Sources: targets holding it, then other active known holders, nearest first.
    let mut sources: Vec<&Storage> = present;
    let mut others: Vec<&Storage> = known
        .iter()
        .filter(|id| !target_ids.contains(id))
        .filter_map(|id| active.storages.get(id))
        .collect();
    others.sort_by_key(|s| block.distance(&s.id));
    sources.extend(others);
    if sources.is_empty() {
        let (discovered, discovered_size) = discover(core, &active, &block, &target_ids).await;
        sources = discovered;
        size = size.or(discovered_size);
    }
    if sources.is_empty() {
        tracing::debug!(%block, "no active storage server holds the block yet");
        return Outcome::Retry;
    }

    let mut failed = unreachable > 0;
    for target in missing {
        match copy(core, &block, target, &sources).await {
            Ok(()) => {
                core.learned_holder(block, target.id, size).await;
                sources.push(target);
            }
            Err(reason) => {
                tracing::debug!(%block, storage = %target.id, %reason, "copy failed");
                failed = true;
            }
        }
    }
    if failed {
        Outcome::Retry
    } else {
        Outcome::Done
    }
}

/// Asks every active non-target server whether it holds `block`; records and returns
/// those that do, with the block's size when any does.
pub(crate) async fn discover<'a>(
    core: &Core,
    active: &'a ActiveSet,
    block: &Id,
    targets: &[Id],
) -> (Vec<&'a Storage>, Option<u64>) {
    let candidates: Vec<&Storage> = active
        .ids
        .iter()
        .filter(|id| !targets.contains(id))
        .filter_map(|id| active.storages.get(id))
        .collect();
    let mut found: Vec<(&Storage, u64)> = Vec::new();
    for group in candidates.chunks(DISCOVERY_CONCURRENCY) {
        let answers = futures_util::future::join_all(group.iter().map(|storage| async move {
            let held =
                tokio::time::timeout(core.config.probe_timeout, storage.client.has(block)).await;
            match held {
                Ok(Ok(Some(size))) => Some((*storage, size)),
                _ => None,
            }
        }))
        .await;
        found.extend(answers.into_iter().flatten());
    }
    for (storage, size) in &found {
        core.learned_holder(*block, storage.id, Some(*size)).await;
    }
    let size = found.first().map(|(_, size)| *size);
    let mut found: Vec<&Storage> = found.into_iter().map(|(s, _)| s).collect();
    found.sort_by_key(|s| block.distance(&s.id));
    (found, size)
}

/// Copies `block` onto `target` from the first source that works.
pub(crate) async fn copy(
    core: &Core,
    block: &Id,
    target: &Storage,
    sources: &[&Storage],
) -> Result<(), String> {
    let _in_flight = InFlight::start(&core.stats);
    let mut last = String::from("no source");
    for source in sources {
        if target.fetch {
            let asked = tokio::time::timeout(
                core.config.copy_timeout,
                target.client.fetch(block, &source.id),
            )
            .await;
            match asked {
                Ok(Ok(true)) => {
                    copied(core, true);
                    return Ok(());
                }
                Ok(Ok(false)) => {
                    tracing::debug!(%block, target = %target.id, source = %source.id, "target could not fetch; copying through here");
                }
                Ok(Err(e)) => {
                    tracing::debug!(%block, target = %target.id, error = %e, "fetch failed; copying through here");
                }
                Err(_) => {
                    tracing::debug!(%block, target = %target.id, "fetch timed out; copying through here");
                }
            }
        }
        // The transfer client's timeout bounds both requests.
        match source.client.get(block).await {
            Ok(Some(stream)) => match target.client.put_stream(block, stream).await {
                Ok(()) => {
                    copied(core, true);
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            },
            Ok(None) => {
                core.lost_holder(*block, source.id).await;
                last = format!("{} does not hold it", source.id);
            }
            Err(e) => last = e.to_string(),
        }
    }
    copied(core, false);
    Err(last)
}

fn copied(core: &Core, ok: bool) {
    let counter = if ok {
        &core.stats.copies_completed
    } else {
        &core.stats.copies_failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
    crate::metrics::copy_finished(ok);
}

/// Which pinned blocks of one page need work.
#[derive(Debug, Default)]
struct PageVerdict {
    uncovered: Vec<Id>,
    covered: Vec<Id>,
    unplaceable: Vec<Id>,
    last: Option<Id>,
    len: usize,
}

/// Walks every pinned block, queueing those whose targets are not all known holders
/// (or include a server in `verify`).
pub(crate) async fn full_pass(core: &Core, verify: HashSet<Id>) -> Result<(), BlockingError> {
    let active = core.members.active();
    let storages = Arc::new(active.ids.clone());
    let verify = Arc::new(verify);
    let replicas = core.config.replicas;
    let mut after = None;
    loop {
        let store = core.store.clone();
        let storages = Arc::clone(&storages);
        let verify = Arc::clone(&verify);
        let verdict = core
            .blocking(move || {
                let page = store.scan(after, PASS_PAGE)?;
                let mut verdict = PageVerdict {
                    len: page.len(),
                    last: page.last().map(|p| p.block),
                    ..PageVerdict::default()
                };
                for pinned in page {
                    let targets = nearest(&pinned.block, &storages, replicas);
                    if targets.is_empty() {
                        verdict.unplaceable.push(pinned.block);
                    } else if targets
                        .iter()
                        .all(|t| pinned.holders.binary_search(t).is_ok() && !verify.contains(t))
                    {
                        verdict.covered.push(pinned.block);
                    } else {
                        verdict.uncovered.push(pinned.block);
                    }
                }
                Ok(verdict)
            })
            .await?;
        core.work.enqueue(verdict.uncovered);
        core.work.settle(verdict.covered);
        core.work.stall(verdict.unplaceable);
        if verdict.len < PASS_PAGE || core.shutdown.is_cancelled() {
            break;
        }
        after = verdict.last;
    }
    core.stats.passes.fetch_add(1, Ordering::Relaxed);
    core.publish();
    Ok(())
}

/// Runs a full pass when asked (after changes) and every `repair_interval`.
pub(crate) async fn pass_loop(core: Arc<Core>) {
    loop {
        tokio::select! {
            _ = core.pass_wake.notified() => {}
            _ = tokio::time::sleep(crate::jittered(core.config.repair_interval, 0.2)) => {}
            _ = core.shutdown.cancelled() => return,
        }
        let verify = std::mem::take(
            &mut *core
                .pass_verify
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let started = std::time::Instant::now();
        match full_pass(&core, verify).await {
            Ok(()) => tracing::debug!(elapsed = ?started.elapsed(), "placement pass done"),
            Err(e) => tracing::warn!(error = %e, "placement pass failed"),
        }
    }
}
