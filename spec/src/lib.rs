//! # invariant-spec
//!
//! The invariant wire protocols as Rust: the 32-byte [`Id`], the wire types of each
//! protocol, and a typed async client per protocol. Servers and tools in this
//! workspace depend on this crate instead of assembling requests by hand; the
//! normative prose lives beside it in `spec/*.md`.
//!
//! - [`id`]: ids, hex form, XOR distance.
//! - [`storage`]: the storage protocol and [`StorageClient`].
//! - [`broker`]: registrations, locations and [`BrokerClient`] (which also resolves an
//!   id to a url that answers with that id).
//! - [`slots`]: signed mutable pointers and [`SlotsClient`] (CAS, history, watch), with
//!   the ed25519 update message.
//! - [`find`]: who holds a block, [`FindClient`], the iterative lookup and a reader that
//!   fetches from whichever holder answers.
//! - [`names`]: names → addresses and [`NamesClient`].
//! - [`productions`]: task output cache and [`ProductionsClient`].
//! - [`distributor`]: pins, storage sets, placement and [`DistributorClient`].
//! - [`http`]: the common conventions every client shares (base urls, `/id`, TLS roots
//!   and the bearer token of [`http::ClientSecurity`]).
//! - [`role`]: the eight server roles ([`Role`]) and their names, broker kinds and
//!   default ports.
//! - [`auth`]: the capability token format servers check when they run with a root key.
//! - [`client_config`]: where command-line programs find their token and CAs.

pub mod auth;
pub mod broker;
pub mod client_config;
pub mod content;
pub mod distributor;
pub mod error;
pub mod files;
pub mod find;
pub mod http;
pub mod id;
pub mod names;
pub mod productions;
pub mod role;
pub mod slots;
pub mod storage;

pub use broker::BrokerClient;
pub use distributor::DistributorClient;
pub use error::{ClientError, ClientResult};
pub use files::FilesClient;
pub use find::FindClient;
pub use id::{Distance, Id, IdParseError};
pub use names::NamesClient;
pub use productions::ProductionsClient;
pub use role::{Role, UnknownRole};
pub use slots::SlotsClient;
pub use storage::StorageClient;
