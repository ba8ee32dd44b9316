//! Names on disk: one redb table in `<data-dir>/names.redb`.
//!
//! Key: the canonical name (see [`invariant_spec::names::canonical_name`]). Value:
//! a format byte ([`FORMAT_V1`]), a flags byte (bit 0: the address is a slot id), the
//! ttl in seconds (4 bytes, big-endian) and the 32-byte address.
//!
//! Register and update each run in one redb write transaction; redb admits one writer
//! at a time, so a compare-and-swap reads and replaces the record with no other write
//! in between. Every commit uses redb's default durability (`Durability::Immediate`:
//! persistent when `commit` returns), so a change is on disk before it is acknowledged.
//!
//! All methods block; call them from a blocking thread.

use std::path::Path;
use std::sync::Arc;

use invariant_runtime::store;
use invariant_spec::Id;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "names.redb";
/// Format marker of a stored name record.
pub const FORMAT_V1: u8 = 1;
const FLAG_SLOT: u8 = 1;
const V1_LEN: usize = 1 + 1 + 4 + 32;

/// canonical name → encoded [`StoredName`].
const NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("names");

pub use invariant_runtime::store::StoreError;

/// What the server holds for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredName {
    /// A content address, or a slot id when `slot`.
    pub address: Id,
    /// Seconds a lookup answer may be cached.
    pub ttl: u32,
    /// `address` is a slot id.
    pub slot: bool,
}

impl StoredName {
    fn encode(&self) -> [u8; V1_LEN] {
        let mut value = [0u8; V1_LEN];
        value[0] = FORMAT_V1;
        value[1] = if self.slot { FLAG_SLOT } else { 0 };
        value[2..6].copy_from_slice(&self.ttl.to_be_bytes());
        value[6..].copy_from_slice(self.address.as_bytes());
        value
    }

    fn decode(name: &str, value: &[u8]) -> Result<StoredName, StoreError> {
        let corrupt = |reason: String| StoreError::corrupt(format!("record of {name:?}"), reason);
        match value.first() {
            Some(&FORMAT_V1) => {}
            Some(other) => return Err(corrupt(format!("unknown format marker {other}"))),
            None => return Err(corrupt("empty value".into())),
        }
        let value: &[u8; V1_LEN] = value
            .try_into()
            .map_err(|_| corrupt(format!("format 1 value has {} bytes", value.len())))?;
        let flags = value[1];
        if flags & !FLAG_SLOT != 0 {
            return Err(corrupt(format!("unknown flags {flags:#04x}")));
        }
        let mut ttl = [0u8; 4];
        ttl.copy_from_slice(&value[2..6]);
        let mut address = [0u8; 32];
        address.copy_from_slice(&value[6..]);
        Ok(StoredName {
            address: Id::from_bytes(address),
            ttl: u32::from_be_bytes(ttl),
            slot: flags & FLAG_SLOT != 0,
        })
    }
}

/// What [`NameStore::register`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The name was free and now holds the record.
    Registered,
    /// The name was already registered; nothing changed.
    Taken,
}

/// What [`NameStore::update`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// `previous` was current; the record was replaced.
    Updated,
    /// `previous` was not current; nothing changed.
    Stale {
        /// The current address.
        current: Id,
    },
    /// The name is not registered.
    Unknown,
}

/// The names database. Cloning shares it.
#[derive(Clone, Debug)]
pub struct NameStore {
    db: Arc<Database>,
}

impl NameStore {
    /// Opens (creating if needed) `<data_dir>/names.redb`. When another handle holds the
    /// file (a server of this process still stopping), waits up to
    /// [`store::OPEN_WAIT`] for it, then fails with [`StoreError::AlreadyOpen`].
    pub fn open(data_dir: &Path) -> Result<NameStore, StoreError> {
        // Create the table so read transactions always find it.
        let db = store::open_in(data_dir, DB_FILE, |txn| {
            txn.open_table(NAMES)?;
            Ok::<_, StoreError>(())
        })?;
        Ok(NameStore { db: Arc::new(db) })
    }

    /// The record of canonical `name`, if registered.
    pub fn get(&self, name: &str) -> Result<Option<StoredName>, StoreError> {
        let raw = self.read(name)?;
        raw.map(|value| StoredName::decode(name, &value))
            .transpose()
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(NAMES)?;
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// Registers canonical `name` unless it is taken. Durable when it returns
    /// [`RegisterOutcome::Registered`].
    pub fn register(&self, name: &str, record: &StoredName) -> Result<RegisterOutcome, StoreError> {
        let txn = self.db.begin_write()?;
        let taken = {
            let mut table = txn.open_table(NAMES)?;
            let taken = table.get(name)?.is_some();
            if !taken {
                table.insert(name, record.encode().as_slice())?;
            }
            taken
        };
        if taken {
            txn.abort()?;
            Ok(RegisterOutcome::Taken)
        } else {
            txn.commit()?;
            Ok(RegisterOutcome::Registered)
        }
    }

    /// Replaces the record of canonical `name` with `record` if its address is
    /// `previous` (compare-and-swap). Durable when it returns [`UpdateOutcome::Updated`].
    pub fn update(
        &self,
        name: &str,
        previous: &Id,
        record: &StoredName,
    ) -> Result<UpdateOutcome, StoreError> {
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut table = txn.open_table(NAMES)?;
            let current = table.get(name)?.map(|v| v.value().to_vec());
            match current {
                None => UpdateOutcome::Unknown,
                Some(value) => {
                    let current = StoredName::decode(name, &value)?;
                    if current.address == *previous {
                        table.insert(name, record.encode().as_slice())?;
                        UpdateOutcome::Updated
                    } else {
                        UpdateOutcome::Stale {
                            current: current.address,
                        }
                    }
                }
            }
        };
        if outcome == UpdateOutcome::Updated {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8, ttl: u32, slot: bool) -> StoredName {
        StoredName {
            address: Id::from_bytes([n; 32]),
            ttl,
            slot,
        }
    }

    #[test]
    fn register_update_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = NameStore::open(dir.path()).expect("open");
        assert_eq!(store.get("a.local").expect("get"), None);
        let first = record(1, 60, false);
        assert_eq!(
            store.register("a.local", &first).expect("register"),
            RegisterOutcome::Registered
        );
        assert_eq!(
            store
                .register("a.local", &record(9, 60, false))
                .expect("again"),
            RegisterOutcome::Taken
        );
        assert_eq!(store.get("a.local").expect("get"), Some(first));

        let second = record(2, 5, true);
        assert_eq!(
            store
                .update("a.local", &Id::from_bytes([7; 32]), &second)
                .expect("stale"),
            UpdateOutcome::Stale {
                current: first.address
            }
        );
        assert_eq!(
            store
                .update("a.local", &first.address, &second)
                .expect("update"),
            UpdateOutcome::Updated
        );
        assert_eq!(
            store
                .update("b.local", &first.address, &second)
                .expect("unknown"),
            UpdateOutcome::Unknown
        );
        drop(store);
        let store = NameStore::open(dir.path()).expect("reopen");
        assert_eq!(store.get("a.local").expect("get"), Some(second));
        assert_eq!(store.get("b.local").expect("get"), None);
    }

    #[test]
    fn records_carry_a_format_marker_and_round_trip() {
        for original in [record(3, 0, false), record(4, u32::MAX, true)] {
            let value = original.encode();
            assert_eq!(value[0], FORMAT_V1);
            assert_eq!(StoredName::decode("x", &value).expect("decode"), original);
        }
        let good = record(5, 1, true).encode();
        let mut unknown_format = good;
        unknown_format[0] = 2;
        let mut unknown_flag = good;
        unknown_flag[1] = 0x80;
        for bad in [&[][..], &unknown_format[..], &unknown_flag[..], &good[..10]] {
            assert!(matches!(
                StoredName::decode("x", bad),
                Err(StoreError::Corrupt { .. })
            ));
        }
    }
}
