//! # invariant-runtime
//!
//! Everything the eight server roles share, so each role crate holds only its protocol:
//!
//! - [`options`]: the common command-line options (`--listen`, `--data-dir`, `--broker`,
//!   `--advertise`, `--log-format`, with `INVARIANT_*` environment equivalents) and the
//!   [`Role`] list with default ports.
//! - [`identity`]: the persistent server id kept in the data directory.
//! - [`error`]: the one error → HTTP mapping ([`ApiError`]) and extractors whose
//!   rejections are plain-text 400s.
//! - [`metrics`]: Prometheus `GET /metrics` and per-route request metrics.
//! - [`registration`]: self-registration with the broker given by `--broker`.
//! - [`server`]: binding, the common routes (`/id`, `/metrics`), trailing-slash
//!   normalization, panic containment, graceful shutdown, and [`run_main`] for binaries.
//! - [`conn`]: the accept loop and the connection limits (header, idle and body
//!   timeouts, connection cap, body memory budget).
//! - [`tls`]: HTTPS with certificates reloaded on SIGHUP.
//! - [`auth`]: capability-token checks of every route, and the [`auth::Caller`] that
//!   handlers use for ownership.
//! - [`peers`]: the client for urls that came from the network (no redirects, only
//!   `http`/`https`, only addresses `--peer-allow` permits).
//! - [`store`]: the one store error of the roles' redb databases, opening a database
//!   (directory, wait for a held file, tables) and its schema version.
//! - [`stdout`]: every binary exits quietly when the reader of its output goes away.

pub mod auth;
pub mod conn;
pub mod error;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod peers;
pub mod registration;
pub mod server;
pub mod stdout;
pub mod store;
pub mod tls;

pub use auth::Caller;
pub use error::{ApiError, ApiJson, ApiPath, ApiResult, blocking};
pub use options::{AuthSettings, CommonArgs, LogFormat, Role, ServerOptions, TlsFiles};
pub use server::{Server, ServerContext, run_main, serve};
