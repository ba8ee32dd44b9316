//! The packing threads: each lane batches the writes queued while its previous sync
//! ran, appends them to its active pack, fdatasyncs once and indexes the batch.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use invariant_spec::Id;
use redb::{Durability, ReadableDatabase as _};

use super::index::{BLOBS, PACKS, index_error};
use super::record::{HEADER, append_records};
use super::{Core, Location, PackError, open_pack};

/// At most this many blobs, and about this many bytes, share one sync.
pub(super) const MAX_BATCH: usize = 512;
pub(super) const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Index commits are made durable at most this often.
pub(super) const DURABLE_INDEX_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Request {
    pub(super) id: Id,
    pub(super) data: Bytes,
    /// The subject charged if this request appends the blob.
    pub(super) payer: Option<String>,
    /// Whether this request appended the blob (false: it was already packed).
    pub(super) reply: mpsc::SyncSender<io::Result<bool>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("id", &self.id).finish()
    }
}

/// The packing thread's state.
pub(super) struct Packer {
    pub(super) core: Arc<Core>,
    /// This packer's lane (its slot in [`Core::active`]).
    pub(super) lane: usize,
    pub(super) active: u32,
    pub(super) file: File,
    /// Bytes in the active pack.
    pub(super) len: u64,
    /// Since when index commits have not been made durable.
    pub(super) dirty_since: Option<Instant>,
}

impl Packer {
    pub(super) fn run(mut self, queue: mpsc::Receiver<Request>) {
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
        let appended = append_records(&mut self.file, records.iter().map(|r| (&r.id, &r.data[..])))
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
