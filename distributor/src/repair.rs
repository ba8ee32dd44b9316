//! Placement and repair: the queue of blocks needing work, the workers that copy them,
//! and the full pass that finds them.
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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use invariant_spec::Id;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::DistributorConfig;
use crate::membership::{ActiveSet, Storage};
use crate::placement::nearest;
use crate::state::{BlockingError, Core, InFlight};

/// Pinned blocks read per store call during a full pass.
const PASS_PAGE: usize = 4096;
/// `HEAD`s at once when searching every active server for a copy.
const DISCOVERY_CONCURRENCY: usize = 8;

/// How a block repair ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every target holds the block.
    Done,
    /// The block is no longer pinned.
    Unpinned,
    /// Something failed; try again later.
    Retry,
    /// No server to place it on; wait for a change of the active set.
    Stalled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Queued { attempts: u32 },
    Running { attempts: u32, again: bool },
    Waiting { attempts: u32 },
    Stalled { attempts: u32 },
}

#[derive(Debug, Default)]
struct Work {
    queue: VecDeque<Id>,
    slots: HashMap<Id, Slot>,
    delayed: BinaryHeap<Reverse<(Instant, Id)>>,
}

/// What a worker should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Repair this block.
    Block(Id),
    /// Nothing to do before this instant (or a notification).
    Idle(Option<Instant>),
}

/// Blocks needing work: queued, running, waiting for a retry, or stalled. Their number
/// is the `under_replicated` figure while at least N storage servers are active.
#[derive(Debug, Default)]
pub(crate) struct WorkQueue {
    inner: Mutex<Work>,
    /// Wakes idle workers.
    pub notify: Notify,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Work> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks needing work.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Queues `blocks` (a running block runs once more after it finishes).
    pub fn enqueue(&self, blocks: impl IntoIterator<Item = Id>) {
        let mut added = false;
        {
            let mut work = self.lock();
            for block in blocks {
                let attempts = match work.slots.get_mut(&block) {
                    Some(Slot::Queued { .. }) => continue,
                    Some(Slot::Running { again, .. }) => {
                        *again = true;
                        continue;
                    }
                    Some(Slot::Waiting { attempts }) | Some(Slot::Stalled { attempts }) => {
                        *attempts
                    }
                    None => 0,
                };
                work.slots.insert(block, Slot::Queued { attempts });
                work.queue.push_back(block);
                added = true;
            }
        }
        if added {
            self.notify.notify_waiters();
        }
    }

    /// Marks `blocks` that have no slot as stalled (placeable only after a change).
    pub fn stall(&self, blocks: impl IntoIterator<Item = Id>) {
        let mut work = self.lock();
        for block in blocks {
            work.slots
                .entry(block)
                .or_insert(Slot::Stalled { attempts: 0 });
        }
    }

    /// Clears stalled `blocks` that a pass found fully placed.
    pub fn settle(&self, blocks: impl IntoIterator<Item = Id>) {
        let mut work = self.lock();
        for block in blocks {
            if matches!(work.slots.get(&block), Some(Slot::Stalled { .. })) {
                work.slots.remove(&block);
            }
        }
    }

    /// Drops unpinned `blocks` (a running one is dropped when its worker sees it).
    pub fn forget(&self, blocks: &[Id]) {
        let mut work = self.lock();
        for block in blocks {
            if !matches!(work.slots.get(block), Some(Slot::Running { .. })) {
                work.slots.remove(block);
            }
        }
    }

    /// Whether a worker is repairing `block` now (a copy of it may be in flight).
    pub fn is_running(&self, block: &Id) -> bool {
        matches!(self.lock().slots.get(block), Some(Slot::Running { .. }))
    }

    /// The next block to repair, promoting retries that are due.
    pub fn next(&self, now: Instant) -> Next {
        let mut work = self.lock();
        let work = &mut *work;
        while let Some(Reverse((at, block))) = work.delayed.peek().copied() {
            if at > now {
                break;
            }
            work.delayed.pop();
            if let Some(slot) = work.slots.get_mut(&block)
                && let Slot::Waiting { attempts } = *slot
            {
                *slot = Slot::Queued { attempts };
                work.queue.push_back(block);
            }
        }
        while let Some(block) = work.queue.pop_front() {
            if let Some(slot) = work.slots.get_mut(&block)
                && let Slot::Queued { attempts } = *slot
            {
                *slot = Slot::Running {
                    attempts,
                    again: false,
                };
                return Next::Block(block);
            }
        }
        Next::Idle(work.delayed.peek().map(|Reverse((at, _))| *at))
    }

    /// Records how a repair of `block` ended.
    pub fn finish(&self, block: Id, outcome: Outcome, config: &DistributorConfig, now: Instant) {
        let mut wake = false;
        {
            let mut work = self.lock();
            let Some(Slot::Running { attempts, again }) = work.slots.get(&block).copied() else {
                return;
            };
            if again && outcome != Outcome::Unpinned {
                // Asked for again while running: once more, keeping the count so that
                // passes cannot restart a failing block's retries.
                work.slots.insert(block, Slot::Queued { attempts });
                work.queue.push_back(block);
                wake = true;
            } else {
                match outcome {
                    Outcome::Done | Outcome::Unpinned => {
                        work.slots.remove(&block);
                    }
                    Outcome::Stalled => {
                        work.slots.insert(block, Slot::Stalled { attempts });
                    }
                    Outcome::Retry => {
                        let attempts = attempts.saturating_add(1);
                        if attempts >= config.max_attempts {
                            tracing::warn!(%block, attempts, "repair keeps failing; waiting for the next pass");
                            work.slots.insert(block, Slot::Stalled { attempts });
                        } else {
                            work.slots.insert(block, Slot::Waiting { attempts });
                            let at = now + backoff(config, attempts);
                            work.delayed.push(Reverse((at, block)));
                            wake = true;
                        }
                    }
                }
            }
        }
        if wake {
            self.notify.notify_waiters();
        }
    }
}

/// Delay before retry number `attempts` (≥ 1): base × 2^(attempts−1), capped, ±25%.
fn backoff(config: &DistributorConfig, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(20);
    let delay = config
        .retry_base
        .saturating_mul(1u32 << exponent)
        .min(config.retry_max);
    crate::jittered(delay, 0.25)
}

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
async fn discover<'a>(
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
async fn copy(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id::of_content(&[n])
    }

    fn config() -> DistributorConfig {
        DistributorConfig {
            max_attempts: 3,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(3),
            ..DistributorConfig::default()
        }
    }

    #[test]
    fn queue_runs_each_block_once_and_counts_it_until_done() {
        let q = WorkQueue::default();
        let now = Instant::now();
        q.enqueue([id(1), id(2), id(1)]);
        assert_eq!(q.len(), 2);
        assert_eq!(q.next(now), Next::Block(id(1)));
        assert_eq!(q.next(now), Next::Block(id(2)));
        assert_eq!(q.next(now), Next::Idle(None));
        q.finish(id(1), Outcome::Done, &config(), now);
        assert_eq!(q.len(), 1);
        q.finish(id(2), Outcome::Stalled, &config(), now);
        assert_eq!(q.len(), 1, "stalled blocks still count");
        q.settle([id(2)]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_block_queued_while_running_runs_again() {
        let q = WorkQueue::default();
        let now = Instant::now();
        q.enqueue([id(1)]);
        assert_eq!(q.next(now), Next::Block(id(1)));
        q.enqueue([id(1)]);
        q.finish(id(1), Outcome::Done, &config(), now);
        assert_eq!(q.next(now), Next::Block(id(1)));
    }

    #[test]
    fn failures_back_off_then_stall() {
        let q = WorkQueue::default();
        let config = config();
        let now = Instant::now();
        q.enqueue([id(1)]);
        assert_eq!(q.next(now), Next::Block(id(1)));
        q.finish(id(1), Outcome::Retry, &config, now);
        let Next::Idle(Some(due)) = q.next(now) else {
            panic!("a retry is scheduled");
        };
        assert!(
            due >= now + Duration::from_millis(750) && due <= now + Duration::from_millis(1250)
        );
        assert_eq!(q.next(due), Next::Block(id(1)));
        q.finish(id(1), Outcome::Retry, &config, due);
        let Next::Idle(Some(due2)) = q.next(due) else {
            panic!("a second retry is scheduled");
        };
        assert!(due2 >= due + Duration::from_millis(1500));
        assert_eq!(q.next(due2), Next::Block(id(1)));
        q.finish(id(1), Outcome::Retry, &config, due2);
        // Third failure reaches max_attempts: stalled, no timer.
        assert_eq!(q.next(due2 + Duration::from_secs(10)), Next::Idle(None));
        assert_eq!(q.len(), 1);
        // A pass re-queues it, for one attempt: failing again stalls it at once, with
        // no retry timer, until the next pass.
        q.enqueue([id(1)]);
        assert_eq!(q.next(due2), Next::Block(id(1)));
        q.finish(id(1), Outcome::Retry, &config, due2);
        assert_eq!(q.next(due2 + Duration::from_secs(10)), Next::Idle(None));
        assert_eq!(q.len(), 1);
        // Repaired at a later pass: its count is gone, a new failure backs off afresh.
        q.enqueue([id(1)]);
        assert_eq!(q.next(due2), Next::Block(id(1)));
        q.finish(id(1), Outcome::Done, &config, due2);
        assert_eq!(q.len(), 0);
        q.enqueue([id(1)]);
        assert_eq!(q.next(due2), Next::Block(id(1)));
        q.finish(id(1), Outcome::Retry, &config, due2);
        assert!(matches!(q.next(due2), Next::Idle(Some(_))));
    }

    #[test]
    fn forgetting_drops_queued_blocks() {
        let q = WorkQueue::default();
        let now = Instant::now();
        q.enqueue([id(1), id(2)]);
        q.forget(&[id(1)]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.next(now), Next::Block(id(2)));
        q.forget(&[id(2)]);
        assert_eq!(
            q.len(),
            1,
            "running blocks stay until their worker finishes"
        );
        q.finish(id(2), Outcome::Unpinned, &config(), now);
        assert_eq!(q.len(), 0);
        q.stall([id(3)]);
        q.enqueue([id(3)]);
        assert_eq!(q.next(now), Next::Block(id(3)));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let config = config();
        for _ in 0..100 {
            let first = backoff(&config, 1);
            assert!(first >= Duration::from_millis(750) && first <= Duration::from_millis(1250));
            let capped = backoff(&config, 30);
            assert!(capped <= Duration::from_millis(3750));
        }
    }
}
