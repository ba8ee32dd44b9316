//! Reading a vault: current and past versions, history, the patient compartment,
//! search (with resources or ids only), listings and the export walk. Every read
//! resolves what to fetch through the manifests' [`Snapshot`] or the loaded state and
//! fetches and decrypts outside the state lock.

use super::*;

impl Vault {
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
            for (scope, resource_type, id, versions) in state.snapshot().resources() {
                let Some(latest) = versions.last() else {
                    continue;
                };
                if latest.deleted || !latest.patients.iter().any(|p| p == patient_id) {
                    continue;
                }
                items.push((
                    scope,
                    format!("{resource_type}/{id}"),
                    latest.blocks.clone(),
                    state.resource_key(scope, latest.epoch)?,
                ));
            }
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
            for (scope, resource_type, id, versions) in state.snapshot().resources() {
                let chosen: Vec<VersionEntry> = if with_history {
                    versions.to_vec()
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
                plan.push((resource_type.to_string(), id.to_string(), chosen));
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

    pub(super) async fn fetch_many(
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

    pub(super) async fn fetch_resource(
        &self,
        key: &SecretKey,
        scope: Scope,
        blocks: &[[u8; 32]],
        label: &str,
    ) -> Result<Value> {
        fetch_resource(
            &self.net,
            self.options.concurrency,
            key,
            scope,
            blocks,
            label,
        )
        .await
    }
}

/// The scopes holding resources of `resource_type`, the type's own scope first.
pub(super) fn search_scopes(state: &State, resource_type: &str) -> Vec<Scope> {
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
