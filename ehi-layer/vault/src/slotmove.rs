//! Small helpers for the ed25519 slots that the emergency policy (`ehi_share::emergency`)
//! and device pairing (`ehi_share::device`) keep beside the vault: derive a slot key from a
//! seed, point a slot at a blob (registering it the first time), and compare-and-swap;
//! and, for every slot of the vault (open slots too), moving it to the public tombstone
//! and listing what it held (removal, revocation).

use invariant_spec::Id;
use invariant_spec::slots::{Rejection, SlotSigner, UpdateRequest};

use crate::error::{EhiError, Result};
use crate::network::Network;

/// The bytes of the tombstone blob a removed vault's slots point at (public, the same
/// for every vault).
pub const TOMBSTONE: &[u8] = b"ehi-layer: this vault was removed\n";

/// The address of [`TOMBSTONE`].
pub fn tombstone_address() -> Id {
    Id::of_content(TOMBSTONE)
}

/// The signer and slot id of the ed25519 seed `seed`.
pub fn slot_of(seed: &[u8; 32]) -> Result<(SlotSigner, Id)> {
    let signer = SlotSigner::ed25519_from_seed(seed);
    let slot = signer
        .ed25519_slot()
        .ok_or_else(|| EhiError::Crypto("slot key".into()))?;
    Ok((signer, slot))
}

/// Compare-and-swap attempts before [`point`] and [`append`] give up.
const MOVE_ATTEMPTS: u32 = 32;

/// Points `slot` at `target` whatever it points at now (registering it if unknown).
pub async fn point(
    net: &Network,
    signer: &SlotSigner,
    slot: Id,
    target: Id,
    what: &str,
) -> Result<()> {
    move_to(net, Some(signer), slot, target, Unknown::Register, what).await
}

/// Points the open (unsigned) slot `slot` at `target` whatever it points at now; the
/// slot must exist (an open slot is registered by whoever hands it out).
pub async fn append(net: &Network, slot: Id, target: Id, what: &str) -> Result<()> {
    move_to(net, None, slot, target, Unknown::Refuse, what).await
}

/// What [`move_to`] does with a slot the server does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unknown {
    /// Register it at the target (needs a signer).
    Register,
    /// Nothing: done.
    Skip,
    /// [`EhiError::NotFound`].
    Refuse,
}

/// Moves `slot` to `target` from whatever it holds: a compare-and-swap (signed by
/// `signer`, or unsigned for an open slot) retried with back-off while other writers
/// move it meanwhile; an unknown slot is handled as `unknown` says. The one
/// compare-and-swap loop of the vault's side slots.
async fn move_to(
    net: &Network,
    signer: Option<&SlotSigner>,
    slot: Id,
    target: Id,
    unknown: Unknown,
    what: &str,
) -> Result<()> {
    for attempt in 0..MOVE_ATTEMPTS {
        let current = net
            .slots()
            .get(&slot)
            .await
            .map_err(|e| EhiError::network(format!("reading the {what} slot"), e))?;
        let result = match (current, signer) {
            (Some(current), _) if current.address == target => return Ok(()),
            (None, Some(signer)) if unknown == Unknown::Register => net
                .slots()
                .register(&signer.register_request(slot, target))
                .await
                .map(|_| ()),
            (None, _) if unknown == Unknown::Skip => return Ok(()),
            (None, _) => return Err(EhiError::NotFound(format!("{what} (slot {slot})"))),
            (Some(current), Some(signer)) => {
                net.slots()
                    .update_signed(&slot, signer, &current.address, &target)
                    .await
            }
            (Some(current), None) => {
                net.slots()
                    .update(&slot, &UpdateRequest::unsigned(current.address, target))
                    .await
            }
        };
        match result {
            Ok(()) => {}
            Err(e) if Rejection::of(&e) == Some(Rejection::Conflict) => {
                crate::time::backoff(attempt).await;
            }
            Err(e) => return Err(EhiError::network(format!("moving the {what} slot"), e)),
        }
    }
    Err(EhiError::Contention {
        attempts: MOVE_ATTEMPTS,
    })
}

/// Moves `slot` from `from` to `to`. `Ok(false)` when it no longer points at `from`.
pub async fn swap(
    net: &Network,
    signer: &SlotSigner,
    slot: Id,
    from: Id,
    to: Id,
    what: &str,
) -> Result<bool> {
    match net.slots().update_signed(&slot, signer, &from, &to).await {
        Ok(()) => Ok(true),
        Err(e) if Rejection::of(&e) == Some(Rejection::Conflict) => Ok(false),
        Err(e) => Err(EhiError::network(format!("moving the {what} slot"), e)),
    }
}

/// Where `slot` points, `None` when unknown.
pub async fn read(net: &Network, slot: Id, what: &str) -> Result<Option<Id>> {
    net.slots()
        .get(&slot)
        .await
        .map(|s| s.map(|s| s.address))
        .map_err(|e| EhiError::network(format!("reading the {what} slot"), e))
}

/// Stores the public tombstone blob ([`TOMBSTONE`]) so slots may point
/// at it.
pub async fn store_tombstone(net: &Network) -> Result<Id> {
    let blob = crate::seal::Blob {
        address: tombstone_address(),
        bytes: bytes::Bytes::from_static(TOMBSTONE),
    };
    net.put(&blob).await?;
    Ok(blob.address)
}

/// Points `slot` at the public tombstone (stored beforehand, [`store_tombstone`]),
/// whatever it points at now: `signer` signs the update of an ed25519 slot, `None`
/// updates an open (`none` signature) slot. `Ok` when the slot is unknown or already
/// there; retried a few times on conflict. The one "tombstone this slot" loop shared by
/// removal, revocation and the emergency policy.
pub async fn tombstone(
    net: &Network,
    slot: Id,
    signer: Option<&SlotSigner>,
    what: &str,
) -> Result<()> {
    move_to(net, signer, slot, tombstone_address(), Unknown::Skip, what).await
}

/// The whole history of `slot` (empty when the slot is unknown).
async fn history(
    net: &Network,
    slot: Id,
    what: &str,
) -> Result<Vec<invariant_spec::slots::SlotState>> {
    Ok(net
        .slots()
        .history_all(&slot)
        .await
        .map_err(|e| EhiError::network(format!("reading the history of the {what} slot"), e))?
        .unwrap_or_default())
}

/// Every address `slot` ever held (registration first), without the tombstone; empty
/// when the slot is unknown.
pub async fn held(net: &Network, slot: Id, what: &str) -> Result<Vec<Id>> {
    let history = history(net, slot, what).await?;
    let tombstone = tombstone_address();
    let mut out: Vec<Id> = Vec::new();
    for state in history.into_iter().rev() {
        if state.address != tombstone && !out.contains(&state.address) {
            out.push(state.address);
        }
    }
    Ok(out)
}

/// The address `slot` was registered at (`None` when unknown).
pub async fn registered_at(net: &Network, slot: Id, what: &str) -> Result<Option<Id>> {
    let history = history(net, slot, what).await?;
    Ok(history
        .into_iter()
        .find(|s| s.previous == invariant_spec::slots::Previous::Root)
        .map(|s| s.address))
}
