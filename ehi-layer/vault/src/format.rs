//! The stored formats inside the encrypted envelopes: the vault root and the scope
//! manifests (postcard, each starting with a `format` number).
//!
//! ## Vault root (format 2), sealed under `derive_key(CONTEXT_ROOT, root key)`, epoch 0
//! - `vault_id` (16 random bytes), `generation` (+1 per commit), `updated_ms`;
//! - per scope: the scope slot's ed25519 seed and id, the **current epoch**, the key of
//!   **every epoch** (so blobs written under an old epoch stay readable after a
//!   rotation), and the blocks of the current manifest (head first);
//! - the patient's per-type scope overrides;
//! - devices (their HPKE public keys), grants (empty in format 1; format 2 lists the
//!   grants to apps, [`GrantRecord`], with each grant slot's seed), and the audit log
//!   head (none yet). Format 2 is format 1 plus non-empty grants: a format 1 root
//!   decodes as is.
//!
//! - **format 3** adds [`RootExtensions`] at the end (`ext`): the consent request
//!   inbox ([`InboxRecord`], its HPKE key), the decided requests ([`RequestRecord`]),
//!   the contributions already accepted or rejected ([`ContributionRecord`]) and, per
//!   grant, how far the app's own audit chain was merged ([`AppAuditCursor`]). Format 1
//!   and 2 roots are decoded with their own struct and converted (empty extensions).
//!
//! ## Scope manifest (format 1), sealed under `derive_key(CONTEXT_MANIFEST, epoch key)`
//! - the scope, the epoch of the key that sealed it, its generation;
//! - the resource table: type → id → versions, oldest first. Each version records its
//!   number (`meta.versionId`), the epoch of the key that sealed its blob, its blocks
//!   (head first; none for a deletion), `meta.lastUpdated`, when it was imported, a
//!   BLAKE3 hash of its content without `meta.versionId`/`meta.lastUpdated` (to skip
//!   unchanged re-imports), and the patients it references (the patient compartment);
//! - the search index: `ehi_search::SearchIndex`, postcard-encoded, with its own format
//!   number, over the current version of every resource in the scope.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{EhiError, Result};
use crate::keys::SecretKey;
use crate::scope::Scope;

/// Vault root format written by this build (3: [`RootExtensions`]; format 1 and 2
/// roots are read and converted).
pub const ROOT_FORMAT: u32 = 3;
/// Scope manifest format written by this build.
pub const MANIFEST_FORMAT: u32 = 1;
/// Search index encoding written by this build (postcard of `ehi_search::SearchIndex`).
pub const INDEX_FORMAT: u32 = 1;

/// The vault root.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VaultRoot {
    /// [`ROOT_FORMAT`].
    pub format: u32,
    /// Random id of the vault.
    pub vault_id: [u8; 16],
    /// Commit counter.
    pub generation: u64,
    /// Time of the commit, ms since the Unix epoch.
    pub updated_ms: u64,
    /// Every scope.
    pub scopes: BTreeMap<Scope, ScopeRecord>,
    /// The patient's resourceType → scope overrides.
    pub overrides: BTreeMap<String, Scope>,
    /// Devices that hold the keystore (HPKE public keys).
    pub devices: Vec<DeviceRecord>,
    /// Grants to apps (always empty in format 1; see [`crate::grant`]).
    pub grants: Vec<GrantRecord>,
    /// Address of the newest audit entry (none in format 1).
    pub audit_head: Option<[u8; 32]>,
    /// Format 3: consent inbox, decided requests, processed contributions, app audit
    /// cursors (empty when converted from format 1 or 2).
    pub ext: RootExtensions,
}

/// A format 1 or 2 root, as it was encoded (converted by [`decode_root`]).
#[derive(Deserialize)]
struct VaultRootV2 {
    format: u32,
    vault_id: [u8; 16],
    generation: u64,
    updated_ms: u64,
    scopes: BTreeMap<Scope, ScopeRecord>,
    overrides: BTreeMap<String, Scope>,
    devices: Vec<DeviceRecord>,
    grants: Vec<GrantRecord>,
    audit_head: Option<[u8; 32]>,
}

impl From<VaultRootV2> for VaultRoot {
    fn from(old: VaultRootV2) -> VaultRoot {
        VaultRoot {
            format: old.format,
            vault_id: old.vault_id,
            generation: old.generation,
            updated_ms: old.updated_ms,
            scopes: old.scopes,
            overrides: old.overrides,
            devices: old.devices,
            grants: old.grants,
            audit_head: old.audit_head,
            ext: RootExtensions::default(),
        }
    }
}

/// What format 3 added to the root (see `ehi_share::consent`, `ehi_share::contribution`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootExtensions {
    /// The consent request inbox, once the patient shared it.
    pub inbox: Option<InboxRecord>,
    /// Consent requests decided (approved or denied), oldest first.
    pub requests: Vec<RequestRecord>,
    /// Contributions accepted or rejected, oldest first.
    pub contributions: Vec<ContributionRecord>,
    /// Per grant, how far the app's own audit chain was merged.
    pub app_audit: Vec<AppAuditCursor>,
}

/// The patient's consent request inbox: an unsigned slot whose history lists the
/// requests, and the HPKE key they are sealed to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InboxRecord {
    /// The inbox slot (random id, `none` signature scheme: anyone holding the card
    /// may append).
    pub slot_id: [u8; 32],
    /// The address the slot was registered at (a random blob, not a request).
    pub start: [u8; 32],
    /// Seed of the inbox's HPKE (X25519) key.
    pub hpke_seed: SecretKey,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// A decided consent request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Storage address of the sealed request (its id is the first 16 bytes, hex).
    pub address: [u8; 32],
    /// The app's name (from its card).
    pub app_name: String,
    /// The app's ed25519 public key.
    pub app_signing: [u8; 32],
    /// Whether it was approved.
    pub approved: bool,
    /// The grant created (approved requests).
    pub grant: Option<[u8; 16]>,
    /// The `Consent` resource id that records the decision.
    pub consent_id: String,
    /// When it was decided, ms since the Unix epoch.
    pub decided_ms: u64,
    /// The app's reply slot the decision was published to.
    pub reply_slot: [u8; 32],
    /// Address of the sealed decision.
    pub decision: [u8; 32],
}

/// An accepted or rejected contribution.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContributionRecord {
    /// Storage address of the sealed contribution.
    pub address: [u8; 32],
    /// The grant it came through.
    pub grant: [u8; 16],
    /// Whether it was accepted (imported).
    pub accepted: bool,
    /// The `Provenance` id (accepted ones).
    pub provenance_id: Option<String>,
    /// When it was decided, ms since the Unix epoch.
    pub decided_ms: u64,
}

/// How far an app's own audit chain (in its grant channel) was merged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppAuditCursor {
    /// The grant.
    pub grant: [u8; 16],
    /// `seq` of the last merged entry.
    pub last_seq: u64,
    /// Chain hash of the last merged entry.
    pub last_hash: [u8; 32],
    /// `recorded` of the newest merged entry, ms since the Unix epoch ("last use").
    pub last_use_ms: u64,
    /// Entries merged in total.
    pub merged: u64,
}

/// One scope in the root.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScopeRecord {
    /// Seed of the scope slot's ed25519 key.
    pub slot_seed: SecretKey,
    /// The scope slot (the key's public half).
    pub slot_id: [u8; 32],
    /// The epoch new data is sealed under.
    pub current_epoch: u32,
    /// The key of every epoch, oldest first.
    pub keys: Vec<EpochKey>,
    /// Blocks of the current manifest, head first.
    pub manifest: Vec<[u8; 32]>,
}

impl ScopeRecord {
    /// The key of `epoch`.
    pub fn key(&self, epoch: u32) -> Option<&SecretKey> {
        self.keys.iter().find(|k| k.epoch == epoch).map(|k| &k.key)
    }
}

/// A scope key of one epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochKey {
    /// The epoch number (0 first).
    pub epoch: u32,
    /// The random key.
    pub key: SecretKey,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// A device holding the keystore.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Its HPKE (X25519) public key.
    pub hpke_public: [u8; 32],
    /// When it was added, ms since the Unix epoch.
    pub added_ms: u64,
}

/// A grant to an app (format 2 roots; see [`crate::grant`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrantRecord {
    /// Random grant id.
    pub id: [u8; 16],
    /// The app's name (from its card).
    pub app_name: String,
    /// The app's ed25519 public key.
    pub app_signing: [u8; 32],
    /// The app's HPKE (X25519) public key.
    pub app_hpke: [u8; 32],
    /// Seed of the per-grant slot's ed25519 key (the patient owns the slot).
    pub slot_seed: SecretKey,
    /// The per-grant slot the sealed grant is published through.
    pub slot_id: [u8; 32],
    /// Scopes granted.
    pub scopes: Vec<Scope>,
    /// Whether the app may contribute (else read only).
    pub contribute: bool,
    /// When it was granted, ms since the Unix epoch.
    pub created_ms: u64,
    /// Expiry, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Purpose of use (a v3 PurposeOfUse code).
    pub purpose: String,
    /// Address of the sealed grant blob the slot should point at.
    pub sealed: [u8; 32],
}

/// A scope manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScopeManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The scope.
    pub scope: Scope,
    /// Epoch of the key that sealed this manifest.
    pub epoch: u32,
    /// Commit counter of the scope.
    pub generation: u64,
    /// type → id → versions (oldest first).
    pub resources: BTreeMap<String, BTreeMap<String, Vec<VersionEntry>>>,
    /// [`INDEX_FORMAT`].
    pub index_format: u32,
    /// The encoded search index.
    pub index: Vec<u8>,
}

/// One version of one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionEntry {
    /// `meta.versionId` (1, 2, …).
    pub version: u64,
    /// Epoch of the key that sealed the blob.
    pub epoch: u32,
    /// Blob blocks, head first; empty for a deletion.
    pub blocks: Vec<[u8; 32]>,
    /// `meta.lastUpdated` of this version (for a deletion: when it was deleted).
    pub last_updated: String,
    /// When this version was imported, ms since the Unix epoch.
    pub imported_ms: u64,
    /// Whether this version is a deletion.
    pub deleted: bool,
    /// BLAKE3 of the canonical content without `meta.versionId` / `meta.lastUpdated`.
    pub content_hash: [u8; 32],
    /// Ids of the Patients this version references (or is).
    pub patients: Vec<String>,
}

/// Encodes with postcard.
pub fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| EhiError::Crypto(format!("encoding the {what}: {e}")))
}

/// Decodes a root of format 1, 2 or 3, checking the format number first; older formats
/// are converted to the current struct.
pub fn decode_root(bytes: &[u8]) -> Result<VaultRoot> {
    let bad = |e: postcard::Error| EhiError::corrupt("vault root", format!("does not decode: {e}"));
    if check_format(bytes, 1, "vault root").is_ok() || check_format(bytes, 2, "vault root").is_ok()
    {
        let old: VaultRootV2 = postcard::from_bytes(bytes).map_err(bad)?;
        return Ok(old.into());
    }
    check_format(bytes, ROOT_FORMAT, "vault root")?;
    postcard::from_bytes(bytes).map_err(bad)
}

/// Decodes a manifest, checking the format number first.
pub fn decode_manifest(bytes: &[u8], scope: Scope) -> Result<ScopeManifest> {
    check_format(bytes, MANIFEST_FORMAT, "scope manifest")?;
    let manifest: ScopeManifest = postcard::from_bytes(bytes).map_err(|e| {
        EhiError::corrupt(
            format!("manifest of scope {scope}"),
            format!("does not decode: {e}"),
        )
    })?;
    if manifest.scope != scope {
        return Err(EhiError::corrupt(
            format!("manifest of scope {scope}"),
            format!("it says it belongs to scope {}", manifest.scope),
        ));
    }
    Ok(manifest)
}

/// Every format starts with its number (a postcard varint).
fn check_format(bytes: &[u8], supported: u32, what: &'static str) -> Result<()> {
    let (found, _) = postcard::take_from_bytes::<u32>(bytes)
        .map_err(|e| EhiError::corrupt(what, format!("no format number: {e}")))?;
    if found != supported {
        return Err(EhiError::UnsupportedFormat {
            what,
            found,
            supported,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_numbers_are_checked() {
        let manifest = ScopeManifest {
            format: 7,
            scope: Scope::Clinical,
            epoch: 0,
            generation: 0,
            resources: BTreeMap::new(),
            index_format: INDEX_FORMAT,
            index: Vec::new(),
        };
        let bytes = encode(&manifest, "m").expect("encode");
        assert!(matches!(
            decode_manifest(&bytes, Scope::Clinical),
            Err(EhiError::UnsupportedFormat { found: 7, .. })
        ));
        let ok = ScopeManifest {
            format: MANIFEST_FORMAT,
            ..manifest
        };
        let bytes = encode(&ok, "m").expect("encode");
        assert!(decode_manifest(&bytes, Scope::Clinical).is_ok());
        assert!(matches!(
            decode_manifest(&bytes, Scope::Financial),
            Err(EhiError::Corrupt { .. })
        ));
        assert!(decode_root(&[]).is_err());
    }

    fn v2_root(format: u32) -> Vec<u8> {
        #[derive(Serialize)]
        struct Old {
            format: u32,
            vault_id: [u8; 16],
            generation: u64,
            updated_ms: u64,
            scopes: BTreeMap<Scope, ScopeRecord>,
            overrides: BTreeMap<String, Scope>,
            devices: Vec<DeviceRecord>,
            grants: Vec<GrantRecord>,
            audit_head: Option<[u8; 32]>,
        }
        let mut overrides = BTreeMap::new();
        overrides.insert("Observation".to_string(), Scope::Sensitive);
        encode(
            &Old {
                format,
                vault_id: [9; 16],
                generation: 41,
                updated_ms: 7,
                scopes: BTreeMap::new(),
                overrides,
                devices: Vec::new(),
                grants: Vec::new(),
                audit_head: Some([3; 32]),
            },
            "old root",
        )
        .expect("encode")
    }

    #[test]
    fn format_1_and_2_roots_convert_to_format_3() {
        for format in [1, 2] {
            let root = decode_root(&v2_root(format)).expect("old root decodes");
            assert_eq!(root.generation, 41);
            assert_eq!(root.audit_head, Some([3; 32]));
            assert_eq!(root.overrides.get("Observation"), Some(&Scope::Sensitive));
            assert!(root.ext.inbox.is_none() && root.ext.requests.is_empty());
        }
        // A format 3 root round-trips with its extensions.
        let mut root = decode_root(&v2_root(2)).expect("decode");
        root.format = ROOT_FORMAT;
        root.ext.contributions.push(ContributionRecord {
            address: [1; 32],
            grant: [2; 16],
            accepted: true,
            provenance_id: Some("p".into()),
            decided_ms: 5,
        });
        let back = decode_root(&encode(&root, "root").expect("encode")).expect("decode");
        assert_eq!(back.ext.contributions.len(), 1);
        assert_eq!(back.generation, 41);
        // A format 2 decoder would not read format 3; a format 4 root is refused.
        let mut bytes = encode(&root, "root").expect("encode");
        bytes[0] = 4;
        assert!(matches!(
            decode_root(&bytes),
            Err(EhiError::UnsupportedFormat { found: 4, .. })
        ));
    }
}
