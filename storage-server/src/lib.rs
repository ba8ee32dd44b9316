//! # storage-server
//!
//! The storage role: content-addressed blobs over HTTP (`/storage/`), kept by
//! [`store::BlobStore`]: one file per blob under `<data-dir>/blobs/`, except blobs up
//! to 2 MiB uploaded whole, which are appended to group-committed packs under
//! `<data-dir>/packs/`.
//!
//! - [`store`]: atomic, fsynced, verified blob files and their listing; which layout
//!   a blob is read from or written to, including the streaming upload pipeline.
//! - [`pack`]: blobs up to 2 MiB in pack files with a redb index; one sync per batch
//!   per packing lane.
//! - [`usage`]: bytes stored per token subject, and the quotas of `storage:write`
//!   tokens (413 past them).
//! - [`http`]: routes and handlers: requests parsed, the store called, answers made.
//! - [`peer`]: the hardened client `/storage/fetch` reaches peers with (registered
//!   http/https urls inside `--peer-allow`, `GET /id` checked first, no redirects).
//! - [`range`]: `Range` / `If-None-Match` interpretation.
//! - [`report`]: reporting held and deleted blobs to find servers.
//!
//! With `--auth-root-key`, writes need a `storage:write` token (reads `storage:read`
//! only with `--auth-reads`), deletes `storage:delete` and the listing `storage:list`;
//! the runtime checks them before a handler runs, and the handlers charge each stored
//! blob to the token's subject (and give it back when the blob is deleted). Without
//! token checks (open mode) the server refuses deletes with 403 unless started with
//! `--allow-open-delete` ([`StorageConfig::allow_open_delete`]).
//!
//! [`start`] runs the server in-process (tests use it on port 0); `main.rs` wraps it.

pub mod http;
pub mod pack;
pub mod peer;
pub mod range;
pub mod report;
pub mod store;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use invariant_runtime::{Server, ServerContext};
use invariant_spec::{BrokerClient, ClientResult, FindClient, Id};
use tokio::sync::mpsc;

use crate::pack::PackConfig;
use crate::peer::Peers;
use crate::report::Reporter;
use crate::store::BlobStore;

/// Default largest blob accepted: 32 MiB.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 32 * 1024 * 1024;

/// Storage-specific settings.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Largest blob accepted; larger uploads get 413 and store nothing.
    /// Default [`DEFAULT_MAX_BLOB_SIZE`].
    pub max_blob_size: u64,
    /// Find servers (base urls) to report held blobs to (`--find`). When empty, the
    /// find servers the broker knows are used (none without a broker).
    pub find: Vec<String>,
    /// Period of full holdings reports to find servers.
    /// Default [`report::DEFAULT_FIND_REFRESH`].
    pub find_refresh: Duration,
    /// Which blobs are packed ([`pack`]); `max_blob` 0 keeps every blob in its own
    /// file. Also when packs are compacted.
    pub pack: PackConfig,
    /// Whether deletes are served without token checks (open mode). With token checks
    /// on, deletes need `storage:delete` whatever this says.
    pub allow_open_delete: bool,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            find: Vec::new(),
            find_refresh: report::DEFAULT_FIND_REFRESH,
            pack: PackConfig::default(),
            allow_open_delete: false,
        }
    }
}

/// Shared handler state: the blob store, the peer client and, when configured, the
/// broker.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: BlobStore,
    broker: Option<BrokerClient>,
    peers: Peers,
    reporter: Option<Reporter>,
    /// Whether deletes are served: with token checks on, or allowed in open mode.
    deletes_allowed: bool,
}

impl AppState {
    /// State over `store`, resolving peers through `broker` when given and reaching
    /// them with `peers`.
    pub fn new(store: BlobStore, broker: Option<BrokerClient>, peers: Peers) -> AppState {
        AppState::with_reporter(store, broker, peers, None)
    }
    /// State that also reports new and deleted blobs through `reporter`. Deletes are
    /// refused until [`AppState::allowing_deletes`].
    pub fn with_reporter(
        store: BlobStore,
        broker: Option<BrokerClient>,
        peers: Peers,
        reporter: Option<Reporter>,
    ) -> AppState {
        AppState::build(store, broker, peers, reporter, false)
    }

    /// This state with deletes served (`allowed`) or refused with 403.
    pub fn allowing_deletes(self, allowed: bool) -> AppState {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => AppState::build(
                inner.store,
                inner.broker,
                inner.peers,
                inner.reporter,
                allowed,
            ),
            Err(shared) => {
                let inner = &*shared;
                AppState::build(
                    inner.store.clone(),
                    inner.broker.clone(),
                    inner.peers.clone(),
                    inner.reporter.clone(),
                    allowed,
                )
            }
        }
    }

    fn build(
        store: BlobStore,
        broker: Option<BrokerClient>,
        peers: Peers,
        reporter: Option<Reporter>,
        deletes_allowed: bool,
    ) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                store,
                broker,
                peers,
                reporter,
                deletes_allowed,
            }),
        }
    }
    /// The blob store.
    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }
    /// The broker client, if a broker is configured.
    pub fn broker(&self) -> Option<&BrokerClient> {
        self.inner.broker.as_ref()
    }
    /// The client for peer storage servers.
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }
    /// Queues a newly stored blob for reporting to find servers (never waits).
    pub fn report_added(&self, address: Id) {
        if let Some(reporter) = &self.inner.reporter {
            reporter.added(address);
        }
    }
    /// Queues a deleted blob for a gone report to find servers (never waits).
    pub fn report_gone(&self, address: Id) {
        if let Some(reporter) = &self.inner.reporter {
            reporter.gone(address);
        }
    }
    /// Whether deletes are served (token checks on, or allowed in open mode).
    pub fn deletes_allowed(&self) -> bool {
        self.inner.deletes_allowed
    }
}

/// Opens the store under the context's data directory and serves it.
pub async fn start(ctx: &ServerContext, config: StorageConfig) -> anyhow::Result<Server> {
    let store = BlobStore::open_with(ctx.data_dir(), config.max_blob_size, config.pack)?;
    // Usage gauges need the process's metrics recorder, which serving installs.
    let _ = invariant_runtime::metrics::handle();
    store.usage().publish(&ctx.id.to_string());
    store.totals();
    if let Some(packs) = store.packs() {
        packs.dead_bytes();
    }
    let peers = Peers::new(&ctx.options.client, ctx.options.peer_allow.clone())?;
    // Reports go out with this server's own client (its CAs and its token).
    let find = config
        .find
        .iter()
        .map(|url| Ok(FindClient::from_endpoint(ctx.endpoint(url)?)))
        .collect::<ClientResult<Vec<_>>>()?;
    // Reporting stops with the server, or at once if it cannot start.
    let reporting = ctx.shutdown.child_token();
    let reporter = report::spawn(
        ctx.id,
        store.clone(),
        find,
        ctx.broker.clone(),
        config.find_refresh,
        reporting.clone(),
    );
    let auth_on = ctx.options.auth.root.is_some();
    if !auth_on && config.allow_open_delete {
        tracing::warn!(
            "open mode with --allow-open-delete: anyone who reaches the port may delete blobs"
        );
    }
    let state = AppState::with_reporter(store, ctx.broker.clone(), peers, reporter)
        .allowing_deletes(auth_on || config.allow_open_delete);
    match invariant_runtime::serve(ctx, http::router(state)).await {
        Ok(server) => Ok(server),
        Err(e) => {
            reporting.cancel();
            Err(e.into())
        }
    }
}

/// Streams the held blobs `(address, size)` without blocking the async runtime
/// (for reporting holdings to find servers and the distributor).
pub fn list_blobs(
    store: &BlobStore,
) -> impl Stream<Item = std::io::Result<(Id, u64)>> + Send + 'static {
    let (tx, rx) = mpsc::channel(256);
    let iter = store.list();
    tokio::task::spawn_blocking(move || {
        for item in iter {
            if tx.blocking_send(item).is_err() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
