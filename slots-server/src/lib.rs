//! # slots-server
//!
//! The slots role: mutable, optionally signed pointers to addresses (`/slots/`), kept
//! in one redb database, `<data-dir>/slots.redb`.
//!
//! - [`store`]: the database tables, versioned records, and batch application.
//! - [`writer`]: group commit — one thread applies every waiting change in one durable
//!   transaction, then answers them all.
//! - [`watch`]: per-slot broadcast of accepted states; gap-free watch and history streams.
//! - [`verifiers`]: cache of each slot's update rules (signature, owner, base).
//! - [`http`]: routes and handlers (signature, claim and owner checks happen here,
//!   before the writer).
//!
//! **An update answered 200 is durably committed; updates of a slot are linearizable;
//! a refused update changes nothing.** In auth mode a slot remembers the subject that
//! registered it, and an unsigned slot is updated only by that subject or an operator;
//! an `ed25519` registration carrying the key's claim replaces an unsigned or
//! `sha256:rsa` slot squatting on the key (see [`http`] and `spec/slots.md`).
//!
//! Metrics, besides the runtime's per-route ones: `slots_commit_batch_size`
//! (histogram: ops per committed transaction) and `slots_ops_total{outcome}` (counter:
//! `accepted`, `claimed`, `stale`, `taken`, `unknown`, `unsupported`,
//! `reregistered`).
//!
//! [`start`] runs the server in-process (tests use it on port 0); `main.rs` wraps it.

pub mod http;
pub mod store;
pub mod verifiers;
pub mod watch;
pub mod writer;

use std::sync::Arc;

use invariant_runtime::{Server, ServerContext};
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::verifiers::Verifiers;
use crate::watch::Watchers;
use crate::writer::Writer;

/// Database file name inside the data directory.
pub const DB_FILE: &str = "slots.redb";
/// Default largest number of changes committed in one transaction.
pub const DEFAULT_MAX_BATCH: usize = 512;
/// Default number of states buffered per watched slot before a slow watcher is served
/// from the database instead.
pub const DEFAULT_WATCH_BUFFER: usize = 256;

/// Slots-specific settings.
#[derive(Clone, Debug)]
pub struct SlotsConfig {
    /// Largest number of changes committed in one transaction. Default
    /// [`DEFAULT_MAX_BATCH`].
    pub max_batch: usize,
    /// States buffered per watched slot. Default [`DEFAULT_WATCH_BUFFER`].
    pub watch_buffer: usize,
}

impl Default for SlotsConfig {
    fn default() -> SlotsConfig {
        SlotsConfig {
            max_batch: DEFAULT_MAX_BATCH,
            watch_buffer: DEFAULT_WATCH_BUFFER,
        }
    }
}

/// Shared handler state: the store, the writer, the watchers and the shutdown signal.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<Store>,
    writer: Writer,
    watchers: Arc<Watchers>,
    verifiers: Verifiers,
    shutdown: CancellationToken,
}

impl AppState {
    /// The store (for reads; writes go through [`AppState::writer`]).
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(&self.inner.store)
    }
    /// The writer thread.
    pub fn writer(&self) -> &Writer {
        &self.inner.writer
    }
    /// The watch channels.
    pub fn watchers(&self) -> &Watchers {
        &self.inner.watchers
    }
    /// Parsed signature configurations of recently used slots.
    pub fn verifiers(&self) -> &Verifiers {
        &self.inner.verifiers
    }
    /// Cancelled when the server shuts down (ends watch streams).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}

/// Opens the database under the context's data directory, starts the writer thread and
/// serves the slots protocol.
pub async fn start(ctx: &ServerContext, config: SlotsConfig) -> anyhow::Result<Server> {
    let path = ctx.data_dir().join(DB_FILE);
    let store = tokio::task::spawn_blocking(move || Store::open(&path)).await??;
    let store = Arc::new(store);
    let watchers = Arc::new(Watchers::new(config.watch_buffer));
    let writer = Writer::spawn(Arc::clone(&store), Arc::clone(&watchers), config.max_batch)?;
    let state = AppState {
        inner: Arc::new(Inner {
            store,
            writer,
            watchers,
            verifiers: Verifiers::new(verifiers::DEFAULT_CAPACITY),
            shutdown: ctx.shutdown.clone(),
        }),
    };
    Ok(invariant_runtime::serve(ctx, http::router(state)).await?)
}
