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

pub mod error;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod registration;
pub mod server;

pub use error::{ApiError, ApiJson, ApiPath, ApiResult};
pub use options::{CommonArgs, LogFormat, Role, ServerOptions};
pub use server::{Server, ServerContext, run_main, serve};
