//! What opening the packs repairs before serving: compactions a crash interrupted
//! (targets never committed, packs already retired), and records appended after the
//! index's covered length (indexed when whole, cut off as a torn tail when not).

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _};

use super::index::{BLOBS, COMPACTING, DEAD, PACKS, RETIRED, index_error};
use super::record::Records;
use super::{Location, PackError, pack_path, remove_if_present};

/// Finishes what a crash interrupted before any pack is scanned: removes compaction
/// targets that never committed and packs a committed compaction retired.
pub(super) fn finish_interrupted_compactions(
    index: &Database,
    dir: &Path,
) -> Result<(), PackError> {
    let (targets, retired) = {
        let txn = index.begin_read().map_err(index_error)?;
        let mut targets = Vec::new();
        if let Some(table) = read_table!(txn, COMPACTING) {
            for item in table.iter().map_err(index_error)? {
                targets.push(item.map_err(index_error)?.0.value());
            }
        }
        let mut retired = Vec::new();
        if let Some(table) = read_table!(txn, RETIRED) {
            for item in table.iter().map_err(index_error)? {
                retired.push(item.map_err(index_error)?.0.value());
            }
        }
        (targets, retired)
    };
    if targets.is_empty() && retired.is_empty() {
        return Ok(());
    }
    for &n in targets.iter().chain(&retired) {
        remove_if_present(&pack_path(dir, n))?;
    }
    File::open(dir)?.sync_all()?;
    let mut txn = index.begin_write().map_err(index_error)?;
    txn.set_durability(Durability::Immediate)
        .map_err(index_error)?;
    {
        let mut compacting = txn.open_table(COMPACTING).map_err(index_error)?;
        let mut retired_table = txn.open_table(RETIRED).map_err(index_error)?;
        let mut packs = txn.open_table(PACKS).map_err(index_error)?;
        let mut dead = txn.open_table(DEAD).map_err(index_error)?;
        for &n in &targets {
            compacting.remove(n).map_err(index_error)?;
            packs.remove(n).map_err(index_error)?;
            dead.remove(n).map_err(index_error)?;
        }
        for &n in &retired {
            retired_table.remove(n).map_err(index_error)?;
            packs.remove(n).map_err(index_error)?;
            dead.remove(n).map_err(index_error)?;
        }
    }
    txn.commit().map_err(index_error)?;
    tracing::info!(
        abandoned = targets.len(),
        retired = retired.len(),
        "finished pack compactions a restart interrupted"
    );
    Ok(())
}

/// Indexes the records of pack `n` past its covered length, cutting a torn tail;
/// returns how many were indexed.
pub(super) fn recover(index: &Database, dir: &Path, n: u32) -> Result<usize, PackError> {
    let covered = {
        let txn = index.begin_read().map_err(index_error)?;
        match txn.open_table(PACKS) {
            Ok(table) => table
                .get(n)
                .map_err(index_error)?
                .map(|v| v.value())
                .unwrap_or(0),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(index_error(e)),
        }
    };
    let path = pack_path(dir, n);
    let mut file = fs::OpenOptions::new().read(true).write(true).open(&path)?;
    let size = file.metadata()?.len();
    if size <= covered {
        return Ok(0);
    }
    file.seek(SeekFrom::Start(covered))?;
    let mut records = Records::new(io::BufReader::new(&mut file), covered);
    let mut found = Vec::new();
    while let Ok(record) = records.next_record()? {
        found.push((
            record.id,
            Location {
                pack: n,
                offset: record.offset,
                len: u32::try_from(record.data.len()).unwrap_or(u32::MAX),
            },
        ));
    }
    let good_end = records.pos;
    drop(records);
    if good_end < size {
        tracing::warn!(
            pack = n,
            cut = size - good_end,
            "cutting a torn tail off a pack (never acknowledged)"
        );
        file.set_len(good_end)?;
        file.sync_all()?;
    }
    let txn = index.begin_write().map_err(index_error)?;
    {
        let mut blobs = txn.open_table(BLOBS).map_err(index_error)?;
        for (id, location) in &found {
            blobs
                .insert(id.as_bytes(), location.encode())
                .map_err(index_error)?;
        }
        let mut packs = txn.open_table(PACKS).map_err(index_error)?;
        packs.insert(n, good_end).map_err(index_error)?;
    }
    txn.commit().map_err(index_error)?;
    Ok(found.len())
}
