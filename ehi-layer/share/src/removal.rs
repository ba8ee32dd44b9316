//! Removal of the whole vault ([`remove`]) and what it reaches beyond the vault slot:
//! every other slot the patient's devices write, and every block they pinned that the
//! root does not list.
//!
//! ## Slots moved to the public tombstone
//! | slot | signature | who else can move it |
//! |---|---|---|
//! | scope slots, grant slots | ed25519 (seeds in the root) | a device that kept the keystore |
//! | device keyring slot | ed25519 (from the generation-0 root key) | any device that ever held the keystore |
//! | emergency policy slot (every root key generation held) | ed25519 (from the generation's key) | a device holding that generation |
//! | emergency access log slot | ed25519 (seed in the policy) | **the holder** (it writes the log) |
//! | consent inbox slot | none (open) | **anyone holding the inbox card** |
//! | reply slot of each request (decided, and pending ones that open) | none (open, the app registered it) | **anyone knowing its id** (the app) |
//! | grant channel of each grant | none (open) | **the app** (it posts to it) |
//!
//! An open slot or a slot another party holds a key for can be moved off the tombstone
//! again by that party: removal points it there once, it cannot keep it there. Nothing
//! readable is lost by that — what those slots point at is sealed to keys that are gone
//! with the vault (the inbox and channel keys live in the root) or to the app itself.
//! Slots of grants revoked earlier were tombstoned at revocation, with their channels
//! (by this build: a channel of a grant revoked by an earlier build is not known to the
//! root any more, and its header stays pinned). A device invite slot still open at
//! removal (a code neither used nor expired) is not known to the vault either; the
//! inviting device tombstones it when the code expires.
//!
//! ## Blocks unpinned
//! Besides what the root lists ([`Vault::blocks`]: root, manifests, versions, sealed
//! grants, audit entries, the inbox start blob, the decisions posted): the inbox card
//! published under a name (the name itself stays registered on the names server,
//! pointing at the unpinned card: the root does not record the name), each grant
//! channel's header blob (the registration in the channel slot's history), every
//! emergency policy blob (the policy slots' histories) and every device keyring blob
//! (the keyring slot's history). **Not unpinned**, because the patient's devices did not
//! pin them (a pin is counted per pinner, and taking another party's pin would be
//! taking what is theirs): the requests apps posted to the inbox, the apps' reply slot
//! start blobs, the messages apps posted to grant channels (contributions, audit
//! reports) and the holder's emergency log entries — all sealed to keys that are gone
//! with the vault, or to the app.

use crate::letter;
use ehi_vault::audit::{AuditAction, AuditRecord, PendingAudit};
use ehi_vault::slotmove;
use ehi_vault::vault::prelude::*;

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
    pub collection: Option<ehi_vault::network::Collection>,
    /// Whether the keystore file was overwritten and removed.
    pub keystore_destroyed: bool,
    /// Remarks (slots that could not be tombstoned or read, ...).
    pub notes: Vec<String>,
}

/// Removes the vault: points the vault slot and every other slot of the vault
/// (scopes, grants, grant channels, consent inbox and reply slots, emergency policy
/// and log, device keyring; see the module docs for the open slots' limits) at
/// the public tombstone, unpins every block the patient's devices pinned, destroys
/// the keystore file when `keystore_file` is given, and drops (wipes) the keys held
/// by this handle. The ciphertext stays on the storage servers until the
/// distributor collects the unpinned blocks ([`RemoveReport::collection`] says
/// when); without the keys it cannot be decrypted (see the crate docs for what
/// copies of the keystore mean).
pub async fn remove(vault: Vault, keystore_file: Option<&Path>) -> Result<RemoveReport> {
    let mut notes = Vec::new();
    // The removal is the log's last entry, after whatever reads were still queued;
    // the log then goes with the vault.
    vault.audit_queue().push(PendingAudit {
        record: AuditRecord::new(AuditAction::Remove, "the vault was removed"),
        requestor: None,
        ms: ehi_vault::time::now_ms(),
    });
    if let Err(e) = vault.flush_audit().await {
        notes.push(format!(
            "the removal could not be written to the audit log: {e}"
        ));
    }
    let tombstone = Blob {
        address: tombstone_address(),
        bytes: bytes::Bytes::from_static(TOMBSTONE),
    };
    vault.net.put(&tombstone).await?;
    let mut state = vault.state.lock().await;
    let blocks = vault.retire_root(&mut state).await?;
    // Every other slot (scopes, grants, channels, inbox, replies, emergency policy
    // and log, device keyring) and the blocks the root does not list: see
    // the module docs.
    let mut blocks = blocks;
    blocks.extend(remove_the_rest(&vault, &state, &mut notes).await);
    let unpinned = vault.net.unpin(&blocks).await?;
    let keystore_destroyed = match keystore_file {
        Some(path) => {
            ehi_vault::keystore::Keystore::destroy(path)?;
            true
        }
        None => false,
    };
    let distributor = vault.net.has_distributor();
    let collection = vault.net.collection().await;
    drop(state);
    drop(vault);
    Ok(RemoveReport {
        blocks: blocks.len(),
        unpinned,
        distributor,
        collection,
        keystore_destroyed,
        notes,
    })
}

/// A slot to tombstone: what it is, its id, its signer (`None`: open slot).
type Target = (String, Id, Option<SlotSigner>);

/// Tombstones every slot of the vault besides the vault slot (unpinning nothing);
/// returns the blocks to unpin that `State::all_blocks` does not list. What could
/// not be done is added to `notes`.
pub(crate) async fn remove_the_rest(
    vault: &Vault,
    state: &State,
    notes: &mut Vec<String>,
) -> Vec<Id> {
    let mut targets: Vec<Target> = Vec::new();
    let mut blocks: Vec<Id> = Vec::new();
    for (scope, record) in &state.root.scopes {
        targets.push((
            format!("scope slot of {scope}"),
            Id::from_bytes(record.slot_id),
            Some(SlotSigner::ed25519_from_seed(record.slot_seed.expose())),
        ));
    }
    for grant in &state.root.grants {
        targets.push((
            format!("grant slot {}", hex::encode(grant.id)),
            Id::from_bytes(grant.slot_id),
            Some(SlotSigner::ed25519_from_seed(grant.slot_seed.expose())),
        ));
        let channel = crate::contribution::channel_slot(&vault.slot, &grant.id);
        match slotmove::registered_at(&vault.net, channel, "grant channel").await {
            Ok(Some(header)) => {
                blocks.push(header);
                targets.push((
                    format!("channel of grant {}", hex::encode(grant.id)),
                    channel,
                    None,
                ));
            }
            Ok(None) => {}
            Err(e) => notes.push(format!(
                "channel of grant {} not read: {e}",
                hex::encode(grant.id)
            )),
        }
    }
    if let Some(inbox) = &state.root.ext.inbox {
        let slot = Id::from_bytes(inbox.slot_id);
        targets.push(("consent inbox".into(), slot, None));
        // The card blob a published name points at (pinned when published; an
        // unpublished card is not pinned and its unpin is skipped).
        if let Ok(json) = crate::card_of(vault, inbox).to_json() {
            blocks.push(Id::of_content(json.as_bytes()));
        }
        let mut replies: Vec<[u8; 32]> = state
            .root
            .ext
            .requests
            .iter()
            .map(|r| r.reply_slot)
            .collect();
        // Pending requests: their reply slots are inside the sealed requests.
        match letter::posted(&vault.net, slot, "the inbox").await {
            Ok(posted) => {
                for (address, _) in posted.unwrap_or_default() {
                    let decided = state
                        .root
                        .ext
                        .requests
                        .iter()
                        .any(|r| r.address == *address.as_bytes());
                    if decided || *address.as_bytes() == inbox.start {
                        continue;
                    }
                    if let Ok((request, _)) = crate::open_request_at(vault, inbox, address).await {
                        replies.push(request.reply_slot);
                    }
                }
            }
            Err(e) => notes.push(format!("pending requests not read: {e}")),
        }
        replies.sort_unstable();
        replies.dedup();
        for reply in replies {
            targets.push((
                "reply slot of a request".into(),
                Id::from_bytes(reply),
                None,
            ));
        }
    }
    match crate::emergency::removal_targets(&vault.net, vault.policy_keys_of(state)).await {
        Ok((slots, policy_blocks)) => {
            blocks.extend(policy_blocks);
            targets.extend(
                slots
                    .into_iter()
                    .map(|(what, slot, signer)| (what, slot, Some(signer))),
            );
        }
        Err(e) => notes.push(format!("emergency policy not read: {e}")),
    }
    match vault.keyring_slot() {
        Ok((signer, slot)) => match slotmove::held(&vault.net, slot, "device keyring").await {
            Ok(held) if held.is_empty() => {}
            Ok(held) => {
                blocks.extend(held);
                targets.push(("device keyring".into(), slot, Some(signer)));
            }
            Err(e) => notes.push(format!("device keyring not read: {e}")),
        },
        Err(e) => notes.push(format!("device keyring: {e}")),
    }
    for (what, slot, signer) in targets {
        if let Err(e) = slotmove::tombstone(&vault.net, slot, signer.as_ref(), &what).await {
            notes.push(format!("{what} not tombstoned: {e}"));
        }
    }
    blocks.sort_unstable_by_key(|b| *b.as_bytes());
    blocks.dedup();
    blocks
}
