//! Registrations in redb, at `<data-dir>/broker.redb`.
//!
//! Tables:
//! - `servers`: server id (32 bytes) → versioned [`Record`] bytes (kind, urls, owner).
//! - `servers_by_kind`: kind → server ids (multimap), kept in step with `servers` in the
//!   same transaction, so `registered/:kind` never scans every server.
//!
//! Every write commits with redb's default durability (`Durability::Immediate`): the
//! change is on disk when the method returns. All methods block; async callers run them
//! on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use invariant_runtime::store::{self, DatabaseOpener};
use invariant_spec::Id;
use redb::{Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition};

use crate::record::{DecodeError, Record};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "broker.redb";

const SERVERS: TableDefinition<&[u8; Id::LEN], &[u8]> = TableDefinition::new("servers");
const BY_KIND: MultimapTableDefinition<&str, &[u8; Id::LEN]> =
    MultimapTableDefinition::new("servers_by_kind");

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed: it cannot be opened (or another handle still holds it),
    /// or a transaction, table, read, write or commit failed.
    #[error(transparent)]
    Database(#[from] store::StoreError),
    /// The blocking task running a store operation panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A stored record cannot be read.
    #[error("stored record of {id} is unreadable: {source}")]
    Corrupt {
        /// The server whose record is unreadable.
        id: Id,
        /// Why.
        source: DecodeError,
    },
}

invariant_runtime::redb_error_conversions!(StoreError);

/// A registration refused because another subject owns the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnedByOther {
    /// Whether the current record could be read (an unreadable one has an unknown
    /// owner and is treated as someone else's).
    pub readable: bool,
}

/// The broker's registrations. Cloning shares the open database.
#[derive(Clone, Debug)]
pub struct RegistrationStore {
    db: Arc<Database>,
}

impl RegistrationStore {
    /// Opens (creating if needed) `<data_dir>/broker.redb`. When another handle holds
    /// the file (typically a broker still stopping in this process), waits up to
    /// [`store::OPEN_WAIT`] for it to be released, then fails with
    /// [`store::StoreError::AlreadyOpen`].
    pub fn open(data_dir: &Path) -> Result<RegistrationStore, StoreError> {
        let db = DatabaseOpener::new(data_dir.join(DB_FILE)).open(|txn| {
            txn.open_table(SERVERS)?;
            txn.open_multimap_table(BY_KIND)?;
            Ok::<_, StoreError>(())
        })?;
        Ok(RegistrationStore { db: Arc::new(db) })
    }

    /// Runs `f` with this store on tokio's blocking pool (from async code).
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&RegistrationStore) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store)).await?
    }

    /// Registers `id`, replacing any earlier registration of it. Durable on return.
    pub fn put(&self, id: &Id, record: &Record) -> Result<(), StoreError> {
        // An override is never refused.
        self.put_checked(id, record, true).map(|_always_ok| ())
    }

    /// Registers `id` unless an owner other than `record.owner` holds it, in one
    /// transaction. A record without an owner (open mode) replaces anything, and
    /// anything may replace a record without an owner. `may_override` (an operator)
    /// replaces any record. A refused write changes nothing. Durable on return.
    pub fn put_checked(
        &self,
        id: &Id,
        record: &Record,
        may_override: bool,
    ) -> Result<Result<(), OwnedByOther>, StoreError> {
        let key = id.as_bytes();
        let txn = self.db.begin_write()?;
        {
            let mut servers = txn.open_table(SERVERS)?;
            if record.owner.is_some() && !may_override {
                let current = servers.get(key)?.map(|g| Record::decode(g.value()));
                let refusal = match current {
                    Some(Ok(current)) => match current.owner {
                        Some(owner) if Some(&owner) != record.owner.as_ref() => {
                            Some(OwnedByOther { readable: true })
                        }
                        _ => None,
                    },
                    // An unreadable record's owner is unknown: only an operator replaces it.
                    Some(Err(_)) => Some(OwnedByOther { readable: false }),
                    None => None,
                };
                if let Some(refusal) = refusal {
                    drop(servers);
                    txn.abort()?;
                    return Ok(Err(refusal));
                }
            }
            let mut by_kind = txn.open_multimap_table(BY_KIND)?;
            let previous = servers
                .insert(key, record.encode().as_slice())?
                .map(|old| Record::decode(old.value()));
            if let Some(Ok(previous)) = &previous
                && previous.kind != record.kind
            {
                by_kind.remove(previous.kind.as_str(), key)?;
            }
            // An unreadable old record may be indexed under any kind: clear them all.
            if let Some(Err(_)) = &previous {
                for kind in invariant_spec::broker::KINDS {
                    by_kind.remove(*kind, key)?;
                }
            }
            by_kind.insert(record.kind.as_str(), key)?;
        }
        txn.commit()?;
        Ok(Ok(()))
    }

    /// The registration of `id`, if any.
    pub fn get(&self, id: &Id) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_read()?;
        let servers = txn.open_table(SERVERS)?;
        let found = servers.get(id.as_bytes())?;
        found.map(|guard| decode(id, guard.value())).transpose()
    }

    /// Ids registered with `kind`, in ascending order.
    pub fn ids_of_kind(&self, kind: &str) -> Result<Vec<Id>, StoreError> {
        let txn = self.db.begin_read()?;
        let by_kind = txn.open_multimap_table(BY_KIND)?;
        let mut ids = Vec::new();
        for entry in by_kind.get(kind)? {
            let entry = entry?;
            ids.push(Id::from_bytes(*entry.value()));
        }
        Ok(ids)
    }

    /// Every registration, in ascending id order.
    pub fn all(&self) -> Result<Vec<(Id, Record)>, StoreError> {
        let txn = self.db.begin_read()?;
        let servers = txn.open_table(SERVERS)?;
        let mut out = Vec::new();
        for entry in servers.iter()? {
            let (key, value) = entry?;
            let id = Id::from_bytes(*key.value());
            out.push((id, decode(&id, value.value())?));
        }
        Ok(out)
    }

    /// Removes `id` only if its registration is still `expected` (a server that
    /// re-registered meanwhile is kept). Returns whether it was removed. Durable on return.
    pub fn remove_if_unchanged(&self, id: &Id, expected: &Record) -> Result<bool, StoreError> {
        let key = id.as_bytes();
        let txn = self.db.begin_write()?;
        let removed = {
            let mut servers = txn.open_table(SERVERS)?;
            let current = servers.get(key)?.map(|guard| Record::decode(guard.value()));
            if current.as_ref().is_some_and(|c| c.as_ref() == Ok(expected)) {
                servers.remove(key)?;
                let mut by_kind = txn.open_multimap_table(BY_KIND)?;
                by_kind.remove(expected.kind.as_str(), key)?;
                true
            } else {
                false
            }
        };
        if removed {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(removed)
    }
}

fn decode(id: &Id, bytes: &[u8]) -> Result<Record, StoreError> {
    Record::decode(bytes).map_err(|source| StoreError::Corrupt { id: *id, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(kind: &str, urls: &[&str]) -> Record {
        Record {
            kind: kind.to_string(),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            owner: None,
        }
    }

    fn owned(owner: &str, urls: &[&str]) -> Record {
        Record {
            owner: Some(owner.to_string()),
            ..record("storage", urls)
        }
    }

    #[test]
    fn owned_registrations_are_replaced_only_by_their_owner_or_an_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RegistrationStore::open(dir.path()).expect("open");
        let a = Id::of_content(b"a");

        // No owner yet: the first subject claims it.
        store
            .put(&a, &record("storage", &["http://open"]))
            .expect("open put");
        let mine = owned("alice", &["http://a1"]);
        assert_eq!(store.put_checked(&a, &mine, false).expect("claim"), Ok(()));

        // Another subject is refused and nothing changes.
        let theirs = owned("mallory", &["http://evil"]);
        assert_eq!(
            store.put_checked(&a, &theirs, false).expect("hijack"),
            Err(OwnedByOther { readable: true })
        );
        assert_eq!(store.get(&a).expect("get"), Some(mine.clone()));
        assert_eq!(store.ids_of_kind("storage").expect("ids"), vec![a]);

        // The owner updates; an override (operator) replaces and takes it.
        let moved = Record {
            kind: "slots".to_string(),
            ..owned("alice", &["http://a2"])
        };
        assert_eq!(
            store.put_checked(&a, &moved, false).expect("update"),
            Ok(())
        );
        assert_eq!(store.ids_of_kind("slots").expect("ids"), vec![a]);
        let operator = owned("operator", &["http://a3"]);
        assert_eq!(
            store.put_checked(&a, &operator, true).expect("override"),
            Ok(())
        );
        assert_eq!(store.get(&a).expect("get"), Some(operator));
        assert!(store.ids_of_kind("slots").expect("ids").is_empty());
        assert_eq!(
            store.put_checked(&a, &mine, false).expect("old owner"),
            Err(OwnedByOther { readable: true })
        );
    }

    #[test]
    fn an_unreadable_record_is_replaced_only_by_an_override_or_open_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RegistrationStore::open(dir.path()).expect("open");
        let a = Id::of_content(b"a");
        {
            let txn = store.db.begin_write().expect("txn");
            txn.open_table(SERVERS)
                .expect("servers")
                .insert(a.as_bytes(), [9u8, 1, 2].as_slice())
                .expect("insert");
            txn.commit().expect("commit");
        }
        assert_eq!(
            store
                .put_checked(&a, &owned("alice", &["http://a"]), false)
                .expect("put"),
            Err(OwnedByOther { readable: false })
        );
        let open = record("storage", &["http://open"]);
        store.put(&a, &open).expect("open put");
        assert_eq!(store.get(&a).expect("get"), Some(open));
    }

    #[test]
    fn put_get_replace_and_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RegistrationStore::open(dir.path()).expect("open");
        let a = Id::of_content(b"a");
        let b = Id::of_content(b"b");
        assert_eq!(store.get(&a).expect("get"), None);
        assert!(store.ids_of_kind("storage").expect("ids").is_empty());

        store
            .put(&a, &record("storage", &["http://a"]))
            .expect("put a");
        store
            .put(&b, &record("storage", &["http://b"]))
            .expect("put b");
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(store.ids_of_kind("storage").expect("ids"), both);

        // Replacing moves a to its new kind and urls.
        let moved = record("slots", &["http://a2", "http://a3"]);
        store.put(&a, &moved).expect("replace a");
        assert_eq!(store.get(&a).expect("get"), Some(moved.clone()));
        assert_eq!(store.ids_of_kind("storage").expect("ids"), vec![b]);
        assert_eq!(store.ids_of_kind("slots").expect("ids"), vec![a]);
        assert_eq!(store.all().expect("all").len(), 2);

        // Conditional removal only removes the registration it was asked about.
        assert!(
            !store
                .remove_if_unchanged(&a, &record("storage", &["http://a"]))
                .expect("stale remove")
        );
        assert!(store.get(&a).expect("get").is_some());
        assert!(store.remove_if_unchanged(&a, &moved).expect("remove"));
        assert_eq!(store.get(&a).expect("get"), None);
        assert!(store.ids_of_kind("slots").expect("ids").is_empty());
        assert!(!store.remove_if_unchanged(&a, &moved).expect("absent"));
    }

    #[test]
    fn open_waits_for_a_handle_being_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = RegistrationStore::open(dir.path()).expect("open");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(first);
        });
        let second = RegistrationStore::open(dir.path());
        releaser.join().expect("releaser thread");
        assert!(second.is_ok(), "{second:?}");
    }

    #[test]
    fn registrations_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Id::of_content(b"a");
        let kept = record("names", &["http://n:1"]);
        {
            let store = RegistrationStore::open(dir.path()).expect("open");
            store.put(&a, &kept).expect("put");
        }
        let store = RegistrationStore::open(dir.path()).expect("reopen");
        assert_eq!(store.get(&a).expect("get"), Some(kept));
        assert_eq!(store.ids_of_kind("names").expect("ids"), vec![a]);
        assert!(dir.path().join(DB_FILE).is_file());
    }
}
