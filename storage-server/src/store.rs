//! The blob store: one file per blob under `<data-dir>/blobs/ab/cd/<remaining 60 hex>`.
//!
//! **A file at a blob's path always holds exactly the bytes that hash to its name.**
//! Writes go to `<data-dir>/blobs/tmp/` (same filesystem) while being hashed, are
//! fsynced, verified against the expected address, renamed into place, and the
//! destination directory is fsynced before the write is acknowledged. Temp files left
//! by a crash are removed by [`BlobStore::open`]. Readers never see partial blobs.
//!
//! A write may name a [`Payer`]: once the blob's address is known and it is not yet
//! held, its size is reserved against the payer's quota, and charged when this write
//! is the one that stores it ([`crate::usage`]).
//!
//! Deleting ([`BlobStore::delete_many`]) removes packed blobs from the pack index and
//! blob files from the tree, gives each blob's charge back to its recorded payer and
//! updates the totals; see [`BlobStore::delete_many`] for the order of its steps.
//! Listing ([`BlobStore::page`]) merges both layouts in ascending address order.
//!
//! All methods block; async callers run them on the blocking pool.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use invariant_spec::Id;
use sha2::{Digest, Sha256};

use crate::pack::{Location, PackConfig, Packs};
use crate::usage::{Payer, QuotaExceeded, Usage};

/// Why a write did not store a blob.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The blob exceeds the store's size limit; nothing was stored.
    #[error("blob exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: u64,
    },
    /// The bytes do not hash to the address they were sent for; nothing was stored.
    #[error("content hashes to {actual}, not to {expected}")]
    HashMismatch {
        /// The address the client named.
        expected: Id,
        /// The SHA-256 of the bytes received.
        actual: Id,
    },
    /// Storing the blob would take its payer past its quota; nothing was stored.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// The filesystem failed.
    #[error("storage i/o: {0}")]
    Io(#[from] io::Error),
}

/// Blobs on disk, addressed by SHA-256. Cloning shares the store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    tmp: PathBuf,
    max_blob_size: u64,
    packs: Option<Arc<Packs>>,
    usage: Arc<Usage>,
    /// The pack index database (also the usage tables), for deletions' commits.
    index: Arc<redb::Database>,
    /// Held while checking whether a blob file exists and renaming one into place, so
    /// exactly one of concurrent writers of a blob stores (and is charged for) it;
    /// deletions hold it too.
    installing: Mutex<()>,
    /// Blobs and bytes held ([`BlobStore::totals`]).
    totals: Totals,
}

/// How many blobs, of how many bytes, the store holds: counted at open, then kept up
/// to date by every write that stores a blob for the first time and every deletion. A
/// blob held both as a
/// file and in a pack (the same content written at once streamed and whole) counts
/// twice, as it takes the space twice.
#[derive(Debug, Default)]
struct Totals {
    blobs: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl Totals {
    fn add(&self, len: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let blobs = self.blobs.fetch_add(1, Relaxed) + 1;
        let bytes = self.bytes.fetch_add(len, Relaxed) + len;
        metrics::gauge!(BLOBS_METRIC).set(blobs as f64);
        metrics::gauge!(BYTES_METRIC).set(bytes as f64);
    }

    fn remove(&self, count: u64, len: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let sub = |atomic: &std::sync::atomic::AtomicU64, n: u64| {
            let before = atomic
                .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)))
                .unwrap_or(0);
            before.saturating_sub(n)
        };
        let blobs = sub(&self.blobs, count);
        let bytes = sub(&self.bytes, len);
        metrics::gauge!(BLOBS_METRIC).set(blobs as f64);
        metrics::gauge!(BYTES_METRIC).set(bytes as f64);
    }
}

/// The gauge of blobs held.
pub const BLOBS_METRIC: &str = "invariant_storage_blobs";
/// The gauge of bytes held (blob contents).
pub const BYTES_METRIC: &str = "invariant_storage_bytes";
/// The counter of blobs deleted.
pub const DELETED_BLOBS_METRIC: &str = "invariant_storage_deleted_blobs_total";
/// The counter of bytes of deleted blobs.
pub const DELETED_BYTES_METRIC: &str = "invariant_storage_deleted_bytes_total";

const TMP_DIR: &str = "tmp";
const TMP_SUFFIX: &str = ".partial";

impl BlobStore {
    /// Opens (creating if needed) the store under `data_dir/blobs`, removing temp files
    /// left by an earlier crash, with packs for blobs written whole under `data_dir/packs`.
    pub fn open(data_dir: &Path, max_blob_size: u64) -> io::Result<BlobStore> {
        BlobStore::open_with(data_dir, max_blob_size, PackConfig::default())
    }

    /// [`BlobStore::open`] with explicit pack settings (`max_blob` 0: no packs). The
    /// pack index database (which also keeps usage per subject) is opened either way.
    pub fn open_with(
        data_dir: &Path,
        max_blob_size: u64,
        pack: PackConfig,
    ) -> io::Result<BlobStore> {
        let root = data_dir.join("blobs");
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp)?;
        let mut removed = 0usize;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed temp files left by an interrupted write");
            sync_dir(&tmp)?;
        }
        let index = crate::pack::open_index(data_dir)?;
        let usage = Arc::new(Usage::open(Arc::clone(&index))?);
        let packs = if pack.max_blob > 0 {
            Some(Arc::new(Packs::open_with_index(
                data_dir,
                pack,
                Arc::clone(&index),
            )?))
        } else {
            None
        };
        let store = BlobStore {
            inner: Arc::new(Inner {
                root,
                tmp,
                max_blob_size,
                packs,
                usage,
                index,
                installing: Mutex::new(()),
                totals: Totals::default(),
            }),
        };
        // Counted before the store takes writes, so the totals stay exact.
        let (mut blobs, mut bytes) = (0u64, 0u64);
        for item in store.list() {
            let (_, len) = item?;
            blobs += 1;
            bytes += len;
        }
        store
            .inner
            .totals
            .blobs
            .store(blobs, std::sync::atomic::Ordering::Relaxed);
        store
            .inner
            .totals
            .bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(store)
    }

    /// `(blobs, bytes)` held, and sets the gauges [`BLOBS_METRIC`] and [`BYTES_METRIC`]
    /// (call once the metrics recorder is installed; writes keep them current).
    pub fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let blobs = self.inner.totals.blobs.load(Relaxed);
        let bytes = self.inner.totals.bytes.load(Relaxed);
        metrics::gauge!(BLOBS_METRIC).set(blobs as f64);
        metrics::gauge!(BYTES_METRIC).set(bytes as f64);
        (blobs, bytes)
    }

    /// The largest blob written to packs (0 when packing is off).
    pub fn pack_max_blob(&self) -> usize {
        self.inner.packs.as_ref().map_or(0, |p| p.config().max_blob)
    }

    /// The packs, if packing is on.
    pub fn packs(&self) -> Option<&Arc<Packs>> {
        self.inner.packs.as_ref()
    }

    /// The largest blob accepted, in bytes.
    pub fn max_blob_size(&self) -> u64 {
        self.inner.max_blob_size
    }

    /// Bytes stored per subject, and quotas.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.inner.usage
    }

    /// Where the blob `id` lives.
    pub fn blob_path(&self, id: &Id) -> PathBuf {
        let hex = id.to_string();
        self.inner
            .root
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(&hex[4..])
    }

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

    /// Starts writing a blob. Dropping the writer without committing discards it.
    pub fn writer(&self) -> io::Result<BlobWriter> {
        let name = format!(
            "{:016x}{:016x}{TMP_SUFFIX}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let tmp_path = self.inner.tmp.join(name);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)?;
        Ok(BlobWriter {
            store: Arc::downgrade(&self.inner),
            limit: self.inner.max_blob_size,
            file: Some(file),
            tmp_path,
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Stores `data` (verifying it against `expected` when given) and returns its address.
    pub fn put(&self, data: Bytes, expected: Option<Id>) -> Result<Id, StoreError> {
        self.put_as(data, expected, None)
    }

    /// [`BlobStore::put`] charged to `payer`: refused with [`StoreError::Quota`] when
    /// the blob is not yet held and does not fit the payer's quota.
    pub fn put_as(
        &self,
        data: Bytes,
        expected: Option<Id>,
        payer: Option<&Payer>,
    ) -> Result<Id, StoreError> {
        if data.len() as u64 > self.inner.max_blob_size {
            return Err(StoreError::TooLarge {
                limit: self.inner.max_blob_size,
            });
        }
        if let Some(packs) = &self.inner.packs
            && data.len() <= packs.config().max_blob
        {
            let actual = Id::of_content(&data);
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(StoreError::HashMismatch { expected, actual });
            }
            if packs.locate(&actual)?.is_some() {
                return Ok(actual);
            }
            let path = self.blob_path(&actual);
            if fs::metadata(&path).is_ok() {
                // Stored as a file, possibly by a writer still finishing: make sure
                // its directory entry is durable before acknowledging.
                sync_dir(path.parent().unwrap_or(&self.inner.root))?;
                return Ok(actual);
            }
            let reservation = match payer {
                Some(payer) => Some(self.inner.usage.reserve(payer, data.len() as u64)?),
                None => None,
            };
            let len = data.len() as u64;
            let appended = packs.put(actual, data, reservation.as_ref().map(|r| r.subject()))?;
            if appended {
                self.inner.totals.add(len);
            }
            // Charged in the index transaction; otherwise dropping releases it.
            if appended && let Some(reservation) = reservation {
                reservation.settle();
            }
            return Ok(actual);
        }
        let mut writer = self.writer()?;
        writer.write(&data)?;
        writer.commit_as(expected, payer)
    }

    /// Every held blob with its size, read lazily from the directory tree (in no
    /// particular order). Files whose names are not blob addresses are skipped.
    pub fn list(&self) -> impl Iterator<Item = io::Result<(Id, u64)>> + Send + 'static {
        BlobList::new(self.inner.root.clone()).chain(PackList {
            packs: self.inner.packs.clone(),
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        })
    }

    /// Up to `limit` held blobs with addresses after `after` (from the start when
    /// `None`), ascending by address, from both layouts (a blob held in both is listed
    /// once).
    pub fn page(&self, after: Option<Id>, limit: usize) -> io::Result<Vec<(Id, u64)>> {
        let files = files_page(&self.inner.root, after, limit)?;
        let packed = match &self.inner.packs {
            Some(packs) => packs.page(after, limit)?,
            None => Vec::new(),
        };
        let mut merged = Vec::with_capacity(limit.min(files.len() + packed.len()));
        let (mut a, mut b) = (files.into_iter().peekable(), packed.into_iter().peekable());
        while merged.len() < limit {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    b.next();
                    a.next()
                }
                (Some(x), Some(y)) if x.0 < y.0 => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => None,
            };
            match next {
                Some(item) => merged.push(item),
                None => break,
            }
        }
        Ok(merged)
    }

    /// Deletes blob `id`; its size when it was held.
    pub fn delete(&self, id: &Id) -> io::Result<Option<u64>> {
        Ok(self.delete_many(&[*id])?.first().map(|(_, len)| *len))
    }

    /// Deletes every held blob of `ids` (repeats count once) and returns each deleted
    /// address with its size, ascending.
    ///
    /// One durable index commit removes the packed ones from the index (counting their
    /// records dead), forgets every deleted blob's payer and takes its size off that
    /// payer's total; then blob files are unlinked and each directory that lost one
    /// is fsynced once. A crash after the commit but before an unlink leaves that file
    /// in place, no longer charged to anyone (deleting it again removes it).
    pub fn delete_many(&self, ids: &[Id]) -> io::Result<Vec<(Id, u64)>> {
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let _installing = self
            .inner
            .installing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut files: Vec<(Id, PathBuf, u64)> = Vec::new();
        for id in &unique {
            let path = self.blob_path(id);
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => files.push((*id, path, meta.len())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut txn = self.inner.index.begin_write().map_err(index_io)?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(index_io)?;
        let packed: Vec<(Id, Location)> = match &self.inner.packs {
            Some(packs) => packs.tombstone(&txn, &unique)?,
            None => Vec::new(),
        };
        let mut sizes: BTreeMap<Id, u64> = BTreeMap::new();
        for (id, location) in &packed {
            sizes.insert(*id, u64::from(location.len));
        }
        for (id, _, len) in &files {
            sizes.entry(*id).or_insert(*len);
        }
        if sizes.is_empty() {
            txn.abort().map_err(index_io)?;
            return Ok(Vec::new());
        }
        let mut releases: HashMap<String, u64> = HashMap::new();
        for (id, len) in &sizes {
            if let Some(subject) = crate::usage::forget_payer(&txn, id).map_err(index_io)? {
                *releases.entry(subject).or_default() += len;
            }
        }
        for (subject, bytes) in &releases {
            crate::usage::uncharge(&txn, subject, *bytes).map_err(index_io)?;
        }
        txn.commit().map_err(index_io)?;
        if let Some(packs) = &self.inner.packs {
            packs.tombstoned(&packed);
        }
        for (subject, bytes) in &releases {
            self.inner.usage.released(subject, *bytes);
        }
        let mut dirs = BTreeSet::new();
        for (_, path, _) in &files {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in &dirs {
            sync_dir(dir)?;
        }
        let copies = (packed.len() + files.len()) as u64;
        let copy_bytes = packed
            .iter()
            .map(|(_, l)| u64::from(l.len))
            .chain(files.iter().map(|(_, _, len)| *len))
            .sum();
        self.inner.totals.remove(copies, copy_bytes);
        let deleted: Vec<(Id, u64)> = sizes.into_iter().collect();
        metrics::counter!(DELETED_BLOBS_METRIC).increment(deleted.len() as u64);
        metrics::counter!(DELETED_BYTES_METRIC).increment(deleted.iter().map(|(_, l)| l).sum());
        Ok(deleted)
    }

    /// Moves the verified temp file `tmp_path` (`len` bytes) into place as blob `id`,
    /// unless the blob is already held; charges `payer` when this call stores it.
    fn install(
        &self,
        tmp_path: &Path,
        id: &Id,
        len: u64,
        payer: Option<&Payer>,
    ) -> Result<(), StoreError> {
        let dest = self.blob_path(id);
        let leaf_dir = dest.parent().unwrap_or(&self.inner.root).to_path_buf();
        if let Some(packs) = &self.inner.packs
            && packs.locate(id)?.is_some()
        {
            // Already durable in a pack.
            fs::remove_file(tmp_path)?;
            return Ok(());
        }
        let reservation = {
            let guard = self
                .inner
                .installing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if fs::metadata(&dest).is_ok() {
                // Already stored (possibly by a concurrent writer still finishing):
                // make sure its directory entry is durable before acknowledging.
                fs::remove_file(tmp_path)?;
                drop(guard);
                sync_dir(&leaf_dir)?;
                return Ok(());
            }
            let reservation = match payer {
                Some(payer) => Some(self.inner.usage.reserve(payer, len)?),
                None => None,
            };
            ensure_dir(&self.inner.root, &leaf_dir)?;
            fs::rename(tmp_path, &dest)?;
            self.inner.totals.add(len);
            reservation
        };
        sync_dir(&leaf_dir)?;
        if let Some(reservation) = reservation {
            // The blob is stored: a failure to record the charge must not fail the
            // write (the charge is then lost).
            match self.inner.usage.persist(id, reservation.subject(), len) {
                Ok(()) => reservation.settle(),
                Err(e) => tracing::error!(
                    subject = reservation.subject(),
                    error = %e,
                    "could not record a blob's charge"
                ),
            }
        }
        Ok(())
    }
}

/// Creates `dir` (at most two levels below `root`) and fsyncs each parent whose
/// entries changed, so a durable blob is never orphaned by a lost directory entry.
fn ensure_dir(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut chain = Vec::new();
    let mut current = Some(dir);
    while let Some(d) = current {
        if d == root || d.is_dir() {
            break;
        }
        chain.push(d.to_path_buf());
        current = d.parent();
    }
    for d in chain.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if let Some(parent) = d.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

fn index_io(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("pack index: {e}"))
}

/// Whether `name` is `len` lowercase hex digits (how blob paths are written).
fn is_lower_hex(name: &str, len: usize) -> bool {
    name.len() == len && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The names in `dir` that are `len` lowercase hex digits, sorted (none when `dir` is
/// absent).
fn hex_names(dir: &Path, len: usize) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(name) = name.to_str()
            && is_lower_hex(name, len)
        {
            names.push(name.to_string());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Up to `limit` blob files after `after`, ascending: walks the shard directories in
/// order, skipping those entirely before `after`.
fn files_page(root: &Path, after: Option<Id>, limit: usize) -> io::Result<Vec<(Id, u64)>> {
    let after_hex = after.map(|a| a.to_string());
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    for first in hex_names(root, 2)? {
        if let Some(a) = &after_hex
            && first.as_str() < &a[..2]
        {
            continue;
        }
        let first_dir = root.join(&first);
        for second in hex_names(&first_dir, 2)? {
            let prefix = format!("{first}{second}");
            if let Some(a) = &after_hex
                && prefix.as_str() < &a[..4]
            {
                continue;
            }
            let leaf = first_dir.join(&second);
            for rest in hex_names(&leaf, 60)? {
                let Ok(id) = Id::parse(&format!("{prefix}{rest}")) else {
                    continue;
                };
                if after.is_some_and(|a| id <= a) {
                    continue;
                }
                match fs::metadata(leaf.join(&rest)) {
                    Ok(meta) if meta.is_file() => out.push((id, meta.len())),
                    Ok(_) => continue,
                    // Deleted since the directory was read.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An in-progress blob write: bytes go to a temp file while being hashed.
#[derive(Debug)]
pub struct BlobWriter {
    /// The store, not kept alive by an unfinished write.
    store: Weak<Inner>,
    limit: u64,
    file: Option<File>,
    tmp_path: PathBuf,
    hasher: Sha256,
    len: u64,
}

impl BlobWriter {
    /// Appends bytes. Fails with [`StoreError::TooLarge`] past the store's limit.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let limit = self.limit;
        self.len += chunk.len() as u64;
        if self.len > limit {
            return Err(StoreError::TooLarge { limit });
        }
        self.hasher.update(chunk);
        match self.file.as_mut() {
            Some(file) => file.write_all(chunk).map_err(StoreError::Io),
            None => Err(StoreError::Io(io::Error::other("writer already finished"))),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the blob durable and visible. With `expected`, refuses (and discards)
    /// content that hashes to anything else.
    pub fn commit(self, expected: Option<Id>) -> Result<Id, StoreError> {
        self.commit_as(expected, None)
    }

    /// [`BlobWriter::commit`] charged to `payer`: refused (and discarded) with
    /// [`StoreError::Quota`] when the blob is not yet held and does not fit the
    /// payer's quota.
    pub fn commit_as(
        mut self,
        expected: Option<Id>,
        payer: Option<&Payer>,
    ) -> Result<Id, StoreError> {
        let actual = Id::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(StoreError::HashMismatch { expected, actual });
        }
        if let Some(file) = self.file.take() {
            file.sync_data()?;
        }
        let inner = self
            .store
            .upgrade()
            .ok_or_else(|| io::Error::other("the blob store was closed during a write"))?;
        BlobStore { inner }.install(&self.tmp_path, &actual, self.len, payer)?;
        // Installed: the temp path no longer exists, nothing for Drop to remove.
        self.tmp_path = PathBuf::new();
        Ok(actual)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        self.file.take();
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// Pages through the packed blobs lazily.
struct PackList {
    packs: Option<Arc<Packs>>,
    after: Option<Id>,
    page: std::vec::IntoIter<(Id, u64)>,
    done: bool,
}

impl Iterator for PackList {
    type Item = io::Result<(Id, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.page.next() {
            return Some(Ok(item));
        }
        if self.done {
            return None;
        }
        let packs = self.packs.as_ref()?;
        match packs.page(self.after, 1000) {
            Ok(page) => {
                self.done = page.len() < 1000;
                self.after = page.last().map(|(id, _)| *id);
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Walks `blobs/ab/cd/*` lazily.
struct BlobList {
    stack: Vec<(fs::ReadDir, String)>,
    pending_error: Option<io::Error>,
}

impl BlobList {
    fn new(root: PathBuf) -> BlobList {
        match fs::read_dir(&root) {
            Ok(rd) => BlobList {
                stack: vec![(rd, String::new())],
                pending_error: None,
            },
            Err(e) => BlobList {
                stack: Vec::new(),
                pending_error: Some(e),
            },
        }
    }
}

impl Iterator for BlobList {
    type Item = io::Result<(Id, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        loop {
            let depth = self.stack.len();
            let (dir, prefix) = self.stack.last_mut()?;
            let entry = match dir.next() {
                None => {
                    self.stack.pop();
                    continue;
                }
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(entry)) => entry,
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            };
            if depth < 3 {
                let is_shard = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
                if file_type.is_dir() && is_shard {
                    let child_prefix = format!("{prefix}{name}");
                    match fs::read_dir(entry.path()) {
                        Ok(rd) => self.stack.push((rd, child_prefix)),
                        Err(e) => return Some(Err(e)),
                    }
                }
                continue;
            }
            if !file_type.is_file() {
                continue;
            }
            let Ok(id) = Id::parse(&format!("{prefix}{name}")) else {
                continue;
            };
            return Some(entry.metadata().map(|m| (id, m.len())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_PACKS: PackConfig = PackConfig {
        max_blob: 0,
        max_pack: 0,
        lanes: 0,
        compaction: crate::pack::CompactionConfig {
            threshold: 0.0,
            bytes_per_s: 0,
            interval: std::time::Duration::ZERO,
        },
    };

    /// A store writing every blob as a file (the file-layout tests).
    fn store(limit: u64) -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open_with(dir.path(), limit, NO_PACKS).expect("open");
        (dir, store)
    }

    #[test]
    fn totals_count_each_stored_blob_once_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let large = PackConfig::default().max_blob + 1;
        {
            let store = BlobStore::open(dir.path(), 4 << 20).expect("open");
            assert_eq!(store.totals(), (0, 0));
            store.put(Bytes::from_static(b"small"), None).expect("put");
            store
                .put(Bytes::from_static(b"small"), None)
                .expect("again");
            store
                .put(Bytes::from(vec![7u8; large]), None)
                .expect("large");
            store
                .put(Bytes::from(vec![7u8; large]), None)
                .expect("large again");
            let mut writer = store.writer().expect("writer");
            writer.write(b"streamed").expect("write");
            writer.commit(None).expect("commit");
            assert_eq!(store.totals(), (3, 5 + large as u64 + 8));
        }
        let store = BlobStore::open(dir.path(), 4 << 20).expect("reopen");
        assert_eq!(store.totals(), (3, 5 + large as u64 + 8), "counted at open");
    }

    #[test]
    fn small_blobs_are_packed_and_large_ones_are_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path(), 4 << 20).expect("open");
        let small = store.put(Bytes::from_static(b"small"), None).expect("put");
        let large_data = vec![7u8; PackConfig::default().max_blob + 1];
        let large = store
            .put(Bytes::from(large_data.clone()), None)
            .expect("put");
        assert!(!store.blob_path(&small).exists());
        assert!(store.blob_path(&large).exists());
        assert_eq!(store.size(&small).expect("size"), Some(5));
        let (mut file, base, len) = store.open_blob(&small).expect("open").expect("held");
        assert!(base > 0);
        let mut read = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(&mut file, len), &mut read).expect("read");
        assert_eq!(read, b"small");

        // The same small content arriving streamed is not stored twice.
        let mut writer = store.writer().expect("writer");
        writer.write(b"small").expect("write");
        assert_eq!(writer.commit(Some(small)).expect("commit"), small);
        assert!(!store.blob_path(&small).exists());

        let mut listed: Vec<_> = store.list().collect::<io::Result<_>>().expect("list");
        listed.sort();
        let mut expected = vec![(small, 5), (large, large_data.len() as u64)];
        expected.sort();
        assert_eq!(listed, expected);

        drop(store);
        let store = BlobStore::open(dir.path(), 4 << 20).expect("reopen");
        assert_eq!(store.size(&small).expect("size"), Some(5));
        assert_eq!(store.list().count(), 2);
    }

    #[test]
    fn put_then_read_back() {
        let (_dir, store) = store(1 << 20);
        let id = store.put(Bytes::from_static(b"hello"), None).expect("put");
        assert_eq!(id, Id::of_content(b"hello"));
        assert_eq!(store.size(&id).expect("size"), Some(5));
        assert_eq!(fs::read(store.blob_path(&id)).expect("read"), b"hello");
        let hex = id.to_string();
        assert!(store.blob_path(&id).ends_with(format!(
            "{}/{}/{}",
            &hex[..2],
            &hex[2..4],
            &hex[4..]
        )));
        // Idempotent.
        assert_eq!(
            store
                .put(Bytes::from_static(b"hello"), Some(id))
                .expect("again"),
            id
        );
    }

    #[test]
    fn wrong_hash_stores_nothing() {
        let (_dir, store) = store(1 << 20);
        let claimed = Id::of_content(b"other");
        let err = store
            .put(Bytes::from_static(b"hello"), Some(claimed))
            .expect_err("mismatch");
        assert!(matches!(err, StoreError::HashMismatch { .. }));
        assert_eq!(store.size(&claimed).expect("size"), None);
        assert_eq!(store.size(&Id::of_content(b"hello")).expect("size"), None);
        assert_eq!(fs::read_dir(&store.inner.tmp).expect("tmp").count(), 0);
    }

    #[test]
    fn too_large_stores_nothing() {
        let (_dir, store) = store(4);
        assert!(matches!(
            store.put(Bytes::from_static(b"hello"), None),
            Err(StoreError::TooLarge { limit: 4 })
        ));
        let mut writer = store.writer().expect("writer");
        writer.write(b"hel").expect("fits");
        assert!(matches!(
            writer.write(b"lo"),
            Err(StoreError::TooLarge { .. })
        ));
        drop(writer);
        assert_eq!(fs::read_dir(&store.inner.tmp).expect("tmp").count(), 0);
        assert_eq!(store.list().count(), 0);
    }

    #[test]
    fn abandoned_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open_with(dir.path(), 100, NO_PACKS).expect("open");
        let mut writer = store.writer().expect("writer");
        writer.write(b"partial").expect("write");
        std::mem::forget(writer); // as if the process died mid-write
        assert_eq!(fs::read_dir(&store.inner.tmp).expect("tmp").count(), 1);
        drop(store);
        let reopened = BlobStore::open(dir.path(), 100).expect("reopen");
        assert_eq!(fs::read_dir(&reopened.inner.tmp).expect("tmp").count(), 0);
    }

    #[test]
    fn list_yields_every_blob_once() {
        let (_dir, store) = store(1 << 20);
        let mut expected = Vec::new();
        for i in 0..50u32 {
            let data = format!("blob {i}").repeat(i as usize + 1);
            let id = store
                .put(Bytes::from(data.clone().into_bytes()), None)
                .expect("put");
            expected.push((id, data.len() as u64));
        }
        // Stray files are ignored.
        fs::write(store.inner.root.join("README"), "x").expect("stray");
        let mut listed: Vec<_> = store.list().collect::<io::Result<_>>().expect("list");
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);
    }

    fn payer(subject: &str) -> Payer {
        Payer {
            subject: subject.to_string(),
            quota: Some(1 << 20),
        }
    }

    /// Packs for blobs up to 100 bytes, no background compaction.
    fn tiny_packs() -> PackConfig {
        PackConfig {
            max_blob: 100,
            lanes: 1,
            compaction: crate::pack::CompactionConfig {
                interval: std::time::Duration::ZERO,
                ..Default::default()
            },
            ..PackConfig::default()
        }
    }

    #[test]
    fn deleting_gives_back_exactly_the_charge_also_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = b"small and packed".to_vec();
        let large = vec![3u8; 500];
        let (small_id, large_id) = {
            let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("open");
            let alice = payer("alice");
            let small_id = store
                .put_as(Bytes::from(small.clone()), None, Some(&alice))
                .expect("small");
            let large_id = store
                .put_as(Bytes::from(large.clone()), None, Some(&alice))
                .expect("large");
            // Bob stores nothing new: he is not charged, and is given nothing back.
            store
                .put_as(Bytes::from(small.clone()), None, Some(&payer("bob")))
                .expect("again");
            assert_eq!(store.usage().used("alice"), 516);
            assert_eq!(store.delete(&small_id).expect("delete"), Some(16));
            assert_eq!(store.usage().used("alice"), 500);
            assert_eq!(store.usage().used("bob"), 0);
            assert_eq!(store.delete(&small_id).expect("again"), None);
            assert_eq!(store.usage().used("alice"), 500, "released twice");
            assert_eq!(store.totals(), (1, 500));
            (small_id, large_id)
        };
        let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("reopen");
        assert_eq!(store.usage().used("alice"), 500);
        assert_eq!(store.size(&small_id).expect("size"), None);
        assert_eq!(store.totals(), (1, 500));
        let deleted = store
            .delete_many(&[large_id, large_id, small_id])
            .expect("delete");
        assert_eq!(deleted, vec![(large_id, 500)]);
        assert!(!store.blob_path(&large_id).exists());
        assert_eq!(store.usage().used("alice"), 0);
        assert_eq!(store.totals(), (0, 0));
        drop(store);
        let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("reopen");
        assert_eq!(store.usage().used("alice"), 0);
    }

    #[test]
    fn a_blob_held_in_both_layouts_is_deleted_from_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("open");
        // Streamed first (a file), then written whole (packed).
        let mut writer = store.writer().expect("writer");
        writer.write(b"twice").expect("write");
        let id = writer.commit(None).expect("commit");
        store
            .packs()
            .expect("packs")
            .put(id, Bytes::from_static(b"twice"), None)
            .expect("pack");
        assert!(store.blob_path(&id).exists());
        assert!(store.packed(&id).expect("packed").is_some());
        assert_eq!(store.delete_many(&[id]).expect("delete"), vec![(id, 5)]);
        assert!(!store.blob_path(&id).exists());
        assert!(store.packed(&id).expect("packed").is_none());
        assert_eq!(store.size(&id).expect("size"), None);
    }

    #[test]
    fn pages_merge_both_layouts_in_address_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("open");
        let mut expected = Vec::new();
        for i in 0..40u32 {
            // Even: packed (short); odd: files (over 100 bytes).
            let data = if i % 2 == 0 {
                format!("packed {i}").into_bytes()
            } else {
                format!("file {i} ").repeat(20).into_bytes()
            };
            let id = store.put(Bytes::from(data.clone()), None).expect("put");
            expected.push((id, data.len() as u64));
        }
        expected.sort();
        assert!(
            store
                .blob_path(&expected.iter().find(|(_, l)| *l > 100).expect("file").0)
                .exists()
        );
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let page = store.page(after, 7).expect("page");
            assert!(page.len() <= 7);
            listed.extend(page.iter().copied());
            if page.len() < 7 {
                break;
            }
            after = page.last().map(|(id, _)| *id);
        }
        assert_eq!(listed, expected);
        // From the middle.
        let middle = expected[19].0;
        assert_eq!(
            store.page(Some(middle), 100).expect("page"),
            expected[20..].to_vec()
        );
        assert!(
            store
                .page(Some(expected[39].0), 5)
                .expect("page")
                .is_empty()
        );
    }
}
