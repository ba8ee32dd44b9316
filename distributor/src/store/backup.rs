//! Backup bookkeeping in the distributor database: which pinned blocks the backup
//! storage server (`--backup-storage`) was seen to hold.
//!
//! Table `backed_up`: `backup ‖ block` → `FORMAT_V1 ‖ size (u64 LE)`, keyed by the
//! backup server's id so that pointing the distributor at another backup server starts
//! its copy from the beginning. A row is written once the backup server answered a
//! `HEAD` for the block (after a copy, or because it already held it), so a restart
//! resumes where the copy stopped. Rows stay when a block loses its pins: the backup
//! keeps what it was given (collection deletes from the placement servers only), and a
//! block pinned again is already backed up. The table was added without a schema
//! change: [`Store::open`] creates it when it is missing.

use std::ops::Bound;

use invariant_spec::Id;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::gc::holder_size;
use super::{FORMAT_V1, HOLDERS, PINS, PinnedBlock, Store, StoreError, holder_key, read_holders};

pub(super) const BACKED_UP: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("backed_up");

/// One page of the walk over the pinned blocks ([`Store::backup_scan`]).
#[derive(Debug, Default)]
pub struct BackupPage {
    /// The blocks of the page the backup does not hold yet, with their known holders.
    pub missing: Vec<PinnedBlock>,
    /// The last pinned block of the page (where the next page starts); `None` at the end.
    pub last: Option<Id>,
}

/// Pinned blocks the backup does not hold yet ([`Store::backup_behind`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Behind {
    /// How many.
    pub blocks: u64,
    /// Their known sizes added up (blocks whose size no storage server reported count 0).
    pub bytes: u64,
}

impl Store {
    /// Up to `limit` pinned blocks after `after` (exclusive) in id order; those `backup`
    /// does not hold yet are listed with their holders and known size.
    pub fn backup_scan(
        &self,
        backup: &Id,
        after: Option<Id>,
        limit: usize,
    ) -> Result<BackupPage, StoreError> {
        let txn = self.db.begin_read()?;
        let pins = txn.open_table(PINS)?;
        let holders = txn.open_table(HOLDERS)?;
        let done = txn.open_table(BACKED_UP)?;
        let start = after.map(|a| *a.as_bytes());
        let lower = match &start {
            Some(bytes) => Bound::Excluded(bytes),
            None => Bound::Unbounded,
        };
        let mut page = BackupPage::default();
        for (n, row) in pins
            .range::<&[u8; 32]>((lower, Bound::Unbounded))?
            .enumerate()
        {
            if n >= limit.max(1) {
                break;
            }
            let (key, _) = row?;
            let block = Id::from_bytes(*key.value());
            page.last = Some(block);
            if done.get(&holder_key(backup, &block))?.is_some() {
                continue;
            }
            let known = read_holders(&holders, &block)?;
            page.missing.push(PinnedBlock {
                block,
                holders: known,
            });
        }
        Ok(page)
    }

    /// Records that `backup` holds `block` (`size` bytes). Durable on return.
    pub fn backed_up(&self, backup: &Id, block: &Id, size: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut done = txn.open_table(BACKED_UP)?;
            let mut value = [0u8; 9];
            value[0] = FORMAT_V1;
            value[1..].copy_from_slice(&size.to_le_bytes());
            done.insert(&holder_key(backup, block), value.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The pinned blocks `backup` does not hold yet, counted over one snapshot.
    pub fn backup_behind(&self, backup: &Id) -> Result<Behind, StoreError> {
        let txn = self.db.begin_read()?;
        let pins = txn.open_table(PINS)?;
        let holders = txn.open_table(HOLDERS)?;
        let done = txn.open_table(BACKED_UP)?;
        let mut behind = Behind::default();
        for row in pins.iter()? {
            let (key, _) = row?;
            let block = Id::from_bytes(*key.value());
            if done.get(&holder_key(backup, &block))?.is_none() {
                behind.blocks += 1;
                behind.bytes = behind.bytes.saturating_add(holder_size(&holders, &block)?);
            }
        }
        Ok(behind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        Id::of_content(&[n])
    }

    #[test]
    fn the_walk_lists_what_the_backup_lacks_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let backup = id(200);
        let other = id(201);
        let blocks: Vec<Id> = (0..10).map(id).collect();
        {
            let store = Store::open(dir.path()).expect("open");
            store.pin("", &blocks).expect("pin");
            assert_eq!(store.backup_behind(&backup).expect("behind").blocks, 10);
            store.backed_up(&backup, &blocks[3], 7).expect("record");
            store.backed_up(&backup, &blocks[5], 9).expect("record");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.backup_behind(&backup).expect("behind").blocks, 8);
        // Another backup server starts from nothing.
        assert_eq!(store.backup_behind(&other).expect("behind").blocks, 10);
        // Pages of 4: every pinned block is walked once, the backed-up ones left out.
        let mut after = None;
        let mut missing = Vec::new();
        let mut walked = 0;
        loop {
            let page = store.backup_scan(&backup, after, 4).expect("scan");
            let Some(last) = page.last else { break };
            walked += 1;
            missing.extend(page.missing.into_iter().map(|p| p.block));
            after = Some(last);
        }
        assert_eq!(walked, 3);
        let mut expected: Vec<Id> = blocks
            .iter()
            .filter(|b| **b != blocks[3] && **b != blocks[5])
            .copied()
            .collect();
        expected.sort();
        assert_eq!(missing, expected);
        // A block that loses its pins leaves the count; its row stays.
        store
            .unpin("", &[blocks[0]])
            .expect("unpin")
            .expect("not below zero");
        assert_eq!(store.backup_behind(&backup).expect("behind").blocks, 7);
    }
}
