//! Blobs up to a few MiB in group-committed pack files.
//!
//! Creating one file per blob costs an inode allocation and two journal commits (the
//! file's data, then its directory entry) per blob; for small blobs that dominates,
//! and for 1 MiB blobs it halves the throughput a sequential, synced append reaches. A
//! blob of at most [`PackConfig::max_blob`] bytes is instead appended to a pack file
//! `<data-dir>/packs/pack-NNNNNNNN.dat`. Appends run in [`PackConfig::lanes`] packing
//! threads, each with an active pack of its own (a blob's lane is picked by its first
//! address byte): a lane takes every write queued while its previous sync ran,
//! appends them all and fdatasyncs once, so concurrent writers share one durable
//! commit while the other lanes' writes overlap it. Only then are the blobs indexed
//! and acknowledged. Packs left empty by an earlier run are removed at open.
//!
//! Record: `"IVP1"`, length (u32 little-endian), the 32-byte address, the bytes.
//! Records are never rewritten or removed (the storage protocol has no delete).
//!
//! The index (`<data-dir>/packs/index.redb`) maps an address to (pack, offset,
//! length) and records, per pack, how many bytes it covers; it also holds the
//! per-subject usage totals ([`crate::usage`]), and a packed blob's charge is written
//! in the transaction that indexes it. Index updates are
//! committed without a sync (the pack's fdatasync already made the blob durable) and
//! made durable about once a second. At open, every pack's bytes past the covered
//! length are scanned, their records verified against their addresses and indexed; a
//! short or mismatched record is a torn tail that was never acknowledged, and is cut.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use invariant_spec::Id;
use redb::{Database, Durability, ReadableDatabase as _, TableDefinition};

/// Address → location (pack number, offset of the bytes, length), little-endian.
const BLOBS: TableDefinition<[u8; 32], [u8; 16]> = TableDefinition::new("blobs");
/// Pack number → bytes of the pack covered by the index.
const PACKS: TableDefinition<u32, u64> = TableDefinition::new("packs");

const MAGIC: &[u8; 4] = b"IVP1";
const HEADER: u64 = 4 + 4 + 32;
/// At most this many blobs, and about this many bytes, share one sync.
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Index commits are made durable at most this often.
const DURABLE_INDEX_EVERY: Duration = Duration::from_secs(1);

/// Pack settings.
#[derive(Clone, Copy, Debug)]
pub struct PackConfig {
    /// Blobs up to this size are packed; 0 turns packing off.
    pub max_blob: usize,
    /// A pack is closed and a new one started past this size.
    pub max_pack: u64,
    /// Packing threads, each appending to a pack of its own, so one lane's sync
    /// overlaps another's writes.
    pub lanes: usize,
}

impl Default for PackConfig {
    fn default() -> PackConfig {
        PackConfig {
            max_blob: 2 * 1024 * 1024,
            max_pack: 1 << 30,
            lanes: 4,
        }
    }
}

/// Why the pack store failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The filesystem failed.
    #[error("pack i/o: {0}")]
    Io(#[from] io::Error),
    /// The index failed.
    #[error("pack index: {0}")]
    Index(String),
}

impl From<PackError> for io::Error {
    fn from(e: PackError) -> io::Error {
        match e {
            PackError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        }
    }
}

fn index_error(e: impl std::fmt::Display) -> PackError {
    PackError::Index(e.to_string())
}

/// Where a packed blob's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The pack's number.
    pub pack: u32,
    /// Offset of the blob's first byte in the pack.
    pub offset: u64,
    /// The blob's length.
    pub len: u32,
}

impl Location {
    fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&self.pack.to_le_bytes());
        out[4..12].copy_from_slice(&self.offset.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    fn decode(bytes: [u8; 16]) -> Location {
        let mut pack = [0u8; 4];
        let mut offset = [0u8; 8];
        let mut len = [0u8; 4];
        pack.copy_from_slice(&bytes[0..4]);
        offset.copy_from_slice(&bytes[4..12]);
        len.copy_from_slice(&bytes[12..16]);
        Location {
            pack: u32::from_le_bytes(pack),
            offset: u64::from_le_bytes(offset),
            len: u32::from_le_bytes(len),
        }
    }
}

/// Counters of the packer's work (tests and metrics).
#[derive(Debug, Default)]
pub struct PackStats {
    /// Durable commits (one fdatasync each).
    pub commits: AtomicU64,
    /// Blobs appended.
    pub blobs: AtomicU64,
}

struct Request {
    id: Id,
    data: Bytes,
    /// The subject charged if this request appends the blob.
    payer: Option<String>,
    /// Whether this request appended the blob (false: it was already packed).
    reply: mpsc::SyncSender<io::Result<bool>>,
}

/// The packed blobs: lookups by any thread, appends through the packing thread.
/// Dropping the last handle stops the thread after a durable index commit.
#[derive(Debug)]
pub struct Packs {
    dir: PathBuf,
    index: Arc<Database>,
    config: PackConfig,
    /// One queue per packing lane; a blob always goes to the lane its first address
    /// byte picks, so concurrent writers of one blob meet in one lane (and it is
    /// appended once).
    queues: Mutex<Option<Vec<mpsc::Sender<Request>>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Read handles of the packs (packs only grow, so a handle stays valid).
    readers: RwLock<HashMap<u32, Arc<File>>>,
    stats: Arc<PackStats>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("id", &self.id).finish()
    }
}

impl Drop for Packs {
    fn drop(&mut self) {
        if let Ok(mut queues) = self.queues.lock() {
            queues.take();
        }
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("pack thread panicked");
            }
        }
    }
}

fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("pack-{pack:08}.dat"))
}

impl Packs {
    /// Opens (creating if needed) the packs under `data_dir/packs`, indexing what a
    /// crash left unindexed, and starts the packing thread.
    pub fn open(data_dir: &Path, config: PackConfig) -> Result<Packs, PackError> {
        Packs::open_with_index(data_dir, config, open_index(data_dir)?)
    }

    /// [`Packs::open`] with the index database already open ([`open_index`]).
    pub fn open_with_index(
        data_dir: &Path,
        config: PackConfig,
        index: Arc<Database>,
    ) -> Result<Packs, PackError> {
        let dir = data_dir.join("packs");
        fs::create_dir_all(&dir)?;
        let mut numbers = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_prefix("pack-")
                .and_then(|rest| rest.strip_suffix(".dat"))
                .and_then(|n| n.parse::<u32>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        let mut recovered = 0usize;
        for &n in &numbers {
            recovered += recover(&index, &dir, n)?;
        }
        if recovered > 0 {
            tracing::info!(recovered, "indexed packed blobs written before a crash");
        }
        // Packs without a record (lanes of an earlier run that got no writes).
        for &n in &numbers {
            let path = pack_path(&dir, n);
            if fs::metadata(&path)?.len() == 0 {
                fs::remove_file(&path)?;
            }
        }
        // Each lane appends to a pack of its own, numbered after every existing one.
        let next_pack = Arc::new(AtomicU32::new(
            numbers.last().map_or(0, |n| n.saturating_add(1)),
        ));
        let stats = Arc::new(PackStats::default());
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for lane in 0..config.lanes.max(1) {
            let active = next_pack.fetch_add(1, Ordering::Relaxed);
            let file = open_pack(&dir, active)?;
            let len = file.metadata()?.len();
            let (tx, rx) = mpsc::channel();
            let packer = Packer {
                dir: dir.clone(),
                index: index.clone(),
                config,
                next_pack: next_pack.clone(),
                active,
                file,
                len,
                dirty_since: None,
                stats: stats.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("blob-packer-{lane}"))
                    .spawn(move || packer.run(rx))?,
            );
            queues.push(tx);
        }
        Ok(Packs {
            dir,
            index,
            config,
            queues: Mutex::new(Some(queues)),
            threads: Mutex::new(threads),
            readers: RwLock::new(HashMap::new()),
            stats,
        })
    }

    /// The settings.
    pub fn config(&self) -> PackConfig {
        self.config
    }

    /// The packer's counters.
    pub fn stats(&self) -> &PackStats {
        &self.stats
    }

    /// Appends `data` as blob `id` (the caller has verified the hash); returns once
    /// it is durable and readable: true when this call appended it, false when it was
    /// already packed. When this call appends it, `payer` (if any) is charged its size
    /// in the same index transaction.
    pub fn put(&self, id: Id, data: Bytes, payer: Option<&str>) -> io::Result<bool> {
        let (reply, done) = mpsc::sync_channel(1);
        {
            let queues = self
                .queues
                .lock()
                .map_err(|_| io::Error::other("pack queue poisoned"))?;
            let queues = queues
                .as_ref()
                .ok_or_else(|| io::Error::other("pack store closed"))?;
            let lane = usize::from(id.as_bytes()[0]) % queues.len().max(1);
            queues
                .get(lane)
                .ok_or_else(|| io::Error::other("no packing lane"))?
                .send(Request {
                    id,
                    data,
                    payer: payer.map(str::to_string),
                    reply,
                })
                .map_err(|_| io::Error::other("pack thread stopped"))?;
        }
        done.recv()
            .map_err(|_| io::Error::other("pack thread stopped"))?
    }

    /// Where blob `id` is, if packed.
    pub fn locate(&self, id: &Id) -> io::Result<Option<Location>> {
        let txn = self.index.begin_read().map_err(io_index)?;
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
        let mut file = File::open(pack_path(&self.dir, location.pack))?;
        file.seek(SeekFrom::Start(location.offset))?;
        Ok(file)
    }

    /// Reads `count` bytes of the blob at `location`, from byte `start` of the blob,
    /// through a cached read handle of its pack (no open per read).
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

    fn reader(&self, pack: u32) -> io::Result<Arc<File>> {
        if let Ok(readers) = self.readers.read()
            && let Some(file) = readers.get(&pack)
        {
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(File::open(pack_path(&self.dir, pack))?);
        if let Ok(mut readers) = self.readers.write() {
            readers.insert(pack, Arc::clone(&file));
        }
        Ok(file)
    }

    /// Up to `limit` packed blobs with addresses after `after`, in address order.
    pub fn page(&self, after: Option<Id>, limit: usize) -> io::Result<Vec<(Id, u64)>> {
        let txn = self.index.begin_read().map_err(io_index)?;
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

/// Reads every pack under `data_dir/packs` offline (the server must not be writing)
/// and returns the address and size of every record, after checking that each
/// record hashes to its address. A bad record or a torn tail is an error naming the
/// pack and offset: a server that has opened the store since its last crash leaves
/// none. For tests and offline checks.
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

fn io_index(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("pack index: {e}"))
}

/// Opens (creating if needed) the index database `data_dir/packs/index.redb`.
pub fn open_index(data_dir: &Path) -> Result<Arc<Database>, PackError> {
    let dir = data_dir.join("packs");
    fs::create_dir_all(&dir)?;
    let index = Database::create(dir.join("index.redb")).map_err(index_error)?;
    Ok(Arc::new(index))
}

fn open_pack(dir: &Path, pack: u32) -> io::Result<File> {
    let path = pack_path(dir, pack);
    let created = !path.exists();
    let file = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)?;
    if created {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

/// Reads pack records one at a time from a position, with one record in memory.
struct Records<R> {
    reader: R,
    /// Offset of the next record in the pack.
    pos: u64,
}

/// One record read back.
struct Record {
    id: Id,
    /// Offset of the blob's bytes in the pack.
    offset: u64,
    data: Vec<u8>,
}

/// What stopped a walk over records before the end of the pack.
enum RecordEnd {
    /// The end of the pack, on a record boundary.
    Clean,
    /// A bad header, a short record or one that does not hash to its address.
    Torn(&'static str),
}

impl<R: Read> Records<R> {
    fn new(reader: R, pos: u64) -> Records<R> {
        Records { reader, pos }
    }

    /// The next record, or why the walk ends.
    fn next_record(&mut self) -> io::Result<Result<Record, RecordEnd>> {
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
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

/// Indexes the records of pack `n` past its covered length, cutting a torn tail;
/// returns how many were indexed.
fn recover(index: &Database, dir: &Path, n: u32) -> Result<usize, PackError> {
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

/// Writes `records` at the end of `file`: small records are gathered into one
/// buffer, large ones written straight from the request (no extra copy).
fn append_records(file: &mut File, records: &[&Request]) -> io::Result<()> {
    const GATHER: usize = 64 * 1024;
    let mut buf = Vec::with_capacity(GATHER * 2);
    for request in records {
        let len = u32::try_from(request.data.len()).unwrap_or(u32::MAX);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(request.id.as_bytes());
        if request.data.len() < GATHER {
            buf.extend_from_slice(&request.data);
        } else {
            file.write_all(&buf)?;
            buf.clear();
            file.write_all(&request.data)?;
        }
        if buf.len() >= GATHER {
            file.write_all(&buf)?;
            buf.clear();
        }
    }
    file.write_all(&buf)
}

/// The packing thread's state.
struct Packer {
    dir: PathBuf,
    index: Arc<Database>,
    config: PackConfig,
    /// The number the next new pack (of any lane) takes.
    next_pack: Arc<AtomicU32>,
    active: u32,
    file: File,
    /// Bytes in the active pack.
    len: u64,
    /// Since when index commits have not been made durable.
    dirty_since: Option<Instant>,
    stats: Arc<PackStats>,
}

impl Packer {
    fn run(mut self, queue: mpsc::Receiver<Request>) {
        loop {
            let first = match queue.recv_timeout(DURABLE_INDEX_EVERY) {
                Ok(request) => request,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.make_index_durable();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            let mut bytes = batch[0].data.len();
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(request) => {
                        bytes += request.data.len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
            if self
                .dirty_since
                .is_some_and(|t| t.elapsed() >= DURABLE_INDEX_EVERY)
            {
                self.make_index_durable();
            }
        }
        self.make_index_durable();
    }

    fn commit(&mut self, batch: Vec<Request>) {
        if self.len >= self.config.max_pack
            && let Err(e) = self.start_next_pack()
        {
            tracing::error!(error = %e, "could not start a new pack; appending to the full one");
        }
        // Concurrent writers of the same blob: append it once.
        let held = self.already_held(&batch);
        let mut seen = HashSet::new();
        // Which records to append, and where each one's bytes will land.
        let mut records: Vec<&Request> = Vec::with_capacity(batch.len());
        let mut appended_requests = Vec::with_capacity(batch.len());
        let mut locations = Vec::with_capacity(batch.len());
        // Whether each request of the batch is the one appending its blob.
        let mut appends = vec![false; batch.len()];
        let mut charges: HashMap<&str, u64> = HashMap::new();
        let mut end = self.len;
        for (i, request) in batch.iter().enumerate() {
            if held.contains(&i) || !seen.insert(request.id) {
                continue;
            }
            appends[i] = true;
            if let Some(payer) = &request.payer {
                *charges.entry(payer.as_str()).or_default() += request.data.len() as u64;
            }
            // Callers pack only blobs up to `max_blob`, far below 4 GiB.
            let len = u32::try_from(request.data.len()).unwrap_or(u32::MAX);
            locations.push(Location {
                pack: self.active,
                offset: end + HEADER,
                len,
            });
            end += HEADER + u64::from(len);
            appended_requests.push(request.id);
            records.push(request);
        }
        if appended_requests.is_empty() {
            for request in batch {
                let _ = request.reply.send(Ok(false));
            }
            return;
        }
        let charges: Vec<(&str, u64)> = charges.into_iter().collect();
        let appended = append_records(&mut self.file, &records)
            .and_then(|()| self.file.sync_data())
            .map_err(PackError::Io)
            .and_then(|()| self.index_batch(&appended_requests, &locations, end, &charges));
        match appended {
            Ok(()) => {
                self.len = end;
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .blobs
                    .fetch_add(appended_requests.len() as u64, Ordering::Relaxed);
                for (request, appended) in batch.into_iter().zip(appends) {
                    let _ = request.reply.send(Ok(appended));
                }
            }
            Err(e) => {
                // Nothing of this batch is acknowledged; cut what may have been
                // appended so the next batch does not follow a torn record.
                tracing::error!(error = %e, "packing blobs failed");
                if let Err(e) = self.file.set_len(self.len) {
                    tracing::error!(error = %e, "could not cut the pack back");
                }
                let message = e.to_string();
                for request in batch {
                    let _ = request.reply.send(Err(io::Error::other(message.clone())));
                }
            }
        }
    }

    /// Positions in `batch` of blobs the index already has.
    fn already_held(&self, batch: &[Request]) -> HashSet<usize> {
        let mut held = HashSet::new();
        let Ok(txn) = self.index.begin_read() else {
            return held;
        };
        let Ok(table) = txn.open_table(BLOBS) else {
            return held;
        };
        for (i, request) in batch.iter().enumerate() {
            if let Ok(Some(_)) = table.get(request.id.as_bytes()) {
                held.insert(i);
            }
        }
        held
    }

    fn index_batch(
        &mut self,
        ids: &[Id],
        locations: &[Location],
        covered: u64,
        charges: &[(&str, u64)],
    ) -> Result<(), PackError> {
        let mut txn = self.index.begin_write().map_err(index_error)?;
        // The pack's fdatasync made the blobs durable; the index can be rebuilt from
        // the packs, so its commits need no sync of their own.
        txn.set_durability(Durability::None).map_err(index_error)?;
        {
            let mut blobs = txn.open_table(BLOBS).map_err(index_error)?;
            for (id, location) in ids.iter().zip(locations) {
                blobs
                    .insert(id.as_bytes(), location.encode())
                    .map_err(index_error)?;
            }
            let mut packs = txn.open_table(PACKS).map_err(index_error)?;
            packs.insert(self.active, covered).map_err(index_error)?;
        }
        for (subject, bytes) in charges {
            crate::usage::charge(&txn, subject, *bytes).map_err(index_error)?;
        }
        txn.commit().map_err(index_error)?;
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn make_index_durable(&mut self) {
        if self.dirty_since.is_none() {
            return;
        }
        let result = self
            .index
            .begin_write()
            .map_err(index_error)
            .and_then(|txn| {
                // An empty durable commit persists every earlier non-durable one.
                txn.commit().map_err(index_error)
            });
        match result {
            Ok(()) => self.dirty_since = None,
            Err(e) => tracing::error!(error = %e, "could not make the pack index durable"),
        }
    }

    fn start_next_pack(&mut self) -> io::Result<()> {
        let next = self.next_pack.fetch_add(1, Ordering::Relaxed);
        let file = open_pack(&self.dir, next)?;
        self.file = file;
        self.active = next;
        self.len = self.file.metadata()?.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One lane: records land in pack 0, in order.
    fn one_lane() -> PackConfig {
        PackConfig {
            lanes: 1,
            ..PackConfig::default()
        }
    }

    fn put(packs: &Packs, data: &[u8]) -> Id {
        let id = Id::of_content(data);
        packs
            .put(id, Bytes::copy_from_slice(data), None)
            .expect("put");
        id
    }

    fn read(packs: &Packs, id: &Id) -> Option<Vec<u8>> {
        let location = packs.locate(id).expect("locate")?;
        let mut out = Vec::new();
        packs
            .open_at(&location)
            .expect("open")
            .take(u64::from(location.len))
            .read_to_end(&mut out)
            .expect("read");
        Some(out)
    }

    #[test]
    fn put_locate_read_and_page() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packs = Packs::open(dir.path(), PackConfig::default()).expect("open");
        let mut ids = Vec::new();
        for i in 0..100u32 {
            ids.push(put(&packs, format!("blob number {i}").as_bytes()));
        }
        assert_eq!(read(&packs, &ids[7]).expect("held"), b"blob number 7");
        assert!(
            packs
                .locate(&Id::of_content(b"absent"))
                .expect("locate")
                .is_none()
        );
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let page = packs.page(after, 30).expect("page");
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            listed.extend(page);
        }
        assert_eq!(listed.len(), 100);
        assert!(listed.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn concurrent_writers_share_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packs = Arc::new(Packs::open(dir.path(), PackConfig::default()).expect("open"));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let packs = packs.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            let data = format!("thread {t} blob {i}").into_bytes();
                            (put(&packs, &data), data)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for thread in threads {
            all.extend(thread.join().expect("thread"));
        }
        for (id, data) in &all {
            assert_eq!(&read(&packs, id).expect("held"), data);
        }
        assert_eq!(packs.stats().blobs.load(Ordering::Relaxed), 800);
        assert!(
            packs.stats().commits.load(Ordering::Relaxed) < 800,
            "16 concurrent writers never shared a commit"
        );
    }

    #[test]
    fn reopen_indexes_unindexed_records_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = {
            let packs = Packs::open(dir.path(), one_lane()).expect("open");
            (put(&packs, b"first"), put(&packs, b"second"))
        };
        // As a crash after the pack's sync but before the index's would leave it:
        // the index forgets both blobs, and a torn record follows them.
        let index_path = dir.path().join("packs").join("index.redb");
        fs::remove_file(&index_path).expect("drop index");
        let pack = pack_path(&dir.path().join("packs"), 0);
        let intact = fs::metadata(&pack).expect("pack").len();
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&pack)
            .expect("pack");
        file.write_all(MAGIC).expect("torn");
        file.write_all(&100u32.to_le_bytes()).expect("torn");
        file.write_all(&[9u8; 50]).expect("torn");
        drop(file);

        let packs = Packs::open(dir.path(), one_lane()).expect("reopen");
        assert_eq!(read(&packs, &a).expect("a"), b"first");
        assert_eq!(read(&packs, &b).expect("b"), b"second");
        assert_eq!(fs::metadata(&pack).expect("pack").len(), intact);
        // Appends continue after the cut.
        let c = put(&packs, b"third");
        assert_eq!(read(&packs, &c).expect("c"), b"third");
    }

    #[test]
    fn a_record_that_does_not_hash_to_its_address_ends_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packs_dir = dir.path().join("packs");
        fs::create_dir_all(&packs_dir).expect("mkdir");
        let mut bytes = Vec::new();
        let good = Id::of_content(b"good");
        for (id, data) in [(good, &b"good"[..]), (Id::of_content(b"x"), &b"bad"[..])] {
            bytes.extend_from_slice(MAGIC);
            bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
            bytes.extend_from_slice(id.as_bytes());
            bytes.extend_from_slice(data);
        }
        fs::write(pack_path(&packs_dir, 0), &bytes).expect("write");
        let packs = Packs::open(dir.path(), one_lane()).expect("open");
        assert_eq!(read(&packs, &good).expect("good"), b"good");
        assert!(read(&packs, &Id::of_content(b"x")).is_none());
        assert!(read(&packs, &Id::of_content(b"bad")).is_none());
    }

    #[test]
    fn full_packs_roll_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = PackConfig {
            max_blob: 4096,
            max_pack: 10_000,
            lanes: 1,
        };
        let mut ids = Vec::new();
        {
            let packs = Packs::open(dir.path(), config).expect("open");
            for i in 0..50u32 {
                ids.push(put(&packs, &vec![(i % 200) as u8 + 1; 1000 + i as usize]));
            }
        }
        let count = fs::read_dir(dir.path().join("packs"))
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().to_string_lossy().ends_with(".dat"))
                    .unwrap_or(false)
            })
            .count();
        assert!(count >= 4, "only {count} packs");
        let packs = Packs::open(dir.path(), config).expect("reopen");
        for id in &ids {
            assert!(read(&packs, id).is_some());
        }
    }
}
