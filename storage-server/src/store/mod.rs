//! The blob store: one file per blob under `<data-dir>/blobs/ab/cd/<remaining 60 hex>`.
//!
//! **A file at a blob's path always holds exactly the bytes that hash to its name.**
//! Writes go to `<data-dir>/blobs/tmp/` (same filesystem) while being hashed, are
//! fsynced, verified against the expected address, renamed into place, and the
//! destination directory is fsynced before the write is acknowledged. Temp files left
//! by a crash are removed by [`BlobStore::open`]. Readers never see partial blobs.
//!
//! A write may name a [`Payer`](crate::usage::Payer): once the blob's address is
//! known and it is not yet held, its size is reserved against the payer's quota, and
//! charged when this write is the one that stores it ([`crate::usage`]).
//!
//! Deleting ([`BlobStore::delete_many`]) removes packed blobs from the pack index and
//! blob files from the tree, gives each blob's charge back to its recorded payer and
//! updates the totals; see [`BlobStore::delete_many`] for the order of its steps.
//! Listing ([`BlobStore::page`]) merges both layouts in ascending address order.
//!
//! The store decides the layout on both paths: [`BlobStore::read`] finds a blob in a
//! pack or as a file and reads a requested range of it, and [`BlobStore::receive`]
//! takes an upload body whole (packed when small enough) or streams it to a file.
//!
//! All methods but [`BlobStore::receive`] block; async callers run them on the
//! blocking pool. `receive` is async and runs its blocking steps there itself.
//!
//! Here: [`BlobStore`], its opening, totals and [`StoreError`]. Submodules: `read`,
//! `receive`, `write` ([`BlobWriter`], installing files), `list` and `delete`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use invariant_spec::Id;

use crate::pack::{PackConfig, Packs};
use crate::usage::{QuotaExceeded, Usage};

mod delete;
mod list;
mod read;
mod receive;
#[cfg(test)]
mod tests;
mod write;

pub use read::{BlobBody, BlobRead, INLINE_READ, Opened};
pub use receive::INLINE_WRITE;
pub use write::BlobWriter;

/// Why the store did not store (or read) a blob.
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
    /// An upload declared a length over the store's size limit; nothing was read.
    #[error("blob of {declared} bytes exceeds the limit of {limit} bytes")]
    DeclaredTooLarge {
        /// The length the upload declared.
        declared: u64,
        /// The configured limit in bytes.
        limit: u64,
    },
    /// An upload's body could not be read; nothing was stored.
    #[error("could not read body: {0}")]
    Body(String),
    /// An upload's body ended before it was complete; nothing was stored.
    #[error("upload ended early")]
    Incomplete,
    /// The filesystem failed.
    #[error("storage i/o: {0}")]
    Io(#[from] io::Error),
    /// A blocking step of an upload failed to run to its end.
    #[error("blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
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
    /// KiB of upload bodies that may be held in memory at once ([`BlobStore::receive`]).
    receive_budget: Arc<tokio::sync::Semaphore>,
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
                receive_budget: Arc::new(tokio::sync::Semaphore::new(receive::BUDGET_KIB)),
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
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
