//! Finding and reading packed blobs: index lookups, reads through cached pack
//! handles, and address-ordered pages of the index.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::sync::Arc;

use invariant_spec::Id;
use redb::ReadableDatabase as _;

use super::index::{BLOBS, io_index};
use super::{Location, Packs, pack_path};

impl Packs {
    /// Where blob `id` is, if packed.
    pub fn locate(&self, id: &Id) -> io::Result<Option<Location>> {
        let txn = self.core.index.begin_read().map_err(io_index)?;
        let table = match txn.open_table(BLOBS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io_index(e)),
        };
        Ok(table
            .get(id.as_bytes())
            .map_err(io_index)?
            .map(|v| Location::decode(v.value())))
    }

    /// Opens the pack holding `location`, positioned at the blob's first byte.
    pub fn open_at(&self, location: &Location) -> io::Result<File> {
        let mut file = File::open(pack_path(&self.core.dir, location.pack))?;
        file.seek(SeekFrom::Start(location.offset))?;
        Ok(file)
    }

    /// Reads `count` bytes of the blob at `location`, from byte `start` of the blob,
    /// through a cached read handle of its pack (no open per read). `NotFound` when
    /// compaction removed the pack: locate the blob again ([`Packs::read_blob`]).
    pub fn read_at(&self, location: &Location, start: u64, count: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt as _;
        if start + count as u64 > u64::from(location.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "read past the end of a packed blob",
            ));
        }
        let file = self.reader(location.pack)?;
        let mut out = vec![0u8; count];
        file.read_exact_at(&mut out, location.offset + start)?;
        Ok(out)
    }

    /// The whole packed blob `id`, or `None` when it is not packed; locates it again
    /// when compaction moved it between the lookup and the read.
    pub fn read_blob(&self, id: &Id) -> io::Result<Option<Vec<u8>>> {
        let mut attempts = 0;
        loop {
            let Some(location) = self.locate(id)? else {
                return Ok(None);
            };
            match self.read_at(&location, 0, location.len as usize) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                other => return other.map(Some),
            }
        }
    }

    fn reader(&self, pack: u32) -> io::Result<Arc<File>> {
        let removed = || io::Error::new(io::ErrorKind::NotFound, "pack removed by compaction");
        if let Ok(readers) = self.core.readers.read()
            && let Some(entry) = readers.get(&pack)
        {
            return entry.clone().ok_or_else(removed);
        }
        let mut readers = self
            .core
            .readers
            .write()
            .map_err(|_| io::Error::other("pack readers poisoned"))?;
        if let Some(entry) = readers.get(&pack) {
            return entry.clone().ok_or_else(removed);
        }
        let file = Arc::new(File::open(pack_path(&self.core.dir, pack))?);
        readers.insert(pack, Some(Arc::clone(&file)));
        Ok(file)
    }

    /// Up to `limit` packed blobs with addresses after `after`, in address order.
    pub fn page(&self, after: Option<Id>, limit: usize) -> io::Result<Vec<(Id, u64)>> {
        let txn = self.core.index.begin_read().map_err(io_index)?;
        let table = match txn.open_table(BLOBS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io_index(e)),
        };
        let range = match after {
            Some(after) => table.range((
                std::ops::Bound::Excluded(*after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => table.range::<[u8; 32]>(..),
        }
        .map_err(io_index)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in range.take(limit) {
            let (key, value) = item.map_err(io_index)?;
            out.push((
                Id::from_bytes(key.value()),
                u64::from(Location::decode(value.value()).len),
            ));
        }
        Ok(out)
    }
}
