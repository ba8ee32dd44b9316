//! Reading content links as streams: whole content with every transform applied and
//! `expected` verified, or a byte range that fetches only the blocks it overlaps.
//!
//! Memory stays bounded whatever the content size: blobs are fetched one at a time
//! plus [`ReaderConfig::prefetch`] ahead per block list being expanded, decryption
//! and decompression are incremental, and only block lists (bounded by
//! [`ReaderConfig::max_list_size`]) are held whole. Every blob comes from a
//! [`BlockStore`], which verifies it against its address.
//!
//! A range read can skip blocks only for links whose last transform is `Blocks` (the
//! block list's `size`s locate the range). Otherwise the content is decoded from its
//! start and the bytes before the range are dropped. `expected` is checked only when
//! a link is read to its end, which a range read does for the blocks it reads whole.
//!
//! Slot links must be resolved by the caller; `primary` hints are ignored (use a
//! [`crate::StorageSet`] to read from several servers).

use std::sync::Arc;

use async_stream::try_stream;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream, StreamExt, TryStreamExt, stream};
use invariant_spec::Id;
use invariant_spec::content::{self as wire, Block, ContentLink, Transform};
use sha2::{Digest, Sha256};
use tokio_util::task::AbortOnDropHandle;

use crate::codec::{self, Compression};
use crate::store::{BlockStore, StoreError};
use crate::{ContentError, ContentResult, ContentStream};

/// Reader settings.
#[derive(Clone, Debug)]
pub struct ReaderConfig {
    /// Blocks fetched ahead of the one being streamed, per block list. Default 4.
    pub prefetch: usize,
    /// Largest block list, after its own transforms, held in memory. Default 16 MiB.
    pub max_list_size: u64,
    /// Deepest block tree followed. Default 32.
    pub max_depth: usize,
}

impl Default for ReaderConfig {
    fn default() -> ReaderConfig {
        ReaderConfig {
            prefetch: 4,
            max_list_size: 16 * 1024 * 1024,
            max_depth: 32,
        }
    }
}

/// Reads content links from a [`BlockStore`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Reader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn BlockStore>,
    config: ReaderConfig,
}

type Ctx = Arc<Inner>;

impl Reader {
    /// A reader over `store` with default settings.
    pub fn new(store: Arc<dyn BlockStore>) -> Reader {
        Reader::with_config(store, ReaderConfig::default())
    }

    /// A reader over `store` with `config` (a zero prefetch is read as 1).
    pub fn with_config(store: Arc<dyn BlockStore>, mut config: ReaderConfig) -> Reader {
        config.prefetch = config.prefetch.max(1);
        Reader {
            inner: Arc::new(Inner { store, config }),
        }
    }

    /// The store read from.
    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.inner.store
    }

    /// Streams the whole content of `link`. The stream ends with an error if any blob
    /// is missing or corrupt, a transform fails, or the content does not match
    /// `expected`.
    pub fn read(&self, link: &ContentLink) -> ContentStream {
        let opening = open(self.inner.clone(), link.clone(), 0);
        Box::pin(stream::once(opening).try_flatten())
    }

    /// Streams `length` bytes of the content of `link` from `offset` (fewer when the
    /// content ends first).
    pub fn read_range(&self, link: &ContentLink, offset: u64, length: u64) -> ContentStream {
        let end = offset.saturating_add(length);
        if offset >= end {
            return Box::pin(stream::empty());
        }
        let opening = open_range(self.inner.clone(), link.clone(), offset, end, 0);
        Box::pin(stream::once(opening).try_flatten())
    }

    /// Reads the whole content of `link` into memory, failing with
    /// [`ContentError::TooLarge`] beyond `limit` bytes.
    pub async fn read_to_vec(&self, link: &ContentLink, limit: u64) -> ContentResult<Vec<u8>> {
        collect_limited(self.read(link), limit, link.address, "content").await
    }

    /// The block list of `link` when its last transform is `Blocks`, else `None`.
    pub async fn block_list(&self, link: &ContentLink) -> ContentResult<Option<Vec<Block>>> {
        check_link(link)?;
        let Some((Transform::Blocks, before)) = link.transforms.split_last() else {
            return Ok(None);
        };
        let raw = fetch(&self.inner, link.address).await?;
        let data = apply(&self.inner, link.address, before, once(raw), 0)?;
        read_list(&self.inner, data, link.address).await.map(Some)
    }

    /// The content length when the block list tells it (links whose last transform
    /// is `Blocks`), else `None`.
    pub async fn size(&self, link: &ContentLink) -> ContentResult<Option<u64>> {
        let Some(blocks) = self.block_list(link).await? else {
            return Ok(None);
        };
        let total = blocks
            .iter()
            .try_fold(0u64, |sum, b| sum.checked_add(b.size))
            .ok_or_else(|| malformed(link.address, "block list", "sizes overflow"))?;
        Ok(Some(total))
    }
}

fn once(data: Bytes) -> ContentStream {
    Box::pin(stream::iter([Ok(data)]))
}

fn malformed(address: Id, what: &'static str, reason: &str) -> ContentError {
    ContentError::Malformed {
        address,
        what,
        reason: reason.to_string(),
    }
}

/// Fetches one blob, mapping store outcomes to errors naming the address.
async fn fetch(ctx: &Ctx, address: Id) -> ContentResult<Bytes> {
    match ctx.store.get(address).await {
        Ok(Some(data)) => Ok(data),
        Ok(None) => Err(ContentError::Missing { address }),
        Err(StoreError::Corrupt { actual }) => Err(ContentError::Corrupt { address, actual }),
        Err(source) => Err(ContentError::Store { address, source }),
    }
}

/// Rejects what this reader cannot read before anything is fetched.
fn check_link(link: &ContentLink) -> ContentResult<()> {
    let address = link.address;
    if link.slot {
        return Err(ContentError::SlotLink { address });
    }
    for transform in &link.transforms {
        match transform {
            Transform::Blocks => {}
            Transform::Decipher(d) if d.algorithm == wire::AES_256_CBC => {}
            Transform::Decipher(d) => {
                return Err(ContentError::UnsupportedAlgorithm {
                    address,
                    kind: wire::KIND_DECIPHER,
                    algorithm: d.algorithm.clone(),
                });
            }
            Transform::Decompress(d) => {
                if Compression::from_wire(&d.algorithm).is_none() {
                    return Err(ContentError::UnsupportedAlgorithm {
                        address,
                        kind: wire::KIND_DECOMPRESS,
                        algorithm: d.algorithm.clone(),
                    });
                }
            }
            other => {
                return Err(ContentError::UnsupportedTransform {
                    address,
                    kind: other.kind().unwrap_or("<none>").to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Fetches the blob of `link` and returns its content as a lazy stream.
fn open(
    ctx: Ctx,
    link: ContentLink,
    depth: usize,
) -> BoxFuture<'static, ContentResult<ContentStream>> {
    async move {
        check_link(&link)?;
        if depth > ctx.config.max_depth {
            return Err(malformed(link.address, "block tree", "too deep"));
        }
        let raw = fetch(&ctx, link.address).await?;
        let data = apply(&ctx, link.address, &link.transforms, once(raw), depth)?;
        Ok(match link.expected {
            Some(expected) => verify_expected(data, expected, link.address),
            None => data,
        })
    }
    .boxed()
}

/// Like [`open`], for the bytes `start..end` of the content.
fn open_range(
    ctx: Ctx,
    link: ContentLink,
    start: u64,
    end: u64,
    depth: usize,
) -> BoxFuture<'static, ContentResult<ContentStream>> {
    async move {
        check_link(&link)?;
        let address = link.address;
        let Some((Transform::Blocks, before)) = link.transforms.split_last() else {
            // No list to locate the range: decode from the start.
            let whole = open(ctx, link, depth).await?;
            return Ok(slice(whole, start, end));
        };
        if depth > ctx.config.max_depth {
            return Err(malformed(address, "block tree", "too deep"));
        }
        let raw = fetch(&ctx, address).await?;
        let list = apply(&ctx, address, before, once(raw), depth)?;
        let blocks = read_list(&ctx, list, address).await?;
        let mut wanted = Vec::new();
        let mut position = 0u64;
        for block in blocks {
            let block_start = position;
            position = position
                .checked_add(block.size)
                .ok_or_else(|| malformed(address, "block list", "sizes overflow"))?;
            if position <= start || block.size == 0 {
                continue;
            }
            if block_start >= end {
                break;
            }
            let from = start.saturating_sub(block_start);
            let to = end.min(position) - block_start;
            let part = (from > 0 || to < block.size).then_some((from, to));
            wanted.push((block, part));
        }
        Ok(concat_children(ctx, wanted, depth + 1))
    }
    .boxed()
}

/// Applies `transforms` in order to `data`.
fn apply(
    ctx: &Ctx,
    address: Id,
    transforms: &[Transform],
    mut data: ContentStream,
    depth: usize,
) -> ContentResult<ContentStream> {
    for transform in transforms {
        data = match transform {
            Transform::Blocks => expand_blocks(ctx.clone(), data, address, depth + 1),
            Transform::Decipher(d) => codec::decipher(data, d, address)?,
            Transform::Decompress(d) => {
                let algorithm = Compression::from_wire(&d.algorithm).ok_or_else(|| {
                    ContentError::UnsupportedAlgorithm {
                        address,
                        kind: wire::KIND_DECOMPRESS,
                        algorithm: d.algorithm.clone(),
                    }
                })?;
                codec::decompress(data, algorithm, address)
            }
            other => {
                return Err(ContentError::UnsupportedTransform {
                    address,
                    kind: other.kind().unwrap_or("<none>").to_string(),
                });
            }
        };
    }
    Ok(data)
}

/// The `Blocks` transform: `data` is a block list; streams the blocks' contents.
fn expand_blocks(ctx: Ctx, data: ContentStream, address: Id, depth: usize) -> ContentStream {
    Box::pin(try_stream! {
        let blocks = read_list(&ctx, data, address).await?;
        let wanted = blocks.into_iter().map(|b| (b, None)).collect();
        let mut children = concat_children(ctx, wanted, depth);
        while let Some(chunk) = children.next().await {
            yield chunk?;
        }
    })
}

async fn read_list(ctx: &Ctx, data: ContentStream, address: Id) -> ContentResult<Vec<Block>> {
    let bytes = collect_limited(data, ctx.config.max_list_size, address, "block list").await?;
    serde_json::from_slice(&bytes).map_err(|e| malformed(address, "block list", &e.to_string()))
}

/// Streams the contents of `blocks` in order (each whole, or the given part), opening
/// up to `prefetch` of them ahead on their own tasks.
fn concat_children(
    ctx: Ctx,
    blocks: Vec<(Block, Option<(u64, u64)>)>,
    depth: usize,
) -> ContentStream {
    let prefetch = ctx.config.prefetch;
    let opened = stream::iter(blocks)
        .map(move |(block, part)| {
            let ctx = ctx.clone();
            let task = tokio::spawn(async move {
                let link = block.content.clone();
                let address = link.address;
                let (data, length) = match part {
                    None => (open(ctx, link, depth).await?, block.size),
                    Some((from, to)) => (open_range(ctx, link, from, to, depth).await?, to - from),
                };
                Ok::<_, ContentError>(exact_length(data, address, length))
            });
            AbortOnDropHandle::new(task).map(|joined| joined.map_err(ContentError::task)?)
        })
        .buffered(prefetch);
    Box::pin(opened.try_flatten())
}

/// Passes `data` through, failing when it is not exactly `length` bytes long.
fn exact_length(mut data: ContentStream, address: Id, length: u64) -> ContentStream {
    Box::pin(try_stream! {
        let mut seen = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > length {
                Err(ContentError::SizeMismatch { address, declared: length, actual: seen, more: "+" })?;
            }
            yield chunk;
        }
        if seen != length {
            Err(ContentError::SizeMismatch { address, declared: length, actual: seen, more: "" })?;
        }
    })
}

/// Passes `data` through, failing at the end unless it hashes to `expected`.
fn verify_expected(mut data: ContentStream, expected: Id, address: Id) -> ContentStream {
    Box::pin(try_stream! {
        let mut hasher = Sha256::new();
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            yield chunk;
        }
        let actual = Id::from_bytes(hasher.finalize().into());
        if actual != expected {
            Err(ContentError::ExpectedMismatch { address, expected, actual })?;
        }
    })
}

/// The bytes `start..end` of `data`; stops reading once past `end`.
fn slice(mut data: ContentStream, start: u64, end: u64) -> ContentStream {
    Box::pin(try_stream! {
        let mut position = 0u64;
        while position < end {
            let Some(chunk) = data.next().await else { break };
            let chunk = chunk?;
            let chunk_start = position;
            position += chunk.len() as u64;
            if position <= start {
                continue;
            }
            // Both bounds lie within the chunk, so they fit in usize.
            let from = usize::try_from(start.saturating_sub(chunk_start)).unwrap_or(0);
            let to = usize::try_from(end.min(position) - chunk_start).unwrap_or(chunk.len());
            yield chunk.slice(from..to);
        }
    })
}

/// Collects a stream, failing beyond `limit` bytes.
pub(crate) async fn collect_limited(
    mut data: impl Stream<Item = ContentResult<Bytes>> + Unpin,
    limit: u64,
    address: Id,
    what: &'static str,
) -> ContentResult<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(ContentError::TooLarge {
                address,
                what,
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use crate::writer::{ChunkConfig, Writer, WriterConfig};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts gets.
    #[derive(Debug, Default)]
    struct Counted {
        inner: MemoryStore,
        gets: AtomicUsize,
    }

    impl BlockStore for Counted {
        fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get(address)
        }
        fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
            self.inner.has(address)
        }
        fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.put(address, data)
        }
    }

    fn small() -> WriterConfig {
        WriterConfig {
            chunking: ChunkConfig {
                min_size: 256,
                avg_size: 1024,
                max_size: 4096,
            },
            list_limit: 1024,
            ..WriterConfig::default()
        }
    }

    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn streaming_fetches_lazily_and_within_prefetch() {
        let store = Arc::new(Counted::default());
        let writer = Writer::new(store.clone(), small()).expect("writer");
        let content = pseudo_random(200_000);
        let written = writer.write_bytes(&content).await.expect("write");
        let total = store.inner.len();
        let reader = Reader::with_config(
            store.clone(),
            ReaderConfig {
                prefetch: 2,
                ..ReaderConfig::default()
            },
        );
        let mut stream = reader.read(&written.link);
        assert_eq!(
            store.gets.load(Ordering::SeqCst),
            0,
            "nothing before the first poll"
        );
        let first = stream.next().await.expect("chunk").expect("ok");
        assert_eq!(first[..], content[..first.len()]);
        let early = store.gets.load(Ordering::SeqCst);
        // One path down the tree, plus at most `prefetch` entries per level.
        assert!(
            early <= 12 && early * 4 < total,
            "fetched {early} of {total}"
        );
        let mut all = first.to_vec();
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk.expect("ok"));
        }
        assert!(all == content);
        assert_eq!(store.gets.load(Ordering::SeqCst), total, "each blob once");
        assert_eq!(
            reader.size(&written.link).await.expect("size"),
            Some(200_000)
        );
    }

    #[tokio::test]
    async fn trees_deeper_than_the_limit_are_refused() {
        let store = Arc::new(MemoryStore::new());
        let writer = Writer::new(store.clone(), small()).expect("writer");
        let written = writer
            .write_bytes(&pseudo_random(100_000))
            .await
            .expect("write");
        let reader = Reader::with_config(
            store.clone(),
            ReaderConfig {
                max_depth: 1,
                ..ReaderConfig::default()
            },
        );
        let err = reader
            .read_to_vec(&written.link, u64::MAX)
            .await
            .expect_err("too deep");
        assert!(
            matches!(
                err,
                ContentError::Malformed {
                    what: "block tree",
                    ..
                }
            ),
            "{err}"
        );
        let err = Reader::new(store)
            .read_to_vec(&written.link, 1000)
            .await
            .expect_err("too large");
        assert!(
            matches!(err, ContentError::TooLarge { limit: 1000, .. }),
            "{err}"
        );
    }
}
