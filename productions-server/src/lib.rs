//! # productions-server
//!
//! The productions role: a persistent record of which output a task produced from an
//! input (`/production/`), so work is done once. Records live in redb at
//! `<data-dir>/productions.redb` ([`store::ProductionStore`]).
//!
//! - [`store`]: the redb table, its value format and durability.
//! - [`http`]: routes and handlers.
//!
//! [`start`] runs the server in-process (tests use it on port 0); `main.rs` wraps it.

pub mod http;
pub mod store;

use invariant_runtime::{Server, ServerContext};

use crate::store::{ProductionStore, StoreError};

/// Shared handler state.
#[derive(Clone, Debug)]
pub struct AppState {
    store: ProductionStore,
}

impl AppState {
    /// State over `store`.
    pub fn new(store: ProductionStore) -> AppState {
        AppState { store }
    }
    /// The productions store.
    pub fn store(&self) -> &ProductionStore {
        &self.store
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The database could not be opened.
    #[error("opening the productions database: {0}")]
    Store(#[from] StoreError),
    /// The listening socket could not be bound.
    #[error("binding the listener: {0}")]
    Bind(#[from] std::io::Error),
}

/// Opens the database under the context's data directory and serves it.
pub async fn start(ctx: &ServerContext) -> Result<Server, StartError> {
    let data_dir = ctx.data_dir().clone();
    let store = tokio::task::spawn_blocking(move || ProductionStore::open(&data_dir))
        .await
        .map_err(std::io::Error::other)??;
    Ok(invariant_runtime::serve(ctx, http::router(AppState::new(store))).await?)
}
