//! The vault: create, open, import (atomic, merged under concurrency), read, history,
//! patient compartment, search, export, status and removal.
//!
//! ## Commit protocol
//! The vault slot (ed25519, id = the keystore's signing public key) holds the address of
//! the sealed vault root; **that slot is the only commit point**. An import:
//! 1. parses and checks every input (nothing is written if any entry is invalid);
//! 2. plans the changes against the vault as last read: a new version per changed
//!    resource, nothing for unchanged content;
//! 3. seals the new versions (bounded batches on the blocking pool) and writes them to
//!    storage concurrently (bounded), then pins them;
//! 4. writes new manifests for the touched scopes (resource table + search index) and a
//!    new root, pins them;
//! 5. compare-and-swaps the vault slot from the root it planned against to the new root.
//!
//! If another device committed in between (409), the vault is re-read (only manifests
//! that changed are fetched), the *same logical changes* are re-planned on top of it —
//! versions are renumbered after the other device's, blobs whose version number did not
//! change are reused, the others are resealed — and the swap is retried (jittered
//! back-off, [`VaultOptions::max_attempts`]). Steps 2–5 and the retries are the vault's
//! one commit primitive (`vault/commit.rs`), which every other change of the root goes
//! through as well (grants, revocations, devices, requests, channels, overrides, audit
//! entries, removal); an import is its largest plan. Both imports end up in the vault; when
//! both touched one resource, both versions are kept, in commit order. Blocks written by
//! a failed attempt and superseded roots/manifests are unpinned.
//!
//! After a commit each touched scope slot is moved to its new manifest (signed with the
//! scope slot key held in the root), so a future grantee can follow a scope without the
//! root. Scope slots trail the root: the root is authoritative, and slots that lag (a
//! crash, a lost race) are caught up at the next open or commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::{self, FuturesUnordered};
use invariant_spec::Id;
use invariant_spec::slots::{Rejection, SlotSigner};
use serde_json::Value;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::audit::{AuditAction, AuditEntry, AuditRecord};
use crate::error::{EhiError, Result};
use crate::fhir::{self, Change, ImportOptions, Input, Op};
use crate::format::{
    self, DeviceRecord, EpochKey, INDEX_FORMAT, MANIFEST_FORMAT, ROOT_FORMAT, ScopeManifest,
    ScopeRecord, VaultRoot, VersionEntry,
};
use crate::keys::{CONTEXT_MANIFEST, CONTEXT_RESOURCE, CONTEXT_ROOT, SecretKey, random_bytes};
use crate::keystore::Keystore;
use crate::network::Network;
use crate::scope::{self, Scope};
use crate::seal::{self, Blob, Kind, Opened, Sealed};
use crate::search::Index;
use crate::snapshot::Snapshot;
use crate::time::{instant, now_ms};

mod audit_log;
mod commit;
mod import;
mod keyring;
mod load;
mod pending;
mod read;
mod rollback;
mod rotation;
use commit::{Plan, RootChange};
use keyring::RootKeys;
pub use keyring::WatchEvent;
pub use load::{fetch_object, fetch_resource};
pub use pending::{MAX_PENDING, MAX_PER_COMMIT, Pending};
pub use rotation::RevokeReport;

/// The vault's API for the features built on it (the `ehi-share` crate): the
/// handle's state, the one commit primitive and what a change of the root is made of,
/// key rotation, and the formats and helpers those changes use.
#[doc(hidden)]
pub mod prelude {
    pub use std::path::Path;

    pub use invariant_spec::Id;
    pub use invariant_spec::slots::SlotSigner;
    pub use serde_json::Value;

    pub use super::commit::{Plan, RootChange, decided};
    pub use super::rotation::{RevokeReport, Rotation, find_grant};
    pub use super::{State, Vault};
    pub use crate::audit::{AuditAction, AuditRecord};
    pub use crate::error::{EhiError, Result};
    pub use crate::format::{DeviceRecord, VaultRoot};
    pub use crate::keys::{SecretKey, random_bytes};
    pub use crate::scope::Scope;
    pub use crate::seal::Blob;
    pub use crate::slotmove::{TOMBSTONE, tombstone_address};
    pub use crate::time::{instant, now_ms};
}

pub use crate::slotmove::{TOMBSTONE, tombstone_address};

/// Tuning of a vault handle.
#[derive(Clone, Debug)]
pub struct VaultOptions {
    /// Blob reads or writes in flight at once. Default 64.
    pub concurrency: usize,
    /// Resource versions sealed per blocking task. Default 256.
    pub seal_batch: usize,
    /// Commit attempts before giving up under contention. Default 32.
    pub max_attempts: u32,
}

impl Default for VaultOptions {
    fn default() -> VaultOptions {
        VaultOptions {
            concurrency: 64,
            seal_batch: 256,
            max_attempts: 32,
        }
    }
}

/// Where an import is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Reading and checking the input.
    Parsing,
    /// Sealing and storing resource versions (`done` of `total` blobs).
    Storing,
    /// Writing manifests and moving the vault slot.
    Committing,
    /// Done.
    Done,
}

/// A progress report.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// The stage.
    pub stage: Stage,
    /// Units done in this stage.
    pub done: u64,
    /// Units in this stage (0 when unknown).
    pub total: u64,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// What an import did.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ImportReport {
    /// Resources stored for the first time.
    pub created: usize,
    /// New versions of existing resources.
    pub updated: usize,
    /// Deletions recorded.
    pub deleted: usize,
    /// Entries whose content equals the current version (nothing stored).
    pub unchanged: usize,
    /// Resource version blobs written (including reseals after merges).
    pub blobs_written: usize,
    /// Commit attempts (more than 1 when another device committed meanwhile).
    pub attempts: u32,
    /// Vault generation after the import.
    pub generation: u64,
    /// Remarks: skipped entries, resources not searchable, scope notes.
    pub notes: Vec<String>,
    /// Patients (`Patient/id`) whose records this import added to a vault that already
    /// kept another patient's, as allowed by [`ImportOptions::allow_other_patients`]
    /// (the decision is recorded in the audit log).
    pub other_patients: Vec<String>,
}

/// One version of a resource.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    /// `meta.versionId`.
    pub version: u64,
    /// `meta.lastUpdated` (for a deletion: when it was deleted).
    pub last_updated: String,
    /// Whether this version is a deletion.
    pub deleted: bool,
    /// The resource (none for a deletion).
    pub resource: Option<Value>,
}

/// Where a current resource is kept ([`Vault::placements`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The scope holding it.
    pub scope: Scope,
    /// The Patients whose compartment its current version is in (empty: none, e.g. a
    /// Practitioner).
    pub patients: Vec<String>,
}

/// A search answer.
#[derive(Clone, Debug)]
pub struct SearchHits {
    /// Matches in total (before `_count`).
    pub total: usize,
    /// The matching resources (after `_count`/`_offset`), current versions.
    pub resources: Vec<Value>,
}

/// Counts of one scope.
#[derive(Clone, Debug)]
pub struct ScopeStatus {
    /// The scope.
    pub scope: Scope,
    /// Its slot.
    pub slot: Id,
    /// Current key epoch.
    pub epoch: u32,
    /// Resources whose latest version is not a deletion.
    pub resources: usize,
    /// Versions stored (deletions included).
    pub versions: usize,
    /// Manifest generation.
    pub generation: u64,
    /// Entries in the search index.
    pub indexed: usize,
}

/// The state of the vault.
#[derive(Clone, Debug)]
pub struct Status {
    /// The vault slot.
    pub slot: Id,
    /// The current root's address.
    pub root: Id,
    /// Commit counter.
    pub generation: u64,
    /// Last commit, ms since the Unix epoch.
    pub updated_ms: u64,
    /// Per scope.
    pub scopes: Vec<ScopeStatus>,
    /// Resource types and how many current resources each has.
    pub types: BTreeMap<String, usize>,
    /// Blocks the vault references (root, manifests, resource versions).
    pub blocks: usize,
    /// Storage servers in use.
    pub storage_servers: usize,
    /// Whether a distributor keeps the blocks pinned.
    pub distributor: bool,
}

/// A scope as loaded on this device.
#[derive(Clone, Debug)]
struct Loaded {
    manifest: ScopeManifest,
    index: Option<Index>,
}

/// The vault as last read or written by this handle.
#[derive(Debug)]
#[doc(hidden)]
pub struct State {
    root_head: Id,
    root_blocks: Vec<Id>,
    pub root: VaultRoot,
    scopes: BTreeMap<Scope, Loaded>,
    /// Addresses of every audit entry, oldest first (walked from `root.audit_head`
    /// on demand; complete for the head in `audit_for`).
    audit_blocks: Vec<Id>,
    /// The `audit_head` that `audit_blocks` is complete for (`None`: not walked yet).
    audit_for: Option<Option<[u8; 32]>>,
    /// The newest audit entry and its address.
    audit_tail: Option<(Id, AuditEntry)>,
    /// The vault root's AEAD key of every generation this device holds, and the one
    /// the current root uses (see `vault/keyring.rs`).
    root_keys: RootKeys,
}

impl State {
    fn record(&self, scope: Scope) -> Result<&ScopeRecord> {
        self.root
            .scopes
            .get(&scope)
            .ok_or_else(|| EhiError::corrupt("vault root", format!("scope {scope} is missing")))
    }

    /// The read-only view of the loaded manifests.
    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot::new(
            self.scopes
                .iter()
                .map(|(scope, loaded)| (*scope, &loaded.manifest)),
        )
    }

    fn versions(&self, resource_type: &str, id: &str) -> Option<(Scope, &Vec<VersionEntry>)> {
        self.snapshot().versions(resource_type, id)
    }

    fn resource_key(&self, scope: Scope, epoch: u32) -> Result<SecretKey> {
        self.record(scope)?
            .key(epoch)
            .map(|k| k.derive(CONTEXT_RESOURCE))
            .ok_or_else(|| {
                EhiError::corrupt(
                    format!("scope {scope}"),
                    format!("no key for epoch {epoch}"),
                )
            })
    }

    /// Records an entry this handle appended after `prev_head`.
    fn appended_audit(&mut self, prev_head: Option<[u8; 32]>, address: Id, entry: AuditEntry) {
        if self.audit_for == Some(prev_head) {
            self.audit_blocks.push(address);
            self.audit_for = Some(Some(*address.as_bytes()));
        }
        self.audit_tail = Some((address, entry));
    }

    fn all_blocks(&self) -> Vec<Id> {
        let mut out: Vec<Id> = self.root_blocks.clone();
        for record in self.root.scopes.values() {
            out.extend(record.manifest.iter().copied().map(Id::from_bytes));
        }
        out.extend(self.root.grants.iter().map(|g| Id::from_bytes(g.sealed)));
        // The consent inbox's start blob and the decisions posted to apps.
        if let Some(inbox) = &self.root.ext.inbox {
            out.push(Id::from_bytes(inbox.start));
        }
        out.extend(
            self.root
                .ext
                .requests
                .iter()
                .map(|r| Id::from_bytes(r.decision)),
        );
        out.extend(self.audit_blocks.iter().copied());
        for loaded in self.scopes.values() {
            for ids in loaded.manifest.resources.values() {
                for versions in ids.values() {
                    for v in versions {
                        out.extend(v.blocks.iter().copied().map(Id::from_bytes));
                    }
                }
            }
        }
        out
    }
}

/// A handle on an open vault. Cheap operations lock the in-memory state briefly; imports
/// hold it for their whole commit, so one handle commits one import at a time.
pub struct Vault {
    #[doc(hidden)]
    pub net: Network,
    #[doc(hidden)]
    pub slot: Id,
    signer: SlotSigner,
    /// The patient's ed25519 key (signs grants).
    #[doc(hidden)]
    pub signing: ed25519_dalek::SigningKey,
    root_key: SecretKey,
    /// This device's HPKE seed (opens the device keyring, see `vault/keyring.rs`).
    hpke_seed: SecretKey,
    /// The emergency policy's keys of root key generation 0 (see `ehi_share::emergency`).
    pub policy0: crate::keys::PolicyKeys,
    options: VaultOptions,
    #[doc(hidden)]
    pub state: Mutex<State>,
    /// Audit entries queued by the front ends, not yet appended (see `vault/pending.rs`).
    pending: pending::Pending,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Creates a new, empty vault for `keystore` on `net`: the eight scopes (each with
    /// an epoch-0 key, an empty manifest and its own slot), the root, and finally the
    /// vault slot. Fails with [`EhiError::VaultExists`] if the keystore already has one.
    pub async fn create(net: Network, keystore: &Keystore) -> Result<Vault> {
        Vault::create_with(net, keystore, VaultOptions::default()).await
    }

    /// [`Vault::create`] with options.
    pub async fn create_with(
        net: Network,
        keystore: &Keystore,
        options: VaultOptions,
    ) -> Result<Vault> {
        let slot = keystore.vault_slot();
        if let Some(existing) = net
            .slots()
            .get(&slot)
            .await
            .map_err(|e| EhiError::network("reading the vault slot", e))?
        {
            if existing.address == tombstone_address() {
                return Err(EhiError::Removed { slot });
            }
            return Err(EhiError::VaultExists { slot });
        }
        let now = now_ms();
        let mut scopes = BTreeMap::new();
        let mut loaded = BTreeMap::new();
        let mut blobs: Vec<Blob> = Vec::new();
        let mut slot_registrations = Vec::new();
        for scope in Scope::ALL {
            let slot_seed = SecretKey::random()?;
            let slot_signer = SlotSigner::ed25519_from_seed(slot_seed.expose());
            let slot_id = slot_signer
                .ed25519_slot()
                .ok_or_else(|| EhiError::Crypto("scope slot key".into()))?;
            let key = SecretKey::random()?;
            let index = Index::new();
            let manifest = ScopeManifest {
                format: MANIFEST_FORMAT,
                scope,
                epoch: 0,
                generation: 0,
                resources: BTreeMap::new(),
                index_format: INDEX_FORMAT,
                index: index.encode().map_err(EhiError::Search)?,
            };
            let sealed = seal_manifest(&manifest, &key)?;
            slot_registrations.push(slot_signer.register_request(slot_id, sealed.head.address));
            scopes.insert(
                scope,
                ScopeRecord {
                    slot_seed,
                    slot_id: *slot_id.as_bytes(),
                    current_epoch: 0,
                    keys: vec![EpochKey {
                        epoch: 0,
                        key,
                        created_ms: now,
                    }],
                    manifest: to_raw(&sealed.addresses()),
                },
            );
            loaded.insert(
                scope,
                Loaded {
                    manifest,
                    index: Some(index),
                },
            );
            blobs.extend(sealed.into_blobs());
        }
        let root = VaultRoot {
            format: ROOT_FORMAT,
            vault_id: random_bytes()?,
            generation: 0,
            updated_ms: now,
            scopes,
            overrides: BTreeMap::new(),
            devices: vec![DeviceRecord {
                hpke_public: keystore.hpke_public(),
                added_ms: now,
            }],
            grants: Vec::new(),
            audit_head: None,
            ext: Default::default(),
        };
        let root_key = keystore.root_key().derive(CONTEXT_ROOT);
        let root_keys = RootKeys::new(root_key.clone());
        let sealed_root = seal_root(&root, &root_keys)?;
        let root_head = sealed_root.head.address;
        let root_blocks = sealed_root.addresses();
        blobs.extend(sealed_root.into_blobs());

        let vault = Vault {
            net,
            slot,
            signer: keystore.signer(),
            signing: keystore.signing_key(),
            root_key,
            hpke_seed: keystore.hpke_seed().clone(),
            policy0: crate::keys::PolicyKeys::of_keystore_root(keystore.root_key()),
            options,
            state: Mutex::new(State {
                root_head,
                root_blocks,
                root,
                scopes: loaded,
                audit_blocks: Vec::new(),
                audit_for: Some(None),
                audit_tail: None,
                root_keys,
            }),
            pending: pending::Pending::new(),
        };
        let addresses: Vec<Id> = blobs.iter().map(|b| b.address).collect();
        vault.put_all(blobs).await?;
        vault.net.pin(&addresses).await?;
        for request in &slot_registrations {
            vault
                .net
                .slots()
                .register(request)
                .await
                .map_err(|e| EhiError::network("registering a scope slot", e))?;
        }
        let registered = vault
            .net
            .slots()
            .register(&vault.signer.register_request(slot, root_head))
            .await
            .map_err(|e| EhiError::network("registering the vault slot", e))?;
        if !registered {
            vault.net.unpin_quietly(&addresses).await;
            return Err(EhiError::VaultExists { slot });
        }
        Ok(vault)
    }

    /// Opens the vault of `keystore` (on this or another device).
    pub async fn open(net: Network, keystore: &Keystore) -> Result<Vault> {
        Vault::open_with(net, keystore, VaultOptions::default()).await
    }

    /// [`Vault::open`] with options.
    pub async fn open_with(
        net: Network,
        keystore: &Keystore,
        options: VaultOptions,
    ) -> Result<Vault> {
        let slot = keystore.vault_slot();
        let root_key = keystore.root_key().derive(CONTEXT_ROOT);
        let placeholder = State {
            root_head: Id::from_bytes([0; 32]),
            root_blocks: Vec::new(),
            root: VaultRoot {
                format: ROOT_FORMAT,
                vault_id: [0; 16],
                generation: 0,
                updated_ms: 0,
                scopes: BTreeMap::new(),
                overrides: BTreeMap::new(),
                devices: Vec::new(),
                grants: Vec::new(),
                audit_head: None,
                ext: Default::default(),
            },
            scopes: BTreeMap::new(),
            audit_blocks: Vec::new(),
            audit_for: None,
            audit_tail: None,
            root_keys: RootKeys::new(root_key.clone()),
        };
        let vault = Vault {
            net,
            slot,
            signer: keystore.signer(),
            signing: keystore.signing_key(),
            root_key,
            hpke_seed: keystore.hpke_seed().clone(),
            policy0: crate::keys::PolicyKeys::of_keystore_root(keystore.root_key()),
            options,
            state: Mutex::new(placeholder),
            pending: pending::Pending::new(),
        };
        {
            let mut state = vault.state.lock().await;
            vault.refresh_state(&mut state).await?;
            let all: Vec<Scope> = state.root.scopes.keys().copied().collect();
            vault.sync_scope_slots(&state, &all).await;
        }
        Ok(vault)
    }

    /// The vault slot.
    pub fn slot(&self) -> Id {
        self.slot
    }

    /// The network the vault uses.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Re-reads the vault from the network (to see other devices' commits).
    pub async fn refresh(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        self.refresh_state(&mut state).await
    }

    /// Stores blobs with bounded concurrency.
    async fn put_all(&self, blobs: Vec<Blob>) -> Result<()> {
        let net = &self.net;
        let mut results = stream::iter(blobs)
            .map(|blob| async move { net.put(&blob).await })
            .buffer_unordered(self.options.concurrency.max(1));
        while let Some(result) = results.next().await {
            result?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Administration
    // -----------------------------------------------------------------------------------

    /// Counts and ids describing the vault.
    pub async fn status(&self) -> Result<Status> {
        let mut state = self.state.lock().await;
        if let Err(e) = self.ensure_audit_blocks(&mut state).await {
            tracing::warn!(error = %e, "walking the audit log");
        }
        let mut scopes = Vec::new();
        let mut types: BTreeMap<String, usize> = BTreeMap::new();
        for (scope, loaded) in &state.scopes {
            let record = state.record(*scope)?;
            let mut resources = 0;
            let mut versions = 0;
            for (resource_type, ids) in &loaded.manifest.resources {
                for list in ids.values() {
                    versions += list.len();
                    if list.last().is_some_and(|v| !v.deleted) {
                        resources += 1;
                        *types.entry(resource_type.clone()).or_default() += 1;
                    }
                }
            }
            let indexed = match &loaded.index {
                Some(index) => index.len(),
                None => resources,
            };
            scopes.push(ScopeStatus {
                scope: *scope,
                slot: Id::from_bytes(record.slot_id),
                epoch: record.current_epoch,
                resources,
                versions,
                generation: loaded.manifest.generation,
                indexed,
            });
        }
        Ok(Status {
            slot: self.slot,
            root: state.root_head,
            generation: state.root.generation,
            updated_ms: state.root.updated_ms,
            scopes,
            types,
            blocks: state.all_blocks().len(),
            storage_servers: self.net.storage_servers().len(),
            distributor: self.net.has_distributor(),
        })
    }

    /// Every block the vault references (root, manifests, every resource version).
    pub async fn blocks(&self) -> Vec<Id> {
        let mut state = self.state.lock().await;
        if let Err(e) = self.ensure_audit_blocks(&mut state).await {
            tracing::warn!(error = %e, "walking the audit log");
        }
        state.all_blocks()
    }

    /// Puts every resource of `resource_type` stored from now on in `scope`. Refused
    /// while resources of that type are stored (moving them would need re-encryption).
    pub async fn set_scope_override(&self, resource_type: &str, scope: Scope) -> Result<()> {
        if !fhir::valid_type(resource_type) {
            return Err(EhiError::InvalidArgument(format!(
                "{resource_type:?} is not a resource type"
            )));
        }
        let mut state = self.state.lock().await;
        self.commit(&mut state, &mut (), move |_, state, ()| {
            let plan = if state
                .scopes
                .values()
                .any(|l| l.manifest.resources.contains_key(resource_type))
            {
                Err(EhiError::InvalidArgument(format!(
                    "resources of type {resource_type} are stored; the scope of a type can \
                     only change while none is"
                )))
            } else {
                let mut root = state.root.clone();
                root.overrides.insert(resource_type.to_string(), scope);
                Ok(Plan::write(RootChange::root(root), ()))
            };
            commit::decided(plan)
        })
        .await
    }
}

/// Every version of one resource (for export).
#[derive(Clone, Debug)]
pub(crate) struct ResourceVersions {
    pub resource_type: String,
    pub id: String,
    pub versions: Vec<HistoryEntry>,
}

fn seal_manifest(manifest: &ScopeManifest, epoch_key: &SecretKey) -> Result<Sealed> {
    let bytes = Zeroizing::new(format::encode(manifest, "scope manifest")?);
    seal::seal_object(
        &epoch_key.derive(CONTEXT_MANIFEST),
        Kind::Manifest,
        manifest.scope.name(),
        manifest.epoch,
        &bytes,
    )
}

/// Seals the root under the current root key generation (the envelope's epoch field
/// carries the generation; see `vault/keyring.rs`).
fn seal_root(root: &VaultRoot, keys: &RootKeys) -> Result<Sealed> {
    let bytes = Zeroizing::new(format::encode(root, "vault root")?);
    let (generation, key) = keys.current();
    seal::seal_object(&key, Kind::Root, "vault", generation, &bytes)
}

fn to_raw(ids: &[Id]) -> Vec<[u8; 32]> {
    ids.iter().map(|id| *id.as_bytes()).collect()
}
