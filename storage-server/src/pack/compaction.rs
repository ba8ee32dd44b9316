//! Compaction: rewriting packs whose live bytes fell under a threshold without
//! their dead records, at a bounded read rate, in the crash-safe steps the
//! [module documentation](super) lists.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use invariant_spec::Id;
use redb::{Durability, ReadableDatabase as _, ReadableTable as _};

use super::index::{BLOBS, COMPACTING, DEAD, META, NEXT_PACK, PACKS, RETIRED, index_error};
use super::record::{HEADER, MAGIC, RecordEnd, Records};
use super::{Core, DEAD_METRIC, Location, PackError, pack_path, remove_if_present};

/// Dead bytes an active pack must hold before compaction asks its lane to close it
/// (less with small packs: a sixteenth of [`PackConfig::max_pack`]).
pub(super) const ROLL_DEAD_BYTES: u64 = 1024 * 1024;

/// Compaction writes the new pack in chunks of about this size.
pub(super) const COPY_CHUNK: usize = 1024 * 1024;

/// The counter of pack bytes compaction has read (live and dead records).
pub const COMPACTION_METRIC: &str = "invariant_storage_compaction_bytes_total";

/// Compaction settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompactionConfig {
    /// A closed pack whose live bytes are under this fraction of its bytes is
    /// rewritten (0.5: when more than half is dead). 0 compacts nothing.
    pub threshold: f64,
    /// Most pack bytes compaction reads per second (0: unlimited).
    pub bytes_per_s: u64,
    /// How often the background thread looks for packs to compact; zero: no
    /// background compaction (only [`Packs::compact_now`](super::Packs::compact_now)).
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

impl Core {
    pub(super) fn pack_usage(&self) -> Result<Vec<(u32, u64, u64)>, PackError> {
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

    pub(super) fn compact(&self) -> Result<CompactionReport, PackError> {
        self.compact_below(self.config.compaction.threshold)
    }

    pub(super) fn compact_below(&self, threshold: f64) -> Result<CompactionReport, PackError> {
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
pub(super) struct Throttle {
    bytes_per_s: u64,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    pub(super) fn new(bytes_per_s: u64) -> Throttle {
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
