//! # invariant-content
//!
//! Content links as the brief defines them (wire types in
//! [`invariant_spec::content`]), read and written over any [`BlockStore`]:
//!
//! - [`reader`]: a [`Reader`] streams a link's content with bounded memory, applying
//!   `Blocks`, `Decipher` (aes-256-cbc) and `Decompress` (inflate, brotli, unzip) and
//!   checking `expected`; range reads fetch only the blocks they overlap.
//! - [`writer`]: a [`Writer`] cuts streams into content-defined blocks (FastCDC),
//!   optionally compresses and encrypts each (random, supplied or convergent keys),
//!   skips blocks the store has, and builds block trees.
//! - [`tree`]: directory blobs, and uploading/downloading whole directories.
//! - [`store`]: the [`BlockStore`] trait and its implementations.
//! - [`codec`]: the byte transforms themselves.
//!
//! Every blob is verified against its address by the store before use, and every
//! error names the address (or path) it concerns.

pub mod codec;
pub mod error;
pub mod reader;
pub mod store;
pub mod tree;
pub mod writer;

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

pub use codec::Compression;
pub use error::{ContentError, ContentResult};
pub use reader::{Reader, ReaderConfig};
pub use store::{BlockStore, MemoryStore, StorageSet, StoreError};
pub use tree::{download_directory, upload_directory};
pub use writer::{ChunkConfig, KeyPolicy, Writer, WriterConfig, Written};

/// Content arriving in chunks; an error ends it.
pub type ContentStream = Pin<Box<dyn Stream<Item = ContentResult<Bytes>> + Send>>;
