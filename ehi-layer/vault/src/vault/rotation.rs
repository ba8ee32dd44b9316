//! Key rotation: moving scopes to new key epochs when a grant ends (revocation or
//! expiry) or a device is removed, re-sealing the grants that remain, optionally
//! re-encrypting what the old keys opened, and retiring the ended grant's slot and
//! channel. The vault owns this because its own writes depend on it: expired grants are
//! rotated away at the patient's next import. Who gets keys is decided in
//! `ehi_share`; the design of grants is in [`crate::grant`].
//!
//! Every change here is one new vault root committed through `Vault::commit`
//! (`vault/commit.rs`). Grant slots and scope slots trail the root: they are moved
//! after the commit.

use super::*;
use crate::format::GrantRecord;
use crate::grant::{self, GrantPayload, GrantedScope};
use crate::slotmove;

/// What a revocation did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RevokeReport {
    /// The revoked grant.
    pub grant: String,
    /// The scopes moved to a new key epoch, with the new epoch.
    pub rotated: Vec<(Scope, u32)>,
    /// Remaining grants re-sealed with the new keys.
    pub resealed: Vec<String>,
    /// Resource versions re-encrypted under the new keys (with `reencrypt`).
    pub reencrypted: usize,
    /// Blocks unpinned (old manifests, old sealed grants, re-encrypted old versions).
    pub unpinned: usize,
    /// When the distributor deletes the unpinned blocks from the storage servers
    /// (`None`: no distributor, or it does not collect).
    pub collection: Option<crate::network::Collection>,
}

/// Resource versions fetched at once while re-encrypting after a revoke.
const REENCRYPT_PARALLELISM: usize = 16;

impl Vault {
    /// Revokes every expired grant (without re-encryption). Returns their ids. Called
    /// before every import ("expired grants are rotated away at the next write").
    pub async fn expire_grants(&self) -> Result<Vec<String>> {
        let mut state = self.state.lock().await;
        let now = now_ms();
        let expired: Vec<String> = state
            .root
            .grants
            .iter()
            .filter(|g| g.expires_ms <= now)
            .map(|g| hex::encode(g.id))
            .collect();
        let mut done = Vec::new();
        for id in expired {
            match self.revoke_locked(&mut state, &id, false).await {
                Ok(_) => done.push(id),
                // Another device revoked it meanwhile.
                Err(EhiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Revokes grant `id` with the vault's state lock held (see `ehi_share::revoke`).
    #[doc(hidden)]
    pub async fn revoke_locked(
        &self,
        state: &mut State,
        id: &str,
        reencrypt: bool,
    ) -> Result<RevokeReport> {
        let Revoked {
            grant,
            mut superseded,
            rotated,
            republish,
            reencrypted,
        } = self
            .commit(
                state,
                &mut (id, reencrypt),
                |vault, state, &mut (id, reencrypt)| {
                    Box::pin(vault.plan_revoke(state, id, reencrypt))
                },
            )
            .await?;
        self.sync_scope_slots(state, &grant.scopes).await;
        for g in &republish {
            if let Err(e) = self.publish_grant_slot(g).await {
                tracing::warn!(error = %e, "moving a grant slot");
            }
        }
        self.tombstone_grant_slot(&grant).await;
        // Its channel is no longer read: tombstone it, unpin its header.
        match self.close_channel(&grant).await {
            Ok(Some(header)) => superseded.push(header),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "closing a revoked grant's channel"),
        }
        let unpinned = self.net.unpin(&superseded).await.unwrap_or(0);
        let collection = if unpinned > 0 {
            self.net.collection().await
        } else {
            None
        };
        Ok(RevokeReport {
            grant: hex::encode(grant.id),
            rotated,
            resealed: republish.iter().map(|g| hex::encode(g.id)).collect(),
            reencrypted,
            unpinned,
            collection,
        })
    }

    /// The root without grant `id`: every scope it covered moved to a new key epoch
    /// (with `reencrypt`, every live version re-encrypted under it), the remaining grants
    /// covering those scopes re-sealed.
    async fn plan_revoke(&self, state: &State, id: &str, reencrypt: bool) -> Result<Plan<Revoked>> {
        let grant = find_grant(&state.root.grants, id)?.clone();
        let now = now_ms();
        let mut root = state.root.clone();
        root.grants.retain(|g| g.id != grant.id);
        let mut rotation = Rotation::default();
        let mut reencrypted = 0usize;
        for scope in &grant.scopes {
            let (epoch, key, mut manifest) = new_scope_epoch(state, &mut root, scope, now)?;
            if reencrypt {
                reencrypted += self
                    .reencrypt(state, *scope, epoch, &key, &mut manifest, &mut rotation)
                    .await?;
            }
            rotation.seal(&mut root, scope, manifest, epoch, &key)?;
        }
        // Re-seal the remaining grants that cover a rotated scope.
        let republish = rotation.reseal_grants(self, &mut root, now, |g| {
            g.scopes.iter().any(|s| grant.scopes.contains(s))
        })?;
        rotation.superseded.push(Id::from_bytes(grant.sealed));
        let audit = AuditRecord::new(
            AuditAction::Revoke,
            format!(
                "grant to {} revoked{}; {} scope(s) rotated, {} version(s) re-encrypted",
                grant.app_name,
                if grant.expires_ms <= now {
                    " (expired)"
                } else {
                    ""
                },
                rotation.rotated.len(),
                reencrypted
            ),
        )
        .with_entities(vec![format!("grant/{}", hex::encode(grant.id))]);
        let (change, superseded, rotated) = rotation.into_change(root, audit);
        Ok(Plan::write(
            change,
            Revoked {
                grant,
                superseded,
                rotated,
                republish,
                reencrypted,
            },
        ))
    }

    /// Re-encrypts under `key` (the new `epoch` of `scope`) every live version of
    /// `manifest` still under an older key: fetched and decrypted with bounded
    /// parallelism, sealed in order; the new blobs and the superseded ones go to
    /// `rotation`. Returns how many versions were re-encrypted.
    async fn reencrypt(
        &self,
        state: &State,
        scope: Scope,
        epoch: u32,
        key: &SecretKey,
        manifest: &mut ScopeManifest,
        rotation: &mut Rotation,
    ) -> Result<usize> {
        let resource_key = key.derive(CONTEXT_RESOURCE);
        let mut jobs = Vec::new();
        for (resource_type, ids) in &manifest.resources {
            for (rid, versions) in ids {
                for (index, v) in versions.iter().enumerate() {
                    if v.deleted || v.epoch == epoch {
                        continue;
                    }
                    let label = format!("{resource_type}/{rid}/_history/{}", v.version);
                    let old_key = state.resource_key(scope, v.epoch)?;
                    jobs.push((
                        resource_type.clone(),
                        rid.clone(),
                        index,
                        v.blocks.clone(),
                        old_key,
                        label,
                    ));
                }
            }
        }
        let fetched: Vec<_> = futures_util::stream::iter(jobs.into_iter().map(
            |(resource_type, rid, index, blocks, old_key, label)| async move {
                let content = self
                    .fetch_resource(&old_key, scope, &blocks, &label)
                    .await?;
                Ok::<_, EhiError>((resource_type, rid, index, content))
            },
        ))
        .buffer_unordered(REENCRYPT_PARALLELISM)
        .collect()
        .await;
        let mut reencrypted = 0;
        for item in fetched {
            let (resource_type, rid, index, content) = item?;
            let v = manifest
                .resources
                .get_mut(&resource_type)
                .and_then(|ids| ids.get_mut(&rid))
                .and_then(|versions| versions.get_mut(index))
                .ok_or_else(|| EhiError::corrupt("scope manifest", "a version vanished"))?;
            let plaintext = Zeroizing::new(
                serde_json::to_vec(&content)
                    .map_err(|e| EhiError::Crypto(format!("encoding a resource: {e}")))?,
            );
            let sealed = seal::seal_object(
                &resource_key,
                Kind::Resource,
                scope.name(),
                epoch,
                &plaintext,
            )?;
            rotation
                .superseded
                .extend(v.blocks.iter().copied().map(Id::from_bytes));
            v.blocks = to_raw(&sealed.addresses());
            v.epoch = epoch;
            rotation.blobs.extend(sealed.into_blobs());
            reencrypted += 1;
        }
        Ok(reencrypted)
    }

    /// The sealed grant blob of `record` with the keys in `root`.
    #[doc(hidden)]
    pub fn seal_grant_blob(
        &self,
        root: &VaultRoot,
        record: &GrantRecord,
        now: u64,
    ) -> Result<Blob> {
        let mut scopes = Vec::with_capacity(record.scopes.len());
        for scope in &record.scopes {
            let s = root.scopes.get(scope).ok_or_else(|| {
                EhiError::corrupt("vault root", format!("scope {scope} is missing"))
            })?;
            scopes.push(GrantedScope {
                scope: *scope,
                slot_id: s.slot_id,
                keys: s.keys.clone(),
            });
        }
        let payload = GrantPayload {
            format: grant::PAYLOAD_FORMAT,
            grant_id: record.id,
            vault_slot: *self.slot.as_bytes(),
            scopes,
            contribute: record.contribute,
            purpose: record.purpose.clone(),
            issued_ms: now,
            expires_ms: record.expires_ms,
        };
        let bytes = grant::seal_grant(&self.signing, record, &payload)?;
        Ok(Blob {
            address: Id::of_content(&bytes),
            bytes: bytes::Bytes::from(bytes),
        })
    }

    /// Points the grant slot of `record` at its sealed grant (registering it the first
    /// time).
    #[doc(hidden)]
    pub async fn publish_grant_slot(&self, record: &GrantRecord) -> Result<()> {
        let slot = Id::from_bytes(record.slot_id);
        let target = Id::from_bytes(record.sealed);
        let signer = SlotSigner::ed25519_from_seed(record.slot_seed.expose());
        slotmove::point(&self.net, &signer, slot, target, "grant").await
    }

    /// Points a revoked grant's slot at the public tombstone (best effort: the key
    /// rotation, not the slot, is what ends the access).
    #[doc(hidden)]
    pub async fn tombstone_grant_slot(&self, record: &GrantRecord) {
        let signer = SlotSigner::ed25519_from_seed(record.slot_seed.expose());
        let result = async {
            slotmove::store_tombstone(&self.net).await?;
            slotmove::tombstone(
                &self.net,
                Id::from_bytes(record.slot_id),
                Some(&signer),
                "grant",
            )
            .await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "tombstoning a grant slot");
        }
    }

    /// Points the channel of `grant` at the public tombstone (an open slot: the app
    /// could still move it on, but the patient's devices no longer read it) and returns
    /// its header blob (pinned by the patient's device; the caller unpins it), `None`
    /// when the channel was never opened.
    #[doc(hidden)]
    pub async fn close_channel(&self, grant: &GrantRecord) -> Result<Option<Id>> {
        let slot = crate::keys::channel_slot(&self.slot, &grant.id);
        let Some(header) = slotmove::registered_at(&self.net, slot, "grant channel").await? else {
            return Ok(None);
        };
        slotmove::store_tombstone(&self.net).await?;
        slotmove::tombstone(&self.net, slot, None, "grant channel").await?;
        Ok(Some(header))
    }
}

/// The grant `id` (hex, any case) of `grants`.
pub fn find_grant<'a>(grants: &'a [GrantRecord], id: &str) -> Result<&'a GrantRecord> {
    let wanted = id.trim().to_ascii_lowercase();
    grants
        .iter()
        .find(|g| hex::encode(g.id) == wanted)
        .ok_or_else(|| EhiError::NotFound(format!("grant {id}")))
}

/// Moves `scope` of `root` to a new key epoch (one past the newest it has): a fresh
/// random key becomes current. Returns the epoch, its key and a copy of the scope's
/// loaded manifest (for the caller to re-seal under that key).
pub fn new_scope_epoch(
    state: &State,
    root: &mut VaultRoot,
    scope: &Scope,
    now: u64,
) -> Result<(u32, SecretKey, ScopeManifest)> {
    let record = root
        .scopes
        .get_mut(scope)
        .ok_or_else(|| EhiError::corrupt("vault root", format!("scope {scope} is missing")))?;
    let epoch = record
        .keys
        .iter()
        .map(|k| k.epoch)
        .max()
        .unwrap_or(record.current_epoch)
        .checked_add(1)
        .ok_or_else(|| EhiError::Crypto("key epochs exhausted".into()))?;
    let key = SecretKey::random()?;
    record.keys.push(EpochKey {
        epoch,
        key: key.clone(),
        created_ms: now,
    });
    record.current_epoch = epoch;
    let manifest = state
        .scopes
        .get(scope)
        .ok_or_else(|| EhiError::corrupt("vault", format!("scope {scope} not loaded")))?
        .manifest
        .clone();
    Ok((epoch, key, manifest))
}

/// What a revocation committed, for the steps after the commit.
struct Revoked {
    grant: GrantRecord,
    superseded: Vec<Id>,
    rotated: Vec<(Scope, u32)>,
    republish: Vec<GrantRecord>,
    reencrypted: usize,
}

/// A key rotation being planned: the scopes moved to new epochs so far with their
/// re-sealed manifests, the blobs to write and the blocks they supersede.
#[derive(Debug, Default)]
pub struct Rotation {
    /// New blobs (manifests, re-sealed grants, re-encrypted versions).
    pub blobs: Vec<Blob>,
    /// Blocks the new blobs replace (unpinned once the commit stands).
    pub superseded: Vec<Id>,
    /// The scopes moved, with their new epoch.
    pub rotated: Vec<(Scope, u32)>,
    manifests: Vec<(Scope, ScopeManifest)>,
}

impl Rotation {
    /// Moves `scope` of `root` to a new key epoch and re-seals its manifest under it.
    pub fn rotate(
        &mut self,
        state: &State,
        root: &mut VaultRoot,
        scope: &Scope,
        now: u64,
    ) -> Result<()> {
        let (epoch, key, manifest) = new_scope_epoch(state, root, scope, now)?;
        self.seal(root, scope, manifest, epoch, &key)
    }

    /// Seals `manifest` as `scope`'s manifest of `epoch` under `key` and points `root`
    /// at it.
    #[doc(hidden)]
    pub fn seal(
        &mut self,
        root: &mut VaultRoot,
        scope: &Scope,
        mut manifest: ScopeManifest,
        epoch: u32,
        key: &SecretKey,
    ) -> Result<()> {
        let record = root
            .scopes
            .get_mut(scope)
            .ok_or_else(|| EhiError::corrupt("vault root", format!("scope {scope} is missing")))?;
        manifest.epoch = epoch;
        manifest.generation += 1;
        let sealed = seal_manifest(&manifest, key)?;
        self.superseded
            .extend(record.manifest.iter().copied().map(Id::from_bytes));
        record.manifest = to_raw(&sealed.addresses());
        self.blobs.extend(sealed.into_blobs());
        self.manifests.push((*scope, manifest));
        self.rotated.push((*scope, epoch));
        Ok(())
    }

    /// Re-seals (with the keys now in `root`) every grant of `root` that `covers`
    /// selects. Returns the re-sealed records (to point their slots at the new blobs).
    #[doc(hidden)]
    pub fn reseal_grants(
        &mut self,
        vault: &Vault,
        root: &mut VaultRoot,
        now: u64,
        covers: impl Fn(&GrantRecord) -> bool,
    ) -> Result<Vec<GrantRecord>> {
        let mut resealed = Vec::new();
        for index in 0..root.grants.len() {
            if !covers(&root.grants[index]) {
                continue;
            }
            let blob = vault.seal_grant_blob(root, &root.grants[index], now)?;
            let g = &mut root.grants[index];
            self.superseded.push(Id::from_bytes(g.sealed));
            g.sealed = *blob.address.as_bytes();
            self.blobs.push(blob);
            resealed.push(g.clone());
        }
        Ok(resealed)
    }

    /// The change of the root this rotation makes, with the blocks it supersedes and
    /// the scopes it moved.
    #[doc(hidden)]
    pub fn into_change(
        self,
        root: VaultRoot,
        audit: AuditRecord,
    ) -> (RootChange, Vec<Id>, Vec<(Scope, u32)>) {
        let change = RootChange {
            root,
            blobs: self.blobs,
            manifests: self
                .manifests
                .into_iter()
                .map(|(s, m)| (s, m, None))
                .collect(),
            unpin_after: Vec::new(),
            audit: Some(audit),
        };
        (change, self.superseded, self.rotated)
    }
}
