//! Finding held blobs and reading them: [`BlobStore::read`] finds a blob
//! in a pack or as a file, applies a requested byte range, and reads a small selection
//! at once or hands back the open file for a large one.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::RangeInclusive;

use invariant_spec::Id;

use super::{BlobStore, StoreError};
use crate::range::{ByteRange, Selection};

/// Selections up to this size are read in one blocking call ([`BlobBody::Bytes`]);
/// larger ones are handed back as an open file ([`BlobBody::File`]).
pub const INLINE_READ: u64 = 256 * 1024;

/// How often a read looks a packed blob up again when compaction removed its pack
/// between the lookup and the read (the blob was moved to a new pack).
const RELOCATE_ATTEMPTS: usize = 3;

/// What [`BlobStore::read`] found for a held blob.
#[derive(Debug)]
pub enum Opened {
    /// The blob, or the part of it the range selected.
    Content(BlobRead),
    /// The range lies outside the blob, of `size` bytes.
    Unsatisfiable {
        /// The blob's size.
        size: u64,
    },
}

/// The selected bytes of a held blob, ready to send.
#[derive(Debug)]
pub struct BlobRead {
    /// The whole blob's size.
    pub size: u64,
    /// The bytes selected by a range, inclusive; `None` when the whole blob is sent.
    pub range: Option<RangeInclusive<u64>>,
    /// The selected bytes.
    pub body: BlobBody,
}

/// Where the selected bytes of a blob come from.
#[derive(Debug)]
pub enum BlobBody {
    /// Read into memory (selections up to [`INLINE_READ`] bytes).
    Bytes(Vec<u8>),
    /// A file positioned at the first selected byte; `len` bytes are to be read from it.
    File {
        /// The blob file or the pack holding the blob.
        file: File,
        /// How many bytes to read.
        len: u64,
    },
}

impl BlobBody {
    /// How many bytes the body holds.
    pub fn len(&self) -> u64 {
        match self {
            BlobBody::Bytes(data) => data.len() as u64,
            BlobBody::File { len, .. } => *len,
        }
    }

    /// Whether the body holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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

    /// Opens blob `id` for reading the bytes `range` selects (all of them when
    /// `None`), wherever it is held: in a pack or as a file. `None` when it is not held.
    pub fn read(&self, id: &Id, range: Option<ByteRange>) -> Result<Option<Opened>, StoreError> {
        let mut attempts = 0;
        loop {
            match self.open_once(id, range) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < RELOCATE_ATTEMPTS => {
                    attempts += 1;
                }
                other => return other.map_err(StoreError::Io),
            }
        }
    }

    /// One attempt of [`BlobStore::read`]: `NotFound` when compaction removed the
    /// pack a packed blob was found in.
    fn open_once(&self, id: &Id, range: Option<ByteRange>) -> io::Result<Option<Opened>> {
        if let Some(packs) = self.packs()
            && let Some(location) = packs.locate(id)?
        {
            let size = u64::from(location.len);
            let Some((start, count, part)) = selected(range, size) else {
                return Ok(Some(Opened::Unsatisfiable { size }));
            };
            let body = if count <= INLINE_READ {
                // Through the packs' cached read handle: no open per read.
                BlobBody::Bytes(packs.read_at(&location, start, count as usize)?)
            } else {
                body_from(packs.open_at(&location)?, location.offset + start, count)?
            };
            return Ok(Some(content(size, part, body)));
        }
        let Some((file, base, size)) = self.open_blob(id)? else {
            return Ok(None);
        };
        let Some((start, count, part)) = selected(range, size) else {
            return Ok(Some(Opened::Unsatisfiable { size }));
        };
        let body = body_from(file, base + start, count)?;
        Ok(Some(content(size, part, body)))
    }
}

/// `count` bytes from byte `at` of `file`: read at once when small, else `file`
/// positioned at the first of them.
fn body_from(mut file: File, at: u64, count: u64) -> io::Result<BlobBody> {
    file.seek(SeekFrom::Start(at))?;
    if count > INLINE_READ {
        return Ok(BlobBody::File { file, len: count });
    }
    let mut data = Vec::with_capacity(count as usize);
    file.take(count).read_to_end(&mut data)?;
    if data.len() as u64 != count {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob shrank while reading",
        ));
    }
    Ok(BlobBody::Bytes(data))
}

/// The first byte, the byte count and the inclusive range (`None`: the whole blob)
/// that `range` selects of a blob of `size` bytes; `None` when it is unsatisfiable.
fn selected(
    range: Option<ByteRange>,
    size: u64,
) -> Option<(u64, u64, Option<RangeInclusive<u64>>)> {
    match range.map_or(Selection::Full, |range| range.select(size)) {
        Selection::Unsatisfiable => None,
        Selection::Full => Some((0, size, None)),
        Selection::Partial { start, end } => Some((start, end - start + 1, Some(start..=end))),
    }
}

fn content(size: u64, range: Option<RangeInclusive<u64>>, body: BlobBody) -> Opened {
    Opened::Content(BlobRead { size, range, body })
}
