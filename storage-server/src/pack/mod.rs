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
//!
//! Here: the settings, errors, [`Location`] and [`Packs`] (opening, appending,
//! deleting). Submodules: `index` (the tables), `record` (the record format and
//! [`verify_packs`]), `recovery` (repairs at open), `packer` (the packing lanes),
//! `read` (lookups and reads) and `compaction`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::Duration;

use bytes::Bytes;
use invariant_spec::Id;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, WriteTransaction};

#[macro_use]
mod index;
mod compaction;
mod packer;
mod read;
mod record;
mod recovery;
#[cfg(test)]
mod tests;

pub use compaction::{
    COMPACTION_METRIC, CompactionConfig, CompactionReport, DEFAULT_COMPACTION_BYTES_PER_S,
    DEFAULT_COMPACTION_INTERVAL, DEFAULT_COMPACTION_THRESHOLD,
};
pub use index::open_index;
pub use record::{HEADER, verify_packs};

use index::{BLOBS, DEAD, META, NEXT_PACK, index_error};
use packer::{Packer, Request};
use recovery::{finish_interrupted_compactions, recover};

/// The gauge of dead bytes in packs (deleted blobs' records awaiting compaction).
pub const DEAD_METRIC: &str = "invariant_storage_dead_bytes";

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

fn remove_if_present(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
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
