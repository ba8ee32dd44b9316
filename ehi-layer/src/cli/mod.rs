//! The subcommands of `ehi`, one file per group: the command line itself (`args`), the
//! vault's life and its keystore (`lifecycle`), the records (`records`), sharing with
//! apps (`sharing`), the audit log (`audit`), consent requests and contributions
//! (`consent`), devices and break-glass access (`devices`), the FHIR server and its
//! tokens (`serve`), and what they share: prompts, printing, paths (`common`).

pub(crate) mod args;
pub(crate) mod audit;
pub(crate) mod common;
pub(crate) mod consent;
pub(crate) mod devices;
pub(crate) mod lifecycle;
pub(crate) mod records;
pub(crate) mod serve;
pub(crate) mod sharing;
