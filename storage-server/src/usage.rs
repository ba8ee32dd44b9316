//! Bytes stored per subject, and storage quotas.
//!
//! With token checks on, every write has a payer: the subject of the caller's token,
//! with the token's quota if it carries one. A payer is charged the size of each blob
//! that its write stores for the first time; writing content this server already holds
//! costs nothing. A write that would take a payer past its quota stores nothing and is
//! refused ([`QuotaExceeded`], answered 413). Writes without a payer (open mode) are
//! neither charged nor limited.
//!
//! **Usage never exceeds a quota, even with concurrent uploads:** once a blob's hash is
//! known and it is not yet held, its size is reserved against the payer's account
//! ([`Usage::reserve`]: used + reserved + size must stay within the quota); the
//! reservation becomes usage when the blob is stored and is released if it is not.
//!
//! The totals live in the `usage` table (subject → bytes) of the pack index database
//! (`<data-dir>/packs/index.redb`, kept whether or not packing is on), so a packed
//! blob's charge is written in the same transaction that indexes it; a blob stored as
//! a file is charged in a transaction of its own, durable before the write is
//! acknowledged. Packed charges become durable with the index, about once a second: a
//! crash can forget the charges of the last second's packed blobs (the blobs
//! themselves are kept). Each total is exported as the gauge
//! `invariant_storage_subject_bytes{server, subject}`.
//!
//! Each charged blob's payer is recorded beside the totals (the `payers` table,
//! address → subject, written in the transaction that charges it), so deleting a blob
//! gives back exactly what was charged for it, to whom it was charged, also after a
//! restart ([`forget_payer`], [`uncharge`], [`Usage::released`]). Blobs stored before
//! payers were recorded, and blobs stored in open mode, have none: deleting them
//! releases nothing.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use invariant_spec::Id;
use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition,
    WriteTransaction,
};

/// Subject → bytes of blobs it stored first.
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage");
/// Address → the subject charged for storing that blob.
const PAYERS: TableDefinition<[u8; 32], &str> = TableDefinition::new("payers");

/// The gauge each subject's total is exported as.
pub const METRIC: &str = "invariant_storage_subject_bytes";

/// Who pays for a write: a token's subject and its quota (`None`: unlimited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payer {
    /// The token's subject.
    pub subject: String,
    /// Most bytes the subject may add to this server.
    pub quota: Option<u64>,
}

/// A write refused because it would take its payer past its quota.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "subject {subject:?} has a storage quota of {quota} bytes on this server and uses \
     {used} bytes ({reserved} more reserved by uploads in progress); storing {adding} \
     more bytes would exceed it"
)]
pub struct QuotaExceeded {
    /// The payer.
    pub subject: String,
    /// Its quota in bytes.
    pub quota: u64,
    /// Bytes it has stored.
    pub used: u64,
    /// Bytes reserved by its uploads in progress.
    pub reserved: u64,
    /// The size of the refused blob.
    pub adding: u64,
}

#[derive(Debug, Default)]
struct Account {
    used: u64,
    reserved: u64,
}

/// Every subject's usage: persisted totals plus in-memory reservations.
#[derive(Debug)]
pub struct Usage {
    db: Arc<Database>,
    accounts: Mutex<HashMap<String, Account>>,
    /// The `server` label of the gauges, once the server publishes them.
    server: OnceLock<String>,
}

fn io_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("usage table: {e}"))
}

impl Usage {
    /// Loads the totals kept in `db` (none in a database that predates them).
    pub fn open(db: Arc<Database>) -> io::Result<Usage> {
        let mut accounts = HashMap::new();
        let txn = db.begin_read().map_err(io_error)?;
        match txn.open_table(USAGE) {
            Ok(table) => {
                for entry in table.iter().map_err(io_error)? {
                    let (subject, used) = entry.map_err(io_error)?;
                    accounts.insert(
                        subject.value().to_string(),
                        Account {
                            used: used.value(),
                            reserved: 0,
                        },
                    );
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(io_error(e)),
        }
        Ok(Usage {
            db,
            accounts: Mutex::new(accounts),
            server: OnceLock::new(),
        })
    }

    fn accounts(&self) -> MutexGuard<'_, HashMap<String, Account>> {
        self.accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes `subject` has stored here.
    pub fn used(&self, subject: &str) -> u64 {
        self.accounts().get(subject).map_or(0, |a| a.used)
    }

    /// Every subject with its bytes stored, sorted by subject.
    pub fn all(&self) -> Vec<(String, u64)> {
        let mut all: Vec<_> = self
            .accounts()
            .iter()
            .map(|(subject, account)| (subject.clone(), account.used))
            .collect();
        all.sort();
        all
    }

    /// Exports every total as a gauge labelled `server` (and keeps it current). The
    /// metrics recorder must be installed first.
    pub fn publish(&self, server: &str) {
        let server = self.server.get_or_init(|| server.to_string());
        for (subject, used) in self.all() {
            set_gauge(server, &subject, used);
        }
    }

    /// Refuses early, without reserving, an upload of `bytes` that `payer` has no
    /// room for at all.
    pub fn check(&self, payer: &Payer, bytes: u64) -> Result<(), QuotaExceeded> {
        let Some(quota) = payer.quota else {
            return Ok(());
        };
        let accounts = self.accounts();
        let (used, reserved) = accounts
            .get(&payer.subject)
            .map_or((0, 0), |a| (a.used, a.reserved));
        fits(payer, quota, used, reserved, bytes)
    }

    /// Reserves `bytes` for `payer`, or refuses when used + reserved + `bytes` would
    /// exceed its quota. Dropping the reservation releases it.
    pub fn reserve(
        self: &Arc<Self>,
        payer: &Payer,
        bytes: u64,
    ) -> Result<Reservation, QuotaExceeded> {
        let mut accounts = self.accounts();
        let account = accounts.entry(payer.subject.clone()).or_default();
        if let Some(quota) = payer.quota {
            fits(payer, quota, account.used, account.reserved, bytes)?;
        }
        account.reserved = account.reserved.saturating_add(bytes);
        Ok(Reservation {
            usage: Arc::clone(self),
            subject: payer.subject.clone(),
            bytes,
            settled: false,
        })
    }

    /// Adds `bytes` (the size of blob `id`) to the persisted total of `subject` and
    /// records it as the blob's payer, in its own durable transaction (for blobs not
    /// indexed in a pack transaction).
    pub(crate) fn persist(&self, id: &Id, subject: &str, bytes: u64) -> io::Result<()> {
        let mut txn = self.db.begin_write().map_err(io_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(io_error)?;
        charge(&txn, subject, bytes).map_err(io_error)?;
        record_payer(&txn, id, subject).map_err(io_error)?;
        txn.commit().map_err(io_error)
    }

    /// Takes `bytes` off `subject`'s total in memory (and its gauge), once a
    /// transaction that [`uncharge`]d them has committed.
    pub(crate) fn released(&self, subject: &str, bytes: u64) {
        let used = {
            let mut accounts = self.accounts();
            let Some(account) = accounts.get_mut(subject) else {
                return;
            };
            account.used = account.used.saturating_sub(bytes);
            account.used
        };
        if let Some(server) = self.server.get() {
            set_gauge(server, subject, used);
        }
    }

    fn settle(&self, subject: &str, bytes: u64) {
        let used = {
            let mut accounts = self.accounts();
            let account = accounts.entry(subject.to_string()).or_default();
            account.reserved = account.reserved.saturating_sub(bytes);
            account.used = account.used.saturating_add(bytes);
            account.used
        };
        if let Some(server) = self.server.get() {
            set_gauge(server, subject, used);
        }
    }

    fn release(&self, subject: &str, bytes: u64) {
        if let Some(account) = self.accounts().get_mut(subject) {
            account.reserved = account.reserved.saturating_sub(bytes);
        }
    }
}

fn fits(
    payer: &Payer,
    quota: u64,
    used: u64,
    reserved: u64,
    bytes: u64,
) -> Result<(), QuotaExceeded> {
    if used.saturating_add(reserved).saturating_add(bytes) > quota {
        return Err(QuotaExceeded {
            subject: payer.subject.clone(),
            quota,
            used,
            reserved,
            adding: bytes,
        });
    }
    Ok(())
}

fn set_gauge(server: &str, subject: &str, used: u64) {
    metrics::gauge!(
        METRIC,
        "server" => server.to_string(),
        "subject" => subject.to_string()
    )
    .set(used as f64);
}

/// Adds `bytes` to the persisted total of `subject` within `txn` (the pack index
/// transaction that indexes the blob).
pub(crate) fn charge(txn: &WriteTransaction, subject: &str, bytes: u64) -> Result<(), redb::Error> {
    let mut table = txn.open_table(USAGE)?;
    let before = table.get(subject)?.map_or(0, |v| v.value());
    table.insert(subject, before.saturating_add(bytes))?;
    Ok(())
}

/// Takes `bytes` off the persisted total of `subject` within `txn` (the transaction
/// that deletes the blob they were charged for).
pub(crate) fn uncharge(
    txn: &WriteTransaction,
    subject: &str,
    bytes: u64,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(USAGE)?;
    let before = table.get(subject)?.map_or(0, |v| v.value());
    table.insert(subject, before.saturating_sub(bytes))?;
    Ok(())
}

/// Records `subject` as the payer of blob `id` within `txn` (the one charging it).
pub(crate) fn record_payer(
    txn: &WriteTransaction,
    id: &Id,
    subject: &str,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(PAYERS)?;
    table.insert(id.as_bytes(), subject)?;
    Ok(())
}

/// Removes and returns the recorded payer of blob `id` within `txn` (the one deleting
/// it); `None` when nobody was charged for it.
pub(crate) fn forget_payer(txn: &WriteTransaction, id: &Id) -> Result<Option<String>, redb::Error> {
    let mut table = txn.open_table(PAYERS)?;
    let removed = table.remove(id.as_bytes())?.map(|v| v.value().to_string());
    Ok(removed)
}

/// Bytes reserved for a payer's blob until it is stored ([`Reservation::settle`]) or
/// dropped (released).
#[derive(Debug)]
pub struct Reservation {
    usage: Arc<Usage>,
    subject: String,
    bytes: u64,
    settled: bool,
}

impl Reservation {
    /// The payer's subject.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The reserved bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Turns the reservation into usage (its charge has been persisted).
    pub fn settle(mut self) {
        self.settled = true;
        self.usage.settle(&self.subject, self.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.usage.release(&self.subject, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(dir: &std::path::Path) -> Arc<Usage> {
        let db = Database::create(dir.join("usage.redb")).expect("db");
        Arc::new(Usage::open(Arc::new(db)).expect("usage"))
    }

    fn payer(subject: &str, quota: Option<u64>) -> Payer {
        Payer {
            subject: subject.to_string(),
            quota,
        }
    }

    #[test]
    fn reservations_never_let_usage_pass_the_quota() {
        let dir = tempfile::tempdir().expect("tempdir");
        let usage = usage(dir.path());
        let alice = payer("alice", Some(100));
        let first = usage.reserve(&alice, 60).expect("fits");
        // A concurrent upload cannot take the reserved room.
        let refused = usage.reserve(&alice, 50).expect_err("over");
        assert_eq!(
            (refused.used, refused.reserved, refused.adding),
            (0, 60, 50)
        );
        assert!(usage.check(&alice, 41).is_err());
        // Released on drop.
        drop(first);
        let second = usage.reserve(&alice, 100).expect("fits after release");
        usage
            .persist(&Id::of_content(b"a"), "alice", 100)
            .expect("persist");
        second.settle();
        assert_eq!(usage.used("alice"), 100);
        assert!(usage.reserve(&alice, 1).is_err());
        assert!(usage.reserve(&alice, 0).is_ok());
        // Unlimited and other payers are unaffected.
        let unlimited = payer("alice", None);
        usage
            .reserve(&unlimited, 1 << 40)
            .expect("no quota")
            .settle();
        assert!(usage.reserve(&payer("bob", Some(10)), 10).is_ok());
    }

    #[test]
    fn persisted_totals_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let usage = usage(dir.path());
            usage
                .persist(&Id::of_content(b"1"), "alice", 7)
                .expect("persist");
            usage
                .persist(&Id::of_content(b"2"), "alice", 5)
                .expect("persist");
            usage
                .persist(&Id::of_content(b"3"), "bob", 1)
                .expect("persist");
        }
        let usage = usage(dir.path());
        assert_eq!(
            usage.all(),
            vec![("alice".to_string(), 12), ("bob".to_string(), 1)]
        );
    }
}
