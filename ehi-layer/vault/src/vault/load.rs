//! Loading a vault's state: following the vault slot to the current root, fetching the
//! manifests that changed and decoding search indexes on demand, fetching sealed
//! objects, and moving the scope slots after the root.

use super::*;

impl Vault {
    /// Brings `state` up to the vault slot's current root, fetching only manifests that
    /// changed.
    #[doc(hidden)]
    pub async fn refresh_state(&self, state: &mut State) -> Result<()> {
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

    pub(super) async fn fetch_manifest(
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
    pub(super) async fn fetch_object(
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
    pub(super) async fn load_index(&self, state: &mut State, scope: Scope) -> Result<()> {
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
    #[doc(hidden)]
    pub async fn sync_scope_slots(&self, state: &State, scopes: &[Scope]) {
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
}

/// Fetches and opens an object (head plus chunks) from `net`. Returns the payload and
/// every block address. `key_for` maps the epoch in the head's envelope to the AEAD key.
pub async fn fetch_object(
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

/// Fetches, opens and parses the resource version whose blocks are `blocks` (head
/// first), sealed in `scope` under the resource key `key`.
pub async fn fetch_resource(
    net: &Network,
    concurrency: usize,
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
    let (payload, _) = fetch_object(
        net,
        concurrency,
        head,
        Kind::Resource,
        scope.name(),
        label,
        move |_| Some(key.clone()),
    )
    .await?;
    serde_json::from_slice(&payload)
        .map_err(|e| EhiError::corrupt(label, format!("decrypted content is not JSON: {e}")))
}
