//! Blobs up to a few MiB in group-committed pack files, their deletion, and compaction.
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
//! Records are never rewritten in place: a deleted blob's record stays in its pack,
//! dead, until compaction rewrites the pack without it.
//!
//! The index (`<data-dir>/packs/index.redb`) maps an address to (pack, offset,
//! length) and records, per pack, how many bytes it covers (**never lowered while the
//! pack exists**) and how many of them are dead; it also holds the per-subject usage
//! totals and each blob's payer ([`crate::usage`]), and a packed blob's charge is
//! written in the transaction that indexes it. Index updates of appends are committed
//! without a sync (the pack's fdatasync already made the blob durable) and made
//! durable about once a second. At open, every pack's bytes past the covered length
//! are scanned, their records verified against their addresses and indexed; a short
//! or mismatched record is a torn tail that was never acknowledged, and is cut.
//!
//! **Deletion** ([`Packs::tombstone`]) removes a blob's index entry and adds its
//! record's bytes to its pack's dead bytes, in a durable commit (which also makes
//! every earlier append commit durable, so the covered length past the record is
//! durable too): a deleted blob is absent at once and after any restart, and the
//! recovery scan, which only reads past the covered length, never sees its record.
//!
//! **Compaction** ([`Packs::compact_now`], and a background thread every
//! [`CompactionConfig::interval`]) rewrites each closed pack (not a lane's active one)
//! whose live bytes fell under [`CompactionConfig::threshold`] of its covered bytes,
//! reading at most [`CompactionConfig::bytes_per_s`]. A lane's active pack that is as
//! sparse and holds at least a sixteenth of [`PackConfig::max_pack`] (at most 1 MiB)
//! of dead bytes is closed by its lane within a second of the pass that found it, and
//! rewritten by a later pass:
//!
//! 1. a durable commit allocates the new pack's number and marks it as a compaction
//!    target in progress (`compacting`);
//! 2. the old pack's records are read and re-verified; those the index still points
//!    at are appended to the new pack, which is then fdatasynced;
//! 3. one durable commit re-points every copied blob whose entry still names its old
//!    record (a blob deleted meanwhile stays deleted, and its copy is counted dead),
//!    sets the new pack's covered length, drops the old pack's bookkeeping, clears the
//!    in-progress mark and marks the old pack retired;
//! 4. the old pack file is removed (and its directory synced), then the retired mark.
//!
//! At open, before any recovery scan, a target still marked in progress is removed
//! (its compaction never committed; the index still names the old pack), and a
//! retired pack's file is removed. So a kill at any moment leaves every live blob
//! readable from the pack the durable index names, and no deleted record is ever
//! scanned again. Pack numbers are never reused (the next number is kept in the
//! index). A reader that located a blob in a pack compaction then removed finds the
//! file gone (`NotFound`) and locates the blob again ([`Packs::read_blob`]); one
//! already holding the pack open keeps reading the unlinked file.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use invariant_spec::Id;
use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition,
    WriteTransaction,
};

/// Address → location (pack number, offset of the bytes, length), little-endian.
const BLOBS: TableDefinition<[u8; 32], [u8; 16]> = TableDefinition::new("blobs");
/// Pack number → bytes of the pack covered by the index.
const PACKS: TableDefinition<u32, u64> = TableDefinition::new("packs");
/// Pack number → bytes of its records no longer indexed (deleted blobs).
const DEAD: TableDefinition<u32, u64> = TableDefinition::new("dead");
/// Pack being written by a compaction that has not committed → the pack it replaces.
const COMPACTING: TableDefinition<u32, u32> = TableDefinition::new("compacting");
/// Packs a committed compaction replaced, whose files are still to be removed.
const RETIRED: TableDefinition<u32, u8> = TableDefinition::new("retired");
/// Settings kept in the index: `next_pack`, the lowest pack number never used.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_PACK: &str = "next_pack";

const MAGIC: &[u8; 4] = b"IVP1";
/// Bytes of a record before the blob's bytes.
pub const HEADER: u64 = 4 + 4 + 32;
/// At most this many blobs, and about this many bytes, share one sync.
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Dead bytes an active pack must hold before compaction asks its lane to close it
/// (less with small packs: a sixteenth of [`PackConfig::max_pack`]).
const ROLL_DEAD_BYTES: u64 = 1024 * 1024;
/// Index commits are made durable at most this often.
const DURABLE_INDEX_EVERY: Duration = Duration::from_secs(1);
/// Compaction writes the new pack in chunks of about this size.
const COPY_CHUNK: usize = 1024 * 1024;

/// The gauge of dead bytes in packs (deleted blobs' records awaiting compaction).
pub const DEAD_METRIC: &str = "invariant_storage_dead_bytes";
/// The counter of pack bytes compaction has read (live and dead records).
pub const COMPACTION_METRIC: &str = "invariant_storage_compaction_bytes_total";

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
    /// When packs are rewritten without their dead records.
    pub compaction: CompactionConfig,
}

impl Default for PackConfig {
    fn default() -> PackConfig {
        PackConfig {
            max_blob: 2 * 1024 * 1024,
            max_pack: 1 << 30,
            lanes: 4,
            compaction: CompactionConfig::default(),
        }
    }
}

/// Compaction settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompactionConfig {
    /// A closed pack whose live bytes are under this fraction of its bytes is
    /// rewritten (0.5: when more than half is dead). 0 compacts nothing.
    pub threshold: f64,
    /// Most pack bytes compaction reads per second (0: unlimited).
    pub bytes_per_s: u64,
    /// How often the background thread looks for packs to compact; zero: no
    /// background compaction (only [`Packs::compact_now`]).
    pub interval: Duration,
}

/// Default [`CompactionConfig::threshold`].
pub const DEFAULT_COMPACTION_THRESHOLD: f64 = 0.5;
/// Default [`CompactionConfig::bytes_per_s`]: 64 MB/s (`--compaction-mb-per-s 64`).
pub const DEFAULT_COMPACTION_BYTES_PER_S: u64 = 64_000_000;
/// Default [`CompactionConfig::interval`]: one minute.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(60);

impl Default for CompactionConfig {
    fn default() -> CompactionConfig {
        CompactionConfig {
            threshold: DEFAULT_COMPACTION_THRESHOLD,
            bytes_per_s: DEFAULT_COMPACTION_BYTES_PER_S,
            interval: DEFAULT_COMPACTION_INTERVAL,
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
    /// A record inside a pack's covered bytes is damaged.
    #[error("pack {pack} is damaged at offset {offset}: {what}")]
    Damaged {
        /// The pack's number.
        pack: u32,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
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

    /// The bytes of the blob's record (header and blob).
    pub fn record_bytes(&self) -> u64 {
        HEADER + u64::from(self.len)
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

/// What one compaction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Packs rewritten (or removed, when nothing in them was live).
    pub packs: usize,
    /// Pack bytes read.
    pub read: u64,
    /// Bytes written to new packs.
    pub written: u64,
    /// Dead bytes given back (the old packs' size minus what was written).
    pub reclaimed: u64,
    /// Packs that could not be compacted (logged; they keep serving their blobs).
    pub failed: usize,
}

struct Request {
    id: Id,
    data: Bytes,
    /// The subject charged if this request appends the blob.
    payer: Option<String>,
    /// Whether this request appended the blob (false: it was already packed).
    reply: mpsc::SyncSender<io::Result<bool>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("id", &self.id).finish()
    }
}

/// What the packing threads, the compaction thread and readers share.
#[derive(Debug)]
struct Core {
    dir: PathBuf,
    index: Arc<Database>,
    config: PackConfig,
    /// Read handles of the packs; `None` for a pack compaction removed (its readers
    /// get `NotFound` and locate the blob again). A pack is opened and inserted only
    /// under the write lock, and compaction marks a pack removed under it before
    /// unlinking the file, so no handle of a removed pack is cached afterwards.
    readers: RwLock<HashMap<u32, Option<Arc<File>>>>,
    /// Each lane's active pack (packs compaction must not touch).
    active: Vec<AtomicU32>,
    /// Per lane: compaction asks the lane to close its active pack (mostly dead), so
    /// the next pass can rewrite it.
    roll: Vec<AtomicBool>,
    /// The number the next new pack (of any lane, or of compaction) takes.
    next_pack: AtomicU32,
    /// Dead bytes in all packs.
    dead_bytes: AtomicI64,
    /// Held by a compaction pass: one at a time.
    compacting: Mutex<()>,
    /// Set when the store closes: a compaction in progress gives up.
    stopping: AtomicBool,
    stats: PackStats,
}

/// The packed blobs: lookups by any thread, appends through the packing threads,
/// compaction by a background thread (or [`Packs::compact_now`]). Dropping the last
/// handle stops the threads after a durable index commit.
#[derive(Debug)]
pub struct Packs {
    core: Arc<Core>,
    /// One queue per packing lane; a blob always goes to the lane its first address
    /// byte picks, so concurrent writers of one blob meet in one lane (and it is
    /// appended once).
    queues: Mutex<Option<Vec<mpsc::Sender<Request>>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the background compaction thread.
    compactor: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl Drop for Packs {
    fn drop(&mut self) {
        self.core.stopping.store(true, Ordering::Relaxed);
        let compactor = self.compactor.lock().ok().and_then(|mut c| c.take());
        if let Some((stop, thread)) = compactor {
            drop(stop);
            if thread.join().is_err() {
                tracing::error!("compaction thread panicked");
            }
        }
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

fn remove_if_present(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Finishes what a crash interrupted before any pack is scanned: removes compaction
/// targets that never committed and packs a committed compaction retired.
fn finish_interrupted_compactions(index: &Database, dir: &Path) -> Result<(), PackError> {
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
        finish_interrupted_compactions(&index, &dir)?;
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
        let (kept_next, dead_total) = {
            let txn = index.begin_read().map_err(index_error)?;
            let next = match read_table!(txn, META) {
                Some(table) => table
                    .get(NEXT_PACK)
                    .map_err(index_error)?
                    .map_or(0, |v| v.value()),
                None => 0,
            };
            let mut dead = 0u64;
            if let Some(table) = read_table!(txn, DEAD) {
                for item in table.iter().map_err(index_error)? {
                    dead += item.map_err(index_error)?.1.value();
                }
            }
            (next, dead)
        };
        // Each lane appends to a pack of its own, numbered after every existing one
        // and every number compaction ever used.
        let first_free = numbers
            .last()
            .map_or(0, |n| n.saturating_add(1))
            .max(u32::try_from(kept_next).unwrap_or(u32::MAX));
        let lanes = config.lanes.max(1);
        let core = Arc::new(Core {
            dir: dir.clone(),
            index,
            config,
            readers: RwLock::new(HashMap::new()),
            active: (0..lanes)
                .map(|lane| AtomicU32::new(first_free.saturating_add(lane as u32)))
                .collect(),
            roll: (0..lanes).map(|_| AtomicBool::new(false)).collect(),
            next_pack: AtomicU32::new(first_free.saturating_add(lanes as u32)),
            dead_bytes: AtomicI64::new(i64::try_from(dead_total).unwrap_or(i64::MAX)),
            compacting: Mutex::new(()),
            stopping: AtomicBool::new(false),
            stats: PackStats::default(),
        });
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for lane in 0..lanes {
            let active = core.active[lane].load(Ordering::Relaxed);
            let file = open_pack(&dir, active)?;
            let len = file.metadata()?.len();
            let (tx, rx) = mpsc::channel();
            let packer = Packer {
                core: Arc::clone(&core),
                lane,
                active,
                file,
                len,
                dirty_since: None,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("blob-packer-{lane}"))
                    .spawn(move || packer.run(rx))?,
            );
            queues.push(tx);
        }
        let compactor = if config.compaction.interval > Duration::ZERO
            && config.compaction.threshold > 0.0
        {
            let (stop, stopped) = mpsc::channel::<()>();
            let core = Arc::clone(&core);
            let thread = std::thread::Builder::new()
                .name("pack-compactor".to_string())
                .spawn(move || {
                    let interval = core.config.compaction.interval;
                    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval)
                    {
                        if let Err(e) = core.compact() {
                            tracing::error!(error = %e, "pack compaction failed");
                        }
                    }
                })?;
            Some((stop, thread))
        } else {
            None
        };
        metrics::gauge!(DEAD_METRIC).set(dead_total as f64);
        Ok(Packs {
            core,
            queues: Mutex::new(Some(queues)),
            threads: Mutex::new(threads),
            compactor: Mutex::new(compactor),
        })
    }

    /// The settings.
    pub fn config(&self) -> PackConfig {
        self.core.config
    }

    /// The packer's counters.
    pub fn stats(&self) -> &PackStats {
        &self.core.stats
    }

    /// Bytes of dead records (deleted blobs) in the packs, and sets the gauge
    /// [`DEAD_METRIC`].
    pub fn dead_bytes(&self) -> u64 {
        let dead = u64::try_from(self.core.dead_bytes.load(Ordering::Relaxed)).unwrap_or(0);
        metrics::gauge!(DEAD_METRIC).set(dead as f64);
        dead
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

    /// Removes `ids` from the index within `txn` (the caller commits it durably, then
    /// calls [`Packs::tombstoned`]), adding their records to their packs' dead bytes.
    /// Returns the location each held blob had.
    pub fn tombstone(
        &self,
        txn: &WriteTransaction,
        ids: &[Id],
    ) -> Result<Vec<(Id, Location)>, PackError> {
        let mut removed = Vec::new();
        let mut dead_by_pack: HashMap<u32, u64> = HashMap::new();
        {
            let mut blobs = txn.open_table(BLOBS).map_err(index_error)?;
            for id in ids {
                if let Some(value) = blobs.remove(id.as_bytes()).map_err(index_error)? {
                    let location = Location::decode(value.value());
                    *dead_by_pack.entry(location.pack).or_default() += location.record_bytes();
                    removed.push((*id, location));
                }
            }
        }
        if !dead_by_pack.is_empty() {
            let mut dead = txn.open_table(DEAD).map_err(index_error)?;
            for (pack, bytes) in dead_by_pack {
                let before = dead
                    .get(pack)
                    .map_err(index_error)?
                    .map_or(0, |v| v.value());
                dead.insert(pack, before.saturating_add(bytes))
                    .map_err(index_error)?;
            }
        }
        Ok(removed)
    }

    /// Counts the records of `removed` ([`Packs::tombstone`]) as dead once their
    /// transaction committed.
    pub fn tombstoned(&self, removed: &[(Id, Location)]) {
        let bytes: u64 = removed.iter().map(|(_, l)| l.record_bytes()).sum();
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let dead = self.core.dead_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        metrics::gauge!(DEAD_METRIC).set(dead.max(0) as f64);
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

    /// Rewrites now every closed pack whose live fraction is under the threshold
    /// (waiting for a background pass in progress to end first).
    pub fn compact_now(&self) -> Result<CompactionReport, PackError> {
        self.core.compact()
    }

    /// [`Packs::compact_now`] with another threshold (benchmarks and tests).
    pub fn compact_with_threshold(&self, threshold: f64) -> Result<CompactionReport, PackError> {
        self.core.compact_below(threshold)
    }

    /// Every pack's number with its covered and dead bytes, ascending (tests and
    /// tools).
    pub fn pack_usage(&self) -> io::Result<Vec<(u32, u64, u64)>> {
        self.core.pack_usage().map_err(io::Error::from)
    }
}

impl Core {
    fn pack_usage(&self) -> Result<Vec<(u32, u64, u64)>, PackError> {
        let txn = self.index.begin_read().map_err(index_error)?;
        let mut dead = HashMap::new();
        if let Some(table) = read_table!(txn, DEAD) {
            for item in table.iter().map_err(index_error)? {
                let (k, v) = item.map_err(index_error)?;
                dead.insert(k.value(), v.value());
            }
        }
        let mut out = Vec::new();
        if let Some(table) = read_table!(txn, PACKS) {
            for item in table.iter().map_err(index_error)? {
                let (k, v) = item.map_err(index_error)?;
                let n = k.value();
                out.push((n, v.value(), dead.get(&n).copied().unwrap_or(0)));
            }
        }
        Ok(out)
    }

    fn compact(&self) -> Result<CompactionReport, PackError> {
        self.compact_below(self.config.compaction.threshold)
    }

    fn compact_below(&self, threshold: f64) -> Result<CompactionReport, PackError> {
        let _one = self
            .compacting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let active: HashSet<u32> = self
            .active
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .collect();
        let sparse = |covered: u64, dead: u64| {
            covered > 0
                && dead > 0
                && ((covered - dead.min(covered)) as f64) < threshold * covered as f64
        };
        let usage = self.pack_usage()?;
        // A lane's active pack that is sparse and holds enough dead bytes to be worth
        // a new pack is closed by its lane (at its next wake-up, within a second); a
        // later pass rewrites it.
        let worth = (self.config.max_pack / 16).clamp(1, ROLL_DEAD_BYTES);
        for (lane, pack) in self.active.iter().enumerate() {
            let pack = pack.load(Ordering::Acquire);
            if let Some((_, covered, dead)) = usage.iter().find(|(n, _, _)| *n == pack)
                && sparse(*covered, *dead)
                && *dead >= worth
                && let Some(roll) = self.roll.get(lane)
            {
                roll.store(true, Ordering::Release);
            }
        }
        let candidates: Vec<(u32, u64)> = usage
            .into_iter()
            .filter(|(n, covered, dead)| !active.contains(n) && sparse(*covered, *dead))
            .map(|(n, covered, _)| (n, covered))
            .collect();
        let mut report = CompactionReport::default();
        let mut throttle = Throttle::new(self.config.compaction.bytes_per_s);
        for (pack, covered) in candidates {
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            match self.compact_pack(pack, covered, &mut throttle) {
                Ok((read, written)) => {
                    report.packs += 1;
                    report.read += read;
                    report.written += written;
                    report.reclaimed += covered.saturating_sub(written);
                }
                // The pack stays as it is (every blob still readable from it); the
                // others are still worth compacting.
                Err(e) if !self.stopping.load(Ordering::Relaxed) => {
                    tracing::error!(pack, error = %e, "could not compact a pack");
                    report.failed += 1;
                }
                Err(e) => return Err(e),
            }
        }
        if report.packs > 0 {
            tracing::info!(
                packs = report.packs,
                read = report.read,
                written = report.written,
                "compacted packs"
            );
        }
        Ok(report)
    }

    /// Rewrites pack `old` (`covered` bytes) without its dead records; returns the
    /// bytes read and written.
    fn compact_pack(
        &self,
        old: u32,
        covered: u64,
        throttle: &mut Throttle,
    ) -> Result<(u64, u64), PackError> {
        // 1. The new pack's number, and the mark that removes it if we never commit.
        let new = self.next_pack.fetch_add(1, Ordering::Relaxed);
        {
            let mut txn = self.index.begin_write().map_err(index_error)?;
            txn.set_durability(Durability::Immediate)
                .map_err(index_error)?;
            {
                let mut meta = txn.open_table(META).map_err(index_error)?;
                let kept = meta
                    .get(NEXT_PACK)
                    .map_err(index_error)?
                    .map_or(0, |v| v.value());
                meta.insert(NEXT_PACK, kept.max(u64::from(new) + 1))
                    .map_err(index_error)?;
                let mut compacting = txn.open_table(COMPACTING).map_err(index_error)?;
                compacting.insert(new, old).map_err(index_error)?;
            }
            txn.commit().map_err(index_error)?;
        }
        let new_path = pack_path(&self.dir, new);
        let outcome = self.copy_live(old, covered, new, &new_path, throttle);
        let (copied, read, written) = match outcome {
            Ok(done) => done,
            Err(e) => {
                // The mark stays: the next open removes whatever was written.
                let _ = remove_if_present(&new_path);
                return Err(e);
            }
        };
        if copied.is_empty() {
            remove_if_present(&new_path)?;
        }
        File::open(&self.dir)?.sync_all()?;

        // 3. Re-point, in one durable commit.
        let mut txn = self.index.begin_write().map_err(index_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(index_error)?;
        let (old_dead, new_dead) = {
            let mut blobs = txn.open_table(BLOBS).map_err(index_error)?;
            let mut new_dead = 0u64;
            for (id, from, to) in &copied {
                let current = blobs
                    .get(id.as_bytes())
                    .map_err(index_error)?
                    .map(|v| Location::decode(v.value()));
                if current == Some(*from) {
                    blobs
                        .insert(id.as_bytes(), to.encode())
                        .map_err(index_error)?;
                } else {
                    new_dead += to.record_bytes();
                }
            }
            let mut packs = txn.open_table(PACKS).map_err(index_error)?;
            packs.remove(old).map_err(index_error)?;
            if !copied.is_empty() {
                packs.insert(new, written).map_err(index_error)?;
            }
            let mut dead = txn.open_table(DEAD).map_err(index_error)?;
            let old_dead = dead
                .remove(old)
                .map_err(index_error)?
                .map_or(0, |v| v.value());
            if new_dead > 0 {
                dead.insert(new, new_dead).map_err(index_error)?;
            }
            let mut compacting = txn.open_table(COMPACTING).map_err(index_error)?;
            compacting.remove(new).map_err(index_error)?;
            let mut retired = txn.open_table(RETIRED).map_err(index_error)?;
            retired.insert(old, 0).map_err(index_error)?;
            (old_dead, new_dead)
        };
        txn.commit().map_err(index_error)?;
        let change = i64::try_from(new_dead).unwrap_or(i64::MAX)
            - i64::try_from(old_dead).unwrap_or(i64::MAX);
        // May dip below zero for a moment: a delete counts its bytes after its commit.
        let dead = self.dead_bytes.fetch_add(change, Ordering::Relaxed) + change;
        metrics::gauge!(DEAD_METRIC).set(dead.max(0) as f64);

        // 4. The old file (readers are turned away first; those holding its handle
        // keep reading the unlinked file), then its mark.
        self.readers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(old, None);
        remove_if_present(&pack_path(&self.dir, old))?;
        File::open(&self.dir)?.sync_all()?;
        let mut txn = self.index.begin_write().map_err(index_error)?;
        // Made durable by the next durable commit; a restart before it removes the
        // (already absent) file again.
        txn.set_durability(Durability::None).map_err(index_error)?;
        txn.open_table(RETIRED)
            .map_err(index_error)?
            .remove(old)
            .map_err(index_error)?;
        txn.commit().map_err(index_error)?;
        Ok((read, written))
    }

    /// Step 2 of a compaction: copies the records of `old` that the index still
    /// names into a new pack file, fdatasynced. Returns each copied blob with its old
    /// and new location, the bytes read and the bytes written.
    #[allow(clippy::type_complexity)]
    fn copy_live(
        &self,
        old: u32,
        covered: u64,
        new: u32,
        new_path: &Path,
        throttle: &mut Throttle,
    ) -> Result<(Vec<(Id, Location, Location)>, u64, u64), PackError> {
        // A file left by an interrupted run under this number cannot exist (numbers
        // are never reused), but start from nothing regardless.
        remove_if_present(new_path)?;
        let mut out = fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(new_path)?;
        let snapshot = self.index.begin_read().map_err(index_error)?;
        let blobs = read_table!(snapshot, BLOBS);
        let source = File::open(pack_path(&self.dir, old))?;
        let mut records = Records::new(io::BufReader::with_capacity(COPY_CHUNK, source), 0);
        let mut copied = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(COPY_CHUNK * 2);
        let mut written = 0u64;
        let counter = metrics::counter!(COMPACTION_METRIC);
        while records.pos < covered {
            if self.stopping.load(Ordering::Relaxed) {
                return Err(PackError::Io(io::Error::other(
                    "the store is closing; compaction abandoned",
                )));
            }
            let at = records.pos;
            let record = match records.next_record()? {
                Ok(record) => record,
                Err(RecordEnd::Clean) => break,
                Err(RecordEnd::Torn(what)) => {
                    return Err(PackError::Damaged {
                        pack: old,
                        offset: at,
                        what,
                    });
                }
            };
            let len = u32::try_from(record.data.len()).unwrap_or(u32::MAX);
            let from = Location {
                pack: old,
                offset: record.offset,
                len,
            };
            let live = match &blobs {
                Some(table) => table
                    .get(record.id.as_bytes())
                    .map_err(index_error)?
                    .is_some_and(|v| Location::decode(v.value()) == from),
                None => false,
            };
            if live {
                let to = Location {
                    pack: new,
                    offset: written + HEADER,
                    len,
                };
                buf.extend_from_slice(MAGIC);
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(record.id.as_bytes());
                buf.extend_from_slice(&record.data);
                written += from.record_bytes();
                copied.push((record.id, from, to));
                if buf.len() >= COPY_CHUNK {
                    out.write_all(&buf)?;
                    buf.clear();
                }
            }
            let consumed = records.pos - at;
            counter.increment(consumed);
            throttle.account(consumed, &self.stopping);
        }
        out.write_all(&buf)?;
        out.sync_data()?;
        Ok((copied, records.pos, written))
    }
}

/// Keeps compaction's reads under a rate.
struct Throttle {
    bytes_per_s: u64,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(bytes_per_s: u64) -> Throttle {
        Throttle {
            bytes_per_s,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `bytes` read and sleeps while ahead of the rate (in short steps, so a
    /// closing store is not held up).
    fn account(&mut self, bytes: u64, stopping: &AtomicBool) {
        if self.bytes_per_s == 0 {
            return;
        }
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_s as f64);
        while let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            if ahead.is_zero() || stopping.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(ahead.min(Duration::from_millis(50)));
        }
    }
}

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
    core: Arc<Core>,
    /// This packer's lane (its slot in [`Core::active`]).
    lane: usize,
    active: u32,
    file: File,
    /// Bytes in the active pack.
    len: u64,
    /// Since when index commits have not been made durable.
    dirty_since: Option<Instant>,
}

impl Packer {
    fn run(mut self, queue: mpsc::Receiver<Request>) {
        loop {
            self.roll_if_asked();
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
        if self.len >= self.core.config.max_pack
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
        let mut payers: Vec<(Id, &str)> = Vec::new();
        let mut end = self.len;
        for (i, request) in batch.iter().enumerate() {
            if held.contains(&i) || !seen.insert(request.id) {
                continue;
            }
            appends[i] = true;
            if let Some(payer) = &request.payer {
                *charges.entry(payer.as_str()).or_default() += request.data.len() as u64;
                payers.push((request.id, payer.as_str()));
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
            .and_then(|()| {
                self.index_batch(&appended_requests, &locations, end, &charges, &payers)
            });
        match appended {
            Ok(()) => {
                self.len = end;
                self.core.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.core
                    .stats
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
        let Ok(txn) = self.core.index.begin_read() else {
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
        payers: &[(Id, &str)],
    ) -> Result<(), PackError> {
        let mut txn = self.core.index.begin_write().map_err(index_error)?;
        // The pack's fdatasync made the blobs durable, and the recovery scan indexes
        // what a crash loses of this commit (it covers only this pack's new tail), so
        // it needs no sync of its own.
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
        for (id, subject) in payers {
            crate::usage::record_payer(&txn, id, subject).map_err(index_error)?;
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
            .core
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

    /// Closes the active pack when compaction asked for it (it is mostly dead), so
    /// compaction can rewrite it.
    fn roll_if_asked(&mut self) {
        let asked = self
            .core
            .roll
            .get(self.lane)
            .is_some_and(|roll| roll.swap(false, Ordering::AcqRel));
        if asked && self.len > 0 {
            // The covered length of the pack being closed is durable before
            // compaction may read it.
            self.make_index_durable();
            if let Err(e) = self.start_next_pack() {
                tracing::error!(error = %e, "could not close a mostly dead active pack");
            }
        }
    }

    fn start_next_pack(&mut self) -> io::Result<()> {
        let next = self.core.next_pack.fetch_add(1, Ordering::Relaxed);
        let file = open_pack(&self.core.dir, next)?;
        self.file = file;
        self.active = next;
        // Only now is the old pack closed to compaction.
        self.core.active[self.lane].store(next, Ordering::Release);
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
            ..PackConfig::default()
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

    fn tombstone(packs: &Packs, index: &Database, ids: &[Id]) -> Vec<(Id, Location)> {
        let mut txn = index.begin_write().expect("txn");
        txn.set_durability(Durability::Immediate)
            .expect("durability");
        let removed = packs.tombstone(&txn, ids).expect("tombstone");
        txn.commit().expect("commit");
        packs.tombstoned(&removed);
        removed
    }

    /// Small packs, one lane, no background compaction.
    fn small_packs() -> PackConfig {
        PackConfig {
            max_blob: 4096,
            max_pack: 20_000,
            lanes: 1,
            compaction: CompactionConfig {
                threshold: 0.5,
                bytes_per_s: 0,
                interval: Duration::ZERO,
            },
        }
    }

    fn blob(i: u32) -> Vec<u8> {
        format!("blob {i} ")
            .repeat(100 + i as usize % 50)
            .into_bytes()
    }

    #[test]
    fn deleted_blobs_stay_deleted_after_reopen_and_are_counted_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = {
            let index = open_index(dir.path()).expect("index");
            let packs =
                Packs::open_with_index(dir.path(), one_lane(), index.clone()).expect("open");
            let (a, b, c) = (
                put(&packs, b"first"),
                put(&packs, b"second"),
                put(&packs, b"third"),
            );
            let removed = tombstone(&packs, &index, &[b, Id::of_content(b"never stored")]);
            assert_eq!(removed.len(), 1, "only the held blob is removed");
            assert_eq!(packs.dead_bytes(), HEADER + 6);
            assert!(packs.locate(&b).expect("locate").is_none());
            // Appends after the delete extend the pack past the dead record.
            put(&packs, b"fourth");
            (a, b, c)
        };
        let packs = Packs::open(dir.path(), one_lane()).expect("reopen");
        assert!(read(&packs, &b).is_none(), "a deleted blob came back");
        assert_eq!(read(&packs, &a).expect("a"), b"first");
        assert_eq!(read(&packs, &c).expect("c"), b"third");
        assert_eq!(packs.dead_bytes(), HEADER + 6, "dead bytes persisted");
        // The record is still in the pack (until compaction), just not indexed.
        assert!(
            verify_packs(dir.path())
                .expect("verify")
                .iter()
                .any(|(id, _)| *id == b)
        );
    }

    #[test]
    fn a_mostly_dead_active_pack_is_closed_and_then_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = open_index(dir.path()).expect("index");
        // Room for every blob in one pack; 12.5 KB of dead bytes are worth closing it.
        let config = PackConfig {
            max_pack: 200_000,
            ..small_packs()
        };
        let packs = Packs::open_with_index(dir.path(), config, index.clone()).expect("open");
        let ids: Vec<Id> = (0..40).map(|i| put(&packs, &blob(i))).collect();
        let first = packs.core.active[0].load(Ordering::Relaxed);
        tombstone(&packs, &index, &ids[1..]);
        // The first pass finds only the active pack sparse: it asks the lane to close it.
        assert_eq!(packs.compact_now().expect("compact").packs, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while packs.core.active[0].load(Ordering::Relaxed) == first {
            assert!(Instant::now() < deadline, "the lane never closed its pack");
            std::thread::sleep(Duration::from_millis(20));
        }
        let report = packs.compact_now().expect("compact again");
        assert_eq!(report.packs, 1, "{report:?}");
        assert_eq!(packs.dead_bytes(), 0);
        assert_eq!(read(&packs, &ids[0]).expect("the live blob"), blob(0));
        assert!(read(&packs, &ids[1]).is_none());
        assert!(
            !packs
                .pack_usage()
                .expect("usage")
                .iter()
                .any(|(n, _, _)| *n == first),
            "the old active pack is gone"
        );
        // A lane whose pack holds too few dead bytes keeps it.
        let before = packs.core.active[0].load(Ordering::Relaxed);
        let more: Vec<Id> = (100..104).map(|i| put(&packs, &blob(i))).collect();
        tombstone(&packs, &index, &more[..1]);
        packs.compact_now().expect("third pass");
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(packs.core.active[0].load(Ordering::Relaxed), before);
    }

    #[test]
    fn compaction_keeps_live_blobs_drops_dead_ones_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = open_index(dir.path()).expect("index");
        let packs = Packs::open_with_index(dir.path(), small_packs(), index.clone()).expect("open");
        let ids: Vec<Id> = (0..60).map(|i| put(&packs, &blob(i))).collect();
        let (dead, live): (Vec<_>, Vec<_>) = ids.iter().enumerate().partition(|(i, _)| i % 4 != 0);
        let dead: Vec<Id> = dead.into_iter().map(|(_, id)| *id).collect();
        let live: Vec<Id> = live.into_iter().map(|(_, id)| *id).collect();
        tombstone(&packs, &index, &dead);
        let dead_before = packs.dead_bytes();
        let records_before = verify_packs(dir.path()).expect("verify").len();

        let report = packs.compact_now().expect("compact");
        assert!(report.packs >= 2, "{report:?}");
        assert!(report.written < report.read);
        assert!(packs.dead_bytes() < dead_before);
        let records_after = verify_packs(dir.path()).expect("verify");
        assert!(records_after.len() < records_before);
        for (i, id) in ids.iter().enumerate() {
            let held = packs.read_blob(id).expect("read");
            if i % 4 == 0 {
                assert_eq!(held.expect("live blob lost"), blob(i as u32));
            } else {
                assert!(held.is_none(), "deleted blob {i} came back");
            }
        }
        // Only the active pack may still hold dead records.
        let active = packs.core.active[0].load(Ordering::Relaxed);
        for (n, covered, dead) in packs.pack_usage().expect("usage") {
            assert!(n == active || (covered - dead) as f64 >= 0.5 * covered as f64);
        }
        // A second pass finds nothing to do.
        assert_eq!(packs.compact_now().expect("again").packs, 0);
        drop(packs);
        drop(index);

        let packs = Packs::open(dir.path(), small_packs()).expect("reopen");
        for id in &live {
            let data = packs
                .read_blob(id)
                .expect("read")
                .expect("live after reopen");
            assert_eq!(Id::of_content(&data), *id);
        }
        for id in &dead {
            assert!(packs.locate(id).expect("locate").is_none(), "resurrected");
        }
    }

    #[test]
    fn interrupted_compactions_are_finished_at_open_without_resurrecting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packs_dir = dir.path().join("packs");
        let (live, dead, old_pack, old_copy) = {
            let index = open_index(dir.path()).expect("index");
            let packs =
                Packs::open_with_index(dir.path(), small_packs(), index.clone()).expect("open");
            let ids: Vec<Id> = (0..40).map(|i| put(&packs, &blob(i))).collect();
            let old_pack = packs.locate(&ids[0]).expect("locate").expect("held").pack;
            let old_copy = fs::read(pack_path(&packs_dir, old_pack)).expect("pack");
            let (dead, live): (Vec<Id>, Vec<Id>) = ids.iter().partition(|id| {
                packs.locate(id).expect("locate").expect("held").pack == old_pack
                    && id.as_bytes()[0] % 3 != 0
            });
            tombstone(&packs, &index, &dead);
            packs.compact_with_threshold(1.0).expect("compact");
            assert!(!pack_path(&packs_dir, old_pack).exists(), "old pack kept");
            (live, dead, old_pack, old_copy)
        };
        // As if killed after the commit but before the old pack was removed: the old
        // file is back, marked retired.
        fs::write(pack_path(&packs_dir, old_pack), &old_copy).expect("restore");
        {
            let index = open_index(dir.path()).expect("index");
            let txn = index.begin_write().expect("txn");
            txn.open_table(RETIRED)
                .expect("retired")
                .insert(old_pack, 0)
                .expect("mark");
            txn.commit().expect("commit");
        }
        // And as if killed while a second compaction wrote its target (a copy of the
        // old pack, deleted records included), before its commit.
        let target = 9_000;
        fs::write(pack_path(&packs_dir, target), &old_copy).expect("target");
        {
            let index = open_index(dir.path()).expect("index");
            let txn = index.begin_write().expect("txn");
            txn.open_table(COMPACTING)
                .expect("compacting")
                .insert(target, old_pack)
                .expect("mark");
            txn.commit().expect("commit");
        }
        let packs = Packs::open(dir.path(), small_packs()).expect("reopen");
        assert!(!pack_path(&packs_dir, old_pack).exists());
        assert!(!pack_path(&packs_dir, target).exists());
        for id in &dead {
            assert!(packs.locate(id).expect("locate").is_none(), "resurrected");
        }
        for id in &live {
            let data = packs.read_blob(id).expect("read").expect("live");
            assert_eq!(Id::of_content(&data), *id);
        }
        // New packs are numbered past every pack the index knows.
        let active = packs.core.active[0].load(Ordering::Relaxed);
        for (n, _, _) in packs.pack_usage().expect("usage") {
            assert!(n < active, "pack {n} not below the active {active}");
        }
    }

    #[test]
    fn reads_racing_compaction_get_the_right_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = open_index(dir.path()).expect("index");
        let packs = Arc::new(
            Packs::open_with_index(dir.path(), small_packs(), index.clone()).expect("open"),
        );
        let ids: Vec<Id> = (0..200).map(|i| put(&packs, &blob(i))).collect();
        let (dead, live): (Vec<Id>, Vec<Id>) = ids.iter().partition(|id| id.as_bytes()[1] % 4 != 0);
        tombstone(&packs, &index, &dead);
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (packs, live, stop) = (packs.clone(), live.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for id in &live {
                            let data = packs.read_blob(id).expect("read").expect("live");
                            assert_eq!(Id::of_content(&data), *id, "wrong bytes");
                            reads += 1;
                        }
                    }
                    reads
                })
            })
            .collect();
        let report = packs.compact_now().expect("compact");
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().expect("reader") > 0);
        }
        assert!(report.packs > 0);
    }

    #[test]
    fn a_damaged_pack_is_left_alone_and_the_others_are_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = open_index(dir.path()).expect("index");
        let packs = Packs::open_with_index(dir.path(), small_packs(), index.clone()).expect("open");
        let ids: Vec<Id> = (0..60).map(|i| put(&packs, &blob(i))).collect();
        let first_pack = packs.locate(&ids[0]).expect("locate").expect("held").pack;
        let dead: Vec<Id> = ids.iter().skip(1).copied().collect();
        tombstone(&packs, &index, &dead);
        // Damage the last record of the first pack (a dead one).
        let path = pack_path(&dir.path().join("packs"), first_pack);
        let mut bytes = fs::read(&path).expect("pack");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).expect("damage");

        let report = packs.compact_now().expect("compact");
        assert_eq!(report.failed, 1, "{report:?}");
        assert!(
            report.packs >= 1,
            "the other packs were not compacted: {report:?}"
        );
        assert!(path.exists(), "the damaged pack was removed");
        let data = packs.read_blob(&ids[0]).expect("read").expect("live");
        assert_eq!(Id::of_content(&data), ids[0]);
    }
}
