//! # files-server
//!
//! The files role (`/files/`, `spec/files.md`): file trees stored as content links
//! (`spec/content.md`), presented as a POSIX-like file system addressed by integer
//! node numbers. Clients mount a tree (a directory link, or a slot whose value is
//! one), walk and change it, and sync the changes back into new immutable blobs and,
//! for slot mounts, into the slot.
//!
//! - [`fs`]: the operations (mount, lookup, list, read, write, create, rename, ...).
//! - [`table`]: the node table, node lifetime and change tracking.
//! - [`file`](mod@file): file contents — clean links, or local changes in memory or temp files.
//! - [`sync`]: writing changes out and committing slot mounts with compare-and-swap.
//! - [`peers`]: finding storage and slots servers (explicit urls, else the broker).
//! - [`http`]: routes, handlers and the error → status mapping.
//!
//! **Durability point: a sync that answered 200.** Changes live only in this server —
//! in memory and in temporary files under `<data-dir>/dirty/` — until a sync writes
//! them out: `PUT /files/sync`, `POST /files/unmount/:node`, the periodic sync
//! (every [`FilesConfig::sync_interval`], default 30 s) and one last sync at graceful
//! shutdown. After a 200 every block and directory blob of the synced trees is on the
//! storage servers (which make blobs durable before answering), and each slot mount's
//! slot holds the new root (the slots server commits before answering). **A crash
//! before that loses every change since the last successful sync**: node numbers and
//! local changes are not persisted, and `dirty/` is emptied at the next start. For a
//! writable mount of a plain (non-slot) link, the synced root link is known only to
//! this server until a client asks for it (`GET /files/content/:root` or unmount);
//! that client must record it. `GET /files/content/:node` writes the node's pending
//! changes to storage too, but does not update a slot.
//!
//! **Slot mounts.** A link with `slot: true` mounts the tree the slot points at.
//! `none`-signature slots are writable. `ed25519` slots are writable when this server
//! holds the slot's key ([`FilesConfig::slot_keys`], `--slot-key <file>` of hex
//! seeds); without a key — and for `sha256:rsa` slots, whose keys this server does not
//! take — the mount is read-only (`writable=true` explicitly asked is 403). **The
//! server signs with those keys for whoever changes the tree**, so [`start`] refuses
//! slot keys in open mode: with `--auth-root-key` every mutating route (mount, write,
//! sync, ...) needs a token holding `files:write`, and only such callers get
//! signatures.
//!
//! **Limits.** No file grows past [`FilesConfig::max_file_size`] (`--max-file-size`,
//! default 64 GiB): a write, size change or anything else that would make a file
//! larger is refused with 413 and changes nothing (see [`FileSystem::write`] for a body
//! without a declared length). Files with holes (a write far past the end, or a
//! zero-extension) are kept sparse on disk, and sync writes each hole of a block or
//! more as repeated all-zero blocks hashed once, so its cost follows the data written,
//! not the file's size ([`Writer::write_sparse_file`]). Each sync
//! updates the slot with compare-and-swap from the value this server last saw; when
//! it loses (409), the mount is reloaded from the slot, **its unsynced changes are
//! discarded** and its nodes other than the root are forgotten, and the sync answers
//! 409 naming the slot (see [`sync`]). Slot mounts do not follow changes others make
//! to the slot until such a conflict or a new mount.
//!
//! **Nodes** are numbered per server run and forgotten at unmount and restart (see
//! [`table`]). Permissions recorded in entries are reported in `info` but only the
//! mount's writability is enforced.
//!
//! [`start`] runs the server in-process (tests use it on port 0); `main.rs` wraps it.

pub mod error;
pub mod file;
pub mod fs;
pub mod http;
pub mod peers;
pub mod sync;
pub mod table;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use invariant_content::{ChunkConfig, Reader, Writer, WriterConfig};
use invariant_runtime::{Server, ServerContext};
use invariant_spec::slots::SlotSigner;
use tokio_util::sync::CancellationToken;

pub use crate::error::{FilesError, FilesResult, SlotConflict};
use crate::file::{Budget, FileEnv};
pub use crate::fs::FileSystem;
use crate::peers::{PeerStore, Peers, Use};

/// Folder under the data directory holding temporary files of changed files.
pub const SPILL_DIR: &str = "dirty";
/// Default period of the automatic sync: 30 s.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Default bytes of changed file content held in memory, server-wide: 64 MiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 64 * 1024 * 1024;
/// Default largest changed file kept in memory: 1 MiB.
pub const DEFAULT_SPILL_THRESHOLD: u64 = 1024 * 1024;
/// Default number of storage servers each block is written to: 2.
pub const DEFAULT_WRITE_COPIES: usize = 2;
/// Default largest file: 64 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 * 1024 * 1024 * 1024;
/// Longest the last sync at shutdown may take.
pub const FINAL_SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Ed25519 secret seeds for slot mounts, one per slot (the slot id is the public key).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SlotKeys(pub Vec<[u8; 32]>);

impl fmt::Debug for SlotKeys {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SlotKeys({} keys)", self.0.len())
    }
}

impl SlotKeys {
    /// Parses a key file: one 64-hex-character ed25519 seed per line; blank lines and
    /// lines starting with `#` are skipped.
    pub fn parse(text: &str) -> FilesResult<SlotKeys> {
        let mut seeds = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || {
                FilesError::Config(format!(
                    "slot key line {}: expected 64 hex characters (an ed25519 seed)",
                    number + 1
                ))
            };
            let bytes = hex::decode(line).map_err(|_| bad())?;
            seeds.push(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| bad())?);
        }
        Ok(SlotKeys(seeds))
    }

    /// Reads and parses a key file.
    pub fn read(path: &Path) -> FilesResult<SlotKeys> {
        let text =
            std::fs::read_to_string(path).map_err(FilesError::io("reading the slot key file"))?;
        SlotKeys::parse(&text)
    }
}

/// Files-specific settings.
#[derive(Clone, Debug)]
pub struct FilesConfig {
    /// Storage server urls (`--storage`, repeatable). When empty, the storage servers
    /// the broker knows are used. Default none.
    pub storage: Vec<String>,
    /// Slots server url (`--slots`). When absent, the first slots server the broker
    /// knows is used. Default none.
    pub slots: Option<String>,
    /// Period of the automatic sync; zero disables it (a sync still runs at graceful
    /// shutdown). Default [`DEFAULT_SYNC_INTERVAL`].
    pub sync_interval: Duration,
    /// Keys of ed25519 slots this server may update (`--slot-key`). Default none.
    pub slot_keys: SlotKeys,
    /// Storage servers each new block is written to. Default [`DEFAULT_WRITE_COPIES`].
    pub write_copies: usize,
    /// Block sizes of the content-defined chunking. Default: the content crate's
    /// (about 1 MiB, at most 2 MiB).
    pub chunking: ChunkConfig,
    /// Bytes of changed file content held in memory, server-wide; beyond it changed
    /// files go to temporary files. Default [`DEFAULT_MEMORY_BUDGET`].
    pub memory_budget: u64,
    /// Largest changed file kept in memory. Default [`DEFAULT_SPILL_THRESHOLD`].
    pub spill_threshold: u64,
    /// Largest file accepted (413 beyond). Default [`DEFAULT_MAX_FILE_SIZE`].
    pub max_file_size: u64,
}

impl Default for FilesConfig {
    fn default() -> FilesConfig {
        FilesConfig {
            storage: Vec::new(),
            slots: None,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            slot_keys: SlotKeys::default(),
            write_copies: DEFAULT_WRITE_COPIES,
            chunking: ChunkConfig::default(),
            memory_budget: DEFAULT_MEMORY_BUDGET,
            spill_threshold: DEFAULT_SPILL_THRESHOLD,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
        }
    }
}

/// Shared handler state: the file system.
#[derive(Clone, Debug)]
pub struct AppState {
    fs: Arc<FileSystem>,
}

impl AppState {
    /// State over `fs`.
    pub fn new(fs: Arc<FileSystem>) -> AppState {
        AppState { fs }
    }

    /// The file system.
    pub fn fs(&self) -> &FileSystem {
        &self.fs
    }
}

/// Empties `<data-dir>/dirty` (left-overs of a previous run are unreachable: nodes
/// are not persisted) and starts the files server with its periodic sync.
pub async fn start(ctx: &ServerContext, config: FilesConfig) -> FilesResult<Server> {
    if config.write_copies == 0 {
        return Err(FilesError::Config("write copies must be at least 1".into()));
    }
    if !config.slot_keys.0.is_empty() && ctx.options.auth.root.is_none() {
        return Err(FilesError::Config(
            "--slot-key needs --auth-root-key: this server signs slot updates with those \
             keys for whoever mounts, writes and syncs, and in open mode that is any \
             anonymous client; with --auth-root-key only callers holding files:write can"
                .into(),
        ));
    }
    let spill_dir = ctx.data_dir().join(SPILL_DIR);
    let dir = spill_dir.clone();
    tokio::task::spawn_blocking(move || {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&dir)
    })
    .await
    .map_err(FilesError::task)?
    .map_err(FilesError::io("preparing the dirty-files directory"))?;

    let peers = Arc::new(Peers::new(
        ctx.id,
        ctx.http.clone(),
        ctx.broker.clone(),
        &config.storage,
        config.slots.as_deref(),
        config.write_copies,
    )?);
    if !peers.has_storage_source() {
        tracing::warn!("no storage servers: give --storage or --broker; nothing can be mounted");
    }
    let writer_config = WriterConfig {
        chunking: config.chunking,
        ..WriterConfig::default()
    };
    let writer = Writer::new(
        Arc::new(PeerStore::new(peers.clone(), Use::Write)),
        writer_config,
    )
    .map_err(|e| FilesError::Config(e.to_string()))?;
    let reader = Reader::new(Arc::new(PeerStore::new(peers.clone(), Use::Read)));
    let mut signers = HashMap::new();
    for seed in &config.slot_keys.0 {
        let signer = SlotSigner::ed25519_from_seed(seed);
        if let Some(slot) = signer.ed25519_slot() {
            signers.insert(slot, Arc::new(signer));
        }
    }
    let env = Arc::new(FileEnv {
        reader,
        writer,
        spill_dir,
        budget: Arc::new(Budget::new(config.memory_budget)),
        spill_threshold: config.spill_threshold.min(config.memory_budget),
        max_file_size: config.max_file_size,
    });
    let fs = Arc::new(FileSystem::new(env, peers, signers));
    let server = invariant_runtime::serve(ctx, http::router(AppState::new(fs.clone())))
        .await
        .map_err(FilesError::io("starting the HTTP server"))?;
    ctx.tasks.spawn(periodic_sync(
        fs,
        config.sync_interval,
        ctx.shutdown.clone(),
    ));
    Ok(server)
}

/// Syncs every `interval` until shutdown, then once more.
async fn periodic_sync(fs: Arc<FileSystem>, interval: Duration, shutdown: CancellationToken) {
    if interval.is_zero() {
        shutdown.cancelled().await;
    } else {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    if let Err(e) = fs.sync().await {
                        tracing::warn!(error = %e, "periodic sync failed");
                    }
                }
            }
        }
    }
    match tokio::time::timeout(FINAL_SYNC_TIMEOUT, fs.sync()).await {
        Ok(Ok(())) => tracing::debug!("final sync done"),
        Ok(Err(e)) => tracing::warn!(error = %e, "final sync failed; unsynced changes are lost"),
        Err(_) => tracing::warn!("final sync timed out; unsynced changes are lost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_key_files_parse_and_stay_out_of_logs() {
        let seed = "ab".repeat(32);
        let keys = SlotKeys::parse(&format!("# my slots\n\n  {seed}  \n")).expect("parse");
        assert_eq!(keys.0, vec![[0xab; 32]]);
        assert!(!format!("{keys:?}").contains("ab"));
        for bad in ["xyz", "abcd", &"ab".repeat(33)] {
            assert!(
                matches!(SlotKeys::parse(bad), Err(FilesError::Config(_))),
                "{bad}"
            );
        }
    }
}
