//! Shared test harness: an in-process storage server on 127.0.0.1:0, a store wrapper
//! that counts and records operations, seeded data and small chunking settings.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use invariant_content::{
    BlockStore, ChunkConfig, ContentResult, ContentStream, Reader, StoreError, WriterConfig,
    Written,
};
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::{Id, StorageClient};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use storage_server::StorageConfig;
use tempfile::TempDir;

/// A running storage server and a client for it.
pub struct TestStorage {
    pub dir: TempDir,
    pub server: Server,
    pub client: StorageClient,
}

impl TestStorage {
    pub async fn start() -> TestStorage {
        let dir = tempfile::tempdir().expect("create temp data dir");
        let options = ServerOptions::ephemeral(Role::Storage, dir.path());
        let ctx = ServerContext::prepare(options).expect("prepare server context");
        // Every blob in its own file: tests corrupt blob files.
        let config = StorageConfig {
            pack: storage_server::pack::PackConfig {
                max_blob: 0,
                ..Default::default()
            },
            ..StorageConfig::default()
        };
        let server = storage_server::start(&ctx, config)
            .await
            .expect("start storage server");
        let client = StorageClient::new(server.url()).expect("storage client");
        TestStorage {
            dir,
            server,
            client,
        }
    }

    /// Where the server keeps blob `address`.
    pub fn blob_path(&self, address: &Id) -> PathBuf {
        let hex = address.to_string();
        self.dir
            .path()
            .join("blobs")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(&hex[4..])
    }

    /// Overwrites the stored bytes of `address` behind the server's back.
    pub fn corrupt(&self, address: &Id) {
        let path = self.blob_path(address);
        let mut bytes = std::fs::read(&path).expect("blob file exists");
        let first = bytes.first_mut().expect("blob is not empty");
        *first ^= 0xff;
        make_writable(&path);
        std::fs::write(&path, bytes).expect("overwrite blob");
    }

    pub async fn stop(self) {
        self.server.stop().await.expect("stop server");
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
}

/// Wraps a store, counting operations and recording the addresses fetched and put.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn BlockStore>,
    pub gets: AtomicUsize,
    pub hass: AtomicUsize,
    pub puts: AtomicUsize,
    pub fetched: Mutex<Vec<Id>>,
}

impl Counting {
    pub fn new(inner: Arc<dyn BlockStore>) -> Arc<Counting> {
        Arc::new(Counting {
            inner,
            gets: AtomicUsize::new(0),
            hass: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            fetched: Mutex::new(Vec::new()),
        })
    }

    pub fn reset(&self) {
        self.gets.store(0, Ordering::SeqCst);
        self.hass.store(0, Ordering::SeqCst);
        self.puts.store(0, Ordering::SeqCst);
        self.fetched.lock().expect("lock").clear();
    }

    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    pub fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    pub fn fetched(&self) -> Vec<Id> {
        self.fetched.lock().expect("lock").clone()
    }
}

impl BlockStore for Counting {
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.fetched.lock().expect("lock").push(address);
        self.inner.get(address)
    }
    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.hass.fetch_add(1, Ordering::SeqCst);
        self.inner.has(address)
    }
    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(address, data)
    }
}

/// `len` seeded bytes; `compressible` data is words from a small vocabulary.
pub fn data(seed: u64, len: usize, compressible: bool) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    if !compressible {
        let mut out = vec![0u8; len];
        rng.fill_bytes(&mut out);
        return out;
    }
    const WORDS: [&str; 8] = [
        "block ", "tree ", "content ", "link ", "storage ", "slot ", "hash ", "blob\n",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
    }
    out.truncate(len);
    out
}

/// Chunking small enough to build deep trees from kilobytes.
pub fn small_config() -> WriterConfig {
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

pub async fn collect(stream: ContentStream) -> ContentResult<Vec<u8>> {
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    Ok(chunks.concat())
}

/// Every leaf of the block tree of `written`: its offset, size and the addresses
/// (lists, then the leaf) a range read of it fetches.
pub async fn leaves(reader: &Reader, written: &Written) -> Vec<(u64, u64, Vec<Id>)> {
    let mut out = Vec::new();
    let mut stack = vec![(written.link.clone(), 0u64, Vec::<Id>::new(), written.size)];
    while let Some((link, offset, path, size)) = stack.pop() {
        let mut path = path;
        path.push(link.address);
        match reader.block_list(&link).await.expect("block list") {
            Some(blocks) => {
                let mut position = offset;
                let mut children = Vec::new();
                for block in blocks {
                    children.push((block.content, position, path.clone(), block.size));
                    position += block.size;
                }
                stack.extend(children.into_iter().rev());
            }
            None => out.push((offset, size, path)),
        }
    }
    out
}
