//! Every request the facade answers is written to the vault's audit log
//! ([`ehi_vault::audit`]): who (the patient, or the app of the token's grant — named, with
//! the grant id — or "unauthenticated client"), what (the interaction, type and id or
//! the search query, as `METHOD path?query`), when (the request's arrival time) and the
//! outcome (success below 400, failure otherwise, with the HTTP status).
//!
//! Entries are **buffered in memory and appended in batches** ([`Vault::audit_batch`]:
//! one commit for the whole batch), so a request never waits for a network commit: the
//! buffer is flushed every [`super::ServeOptions::audit_flush_every`] (1 s by default),
//! as soon as it holds [`super::ServeOptions::audit_batch`] entries (100), on
//! [`super::Server::flush_audit`], and when the server stops. A failed flush keeps the
//! entries for the next one (at most [`MAX_PENDING`]; beyond that the oldest are
//! dropped with a warning). What is lost if the process is killed: the entries of the
//! last interval not yet flushed.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use ehi_vault::audit::{AuditAction, AuditRecord, PendingAudit, Requestor};
use ehi_vault::error::EhiError;
use ehi_vault::vault::Vault;

/// Most entries kept while flushes fail.
pub const MAX_PENDING: usize = 100_000;
/// Most entries appended in one commit.
pub const MAX_PER_COMMIT: usize = 1000;

/// The buffer of entries not yet appended.
#[derive(Debug)]
pub(crate) struct AuditBuffer {
    /// Oldest first (a deque: dropping the oldest when full is O(1)).
    pending: Mutex<VecDeque<PendingAudit>>,
    /// Woken when the buffer reaches `batch` entries.
    pub(crate) full: Notify,
    batch: usize,
    /// Serializes flushes (so entries keep their order).
    flushing: tokio::sync::Mutex<()>,
}

impl AuditBuffer {
    pub(crate) fn new(batch: usize) -> AuditBuffer {
        AuditBuffer {
            pending: Mutex::new(VecDeque::new()),
            full: Notify::new(),
            batch: batch.max(1),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<PendingAudit>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one entry.
    pub(crate) fn push(&self, entry: PendingAudit) {
        let len = {
            let mut pending = self.lock();
            if pending.len() >= MAX_PENDING {
                tracing::warn!("audit buffer full: dropping the oldest entry");
                pending.pop_front();
            }
            pending.push_back(entry);
            pending.len()
        };
        if len >= self.batch {
            self.full.notify_one();
        }
    }

    /// Drops every entry waiting (the vault was removed: there is no log to append to).
    pub(crate) fn discard(&self) -> usize {
        std::mem::take(&mut *self.lock()).len()
    }

    /// Entries waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Appends everything queued (in commits of at most [`MAX_PER_COMMIT`]). Returns
    /// how many entries were appended; on failure the rest stays queued.
    pub(crate) async fn flush(&self, vault: &Vault) -> Result<usize, EhiError> {
        let _one = self.flushing.lock().await;
        let mut taken = std::mem::take(&mut *self.lock());
        let mut done = 0;
        while !taken.is_empty() {
            let n = taken.len().min(MAX_PER_COMMIT);
            if let Err(e) = vault.audit_batch(&taken.make_contiguous()[..n]).await {
                let mut pending = self.lock();
                taken.append(&mut pending);
                *pending = taken;
                return Err(e);
            }
            taken.drain(..n);
            done += n;
        }
        Ok(done)
    }
}

/// The entry for one request.
pub(crate) fn entry(
    method: &str,
    target: &str,
    requestor: Option<Requestor>,
    status: u16,
    ms: u64,
    interaction: Interaction,
) -> PendingAudit {
    let action = match interaction {
        Interaction::Search => AuditAction::Search,
        Interaction::Write => AuditAction::Import,
        Interaction::Export => AuditAction::Export,
        Interaction::Read => AuditAction::Read,
    };
    let mut record = AuditRecord::new(action, format!("ehi serve: {method} {target} → {status}"))
        .with_entities(vec![target.to_string()]);
    record.success = status < 400;
    PendingAudit {
        record,
        requestor,
        ms,
    }
}

/// The kind of a request, for the AuditEvent's subtype and action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interaction {
    /// read, vread, history, metadata, status polls, files
    Read,
    /// search, `$everything`
    Search,
    /// create, update, delete
    Write,
    /// `$export` kick-off
    Export,
}

impl Interaction {
    /// Classifies a request by method and path segments.
    pub(crate) fn of(method: &str, segs: &[&str]) -> Interaction {
        match (method, segs) {
            (_, ["$export"] | [_, "$export"] | [_, _, "$export"]) => Interaction::Export,
            ("GET", ["metadata" | "authorize"]) | (_, ["token"] | [".well-known", ..]) => {
                Interaction::Read
            }
            ("GET", [_]) | ("POST", [_, "_search"]) | ("GET", [_, _, "$everything"]) => {
                Interaction::Search
            }
            ("POST" | "PUT" | "DELETE", _) => Interaction::Write,
            _ => Interaction::Read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_the_oldest_entry() {
        let buffer = AuditBuffer::new(usize::MAX);
        for ms in 0..=MAX_PENDING as u64 {
            buffer.push(entry("GET", "/metadata", None, 200, ms, Interaction::Read));
        }
        assert_eq!(buffer.len(), MAX_PENDING);
        let pending = buffer.lock();
        assert_eq!(pending.front().map(|e| e.ms), Some(1));
        assert_eq!(pending.back().map(|e| e.ms), Some(MAX_PENDING as u64));
    }
}
