//! The error type of the files role. Each variant is one kind of failure; the HTTP
//! layer maps it to a status in one place (`http::to_api_error`).

use std::fmt;

use invariant_content::ContentError;
use invariant_spec::files::Node;
use invariant_spec::{ClientError, Id};

/// A slot mount whose compare-and-swap lost: the slot holds `current`, not what this
/// server last wrote or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConflict {
    /// The mount's root node.
    pub root: Node,
    /// The slot.
    pub slot: Id,
    /// What the slot holds now (the mount was reloaded from it).
    pub current: Id,
}

impl fmt::Display for SlotConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "slot {} of mount {} was changed by someone else (it now holds {}); the mount \
             was reloaded from the slot and its unsynced changes were discarded",
            self.slot, self.root, self.current
        )
    }
}

/// What went wrong handling a files request, syncing, or starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// The node number was never handed out, or its tree was unmounted.
    #[error("node {0} does not exist")]
    UnknownNode(Node),
    /// The node is not the root of a mount.
    #[error("node {0} is not a mount root")]
    NotMount(Node),
    /// A directory was expected.
    #[error("node {0} is not a directory")]
    NotDirectory(Node),
    /// A regular file was expected.
    #[error("node {0} is not a file")]
    NotFile(Node),
    /// Symbolic links have a target, not content.
    #[error("node {0} is a symbolic link and has no content link")]
    NoContent(Node),
    /// The directory has no entry of that name.
    #[error("directory {parent} has no entry {name:?}")]
    NoEntry {
        /// The directory.
        parent: Node,
        /// The name looked for.
        name: String,
    },
    /// The name is taken.
    #[error("directory {parent} already has an entry {name:?}")]
    Exists {
        /// The directory.
        parent: Node,
        /// The name.
        name: String,
    },
    /// Only empty directories can be removed or replaced.
    #[error("directory {name:?} in {parent} is not empty")]
    NotEmpty {
        /// The parent directory.
        parent: Node,
        /// The non-empty directory's name.
        name: String,
    },
    /// The node belongs to a read-only mount.
    #[error("node {0} belongs to a read-only mount")]
    ReadOnly(Node),
    /// A request parameter or body is malformed or not allowed (the reason says which).
    #[error("{0}")]
    Invalid(String),
    /// A file would grow beyond the configured limit.
    #[error(
        "the file would be {size} bytes, more than this server's limit of {limit} bytes \
         (--max-file-size); nothing was changed"
    )]
    TooLarge {
        /// The size the change would give the file (saturated at `u64::MAX`).
        size: u64,
        /// The limit (`FilesConfig::max_file_size`).
        limit: u64,
    },
    /// A content link given by the client cannot be read (mount, create with content).
    #[error("cannot read the given content link: {0}")]
    Link(#[source] ContentError),
    /// Reading or writing the tree's content in storage failed.
    #[error("storage: {0}")]
    Content(#[source] ContentError),
    /// The slot is not registered.
    #[error("slot {0} is not registered with the slots server")]
    SlotNotFound(Id),
    /// Neither `--slots` nor a broker that knows a slots server is configured.
    #[error("no slots server is configured (--slots) or registered with the broker")]
    NoSlotsServer,
    /// The slots server could not be reached or answered unexpectedly.
    #[error("slots server: {0}")]
    Slots(#[source] ClientError),
    /// The slots server refused the update's signature, or the slot needs a key this
    /// server does not hold.
    #[error("slot {slot}: {reason}")]
    SlotRefused {
        /// The slot.
        slot: Id,
        /// Why.
        reason: String,
    },
    /// One or more slot mounts lost a compare-and-swap and were reloaded.
    #[error("{}", conflicts_text(.0))]
    Conflict(Vec<SlotConflict>),
    /// The synced tree cannot be written into the slot in the form the mount reads it.
    #[error("{0}")]
    Unrepresentable(String),
    /// A configuration value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A local file operation (temporary files, data directory) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An internal invariant did not hold, or a task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

fn conflicts_text(conflicts: &[SlotConflict]) -> String {
    conflicts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl FilesError {
    /// An [`FilesError::Io`] builder for `map_err`.
    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> FilesError {
        move |source| FilesError::Io { context, source }
    }

    /// A failed blocking task.
    pub(crate) fn task(error: tokio::task::JoinError) -> FilesError {
        FilesError::Internal(format!("blocking task failed: {error}"))
    }
}

/// Result alias of this crate.
pub type FilesResult<T> = Result<T, FilesError>;
