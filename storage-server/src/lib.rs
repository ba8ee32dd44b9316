//! # storage-server
//!
//! The storage role: content-addressed blobs over HTTP (`/storage/`), kept one file per
//! blob under `<data-dir>/blobs/` by [`store::BlobStore`].
//!
//! - [`store`]: atomic, fsynced, verified blob files and their listing.
//! - [`http`]: routes and handlers, including the streaming upload pipeline.
//! - [`range`]: `Range` / `If-None-Match` interpretation.
//!
//! [`start`] runs the server in-process (tests use it on port 0); `main.rs` wraps it.

pub mod http;
pub mod range;
pub mod store;

use std::sync::Arc;

use futures_util::Stream;
use invariant_runtime::{Server, ServerContext};
use invariant_spec::{BrokerClient, Id};
use tokio::sync::mpsc;

use crate::store::BlobStore;

/// Default largest blob accepted: 32 MiB.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 32 * 1024 * 1024;

/// Storage-specific settings.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Largest blob accepted; larger uploads get 413 and store nothing.
    /// Default [`DEFAULT_MAX_BLOB_SIZE`].
    pub max_blob_size: u64,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
        }
    }
}

/// Shared handler state: the blob store and, when configured, the broker.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: BlobStore,
    broker: Option<BrokerClient>,
}

impl AppState {
    /// State over `store`, resolving peers through `broker` when given.
    pub fn new(store: BlobStore, broker: Option<BrokerClient>) -> AppState {
        AppState {
            inner: Arc::new(Inner { store, broker }),
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
}

/// Opens the store under the context's data directory and serves it.
pub async fn start(ctx: &ServerContext, config: StorageConfig) -> anyhow::Result<Server> {
    let store = BlobStore::open(ctx.data_dir(), config.max_blob_size)?;
    let state = AppState::new(store, ctx.broker.clone());
    Ok(invariant_runtime::serve(ctx, http::router(state)).await?)
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
