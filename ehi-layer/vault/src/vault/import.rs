//! Imports: inputs are parsed and checked, planned against the current root as one
//! commit plan (`Vault::commit`), their new versions sealed and stored (and kept across
//! attempts when another device commits first), and the touched scopes' manifests and
//! search indexes rebuilt. The protocol is described in the `vault` module docs.

use super::commit::Start;
use super::*;

impl Vault {
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

    pub(super) async fn commit_changes(
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
            .commit_from(
                Start::AsLastRead,
                &mut state,
                &mut import,
                |vault, state, import| Box::pin(vault.plan_import(state, import)),
            )
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
    pub(super) async fn plan_import(
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
    pub(super) async fn abandon(&self, stored: &HashMap<usize, Stored>, orphans: &[Id]) {
        let mut blocks: Vec<Id> = stored
            .values()
            .flat_map(|s| s.blocks.iter().copied().map(Id::from_bytes))
            .collect();
        blocks.extend_from_slice(orphans);
        self.net.unpin_quietly(&blocks).await;
    }

    /// Seals `planned[i]` for each `i` in `which` (batches on the blocking pool) and
    /// stores the blobs (bounded concurrency). Returns the addresses per index.
    pub(super) async fn seal_and_store(
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
    pub(super) async fn build_manifests(
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
}

/// A planned new version.
#[derive(Debug)]
pub(super) struct Planned {
    change: usize,
    scope: Scope,
    resource_type: String,
    id: String,
    entry: VersionEntry,
    content: Option<Value>,
}

/// A sealed resource version kept across commit attempts.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    version: u64,
    epoch: u32,
    scope: Scope,
    blocks: Vec<[u8; 32]>,
}

/// What an import keeps across its attempts.
pub(super) struct Importing<'a> {
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

/// The output of [`Vault::build_manifests`]: the new manifests (sealed) and the root
/// pointing at them (not yet sealed).
pub(super) struct Built {
    scopes: Vec<(Scope, ScopeManifest, Index)>,
    blobs: Vec<Blob>,
    root: VaultRoot,
    notes: Vec<String>,
}

/// The ids of the Patients whose records the vault keeps: its current Patient
/// resources and the patients its current resources belong to (their compartments).
pub(super) fn vault_patients(state: &State) -> BTreeSet<String> {
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
pub(super) fn check_patients(
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

/// Plans the changes against `state`: one new version per change that changes
/// something.
pub(super) fn plan(
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

/// The stored version `version` of the change's resource.
pub(super) fn stored_version<'a>(
    state: &'a State,
    change: &Change,
    version: u64,
) -> Option<&'a VersionEntry> {
    state
        .versions(&change.resource_type, &change.id)
        .and_then(|(_, versions)| versions.iter().find(|e| e.version == version))
}

/// A numeric `meta.versionId` of the input (at most 2^53), which the new version takes
/// when it is above the vault's next number: an exported resource re-imports with the
/// same version number.
pub(super) fn incoming_version(resource: &Value) -> Option<u64> {
    resource
        .pointer("/meta/versionId")
        .and_then(Value::as_str)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v <= 1 << 53)
}

/// Sets `meta.versionId` and `meta.lastUpdated`.
pub(super) fn set_meta(resource: &mut Value, version: u64, last_updated: &str) -> Result<()> {
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
pub(super) fn seal_batch(
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
