//! The pack index's tables (a redb database shared with [`crate::usage`]), opening
//! it, and mapping its errors.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, TableDefinition};

use super::PackError;

/// Address → location (pack number, offset of the bytes, length), little-endian.
pub(super) const BLOBS: TableDefinition<[u8; 32], [u8; 16]> = TableDefinition::new("blobs");
/// Pack number → bytes of the pack covered by the index.
pub(super) const PACKS: TableDefinition<u32, u64> = TableDefinition::new("packs");
/// Pack number → bytes of its records no longer indexed (deleted blobs).
pub(super) const DEAD: TableDefinition<u32, u64> = TableDefinition::new("dead");
/// Pack being written by a compaction that has not committed → the pack it replaces.
pub(super) const COMPACTING: TableDefinition<u32, u32> = TableDefinition::new("compacting");
/// Packs a committed compaction replaced, whose files are still to be removed.
pub(super) const RETIRED: TableDefinition<u32, u8> = TableDefinition::new("retired");
/// Settings kept in the index: `next_pack`, the lowest pack number never used.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const NEXT_PACK: &str = "next_pack";

pub(super) fn index_error(e: impl std::fmt::Display) -> PackError {
    PackError::Index(e.to_string())
}

/// Opens `table` for reading; `None` when it was never created.
macro_rules! read_table {
    ($txn:expr, $table:expr) => {
        match $txn.open_table($table) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(index_error(e).into()),
        }
    };
}

pub(super) fn io_index(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("pack index: {e}"))
}

/// Opens (creating if needed) the index database `data_dir/packs/index.redb`.
pub fn open_index(data_dir: &Path) -> Result<Arc<Database>, PackError> {
    let dir = data_dir.join("packs");
    fs::create_dir_all(&dir)?;
    let index = Database::create(dir.join("index.redb")).map_err(index_error)?;
    Ok(Arc::new(index))
}
