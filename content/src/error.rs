//! The error type of this crate: every failure names the blob, transform or path involved.

use std::path::PathBuf;

use invariant_spec::Id;

use crate::store::StoreError;

/// What went wrong reading or writing content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// No reachable store holds the blob.
    #[error("blob {address} was not found in storage")]
    Missing {
        /// The blob asked for.
        address: Id,
    },
    /// The bytes received for a blob hash to another address.
    #[error("blob {address} is corrupt: its bytes hash to {actual}")]
    Corrupt {
        /// The blob asked for.
        address: Id,
        /// The SHA-256 of what arrived.
        actual: Id,
    },
    /// The store failed while handling a blob.
    #[error("storage failed for blob {address}: {source}")]
    Store {
        /// The blob concerned.
        address: Id,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A link asks for a transform kind this reader does not know.
    #[error("unsupported transform kind {kind:?} in link to {address}")]
    UnsupportedTransform {
        /// The link's address.
        address: Id,
        /// The unknown kind (`<none>` when the transform has no kind).
        kind: String,
    },
    /// A known transform kind with an algorithm this reader does not know.
    #[error("unsupported {kind} algorithm {algorithm:?} in link to {address}")]
    UnsupportedAlgorithm {
        /// The link's address.
        address: Id,
        /// `Decipher` or `Decompress`.
        kind: &'static str,
        /// The unknown algorithm.
        algorithm: String,
    },
    /// A transform's parameters are malformed (bad hex, wrong key length, ...).
    #[error("invalid {kind} transform in link to {address}: {reason}")]
    InvalidTransform {
        /// The link's address.
        address: Id,
        /// The transform kind.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Decryption failed (wrong key, truncated ciphertext or bad padding).
    #[error("cannot decrypt content of {address}: {reason}")]
    Decrypt {
        /// The link's address.
        address: Id,
        /// What failed.
        reason: String,
    },
    /// The compressed stream is invalid.
    #[error("cannot {algorithm} content of {address}: {source}")]
    Decompress {
        /// The link's address.
        address: Id,
        /// The algorithm.
        algorithm: &'static str,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// A block list (or directory) is not the JSON it must be.
    #[error("invalid {what} in {address}: {reason}")]
    Malformed {
        /// The link's address.
        address: Id,
        /// `block list` or `directory`.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A block's content is not as long as its block-list entry says.
    #[error("block {address} holds {actual}{more} bytes, its block list says {declared}")]
    SizeMismatch {
        /// The block's address.
        address: Id,
        /// The size in the block list.
        declared: u64,
        /// The bytes seen.
        actual: u64,
        /// `+` when reading stopped before the end.
        more: &'static str,
    },
    /// The content does not hash to the link's `expected`.
    #[error("content of {address} hashes to {actual}, its link expects {expected}")]
    ExpectedMismatch {
        /// The link's address.
        address: Id,
        /// The link's `expected`.
        expected: Id,
        /// The SHA-256 of what was read.
        actual: Id,
    },
    /// Slot links must be resolved to an address before reading.
    #[error("link {address} is a slot; resolve it to a content address first")]
    SlotLink {
        /// The slot id.
        address: Id,
    },
    /// Something is larger than this reader accepts in memory.
    #[error("{what} in {address} exceeds {limit} bytes")]
    TooLarge {
        /// The link's address.
        address: Id,
        /// What was too large.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the input of a writer failed.
    #[error("reading input failed: {0}")]
    Input(#[source] std::io::Error),
    /// A directory entry cannot be written to (or read from) a file system safely.
    #[error("directory {address}: entry {name:?}: {reason}")]
    InvalidEntry {
        /// The directory's address.
        address: Id,
        /// The entry name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A local file cannot be represented in a directory blob.
    #[error("{path}: {reason}")]
    Unrepresentable {
        /// The local path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A background task failed (panicked or was cancelled).
    #[error("internal task failed: {0}")]
    Task(String),
}

impl ContentError {
    /// The blob address this error is about, when there is one.
    pub fn address(&self) -> Option<Id> {
        match self {
            ContentError::Missing { address }
            | ContentError::Corrupt { address, .. }
            | ContentError::Store { address, .. }
            | ContentError::UnsupportedTransform { address, .. }
            | ContentError::UnsupportedAlgorithm { address, .. }
            | ContentError::InvalidTransform { address, .. }
            | ContentError::Decrypt { address, .. }
            | ContentError::Decompress { address, .. }
            | ContentError::Malformed { address, .. }
            | ContentError::SizeMismatch { address, .. }
            | ContentError::ExpectedMismatch { address, .. }
            | ContentError::SlotLink { address }
            | ContentError::TooLarge { address, .. }
            | ContentError::InvalidEntry { address, .. } => Some(*address),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ContentError {
        let path = path.into();
        move |source| ContentError::Io { path, source }
    }

    pub(crate) fn task(error: tokio::task::JoinError) -> ContentError {
        ContentError::Task(error.to_string())
    }
}

/// Result alias for this crate.
pub type ContentResult<T> = Result<T, ContentError>;
