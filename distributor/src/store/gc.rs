//! Garbage-collection bookkeeping in the distributor database.
//!
//! Tables (values start with [`FORMAT_V1`]):
//! - `released`: block → `FORMAT_V1 ‖ since (u64 LE, ms since the Unix epoch) ‖ size
//!   (u64 LE, 0 when unknown) ‖ origin (u8)`: a block no subject pins. Origin
//!   [`Origin::Unpinned`] rows are written by the unpin that took the block's last pin;
//!   origin [`Origin::Unknown`] rows by a listing of a storage server that found a block
//!   the distributor never saw pinned. A pin of the block removes its row in the pin's
//!   own transaction.
//! - `gc_behind`: `storage ‖ block` → `FORMAT_V1 ‖ size (u64 LE)`: a collected block a
//!   storage server still owes a deletion of (it was down or failed during the sweep).
//! - `gc_storages`: storage server → `FORMAT_V1`: every storage server a sweep saw
//!   active; those that do not delete a batch owe it, even once the broker no longer
//!   lists them.
//! - `meta` counters: `gc_released_bytes` (known sizes of the `released` rows),
//!   `gc_epoch` (confirmed batches), `gc_deleted_blocks`, `gc_deleted_bytes`,
//!   `gc_sweeps`, `gc_last_sweep` (ms since the Unix epoch).
//!
//! A sweep takes eligible rows ([`Store::gc_candidates`]), confirms them in one write
//! transaction that checks each block still has no pin ([`Store::gc_confirm`]), deletes
//! them from the storage servers and then records the outcome
//! ([`Store::gc_collected`]). The caller holds the distributor's write lock from the
//! confirmation until the outcome is recorded, so no pin commits in between.

use std::ops::Bound;
use std::time::{SystemTime, UNIX_EPOCH};

use invariant_spec::Id;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{FORMAT_V1, HOLDERS, META, PINS, RECORD, Store, StoreError, holder_bounds};

pub(super) const RELEASED: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("released");
pub(super) const GC_BEHIND: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("gc_behind");
pub(super) const GC_STORAGES: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("gc_storages");

const RELEASED_BYTES: &str = "gc_released_bytes";
const EPOCH: &str = "gc_epoch";
const DELETED_BLOCKS: &str = "gc_deleted_blocks";
const DELETED_BYTES: &str = "gc_deleted_bytes";
const SWEEPS: &str = "gc_sweeps";
const LAST_SWEEP: &str = "gc_last_sweep";

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a block came to have no pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Its last pin was removed.
    Unpinned,
    /// A storage server listed it and it was never pinned (as far as this database
    /// knows).
    Unknown,
}

/// A released block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// The block.
    pub block: Id,
    /// When it was released (or first seen unpinned), ms since the Unix epoch.
    pub since: u64,
    /// Its size when known, else 0.
    pub size: u64,
    /// How it came to have no pin.
    pub origin: Origin,
}

impl Released {
    fn encode(&self) -> [u8; 18] {
        let mut value = [0u8; 18];
        value[0] = FORMAT_V1;
        value[1..9].copy_from_slice(&self.since.to_le_bytes());
        value[9..17].copy_from_slice(&self.size.to_le_bytes());
        value[17] = match self.origin {
            Origin::Unpinned => 0,
            Origin::Unknown => 1,
        };
        value
    }

    fn decode(block: Id, value: &[u8]) -> Result<Released, StoreError> {
        let corrupt = || {
            StoreError::corrupt(
                RECORD,
                format!(
                    "released record of {block} has {} bytes, not 18",
                    value.len()
                ),
            )
        };
        if value.len() != 18 {
            return Err(corrupt());
        }
        if value[0] != FORMAT_V1 {
            return Err(StoreError::corrupt(
                RECORD,
                format!("unknown format marker {}", value[0]),
            ));
        }
        let since = u64::from_le_bytes(value[1..9].try_into().map_err(|_| corrupt())?);
        let size = u64::from_le_bytes(value[9..17].try_into().map_err(|_| corrupt())?);
        let origin = match value[17] {
            0 => Origin::Unpinned,
            1 => Origin::Unknown,
            other => {
                return Err(StoreError::corrupt(
                    RECORD,
                    format!("released record of {block} has unknown origin {other}"),
                ));
            }
        };
        Ok(Released {
            block,
            since,
            size,
            origin,
        })
    }
}

/// When released blocks become collectable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eligibility {
    /// Now, ms since the Unix epoch.
    pub now: u64,
    /// Grace after the last unpin, ms.
    pub grace: u64,
    /// Wait after a never-pinned block was first seen, ms; `None`: never collected.
    pub unpinned_after: Option<u64>,
}

impl Eligibility {
    /// Whether `row` may be collected now.
    pub fn allows(&self, row: &Released) -> bool {
        let wait = match row.origin {
            Origin::Unpinned => self.grace,
            Origin::Unknown => match self.unpinned_after {
                Some(wait) => wait,
                None => return false,
            },
        };
        row.since.saturating_add(wait) <= self.now
    }
}

/// Collection counters and backlog.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcTotals {
    /// Released blocks (waiting for their grace or for a sweep).
    pub released_blocks: u64,
    /// Known bytes of the released blocks.
    pub released_bytes: u64,
    /// Deletions storage servers still owe (one per server and block).
    pub behind: u64,
    /// Blocks collected in all (each counted once however many servers held it).
    pub deleted_blocks: u64,
    /// Bytes the storage servers reported freed, over all servers.
    pub deleted_bytes: u64,
    /// Sweeps finished.
    pub sweeps: u64,
    /// When the last sweep finished, ms since the Unix epoch (0: never).
    pub last_sweep: u64,
}

fn behind_key(storage: &Id, block: &Id) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(storage.as_bytes());
    key[32..].copy_from_slice(block.as_bytes());
    key
}

fn meta_get(meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, StoreError> {
    Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(0))
}

fn meta_add(
    meta: &mut redb::Table<&'static str, u64>,
    key: &str,
    add: u64,
    sub: u64,
) -> Result<(), StoreError> {
    let value = meta_get(meta, key)?.saturating_add(add).saturating_sub(sub);
    meta.insert(key, value)?;
    Ok(())
}

fn decode_size(value: &[u8]) -> u64 {
    value
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// The largest size recorded in `block`'s holder rows (0 when none is known).
pub(super) fn holder_size(
    holders: &impl ReadableTable<&'static [u8; 64], &'static [u8]>,
    block: &Id,
) -> Result<u64, StoreError> {
    let (low, high) = holder_bounds(block);
    let mut size = 0;
    for row in holders.range::<&[u8; 64]>(&low..=&high)? {
        let (_, value) = row?;
        size = size.max(decode_size(value.value()));
    }
    Ok(size)
}

/// Records `blocks` (just left without pins) as released at `now`, in `txn`.
pub(super) fn release(
    txn: &redb::WriteTransaction,
    blocks: &[Id],
    now: u64,
) -> Result<(), StoreError> {
    if blocks.is_empty() {
        return Ok(());
    }
    let holders = txn.open_table(HOLDERS)?;
    let mut released = txn.open_table(RELEASED)?;
    let mut meta = txn.open_table(META)?;
    let mut added = 0u64;
    let mut removed = 0u64;
    for block in blocks {
        let size = holder_size(&holders, block)?;
        let row = Released {
            block: *block,
            since: now,
            size,
            origin: Origin::Unpinned,
        };
        if let Some(old) = released.insert(block.as_bytes(), row.encode().as_slice())? {
            removed = removed.saturating_add(Released::decode(*block, old.value())?.size);
        }
        added = added.saturating_add(size);
    }
    meta_add(&mut meta, RELEASED_BYTES, added, removed)
}

/// Forgets the released rows of `blocks` (they were pinned), in `txn`.
pub(super) fn unrelease(txn: &redb::WriteTransaction, blocks: &[Id]) -> Result<(), StoreError> {
    let mut released = txn.open_table(RELEASED)?;
    let mut freed = 0u64;
    for block in blocks {
        if let Some(old) = released.remove(block.as_bytes())? {
            freed = freed.saturating_add(Released::decode(*block, old.value())?.size);
        }
    }
    if freed > 0 {
        let mut meta = txn.open_table(META)?;
        meta_add(&mut meta, RELEASED_BYTES, 0, freed)?;
    }
    Ok(())
}

impl Store {
    /// Up to `limit` released blocks after `after` (exclusive, id order) that `rules`
    /// allow to collect, and where the next call should start (`None`: the table was
    /// read to its end). Rows not yet eligible are skipped but count towards the scan,
    /// so a call reads at most `4 × limit` rows.
    pub fn gc_candidates(
        &self,
        rules: &Eligibility,
        after: Option<Id>,
        limit: usize,
    ) -> Result<(Vec<Released>, Option<Id>), StoreError> {
        let txn = self.db.begin_read()?;
        let released = txn.open_table(RELEASED)?;
        let start = after.map(|a| *a.as_bytes());
        let lower = match &start {
            Some(bytes) => Bound::Excluded(bytes),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut last = None;
        for (scanned, row) in released
            .range::<&[u8; 32]>((lower, Bound::Unbounded))?
            .enumerate()
        {
            if out.len() >= limit || scanned >= limit.saturating_mul(4) {
                return Ok((out, last));
            }
            let (key, value) = row?;
            let block = Id::from_bytes(*key.value());
            let row = Released::decode(block, value.value())?;
            last = Some(block);
            if rules.allows(&row) {
                out.push(row);
            }
        }
        Ok((out, None))
    }

    /// Confirms `candidates` for deletion in one write transaction: keeps those that
    /// still have no pin and whose released row is unchanged and still eligible; drops
    /// the released rows of blocks found pinned. Bumps the collection epoch and returns
    /// it with the confirmed blocks. The caller must hold the write lock until
    /// [`Store::gc_collected`].
    pub fn gc_confirm(
        &self,
        candidates: &[Released],
        rules: &Eligibility,
    ) -> Result<(u64, Vec<Released>), StoreError> {
        let txn = self.db.begin_write()?;
        let (epoch, confirmed) = {
            let pins = txn.open_table(PINS)?;
            let released = txn.open_table(RELEASED)?;
            let mut confirmed = Vec::with_capacity(candidates.len());
            let mut stale = Vec::new();
            for candidate in candidates {
                let key = candidate.block.as_bytes();
                if pins.get(key)?.is_some() {
                    stale.push(candidate.block);
                    continue;
                }
                let Some(value) = released.get(key)? else {
                    continue;
                };
                let row = Released::decode(candidate.block, value.value())?;
                if row == *candidate && rules.allows(&row) {
                    confirmed.push(row);
                }
            }
            drop(released);
            unrelease(&txn, &stale)?;
            let mut meta = txn.open_table(META)?;
            let epoch = meta_get(&meta, EPOCH)?.saturating_add(1);
            meta.insert(EPOCH, epoch)?;
            (epoch, confirmed)
        };
        txn.commit()?;
        Ok((epoch, confirmed))
    }

    /// Records a confirmed batch's outcome: its released rows go, every storage server
    /// in `behind` owes the deletion of every block, and the counters grow by the
    /// batch's blocks and the `bytes` the servers reported freed.
    pub fn gc_collected(
        &self,
        batch: &[Released],
        behind: &[Id],
        bytes: u64,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let blocks: Vec<Id> = batch.iter().map(|r| r.block).collect();
            unrelease(&txn, &blocks)?;
            let mut owed = txn.open_table(GC_BEHIND)?;
            for storage in behind {
                for row in batch {
                    let mut value = [0u8; 9];
                    value[0] = FORMAT_V1;
                    value[1..].copy_from_slice(&row.size.to_le_bytes());
                    owed.insert(&behind_key(storage, &row.block), value.as_slice())?;
                }
            }
            let mut meta = txn.open_table(META)?;
            meta_add(&mut meta, DELETED_BLOCKS, batch.len() as u64, 0)?;
            meta_add(&mut meta, DELETED_BYTES, bytes, 0)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Storage servers that owe deletions, in id order.
    pub fn gc_behind_storages(&self) -> Result<Vec<Id>, StoreError> {
        let txn = self.db.begin_read()?;
        let owed = txn.open_table(GC_BEHIND)?;
        let mut out = Vec::new();
        let mut low = [0u8; 64];
        loop {
            let next = owed.range::<&[u8; 64]>(&low..)?.next().transpose()?;
            let Some((key, _)) = next else {
                return Ok(out);
            };
            let mut storage = [0u8; 32];
            storage.copy_from_slice(&key.value()[..32]);
            out.push(Id::from_bytes(storage));
            // Skip to the first key of the next storage id.
            let mut carry = true;
            let mut next_low = [0u8; 64];
            next_low[..32].copy_from_slice(&storage);
            for byte in next_low[..32].iter_mut().rev() {
                if !carry {
                    break;
                }
                let (sum, overflow) = byte.overflowing_add(1);
                *byte = sum;
                carry = overflow;
            }
            if carry {
                return Ok(out);
            }
            low = next_low;
        }
    }

    /// Up to `limit` deletions `storage` owes, in block order: those of blocks pinned
    /// again, or released again (a new grace period; a later sweep owes them anew),
    /// are dropped (in one write transaction) and not returned. `None` when it owes
    /// none. Call with the write lock held until [`Store::gc_behind_done`].
    pub fn gc_behind(
        &self,
        storage: &Id,
        limit: usize,
    ) -> Result<Option<Vec<(Id, u64)>>, StoreError> {
        let txn = self.db.begin_write()?;
        let out = {
            let pins = txn.open_table(PINS)?;
            let released = txn.open_table(RELEASED)?;
            let mut owed = txn.open_table(GC_BEHIND)?;
            let low = behind_key(storage, &Id::from_bytes([0; 32]));
            let high = behind_key(storage, &Id::from_bytes([0xff; 32]));
            let mut rows = Vec::new();
            for row in owed.range::<&[u8; 64]>(&low..=&high)? {
                let (key, value) = row?;
                let mut block = [0u8; 32];
                block.copy_from_slice(&key.value()[32..]);
                rows.push((Id::from_bytes(block), decode_size(value.value())));
                if rows.len() >= limit {
                    break;
                }
            }
            if rows.is_empty() {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(rows.len());
            for (block, size) in rows {
                let key = block.as_bytes();
                if pins.get(key)?.is_some() || released.get(key)?.is_some() {
                    owed.remove(&behind_key(storage, &block))?;
                } else {
                    out.push((block, size));
                }
            }
            out
        };
        txn.commit()?;
        Ok(Some(out))
    }

    /// `storage` deleted `blocks` (freeing `bytes`): their owed rows go.
    pub fn gc_behind_done(
        &self,
        storage: &Id,
        blocks: &[Id],
        bytes: u64,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut owed = txn.open_table(GC_BEHIND)?;
            for block in blocks {
                owed.remove(&behind_key(storage, block))?;
            }
            let mut meta = txn.open_table(META)?;
            meta_add(&mut meta, DELETED_BYTES, bytes, 0)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Records `active` storage servers as seen and returns every storage server ever
    /// seen active (the ones a batch's deletion is owed by unless they did it).
    pub fn gc_note_storages(&self, active: &[Id]) -> Result<Vec<Id>, StoreError> {
        let txn = self.db.begin_write()?;
        let seen = {
            let mut table = txn.open_table(GC_STORAGES)?;
            for id in active {
                if table.get(id.as_bytes())?.is_none() {
                    table.insert(id.as_bytes(), [FORMAT_V1].as_slice())?;
                }
            }
            let mut seen = Vec::new();
            for row in table.iter()? {
                let (key, _) = row?;
                seen.push(Id::from_bytes(*key.value()));
            }
            seen
        };
        txn.commit()?;
        Ok(seen)
    }

    /// Notes blocks a storage server listed: each with no pin and no released row
    /// becomes a released row of origin [`Origin::Unknown`] seen first at `now`.
    /// Returns how many were new.
    pub fn gc_note_listed(&self, listed: &[(Id, u64)], now: u64) -> Result<u64, StoreError> {
        if listed.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write()?;
        let new = {
            let pins = txn.open_table(PINS)?;
            let mut released = txn.open_table(RELEASED)?;
            let mut meta = txn.open_table(META)?;
            let mut new = 0u64;
            let mut bytes = 0u64;
            for (block, size) in listed {
                let key = block.as_bytes();
                if pins.get(key)?.is_some() || released.get(key)?.is_some() {
                    continue;
                }
                let row = Released {
                    block: *block,
                    since: now,
                    size: *size,
                    origin: Origin::Unknown,
                };
                released.insert(key, row.encode().as_slice())?;
                new += 1;
                bytes = bytes.saturating_add(*size);
            }
            meta_add(&mut meta, RELEASED_BYTES, bytes, 0)?;
            new
        };
        txn.commit()?;
        Ok(new)
    }

    /// Counts one finished sweep at `now`.
    pub fn gc_sweep_finished(&self, now: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta_add(&mut meta, SWEEPS, 1, 0)?;
            meta.insert(LAST_SWEEP, now)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The collection counters and backlog.
    pub fn gc_totals(&self) -> Result<GcTotals, StoreError> {
        let txn = self.db.begin_read()?;
        let released = txn.open_table(RELEASED)?;
        let owed = txn.open_table(GC_BEHIND)?;
        let meta = txn.open_table(META)?;
        Ok(GcTotals {
            released_blocks: released.len()?,
            released_bytes: meta_get(&meta, RELEASED_BYTES)?,
            behind: owed.len()?,
            deleted_blocks: meta_get(&meta, DELETED_BLOCKS)?,
            deleted_bytes: meta_get(&meta, DELETED_BYTES)?,
            sweeps: meta_get(&meta, SWEEPS)?,
            last_sweep: meta_get(&meta, LAST_SWEEP)?,
        })
    }

    /// The released row of `block`, if any.
    pub fn released(&self, block: &Id) -> Result<Option<Released>, StoreError> {
        let txn = self.db.begin_read()?;
        let released = txn.open_table(RELEASED)?;
        match released.get(block.as_bytes())? {
            Some(value) => Released::decode(*block, value.value()).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{id, open};
    use super::super::{ANONYMOUS, HolderUpdate};
    use super::*;

    fn rules(now: u64, grace: u64) -> Eligibility {
        Eligibility {
            now,
            grace,
            unpinned_after: None,
        }
    }

    #[test]
    fn the_last_unpin_releases_a_block_and_a_pin_takes_it_back() {
        let (_dir, store) = open();
        store.pin("alice", &[id(1), id(2)]).expect("pin");
        store.pin("bob", &[id(1)]).expect("pin");
        store
            .apply_holders(&[HolderUpdate::Add {
                block: id(2),
                storage: id(9),
                size: Some(300),
            }])
            .expect("holders");
        store
            .unpin("alice", &[id(1), id(2)])
            .expect("unpin")
            .expect("ok");
        // Bob still pins 1; 2 is released with its known size.
        assert_eq!(store.released(&id(1)).expect("read"), None);
        let row = store.released(&id(2)).expect("read").expect("released");
        assert_eq!(row.size, 300);
        assert_eq!(row.origin, Origin::Unpinned);
        let totals = store.gc_totals().expect("totals");
        assert_eq!((totals.released_blocks, totals.released_bytes), (1, 300));

        store.pin(ANONYMOUS, &[id(2)]).expect("pin again");
        assert_eq!(store.released(&id(2)).expect("read"), None);
        let totals = store.gc_totals().expect("totals");
        assert_eq!((totals.released_blocks, totals.released_bytes), (0, 0));
    }

    #[test]
    fn candidates_wait_for_their_grace_and_confirmation_respects_pins() {
        let (_dir, store) = open();
        store.pin(ANONYMOUS, &[id(1), id(2), id(3)]).expect("pin");
        store
            .unpin(ANONYMOUS, &[id(1), id(2), id(3)])
            .expect("unpin")
            .expect("ok");
        let since = store.released(&id(1)).expect("read").expect("row").since;
        let early = rules(since + 999, 1000);
        assert!(
            store
                .gc_candidates(&early, None, 10)
                .expect("scan")
                .0
                .is_empty()
        );
        let late = rules(since + 1000, 1000);
        let (candidates, next) = store.gc_candidates(&late, None, 10).expect("scan");
        assert_eq!(candidates.len(), 3);
        assert_eq!(next, None);

        // A pin after the scan wins at confirmation.
        store.pin("carol", &[id(2)]).expect("pin");
        let (epoch, confirmed) = store.gc_confirm(&candidates, &late).expect("confirm");
        assert_eq!(epoch, 1);
        let confirmed_ids: Vec<Id> = confirmed.iter().map(|r| r.block).collect();
        assert!(!confirmed_ids.contains(&id(2)));
        assert_eq!(confirmed.len(), 2);

        // One storage server was down: it owes both deletions.
        store
            .gc_collected(&confirmed, &[id(9)], 10)
            .expect("collected");
        let totals = store.gc_totals().expect("totals");
        assert_eq!(totals.released_blocks, 0);
        assert_eq!(totals.deleted_blocks, 2);
        assert_eq!(totals.deleted_bytes, 10);
        assert_eq!(totals.behind, 2);
        assert_eq!(store.gc_behind_storages().expect("owing"), vec![id(9)]);

        // One of them is pinned again before the server returns: it is not deleted.
        store.pin("carol", &[confirmed_ids[0]]).expect("pin");
        let owed = store.gc_behind(&id(9), 10).expect("owed").expect("rows");
        assert_eq!(owed, vec![(confirmed_ids[1], 0)]);
        store
            .gc_behind_done(&id(9), &[confirmed_ids[1]], 5)
            .expect("done");
        assert_eq!(store.gc_behind(&id(9), 10).expect("owed"), None);
        assert!(store.gc_behind_storages().expect("owing").is_empty());
        assert_eq!(store.gc_totals().expect("totals").deleted_bytes, 15);
    }

    #[test]
    fn an_owed_deletion_of_a_block_released_again_waits_for_its_new_grace() {
        let (_dir, store) = open();
        store.pin(ANONYMOUS, &[id(1), id(2)]).expect("pin");
        store
            .unpin(ANONYMOUS, &[id(1), id(2)])
            .expect("unpin")
            .expect("ok");
        let all = rules(u64::MAX, 0);
        let (candidates, _) = store.gc_candidates(&all, None, 10).expect("scan");
        let (_, confirmed) = store.gc_confirm(&candidates, &all).expect("confirm");
        store
            .gc_collected(&confirmed, &[id(9)], 0)
            .expect("collected");
        // Block 1 is pinned and released again before server 9 returns: a new grace
        // period runs, so server 9 does not delete it now.
        store.pin(ANONYMOUS, &[id(1)]).expect("pin again");
        store
            .unpin(ANONYMOUS, &[id(1)])
            .expect("unpin again")
            .expect("ok");
        let owed = store.gc_behind(&id(9), 10).expect("owed").expect("rows");
        assert_eq!(owed, vec![(id(2), 0)]);
    }

    #[test]
    fn storages_seen_active_are_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            assert_eq!(store.gc_note_storages(&[id(7)]).expect("note"), vec![id(7)]);
        }
        let store = Store::open(dir.path()).expect("reopen");
        let mut seen = store.gc_note_storages(&[id(8)]).expect("note");
        seen.sort();
        let mut want = vec![id(7), id(8)];
        want.sort();
        assert_eq!(seen, want, "a server seen once still owes after a restart");
    }

    #[test]
    fn a_row_changed_since_the_scan_is_not_confirmed() {
        let (_dir, store) = open();
        store.pin(ANONYMOUS, &[id(1)]).expect("pin");
        store
            .unpin(ANONYMOUS, &[id(1)])
            .expect("unpin")
            .expect("ok");
        let since = store.released(&id(1)).expect("read").expect("row").since;
        let late = rules(since + 10, 0);
        let (candidates, _) = store.gc_candidates(&late, None, 10).expect("scan");
        // Pinned and unpinned again in between: a new grace period started.
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.pin(ANONYMOUS, &[id(1)]).expect("pin");
        store
            .unpin(ANONYMOUS, &[id(1)])
            .expect("unpin")
            .expect("ok");
        let strict = rules(since + 10, 1_000_000);
        let (_, confirmed) = store.gc_confirm(&candidates, &strict).expect("confirm");
        assert!(confirmed.is_empty());
        assert!(store.released(&id(1)).expect("read").is_some());
    }

    #[test]
    fn listed_blocks_never_pinned_wait_for_unpinned_after() {
        let (_dir, store) = open();
        store.pin(ANONYMOUS, &[id(1)]).expect("pin");
        let new = store
            .gc_note_listed(&[(id(1), 5), (id(2), 7), (id(3), 9)], 1_000)
            .expect("note");
        assert_eq!(new, 2);
        // Listing again does not restart their clock.
        assert_eq!(store.gc_note_listed(&[(id(2), 7)], 5_000).expect("note"), 0);
        let off = rules(1_000_000, 0);
        assert!(
            store
                .gc_candidates(&off, None, 10)
                .expect("scan")
                .0
                .is_empty()
        );
        let on = Eligibility {
            now: 1_500,
            grace: 0,
            unpinned_after: Some(500),
        };
        let (candidates, _) = store.gc_candidates(&on, None, 10).expect("scan");
        assert_eq!(candidates.len(), 2);
        assert_eq!(store.gc_totals().expect("totals").released_bytes, 16);
    }

    #[test]
    fn candidate_pages_cover_the_table() {
        let (_dir, store) = open();
        let blocks: Vec<Id> = (0..50).map(id).collect();
        store.pin(ANONYMOUS, &blocks).expect("pin");
        store.unpin(ANONYMOUS, &blocks).expect("unpin").expect("ok");
        let all = rules(u64::MAX, 0);
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let (page, next) = store.gc_candidates(&all, cursor, 7).expect("scan");
            seen.extend(page.into_iter().map(|r| r.block));
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut want = blocks;
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn gc_state_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store.pin(ANONYMOUS, &[id(1), id(2)]).expect("pin");
            store
                .unpin(ANONYMOUS, &[id(1), id(2)])
                .expect("unpin")
                .expect("ok");
            let (_, confirmed) = store
                .gc_confirm(
                    &store
                        .gc_candidates(&rules(u64::MAX, 0), None, 1)
                        .expect("scan")
                        .0,
                    &rules(u64::MAX, 0),
                )
                .expect("confirm");
            store
                .gc_collected(&confirmed, &[id(8)], 3)
                .expect("collected");
            store.gc_sweep_finished(42).expect("finished");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let totals = store.gc_totals().expect("totals");
        assert_eq!(totals.released_blocks, 1);
        assert_eq!(totals.deleted_blocks, 1);
        assert_eq!(totals.behind, 1);
        assert_eq!(totals.sweeps, 1);
        assert_eq!(totals.last_sweep, 42);
    }
}
