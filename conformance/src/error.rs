//! Why a run could not start or could not finish: [`ConformanceError`].

use invariant_spec::Role;

/// Why a run could not start, or why it stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// The base url is not an absolute http(s) url.
    #[error("invalid base url {url:?}: {reason}")]
    InvalidUrl {
        /// The url as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// `--only` selects no check of the role (in the chosen profile).
    #[error("no {role} check of profile {profile} matches {only:?} (see --list)")]
    NoSuchCheck {
        /// The role.
        role: Role,
        /// The profile name.
        profile: String,
        /// The selector.
        only: String,
    },
    /// Nothing accepts connections at the server's address.
    #[error("the server at {url} is unreachable: {reason}")]
    Unreachable {
        /// The base url.
        url: String,
        /// What the connection attempt answered.
        reason: String,
    },
    /// The suite's helper server could not be started.
    #[error("starting the suite's helper server: {0}")]
    Helper(#[source] std::io::Error),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The client settings (CA certificates, token) cannot be used.
    #[error("client settings: {0}")]
    Client(#[from] invariant_spec::ClientError),
}
