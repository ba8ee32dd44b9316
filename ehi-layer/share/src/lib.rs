//! # ehi-share
//!
//! What the patient does with the vault beyond keeping records in it — grants to apps,
//! consent requests, grant channels (contributions and apps' audit reports), devices,
//! removal of the whole vault — and the other parties' side of those exchanges: an
//! app's session through a grant ([`session`]), consent requests ([`consent`]),
//! contributions ([`contribution`]), device pairing ([`device`]), break-glass access
//! ([`emergency`]).
//!
//! Each patient-side feature is a module of free functions taking the [`Vault`] they
//! act on (`ehi_share::grant(&vault, request)`), with its own report types. They build
//! on the vault crate's API for features (`ehi_vault::vault::prelude`): its state, its
//! one commit primitive (`Vault::commit`, which owns the read-modify-compare-and-swap
//! retry, sealing, pinning and the audit entry) and its key rotation. The direction is
//! one way: this crate uses `ehi-vault`; `ehi-vault` does not know it.
//!
//! [`Vault`]: ehi_vault::Vault

pub mod consent;
pub mod contribution;
pub mod device;
pub mod emergency;
mod letter;
pub mod session;

pub mod channels;
pub mod devices;
pub mod grants;
pub mod removal;
pub mod requests;

pub(crate) use channels::last_use;
pub use channels::{
    ContributionInfo, MergeReport, accept_contribution, contributions, merge_app_audit,
    publish_channel, publish_channels, reject_contribution,
};
pub(crate) use devices::add_device;
pub use devices::{DeviceRemoval, devices, remove_device};
pub(crate) use grants::grant_with_id;
pub use grants::{grant, grant_ticket, grants, revoke};
pub use removal::{RemoveReport, remove};
pub use requests::{
    ApproveStep, ConsentOutcome, ConsentRequestInfo, RequestList, UnreadableRequest,
    approve_request, approve_request_until, deny_request, inbox_card, publish_inbox_name, requests,
};
pub(crate) use requests::{card_of, open_request_at};
