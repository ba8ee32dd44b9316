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
use std::path::Path;
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
mod devices;
use commit::{Plan, RootChange};
mod sharing;
use devices::RootKeys;
pub use devices::{DeviceRemoval, WatchEvent};
pub use sharing::RevokeReport;
// Consent requests, and the grant channels (contributions, apps' own audit chains).
mod channels;
mod removal;
mod requests;
mod rollback;
pub use channels::{ContributionInfo, MergeReport};
pub use requests::{
    ApproveStep, ConsentOutcome, ConsentRequestInfo, RequestList, UnreadableRequest,
};

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

/// What a removal did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RemoveReport {
    /// Blocks the vault referenced, and those its devices pinned beside the root
    /// (channel headers, emergency policy and device keyring blobs, an inbox card).
    pub blocks: usize,
    /// Pins removed at the distributor.
    pub unpinned: usize,
    /// Whether a distributor was present.
    pub distributor: bool,
    /// When the distributor deletes the unpinned blocks from the storage servers
    /// (`None`: no distributor, or it does not collect). Until then they stay on disk
    /// as ciphertext nobody can decrypt without the destroyed keys.
    pub collection: Option<crate::network::Collection>,
    /// Whether the keystore file was overwritten and removed.
    pub keystore_destroyed: bool,
    /// Remarks (slots that could not be tombstoned or read, ...).
    pub notes: Vec<String>,
}

/// A scope as loaded on this device.
#[derive(Clone, Debug)]
struct Loaded {
    manifest: ScopeManifest,
    index: Option<Index>,
}

/// The vault as last read or written by this handle.
#[derive(Debug)]
struct State {
    root_head: Id,
    root_blocks: Vec<Id>,
    root: VaultRoot,
    scopes: BTreeMap<Scope, Loaded>,
    /// Addresses of every audit entry, oldest first (walked from `root.audit_head`
    /// on demand; complete for the head in `audit_for`).
    audit_blocks: Vec<Id>,
    /// The `audit_head` that `audit_blocks` is complete for (`None`: not walked yet).
    audit_for: Option<Option<[u8; 32]>>,
    /// The newest audit entry and its address.
    audit_tail: Option<(Id, AuditEntry)>,
    /// The vault root's AEAD key of every generation this device holds, and the one
    /// the current root uses (see `vault/devices.rs`).
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

/// A planned new version.
#[derive(Debug)]
struct Planned {
    change: usize,
    scope: Scope,
    resource_type: String,
    id: String,
    entry: VersionEntry,
    content: Option<Value>,
}

/// A sealed resource version kept across commit attempts.
#[derive(Clone, Debug)]
struct Stored {
    version: u64,
    epoch: u32,
    scope: Scope,
    blocks: Vec<[u8; 32]>,
}

/// What an import keeps across its attempts.
struct Importing<'a> {
    changes: Arc<Vec<Change>>,
    options: &'a ImportOptions,
    /// The import's time (versions' `lastUpdated`).
    now: u64,
    progress: Option<ProgressFn>,
    /// Versions sealed and stored by an attempt, by change index.
    stored: HashMap<usize, Stored>,
    /// Versions an earlier attempt stored that a later one sealed again.
    orphans: Vec<Id>,
    blobs_written: usize,
    attempts: u32,
}

/// A handle on an open vault. Cheap operations lock the in-memory state briefly; imports
/// hold it for their whole commit, so one handle commits one import at a time.
pub struct Vault {
    net: Network,
    slot: Id,
    signer: SlotSigner,
    /// The patient's ed25519 key (signs grants).
    signing: ed25519_dalek::SigningKey,
    root_key: SecretKey,
    /// This device's HPKE seed (opens the device keyring, see `vault/devices.rs`).
    hpke_seed: SecretKey,
    /// The emergency policy's keys of root key generation 0 (see [`crate::emergency`]).
    policy0: crate::keys::PolicyKeys,
    options: VaultOptions,
    state: Mutex<State>,
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

    // -----------------------------------------------------------------------------------
    // Import
    // -----------------------------------------------------------------------------------

    /// Imports FHIR inputs atomically (see the module docs), with the default rules:
    /// invalid resources and other patients' records are refused.
    pub async fn import(&self, inputs: Vec<Input>) -> Result<ImportReport> {
        self.import_with(inputs, &ImportOptions::default(), None)
            .await
    }

    /// [`Vault::import`] reporting progress.
    pub async fn import_with_progress(
        &self,
        inputs: Vec<Input>,
        progress: Option<ProgressFn>,
    ) -> Result<ImportReport> {
        self.import_with(inputs, &ImportOptions::default(), progress)
            .await
    }

    /// [`Vault::import`] with explicit [`ImportOptions`], reporting progress.
    pub async fn import_with(
        &self,
        inputs: Vec<Input>,
        options: &ImportOptions,
        progress: Option<ProgressFn>,
    ) -> Result<ImportReport> {
        let report = |stage, done, total| {
            if let Some(p) = &progress {
                p(Progress { stage, done, total });
            }
        };
        // Expired grants are rotated away at the patient's next write.
        self.expire_grants().await?;
        report(Stage::Parsing, 0, inputs.len() as u64);
        let parse_options = options.clone();
        let parsed =
            tokio::task::spawn_blocking(move || fhir::parse_inputs(&inputs, &parse_options))
                .await??;
        report(Stage::Parsing, 1, 1);
        let result = self
            .commit_changes(parsed.changes, parsed.notes, options, progress.clone())
            .await;
        if result.is_ok() {
            report(Stage::Done, 1, 1);
        }
        result
    }

    async fn commit_changes(
        &self,
        changes: Vec<Change>,
        mut notes: Vec<String>,
        options: &ImportOptions,
        progress: Option<ProgressFn>,
    ) -> Result<ImportReport> {
        let mut state = self.state.lock().await;
        let mut import = Importing {
            changes: Arc::new(changes),
            options,
            now: now_ms(),
            progress,
            stored: HashMap::new(),
            orphans: Vec::new(),
            blobs_written: 0,
            attempts: 0,
        };
        let committed = self
            .commit(&mut state, &mut import, |vault, state, import| {
                Box::pin(vault.plan_import(state, import))
            })
            .await;
        match committed {
            Ok((mut report, attempt_notes, touched)) => {
                if touched.is_empty() {
                    // Nothing to commit (possibly because another device stored the
                    // same content meanwhile): release what earlier attempts pinned.
                    self.abandon(&import.stored, &import.orphans).await;
                } else {
                    self.sync_scope_slots(&state, &touched).await;
                }
                report.generation = state.root.generation;
                report.blobs_written = import.blobs_written;
                notes.extend(attempt_notes);
                report.notes = notes;
                Ok(report)
            }
            Err(e) => {
                self.abandon(&import.stored, &import.orphans).await;
                Err(e)
            }
        }
    }

    /// One attempt of an import against `state`: plans the changes, seals and stores
    /// the versions not stored by an earlier attempt, and builds the new manifests.
    /// Answers the report, its notes and the scopes touched (none: nothing to commit).
    async fn plan_import(
        &self,
        state: &mut State,
        import: &mut Importing<'_>,
    ) -> Result<Plan<(ImportReport, Vec<String>, Vec<Scope>)>> {
        import.attempts += 1;
        let mut report = ImportReport {
            attempts: import.attempts,
            ..ImportReport::default()
        };
        let mut attempt_notes = Vec::new();
        let planned = plan(
            state,
            &import.changes,
            import.options,
            import.now,
            &mut report,
            &mut attempt_notes,
        )?;
        if planned.is_empty() {
            return Ok(Plan::Nothing((report, attempt_notes, Vec::new())));
        }

        // Seal and store the resource versions not stored by an earlier attempt.
        let mut blocks: HashMap<usize, Vec<[u8; 32]>> = HashMap::new();
        let mut to_seal: Vec<usize> = Vec::new();
        for (i, p) in planned.iter().enumerate() {
            if p.content.is_none() {
                continue;
            }
            match import.stored.get(&p.change) {
                Some(s)
                    if s.version == p.entry.version
                        && s.epoch == p.entry.epoch
                        && s.scope == p.scope =>
                {
                    blocks.insert(i, s.blocks.clone());
                }
                Some(s) => {
                    import
                        .orphans
                        .extend(s.blocks.iter().copied().map(Id::from_bytes));
                    to_seal.push(i);
                }
                None => to_seal.push(i),
            }
        }
        let planned = Arc::new(planned);
        let sealed = self
            .seal_and_store(state, &planned, &to_seal, import.progress.as_ref())
            .await?;
        import.blobs_written += sealed.len();
        let mut new_blocks: Vec<Id> = Vec::new();
        for (i, addresses) in sealed {
            let p = &planned[i];
            let raw = to_raw(&addresses);
            new_blocks.extend(addresses);
            import.stored.insert(
                p.change,
                Stored {
                    version: p.entry.version,
                    epoch: p.entry.epoch,
                    scope: p.scope,
                    blocks: raw.clone(),
                },
            );
            blocks.insert(i, raw);
        }
        self.net.pin(&new_blocks).await?;

        // Manifests.
        if let Some(p) = &import.progress {
            p(Progress {
                stage: Stage::Committing,
                done: 0,
                total: 1,
            });
        }
        let touched: BTreeSet<Scope> = planned.iter().map(|p| p.scope).collect();
        for scope in &touched {
            self.load_index(state, *scope).await?;
        }
        let built = self
            .build_manifests(state, Arc::clone(&planned), blocks)
            .await?;
        attempt_notes.extend(built.notes.iter().cloned());
        let mut detail = format!(
            "{} created, {} updated, {} deleted",
            report.created, report.updated, report.deleted
        );
        if !report.other_patients.is_empty() {
            // The patient's decision to keep others' records here.
            detail.push_str(&format!(
                "; other patients allowed: {}",
                report.other_patients.join(", ")
            ));
        }
        // Unneeded once this attempt lands: the manifests it replaces, versions stored
        // by an earlier attempt that the merge made unnecessary (the other device
        // stored the same content), and versions an earlier attempt sealed differently.
        let mut superseded: Vec<Id> = Vec::new();
        for (scope, ..) in &built.scopes {
            if let Ok(record) = state.record(*scope) {
                superseded.extend(record.manifest.iter().copied().map(Id::from_bytes));
            }
        }
        let used: BTreeSet<usize> = planned.iter().map(|p| p.change).collect();
        for (change, s) in &import.stored {
            if !used.contains(change) {
                superseded.extend(s.blocks.iter().copied().map(Id::from_bytes));
            }
        }
        superseded.extend(import.orphans.iter().copied());
        let touched: Vec<Scope> = built.scopes.iter().map(|s| s.0).collect();
        let change = RootChange {
            root: built.root,
            blobs: built.blobs,
            manifests: built
                .scopes
                .into_iter()
                .map(|(scope, manifest, index)| (scope, manifest, Some(index)))
                .collect(),
            unpin_after: superseded,
            audit: Some(AuditRecord::new(AuditAction::Import, detail)),
        };
        Ok(Plan::write(change, (report, attempt_notes, touched)))
    }

    /// Unpins everything an abandoned import pinned.
    async fn abandon(&self, stored: &HashMap<usize, Stored>, orphans: &[Id]) {
        let mut blocks: Vec<Id> = stored
            .values()
            .flat_map(|s| s.blocks.iter().copied().map(Id::from_bytes))
            .collect();
        blocks.extend_from_slice(orphans);
        self.net.unpin_quietly(&blocks).await;
    }

    /// Seals `planned[i]` for each `i` in `which` (batches on the blocking pool) and
    /// stores the blobs (bounded concurrency). Returns the addresses per index.
    async fn seal_and_store(
        &self,
        state: &State,
        planned: &Arc<Vec<Planned>>,
        which: &[usize],
        progress: Option<&ProgressFn>,
    ) -> Result<Vec<(usize, Vec<Id>)>> {
        let mut keys: HashMap<(Scope, u32), SecretKey> = HashMap::new();
        for &i in which {
            let p = &planned[i];
            if let std::collections::hash_map::Entry::Vacant(slot) =
                keys.entry((p.scope, p.entry.epoch))
            {
                slot.insert(state.resource_key(p.scope, p.entry.epoch)?);
            }
        }
        let keys = Arc::new(keys);
        let total = which.len() as u64;
        let batches: Vec<Vec<usize>> = which
            .chunks(self.options.seal_batch.max(1))
            .map(<[usize]>::to_vec)
            .collect();
        let mut sealed_batches = stream::iter(batches)
            .map(|batch| {
                let planned = Arc::clone(planned);
                let keys = Arc::clone(&keys);
                tokio::task::spawn_blocking(move || seal_batch(&planned, &keys, &batch))
            })
            .buffered(2);
        let limit = self.options.concurrency.max(1);
        let mut uploads = FuturesUnordered::new();
        let mut out = Vec::with_capacity(which.len());
        let mut done = 0u64;
        let tick = |done: u64| {
            if let Some(p) = progress {
                p(Progress {
                    stage: Stage::Storing,
                    done,
                    total,
                });
            }
        };
        tick(0);
        while let Some(batch) = sealed_batches.next().await {
            for (i, sealed) in batch?? {
                out.push((i, sealed.addresses()));
                for blob in sealed.into_blobs() {
                    while uploads.len() >= limit {
                        if let Some(result) = uploads.next().await {
                            result?;
                            done += 1;
                            tick(done);
                        }
                    }
                    let net = &self.net;
                    uploads.push(async move { net.put(&blob).await });
                }
            }
        }
        while let Some(result) = uploads.next().await {
            result?;
            done += 1;
            tick(done);
        }
        Ok(out)
    }

    /// Builds the new manifests of the touched scopes and the new root (on the blocking
    /// pool).
    async fn build_manifests(
        &self,
        state: &State,
        planned: Arc<Vec<Planned>>,
        blocks: HashMap<usize, Vec<[u8; 32]>>,
    ) -> Result<Built> {
        let touched: BTreeSet<Scope> = planned.iter().map(|p| p.scope).collect();
        let mut inputs = Vec::new();
        for scope in &touched {
            let loaded = state
                .scopes
                .get(scope)
                .ok_or_else(|| EhiError::corrupt("vault", format!("scope {scope} not loaded")))?
                .clone();
            let record = state.record(*scope)?;
            let key = record
                .key(record.current_epoch)
                .ok_or_else(|| {
                    EhiError::corrupt(format!("scope {scope}"), "no key for the current epoch")
                })?
                .clone();
            inputs.push((*scope, loaded, key, record.current_epoch));
        }
        let root = state.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut built = Built {
                scopes: Vec::new(),
                blobs: Vec::new(),
                root,
                notes: Vec::new(),
            };
            for (scope, loaded, key, epoch) in inputs {
                let Loaded {
                    mut manifest,
                    index,
                } = loaded;
                let mut index = index.ok_or_else(|| {
                    EhiError::Search(format!("the index of scope {scope} is not loaded"))
                })?;
                for (i, p) in planned.iter().enumerate() {
                    if p.scope != scope {
                        continue;
                    }
                    let mut entry = p.entry.clone();
                    if let Some(b) = blocks.get(&i) {
                        entry.blocks = b.clone();
                    }
                    manifest
                        .resources
                        .entry(p.resource_type.clone())
                        .or_default()
                        .entry(p.id.clone())
                        .or_default()
                        .push(entry);
                    match &p.content {
                        Some(content) => {
                            if let Err(reason) = index.upsert(content) {
                                index.remove(&p.resource_type, &p.id);
                                built.notes.push(format!(
                                    "{}/{} is stored but not searchable: {reason}",
                                    p.resource_type, p.id
                                ));
                            }
                        }
                        None => index.remove(&p.resource_type, &p.id),
                    }
                }
                manifest.generation += 1;
                manifest.epoch = epoch;
                manifest.index_format = INDEX_FORMAT;
                manifest.index = index.encode().map_err(EhiError::Search)?;
                let sealed = seal_manifest(&manifest, &key)?;
                let addresses = sealed.addresses();
                if let Some(record) = built.root.scopes.get_mut(&scope) {
                    record.manifest = to_raw(&addresses);
                }
                built.blobs.extend(sealed.into_blobs());
                built.scopes.push((scope, manifest, index));
            }
            Ok(built)
        })
        .await?
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
    // Loading
    // -----------------------------------------------------------------------------------

    /// Brings `state` up to the vault slot's current root, fetching only manifests that
    /// changed.
    async fn refresh_state(&self, state: &mut State) -> Result<()> {
        let current = self
            .net
            .slots()
            .get(&self.slot)
            .await
            .map_err(|e| EhiError::network("reading the vault slot", e))?
            .ok_or(EhiError::NoVault { slot: self.slot })?;
        let head = current.address;
        if head == tombstone_address() {
            return Err(EhiError::Removed { slot: self.slot });
        }
        if head == state.root_head && !state.scopes.is_empty() {
            return Ok(());
        }
        let (bytes, root_blocks) = self.fetch_root(state, head).await?;
        let root = format::decode_root(&bytes)?;
        // A root older than the one this handle holds is a rollback: refused.
        if !state.scopes.is_empty()
            && root.vault_id == state.root.vault_id
            && root.generation < state.root.generation
        {
            return Err(EhiError::Rollback {
                seen: state.root.generation,
                found: root.generation,
                hint: String::new(),
            });
        }
        let mut fetches = Vec::new();
        for (scope, record) in &root.scopes {
            let unchanged = state.root.scopes.get(scope).is_some_and(|old| {
                old.manifest == record.manifest && state.scopes.contains_key(scope)
            });
            if !unchanged {
                fetches.push(self.fetch_manifest(*scope, record.clone()));
            }
        }
        let fetched = join_all(fetches).await;
        let mut scopes = std::mem::take(&mut state.scopes);
        for result in fetched {
            let (scope, manifest) = result?;
            scopes.insert(
                scope,
                Loaded {
                    manifest,
                    index: None,
                },
            );
        }
        scopes.retain(|scope, _| root.scopes.contains_key(scope));
        state.scopes = scopes;
        state.root_head = head;
        state.root_blocks = root_blocks;
        state.root = root;
        Ok(())
    }

    async fn fetch_manifest(
        &self,
        scope: Scope,
        record: ScopeRecord,
    ) -> Result<(Scope, ScopeManifest)> {
        let head = record
            .manifest
            .first()
            .copied()
            .map(Id::from_bytes)
            .ok_or_else(|| {
                EhiError::corrupt("vault root", format!("scope {scope} has no manifest"))
            })?;
        let what = format!("the manifest of scope {scope}");
        let (bytes, _) = self
            .fetch_object(head, Kind::Manifest, scope.name(), &what, move |epoch| {
                record.key(epoch).map(|k| k.derive(CONTEXT_MANIFEST))
            })
            .await?;
        let manifest = format::decode_manifest(&bytes, scope)?;
        Ok((scope, manifest))
    }

    /// Fetches and opens an object (head plus chunks). Returns the payload and every
    /// block address.
    async fn fetch_object(
        &self,
        head: Id,
        kind: Kind,
        context: &str,
        what: &str,
        key_for: impl Fn(u32) -> Option<SecretKey>,
    ) -> Result<(Zeroizing<Vec<u8>>, Vec<Id>)> {
        fetch_object(
            &self.net,
            self.options.concurrency,
            head,
            kind,
            context,
            what,
            key_for,
        )
        .await
    }

    /// Decodes the search index of `scope` if it is not yet; an index that does not
    /// decode (another `ehi-search` format) is rebuilt from the scope's current
    /// resources.
    async fn load_index(&self, state: &mut State, scope: Scope) -> Result<()> {
        let Some(loaded) = state.scopes.get(&scope) else {
            return Ok(());
        };
        if loaded.index.is_some() {
            return Ok(());
        }
        let bytes = loaded.manifest.index.clone();
        let decoded = tokio::task::spawn_blocking(move || Index::decode(&bytes)).await?;
        let index = match decoded {
            Ok(index) => index,
            Err(reason) => {
                tracing::warn!(%scope, %reason, "rebuilding the search index");
                let mut items = Vec::new();
                for (resource_type, ids) in &loaded.manifest.resources {
                    for (id, versions) in ids {
                        if let Some(latest) = versions.last().filter(|v| !v.deleted) {
                            items.push((
                                scope,
                                format!("{resource_type}/{id}"),
                                latest.blocks.clone(),
                                state.resource_key(scope, latest.epoch)?,
                            ));
                        }
                    }
                }
                let resources = self.fetch_many(items).await?;
                tokio::task::spawn_blocking(move || {
                    let mut index = Index::new();
                    for resource in &resources {
                        if index.upsert(resource).is_err() {
                            continue;
                        }
                    }
                    index
                })
                .await?
            }
        };
        if let Some(loaded) = state.scopes.get_mut(&scope) {
            loaded.index = Some(index);
        }
        Ok(())
    }

    /// Moves each scope slot to its manifest in the current root (best effort; see the
    /// module docs).
    async fn sync_scope_slots(&self, state: &State, scopes: &[Scope]) {
        let tasks = scopes.iter().filter_map(|scope| {
            let record = state.root.scopes.get(scope)?;
            let target = Id::from_bytes(*record.manifest.first()?);
            let slot = Id::from_bytes(record.slot_id);
            let signer = SlotSigner::ed25519_from_seed(record.slot_seed.expose());
            let root_head = state.root_head;
            Some(async move {
                for _ in 0..3 {
                    let current = match self.net.slots().get(&slot).await {
                        Ok(current) => current,
                        Err(e) => {
                            tracing::warn!(%slot, error = %e, "reading a scope slot");
                            return;
                        }
                    };
                    let Some(current) = current else {
                        let _ = self
                            .net
                            .slots()
                            .register(&signer.register_request(slot, target))
                            .await;
                        continue;
                    };
                    if current.address == target {
                        return;
                    }
                    // Only the holder of the current root may move scope slots.
                    match self.net.slots().get(&self.slot).await {
                        Ok(Some(vault)) if vault.address == root_head => {}
                        _ => return,
                    }
                    match self
                        .net
                        .slots()
                        .update_signed(&slot, &signer, &current.address, &target)
                        .await
                    {
                        Ok(()) => return,
                        Err(e) if Rejection::of(&e) == Some(Rejection::Conflict) => continue,
                        Err(e) => {
                            tracing::warn!(%slot, error = %e, "moving a scope slot");
                            return;
                        }
                    }
                }
            })
        });
        join_all(tasks).await;
    }

    // -----------------------------------------------------------------------------------
    // Reading
    // -----------------------------------------------------------------------------------

    /// The current version of `resource_type/id`.
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Value> {
        let (key, blocks, scope) = {
            let state = self.state.lock().await;
            let (scope, latest) = state
                .snapshot()
                .current(resource_type, id)?
                .ok_or_else(|| EhiError::NotFound(format!("{resource_type}/{id}")))?;
            (
                state.resource_key(scope, latest.epoch)?,
                latest.blocks.clone(),
                scope,
            )
        };
        self.fetch_resource(&key, scope, &blocks, &format!("{resource_type}/{id}"))
            .await
    }

    /// One version of `resource_type/id`.
    pub async fn read_version(&self, resource_type: &str, id: &str, version: u64) -> Result<Value> {
        let label = format!("{resource_type}/{id}/_history/{version}");
        let (key, blocks, scope) = {
            let state = self.state.lock().await;
            let (scope, versions) = state
                .versions(resource_type, id)
                .ok_or_else(|| EhiError::NotFound(label.clone()))?;
            let entry = versions
                .iter()
                .find(|v| v.version == version)
                .ok_or_else(|| EhiError::NotFound(label.clone()))?;
            if entry.deleted {
                return Err(EhiError::Gone(label));
            }
            (
                state.resource_key(scope, entry.epoch)?,
                entry.blocks.clone(),
                scope,
            )
        };
        self.fetch_resource(&key, scope, &blocks, &label).await
    }

    /// Every version of `resource_type/id`, newest first.
    pub async fn history(&self, resource_type: &str, id: &str) -> Result<Vec<HistoryEntry>> {
        let label = format!("{resource_type}/{id}");
        let items = {
            let state = self.state.lock().await;
            let (scope, versions) = state
                .versions(resource_type, id)
                .ok_or_else(|| EhiError::NotFound(label.clone()))?;
            let mut items = Vec::with_capacity(versions.len());
            for v in versions.iter().rev() {
                items.push((scope, v.clone(), state.resource_key(scope, v.epoch)?));
            }
            items
        };
        let fetched: Vec<Result<HistoryEntry>> = stream::iter(items)
            .map(|(scope, entry, key)| {
                let label = format!("{label}/_history/{}", entry.version);
                async move {
                    let resource = if entry.deleted {
                        None
                    } else {
                        Some(
                            self.fetch_resource(&key, scope, &entry.blocks, &label)
                                .await?,
                        )
                    };
                    Ok(HistoryEntry {
                        version: entry.version,
                        last_updated: entry.last_updated,
                        deleted: entry.deleted,
                        resource,
                    })
                }
            })
            .buffered(self.options.concurrency.max(1))
            .collect()
            .await;
        fetched.into_iter().collect()
    }

    /// Every current resource in the compartment of `Patient/patient_id`: the Patient
    /// and every resource whose current version references it (sorted by type, id).
    pub async fn patient_compartment(&self, patient_id: &str) -> Result<Vec<Value>> {
        let items = {
            let state = self.state.lock().await;
            let mut items = Vec::new();
            for (scope, loaded) in &state.scopes {
                for (resource_type, ids) in &loaded.manifest.resources {
                    for (id, versions) in ids {
                        let Some(latest) = versions.last() else {
                            continue;
                        };
                        if latest.deleted || !latest.patients.iter().any(|p| p == patient_id) {
                            continue;
                        }
                        items.push((
                            *scope,
                            format!("{resource_type}/{id}"),
                            latest.blocks.clone(),
                            state.resource_key(*scope, latest.epoch)?,
                        ));
                    }
                }
            }
            items.sort_by(|a, b| a.1.cmp(&b.1));
            items
        };
        self.fetch_many(items).await
    }

    /// FHIR search over `resource_type` (`query` is a URL query string such as
    /// `code=http://loinc.org|8867-4&date=ge2020`), answered from the decrypted indexes.
    /// Resources of the type kept in the `sensitive` scope are searched too and follow
    /// the others (each part in its own sort order).
    pub async fn search(&self, resource_type: &str, query: &str) -> Result<SearchHits> {
        if !fhir::valid_type(resource_type) {
            return Err(EhiError::InvalidArgument(format!(
                "{resource_type:?} is not a resource type"
            )));
        }
        let (total, items) = {
            let mut state = self.state.lock().await;
            let scopes = search_scopes(&state, resource_type);
            let mut total = 0;
            let mut ids = Vec::new();
            for scope in &scopes {
                self.load_index(&mut state, *scope).await?;
                let Some(index) = state.scopes.get(scope).and_then(|l| l.index.as_ref()) else {
                    continue;
                };
                let hits = index
                    .search(resource_type, query)
                    .map_err(EhiError::Search)?;
                total += hits.total;
                ids.extend(hits.ids.into_iter().map(|id| (*scope, id)));
            }
            let mut items = Vec::with_capacity(ids.len());
            for (scope, id) in ids {
                let Some(latest) = state.snapshot().live_in(scope, resource_type, &id) else {
                    continue;
                };
                items.push((
                    scope,
                    format!("{resource_type}/{id}"),
                    latest.blocks.clone(),
                    state.resource_key(scope, latest.epoch)?,
                ));
            }
            (total, items)
        };
        let resources = self.fetch_many(items).await?;
        Ok(SearchHits { total, resources })
    }

    /// FHIR search returning only the matching ids (after `_count`/`_offset`) and the
    /// total: no resource is fetched or decrypted.
    pub async fn search_ids(
        &self,
        resource_type: &str,
        query: &str,
    ) -> Result<(usize, Vec<String>)> {
        if !fhir::valid_type(resource_type) {
            return Err(EhiError::InvalidArgument(format!(
                "{resource_type:?} is not a resource type"
            )));
        }
        let mut state = self.state.lock().await;
        let scopes = search_scopes(&state, resource_type);
        let mut total = 0;
        let mut ids = Vec::new();
        for scope in scopes {
            self.load_index(&mut state, scope).await?;
            if let Some(index) = state.scopes.get(&scope).and_then(|l| l.index.as_ref()) {
                let hits = index
                    .search(resource_type, query)
                    .map_err(EhiError::Search)?;
                total += hits.total;
                ids.extend(hits.ids);
            }
        }
        Ok((total, ids))
    }

    /// Decodes every scope's search index now (otherwise the first search of a scope
    /// does it).
    pub async fn load_indexes(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        let scopes: Vec<Scope> = state.scopes.keys().copied().collect();
        for scope in scopes {
            self.load_index(&mut state, scope).await?;
        }
        Ok(())
    }

    /// A fingerprint of the vault's resources (BLAKE3 over every scope's manifest
    /// blocks): it changes when any resource changes (or a scope is re-sealed) and not
    /// on audit-only or grant-only commits. `ehi serve` compares it after each refresh
    /// to know whether its cache of decrypted resources is still current.
    pub async fn resources_fingerprint(&self) -> [u8; 32] {
        let state = self.state.lock().await;
        let mut hasher = blake3::Hasher::new();
        for (scope, record) in &state.root.scopes {
            hasher.update(scope.to_string().as_bytes());
            hasher.update(&[0]);
            for block in &record.manifest {
                hasher.update(block);
            }
        }
        *hasher.finalize().as_bytes()
    }

    /// Drops the decrypted manifests and search indexes this handle holds (`ehi serve`
    /// calls it once the vault was removed); a later read re-reads the vault slot.
    pub async fn forget_loaded(&self) {
        let mut state = self.state.lock().await;
        state.scopes.clear();
    }

    /// The scope and patient compartments of each current resource of `refs`
    /// (`(type, id)`; `None` when it has no current version). Read from the manifests
    /// in memory: nothing is fetched or decrypted.
    pub async fn placements(&self, refs: &[(String, String)]) -> Vec<Option<Placement>> {
        let state = self.state.lock().await;
        refs.iter()
            .map(|(t, id)| {
                state.scopes.iter().find_map(|(scope, loaded)| {
                    let latest = loaded.manifest.resources.get(t)?.get(id)?.last()?;
                    (!latest.deleted).then(|| Placement {
                        scope: *scope,
                        patients: latest.patients.clone(),
                    })
                })
            })
            .collect()
    }

    /// `Type/id` of every current resource, sorted.
    pub async fn list(&self) -> Vec<String> {
        self.state.lock().await.snapshot().list()
    }

    /// Every resource with every version, oldest version first, resources sorted by
    /// type and id (what [`crate::export`] writes).
    pub(crate) async fn everything(&self, with_history: bool) -> Result<Vec<ResourceVersions>> {
        let (plan, items) = {
            let state = self.state.lock().await;
            let mut plan: Vec<(String, String, Vec<VersionEntry>)> = Vec::new();
            let mut items = Vec::new();
            let mut all: Vec<(Scope, &String, &String, &Vec<VersionEntry>)> = Vec::new();
            for (scope, loaded) in &state.scopes {
                for (resource_type, ids) in &loaded.manifest.resources {
                    for (id, versions) in ids {
                        all.push((*scope, resource_type, id, versions));
                    }
                }
            }
            all.sort_by(|a, b| (a.1, a.2).cmp(&(b.1, b.2)));
            for (scope, resource_type, id, versions) in all {
                let chosen: Vec<VersionEntry> = if with_history {
                    versions.clone()
                } else {
                    match versions.last() {
                        Some(v) if !v.deleted => vec![v.clone()],
                        _ => continue,
                    }
                };
                for v in &chosen {
                    if !v.deleted {
                        items.push((
                            scope,
                            format!("{resource_type}/{id}/_history/{}", v.version),
                            v.blocks.clone(),
                            state.resource_key(scope, v.epoch)?,
                        ));
                    }
                }
                plan.push((resource_type.clone(), id.clone(), chosen));
            }
            (plan, items)
        };
        let mut fetched = self.fetch_many(items).await?.into_iter();
        let mut out = Vec::with_capacity(plan.len());
        for (resource_type, id, versions) in plan {
            let mut list = Vec::with_capacity(versions.len());
            for v in versions {
                let resource = if v.deleted { None } else { fetched.next() };
                list.push(HistoryEntry {
                    version: v.version,
                    last_updated: v.last_updated,
                    deleted: v.deleted,
                    resource,
                });
            }
            out.push(ResourceVersions {
                resource_type,
                id,
                versions: list,
            });
        }
        Ok(out)
    }

    async fn fetch_many(
        &self,
        items: Vec<(Scope, String, Vec<[u8; 32]>, SecretKey)>,
    ) -> Result<Vec<Value>> {
        let fetched: Vec<Result<Value>> = stream::iter(items)
            .map(|(scope, label, blocks, key)| async move {
                self.fetch_resource(&key, scope, &blocks, &label).await
            })
            .buffered(self.options.concurrency.max(1))
            .collect()
            .await;
        fetched.into_iter().collect()
    }

    async fn fetch_resource(
        &self,
        key: &SecretKey,
        scope: Scope,
        blocks: &[[u8; 32]],
        label: &str,
    ) -> Result<Value> {
        let head = blocks
            .first()
            .copied()
            .map(Id::from_bytes)
            .ok_or_else(|| EhiError::corrupt(label, "a stored version has no blocks"))?;
        let key = key.clone();
        let (payload, _) = self
            .fetch_object(head, Kind::Resource, scope.name(), label, move |_| {
                Some(key.clone())
            })
            .await?;
        serde_json::from_slice(&payload)
            .map_err(|e| EhiError::corrupt(label, format!("decrypted content is not JSON: {e}")))
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

    /// Removes the vault: points the vault slot and every other slot of the vault
    /// (scopes, grants, grant channels, consent inbox and reply slots, emergency policy
    /// and log, device keyring; see `vault/removal.rs` for the open slots' limits) at
    /// the public tombstone, unpins every block the patient's devices pinned, destroys
    /// the keystore file when `keystore_file` is given, and drops (wipes) the keys held
    /// by this handle. The ciphertext stays on the storage servers until the
    /// distributor collects the unpinned blocks ([`RemoveReport::collection`] says
    /// when); without the keys it cannot be decrypted (see the crate docs for what
    /// copies of the keystore mean).
    pub async fn remove(self, keystore_file: Option<&Path>) -> Result<RemoveReport> {
        let mut notes = Vec::new();
        let tombstone = Blob {
            address: tombstone_address(),
            bytes: bytes::Bytes::from_static(TOMBSTONE),
        };
        self.net.put(&tombstone).await?;
        let mut state = self.state.lock().await;
        let blocks = self
            .commit(&mut state, &mut (), |vault, state, ()| {
                Box::pin(async move {
                    if let Err(e) = vault.ensure_audit_blocks(state).await {
                        tracing::warn!(error = %e, "walking the audit log");
                    }
                    Ok(Plan::Retire(state.all_blocks()))
                })
            })
            .await?;
        // Every other slot (scopes, grants, channels, inbox, replies, emergency policy
        // and log, device keyring) and the blocks the root does not list: see
        // `vault/removal.rs`.
        let mut blocks = blocks;
        blocks.extend(self.remove_the_rest(&state, &mut notes).await);
        let unpinned = self.net.unpin(&blocks).await?;
        let keystore_destroyed = match keystore_file {
            Some(path) => {
                crate::keystore::Keystore::destroy(path)?;
                true
            }
            None => false,
        };
        let distributor = self.net.has_distributor();
        let collection = self.net.collection().await;
        drop(state);
        drop(self);
        Ok(RemoveReport {
            blocks: blocks.len(),
            unpinned,
            distributor,
            collection,
            keystore_destroyed,
            notes,
        })
    }
}

/// Every version of one resource (for export).
#[derive(Clone, Debug)]
pub(crate) struct ResourceVersions {
    pub resource_type: String,
    pub id: String,
    pub versions: Vec<HistoryEntry>,
}

/// The output of [`Vault::build_manifests`]: the new manifests (sealed) and the root
/// pointing at them (not yet sealed).
struct Built {
    scopes: Vec<(Scope, ScopeManifest, Index)>,
    blobs: Vec<Blob>,
    root: VaultRoot,
    notes: Vec<String>,
}

/// Plans the changes against `state`: one new version per change that changes
/// something.
/// The ids of the Patients whose records the vault keeps: its current Patient
/// resources and the patients its current resources belong to (their compartments).
fn vault_patients(state: &State) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for loaded in state.scopes.values() {
        for (resource_type, ids) in &loaded.manifest.resources {
            for (id, versions) in ids {
                let Some(latest) = versions.last().filter(|v| !v.deleted) else {
                    continue;
                };
                if resource_type == "Patient" {
                    out.insert(id.clone());
                }
                out.extend(latest.patients.iter().cloned());
            }
        }
    }
    out
}

/// Refuses (or, when allowed, records) an import that brings another patient's records
/// into a vault: a vault keeps one patient's records.
fn check_patients(
    state: &State,
    planned: &[Planned],
    options: &ImportOptions,
    report: &mut ImportReport,
) -> Result<()> {
    let kept = vault_patients(state);
    let mut incoming = BTreeSet::new();
    for p in planned.iter().filter(|p| !p.entry.deleted) {
        if p.resource_type == "Patient" {
            incoming.insert(p.id.clone());
        }
        incoming.extend(p.entry.patients.iter().cloned());
    }
    let new: Vec<String> = incoming.difference(&kept).cloned().collect();
    if kept.len() + new.len() <= 1 || new.is_empty() {
        return Ok(());
    }
    let mut all: Vec<String> = kept.iter().map(|p| format!("Patient/{p}")).collect();
    all.extend(new.iter().map(|p| format!("Patient/{p}")));
    if !options.allow_other_patients {
        return Err(EhiError::OtherPatients {
            kept: kept.iter().map(|p| format!("Patient/{p}")).collect(),
            patients: all,
        });
    }
    report.other_patients = if kept.is_empty() {
        all.into_iter().skip(1).collect()
    } else {
        new.iter().map(|p| format!("Patient/{p}")).collect()
    };
    Ok(())
}

fn plan(
    state: &State,
    changes: &[Change],
    options: &ImportOptions,
    now: u64,
    report: &mut ImportReport,
    notes: &mut Vec<String>,
) -> Result<Vec<Planned>> {
    #[derive(Clone)]
    struct Latest {
        scope: Scope,
        version: u64,
        hash: [u8; 32],
        deleted: bool,
        patients: Vec<String>,
    }
    let mut overlay: HashMap<(&str, &str), Latest> = HashMap::new();
    let mut planned = Vec::new();
    let stamp = instant(now);
    for (i, change) in changes.iter().enumerate() {
        let key = (change.resource_type.as_str(), change.id.as_str());
        let latest =
            match overlay.get(&key) {
                Some(l) => Some(l.clone()),
                None => state.versions(&change.resource_type, &change.id).and_then(
                    |(scope, versions)| {
                        versions.last().map(|v| Latest {
                            scope,
                            version: v.version,
                            hash: v.content_hash,
                            deleted: v.deleted,
                            patients: v.patients.clone(),
                        })
                    },
                ),
            };
        let label = format!("{}/{}", change.resource_type, change.id);
        match &change.op {
            Op::Put(resource) => {
                let hash = fhir::content_hash(resource);
                let known = incoming_version(resource).is_some_and(|v| {
                    stored_version(state, change, v)
                        .is_some_and(|e| !e.deleted && e.content_hash == hash)
                });
                if known
                    || latest
                        .as_ref()
                        .is_some_and(|l| !l.deleted && l.hash == hash)
                {
                    report.unchanged += 1;
                    continue;
                }
                let scope = match &latest {
                    Some(l) => {
                        if l.scope != Scope::Sensitive && scope::is_labelled_sensitive(resource) {
                            notes.push(format!(
                                "{label} is now labelled sensitive but stays in scope {} \
                                 (resources do not change scope)",
                                l.scope
                            ));
                        }
                        l.scope
                    }
                    None if scope::is_labelled_sensitive(resource) => Scope::Sensitive,
                    None => state
                        .root
                        .overrides
                        .get(&change.resource_type)
                        .copied()
                        .unwrap_or_else(|| scope::default_scope(&change.resource_type)),
                };
                let next = latest.as_ref().map_or(1, |l| l.version + 1);
                let version = incoming_version(resource).map_or(next, |v| v.max(next));
                let mut content = resource.clone();
                let last_updated = content
                    .pointer("/meta/lastUpdated")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| stamp.clone());
                set_meta(&mut content, version, &last_updated)?;
                let patients = fhir::patient_refs(&change.resource_type, &change.id, &content);
                let epoch = state.record(scope)?.current_epoch;
                if latest.is_some() {
                    report.updated += 1;
                } else {
                    report.created += 1;
                }
                overlay.insert(
                    key,
                    Latest {
                        scope,
                        version,
                        hash,
                        deleted: false,
                        patients: patients.clone(),
                    },
                );
                planned.push(Planned {
                    change: i,
                    scope,
                    resource_type: change.resource_type.clone(),
                    id: change.id.clone(),
                    entry: VersionEntry {
                        version,
                        epoch,
                        blocks: Vec::new(),
                        last_updated,
                        imported_ms: now,
                        deleted: false,
                        content_hash: hash,
                        patients,
                    },
                    content: Some(content),
                });
            }
            Op::Delete { at, version } => {
                if version
                    .is_some_and(|v| stored_version(state, change, v).is_some_and(|e| e.deleted))
                {
                    report.unchanged += 1;
                    continue;
                }
                let Some(l) = latest.filter(|l| !l.deleted) else {
                    notes.push(format!("delete of {label} skipped: no such resource"));
                    continue;
                };
                let version = l.version + 1;
                let epoch = state.record(l.scope)?.current_epoch;
                report.deleted += 1;
                overlay.insert(
                    key,
                    Latest {
                        deleted: true,
                        version,
                        ..l.clone()
                    },
                );
                planned.push(Planned {
                    change: i,
                    scope: l.scope,
                    resource_type: change.resource_type.clone(),
                    id: change.id.clone(),
                    entry: VersionEntry {
                        version,
                        epoch,
                        blocks: Vec::new(),
                        last_updated: at.clone().unwrap_or_else(|| stamp.clone()),
                        imported_ms: now,
                        deleted: true,
                        content_hash: [0; 32],
                        patients: l.patients,
                    },
                    content: None,
                });
            }
        }
    }
    check_patients(state, &planned, options, report)?;
    Ok(planned)
}

/// The scopes holding resources of `resource_type`, the type's own scope first.
fn search_scopes(state: &State, resource_type: &str) -> Vec<Scope> {
    let mut scopes: Vec<Scope> = state
        .scopes
        .iter()
        .filter(|(_, loaded)| loaded.manifest.resources.contains_key(resource_type))
        .map(|(scope, _)| *scope)
        .collect();
    let preferred = state
        .root
        .overrides
        .get(resource_type)
        .copied()
        .unwrap_or_else(|| scope::default_scope(resource_type));
    if scopes.is_empty() {
        scopes.push(preferred);
    }
    scopes.sort_by_key(|s| (*s != preferred, *s));
    scopes
}

/// The stored version `version` of the change's resource.
fn stored_version<'a>(state: &'a State, change: &Change, version: u64) -> Option<&'a VersionEntry> {
    state
        .versions(&change.resource_type, &change.id)
        .and_then(|(_, versions)| versions.iter().find(|e| e.version == version))
}

/// A numeric `meta.versionId` of the input (at most 2^53), which the new version takes
/// when it is above the vault's next number: an exported resource re-imports with the
/// same version number.
fn incoming_version(resource: &Value) -> Option<u64> {
    resource
        .pointer("/meta/versionId")
        .and_then(Value::as_str)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v <= 1 << 53)
}

/// Sets `meta.versionId` and `meta.lastUpdated`.
fn set_meta(resource: &mut Value, version: u64, last_updated: &str) -> Result<()> {
    let object = resource
        .as_object_mut()
        .ok_or_else(|| EhiError::InvalidArgument("a resource is not an object".into()))?;
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| EhiError::InvalidArgument("meta is not an object".into()))?;
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(last_updated.to_string()),
    );
    Ok(())
}

/// Seals a batch of planned versions (runs on the blocking pool).
fn seal_batch(
    planned: &[Planned],
    keys: &HashMap<(Scope, u32), SecretKey>,
    batch: &[usize],
) -> Result<Vec<(usize, Sealed)>> {
    let mut out = Vec::with_capacity(batch.len());
    for &i in batch {
        let p = &planned[i];
        let Some(content) = &p.content else {
            continue;
        };
        let key = keys
            .get(&(p.scope, p.entry.epoch))
            .ok_or_else(|| EhiError::Crypto("missing resource key".into()))?;
        let plaintext = Zeroizing::new(
            serde_json::to_vec(content)
                .map_err(|e| EhiError::Crypto(format!("encoding a resource: {e}")))?,
        );
        out.push((
            i,
            seal::seal_object(
                key,
                Kind::Resource,
                p.scope.name(),
                p.entry.epoch,
                &plaintext,
            )?,
        ));
    }
    Ok(out)
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
/// carries the generation; see `vault/devices.rs`).
fn seal_root(root: &VaultRoot, keys: &RootKeys) -> Result<Sealed> {
    let bytes = Zeroizing::new(format::encode(root, "vault root")?);
    let (generation, key) = keys.current();
    seal::seal_object(&key, Kind::Root, "vault", generation, &bytes)
}

/// Fetches and opens an object (head plus chunks) from `net`. Returns the payload and
/// every block address. `key_for` maps the epoch in the head's envelope to the AEAD key.
pub(crate) async fn fetch_object(
    net: &Network,
    concurrency: usize,
    head: Id,
    kind: Kind,
    context: &str,
    what: &str,
    key_for: impl Fn(u32) -> Option<SecretKey>,
) -> Result<(Zeroizing<Vec<u8>>, Vec<Id>)> {
    let bytes = net.get(&head, what).await?;
    let epoch = seal::epoch_of(&bytes)
        .ok_or_else(|| EhiError::corrupt(what, "not an ehi-layer envelope"))?;
    let key = key_for(epoch)
        .ok_or_else(|| EhiError::corrupt(what, format!("no key for epoch {epoch}")))?;
    match seal::open_object(&key, kind, context, &bytes, what)? {
        Opened::Inline(payload) => Ok((payload, vec![head])),
        Opened::Chunked { total_len, chunks } => {
            let fetched: Vec<Result<bytes::Bytes>> = stream::iter(chunks.iter().copied())
                .map(|address| async move { net.get(&address, what).await })
                .buffered(concurrency.max(1))
                .collect()
                .await;
            let mut out = Zeroizing::new(Vec::with_capacity(total_len.min(1 << 30) as usize));
            for chunk in fetched {
                seal::open_chunk(&key, context, &chunk?, what, &mut out)?;
            }
            if out.len() as u64 != total_len {
                return Err(EhiError::corrupt(
                    what,
                    "chunks do not add up to its length",
                ));
            }
            let mut blocks = vec![head];
            blocks.extend(chunks);
            Ok((out, blocks))
        }
    }
}

fn to_raw(ids: &[Id]) -> Vec<[u8; 32]> {
    ids.iter().map(|id| *id.as_bytes()).collect()
}
