//! The pack record format (`"IVP1"`, length, address, bytes): appending records,
//! reading them back one at a time with their hashes checked, and the offline
//! [`verify_packs`].

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use invariant_spec::Id;

pub(super) const MAGIC: &[u8; 4] = b"IVP1";
/// Bytes of a record before the blob's bytes.
pub const HEADER: u64 = 4 + 4 + 32;

/// Reads every pack under `data_dir/packs` offline (the server must not be writing)
/// and returns the address and size of every record, after checking that each
/// record hashes to its address. Records of deleted blobs not yet compacted away are
/// included. A bad record or a torn tail is an error naming the pack and offset: a
/// server that has opened the store since its last crash leaves none. For tests and
/// offline checks.
pub fn verify_packs(data_dir: &Path) -> io::Result<Vec<(Id, u64)>> {
    let dir = data_dir.join("packs");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "dat") {
            continue;
        }
        let mut records = Records::new(io::BufReader::new(File::open(&path)?), 0);
        loop {
            match records.next_record()? {
                Ok(record) => out.push((record.id, record.data.len() as u64)),
                Err(RecordEnd::Clean) => break,
                Err(RecordEnd::Torn(what)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {what} at offset {}", path.display(), records.pos),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Reads pack records one at a time from a position, with one record in memory.
pub(super) struct Records<R> {
    pub(super) reader: R,
    /// Offset of the next record in the pack.
    pub(super) pos: u64,
}

/// One record read back.
pub(super) struct Record {
    pub(super) id: Id,
    /// Offset of the blob's bytes in the pack.
    pub(super) offset: u64,
    pub(super) data: Vec<u8>,
}

/// What stopped a walk over records before the end of the pack.
pub(super) enum RecordEnd {
    /// The end of the pack, on a record boundary.
    Clean,
    /// A bad header, a short record or one that does not hash to its address.
    Torn(&'static str),
}

impl<R: Read> Records<R> {
    pub(super) fn new(reader: R, pos: u64) -> Records<R> {
        Records { reader, pos }
    }

    /// The next record, or why the walk ends.
    pub(super) fn next_record(&mut self) -> io::Result<Result<Record, RecordEnd>> {
        let mut header = [0u8; HEADER as usize];
        match read_full(&mut self.reader, &mut header)? {
            0 => return Ok(Err(RecordEnd::Clean)),
            n if n < header.len() => return Ok(Err(RecordEnd::Torn("short record header"))),
            _ => {}
        }
        if &header[..4] != MAGIC {
            return Ok(Err(RecordEnd::Torn("no record header")));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[4..8]);
        let len = u32::from_le_bytes(len) as usize;
        let mut id = [0u8; 32];
        id.copy_from_slice(&header[8..]);
        let id = Id::from_bytes(id);
        let mut data = vec![0u8; len];
        if read_full(&mut self.reader, &mut data)? < len {
            return Ok(Err(RecordEnd::Torn("torn record")));
        }
        if Id::of_content(&data) != id {
            return Ok(Err(RecordEnd::Torn(
                "record that does not hash to its address",
            )));
        }
        let offset = self.pos + HEADER;
        self.pos = offset + len as u64;
        Ok(Ok(Record { id, offset, data }))
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
pub(super) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes `records` (address and bytes) at the end of `file`: small records are
/// gathered into one buffer, large ones written straight from their bytes (no extra
/// copy).
pub(super) fn append_records<'a>(
    file: &mut File,
    records: impl IntoIterator<Item = (&'a Id, &'a [u8])>,
) -> io::Result<()> {
    const GATHER: usize = 64 * 1024;
    let mut buf = Vec::with_capacity(GATHER * 2);
    for (id, data) in records {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(id.as_bytes());
        if data.len() < GATHER {
            buf.extend_from_slice(data);
        } else {
            file.write_all(&buf)?;
            buf.clear();
            file.write_all(data)?;
        }
        if buf.len() >= GATHER {
            file.write_all(&buf)?;
            buf.clear();
        }
    }
    file.write_all(&buf)
}
