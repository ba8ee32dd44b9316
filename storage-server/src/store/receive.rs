//! Receiving an upload body into the store ([`BlobStore::receive`]), which picks how
//! from the declared length: bodies the store would pack are collected whole in
//! memory (small ones always, larger ones while a shared memory budget lasts) and
//! stored in one blocking call (one sync per batch of concurrent uploads, see
//! [`crate::pack`]); larger, unknown-length or over-budget bodies stream through a
//! hashed temp file ([`super::BlobWriter`]).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use invariant_spec::Id;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::{BlobStore, StoreError};
use crate::usage::Payer;

/// Uploads with a declared length up to this are collected in memory, then written
/// in one blocking call, without drawing on the memory budget.
pub const INLINE_WRITE: u64 = 256 * 1024;
/// Bytes gathered before handing a chunk to the disk writer.
const WRITE_CHUNK: usize = 256 * 1024;
/// Memory for upload bodies received whole: 256 MiB, counted in KiB.
pub(super) const BUDGET_KIB: usize = 256 * 1024;

/// An upload body as the store reads it: chunks, or the text of a read error.
trait UploadBody: Stream<Item = Result<Bytes, String>> + Send + Unpin {}

impl<S: Stream<Item = Result<Bytes, String>> + Send + Unpin> UploadBody for S {}

/// How an upload body is received.
enum Reception {
    /// Collected in memory, then stored in one blocking call, holding its share of
    /// the memory budget (none when it is small enough not to draw on it).
    Whole(Option<OwnedSemaphorePermit>),
    /// Written to a temp file chunk by chunk as it arrives.
    Streamed,
}

impl BlobStore {
    /// Receives an upload body, verifying it against `expected` when given and
    /// charging `payer` if it stores the blob first; `declared` is the length the
    /// upload announced, if any. Nothing is stored unless the whole body arrived, fits
    /// (the size limit and the payer's quota), and verifies.
    pub async fn receive<S, E>(
        &self,
        body: S,
        declared: Option<u64>,
        expected: Option<Id>,
        payer: Option<&Payer>,
    ) -> Result<Id, StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let limit = self.max_blob_size();
        if let Some(declared) = declared
            && declared > limit
        {
            return Err(StoreError::DeclaredTooLarge { declared, limit });
        }
        // A blob that cannot fit the payer's quota is refused before its body is read,
        // unless it is already held (then it costs nothing).
        if let (Some(payer), Some(len), Some(id)) = (payer, declared, expected)
            && let Err(refused) = self.usage().check(payer, len)
        {
            let store = self.clone();
            if blocking(move || Ok(store.size(&id)?)).await?.is_none() {
                return Err(StoreError::Quota(refused));
            }
        }
        // Read errors are kept as their text ([`StoreError::Body`]).
        let body = body.map(|chunk| chunk.map_err(|e| e.to_string()));
        match self.reception(declared) {
            Reception::Whole(budget) => {
                let stored = self.receive_whole(body, declared, expected, payer).await;
                drop(budget);
                stored
            }
            Reception::Streamed => self.receive_streamed(body, expected, payer).await,
        }
    }

    /// Whole when the declared length is small, or when the store packs a blob of
    /// that length and the memory budget has room for it; streamed otherwise.
    fn reception(&self, declared: Option<u64>) -> Reception {
        let packed_max = self.pack_max_blob() as u64;
        match declared {
            Some(len) if len <= INLINE_WRITE => Reception::Whole(None),
            Some(len) if len <= packed_max => {
                let kib = u32::try_from(len.div_ceil(1024)).unwrap_or(u32::MAX);
                match Arc::clone(&self.inner.receive_budget).try_acquire_many_owned(kib) {
                    Ok(permit) => Reception::Whole(Some(permit)),
                    Err(_) => Reception::Streamed,
                }
            }
            _ => Reception::Streamed,
        }
    }

    /// Collects the body in memory and stores it in one blocking call.
    async fn receive_whole(
        &self,
        mut body: impl UploadBody,
        declared: Option<u64>,
        expected: Option<Id>,
        payer: Option<&Payer>,
    ) -> Result<Id, StoreError> {
        let limit = self.max_blob_size();
        let mut data = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StoreError::Body)?;
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(StoreError::TooLarge { limit });
            }
            data.extend_from_slice(&chunk);
        }
        let data = data.freeze();
        let store = self.clone();
        let payer = payer.cloned();
        blocking(move || store.put_as(data, expected, payer.as_ref())).await
    }

    /// Streams the body to disk: a blocking task hashes and writes what this task
    /// receives, and commits once the body ended.
    async fn receive_streamed(
        &self,
        mut body: impl UploadBody,
        expected: Option<Id>,
        payer: Option<&Payer>,
    ) -> Result<Id, StoreError> {
        let store = self.clone();
        let payer = payer.cloned();
        let (tx, mut rx) = mpsc::channel::<Option<Bytes>>(4);
        let writer = tokio::task::spawn_blocking(move || -> Result<Option<Id>, StoreError> {
            let mut writer = store.writer()?;
            while let Some(message) = rx.blocking_recv() {
                match message {
                    Some(chunk) => writer.write(&chunk)?,
                    None => return writer.commit_as(expected, payer.as_ref()).map(Some),
                }
            }
            Ok(None) // sender gone without the end marker: upload abandoned
        });

        let mut pending = BytesMut::with_capacity(WRITE_CHUNK);
        let mut read_error = None;
        let mut writer_gone = false;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    pending.extend_from_slice(&chunk);
                    if pending.len() >= WRITE_CHUNK
                        && tx.send(Some(pending.split().freeze())).await.is_err()
                    {
                        writer_gone = true;
                        break;
                    }
                }
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
        }
        if read_error.is_none() && !writer_gone {
            if !pending.is_empty() {
                let _ = tx.send(Some(pending.freeze())).await;
            }
            let _ = tx.send(None).await;
        }
        drop(tx);

        match (writer.await?, read_error) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(reason)) => Err(StoreError::Body(reason)),
            (Ok(Some(id)), None) => Ok(id),
            (Ok(None), None) => Err(StoreError::Incomplete),
        }
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}
