//! Writing blobs: whole ones (packed when small enough) and streamed ones through
//! a hashed, fsynced temp file renamed into place, each charged to its payer once.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use invariant_spec::Id;
use sha2::{Digest, Sha256};

use super::{BlobStore, Inner, StoreError, TMP_SUFFIX, sync_dir};
use crate::usage::Payer;

impl BlobStore {
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
