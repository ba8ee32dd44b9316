//! The error type shared by every typed client.

use crate::Id;

/// What went wrong talking to an invariant server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base url given to a client cannot be used.
    #[error("invalid server url {url:?}: {reason}")]
    InvalidUrl {
        /// The url as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The client's TLS or token settings cannot be used (unreadable CA file, bad PEM,
    /// a token that is not a valid header value).
    #[error("invalid client settings: {0}")]
    InvalidConfig(String),
    /// The request did not complete (connection refused, reset, timeout, ...).
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The request url.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status the protocol does not allow here.
    #[error("{url} answered {status}: {reason}")]
    Status {
        /// The request url.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The plain-text reason from the body (truncated).
        reason: String,
    },
    /// The server answered 2xx but the body is not what the protocol promises.
    #[error("{url} answered with a malformed body: {reason}")]
    Protocol {
        /// The request url.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Bytes received (or confirmed by the server) do not hash to the requested address.
    #[error("content requested as {expected} hashes to {actual}")]
    HashMismatch {
        /// The address asked for.
        expected: Id,
        /// The SHA-256 of what arrived.
        actual: Id,
    },
}

impl ClientError {
    /// The HTTP status when the server answered with an unexpected one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result alias for client calls.
pub type ClientResult<T> = Result<T, ClientError>;
