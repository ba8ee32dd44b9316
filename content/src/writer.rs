//! Writing content: content-defined chunking (FastCDC 2020), per-block compression
//! and encryption, deduplicated uploads, and block trees.
//!
//! A stream is cut into blocks of [`ChunkConfig::avg_size`] on average (1 MiB by
//! default, between 256 KiB and just under 2 MiB) at points chosen by a rolling hash
//! of the content, so an insertion early in a file changes only the blocks around it
//! and identical regions of different files share blocks. Each block is optionally
//! compressed (kept only when smaller) and encrypted, then stored unless the store
//! already has it. Up to [`WriterConfig::parallelism`] blocks are encoded and
//! uploaded at once, across all files written through one [`Writer`].
//!
//! Block links are collected into block lists (JSON arrays of `{content, size}`)
//! of at most [`WriterConfig::list_limit`] bytes; when a list fills up it is stored
//! (compressed and encrypted like a block) and becomes an entry of a list one level
//! up, so a file of any size ends in one root link. A file of one block is linked
//! directly. Links with transforms carry `expected`, the SHA-256 of the content.
//!
//! # Sparse files
//!
//! [`Writer::write_sparse_file`] reads only the data of a file with holes: each hole of
//! at least one maximum block (found with `SEEK_DATA`/`SEEK_HOLE` on Linux) becomes a
//! run of all-zero blocks of [`ChunkConfig::max_size`] (the last one shorter), encoded,
//! hashed and stored once per file, and the data between holes is chunked as usual.
//! The content read back is byte-for-byte the file's; only the block boundaries
//! differ from a dense write. Such links carry no `expected` (it is optional): the
//! whole-content hash would mean hashing every zero of every hole, which is what this
//! path exists to avoid. Every blob is still verified by its address.
//!
//! # Keys
//!
//! Encryption is AES-256-CBC with PKCS#7 padding; each block and list carries its
//! key and IV in its link, so the root link is the capability to read the file.
//! [`KeyPolicy`] chooses the key:
//!
//! - [`KeyPolicy::RandomPerFile`] (the default when encrypting): a fresh random key
//!   per file. Nothing is shared between files; a file written twice is stored twice.
//! - [`KeyPolicy::Supplied`]: one caller-supplied key for everything written.
//! - [`KeyPolicy::Convergent`]: each block's key is derived from its own content
//!   (HMAC-SHA256 keyed with an optional secret), so equal content encrypts to equal
//!   blobs and dedups across files and users.
//!
//! With every policy the IV is HMAC-SHA256(key, compressed block) cut to 16 bytes:
//! deterministic, so equal blocks under one key are stored once, and unpredictable
//! without the key, as CBC requires. The cost is that storage can see which blocks
//! under one key are equal.
//!
//! **Convergent encryption has a confirmation-of-file risk**: anyone who can guess
//! a block's plaintext (a well-known file, or a form letter differing only in a
//! guessable field) can compute its key and address and so learn that storage holds
//! it, and which files share it. It hides content only from parties who cannot
//! guess it. A convergence secret limits this to parties who know the secret, and
//! dedup to content written with the same secret.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use fastcdc::v2020::AsyncStreamCDC;
use futures_util::StreamExt;
use invariant_spec::Id;
use invariant_spec::content::{Block, ContentLink, Transform};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;

use crate::codec::{self, Compression};
use crate::store::BlockStore;
use crate::{ContentError, ContentResult};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Largest block or list a writer emits before encryption, so that a padded
/// ciphertext stays within 2 MiB.
pub const MAX_BLOCK_SIZE: usize = 2 * MIB - 16;
/// Addresses remembered as stored before the memory is reset.
const KNOWN_LIMIT: usize = 1 << 20;
const IV_LABEL: &[u8] = b"invariant-content aes-256-cbc iv v1\0";
const CONVERGENT_LABEL: &[u8] = b"invariant-content convergent key v1\0";

/// FastCDC block sizes in bytes. Each must be even; `min <= avg <= max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkConfig {
    /// Smallest block (except a stream's last). Default 256 KiB; 64 to 1 MiB.
    pub min_size: usize,
    /// Target average. Default 1 MiB; 256 to 4 MiB.
    pub avg_size: usize,
    /// Largest block. Default and upper bound [`MAX_BLOCK_SIZE`]; at least 1 KiB.
    pub max_size: usize,
}

impl Default for ChunkConfig {
    fn default() -> ChunkConfig {
        ChunkConfig {
            min_size: 256 * KIB,
            avg_size: MIB,
            max_size: MAX_BLOCK_SIZE,
        }
    }
}

/// How encryption keys are chosen (see the module docs).
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KeyPolicy {
    /// A fresh random key per file.
    #[default]
    RandomPerFile,
    /// This key for everything.
    Supplied([u8; 32]),
    /// A key derived from each block's content, keyed with `secret` when given.
    Convergent {
        /// The convergence secret; `None` lets anyone derive keys from content.
        secret: Option<[u8; 32]>,
    },
}

impl fmt::Debug for KeyPolicy {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPolicy::RandomPerFile => f.write_str("RandomPerFile"),
            KeyPolicy::Supplied(_) => f.write_str("Supplied(<redacted>)"),
            KeyPolicy::Convergent { secret } => f
                .debug_struct("Convergent")
                .field("secret", &secret.map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// Writer settings.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Block sizes.
    pub chunking: ChunkConfig,
    /// Largest block-list JSON before it is split into a tree. Default 1 MiB;
    /// 1 KiB to [`MAX_BLOCK_SIZE`].
    pub list_limit: usize,
    /// Compress each block and list with this algorithm. Default none.
    pub compression: Option<Compression>,
    /// Encrypt each block and list with keys chosen by this policy. Default none.
    pub encryption: Option<KeyPolicy>,
    /// Blocks encoded and uploaded at once per [`Writer`]. Default 8.
    pub parallelism: usize,
}

impl Default for WriterConfig {
    fn default() -> WriterConfig {
        WriterConfig {
            chunking: ChunkConfig::default(),
            list_limit: MIB,
            compression: None,
            encryption: None,
            parallelism: 8,
        }
    }
}

impl WriterConfig {
    fn validate(&self) -> ContentResult<()> {
        use fastcdc::v2020::{AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN};
        let ChunkConfig {
            min_size,
            avg_size,
            max_size,
        } = self.chunking;
        let bad = |reason: String| Err(ContentError::Config(reason));
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&min_size)
            || !(AVERAGE_MIN..=AVERAGE_MAX).contains(&avg_size)
            || !(MAXIMUM_MIN..=MAX_BLOCK_SIZE).contains(&max_size)
        {
            return bad(format!(
                "chunk sizes {min_size}/{avg_size}/{max_size} out of range \
                 ({MINIMUM_MIN}..={MINIMUM_MAX}, {AVERAGE_MIN}..={AVERAGE_MAX}, \
                 {MAXIMUM_MIN}..={MAX_BLOCK_SIZE})"
            ));
        }
        if min_size > avg_size || avg_size > max_size {
            return bad("chunk sizes must satisfy min <= avg <= max".into());
        }
        if min_size % 2 + avg_size % 2 + max_size % 2 != 0 {
            return bad("chunk sizes must be even".into());
        }
        if !(KIB..=MAX_BLOCK_SIZE).contains(&self.list_limit) {
            return bad(format!(
                "list limit {} out of range {KIB}..={MAX_BLOCK_SIZE}",
                self.list_limit
            ));
        }
        if self.parallelism == 0 {
            return bad("parallelism must be at least 1".into());
        }
        Ok(())
    }
}

/// The result of writing: the link to the content and its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The content link.
    pub link: ContentLink,
    /// Content length in bytes.
    pub size: u64,
}

/// Writes content to a [`BlockStore`]. Cheap to clone; clones share the limit on
/// blocks in flight and the memory of stored addresses.
#[derive(Clone, Debug)]
pub struct Writer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn BlockStore>,
    config: WriterConfig,
    permits: Arc<Semaphore>,
    /// Addresses this writer stored or found stored, to skip asking again.
    known: Mutex<HashSet<Id>>,
}

/// Key material for one file.
#[derive(Clone)]
enum FileKeys {
    Plain,
    Fixed([u8; 32]),
    Convergent([u8; 32]),
}

impl Writer {
    /// A writer over `store`, or an error naming the invalid setting.
    pub fn new(store: Arc<dyn BlockStore>, config: WriterConfig) -> ContentResult<Writer> {
        config.validate()?;
        Ok(Writer {
            inner: Arc::new(Inner {
                store,
                permits: Arc::new(Semaphore::new(config.parallelism)),
                config,
                known: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The store written to.
    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.inner.store
    }

    /// The settings.
    pub fn config(&self) -> &WriterConfig {
        &self.inner.config
    }

    /// Writes `data`.
    pub async fn write_bytes(&self, data: &[u8]) -> ContentResult<Written> {
        self.write(data).await
    }

    /// Writes the file at `path`.
    pub async fn write_file(&self, path: &Path) -> ContentResult<Written> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(ContentError::io(path))?;
        self.write(file).await.map_err(|e| match e {
            ContentError::Input(source) => ContentError::Io {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Writes everything `input` yields.
    pub async fn write<R: AsyncRead + Unpin + Send>(&self, input: R) -> ContentResult<Written> {
        let mut building = self.start();
        self.chunk(input, &mut building).await?;
        self.finish(building).await
    }

    /// Writes the file at `path`, reading only its data: holes of a maximum block or
    /// more become repeated all-zero blocks, encoded once, and the link carries no
    /// `expected` (see the module docs). A file without such holes, or on a file system
    /// (or platform) that cannot report them, is written exactly as by
    /// [`Writer::write_file`].
    pub async fn write_sparse_file(&self, path: &Path) -> ContentResult<Written> {
        let min_hole = self.inner.config.chunking.max_size as u64;
        let owned = path.to_path_buf();
        let extents = tokio::task::spawn_blocking(move || sparse::extents(&owned, min_hole))
            .await
            .map_err(ContentError::task)?
            .map_err(ContentError::io(path))?;
        if !extents
            .iter()
            .any(|extent| matches!(extent, sparse::Extent::Hole(_)))
        {
            return self.write_file(path).await;
        }
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(ContentError::io(path))?;
        let mut building = self.start();
        // Hashing the holes is what this path avoids; `expected` is optional.
        building.hasher = None;
        let mut zero_blocks = HashMap::new();
        for extent in extents {
            match extent {
                sparse::Extent::Data { start, len } => {
                    file.seek(std::io::SeekFrom::Start(start))
                        .await
                        .map_err(ContentError::io(path))?;
                    let before = building.size;
                    self.chunk((&mut file).take(len), &mut building)
                        .await
                        .map_err(|e| match e {
                            ContentError::Input(source) => ContentError::Io {
                                path: path.to_path_buf(),
                                source,
                            },
                            other => other,
                        })?;
                    if building.size - before != len {
                        return Err(ContentError::Io {
                            path: path.to_path_buf(),
                            source: std::io::ErrorKind::UnexpectedEof.into(),
                        });
                    }
                }
                sparse::Extent::Hole(len) => {
                    self.zeros(len, &mut building, &mut zero_blocks).await?;
                }
            }
        }
        self.finish(building).await
    }

    fn start(&self) -> Building {
        Building {
            keys: self.file_keys(),
            tree: Tree::new(self.inner.config.list_limit),
            pending: VecDeque::new(),
            size: 0,
            hasher: Some(Sha256::new()),
        }
    }

    /// Cuts `input` into content-defined blocks and adds them to `building`.
    async fn chunk<R: AsyncRead + Unpin + Send>(
        &self,
        input: R,
        building: &mut Building,
    ) -> ContentResult<()> {
        let config = &self.inner.config;
        let ChunkConfig {
            min_size,
            avg_size,
            max_size,
        } = config.chunking;
        let mut chunker = AsyncStreamCDC::new(input, min_size, avg_size, max_size);
        let chunks = chunker.as_stream();
        futures_util::pin_mut!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| ContentError::Input(e.into()))?;
            if let Some(hasher) = &mut building.hasher {
                hasher.update(&chunk.data);
            }
            building.size += chunk.data.len() as u64;
            let permit = self.permit().await?;
            let keys = building.keys.clone();
            building
                .pending
                .push_back(self.spawn_block(chunk.data, keys, permit));
            // Finish the oldest blocks first: the list must keep content order.
            while building.pending.len() >= config.parallelism {
                self.finish_oldest(building).await?;
            }
        }
        Ok(())
    }

    /// Adds `len` zero bytes to `building` as maximum-size zero blocks, each distinct
    /// block size encoded and stored once (remembered in `cache`).
    async fn zeros(
        &self,
        len: u64,
        building: &mut Building,
        cache: &mut HashMap<usize, Block>,
    ) -> ContentResult<()> {
        // Blocks already cut come first.
        while !building.pending.is_empty() {
            self.finish_oldest(building).await?;
        }
        let max = self.inner.config.chunking.max_size;
        let mut left = len;
        while left > 0 {
            let size = usize::try_from(left).map_or(max, |left| left.min(max));
            let block = match cache.get(&size) {
                Some(block) => block.clone(),
                None => {
                    let _permit = self.permit().await?;
                    let content = self
                        .store_encoded(vec![0; size], building.keys.clone())
                        .await?;
                    let block = Block {
                        content,
                        size: size as u64,
                    };
                    cache.insert(size, block.clone());
                    block
                }
            };
            self.push(&mut building.tree, 0, block, &building.keys)
                .await?;
            left -= size as u64;
            building.size += size as u64;
        }
        Ok(())
    }

    /// Finishes every block, closes the tree and returns the root link.
    async fn finish(&self, mut building: Building) -> ContentResult<Written> {
        if building.size == 0 {
            // Empty content is one empty block.
            let permit = self.permit().await?;
            let keys = building.keys.clone();
            building
                .pending
                .push_back(self.spawn_block(Vec::new(), keys, permit));
        }
        while !building.pending.is_empty() {
            self.finish_oldest(&mut building).await?;
        }
        let Building {
            keys,
            tree,
            size,
            hasher,
            ..
        } = building;
        let root = self.finish_tree(tree, &keys).await?;
        let mut link = root.content;
        if !link.transforms.is_empty() {
            link.expected = hasher.map(|hasher| Id::from_bytes(hasher.finalize().into()));
        }
        Ok(Written { link, size })
    }

    fn file_keys(&self) -> FileKeys {
        match &self.inner.config.encryption {
            None => FileKeys::Plain,
            Some(KeyPolicy::RandomPerFile) => FileKeys::Fixed(rand::random()),
            Some(KeyPolicy::Supplied(key)) => FileKeys::Fixed(*key),
            Some(KeyPolicy::Convergent { secret }) => {
                FileKeys::Convergent(secret.unwrap_or([0; 32]))
            }
        }
    }

    async fn permit(&self) -> ContentResult<OwnedSemaphorePermit> {
        self.inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ContentError::Task("writer permits closed".into()))
    }

    /// Encodes and stores one block on its own task.
    fn spawn_block(
        &self,
        data: Vec<u8>,
        keys: FileKeys,
        permit: OwnedSemaphorePermit,
    ) -> AbortOnDropHandle<ContentResult<Block>> {
        let writer = self.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let _permit = permit;
            let size = data.len() as u64;
            let content = writer.store_encoded(data, keys).await?;
            Ok(Block { content, size })
        }))
    }

    async fn finish_oldest(&self, building: &mut Building) -> ContentResult<()> {
        if let Some(task) = building.pending.pop_front() {
            let block = task.await.map_err(ContentError::task)??;
            self.push(&mut building.tree, 0, block, &building.keys)
                .await?;
        }
        Ok(())
    }

    /// Compresses, encrypts, hashes (on the blocking pool) and stores `data`;
    /// returns its link.
    async fn store_encoded(&self, data: Vec<u8>, keys: FileKeys) -> ContentResult<ContentLink> {
        let compression = self.inner.config.compression;
        let (address, payload, transforms) =
            tokio::task::spawn_blocking(move || encode(data, compression, &keys))
                .await
                .map_err(ContentError::task)??;
        self.store_blob(address, payload).await?;
        Ok(ContentLink {
            transforms,
            ..ContentLink::new(address)
        })
    }

    /// Stores a blob unless this writer or the store already has it.
    async fn store_blob(&self, address: Id, payload: Bytes) -> ContentResult<()> {
        if self.known().contains(&address) {
            return Ok(());
        }
        let store = &self.inner.store;
        let failed = |source| ContentError::Store { address, source };
        if !store.has(address).await.map_err(failed)? {
            store.put(address, payload).await.map_err(failed)?;
        }
        let mut known = self.known();
        if known.len() >= KNOWN_LIMIT {
            known.clear();
        }
        known.insert(address);
        Ok(())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<Id>> {
        self.inner
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `blocks` as one block list; returns the entry that links to it.
    async fn store_list(&self, blocks: Vec<Block>, keys: &FileKeys) -> ContentResult<Block> {
        let size = blocks.iter().map(|b| b.size).sum();
        let json = serde_json::to_vec(&blocks).map_err(|e| ContentError::Task(e.to_string()))?;
        // Lists count against the blocks in flight too. This cannot deadlock: the
        // permits held elsewhere belong to spawned tasks that finish on their own.
        let _permit = self.permit().await?;
        let mut content = self.store_encoded(json, keys.clone()).await?;
        content.transforms.push(Transform::Blocks);
        Ok(Block { content, size })
    }

    /// Adds `block` to `level` of the tree, storing full lists on the way up.
    async fn push(
        &self,
        tree: &mut Tree,
        level: usize,
        block: Block,
        keys: &FileKeys,
    ) -> ContentResult<()> {
        let mut carry = Some((level, block));
        while let Some((level, block)) = carry.take() {
            if tree.levels.len() <= level {
                tree.levels.resize_with(level + 1, Level::default);
            }
            let entry_len = serde_json::to_vec(&block)
                .map_err(|e| ContentError::Task(e.to_string()))?
                .len();
            let current = &mut tree.levels[level];
            if !current.blocks.is_empty() && current.json_len + 1 + entry_len > tree.limit {
                let full = std::mem::take(current);
                current.add(block, entry_len);
                let list = self.store_list(full.blocks, keys).await?;
                carry = Some((level + 1, list));
            } else {
                current.add(block, entry_len);
            }
        }
        Ok(())
    }

    /// Closes every level bottom-up; returns the root entry.
    async fn finish_tree(&self, mut tree: Tree, keys: &FileKeys) -> ContentResult<Block> {
        let mut level = 0;
        loop {
            let top = level + 1 >= tree.levels.len();
            let mut blocks = tree
                .levels
                .get_mut(level)
                .map(|l| std::mem::take(&mut l.blocks))
                .unwrap_or_default();
            let closed = match blocks.len() {
                0 if top => return Err(ContentError::Task("empty block tree".into())),
                0 => None,
                1 => blocks.pop(),
                _ => Some(self.store_list(blocks, keys).await?),
            };
            match closed {
                Some(root) if top => return Ok(root),
                // A single entry moves up as is: lists may mix depths.
                Some(block) => self.push(&mut tree, level + 1, block, keys).await?,
                None => {}
            }
            level += 1;
        }
    }
}

/// One file being written: its keys, tree, blocks in flight, length and hash.
struct Building {
    keys: FileKeys,
    tree: Tree,
    pending: VecDeque<AbortOnDropHandle<ContentResult<Block>>>,
    size: u64,
    /// SHA-256 of the content so far; `None` when `expected` is not computed.
    hasher: Option<Sha256>,
}

/// Finding the holes of a file.
mod sparse {
    use std::path::Path;

    /// A part of a file.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Extent {
        /// Bytes to read, from `start`.
        Data { start: u64, len: u64 },
        /// This many zero bytes that need not be read.
        Hole(u64),
    }

    /// The file at `path` as data and holes of at least `min_hole` bytes, in order;
    /// shorter holes count as data. One data extent (or none, for an empty file) when
    /// the file system cannot report holes.
    pub(super) fn extents(path: &Path, min_hole: u64) -> std::io::Result<Vec<Extent>> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let raw = holes(&file, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let mut at = 0;
        for (start, end) in raw {
            if end - start < min_hole.max(1) {
                continue;
            }
            if start > at {
                out.push(Extent::Data {
                    start: at,
                    len: start - at,
                });
            }
            out.push(Extent::Hole(end - start));
            at = end;
        }
        if len > at {
            out.push(Extent::Data {
                start: at,
                len: len - at,
            });
        }
        Ok(out)
    }

    /// The holes of `file` (`len` bytes long) as `(start, end)` ranges, in order.
    #[cfg(target_os = "linux")]
    fn holes(file: &std::fs::File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
        use nix::errno::Errno;
        use nix::unistd::{Whence, lseek};
        let offset = |at: u64| {
            i64::try_from(at).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        };
        let position = |at: i64| u64::try_from(at).unwrap_or(0);
        let mut holes = Vec::new();
        let mut at = 0u64;
        while at < len {
            let data = match lseek(file, offset(at)?, Whence::SeekData) {
                Ok(found) => position(found).min(len),
                // No data after `at`: the rest is a hole.
                Err(Errno::ENXIO) => len,
                // The file system cannot tell: treat everything as data.
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            if data > at {
                holes.push((at, data));
            }
            if data >= len {
                break;
            }
            at = match lseek(file, offset(data)?, Whence::SeekHole) {
                Ok(found) => position(found).min(len).max(data + 1),
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
        }
        Ok(holes)
    }

    /// Holes cannot be found on this platform: none are reported.
    #[cfg(not(target_os = "linux"))]
    fn holes(_file: &std::fs::File, _len: u64) -> std::io::Result<Vec<(u64, u64)>> {
        Ok(Vec::new())
    }
}

/// Block lists under construction, one per tree level (0 = links to data blocks).
struct Tree {
    limit: usize,
    levels: Vec<Level>,
}

impl Tree {
    fn new(limit: usize) -> Tree {
        Tree {
            limit,
            levels: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Level {
    blocks: Vec<Block>,
    /// Length of `blocks` as a JSON array.
    json_len: usize,
}

impl Level {
    fn add(&mut self, block: Block, entry_len: usize) {
        self.json_len = if self.blocks.is_empty() {
            2 + entry_len
        } else {
            self.json_len + 1 + entry_len
        };
        self.blocks.push(block);
    }
}

/// Compresses (when smaller) and encrypts `data`; returns the address, the stored
/// bytes and the transforms that undo the encoding, in reading order.
fn encode(
    data: Vec<u8>,
    compression: Option<Compression>,
    keys: &FileKeys,
) -> ContentResult<(Id, Bytes, Vec<Transform>)> {
    let mut payload = data;
    let mut transforms = Vec::new();
    if let Some(algorithm) = compression {
        let packed = algorithm
            .compress(&payload)
            .map_err(|e| ContentError::Task(format!("compression failed: {e}")))?;
        if packed.len() < payload.len() {
            payload = packed;
            transforms.push(Transform::decompress(algorithm.wire_name()));
        }
    }
    let key = match keys {
        FileKeys::Plain => None,
        FileKeys::Fixed(key) => Some(*key),
        FileKeys::Convergent(secret) => Some(codec::derive(secret, CONVERGENT_LABEL, &payload)),
    };
    if let Some(key) = key {
        let derived = codec::derive(&key, IV_LABEL, &payload);
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&derived[..16]);
        payload = codec::encrypt(&key, &iv, &payload);
        transforms.insert(0, Transform::aes_256_cbc(&key, &iv));
    }
    let address = Id::of_content(&payload);
    Ok((address, Bytes::from(payload), transforms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::Reader;
    use crate::store::MemoryStore;

    fn small(parallelism: usize) -> WriterConfig {
        WriterConfig {
            chunking: ChunkConfig {
                min_size: 256,
                avg_size: 1024,
                max_size: 4096,
            },
            list_limit: 1024,
            parallelism,
            ..WriterConfig::default()
        }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[cfg(unix)]
    /// A file of `len` bytes holding `parts` (offset, bytes) and zeros elsewhere, written
    /// so that the zeros are holes; returns the same content as one buffer.
    fn sparse_file(path: &Path, len: u64, parts: &[(u64, Vec<u8>)]) -> Vec<u8> {
        use std::os::unix::fs::FileExt as _;
        let file = std::fs::File::create(path).expect("create");
        let mut dense = vec![0; len as usize];
        for (offset, bytes) in parts {
            file.write_all_at(bytes, *offset).expect("write");
            dense[*offset as usize..*offset as usize + bytes.len()].copy_from_slice(bytes);
        }
        file.set_len(len).expect("extend");
        dense
    }

    #[cfg(unix)]
    #[test]
    fn extents_list_data_and_long_holes_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sparse");
        let block = 64 * 1024;
        sparse_file(
            &path,
            40 * block,
            &[(0, vec![1; 10]), (20 * block, vec![2; 10])],
        );
        let extents = sparse::extents(&path, 4 * block).expect("extents");
        if cfg!(target_os = "linux") {
            // Data at 0 and 20 blocks (each within one file system block), holes between.
            assert_eq!(extents.len(), 4, "{extents:?}");
            assert!(matches!(extents[0], sparse::Extent::Data { start: 0, .. }));
            assert!(matches!(extents[1], sparse::Extent::Hole(_)));
            assert!(matches!(extents[3], sparse::Extent::Hole(_)));
        }
        let total: u64 = extents
            .iter()
            .map(|e| match e {
                sparse::Extent::Data { len, .. } | sparse::Extent::Hole(len) => *len,
            })
            .sum();
        assert_eq!(total, 40 * block);
        // A minimum hole longer than the file's holes leaves one data extent.
        assert_eq!(
            sparse::extents(&path, 40 * block).expect("extents"),
            vec![sparse::Extent::Data {
                start: 0,
                len: 40 * block
            }]
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sparse_files_read_back_identical_without_an_expected_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sparse");
        let data = pseudo_random(5_000, 3);
        let dense = sparse_file(
            &path,
            300_000,
            &[(0, pseudo_random(10_000, 1)), (100_000, data.clone())],
        );
        let store = Arc::new(MemoryStore::new());
        let reader = Reader::new(store.clone());
        for encryption in [
            None,
            Some(KeyPolicy::RandomPerFile),
            Some(KeyPolicy::Convergent { secret: None }),
        ] {
            let config = WriterConfig {
                encryption: encryption.clone(),
                ..small(3)
            };
            let writer = Writer::new(store.clone(), config).expect("writer");
            let written = writer.write_sparse_file(&path).await.expect("write");
            assert_eq!(written.size, 300_000);
            let back = reader
                .read_to_vec(&written.link, u64::MAX)
                .await
                .expect("read");
            assert!(back == dense, "{encryption:?}");
            if cfg!(target_os = "linux") {
                assert_eq!(written.link.expected, None, "holes are not hashed");
            }
            let range = reader.read_range(&written.link, 99_990, 20);
            let range: Vec<Bytes> = range.map(|c| c.expect("chunk")).collect().await;
            assert_eq!(range.concat(), dense[99_990..100_010]);
        }
        // A file without holes is written exactly as write_file writes it.
        let solid = dir.path().join("solid");
        std::fs::write(&solid, &data).expect("write");
        let writer = Writer::new(store.clone(), small(2)).expect("writer");
        assert_eq!(
            writer.write_sparse_file(&solid).await.expect("sparse path"),
            writer.write_file(&solid).await.expect("plain path")
        );
        // As is an empty file.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").expect("write");
        assert_eq!(
            writer.write_sparse_file(&empty).await.expect("sparse path"),
            writer.write_file(&empty).await.expect("plain path")
        );
    }

    #[tokio::test]
    async fn every_blob_respects_the_limits() {
        let store = Arc::new(MemoryStore::new());
        for parallelism in [1, 3, 8] {
            let writer = Writer::new(store.clone(), small(parallelism)).expect("writer");
            let content = pseudo_random(120_000, parallelism as u64);
            let written = writer.write_bytes(&content).await.expect("write");
            let back = Reader::new(store.clone())
                .read_to_vec(&written.link, u64::MAX)
                .await
                .expect("read");
            assert!(back == content, "parallelism {parallelism}");
        }
        let mut lists = 0;
        for address in store.addresses() {
            let blob = store.get(address).await.expect("get").expect("held");
            assert!(blob.len() <= 4096, "blob of {}", blob.len());
            if let Ok(list) = serde_json::from_slice::<Vec<Block>>(&blob) {
                lists += 1;
                assert!(blob.len() <= 1024, "list of {} bytes", blob.len());
                assert!(list.len() >= 2, "lists hold at least two entries");
            }
        }
        assert!(lists > 10, "{lists} lists");
    }

    #[tokio::test]
    async fn keys_follow_the_policy() {
        let store = Arc::new(MemoryStore::new());
        let content = pseudo_random(10_000, 5);
        let key_of = |written: &Written| match written.link.transforms.first() {
            Some(Transform::Decipher(d)) => d.key.clone(),
            other => panic!("encrypted root expected, got {other:?}"),
        };
        let write = |policy: KeyPolicy| {
            let store = store.clone();
            let content = content.clone();
            async move {
                let config = WriterConfig {
                    encryption: Some(policy),
                    ..small(4)
                };
                let writer = Writer::new(store, config).expect("writer");
                writer.write_bytes(&content).await.expect("write")
            }
        };
        let a = write(KeyPolicy::RandomPerFile).await;
        let b = write(KeyPolicy::RandomPerFile).await;
        assert_ne!(key_of(&a), key_of(&b));
        let supplied = write(KeyPolicy::Supplied([9; 32])).await;
        assert_eq!(key_of(&supplied), hex::encode([9u8; 32]));
        let plain = write(KeyPolicy::Convergent { secret: None }).await;
        let secret = write(KeyPolicy::Convergent {
            secret: Some([1; 32]),
        })
        .await;
        assert_eq!(plain, write(KeyPolicy::Convergent { secret: None }).await);
        assert_ne!(key_of(&plain), key_of(&secret), "the secret changes keys");
        // No stored blob contains the plaintext's first bytes.
        for address in store.addresses() {
            let blob = store.get(address).await.expect("get").expect("held");
            assert!(!blob.windows(32).any(|w| w == &content[..32]));
        }
        assert!(!format!("{:?}", KeyPolicy::Supplied([9; 32])).contains('9'));
    }
}
