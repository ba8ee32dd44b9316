//! Has-records and known find servers on disk: redb tables in `<data-dir>/find.redb`.
//!
//! A has-record says "storage server `container` holds block `block`, last seen at
//! `seen`" (ms since the Unix epoch). Tables:
//! - `has`: `block ‖ container` → [`FORMAT_V1`] ‖ `seen` (u64 big-endian). The record.
//! - `by_container`: `container ‖ block` → `()`. Index for checking and dropping the
//!   records of one container.
//! - `by_seen`: `seen ‖ block ‖ container` → `()`. Index for expiry, oldest first.
//! - `peers`: find server id → [`FORMAT_V1`] ‖ time added. The routing table's members.
//!
//! The indexes change in the same transaction as `has`, so they always agree with it.
//! Every write commits with redb's default durability (`Durability::Immediate`): the
//! change is on disk when the method returns. All methods block; call them from a
//! blocking thread.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use invariant_runtime::store;
use invariant_spec::Id;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "find.redb";
/// Format marker of stored values.
pub const FORMAT_V1: u8 = 1;
/// Most records changed by one transaction when dropping many.
const BATCH: usize = 10_000;

const HAS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("has");
const BY_CONTAINER: TableDefinition<&[u8; 64], ()> = TableDefinition::new("by_container");
const BY_SEEN: TableDefinition<&[u8; 72], ()> = TableDefinition::new("by_seen");
const PEERS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("peers");

pub use invariant_runtime::store::StoreError;

/// What a corrupt value is called in [`StoreError::Corrupt`].
const RECORD: &str = "record";

type Result<T> = std::result::Result<T, StoreError>;

/// One holder of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The storage server.
    pub container: Id,
    /// When it was last reported or verified to hold the block (ms since the epoch).
    pub last_seen: u64,
}

/// The find database. Cloning shares it.
#[derive(Clone, Debug)]
pub struct FindStore {
    db: Arc<Database>,
}

fn pair(a: &Id, b: &Id) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(a.as_bytes());
    key[32..].copy_from_slice(b.as_bytes());
    key
}

fn seen_key(seen: u64, block: &Id, container: &Id) -> [u8; 72] {
    let mut key = [0u8; 72];
    key[..8].copy_from_slice(&seen.to_be_bytes());
    key[8..40].copy_from_slice(block.as_bytes());
    key[40..].copy_from_slice(container.as_bytes());
    key
}

fn split_pair(key: &[u8; 64]) -> (Id, Id) {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    a.copy_from_slice(&key[..32]);
    b.copy_from_slice(&key[32..]);
    (Id::from_bytes(a), Id::from_bytes(b))
}

fn encode_time(time: u64) -> [u8; 9] {
    let mut value = [0u8; 9];
    value[0] = FORMAT_V1;
    value[1..].copy_from_slice(&time.to_be_bytes());
    value
}

fn decode_time(value: &[u8]) -> Result<u64> {
    store::fixed_value(value, FORMAT_V1, RECORD).map(u64::from_be_bytes)
}

/// The range of 64-byte keys starting with `prefix`.
fn prefix_range(prefix: &Id) -> ([u8; 64], [u8; 64]) {
    let low = pair(prefix, &Id::from_bytes([0; 32]));
    let high = pair(prefix, &Id::from_bytes([0xff; 32]));
    (low, high)
}

/// The three record tables of one write transaction.
struct Tables<'t> {
    has: redb::Table<'t, &'static [u8; 64], &'static [u8]>,
    by_container: redb::Table<'t, &'static [u8; 64], ()>,
    by_seen: redb::Table<'t, &'static [u8; 72], ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables {
            has: txn.open_table(HAS)?,
            by_container: txn.open_table(BY_CONTAINER)?,
            by_seen: txn.open_table(BY_SEEN)?,
        })
    }

    /// Sets the record's last-seen time (never moving it backwards). True when new.
    fn upsert(&mut self, block: &Id, container: &Id, now: u64) -> Result<bool> {
        let key = pair(block, container);
        let previous = match self.has.get(&key)? {
            Some(v) => Some(decode_time(v.value())?),
            None => None,
        };
        let seen = previous.map_or(now, |p| p.max(now));
        if previous == Some(seen) {
            return Ok(false);
        }
        if let Some(p) = previous {
            self.by_seen.remove(&seen_key(p, block, container))?;
        }
        self.has.insert(&key, encode_time(seen).as_slice())?;
        self.by_container.insert(&pair(container, block), ())?;
        self.by_seen.insert(&seen_key(seen, block, container), ())?;
        Ok(previous.is_none())
    }

    /// Removes one record and its index entries. True when it existed.
    fn remove(&mut self, block: &Id, container: &Id) -> Result<bool> {
        let seen = match self.has.remove(&pair(block, container))? {
            Some(v) => decode_time(v.value())?,
            None => return Ok(false),
        };
        self.by_container.remove(&pair(container, block))?;
        self.by_seen.remove(&seen_key(seen, block, container))?;
        Ok(true)
    }
}

impl FindStore {
    /// Opens (creating if needed) `<data_dir>/find.redb`. When another handle holds the
    /// file (a server of this process still stopping), waits up to
    /// [`store::OPEN_WAIT`] for it, then fails with [`StoreError::AlreadyOpen`].
    pub fn open(data_dir: &Path) -> Result<FindStore> {
        // Create the tables so read transactions always find them.
        let db = store::open_in(data_dir, DB_FILE, |txn| {
            Tables::open(txn)?;
            txn.open_table(PEERS)?;
            Ok::<_, StoreError>(())
        })?;
        Ok(FindStore { db: Arc::new(db) })
    }

    /// Records that `container` holds each of `ids`, seen at `now`, in one transaction.
    /// Returns how many records are new (the rest were refreshed).
    pub fn record(&self, container: &Id, ids: &[Id], now: u64) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write()?;
        let mut added = 0;
        {
            let mut tables = Tables::open(&txn)?;
            for id in ids {
                if tables.upsert(id, container, now)? {
                    added += 1;
                }
            }
        }
        txn.commit()?;
        Ok(added)
    }

    /// The holders of `block`, most recently seen first, at most `limit`.
    pub fn holders(&self, block: &Id, limit: usize) -> Result<Vec<Holder>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HAS)?;
        let (low, high) = prefix_range(block);
        let mut out = Vec::new();
        for entry in table.range::<&[u8; 64]>(&low..=&high)? {
            let (key, value) = entry?;
            let (_, container) = split_pair(key.value());
            out.push(Holder {
                container,
                last_seen: decode_time(value.value())?,
            });
        }
        out.sort_by_key(|h| std::cmp::Reverse(h.last_seen));
        out.truncate(limit);
        Ok(out)
    }

    /// Every container with at least one record.
    pub fn containers(&self) -> Result<Vec<Id>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_CONTAINER)?;
        let mut out = Vec::new();
        let mut after: Option<[u8; 64]> = None;
        loop {
            let lower = match &after {
                Some(key) => Bound::Excluded(key),
                None => Bound::Unbounded,
            };
            let mut range = table.range::<&[u8; 64]>((lower, Bound::Unbounded))?;
            let Some(entry) = range.next() else {
                break;
            };
            let (key, _) = entry?;
            let (container, _) = split_pair(key.value());
            out.push(container);
            after = Some(prefix_range(&container).1);
        }
        Ok(out)
    }

    /// Up to `count` blocks held by `container`, starting at `start` in key order and
    /// wrapping around (callers pass a random `start` to sample).
    pub fn sample(&self, container: &Id, start: &Id, count: usize) -> Result<Vec<Id>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BY_CONTAINER)?;
        let (low, high) = prefix_range(container);
        let from = pair(container, start);
        let mut out = Vec::new();
        let first = table.range::<&[u8; 64]>(&from..=&high)?;
        let second = table.range::<&[u8; 64]>((Bound::Included(&low), Bound::Excluded(&from)))?;
        for entry in first.chain(second) {
            if out.len() >= count {
                break;
            }
            let (key, _) = entry?;
            out.push(split_pair(key.value()).1);
        }
        Ok(out)
    }

    /// Removes the records `container` holds `ids`. Returns how many existed.
    pub fn remove(&self, container: &Id, ids: &[Id]) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut tables = Tables::open(&txn)?;
            for id in ids {
                if tables.remove(id, container)? {
                    removed += 1;
                }
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    /// Removes every record of `container`. Returns how many there were.
    pub fn remove_container(&self, container: &Id) -> Result<usize> {
        let (low, high) = prefix_range(container);
        let mut total = 0;
        loop {
            let txn = self.db.begin_write()?;
            let removed = {
                let mut tables = Tables::open(&txn)?;
                let mut blocks = Vec::new();
                for entry in tables.by_container.range::<&[u8; 64]>(&low..=&high)? {
                    let (key, _) = entry?;
                    blocks.push(split_pair(key.value()).1);
                    if blocks.len() >= BATCH {
                        break;
                    }
                }
                for block in &blocks {
                    tables.remove(block, container)?;
                }
                blocks.len()
            };
            txn.commit()?;
            total += removed;
            if removed < BATCH {
                return Ok(total);
            }
        }
    }

    /// Removes every record last seen before `cutoff`. Returns how many.
    pub fn expire(&self, cutoff: u64) -> Result<usize> {
        let end = seen_key(cutoff, &Id::from_bytes([0; 32]), &Id::from_bytes([0; 32]));
        let mut total = 0;
        loop {
            let txn = self.db.begin_write()?;
            let removed = {
                let mut tables = Tables::open(&txn)?;
                let mut expired = Vec::new();
                for entry in tables.by_seen.range::<&[u8; 72]>(..&end)? {
                    let (key, _) = entry?;
                    let key = key.value();
                    let mut both = [0u8; 64];
                    both.copy_from_slice(&key[8..]);
                    expired.push(split_pair(&both));
                    if expired.len() >= BATCH {
                        break;
                    }
                }
                for (block, container) in &expired {
                    tables.remove(block, container)?;
                }
                expired.len()
            };
            txn.commit()?;
            total += removed;
            if removed < BATCH {
                return Ok(total);
            }
        }
    }

    /// Number of has-records.
    pub fn len(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(HAS)?.len()?)
    }

    /// Whether there are no has-records.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Remembers find server `id` (added at `now`).
    pub fn add_peer(&self, id: &Id, now: u64) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(PEERS)?;
            if table.get(id.as_bytes())?.is_none() {
                table.insert(id.as_bytes(), encode_time(now).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Forgets find server `id`.
    pub fn remove_peer(&self, id: &Id) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(PEERS)?.remove(id.as_bytes())?;
        txn.commit()?;
        Ok(())
    }

    /// Every remembered find server.
    pub fn peers(&self) -> Result<Vec<Id>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEERS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            decode_time(value.value())?;
            out.push(Id::from_bytes(*key.value()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id::of_content(&[n])
    }

    fn open() -> (tempfile::TempDir, FindStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FindStore::open(dir.path()).expect("open store");
        (dir, store)
    }

    fn containers_of(store: &FindStore, block: &Id) -> Vec<Id> {
        let mut out: Vec<Id> = store
            .holders(block, usize::MAX)
            .expect("holders")
            .into_iter()
            .map(|h| h.container)
            .collect();
        out.sort();
        out
    }

    #[test]
    fn records_are_added_refreshed_and_listed_newest_first() {
        let (_dir, store) = open();
        let (c1, c2) = (id(1), id(2));
        let blocks = [id(10), id(11), id(12)];
        assert_eq!(store.record(&c1, &blocks, 100).expect("record"), 3);
        assert_eq!(store.record(&c1, &blocks[..1], 200).expect("refresh"), 0);
        assert_eq!(store.record(&c2, &blocks[..1], 150).expect("record"), 1);
        let holders = store.holders(&blocks[0], 10).expect("holders");
        assert_eq!(
            holders,
            vec![
                Holder {
                    container: c1,
                    last_seen: 200
                },
                Holder {
                    container: c2,
                    last_seen: 150
                },
            ]
        );
        assert_eq!(store.holders(&blocks[0], 1).expect("limited").len(), 1);
        assert!(store.holders(&id(99), 10).expect("none").is_empty());
        assert_eq!(store.len().expect("len"), 4);
        // An older report does not move last-seen backwards.
        store.record(&c1, &blocks[..1], 50).expect("old report");
        assert_eq!(
            store.holders(&blocks[0], 1).expect("holders")[0].last_seen,
            200
        );
    }

    #[test]
    fn expiry_drops_exactly_the_stale_records() {
        let (_dir, store) = open();
        let (c1, c2) = (id(1), id(2));
        store.record(&c1, &[id(10), id(11)], 100).expect("record");
        store.record(&c2, &[id(10)], 300).expect("record");
        // Refreshing moves a record out of the expiring range.
        store.record(&c1, &[id(11)], 400).expect("refresh");
        assert_eq!(store.expire(100).expect("nothing before 100"), 0);
        assert_eq!(store.expire(301).expect("expire"), 2);
        assert_eq!(containers_of(&store, &id(10)), Vec::<Id>::new());
        assert_eq!(containers_of(&store, &id(11)), vec![c1]);
        assert_eq!(store.len().expect("len"), 1);
        assert_eq!(store.containers().expect("containers"), vec![c1]);
    }

    #[test]
    fn containers_sample_and_removal() {
        let (_dir, store) = open();
        let mut containers = vec![id(1), id(2), id(3)];
        containers.sort();
        let blocks: Vec<Id> = (10..30).map(id).collect();
        for c in &containers {
            store.record(c, &blocks, 1).expect("record");
        }
        assert_eq!(store.containers().expect("containers"), containers);

        // A sample starting anywhere wraps around and has no duplicates.
        let sample = store
            .sample(&containers[0], &blocks[5], 20)
            .expect("sample");
        let mut unique = sample.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 20);
        assert_eq!(
            store
                .sample(&containers[0], &id(200), 7)
                .expect("sample")
                .len(),
            7
        );

        assert_eq!(
            store.remove(&containers[1], &blocks[..5]).expect("remove"),
            5
        );
        assert_eq!(
            store.remove(&containers[1], &blocks[..5]).expect("again"),
            0
        );
        assert_eq!(containers_of(&store, &blocks[0]).len(), 2);

        assert_eq!(store.remove_container(&containers[0]).expect("drop"), 20);
        assert_eq!(
            containers_of(&store, &blocks[9]),
            vec![containers[1], containers[2]]
        );
        assert_eq!(
            store.containers().expect("containers"),
            vec![containers[1], containers[2]]
        );
        // Indexes agree: expiring everything removes exactly what is left.
        assert_eq!(store.expire(u64::MAX).expect("expire all"), 15 + 20);
        assert!(store.is_empty().expect("empty"));
        assert!(store.containers().expect("none").is_empty());
    }

    #[test]
    fn records_and_peers_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = FindStore::open(dir.path()).expect("open");
            store.record(&id(1), &[id(10)], 5).expect("record");
            store.add_peer(&id(7), 5).expect("peer");
            store.add_peer(&id(8), 5).expect("peer");
            store.remove_peer(&id(8)).expect("forget");
        }
        let store = FindStore::open(dir.path()).expect("reopen");
        assert_eq!(containers_of(&store, &id(10)), vec![id(1)]);
        assert_eq!(store.peers().expect("peers"), vec![id(7)]);
    }

    #[test]
    fn corrupt_values_are_errors() {
        assert!(decode_time(&[]).is_err());
        assert!(decode_time(&[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_time(&[FORMAT_V1, 1]).is_err());
        assert_eq!(decode_time(&encode_time(42)).expect("valid"), 42);
    }
}
