//! Finding held blobs and opening them for reading, packed or as files.

use std::fs::{self, File};
use std::io;

use invariant_spec::Id;

use super::BlobStore;

impl BlobStore {
    /// The size of blob `id`, or `None` if absent.
    pub fn size(&self, id: &Id) -> io::Result<Option<u64>> {
        if let Some(packs) = &self.inner.packs
            && let Some(location) = packs.locate(id)?
        {
            return Ok(Some(u64::from(location.len)));
        }
        match fs::metadata(self.blob_path(id)) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where blob `id` is if it is packed.
    pub fn packed(&self, id: &Id) -> io::Result<Option<crate::pack::Location>> {
        match &self.inner.packs {
            Some(packs) => packs.locate(id),
            None => Ok(None),
        }
    }

    /// Reads `count` bytes from byte `start` of the packed blob at `location`.
    pub fn read_packed(
        &self,
        location: &crate::pack::Location,
        start: u64,
        count: usize,
    ) -> io::Result<Vec<u8>> {
        match &self.inner.packs {
            Some(packs) => packs.read_at(location, start, count),
            None => Err(io::Error::other("packing is off")),
        }
    }

    /// Opens the pack holding the packed blob at `location` (positioned at its first
    /// byte).
    pub fn open_packed(&self, location: &crate::pack::Location) -> io::Result<File> {
        match &self.inner.packs {
            Some(packs) => packs.open_at(location),
            None => Err(io::Error::other("packing is off")),
        }
    }

    /// Opens blob `id` for reading: the file positioned at the blob's first byte,
    /// that byte's offset in the file, and the blob's size; `None` if absent.
    pub fn open_blob(&self, id: &Id) -> io::Result<Option<(File, u64, u64)>> {
        if let Some(packs) = &self.inner.packs {
            let mut attempts = 0;
            while let Some(location) = packs.locate(id)? {
                match packs.open_at(&location) {
                    Ok(file) => {
                        return Ok(Some((file, location.offset, u64::from(location.len))));
                    }
                    // Compaction removed the pack after the lookup: look again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => {
                        attempts += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        match File::open(self.blob_path(id)) {
            Ok(file) => {
                let len = file.metadata()?.len();
                Ok(Some((file, 0, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
