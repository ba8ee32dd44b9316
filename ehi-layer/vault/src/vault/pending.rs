//! The vault's queue of audit entries not yet appended: front ends record what they
//! read here ([`Vault::audit_queue`], or [`crate::reads::Reads`] for the patient's own
//! reads) without waiting for a network commit, and [`Vault::flush_audit`] appends the
//! queue in batches ([`Vault::audit_batch`]: one commit per [`MAX_PER_COMMIT`] entries).
//! A failed flush keeps the entries for the next one (at most [`MAX_PENDING`]; beyond
//! that the oldest are dropped with a warning). What is lost if the process is killed:
//! the entries not yet flushed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::Vault;
use crate::audit::PendingAudit;
use crate::error::Result;

/// Most entries kept while flushes fail.
pub const MAX_PENDING: usize = 100_000;
/// Most entries appended in one commit.
pub const MAX_PER_COMMIT: usize = 1000;

/// The audit entries not yet appended, oldest first ([`Vault::audit_queue`]).
#[derive(Debug)]
pub struct Pending {
    /// A deque: dropping the oldest when full is O(1).
    entries: Mutex<VecDeque<PendingAudit>>,
    /// Woken when the queue reaches `batch` entries.
    full: Notify,
    batch: AtomicUsize,
    /// Serializes flushes (so entries keep their order).
    flushing: tokio::sync::Mutex<()>,
}

impl Pending {
    pub(super) fn new() -> Pending {
        Pending {
            entries: Mutex::new(VecDeque::new()),
            full: Notify::new(),
            batch: AtomicUsize::new(usize::MAX),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<PendingAudit>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pending {
    /// Queues an entry; [`Vault::flush_audit`] appends it. Nothing is written until
    /// then, so a read is never held up by a commit.
    pub fn push(&self, entry: PendingAudit) {
        let len = {
            let mut entries = self.lock();
            if entries.len() >= MAX_PENDING {
                tracing::warn!("audit queue full: dropping the oldest entry");
                entries.pop_front();
            }
            entries.push_back(entry);
            entries.len()
        };
        if len >= self.batch.load(Ordering::Relaxed) {
            self.full.notify_one();
        }
    }

    /// Entries queued and not yet appended.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Drops every queued entry (the vault was removed: there is no log to append to).
    /// Returns how many were dropped.
    pub fn discard(&self) -> usize {
        std::mem::take(&mut *self.lock()).len()
    }

    /// Asks [`Pending::batch_full`] to wake once `entries` are queued.
    pub fn set_batch(&self, entries: usize) {
        self.batch.store(entries.max(1), Ordering::Relaxed);
    }

    /// Waits until the queue holds the number of entries given to
    /// [`Pending::set_batch`] (never, if it was not called).
    pub async fn batch_full(&self) {
        self.full.notified().await;
    }
}

impl Vault {
    /// The queue of audit entries not yet appended (see the module docs).
    pub fn audit_queue(&self) -> &Pending {
        &self.pending
    }

    /// Appends every queued entry, in commits of at most [`MAX_PER_COMMIT`]. Returns
    /// how many were appended; on failure the rest stays queued, in order.
    pub async fn flush_audit(&self) -> Result<usize> {
        let _one = self.pending.flushing.lock().await;
        let mut taken = std::mem::take(&mut *self.pending.lock());
        let mut done = 0;
        while !taken.is_empty() {
            let n = taken.len().min(MAX_PER_COMMIT);
            if let Err(e) = self.audit_batch(&taken.make_contiguous()[..n]).await {
                let mut entries = self.pending.lock();
                taken.append(&mut entries);
                *entries = taken;
                return Err(e);
            }
            taken.drain(..n);
            done += n;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditAction, AuditRecord};

    fn entry(ms: u64) -> PendingAudit {
        PendingAudit {
            record: AuditRecord::new(AuditAction::Read, "a test read"),
            requestor: None,
            ms,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_entry() {
        let pending = Pending::new();
        for ms in 0..=MAX_PENDING as u64 {
            pending.push(entry(ms));
        }
        let entries = pending.lock();
        assert_eq!(entries.len(), MAX_PENDING);
        assert_eq!(entries.front().map(|e| e.ms), Some(1));
        assert_eq!(entries.back().map(|e| e.ms), Some(MAX_PENDING as u64));
    }

    #[tokio::test]
    async fn reaching_the_batch_wakes_the_waiter() {
        let pending = std::sync::Arc::new(Pending::new());
        pending.batch.store(3, Ordering::Relaxed);
        let waiter = {
            let pending = pending.clone();
            tokio::spawn(async move { pending.full.notified().await })
        };
        tokio::task::yield_now().await;
        pending.push(entry(1));
        pending.push(entry(2));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        pending.push(entry(3));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken at the batch size")
            .expect("the waiter ran");
    }
}
