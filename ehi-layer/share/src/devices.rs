//! The patient's devices as the patient manages them: listing the devices in the
//! vault root, adding one after a pairing ([`crate::device`]) and removing one, which
//! rotates the root key generation and every scope key. The root key generations and
//! the device keyring they travel in are the vault's (`vault/keyring.rs`).

use crate::device::{DeviceInfo, device_id};
use ehi_vault::vault::prelude::*;

/// What removing a device did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeviceRemoval {
    /// The removed device.
    pub device: String,
    /// The new root key generation (given to the remaining devices only).
    pub root_generation: u32,
    /// Every scope, with the new key epoch it moved to.
    pub rotated: Vec<(Scope, u32)>,
    /// Grants re-sealed with the new keys.
    pub resealed: usize,
    /// Whether an emergency policy was re-published under the new root key generation
    /// (see [`crate::emergency`]; `false` without a policy). When this fails the
    /// removal still stands, the error is logged and the next change of the policy
    /// (or the next device removal) re-keys it.
    pub emergency_rekeyed: bool,
}

/// The devices listed in the vault root (as of the last refresh).
pub async fn devices(vault: &Vault) -> Vec<DeviceInfo> {
    let state = vault.state.lock().await;
    state.root.devices.iter().map(DeviceInfo::of).collect()
}

/// Adds a device (its HPKE public key) to the root, with an audit entry.
pub(crate) async fn add_device(vault: &Vault, hpke_public: [u8; 32]) -> Result<DeviceInfo> {
    let record = DeviceRecord {
        hpke_public,
        added_ms: now_ms(),
    };
    let mut state = vault.state.lock().await;
    vault
        .commit(&mut state, &mut (), move |vault, state, ()| {
            let record = record.clone();
            Box::pin(async move {
                let mut root = state.root.clone();
                if root.devices.iter().any(|d| d.hpke_public == hpke_public) {
                    return Ok(Plan::Nothing(DeviceInfo::of(&record)));
                }
                root.devices.push(record.clone());
                vault.extend_keyring(state, &root.devices).await?;
                let audit = AuditRecord::new(
                    AuditAction::Device,
                    format!("device {} joined", device_id(&hpke_public)),
                )
                .with_entities(vec![format!("device/{}", device_id(&hpke_public))]);
                Ok(Plan::write(
                    RootChange::root(root).audited(audit),
                    DeviceInfo::of(&record),
                ))
            })
        })
        .await
}

/// Removes device `id` (from [`crate::devices()`]) and rotates the key of **every
/// scope** to a new epoch, like a revocation ([`crate::revoke`]) covering everything:
/// manifests are re-sealed under the new keys, every grant is re-sealed, and all
/// later writes use the new epochs. See [`crate::device`] for what this does not
/// achieve against a device that kept its keystore.
pub async fn remove_device(vault: &Vault, id: &str) -> Result<DeviceRemoval> {
    let wanted = id.trim().to_ascii_lowercase();
    let mut state = vault.state.lock().await;
    let (generation, scopes, rotated, republish, superseded) = vault
        .commit(
            &mut state,
            &mut (id, wanted.as_str()),
            |vault, state, &mut (id, wanted)| {
                Box::pin(async move {
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
                    let generation = vault.new_root_generation(state, &root.devices).await?;
                    let mut rotation = Rotation::default();
                    let scopes: Vec<Scope> = root.scopes.keys().copied().collect();
                    for scope in &scopes {
                        rotation.rotate(state, &mut root, scope, now)?;
                    }
                    let republish = rotation.reseal_grants(vault, &mut root, now, |_| true)?;
                    let audit = AuditRecord::new(
                        AuditAction::Device,
                        format!(
                            "device {wanted} removed; {} scope(s) moved to new key epochs",
                            rotation.rotated.len()
                        ),
                    )
                    .with_entities(vec![format!("device/{wanted}")]);
                    let (change, superseded, rotated) = rotation.into_change(root, audit);
                    Ok(Plan::write(
                        change,
                        (generation, scopes, rotated, republish, superseded),
                    ))
                })
            },
        )
        .await?;
    vault.sync_scope_slots(&state, &scopes).await;
    for g in &republish {
        if let Err(e) = vault.publish_grant_slot(g).await {
            tracing::warn!(error = %e, "moving a grant slot");
        }
    }
    vault.net.unpin_quietly(&superseded).await;
    drop(state);
    // The emergency policy was keyed from a generation the removed device
    // holds: re-publish it under the new one.
    let emergency_rekeyed = match crate::emergency::rekey(vault).await {
        Ok(done) => done,
        Err(e) => {
            tracing::warn!(error = %e, "re-keying the emergency policy");
            false
        }
    };
    Ok(DeviceRemoval {
        device: wanted,
        root_generation: generation,
        rotated,
        resealed: republish.len(),
        emergency_rekeyed,
    })
}
