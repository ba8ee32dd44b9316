//! # ehi-layer
//!
//! A patient's electronic health information, as HL7 FHIR R4 resources, kept in the
//! invariant network: encrypted on the patient's device, stored as blobs, tracked by
//! slots, searchable on the device, exportable and removable. The `ehi` binary is a
//! thin command line over this library.
//!
//! ```text
//! keystore file (device) ──Argon2id+XChaCha20──▶ signing key, HPKE key, root key
//!        │ signing key = vault slot id
//!        ▼
//! vault slot (ed25519) ──▶ vault root blob (sealed, root key)
//!                              │ per scope: slot key, epoch keys, manifest blocks
//!                              ▼
//!   scope slot (ed25519) ──▶ scope manifest blob(s) (sealed, scope epoch key)
//!                              │ type → id → versions → blob blocks; search index
//!                              ▼
//!                         resource version blobs (sealed, scope epoch key)
//! ```
//!
//! ## Key hierarchy
//! - **Keystore** ([`keystore`]): the signing key (ed25519; its public half is the vault
//!   slot id), the HPKE key (X25519, RFC 9180, to seal keys to devices and, later,
//!   apps), and the **root key** — all random, in one file protected by Argon2id and
//!   XChaCha20-Poly1305.
//! - **Root**: sealed with `BLAKE3-derive_key("… vault root", root key)`. It holds, per
//!   scope, the scope slot's ed25519 seed, the scope key of **every epoch** with the
//!   current epoch number, and the manifest's blocks.
//! - **Scope epoch keys**: random 32-byte keys; manifests are sealed with
//!   `derive_key("… scope manifest", k)`, resource versions with
//!   `derive_key("… resource version", k)`. Every blob header, every manifest and every
//!   version entry records its epoch, so a rotation (a new epoch) leaves old blobs
//!   readable through the old key kept in the root.
//! - Keys are never derived from content (no convergent encryption: health records are
//!   guessable and convergent encryption lets anyone confirm a guess). Nonces are
//!   random 192-bit XChaCha20 nonces. Key material lives in [`keys::SecretKey`] (wiped
//!   on drop); decrypted roots and manifests are wiped after decoding.
//!
//! ## Formats (every one carries a version marker)
//! - Blob envelope ([`seal`]): `"EHI" ‖ 1 ‖ epoch ‖ nonce ‖ ciphertext ‖ tag`; associated
//!   data binds the header, the object kind and the scope. **Padding buckets**: every
//!   blob is exactly 1, 2, 4, 8, 16, 32, 64, 128, 256, 512 or 1024 KiB; objects above
//!   one 1 MiB blob are chunked into 1 MiB blobs listed by a head blob.
//! - Vault root and scope manifests ([`mod@format`]): postcard, starting with a format
//!   number (1); the search index inside a manifest has its own format number.
//! - Keystore: JSON with `format: "ehi-keystore"`, `version: 1`; app keystore the same
//!   with `format: "ehi-app-keystore"`; app card `ehi-app-card` v1; grant ticket
//!   `ehi-grant-ticket` v1; sealed grant blob `"EHG" ‖ 1`, payload format 1 ([`grant`]);
//!   audit entry format 1 ([`audit`]); vault root format 2 (reads 1).
//! - Export: FHIR R4 Bundles and Bulk Data NDJSON ([`export`]).
//!
//! ## Scopes
//! Eight scopes (demographics, clinical, medications, immunizations, allergies,
//! documents, financial, sensitive), assigned by the documented resourceType table in
//! [`scope`], overridable per type by the patient, plus `meta.security` sensitivity
//! labels routing to `sensitive`. Each scope has its own key (with epochs), its own
//! manifest and its own slot, so a grant of one scope hands over that scope's keys and
//! slot and nothing else.
//!
//! ## What the servers learn (threat model)
//! Storage, slots, broker and distributor servers — and anyone who copies their disks
//! — see: the number of blobs, their bucketed sizes, the epoch numbers in blob headers,
//! nine slot ids (the vault slot and eight scope slots, unlinkable to the patient
//! except through timing) plus one slot per grant (pointing at an HPKE-sealed blob;
//! neither the app, the scopes, the purpose nor the patient's signature is visible),
//! one extra blob per audit entry, when slots move, and which blobs are pinned together (the
//! distributor sees one pin request per import). They never see plaintext, FHIR ids,
//! names, codes, dates, resource types or keys: blob addresses are SHA-256 of
//! ciphertext and everything else is inside the envelopes. The test
//! `storage_learns_nothing` scans every server's data directory for the input's names,
//! identifiers, codes and dates; `servers_see_no_grant_contents` (tests/sharing.rs)
//! does the same for app names, scope names, purposes, grant ids, app keys and audit
//! event text after a grant, an app session, a revocation and audit entries.
//!
//! Not hidden: timing and volume (an import of 3,700 resources writes about 3,700
//! blobs at once), and which scope slot moves when (one scope that rarely changes is
//! visible as such, though not named). A server can withhold or roll back data — it
//! cannot forge it (addresses are hashes; envelopes authenticate; slot updates are
//! signed), and a rollback of the vault slot to an older root is accepted by a device
//! that has not seen the newer one.
//!
//! ## Concurrency
//! Two devices may import at once: the vault slot's compare-and-swap serializes the
//! commits and the loser re-plans its changes on the winner's root (see [`vault`]).
//! No import is lost; a resource changed by both keeps both versions.
//!
//! ## Removal and its limits
//! [`Vault::remove`] moves the vault slot and every scope slot to a public tombstone,
//! unpins every block at the distributor, overwrites and deletes the keystore file, and
//! drops the in-memory keys. **The storage protocol has no delete**: unpinned blobs
//! stay on the storage servers as ciphertext until collected; they are undecryptable
//! only because every copy of the keys is gone. A copy of the keystore file made
//! before removal (a backup), together with its passphrase, still opens the old root
//! through the slot's history — crypto-shredding reaches only the copies it is given.
//! Overwriting a file is not guaranteed to erase it on copy-on-write or flash storage.
//!
//! ## Sharing with apps ([`app`], [`grant`], [`session`])
//! An app has its own identity: an ed25519 signing key and an HPKE (X25519) key in an
//! app keystore file (same protection as the patient's), published as a signed **app
//! card**. [`Vault::grant`] seals the keys of every epoch of the granted scopes, and
//! their slot ids, to the app's HPKE key, signed by the patient, into a blob that a
//! **per-grant slot** (owned by the patient; its seed is in the root) points at; the
//! root lists the grants ([`format::GrantRecord`], root format 2). The app opens it with
//! [`AppSession`] and the library alone: it follows the scope slots to the manifests
//! and can decrypt nothing else — enforcement is cryptographic, no server decides.
//! [`Vault::grants`] lists grants (with their SMART v2 scope equivalents,
//! [`grant::smart_scopes`]) for a server facade to build on.
//!
//! **Revocation** ([`Vault::revoke`]) moves every affected scope to a new key epoch,
//! re-seals the manifests under it, re-seals the remaining grants covering those scopes
//! with the new key, tombstones the grant slot, and writes everything afterwards under
//! the new epoch; `reencrypt` also re-encrypts old versions under the new key and
//! unpins the old blobs. Expired grants are rotated away at the patient's next import
//! ([`Vault::expire_grants`]); the app library refuses them before that.
//! **What revocation cannot do: take back what an app already read or copied** while
//! it held the key — decrypted resources, and old epoch keys (which open old blobs as
//! long as a storage server keeps them: the protocol has no delete, unpinning only
//! allows collection).
//!
//! ## Audit ([`audit`])
//! One append-only log per vault: each entry a FHIR R4 AuditEvent, ed25519-signed by
//! the writer, BLAKE3 hash-chained to the previous one, sealed as its own blob; the
//! root's `audit_head` points at the newest. Imports, grants and revocations append
//! their entry in the same commit; [`Vault::audit`] appends others (the `ehi` command
//! line logs the patient's reads, searches, exports and removal).
//! [`Vault::audit_verify`] checks signatures, order and chain end to end and names the
//! first bad entry.
//!
//! ## FHIR REST facade ([`serve`])
//! `ehi serve` answers FHIR R4 REST on the device from the decrypted vault. Apps use
//! bearer tokens bound to their grant (`ehi token <grant>` or a SMART App Launch v2
//! authorization-code flow with PKCE, for clients the patient pre-authorized), refused
//! once the grant is revoked or expired or the token itself revoked; every request is
//! written to the audit log in batches ([`Vault::audit_batch`]).

//! ## Search
//! Each scope manifest carries an `ehi_search::SearchIndex` over the current version
//! of its resources; [`Vault::search`] answers FHIR search queries from it on the
//! device (see the `ehi-search` crate for the supported parameters) and fetches the
//! matching resources; [`Vault::search_ids`] answers from the index alone.
//!
//! ## Performance (benches/vault.rs, release build, in-process network of 3 storage
//! servers on a shared 2-core machine)
//! - import of 10,000 resources (3 Synthea patients + seeded synthetic Observations):
//!   about 2,600 resources/s — one blob and one HTTP PUT per version, 64 in flight,
//!   sealing in batches of 256 on the blocking pool, one pin request, one commit;
//! - an import into a full vault rewrites the touched scopes' manifests and indexes
//!   (500 resources into 10,000: about 0.34 s) — manifests are whole objects, not
//!   trees, which is the first thing to change for vaults far beyond 10^4 resources;
//! - cold open of that vault: about 30 ms (root + 8 manifests), 40 ms with every
//!   search index decoded;
//! - search: index p99 below 1 ms for a token, a date range and a string query; with a
//!   page of 20 resources fetched and decrypted, p50 about 3 ms and p99 10–30 ms (20
//!   concurrent GETs; the tail is scheduling noise on the shared machine).

pub mod app;
pub mod audit;
pub mod error;
pub mod export;
pub mod fhir;
pub mod format;
pub mod grant;
pub mod keys;
pub mod keystore;
pub mod network;
pub mod present;
pub mod scope;
pub mod seal;
mod search;
pub mod serve;
pub mod session;
pub mod time;
pub mod vault;

pub use app::{AppCard, AppKeystore};
pub use error::{EhiError, ImportError, KeystoreError, Result};
pub use fhir::Input;
pub use grant::{Access, GrantInfo, GrantRequest, GrantTicket};
pub use keystore::{KdfParams, Keystore};
pub use network::Network;
pub use scope::Scope;
pub use session::AppSession;
pub use vault::{
    HistoryEntry, ImportReport, Progress, ProgressFn, RemoveReport, RevokeReport, SearchHits,
    Stage, Status, Vault, VaultOptions, tombstone_address,
};
