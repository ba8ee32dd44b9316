//! # broker-server
//!
//! The broker role: maps server ids to the urls they answer at (`/broker/`), keeps the
//! registrations in redb at `<data-dir>/broker.redb`, and drops servers that stop
//! answering `GET /id/` with their own id.
//!
//! In auth mode (`--auth-root-key`) a registration needs `broker:register` and is
//! owned by the token's subject: another subject cannot replace it (403) unless it
//! holds `broker:admin` ([`http`]). Liveness checks contact only `http`/`https` urls,
//! follow no redirects and honour `--peer-allow` ([`liveness`]).
//!
//! - [`record`]: what is kept per server, its validation and versioned stored form.
//! - [`store`]: the redb tables; every acknowledged write is durably committed.
//! - [`http`]: routes and handlers.
//! - [`liveness`]: the background checker and its settings.
//!
//! [`start`] runs the server in-process (tests use it on port 0); `main.rs` wraps it.

pub mod http;
pub mod liveness;
pub mod record;
pub mod store;

use std::sync::Arc;

use invariant_runtime::peers::PeerClient;
use invariant_runtime::{Server, ServerContext};
use invariant_spec::Id;

use crate::liveness::InvalidLivenessConfig;
pub use crate::liveness::LivenessConfig;
use crate::store::{RegistrationStore, StoreError};

/// Broker-specific settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerConfig {
    /// How registered servers are checked (defaults: every 10 s ± 2 s, dropped after 3
    /// consecutive failures, 5 s per check, 16 checks at once).
    pub liveness: LivenessConfig,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is unusable.
    #[error("invalid liveness settings: {0}")]
    Config(#[from] InvalidLivenessConfig),
    /// The database could not be opened.
    #[error("opening the registrations: {0}")]
    Store(#[from] StoreError),
    /// The liveness checks' client cannot be built from the server's settings (CA,
    /// token).
    #[error("building the liveness client: {0}")]
    Peers(#[from] invariant_runtime::peers::PeerError),
    /// The listener could not be bound.
    #[error("binding: {0}")]
    Bind(#[from] std::io::Error),
}

/// Shared handler state: the broker's id and its registrations.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: Id,
    store: RegistrationStore,
}

impl AppState {
    /// State for the broker `id` over `store`.
    pub fn new(id: Id, store: RegistrationStore) -> AppState {
        AppState {
            inner: Arc::new(Inner { id, store }),
        }
    }
    /// The broker's own id.
    pub fn id(&self) -> Id {
        self.inner.id
    }
    /// The registrations.
    pub fn store(&self) -> &RegistrationStore {
        &self.inner.store
    }
}

/// Opens the registrations under the context's data directory, serves them, and checks
/// registered servers in the background until `ctx.shutdown` is cancelled.
pub async fn start(ctx: &ServerContext, config: BrokerConfig) -> Result<Server, StartError> {
    config.liveness.validate()?;
    let data_dir = ctx.data_dir().clone();
    let store = tokio::task::spawn_blocking(move || RegistrationStore::open(&data_dir))
        .await
        .map_err(StoreError::from)??;
    let checker = liveness::Checker {
        peers: PeerClient::for_server(
            &ctx.options,
            config.liveness.check_timeout,
            Some(config.liveness.check_timeout),
        )?,
        require_owner: ctx.options.auth.root.is_some(),
    };
    let state = AppState::new(ctx.id, store.clone());
    let server = invariant_runtime::serve(ctx, http::router(state)).await?;
    ctx.tasks.spawn(liveness::run(
        store,
        config.liveness,
        checker,
        ctx.shutdown.clone(),
    ));
    Ok(server)
}
