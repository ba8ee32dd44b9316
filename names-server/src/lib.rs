//! # names-server
//!
//! The names role: DNS-syntax names → content addresses or slot ids (`/names/`).
//! Registered names live in redb at `<data-dir>/names.redb` ([`store::NameStore`]) and
//! are answered `authoritative: true`. When a nameserver is configured, names the server
//! does not hold are resolved from DNS TXT records ([`dns::DnsFallback`]) and answered
//! `authoritative: false`; without one, the fallback is off and such names are 404.
//!
//! - [`store`]: the redb table, its record format, register and compare-and-swap.
//! - [`dns`]: the TXT-record fallback and its cache.
//! - [`http`]: routes and handlers.
//!
//! [`start`] runs the server in-process (tests use it on port 0); `main.rs` wraps it.

pub mod dns;
pub mod http;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use invariant_runtime::{Server, ServerContext};

use crate::dns::{DEFAULT_DNS_TIMEOUT, DnsError, DnsFallback};
use crate::store::{NameStore, StoreError};

/// Default ttl of a registered name when the request gives none: 1800 s (30 minutes).
pub const DEFAULT_TTL: u32 = 30 * 60;

/// Names-specific settings.
#[derive(Clone, Debug)]
pub struct NamesConfig {
    /// Nameserver (`ip:port`, UDP and TCP) for the DNS fallback. `None` (the default)
    /// turns the fallback off: only registered names resolve.
    pub dns: Option<SocketAddr>,
    /// Time to wait for the nameserver per attempt (two attempts). Default 2 s.
    pub dns_timeout: Duration,
    /// Ttl in seconds given to registered names whose request has none.
    /// Default [`DEFAULT_TTL`].
    pub default_ttl: u32,
}

impl Default for NamesConfig {
    fn default() -> NamesConfig {
        NamesConfig {
            dns: None,
            dns_timeout: DEFAULT_DNS_TIMEOUT,
            default_ttl: DEFAULT_TTL,
        }
    }
}

/// Shared handler state. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: NameStore,
    dns: Option<DnsFallback>,
    default_ttl: u32,
}

impl AppState {
    /// State over `store`, falling back to `dns` when given.
    pub fn new(store: NameStore, dns: Option<DnsFallback>, default_ttl: u32) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                store,
                dns,
                default_ttl,
            }),
        }
    }
    /// The names store.
    pub fn store(&self) -> &NameStore {
        &self.inner.store
    }
    /// The DNS fallback, if configured.
    pub fn dns(&self) -> Option<&DnsFallback> {
        self.inner.dns.as_ref()
    }
    /// Ttl for registrations that give none.
    pub fn default_ttl(&self) -> u32 {
        self.inner.default_ttl
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The database could not be opened.
    #[error("opening the names database: {0}")]
    Store(#[from] StoreError),
    /// The DNS resolver could not be configured.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The listening socket could not be bound.
    #[error("binding the listener: {0}")]
    Bind(#[from] std::io::Error),
}

/// Opens the database under the context's data directory and serves it.
pub async fn start(ctx: &ServerContext, config: NamesConfig) -> Result<Server, StartError> {
    let data_dir = ctx.data_dir().clone();
    let store = tokio::task::spawn_blocking(move || NameStore::open(&data_dir))
        .await
        .map_err(std::io::Error::other)??;
    let dns = match config.dns {
        Some(server) => Some(DnsFallback::new(server, config.dns_timeout)?),
        None => None,
    };
    let state = AppState::new(store, dns, config.default_ttl);
    Ok(invariant_runtime::serve(ctx, http::router(state)).await?)
}
