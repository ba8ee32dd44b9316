//! Vault removal with every sharing feature in place, against a real local
//! network: a consent inbox with a pending and an approved request, a contribute grant
//! with its channel and a contribution, an emergency policy used once by its holder,
//! a second device and the device keyring (after a third device was removed). After
//! `remove`, every slot the patient's devices write points at the public tombstone and
//! the distributor pins nothing the patient's devices pinned — checked on the slots
//! server and the distributor, not on the report.

mod common;

use ehi_layer::share;
use std::collections::BTreeSet;
use std::sync::Arc;

use common::{TestNet, distributor, pair, slots_client};
use ehi_layer::consent::{self, ConsentAsk};
use ehi_layer::device;
use ehi_layer::emergency::{self, EmergencyAccess};
use ehi_layer::{Access, AppKeystore, AppSession, Network, Scope, tombstone_address};
use invariant_spec::slots::Previous;
use invariant_spec::{DistributorClient, Id, SlotsClient};
use serde_json::json;

const DAY_MS: u64 = 86_400_000;

/// Every address a slot held, oldest first: (registration, later ones).
async fn history(slots: &SlotsClient, slot: &Id) -> anyhow::Result<(Id, Vec<Id>)> {
    let all = slots
        .history_all(slot)
        .await?
        .ok_or_else(|| anyhow::anyhow!("slot {slot} unknown"))?;
    let mut registration = None;
    let mut later = Vec::new();
    for state in all.into_iter().rev() {
        if state.previous == Previous::Root {
            registration = Some(state.address);
        } else {
            later.push(state.address);
        }
    }
    Ok((
        registration.ok_or_else(|| anyhow::anyhow!("no registration"))?,
        later,
    ))
}

/// Whether the distributor pins each block.
async fn pinned(d: &DistributorClient, blocks: &[Id]) -> anyhow::Result<Vec<bool>> {
    let mut out = Vec::new();
    for batch in blocks.chunks(500) {
        out.extend(
            d.blocks(batch)
                .await?
                .into_iter()
                .map(|p| !p.storages.is_empty()),
        );
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removal_tombstones_every_slot_and_unpins_every_block_of_the_patient() -> anyhow::Result<()>
{
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, path, vault) = net.new_patient_vault(&dir.path().join("device")).await?;
    let vault = Arc::new(vault);
    let slots = slots_client(&net).await?;
    let d = distributor(&net).await?;

    // Emergency policy, used once by its holder (the log slot gets an entry).
    let holder = AppKeystore::generate("County ER")?;
    let eticket =
        emergency::set_policy(&vault, &keystore, holder.card().verify()?, Vec::new()).await?;
    let holder_net = Network::connect(&net.broker_url, Some(eticket.grant.slots_server)).await?;
    EmergencyAccess::open(holder_net, &holder, &eticket, "unconscious on arrival").await?;
    let (policy_slot0, _) = emergency::policy_location(&vault, &keystore)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no policy"))?;

    // A second device, and a third one removed (so the device keyring exists and the
    // emergency policy moved to root key generation 1).
    let (_second, _) = pair(&net, &vault, &keystore).await?;
    let (_third, third_id) = pair(&net, &vault, &keystore).await?;
    let removal = share::remove_device(&vault, &third_id).await?;
    assert!(removal.emergency_rekeyed);
    let (policy_slot1, _) = emergency::policy_location(&vault, &keystore)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no policy"))?;
    assert_ne!(policy_slot0, policy_slot1);
    let keyring_slot = device::keyring_slot(&keystore)?;

    // The consent inbox: one request approved (a contribute grant with its channel and
    // a contribution waiting), one pending.
    let card = share::inbox_card(&vault).await?;
    let app = AppKeystore::generate("CardioClinic")?;
    let other = AppKeystore::generate("Lab")?;
    let anet = Network::connect(&net.broker_url, Some(card.slots_server)).await?;
    let ask = |access| ConsentAsk {
        scopes: vec![Scope::Medications],
        access,
        purpose: "TREAT".into(),
        duration_ms: 30 * DAY_MS,
        note: "visit".into(),
    };
    let approved = consent::send_request(&anet, &app, &card, &ask(Access::Contribute)).await?;
    let waiting = consent::send_request(&anet, &other, &card, &ask(Access::Read)).await?;
    let outcome = share::approve_request(&vault, &approved.id).await?;
    let (info, ticket) = outcome.grant.ok_or_else(|| anyhow::anyhow!("no grant"))?;
    let session = AppSession::open(anet.clone(), &app, &ticket).await?;
    session
        .contribute(
            &app,
            vec![
                json!({"resourceType": "MedicationRequest", "id": "c1", "status": "active",
                         "intent": "order", "subject": {"reference": "Patient/p1"},
                         "medicationCodeableConcept": {"text": "x"}}),
            ],
            "refill",
        )
        .await?;
    assert_eq!(share::contributions(&vault).await?.len(), 1);
    let grant_id: [u8; 16] = hex::decode(&info.id)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("grant id"))?;
    let channel = ehi_layer::contribution::channel_slot(&vault.slot(), &grant_id);

    // What the patient's devices pinned: the vault's blocks, the channel header, the
    // policy blob(s) and the keyring blob(s); what the apps and the holder pinned: the
    // requests and their reply slots' start blobs, the channel's messages, the log.
    let mut patient: BTreeSet<Id> = vault.blocks().await.into_iter().collect();
    let (header, messages) = history(&slots, &channel).await?;
    patient.insert(header);
    let (first_policy, later_policies) = history(&slots, &policy_slot1).await?;
    patient.insert(first_policy);
    patient.extend(later_policies);
    let (first_keyring, later_keyrings) = history(&slots, &keyring_slot).await?;
    patient.insert(first_keyring);
    patient.extend(later_keyrings);
    let mut apps: BTreeSet<Id> = messages.into_iter().collect();
    let (_, requests) = history(&slots, &card.inbox).await?;
    apps.extend(requests.iter().copied());
    for reply in [approved.reply_slot, waiting.reply_slot] {
        apps.insert(history(&slots, &reply).await?.0);
    }
    let (_, log) = history(&slots, &eticket.log_slot).await?;
    assert_eq!(
        log.len(),
        0,
        "the log slot is registered at its first entry"
    );
    apps.insert(history(&slots, &eticket.log_slot).await?.0);
    assert_eq!(requests.len(), 2);
    assert!(apps.is_disjoint(&patient));
    let patient: Vec<Id> = patient.into_iter().collect();
    let apps: Vec<Id> = apps.into_iter().collect();
    assert!(pinned(&d, &patient).await?.iter().all(|p| *p));
    assert!(pinned(&d, &apps).await?.iter().all(|p| *p));
    assert_eq!(
        d.status().await?.pinned as usize,
        patient.len() + apps.len(),
        "nothing else is pinned before removal"
    );

    let scope_slots: Vec<Id> = vault
        .status()
        .await?
        .scopes
        .iter()
        .map(|s| s.slot)
        .collect();
    let vault = Arc::try_unwrap(vault).map_err(|_| anyhow::anyhow!("vault still shared"))?;
    let report = share::remove(vault, Some(&path)).await?;
    assert!(report.notes.is_empty(), "{:?}", report.notes);

    // Every slot the patient's devices write (or could reach) holds the tombstone.
    let tombstone = tombstone_address();
    let mut every: Vec<(&str, Id)> = vec![
        ("vault", keystore.vault_slot()),
        ("grant", ticket.grant_slot),
        ("emergency grant", eticket.grant.grant_slot),
        ("channel", channel),
        ("inbox", card.inbox),
        ("reply (approved)", approved.reply_slot),
        ("reply (pending)", waiting.reply_slot),
        ("emergency policy, generation 0", policy_slot0),
        ("emergency policy, generation 1", policy_slot1),
        ("emergency log", eticket.log_slot),
        ("device keyring", keyring_slot),
    ];
    every.extend(scope_slots.iter().map(|s| ("scope", *s)));
    for (what, slot) in every {
        assert_eq!(
            slots.get(&slot).await?.map(|s| s.address),
            Some(tombstone),
            "{what} slot {slot}"
        );
    }
    // The distributor pins none of the patient's blocks; the apps' pins stay theirs.
    let still = pinned(&d, &patient).await?;
    let kept: Vec<&Id> = patient
        .iter()
        .zip(&still)
        .filter(|(_, p)| **p)
        .map(|(b, _)| b)
        .collect();
    assert!(kept.is_empty(), "still pinned: {kept:?}");
    assert!(pinned(&d, &apps).await?.iter().all(|p| *p));
    assert_eq!(d.status().await?.pinned as usize, apps.len());
    net.stop().await;
    Ok(())
}
