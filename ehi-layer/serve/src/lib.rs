//! `ehi serve`: a FHIR R4 REST API over the decrypted vault, on the patient's device.
//!
//! The server binds `127.0.0.1` by default and keeps nothing on disk: resources are
//! read from (and written to) the vault through [`Vault`], decrypted resources are
//! cached in memory only, bulk export files live in memory until the job is deleted or
//! the server stops, and bearer tokens are checked by their keyed tag ([`token`]) and
//! against the vault's current grants and the revoked token ids ([`auth`]) rather than
//! looked up. The one file it reads besides the keystore is the revoked-token list
//! beside it (token ids only).
//!
//! ## Interactions (every resource type of [`ehi_search::resource_types`])
//! - `GET /metadata` — the CapabilityStatement ([`capability`]), generated from the
//!   `ehi-search` parameter table; public (no token).
//! - `GET [type]/[id]` read, `GET [type]/[id]/_history/[vid]` vread,
//!   `GET [type]/[id]/_history` and `GET [type]/_history` history (type history lists
//!   the versions of the type's current resources, newest first, paged).
//! - `GET [type]?…` and `POST [type]/_search` (form body) search: a `searchset` Bundle
//!   with `total` and `self`/`first`/`next`/`previous` links. **Paging** is stateless:
//!   the server asks the vault for every matching id in sort order (`_sort` is passed
//!   through; an index-only query, nothing is decrypted) and fetches only the page
//!   `[_offset, _offset + _count)` (`_count` defaults to 50, at most 1000); the links
//!   carry `_offset`. A page is consistent with the vault at the time of the request.
//!   `_summary=count|data|false`, `_elements` (which also keeps the type's mandatory
//!   elements), `_include` and `_revinclude` (on reference parameters) shape the
//!   answer; `_total=none` leaves `total` out. Unknown parameters follow FHIR's
//!   handling preference: 400 by default (`Prefer: handling=strict`), or ignored and
//!   reported in an OperationOutcome entry (`search.mode = outcome`) under
//!   `Prefer: handling=lenient`. `ehi search` answers through this same code
//!   ([`answer_locally`]).
//! - `POST [type]` create (the server assigns the id), `PUT [type]/[id]` update or
//!   create, `DELETE [type]/[id]`, all through [`Vault::import`]; `If-Match: W/"n"` on
//!   update is checked under the server's write lock (412 on mismatch). The lock
//!   serializes this server's writes; another device's commit between check and
//!   commit is not detected.
//! - `GET Patient/[id]/$everything` — the patient compartment and the resources it
//!   references (practitioners, organizations, locations, medications; paged like
//!   search).
//! - `GET|POST Patient/[id]/$summary` and `GET|POST Patient/$summary?identifier=` —
//!   the International Patient Summary, a `document` Bundle signed with the patient's
//!   key ([`ehi_vault::ips`], shared with `ehi summary`); the patient's own token only.
//! - Bulk Data ([`bulk`]): `GET $export`, `GET Patient/$export`,
//!   `GET Patient/[id]/$export` with `Prefer: respond-async`.
//!
//! - `_summary=true|text|data|count|false` ([`summary`]) on search and read.
//!
//! Decrypted current versions are kept in an in-memory cache bounded by
//! [`ServeOptions::cache_bytes`] and warmed at start (every current resource read
//! once), so searches answer from memory; this server's writes invalidate what they
//! wrote, and a refresh of the vault that brought other devices' changes empties and
//! re-warms it.
//!
//! **Following the vault slot**: the server watches the vault slot on the slots
//! server ([`Vault::watch`], the NDJSON watch stream; [`ServeOptions::watch`]) and
//! refreshes as soon as it moves, besides every [`ServeOptions::refresh_every`] (30 s,
//! a fallback while the watch is down; it is re-opened after 200 ms). So another
//! device's commit shows, and **a grant revoked elsewhere (`ehi revoke`) has its
//! tokens refused, within 2 s of the revocation reaching the slots server** (in
//! practice the time to re-read the changed manifests); an expired grant's tokens are
//! refused at once (its expiry is checked on every request).
//!
//! **Removal**: once the vault slot holds the tombstone (`ehi delete` on any device;
//! seen through the watch, a refresh, or a request), the server answers **every**
//! request (metadata included) with 410 Gone and an OperationOutcome saying the vault
//! was removed, within the same 2 s bound; it drops its decrypted resources (cache,
//! search results, bulk export files, the vault handle's manifests and indexes) and
//! the audit entries not yet written. `ehi serve --exit-on-removal` then exits
//! ([`Server::removed`]).
//!
//! **Authorization**: every request except `/metadata`,
//! `/.well-known/smart-configuration`, `/authorize` and `/token` needs a bearer token
//! ([`token`]): the patient's, one bound to a grant (`ehi token <grant>` or the
//! authorization-code flow of [`oauth`]; refused once the grant is revoked or expired,
//! [`auth`]), or one minted from bare scopes. A token can be revoked on its own
//! (`ehi token revoke`).
//!
//! **Confinement**: beyond its type scopes, a grant token sees only the resources kept
//! in the grant's scopes ([`Vault::placements`]), and a token with a patient context
//! (`launch_patient`, set by `ehi token <grant>` and `/token` to
//! [`context_patient`]) sees only the compartment of that Patient plus resources in no
//! patient's compartment (Practitioner, Organization, Medication, …) — on read, vread,
//! history, search (totals count what it sees), `_include`/`_revinclude`,
//! `$everything` and `$export`. A resource it may not see answers 404 as if it did not
//! exist; writing a resource that references another patient is a 403.
//!
//! **Audit**: every request is written to the vault's audit log, batched ([`audit`]).
//!
//! **Performance**: search results are cached per query (emptied with the resource
//! cache), so paging costs one index search; figures from `cargo bench -p ehi-layer
//! --bench serve` are in `BENCHMARKS.md`.
//!
//! Only JSON is served: `Accept: application/fhir+xml` or `_format=xml` gets 406.
//! Errors are OperationOutcomes ([`error`]); OAuth endpoints answer RFC 6749 JSON
//! errors.
//!
//! ## Layout
//! `server` starts the server and holds its options and handle; `route` takes each
//! request (removal check, authorization, dispatch, audit entry); `access` turns the
//! bearer token into a caller and confines what it sees; `read`, `search`,
//! `everything`, `patient_summary` and `write` answer the interactions, with `params`
//! for paging and result shaping; `cache` keeps the decrypted resources and search
//! results; `follow` keeps up with the vault slot (refresh, removal, audit flushes).

pub mod audit;
pub mod auth;
pub mod bulk;
pub mod capability;
pub mod error;
pub mod oauth;
pub mod summary;
pub mod token;

mod access;
mod cache;
mod everything;
mod follow;
mod params;
mod patient_summary;
mod read;
mod respond;
mod route;
mod search;
mod server;
mod write;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use access::context_patient;
pub use cache::SEARCH_CACHE_IDS;
pub use error::ServeError;
pub use server::{ServeOptions, Server, answer_locally, start, start_with};
pub use token::{Access, Claims, Perm, TokenKey};

pub(crate) use access::{Caller, check_visible, visible_refs, visible_resources};
use cache::Cache;
pub(crate) use cache::{current_refs, fetch_refs};
pub(crate) use respond::fhir_response;
use respond::known_type;

use ehi_vault::vault::Vault;

/// Largest request body accepted (16 MiB).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Page size when `_count` is not given.
pub const DEFAULT_COUNT: usize = 50;
/// Largest page.
pub const MAX_COUNT: usize = 1000;
/// How often the server re-reads the vault by default, besides following the vault
/// slot (the fallback while the slot watch is down).
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How often the revoked-token file is checked for changes.
pub const REVOKED_POLL: Duration = Duration::from_secs(1);

/// Shared state of the handlers.
#[derive(Debug)]
pub(crate) struct AppState {
    vault: Arc<Vault>,
    key: TokenKey,
    base: String,
    write: tokio::sync::Mutex<()>,
    jobs: bulk::Jobs,
    cache: Arc<Cache>,
    auth: auth::Auth,
    oauth: oauth::OAuth,
    /// Whether requests are queued in the vault's audit log ([`audit`]).
    audit: bool,
    warmed: watch::Sender<bool>,
    /// [`ServeOptions::warm_up`]: whether a refresh that changed the resources warms
    /// the emptied cache again.
    warm_up: bool,
    /// Set once the vault is seen removed: every request is answered 410 from then on.
    removed: watch::Sender<bool>,
}

type Pairs = Vec<(String, String)>;
