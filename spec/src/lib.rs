//! # invariant-spec
//!
//! The invariant wire protocols as Rust: the 32-byte [`Id`], the wire types of each
//! protocol, and a typed async client per protocol. Servers and tools in this
//! workspace depend on this crate instead of assembling requests by hand; the
//! normative prose lives beside it in `spec/*.md`.
//!
//! - [`id`]: ids, hex form, XOR distance.
//! - [`storage`]: the storage protocol and [`StorageClient`].
//! - [`broker`]: broker wire types and [`BrokerClient`] (location lookup).
//! - [`http`]: the common conventions every client shares (base urls, `/id`).

pub mod broker;
pub mod error;
pub mod http;
pub mod id;
pub mod storage;

pub use broker::BrokerClient;
pub use error::{ClientError, ClientResult};
pub use id::{Distance, Id, IdParseError};
pub use storage::StorageClient;
