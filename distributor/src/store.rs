//! Durable distributor state in one redb database, `<data-dir>/distributor.redb`.
//!
//! Tables (every value starts with the format marker [`FORMAT_V1`]):
//! - `pins`: block → `FORMAT_V1 ‖ count (u64 LE)`: every subject's pins of the block
//!   together; a block with no pin has no row.
//! - `subject_pins`: `(subject, block)` → `FORMAT_V1 ‖ count (u64 LE)`: one subject's
//!   pins of the block (the subject is a token's subject, `""` for anonymous callers in
//!   open mode); the counts of a block's rows add up to its `pins` count.
//! - `subject_totals`: subject → `FORMAT_V1 ‖ blocks (u64 LE) ‖ pins (u64 LE)`: how many
//!   blocks the subject pins and its pins in all, kept in step so that an operator's
//!   status never scans the pins.
//! - `storages`: storage server id → `FORMAT_V1 ‖ count (u64 LE)`: explicit registrations.
//! - `holders`: `block ‖ storage` → `FORMAT_V1`: storage servers known to hold a pinned
//!   block (placement knowledge; rows go when the block's last pin goes).
//! - `meta`: `"schema"` → [`SCHEMA`], checked at open, and the collection counters.
//! - `released`, `gc_behind`, `gc_storages`: garbage-collection bookkeeping ([`gc`]).
//! - `backed_up`: what the backup storage server holds ([`backup`]).
//!
//! A `holders` value may carry the block's size (`FORMAT_V1 ‖ size (u64 LE)`) when the
//! storage server reported it; a released block's row keeps the largest known.
//!
//! Schema 3 added `released`, `gc_behind` and `gc_storages`; a schema-2 database gains them (empty)
//! at open. Blocks released before that are not known to the collector: an operator
//! finds them with `--gc-unpinned-after`.
//!
//! Schema 1 (before pins were counted per subject) had no `subject_pins` or
//! `subject_totals`. Opening such a database migrates it in one transaction: every pin
//! becomes a pin of the anonymous subject `""`, and the schema becomes 2. A crash
//! during the migration leaves schema 1, migrated again at the next open.
//!
//! Pin and registration changes are one transaction per request, committed with redb's
//! default `Durability::Immediate` (on disk when `commit` returns) before the answer.
//! A request that would take a count below zero (for unpins: below the caller's own
//! pins) changes nothing.
//!
//! All methods block; call them from a blocking thread.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use invariant_runtime::store::{self, DatabaseOpener};
use invariant_spec::Id;
pub mod backup;
pub mod gc;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "distributor.redb";
/// Format marker at the start of every stored value.
pub const FORMAT_V1: u8 = 1;
/// Version of the table layout, stored under `meta["schema"]`.
pub const SCHEMA: u64 = 3;
/// The layout before garbage collection (gains the collection tables at open).
const SCHEMA_V2: u64 = 2;
/// The layout before pins were counted per subject (migrated at open).
const SCHEMA_V1: u64 = 1;
/// The subject of callers without a token (open mode) and of pins made before pins
/// were counted per subject.
pub const ANONYMOUS: &str = "";

type Counts = TableDefinition<'static, &'static [u8; 32], &'static [u8]>;

const PINS: Counts = TableDefinition::new("pins");
const STORAGES: Counts = TableDefinition::new("storages");
const HOLDERS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("holders");
const SUBJECT_PINS: TableDefinition<(&str, &[u8; 32]), &[u8]> =
    TableDefinition::new("subject_pins");
const SUBJECT_TOTALS: TableDefinition<&str, &[u8]> = TableDefinition::new("subject_totals");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub use invariant_runtime::store::StoreError;

/// What a corrupt value is called in [`StoreError::Corrupt`].
const RECORD: &str = "record";

/// A decrement that would go below zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BelowZero {
    /// The first id (in sorted order) whose count is too small.
    pub id: Id,
    /// Its current count (for unpins: the caller's own pins of it).
    pub have: u64,
    /// How many removals the request asked for.
    pub asked: u64,
}

/// What an increment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    /// Ids that had no count before (sorted, distinct).
    pub new: Vec<Id>,
    /// Distinct ids with a count after the change.
    pub total: u64,
}

/// What a decrement did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    /// Ids whose count reached zero (sorted, distinct).
    pub released: Vec<Id>,
    /// Distinct ids with a count after the change.
    pub total: u64,
}

/// A change of placement knowledge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderUpdate {
    /// `storage` was seen holding `block`.
    Add {
        /// The block.
        block: Id,
        /// The storage server.
        storage: Id,
        /// The block's size, when the server reported it.
        size: Option<u64>,
    },
    /// `storage` was seen not holding `block`.
    Remove {
        /// The block.
        block: Id,
        /// The storage server.
        storage: Id,
    },
}

/// What one subject pins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubjectTotals {
    /// Distinct blocks the subject pins.
    pub blocks: u64,
    /// The subject's pins in all (a block pinned twice counts twice).
    pub pins: u64,
}

impl SubjectTotals {
    fn encode(&self) -> [u8; 17] {
        let mut value = [0u8; 17];
        value[0] = FORMAT_V1;
        value[1..9].copy_from_slice(&self.blocks.to_le_bytes());
        value[9..].copy_from_slice(&self.pins.to_le_bytes());
        value
    }

    fn decode(value: &[u8]) -> Result<SubjectTotals, StoreError> {
        let corrupt = || {
            StoreError::corrupt(
                RECORD,
                format!("subject totals record has {} bytes, not 17", value.len()),
            )
        };
        match value.split_first() {
            Some((&FORMAT_V1, rest)) => {
                let blocks: [u8; 8] = rest
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(corrupt)?;
                let pins: [u8; 8] = rest
                    .get(8..)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(corrupt)?;
                Ok(SubjectTotals {
                    blocks: u64::from_le_bytes(blocks),
                    pins: u64::from_le_bytes(pins),
                })
            }
            Some((format, _)) => Err(StoreError::corrupt(
                RECORD,
                format!("unknown format marker {format}"),
            )),
            None => Err(StoreError::corrupt(RECORD, "empty subject totals record")),
        }
    }
}

/// A pinned block with the storage servers known to hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedBlock {
    /// The block.
    pub block: Id,
    /// Known holders, in id order.
    pub holders: Vec<Id>,
}

/// The distributor database. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Database>,
}

fn encode_count(count: u64) -> [u8; 9] {
    let mut value = [0u8; 9];
    value[0] = FORMAT_V1;
    value[1..].copy_from_slice(&count.to_le_bytes());
    value
}

fn decode_count(value: &[u8]) -> Result<u64, StoreError> {
    store::fixed_value(value, FORMAT_V1, "count record").map(u64::from_le_bytes)
}

fn holder_key(block: &Id, storage: &Id) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(block.as_bytes());
    key[32..].copy_from_slice(storage.as_bytes());
    key
}

fn holder_bounds(block: &Id) -> ([u8; 64], [u8; 64]) {
    let mut low = [0u8; 64];
    low[..32].copy_from_slice(block.as_bytes());
    let mut high = [0xffu8; 64];
    high[..32].copy_from_slice(block.as_bytes());
    (low, high)
}

fn storage_of(key: &[u8; 64]) -> Id {
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&key[32..]);
    Id::from_bytes(bytes)
}

/// Multiplicity of each distinct id, in id order.
fn tally(ids: &[Id]) -> BTreeMap<Id, u64> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(*id).or_insert(0u64) += 1;
    }
    counts
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/distributor.redb`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let db = DatabaseOpener::new(data_dir.join(DB_FILE))
            .cache_size(64 * 1024 * 1024)
            .open(|txn| {
                store::upgrade_schema(txn, META, SCHEMA, |found| match found {
                    SCHEMA_V2 => Ok(()),
                    SCHEMA_V1 => {
                        let migrated = migrate_v1(txn)?;
                        tracing::info!(
                            blocks = migrated.blocks,
                            pins = migrated.pins,
                            "migrated the pins to per-subject counts (all anonymous)"
                        );
                        Ok(())
                    }
                    found => Err(StoreError::Schema {
                        found,
                        supported: SCHEMA,
                    }),
                })?;
                txn.open_table(PINS)?;
                txn.open_table(SUBJECT_PINS)?;
                txn.open_table(SUBJECT_TOTALS)?;
                txn.open_table(STORAGES)?;
                txn.open_table(HOLDERS)?;
                txn.open_table(gc::RELEASED)?;
                txn.open_table(gc::GC_BEHIND)?;
                txn.open_table(gc::GC_STORAGES)?;
                txn.open_table(backup::BACKED_UP)?;
                Ok::<_, StoreError>(())
            })?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Adds one pin of `subject` per listed block (duplicates count twice). `new` lists
    /// the blocks that had no pin of any subject before. Durable on return.
    pub fn pin(&self, subject: &str, blocks: &[Id]) -> Result<Added, StoreError> {
        if blocks.is_empty() {
            return Ok(Added {
                new: Vec::new(),
                total: self.count_rows(PINS)?,
            });
        }
        let txn = self.db.begin_write()?;
        let added = {
            let mut pins = txn.open_table(PINS)?;
            let mut mine = txn.open_table(SUBJECT_PINS)?;
            let mut totals = txn.open_table(SUBJECT_TOTALS)?;
            let mut subject_total = read_totals(&totals, subject)?;
            let mut new = Vec::new();
            // Sorted keys: B-tree inserts touch neighbouring pages.
            for (block, add) in tally(blocks) {
                let key = block.as_bytes();
                let before = read_count(&pins, key)?;
                if before == 0 {
                    new.push(block);
                }
                pins.insert(key, encode_count(before.saturating_add(add)).as_slice())?;
                let own = read_count(&mine, (subject, key))?;
                if own == 0 {
                    subject_total.blocks += 1;
                }
                mine.insert(
                    (subject, key),
                    encode_count(own.saturating_add(add)).as_slice(),
                )?;
                subject_total.pins = subject_total.pins.saturating_add(add);
            }
            totals.insert(subject, subject_total.encode().as_slice())?;
            Added {
                new,
                total: pins.len()?,
            }
        };
        gc::unrelease(&txn, &added.new)?;
        txn.commit()?;
        Ok(added)
    }

    /// Removes one pin of `subject` per listed block; nothing changes if the request
    /// asks to remove more pins of a block than `subject` holds (other subjects' pins
    /// are never touched). `released` lists blocks left with no pin of any subject;
    /// they are recorded as released now (for collection after the grace period) and
    /// their holder knowledge is dropped. Durable on return.
    pub fn unpin(
        &self,
        subject: &str,
        blocks: &[Id],
    ) -> Result<Result<Removed, BelowZero>, StoreError> {
        if blocks.is_empty() {
            return Ok(Ok(Removed {
                released: Vec::new(),
                total: self.count_rows(PINS)?,
            }));
        }
        let txn = self.db.begin_write()?;
        let outcome = {
            let mut pins = txn.open_table(PINS)?;
            let mut mine = txn.open_table(SUBJECT_PINS)?;
            let mut totals = txn.open_table(SUBJECT_TOTALS)?;
            // Check everything first so a refused request changes nothing.
            let mut plan = Vec::new();
            let mut refused = None;
            for (block, asked) in tally(blocks) {
                let have = read_count(&mine, (subject, block.as_bytes()))?;
                if have < asked {
                    refused = Some(BelowZero {
                        id: block,
                        have,
                        asked,
                    });
                    break;
                }
                plan.push((block, have, asked));
            }
            match refused {
                Some(below) => Err(below),
                None => {
                    let mut subject_total = read_totals(&totals, subject)?;
                    let mut released = Vec::new();
                    for (block, have, asked) in plan {
                        let key = block.as_bytes();
                        if have == asked {
                            mine.remove((subject, key))?;
                            subject_total.blocks = subject_total.blocks.saturating_sub(1);
                        } else {
                            mine.insert((subject, key), encode_count(have - asked).as_slice())?;
                        }
                        subject_total.pins = subject_total.pins.saturating_sub(asked);
                        let all = read_count(&pins, key)?;
                        if all < have {
                            return Err(StoreError::corrupt(
                                RECORD,
                                format!(
                                    "block {block} has {all} pins in all but {have} of one subject"
                                ),
                            ));
                        }
                        if all == asked {
                            pins.remove(key)?;
                            released.push(block);
                        } else {
                            pins.insert(key, encode_count(all - asked).as_slice())?;
                        }
                    }
                    if subject_total.blocks == 0 {
                        totals.remove(subject)?;
                    } else {
                        totals.insert(subject, subject_total.encode().as_slice())?;
                    }
                    Ok(Removed {
                        released,
                        total: pins.len()?,
                    })
                }
            }
        };
        match outcome {
            Ok(removed) => {
                gc::release(&txn, &removed.released, gc::now_ms())?;
                drop_holders(&txn, &removed.released)?;
                txn.commit()?;
                Ok(Ok(removed))
            }
            Err(below) => {
                txn.abort()?;
                Ok(Err(below))
            }
        }
    }

    /// The pins of each subject holding any, in subject order.
    pub fn pins_by_subject(&self) -> Result<Vec<(String, SubjectTotals)>, StoreError> {
        let txn = self.db.begin_read()?;
        let totals = txn.open_table(SUBJECT_TOTALS)?;
        let mut out = Vec::new();
        for row in totals.iter()? {
            let (subject, value) = row?;
            out.push((
                subject.value().to_string(),
                SubjectTotals::decode(value.value())?,
            ));
        }
        Ok(out)
    }

    /// The pins `subject` holds of `block`.
    pub fn subject_pins(&self, subject: &str, block: &Id) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let mine = txn.open_table(SUBJECT_PINS)?;
        read_count(&mine, (subject, block.as_bytes()))
    }

    /// Adds one registration per listed storage server. Durable on return.
    pub fn register(&self, storages: &[Id]) -> Result<Added, StoreError> {
        self.increment(STORAGES, storages)
    }

    /// Removes one registration per listed storage server; nothing changes if a count
    /// would go below zero. Durable on return.
    pub fn unregister(&self, storages: &[Id]) -> Result<Result<Removed, BelowZero>, StoreError> {
        self.decrement(STORAGES, storages)
    }

    fn increment(&self, table: Counts, ids: &[Id]) -> Result<Added, StoreError> {
        if ids.is_empty() {
            return Ok(Added {
                new: Vec::new(),
                total: self.count_rows(table)?,
            });
        }
        let txn = self.db.begin_write()?;
        let added = {
            let mut rows = txn.open_table(table)?;
            let mut new = Vec::new();
            // Sorted keys: B-tree inserts touch neighbouring pages.
            for (id, add) in tally(ids) {
                let before = match rows.get(id.as_bytes())? {
                    Some(value) => decode_count(value.value())?,
                    None => 0,
                };
                if before == 0 {
                    new.push(id);
                }
                let after = before.saturating_add(add);
                rows.insert(id.as_bytes(), encode_count(after).as_slice())?;
            }
            Added {
                new,
                total: rows.len()?,
            }
        };
        txn.commit()?;
        Ok(added)
    }

    fn decrement(
        &self,
        table: Counts,
        ids: &[Id],
    ) -> Result<Result<Removed, BelowZero>, StoreError> {
        if ids.is_empty() {
            return Ok(Ok(Removed {
                released: Vec::new(),
                total: self.count_rows(table)?,
            }));
        }
        let txn = self.db.begin_write()?;
        let outcome = apply_decrement(&txn, table, ids)?;
        match outcome {
            Ok(removed) => {
                txn.commit()?;
                Ok(Ok(removed))
            }
            Err(below) => {
                txn.abort()?;
                Ok(Err(below))
            }
        }
    }

    fn count_rows(&self, table: Counts) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let rows = txn.open_table(table)?;
        Ok(rows.len()?)
    }

    /// Distinct pinned blocks.
    pub fn pinned_count(&self) -> Result<u64, StoreError> {
        self.count_rows(PINS)
    }

    /// The pin count of `block` (0 when not pinned).
    pub fn pins(&self, block: &Id) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let rows = txn.open_table(PINS)?;
        let value = rows.get(block.as_bytes())?;
        value.map(|v| decode_count(v.value())).unwrap_or(Ok(0))
    }

    /// Whether each of `blocks` is pinned, in order.
    pub fn pinned_flags(&self, blocks: &[Id]) -> Result<Vec<bool>, StoreError> {
        let txn = self.db.begin_read()?;
        let rows = txn.open_table(PINS)?;
        blocks
            .iter()
            .map(|b| Ok(rows.get(b.as_bytes())?.is_some()))
            .collect()
    }

    /// The registration count of each explicitly registered storage server.
    pub fn registered(&self) -> Result<Vec<(Id, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let rows = txn.open_table(STORAGES)?;
        let mut out = Vec::new();
        for row in rows.iter()? {
            let (key, value) = row?;
            out.push((Id::from_bytes(*key.value()), decode_count(value.value())?));
        }
        Ok(out)
    }

    /// The known holders of `block` when it is pinned; `None` when it is not.
    pub fn pinned_block(&self, block: &Id) -> Result<Option<Vec<Id>>, StoreError> {
        let txn = self.db.begin_read()?;
        let pins = txn.open_table(PINS)?;
        if pins.get(block.as_bytes())?.is_none() {
            return Ok(None);
        }
        let holders = txn.open_table(HOLDERS)?;
        read_holders(&holders, block).map(Some)
    }

    /// Up to `limit` pinned blocks after `after` (exclusive) in id order, with their
    /// known holders, all from one snapshot.
    pub fn scan(&self, after: Option<Id>, limit: usize) -> Result<Vec<PinnedBlock>, StoreError> {
        let txn = self.db.begin_read()?;
        let pins = txn.open_table(PINS)?;
        let holders = txn.open_table(HOLDERS)?;
        let start = after.map(|a| *a.as_bytes());
        let lower = match &start {
            Some(bytes) => Bound::Excluded(bytes),
            None => Bound::Unbounded,
        };
        let mut out = Vec::with_capacity(limit.min(4096));
        for row in pins.range::<&[u8; 32]>((lower, Bound::Unbounded))? {
            if out.len() >= limit {
                break;
            }
            let (key, _) = row?;
            let block = Id::from_bytes(*key.value());
            let known = read_holders(&holders, &block)?;
            out.push(PinnedBlock {
                block,
                holders: known,
            });
        }
        Ok(out)
    }

    /// Applies knowledge updates in one transaction. Additions for blocks that are no
    /// longer pinned are skipped.
    pub fn apply_holders(&self, updates: &[HolderUpdate]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let pins = txn.open_table(PINS)?;
            let mut holders = txn.open_table(HOLDERS)?;
            for update in updates {
                match update {
                    HolderUpdate::Add {
                        block,
                        storage,
                        size,
                    } => {
                        if pins.get(block.as_bytes())?.is_none() {
                            continue;
                        }
                        let key = holder_key(block, storage);
                        match size {
                            Some(size) => {
                                let mut value = [0u8; 9];
                                value[0] = FORMAT_V1;
                                value[1..].copy_from_slice(&size.to_le_bytes());
                                holders.insert(&key, value.as_slice())?;
                            }
                            None => {
                                if holders.get(&key)?.is_none() {
                                    holders.insert(&key, [FORMAT_V1].as_slice())?;
                                }
                            }
                        }
                    }
                    HolderUpdate::Remove { block, storage } => {
                        holders.remove(&holder_key(block, storage))?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

fn read_holders(
    holders: &impl ReadableTable<&'static [u8; 64], &'static [u8]>,
    block: &Id,
) -> Result<Vec<Id>, StoreError> {
    let (low, high) = holder_bounds(block);
    let mut out = Vec::new();
    for row in holders.range::<&[u8; 64]>(&low..=&high)? {
        let (key, _) = row?;
        out.push(storage_of(key.value()));
    }
    Ok(out)
}

fn apply_decrement(
    txn: &WriteTransaction,
    table: Counts,
    ids: &[Id],
) -> Result<Result<Removed, BelowZero>, StoreError> {
    let mut rows = txn.open_table(table)?;
    let counts = tally(ids);
    // Check everything first so a refused request changes nothing.
    let mut plan = Vec::with_capacity(counts.len());
    for (id, asked) in counts {
        let have = match rows.get(id.as_bytes())? {
            Some(value) => decode_count(value.value())?,
            None => 0,
        };
        if have < asked {
            return Ok(Err(BelowZero { id, have, asked }));
        }
        plan.push((id, have - asked));
    }
    let mut released = Vec::new();
    for (id, after) in plan {
        if after == 0 {
            rows.remove(id.as_bytes())?;
            released.push(id);
        } else {
            rows.insert(id.as_bytes(), encode_count(after).as_slice())?;
        }
    }
    let total = rows.len()?;
    Ok(Ok(Removed { released, total }))
}

/// Forgets the holders of `released` blocks.
fn drop_holders(txn: &WriteTransaction, released: &[Id]) -> Result<(), StoreError> {
    if released.is_empty() {
        return Ok(());
    }
    let mut holders = txn.open_table(HOLDERS)?;
    for block in released {
        let (low, high) = holder_bounds(block);
        holders.retain_in::<&[u8; 64], _>(&low..=&high, |_, _| false)?;
    }
    Ok(())
}

/// A count row's value, 0 when absent.
fn read_count<'k, K: redb::Key + 'static>(
    table: &impl ReadableTable<K, &'static [u8]>,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
) -> Result<u64, StoreError> {
    match table.get(key)? {
        Some(value) => decode_count(value.value()),
        None => Ok(0),
    }
}

fn read_totals(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    subject: &str,
) -> Result<SubjectTotals, StoreError> {
    match table.get(subject)? {
        Some(value) => SubjectTotals::decode(value.value()),
        None => Ok(SubjectTotals::default()),
    }
}

/// Makes every schema-1 pin a pin of the anonymous subject, in `txn`.
fn migrate_v1(txn: &WriteTransaction) -> Result<SubjectTotals, StoreError> {
    let pins = txn.open_table(PINS)?;
    let mut mine = txn.open_table(SUBJECT_PINS)?;
    let mut totals = txn.open_table(SUBJECT_TOTALS)?;
    let mut anonymous = SubjectTotals::default();
    for row in pins.iter()? {
        let (block, value) = row?;
        let count = decode_count(value.value())?;
        mine.insert((ANONYMOUS, block.value()), encode_count(count).as_slice())?;
        anonymous.blocks += 1;
        anonymous.pins = anonymous.pins.saturating_add(count);
    }
    if anonymous.blocks > 0 {
        totals.insert(ANONYMOUS, anonymous.encode().as_slice())?;
    }
    Ok(anonymous)
}

#[cfg(test)]
mod tests;
