//! Deleting blobs from both layouts in one durable index commit, giving each blob's
//! charge back to its payer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::PathBuf;

use invariant_spec::Id;

use super::{BlobStore, DELETED_BLOBS_METRIC, DELETED_BYTES_METRIC, sync_dir};
use crate::pack::Location;

impl BlobStore {
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
}

fn index_io(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("pack index: {e}"))
}
