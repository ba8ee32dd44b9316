//! The crate's error types: one enum for vault operations ([`EhiError`]), with the
//! keystore's ([`KeystoreError`]) and the importer's ([`ImportError`]) as parts of it.
//!
//! Messages are written for the patient at the terminal: they say what failed and, where
//! it helps, what to do. They may name FHIR entries and ids (they stay on the device);
//! they never contain key material.

use std::path::PathBuf;

use invariant_spec::{ClientError, Id};

/// Why the keystore file could not be created, opened or destroyed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The passphrase does not open the keystore (or the file was altered: the two
    /// cannot be told apart, by design of the AEAD).
    #[error(
        "wrong passphrase for keystore {path} (or the file was altered): nothing was decrypted"
    )]
    WrongPassphrase {
        /// The keystore file.
        path: PathBuf,
    },
    /// The recovery code does not open the recovery kit (or the kit was altered).
    #[error(
        "the recovery code does not open the recovery kit {path} (or the kit was altered): \
         nothing was decrypted"
    )]
    WrongRecoveryCode {
        /// The kit file.
        path: PathBuf,
    },
    /// No keystore at the path.
    #[error("no keystore at {path}; create one with `ehi init`")]
    NotFound {
        /// The path looked at.
        path: PathBuf,
    },
    /// A keystore already exists where a new one was to be written.
    #[error("a keystore already exists at {path}; refusing to overwrite it")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The file is not a keystore of a format this version reads.
    #[error("keystore {path} is not readable: {reason}")]
    Format {
        /// The keystore file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key-derivation parameters are outside the accepted range.
    #[error("unusable Argon2id parameters: {0}")]
    Params(String),
    /// Reading or writing the file failed.
    #[error("keystore {path}: {source}")]
    Io {
        /// The keystore file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A cryptographic operation failed (HPKE, sealing).
    #[error("cryptography: {0}")]
    Crypto(String),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// Why an import was refused. Nothing of a refused import is committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// An input could not be read.
    #[error("{source_name}: {error}")]
    Read {
        /// The input's name (file path or label).
        source_name: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// An input is not JSON (nor NDJSON).
    #[error("{source_name}: not JSON or NDJSON: {reason}")]
    NotJson {
        /// The input's name.
        source_name: String,
        /// The parser's complaint.
        reason: String,
    },
    /// One entry (a Bundle entry or an NDJSON line) is invalid.
    #[error("{source_name}, {entry}: {reason}")]
    Entry {
        /// The input's name.
        source_name: String,
        /// Which entry: `entry 12 (fullUrl urn:uuid:…)` or `line 7`.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A resource breaks the FHIR R4 structure rules.
    #[error(
        "{source_name}, {entry}: {resource} is not valid FHIR R4: {}{} (use --lenient to \
         store it anyway)",
        violations.iter().take(5).map(ToString::to_string).collect::<Vec<_>>().join("; "),
        if violations.len() > 5 { format!("; and {} more", violations.len() - 5) } else { String::new() }
    )]
    Invalid {
        /// The input's name.
        source_name: String,
        /// Which entry: `entry 12 (fullUrl urn:uuid:…)`, `line 7` or `the resource`.
        entry: String,
        /// `Type/id`.
        resource: String,
        /// Every rule broken, with the element's path.
        violations: Vec<crate::validate::Violation>,
    },
}

/// What went wrong in a vault operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EhiError {
    /// The keystore could not be used.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// The input of an import was refused; nothing was committed.
    #[error("import refused, nothing was stored: {0}")]
    Import(#[from] ImportError),
    /// An import would put more than one patient's records in the vault.
    #[error(
        "import refused, nothing was stored: a vault keeps one patient's records, and this \
         import would hold those of {} ({}){}. Import each patient into their own vault, or \
         pass --allow-other-patients for a guardian's or household vault (the decision is \
         recorded in the audit log)",
        patients.len(),
        patients.join(", "),
        if kept.is_empty() { String::new() } else { format!("; the vault keeps {}", kept.join(", ")) }
    )]
    OtherPatients {
        /// The patients the vault keeps already (`Patient/id`).
        kept: Vec<String>,
        /// Every patient the vault would keep after the import.
        patients: Vec<String>,
    },
    /// A server of the invariant network could not be reached or refused a request.
    #[error("{context}: {source}")]
    Network {
        /// What the vault was doing.
        context: String,
        /// The client error.
        #[source]
        source: ClientError,
    },
    /// The set of storage servers refused a blob operation (other than a failed
    /// request to one of them, which is [`EhiError::Network`]).
    #[error("{context}: {source}")]
    Storage {
        /// What the vault was doing.
        context: String,
        /// Why.
        #[source]
        source: invariant_content::StoreError,
    },
    /// Nothing accepts connections at the broker's address.
    #[error("no broker at {url}; start one with `invariant up` (or give --broker)")]
    NoBroker {
        /// The broker url tried.
        url: String,
    },
    /// The network lacks a server the vault needs.
    #[error("the invariant network at {broker} has no usable {kind} server{hint}")]
    MissingServer {
        /// The broker asked.
        broker: String,
        /// The server kind (`storage`, `slots`).
        kind: &'static str,
        /// Extra detail.
        hint: String,
    },
    /// No vault exists for this keystore.
    #[error("no vault found for this keystore (slot {slot} is unknown to the slots server)")]
    NoVault {
        /// The vault slot.
        slot: Id,
    },
    /// A vault already exists for this keystore.
    #[error("a vault already exists for this keystore (slot {slot})")]
    VaultExists {
        /// The vault slot.
        slot: Id,
    },
    /// The vault was removed: its slot holds the tombstone.
    #[error("this vault was removed (its slot {slot} holds the tombstone); nothing can be read")]
    Removed {
        /// The vault slot.
        slot: Id,
    },
    /// A blob is missing from every storage server.
    #[error("{what} (blob {address}) is missing from every storage server")]
    MissingBlob {
        /// Which object.
        what: String,
        /// Its address.
        address: Id,
    },
    /// Stored data failed an integrity check: a blob whose bytes do not match its
    /// address on every server, or a ciphertext that does not authenticate under the
    /// vault's keys (tampering, or a different vault's data).
    #[error("{what} is corrupted or was tampered with: {reason}")]
    Corrupt {
        /// Which object.
        what: String,
        /// What check failed.
        reason: String,
    },
    /// The data was written by a newer (or unknown) format.
    #[error("{what} has format version {found}; this build reads version {supported}")]
    UnsupportedFormat {
        /// Which object.
        what: &'static str,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The resource (or version) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The resource was deleted (its latest version is a deletion).
    #[error("{0} was deleted")]
    Gone(String),
    /// A request argument is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Search failed.
    #[error("search: {0}")]
    Search(String),
    /// Concurrent writers kept winning the race for the vault slot.
    #[error("gave up after {attempts} attempts: other devices keep updating the vault")]
    Contention {
        /// How many commits were tried.
        attempts: u32,
    },
    /// Local file I/O failed (export).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking worker task failed (a bug: it panicked or was cancelled).
    #[error("internal worker failed: {0}")]
    Worker(String),
    /// Encryption or signing failed.
    #[error("cryptography: {0}")]
    Crypto(String),
    /// A patient summary could not be signed (see [`crate::ips`]).
    #[error("patient summary: {0}")]
    Signature(#[from] SignatureError),
    /// The grant expired: the app library refuses to use it.
    #[error("grant {grant} expired at {expired}; ask the patient for a new grant")]
    GrantExpired {
        /// The grant id.
        grant: String,
        /// When it expired (FHIR instant).
        expired: String,
    },
    /// The grant was revoked (its slot holds the tombstone), or the data moved to a key
    /// epoch the grant does not hold.
    #[error("grant {grant} no longer gives access: {reason}")]
    Revoked {
        /// The grant id.
        grant: String,
        /// What showed it.
        reason: String,
    },
    /// The audit log does not verify.
    #[error(transparent)]
    AuditBroken(#[from] AuditBreak),
    /// The app asked for data outside its grant.
    #[error("not granted: {0}")]
    NotGranted(String),
    /// A device invite code was refused (unknown, expired, already used, or answered
    /// by something that does not hold the code's secret). See `ehi_share::device`.
    #[error("invite code refused: {0}")]
    Invite(String),
    /// This keystore is not (or no longer) one of the vault's devices: the root is
    /// sealed under a root key generation it was not given. See `ehi_share::device`.
    #[error("this device cannot open the vault: {0}")]
    NotADevice(String),
    /// The vault slot points at a root older than one this device already saw
    /// (see `vault/rollback.rs`).
    #[error(
        "the vault slot points at generation {found}, older than generation {seen} this \
         device already saw: a server is serving an old root (a rollback); refusing to use \
         it.{hint}"
    )]
    Rollback {
        /// The highest generation this device saw.
        seen: u64,
        /// The generation the slot points at now.
        found: u64,
        /// What to do if the vault was restored on purpose (may be empty).
        hint: String,
    },
}

impl EhiError {
    /// A [`EhiError::Network`] with context.
    #[doc(hidden)]
    pub fn network(context: impl Into<String>, source: ClientError) -> EhiError {
        EhiError::Network {
            context: context.into(),
            source,
        }
    }

    /// A [`EhiError::Corrupt`].
    #[doc(hidden)]
    pub fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> EhiError {
        EhiError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

impl From<tokio::task::JoinError> for EhiError {
    fn from(e: tokio::task::JoinError) -> EhiError {
        EhiError::Worker(e.to_string())
    }
}

/// Result alias of the crate.
pub type Result<T, E = EhiError> = std::result::Result<T, E>;

/// The first entry of a log that fails verification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit log entry {index} (seq {seq}) fails verification: {reason}")]
pub struct AuditBreak {
    /// Position in the log, oldest first.
    pub index: usize,
    /// The entry's own `seq`.
    pub seq: u64,
    /// What failed.
    pub reason: String,
}

/// Why a patient summary's signature could not be made or does not verify (see
/// [`crate::ips`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The Bundle has no `signature`.
    #[error("the Bundle is not signed (no Bundle.signature)")]
    Missing,
    /// The signature is not a JWS of the form this module writes.
    #[error("Bundle.signature is not a detached Ed25519 JWS: {0}")]
    Format(String),
    /// The Bundle has no RFC 8785 canonical form (a number outside the double range,
    /// or not a JSON object).
    #[error("the Bundle cannot be canonicalized (RFC 8785): {0}")]
    Canonical(String),
    /// The signature does not match the Bundle and key: the Bundle was changed after
    /// signing, or another key signed it.
    #[error("the signature does not verify: the Bundle was altered or signed by another key")]
    Mismatch,
}
