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
//! - **Root key generations**: removing a device ([`crate::share::remove_device`]) seals later
//!   roots and audit entries under a new random root key (its generation is the root
//!   envelope's epoch), HPKE-sealed to each remaining device through the device keyring
//!   slot, and re-publishes the emergency policy under keys derived from it; see
//!   [`device`] and [`emergency`].
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
//!   audit entry format 1 ([`audit`]); vault root format 3 (reads 1 and 2, [`mod@format`]);
//!   emergency ticket `ehi-emergency-ticket` v1, emergency policy format 1
//!   ([`emergency`]); device invite code `ehi1-…`, invite messages and device keyring
//!   format 1 ([`device`]); inbox card `ehi-inbox-card` v1, sealed letters `EHQ`/`EHD`
//!   (consent request and decision, [`consent`]), `EHH`/`EHM` (grant channel header and
//!   message, [`contribution`]), each with a format-1 payload; seen-generation file
//!   `ehi-seen-generation` v1 (rollback detection).
//! - Export: FHIR R4 Bundles and Bulk Data NDJSON ([`export`]).
//! - Patient summary: the HL7 International Patient Summary, a FHIR `document` Bundle
//!   signed by the patient (`Bundle.signature`: detached Ed25519 JWS over the RFC 8785
//!   canonical Bundle) ([`ips`]).
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
//! one extra blob per audit entry, an emergency policy slot (a new one after each device
//! removal) and an emergency log slot with one blob per use, one short-lived slot per device invite (three blobs and a
//! tombstone), a device keyring slot once a device was removed (whose blob shows the
//! number of devices), when slots move, and which blobs are pinned together (the
//! distributor sees one pin request per import). They never see plaintext, FHIR ids,
//! names, codes, dates, resource types or keys: blob addresses are SHA-256 of
//! ciphertext and everything else is inside the envelopes. The test
//! `storage_learns_nothing` scans every server's data directory for the input's names,
//! identifiers, codes and dates; `servers_see_no_grant_contents` (tests/sharing.rs)
//! does the same for app names, scope names, purposes, grant ids, app keys and audit
//! event text after a grant, an app session, a revocation and audit entries;
//! `servers_see_no_emergency_policy_or_invite_contents` (tests/privacy_devices.rs) for
//! the emergency holder, reason, purpose and label, invite codes and device keys.
//!
//! Consent requests, decisions, contributions and apps' audit reports add: an inbox
//! slot, one reply slot per request and one channel slot per grant — all open slots
//! (`none` signature scheme) with random or derived ids, unlinkable to the vault slot —
//! and HPKE-sealed blobs padded to power-of-two sizes; the signatures are inside the
//! ciphertexts. `servers_see_nothing_of_requests_contributions_and_app_audit`
//! (tests/privacy.rs) scans for app names, purposes, scopes, notes, contributed text,
//! ids, app keys and the Consent/Provenance/AuditEvent vocabulary. An inbox **name**
//! on the names server is public by design (see [`consent`]).
//!
//! Not hidden: timing and volume (an import of 3,700 resources writes about 3,700
//! blobs at once), and which scope slot moves when (one scope that rarely changes is
//! visible as such, though not named). A server can withhold or roll back data — it
//! cannot forge it (addresses are hashes; envelopes authenticate; slot updates are
//! signed). A rollback of the vault slot to an older root is refused by a device that
//! saw a newer one (it remembers the highest generation next to its keystore,
//! [`Vault::check_rollback`]; the `ehi` command line checks at every start and records
//! after every command; an open handle also refuses an older root on every re-read)
//! and accepted by a device that has not.
//!
//! ## Concurrency
//! Two devices may import at once: the vault slot's compare-and-swap serializes the
//! commits and the loser re-plans its changes on the winner's root (see [`vault`]).
//! No import is lost; a resource changed by both keeps both versions.
//!
//! ## Removal and its limits
//! [`crate::share::remove`] moves the vault slot and every other slot the patient's devices
//! write — scope and grant slots, grant channels, the consent inbox and the requests'
//! reply slots, the emergency policy and access log slots, the device keyring — to a
//! public tombstone, unpins every block the patient's devices pinned (the vault's
//! blocks, channel headers, policy and keyring blobs, a published inbox card) at the
//! distributor, overwrites and deletes the keystore file, and drops the in-memory keys
//! (tests/removal.rs). Open slots (inbox, reply slots, channels) and the emergency log
//! (whose key the holder has) can be moved off the tombstone again by the apps, and
//! blobs the apps and the holder pinned (requests, contributions, log entries) stay
//! pinned by them: see `ehi_share::removal`.
//!
//! **The timeline of removal.** At once: every key is gone, so the data cannot be
//! decrypted (crypto-shredding) and the slots show the tombstone. The ciphertext
//! itself stays on the storage servers while the distributor's grace period runs
//! (`--gc-grace`, default 24 h, counted from the unpin); the first garbage-collection
//! sweep after that (every `--gc-interval`, default 1 h) deletes every unpinned block
//! from every reachable storage server (GET answers 404 from then on), a server that
//! was down deletes when it returns, and each server's pack compaction then reclaims
//! the disk space. [`RemoveReport::collection`] gives the distributor's figures, and
//! `ehi delete` prints them. A block someone else still pins (an app's contribution,
//! an emergency log entry) stays. A copy of the keystore file made
//! before removal (a backup), together with its passphrase, still opens the old root
//! through the slot's history while the blocks exist — crypto-shredding reaches only
//! the copies it is given.
//! Overwriting a file is not guaranteed to erase it on copy-on-write or flash storage.
//!
//! ## Sharing with apps ([`app`], [`grant`], [`session`])
//! An app has its own identity: an ed25519 signing key and an HPKE (X25519) key in an
//! app keystore file (same protection as the patient's), published as a signed **app
//! card**. [`crate::share::grant`] seals the keys of every epoch of the granted scopes, and
//! their slot ids, to the app's HPKE key, signed by the patient, into a blob that a
//! **per-grant slot** (owned by the patient; its seed is in the root) points at; the
//! root lists the grants ([`format::GrantRecord`], root format 2). The app opens it with
//! [`AppSession`] and the library alone: it follows the scope slots to the manifests
//! and can decrypt nothing else — enforcement is cryptographic, no server decides.
//! [`crate::share::grants()`] lists grants (with their SMART v2 scope equivalents,
//! [`grant::smart_scopes`]) for a server facade to build on.
//!
//! **Revocation** ([`crate::share::revoke`]) moves every affected scope to a new key epoch,
//! re-seals the manifests under it, re-seals the remaining grants covering those scopes
//! with the new key, tombstones the grant slot and its channel, and writes everything afterwards under
//! the new epoch; `reencrypt` also re-encrypts old versions under the new key and
//! unpins the old blobs. Expired grants are rotated away at the patient's next import
//! ([`Vault::expire_grants`]); the app library refuses them before that.
//! **What revocation cannot do: take back what an app already read or copied** while
//! it held the key — decrypted resources, and old epoch keys (which open old blobs
//! until they are collected: with `reencrypt` the old ciphertext is unpinned and leaves
//! the storage servers after the distributor's grace period and next sweep, as for
//! removal; [`RevokeReport::collection`]).
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

//! ## Break-glass emergency access ([`emergency`])
//! The patient names a holder (an app card) in advance; the policy is a grant of the
//! emergency scopes (allergies, medications, clinical — where Condition lives, so the
//! whole clinical scope — and immunizations) with purpose `ETREAT`, plus a policy slot
//! and an access log the holder signs. [`emergency::EmergencyAccess::open`] logs each
//! use (AuditEvent with `ETREAT` and the `BTG` label) before opening the grant; `ehi
//! status` shows `"emergency access on <date> by <who>"` until `ehi emergency ack`.
//! Logging is done by the holder's software: cryptography cannot force a holder that
//! has the keys to log. The policy is keyed per root key generation and re-published
//! when a device is removed; the access log is not (its key is in the holder's ticket).
//!
//! ## Devices ([`device`])
//! `ehi device invite` publishes an invite slot derived from a one-time code (128-bit
//! secret, expiry, slots server); the joining device answers with its HPKE key through
//! that slot, sealed with a key derived from the code, and receives the patient's keys
//! HPKE-sealed to it. Codes are refused when wrong, expired or spent.
//! [`crate::share::remove_device`] rotates the root key and every scope key so the removed
//! device cannot open anything written afterwards (it keeps the signing key: it could
//! still move the vault's slots, which only a new vault slot would end).
//! [`Vault::watch`] follows the vault slot's watch stream and refreshes on each move.
//!
//! ## Consent requests, contributions, apps' audit ([`consent`], [`contribution`])
//! An app sends a **consent request** (its signed card, scopes, access, a v3
//! PurposeOfUse code, a period, a note) HPKE-sealed to the patient's **inbox** (an open
//! slot named by a shared inbox card, or found by a name on the names server); `ehi
//! requests` lists them, `ehi approve` makes the grant ([`crate::share::grant`]) and `ehi
//! deny` refuses — either way the decision is kept as a FHIR R4 `Consent` in the
//! vault, recorded in the root, logged, and posted, signed by the patient and sealed
//! to the app, to the app's reply slot ([`consent::poll`]). Approving is idempotent:
//! the grant's id is derived from the request (keyed by a secret of the vault), so
//! approving again after a crash reuses the grant and completes only the missing steps.
//! Every grant has a **channel** (an open slot whose id both sides derive from the
//! grant): the patient's device registers it at a header carrying a per-grant HPKE
//! key; the app posts **contributions** ([`AppSession::contribute`]) and entries of
//! **its own signed, hash-chained audit log** ([`AppSession::report_use`]) to it.
//! Nothing enters the vault until the patient accepts (`ehi inbox`, `ehi accept`,
//! `ehi reject`): accepted resources are imported with a FHIR R4 `Provenance`; a
//! read-only grant, a wrong signer or a resource outside the grant's scopes is refused
//! by the device. [`crate::share::merge_app_audit`] verifies the apps' chains and logs them
//! (`app-read`), which gives `ehi grants` its "last use".
//!
//! ## Search
//! Each scope manifest carries an `ehi_search::SearchIndex` over the current version
//! of its resources; [`Vault::search`] answers FHIR search queries from it on the
//! device (see the `ehi-search` crate for the supported parameters) and fetches the
//! matching resources; [`Vault::search_ids`] answers from the index alone.
//!
//! ## Performance
//! Measured by `cargo bench -p ehi-layer --bench vault`, `--bench sharing` and `--bench
//! serve`; the figures, with the command behind each, are in `BENCHMARKS.md`. The
//! shape that matters for design: one blob and one PUT per resource version, one pin
//! request and one commit per import, and manifests that are whole objects (an import
//! rewrites the touched scopes' manifests and indexes).

// The crates the ehi-layer is made of, re-exported so one path serves every user of
// the library: `ehi-vault` (keys, formats, the vault), `ehi-share` (grants, requests,
// channels, devices, emergency, removal, the app's side) and `ehi-serve` (the FHIR
// facade). The `ehi` binary (src/main.rs, src/cli/) is built on this crate.
pub use ehi_serve as serve;
pub use ehi_share as share;
pub use ehi_share::{consent, contribution, device, emergency, session};
pub use ehi_vault::{
    app, audit, error, export, fhir, format, grant, ips, keys, keystore, network, present, purpose,
    reads, scope, seal, time, validate, vault,
};

pub use app::{AppCard, AppKeystore};
pub use consent::{ConsentAsk, Decision, InboxCard, PendingRequest};
pub use error::{EhiError, ImportError, KeystoreError, Result};
pub use fhir::{ImportOptions, Input};
pub use grant::{Access, GrantInfo, GrantRequest, GrantTicket};
pub use keystore::{KdfParams, Keystore, RecoveryCode};
pub use network::Network;
pub use scope::Scope;
pub use session::AppSession;
pub use share::{
    ConsentOutcome, ConsentRequestInfo, ContributionInfo, MergeReport, RemoveReport, RequestList,
};
pub use vault::{
    HistoryEntry, ImportReport, Placement, Progress, ProgressFn, RevokeReport, SearchHits, Stage,
    Status, Vault, VaultOptions, tombstone_address,
};
