//! Productions on disk: one redb table in `<data-dir>/productions.redb`.
//!
//! Key: the 32 bytes of the task id followed by the 32 bytes of the input id. Value:
//! a format byte ([`FORMAT_V1`]) followed by the 32-byte output id. Every write commits
//! with redb's default durability (`Durability::Immediate`: persistent when `commit`
//! returns), so a production is on disk before it is acknowledged.
//!
//! All methods block; call them from a blocking thread.

use std::path::Path;
use std::sync::Arc;

use invariant_runtime::store;
use invariant_spec::Id;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "productions.redb";
/// Format marker of a stored production value.
pub const FORMAT_V1: u8 = 1;

/// `task ‖ input` → `FORMAT_V1 ‖ output`.
const PRODUCTIONS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("productions");

pub use invariant_runtime::store::StoreError;

/// What a corrupt value is called in [`StoreError::Corrupt`].
const RECORD: &str = "production";

/// What a [`ProductionStore::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Nothing was recorded for this task and input before.
    Created,
    /// The same output was already recorded; nothing was written.
    Unchanged,
    /// A different output was recorded and has been replaced (last write wins).
    Replaced {
        /// The output recorded before.
        previous: Id,
    },
}

/// The productions database. Cloning shares it.
#[derive(Clone, Debug)]
pub struct ProductionStore {
    db: Arc<Database>,
}

fn key(task: &Id, input: &Id) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(task.as_bytes());
    key[32..].copy_from_slice(input.as_bytes());
    key
}

fn encode(output: &Id) -> [u8; 33] {
    let mut value = [0u8; 33];
    value[0] = FORMAT_V1;
    value[1..].copy_from_slice(output.as_bytes());
    value
}

fn decode(value: &[u8]) -> Result<Id, StoreError> {
    store::fixed_value(value, FORMAT_V1, RECORD).map(Id::from_bytes)
}

impl ProductionStore {
    /// Opens (creating if needed) `<data_dir>/productions.redb`. When another handle holds the
    /// file (a server of this process still stopping), waits up to
    /// [`store::OPEN_WAIT`] for it, then fails with [`StoreError::AlreadyOpen`].
    pub fn open(data_dir: &Path) -> Result<ProductionStore, StoreError> {
        // Create the table so read transactions always find it.
        let db = store::open_in(data_dir, DB_FILE, |txn| {
            txn.open_table(PRODUCTIONS)?;
            Ok::<_, StoreError>(())
        })?;
        Ok(ProductionStore { db: Arc::new(db) })
    }

    /// The output recorded for `task` applied to `input`.
    pub fn get(&self, task: &Id, input: &Id) -> Result<Option<Id>, StoreError> {
        let found = self.read(task, input)?;
        found.as_deref().map(decode).transpose()
    }

    fn read(&self, task: &Id, input: &Id) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PRODUCTIONS)?;
        Ok(table.get(&key(task, input))?.map(|v| v.value().to_vec()))
    }

    /// Records `output` for `task` applied to `input`, replacing a different earlier
    /// output. Returns once the write is durable.
    pub fn put(&self, task: &Id, input: &Id, output: &Id) -> Result<PutOutcome, StoreError> {
        let key = key(task, input);
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut table = txn.open_table(PRODUCTIONS)?;
            let existing = table.get(&key)?.map(|v| v.value().to_vec());
            let outcome = match existing.as_deref().map(decode).transpose() {
                Ok(None) => PutOutcome::Created,
                Ok(Some(previous)) if previous == *output => PutOutcome::Unchanged,
                Ok(Some(previous)) => PutOutcome::Replaced { previous },
                // An undecodable old value is overwritten by the new, valid one.
                Err(e) => {
                    tracing::warn!(%task, %input, error = %e, "replacing a corrupt production");
                    PutOutcome::Created
                }
            };
            if outcome != PutOutcome::Unchanged {
                table.insert(&key, encode(output).as_slice())?;
            }
            outcome
        };
        if outcome == PutOutcome::Unchanged {
            // Already durable from the commit that wrote it; nothing to commit.
            txn.abort()?;
        } else {
            txn.commit()?;
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id::from_bytes([n; 32])
    }

    #[test]
    fn put_get_replace_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ProductionStore::open(dir.path()).expect("open");
        assert_eq!(store.get(&id(1), &id(2)).expect("get"), None);
        assert_eq!(
            store.put(&id(1), &id(2), &id(3)).expect("put"),
            PutOutcome::Created
        );
        assert_eq!(
            store.put(&id(1), &id(2), &id(3)).expect("same again"),
            PutOutcome::Unchanged
        );
        assert_eq!(
            store.put(&id(1), &id(2), &id(4)).expect("replace"),
            PutOutcome::Replaced { previous: id(3) }
        );
        // Task and input are not interchangeable.
        assert_eq!(store.get(&id(2), &id(1)).expect("get swapped"), None);
        drop(store);
        let store = ProductionStore::open(dir.path()).expect("reopen");
        assert_eq!(store.get(&id(1), &id(2)).expect("get"), Some(id(4)));
    }

    #[test]
    fn values_carry_a_format_marker() {
        let value = encode(&id(7));
        assert_eq!(value[0], FORMAT_V1);
        assert_eq!(decode(&value).expect("decode"), id(7));
        assert!(matches!(decode(&[]), Err(StoreError::Corrupt { .. })));
        assert!(matches!(decode(&[2; 33]), Err(StoreError::Corrupt { .. })));
        assert!(matches!(
            decode(&value[..20]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
