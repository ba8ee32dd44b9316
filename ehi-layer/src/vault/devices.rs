//! The patient's devices in the vault root (`devices`, [`DeviceRecord`]: each device's
//! HPKE public key and when it joined): listing, adding (after a pairing, see
//! [`crate::device`]), removing (with a key rotation of every scope), and keeping a
//! device in sync by watching the vault slot.

use super::*;
use crate::device::{DeviceInfo, device_id};

/// What removing a device did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeviceRemoval {
    /// The removed device.
    pub device: String,
    /// Every scope, with the new key epoch it moved to.
    pub rotated: Vec<(Scope, u32)>,
    /// Grants re-sealed with the new keys.
    pub resealed: usize,
}

/// A change seen by [`Vault::watch`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WatchEvent {
    /// The new root's commit counter.
    pub generation: u64,
    /// The new root's address.
    pub root: Id,
}

impl Vault {
    /// The devices listed in the vault root (as of the last refresh).
    pub async fn devices(&self) -> Vec<DeviceInfo> {
        let state = self.state.lock().await;
        state.root.devices.iter().map(DeviceInfo::of).collect()
    }

    /// Adds a device (its HPKE public key) to the root, with an audit entry.
    pub(crate) async fn add_device(&self, hpke_public: [u8; 32]) -> Result<DeviceInfo> {
        let record = DeviceRecord {
            hpke_public,
            added_ms: now_ms(),
        };
        let mut state = self.state.lock().await;
        for attempt in 1..=self.options.max_attempts {
            self.refresh_state(&mut state).await?;
            let mut root = state.root.clone();
            if root.devices.iter().any(|d| d.hpke_public == hpke_public) {
                return Ok(DeviceInfo::of(&record));
            }
            root.devices.push(record.clone());
            let audit = AuditRecord::new(
                AuditAction::Device,
                format!("device {} joined", device_id(&hpke_public)),
            )
            .with_entities(vec![format!("device/{}", device_id(&hpke_public))]);
            if self
                .swap_root(
                    &mut state,
                    root,
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Some(&audit),
                )
                .await?
            {
                return Ok(DeviceInfo::of(&record));
            }
            if attempt == self.options.max_attempts {
                break;
            }
        }
        Err(EhiError::Contention {
            attempts: self.options.max_attempts,
        })
    }

    /// Removes device `id` (from [`Vault::devices`]) and rotates the key of **every
    /// scope** to a new epoch, like a revocation ([`Vault::revoke`]) covering everything:
    /// manifests are re-sealed under the new keys, every grant is re-sealed, and all
    /// later writes use the new epochs. See [`crate::device`] for what this does not
    /// achieve against a device that kept its keystore.
    pub async fn remove_device(&self, id: &str) -> Result<DeviceRemoval> {
        let wanted = id.trim().to_ascii_lowercase();
        let mut state = self.state.lock().await;
        for attempt in 1..=self.options.max_attempts {
            self.refresh_state(&mut state).await?;
            let Some(position) = state
                .root
                .devices
                .iter()
                .position(|d| device_id(&d.hpke_public) == wanted)
            else {
                return Err(EhiError::NotFound(format!("device {id}")));
            };
            if state.root.devices.len() == 1 {
                return Err(EhiError::InvalidArgument(
                    "that is the vault's only device; removing it would lock the patient out"
                        .into(),
                ));
            }
            let now = now_ms();
            let mut root = state.root.clone();
            root.devices.remove(position);
            let mut blobs: Vec<Blob> = Vec::new();
            let mut manifests: Vec<(Scope, ScopeManifest)> = Vec::new();
            let mut superseded: Vec<Id> = Vec::new();
            let mut rotated = Vec::new();
            let scopes: Vec<Scope> = root.scopes.keys().copied().collect();
            for scope in &scopes {
                let record = root.scopes.get_mut(scope).ok_or_else(|| {
                    EhiError::corrupt("vault root", format!("scope {scope} is missing"))
                })?;
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
                let mut manifest = state
                    .scopes
                    .get(scope)
                    .ok_or_else(|| EhiError::corrupt("vault", format!("scope {scope} not loaded")))?
                    .manifest
                    .clone();
                manifest.epoch = epoch;
                manifest.generation += 1;
                let sealed = seal_manifest(&manifest, &key)?;
                superseded.extend(record.manifest.iter().copied().map(Id::from_bytes));
                record.manifest = to_raw(&sealed.addresses());
                blobs.extend(sealed.into_blobs());
                manifests.push((*scope, manifest));
                rotated.push((*scope, epoch));
            }
            let mut republish = Vec::new();
            for index in 0..root.grants.len() {
                let blob = self.seal_grant_blob(&root, &root.grants[index], now)?;
                let g = &mut root.grants[index];
                superseded.push(Id::from_bytes(g.sealed));
                g.sealed = *blob.address.as_bytes();
                blobs.push(blob);
                republish.push(g.clone());
            }
            let audit = AuditRecord::new(
                AuditAction::Device,
                format!(
                    "device {wanted} removed; {} scope(s) moved to new key epochs",
                    rotated.len()
                ),
            )
            .with_entities(vec![format!("device/{wanted}")]);
            if self
                .swap_root(&mut state, root, blobs, manifests, Vec::new(), Some(&audit))
                .await?
            {
                self.sync_scope_slots(&state, &scopes).await;
                for g in &republish {
                    if let Err(e) = self.publish_grant_slot(g).await {
                        tracing::warn!(error = %e, "moving a grant slot");
                    }
                }
                self.net.unpin_quietly(&superseded).await;
                return Ok(DeviceRemoval {
                    device: wanted,
                    rotated,
                    resealed: republish.len(),
                });
            }
            if attempt == self.options.max_attempts {
                break;
            }
        }
        Err(EhiError::Contention {
            attempts: self.options.max_attempts,
        })
    }

    /// Keeps this handle in sync with the other devices: follows the vault slot through
    /// the slots server's watch stream and re-reads the vault (only changed manifests)
    /// each time the slot moves, calling `on_change` after each refresh. Reconnects when
    /// the stream ends; returns only on an error reading the vault.
    pub async fn watch<F>(&self, mut on_change: F) -> Result<()>
    where
        F: FnMut(WatchEvent) + Send,
    {
        loop {
            let stream = match self.net.slots().watch(&self.slot).await {
                Ok(Some(stream)) => Some(stream),
                Ok(None) => return Err(EhiError::NoVault { slot: self.slot }),
                Err(e) => {
                    tracing::warn!(error = %e, "watching the vault slot; retrying");
                    None
                }
            };
            if let Some(mut stream) = stream {
                while let Some(item) = stream.next().await {
                    let Ok(slot_state) = item else { break };
                    let mut state = self.state.lock().await;
                    if slot_state.address == state.root_head {
                        continue;
                    }
                    self.refresh_state(&mut state).await?;
                    let event = WatchEvent {
                        generation: state.root.generation,
                        root: state.root_head,
                    };
                    drop(state);
                    on_change(event);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
