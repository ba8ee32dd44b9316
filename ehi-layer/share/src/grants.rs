//! The patient's side of sharing: granting scopes to apps, listing grants and their
//! tickets, revoking them. The design is in [`ehi_vault::grant`]; the key rotation a
//! revocation performs is the vault's (`vault/rotation.rs`).

use std::collections::BTreeSet;

use ehi_vault::format::GrantRecord;
use ehi_vault::grant::{self, Access, GrantInfo, GrantRequest, GrantTicket};
use ehi_vault::vault::prelude::*;

/// Every grant in the vault (no key material).
pub async fn grants(vault: &Vault) -> Vec<GrantInfo> {
    let state = vault.state.lock().await;
    let now = now_ms();
    state
        .root
        .grants
        .iter()
        .map(|g| {
            let mut info = GrantInfo::of(g, now);
            info.last_use_ms = crate::last_use(&state.root, &g.id);
            info
        })
        .collect()
}

/// The ticket of grant `id` for the app (also points the grant slot at the sealed
/// grant again, in case a crash came between the commit and the slot update).
pub async fn grant_ticket(vault: &Vault, id: &str) -> Result<GrantTicket> {
    let record = {
        let state = vault.state.lock().await;
        find_grant(&state.root.grants, id)?.clone()
    };
    vault.publish_grant_slot(&record).await?;
    Ok(GrantInfo::of(&record, now_ms()).ticket(vault.slot, vault.net.slots_server()))
}

/// Grants `request.scopes` to the app: seals the scopes' keys (every epoch) and slots
/// to the app's HPKE key, signed by the patient, through a new per-grant slot.
/// Returns the grant and the ticket to hand to the app.
pub async fn grant(vault: &Vault, request: GrantRequest) -> Result<(GrantInfo, GrantTicket)> {
    grant_with_id(vault, request, random_bytes()?).await
}

/// [`ehi_vault::grant`] with the grant id chosen by the caller (consent approvals derive
/// it from the request, so that approving again after a crash finds the grant).
/// When the root already holds a grant with that id, nothing is committed and that
/// grant is returned (its slot pointed at its sealed grant again).
pub(crate) async fn grant_with_id(
    vault: &Vault,
    request: GrantRequest,
    id: [u8; 16],
) -> Result<(GrantInfo, GrantTicket)> {
    let scopes: BTreeSet<Scope> = request.scopes.iter().copied().collect();
    if scopes.is_empty() {
        return Err(EhiError::InvalidArgument("grant at least one scope".into()));
    }
    let purpose = grant::check_purpose(&request.purpose)?;
    if request.duration_ms == 0 {
        return Err(EhiError::InvalidArgument(
            "the grant's duration is 0".into(),
        ));
    }
    let now = now_ms();
    let slot_seed = SecretKey::random()?;
    let slot_signer = SlotSigner::ed25519_from_seed(slot_seed.expose());
    let slot_id = slot_signer
        .ed25519_slot()
        .ok_or_else(|| EhiError::Crypto("grant slot key".into()))?;
    let mut record = GrantRecord {
        id,
        app_name: request.app.name.clone(),
        app_signing: request.app.signing_key,
        app_hpke: request.app.hpke_key,
        slot_seed,
        slot_id: *slot_id.as_bytes(),
        scopes: scopes.into_iter().collect(),
        contribute: request.access == Access::Contribute,
        created_ms: now,
        expires_ms: now.saturating_add(request.duration_ms),
        purpose,
        sealed: [0; 32],
    };
    let mut state = vault.state.lock().await;
    let record = vault
        .commit(&mut state, &mut record, move |vault, state, record| {
            Box::pin(async move {
                if let Some(existing) = state.root.grants.iter().find(|g| g.id == record.id) {
                    return Ok(Plan::Nothing(existing.clone()));
                }
                let blob = vault.seal_grant_blob(&state.root, record, now)?;
                record.sealed = *blob.address.as_bytes();
                let mut root = state.root.clone();
                root.grants.push(record.clone());
                let mut audit = AuditRecord::new(
                    AuditAction::Grant,
                    format!(
                        "{} access to {} for {} until {}",
                        if record.contribute {
                            "contribute"
                        } else {
                            "read"
                        },
                        record
                            .scopes
                            .iter()
                            .map(|s| s.name())
                            .collect::<Vec<_>>()
                            .join(","),
                        record.app_name,
                        instant(record.expires_ms)
                    ),
                )
                .with_entities(vec![format!("grant/{}", hex::encode(record.id))]);
                audit.purpose = Some(record.purpose.clone());
                let mut change = RootChange::root(root).audited(audit);
                change.blobs.push(blob);
                Ok(Plan::write(change, record.clone()))
            })
        })
        .await?;
    drop(state);
    vault.publish_grant_slot(&record).await?;
    let info = GrantInfo::of(&record, now_ms());
    let ticket = info.ticket(vault.slot, vault.net.slots_server());
    Ok((info, ticket))
}

/// Revokes grant `id` (see [`ehi_vault::grant`]): every scope it covered moves to a new
/// key epoch (manifests re-sealed under it, so the app can no longer open them),
/// remaining grants covering those scopes are re-sealed with the new keys, the grant
/// slot and the grant's channel are pointed at the tombstone (the channel header is
/// unpinned), and everything written afterwards uses the new epoch. With `reencrypt`, every stored version of those scopes is re-encrypted
/// under the new key and the old blobs are unpinned. What the app already read or
/// copied cannot be taken back.
pub async fn revoke(vault: &Vault, id: &str, reencrypt: bool) -> Result<RevokeReport> {
    let mut state = vault.state.lock().await;
    vault.revoke_locked(&mut state, id, reencrypt).await
}
