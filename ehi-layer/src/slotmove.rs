//! Small helpers for the ed25519 slots that the emergency policy ([`crate::emergency`])
//! and device pairing ([`crate::device`]) keep beside the vault: derive a slot key from a
//! seed, point a slot at a blob (registering it the first time), and compare-and-swap.

use invariant_spec::Id;
use invariant_spec::slots::{Rejection, SlotSigner};

use crate::error::{EhiError, Result};
use crate::network::Network;

/// The signer and slot id of the ed25519 seed `seed`.
pub(crate) fn slot_of(seed: &[u8; 32]) -> Result<(SlotSigner, Id)> {
    let signer = SlotSigner::ed25519_from_seed(seed);
    let slot = signer
        .ed25519_slot()
        .ok_or_else(|| EhiError::Crypto("slot key".into()))?;
    Ok((signer, slot))
}

/// Points `slot` at `target` whatever it points at now (registering it if unknown).
pub(crate) async fn point(
    net: &Network,
    signer: &SlotSigner,
    slot: Id,
    target: Id,
    what: &str,
) -> Result<()> {
    for _ in 0..8 {
        let current = net
            .slots()
            .get(&slot)
            .await
            .map_err(|e| EhiError::network(format!("reading the {what} slot"), e))?;
        let result = match current {
            None => net
                .slots()
                .register(&signer.register_request(slot, target))
                .await
                .map(|_| ()),
            Some(current) if current.address == target => return Ok(()),
            Some(current) => {
                net.slots()
                    .update_signed(&slot, signer, &current.address, &target)
                    .await
            }
        };
        match result {
            Ok(()) => {}
            Err(e) if Rejection::of(&e) == Some(Rejection::Conflict) => {}
            Err(e) => return Err(EhiError::network(format!("moving the {what} slot"), e)),
        }
    }
    Err(EhiError::Contention { attempts: 8 })
}

/// Moves `slot` from `from` to `to`. `Ok(false)` when it no longer points at `from`.
pub(crate) async fn swap(
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
pub(crate) async fn read(net: &Network, slot: Id, what: &str) -> Result<Option<Id>> {
    net.slots()
        .get(&slot)
        .await
        .map(|s| s.map(|s| s.address))
        .map_err(|e| EhiError::network(format!("reading the {what} slot"), e))
}
