//! The queue of blocks needing placement work, and the retry bookkeeping of each.
//!
//! A block enters the queue when it is newly pinned, when a full pass finds it short of
//! its target servers, or when a pass must re-check a server that came back; a worker
//! takes it, and its repair ends done, unpinned, stalled (no server to place it on) or
//! due for a retry. A block asked for again while a worker has it runs once more. A
//! failed repair is retried with exponential backoff (jittered) up to `max_attempts`,
//! then waits, stalled, for the next full pass. A block that used up its attempts keeps
//! its count: a pass gives it **one** more attempt (not a fresh series). Its count
//! starts again only when it is repaired or unpinned.
//!
//! Every block in the queue, in whatever state, counts towards `under_replicated`
//! while at least N storage servers are active. The workers and the passes that feed
//! the queue are in `repair`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use invariant_spec::Id;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::DistributorConfig;

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
