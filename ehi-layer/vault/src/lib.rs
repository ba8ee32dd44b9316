//! # ehi-vault
//!
//! The bottom layer of the ehi-layer: a patient's FHIR R4 records sealed on the device,
//! stored as blobs in the invariant network and tracked by one slot. It holds the
//! keystore and key hierarchy, the sealed formats, parsing and the R4 structure check,
//! the [`Vault`] handle (create, open, import, read, history, search,
//! export, status), its one commit primitive, key rotation, the device keyring, the
//! audit log, and the signed International Patient Summary ([`ips`]). The design is
//! written in the `ehi-layer` crate docs and in each module's.
//!
//! What the patient does with the vault beyond keeping records (grants, consent
//! requests, contributions, devices, emergency access, removal) is in `ehi-share`,
//! which builds on this crate's [`vault::prelude`]; nothing here depends on it.

pub mod app;
pub mod audit;
pub mod error;
pub mod export;
pub mod fhir;
pub mod format;
pub mod grant;
pub mod ips;
pub mod keys;
pub mod keystore;
pub mod network;
pub mod present;
pub mod purpose;
pub mod reads;
pub mod scope;
pub mod seal;
#[doc(hidden)]
pub mod search;
#[doc(hidden)]
pub mod slotmove;
#[doc(hidden)]
pub mod snapshot;
pub mod time;
pub mod validate;
pub mod vault;

pub use error::{EhiError, Result};
pub use vault::Vault;
