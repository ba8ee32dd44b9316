//! Consent requests, contributions, apps' audit reports and rollback detection, against
//! a real local network: request → approve → the app reads; deny → it cannot
//! and learns it; tampered and forged requests refused; contribution → accept → in the
//! vault with a Provenance; reject → not; a read-only grant cannot contribute; app
//! audit chains merged ("last use"); a rolled-back vault slot is refused.

mod common;

use common::{PASSPHRASE, TestNet, input};
use ehi_layer::consent::{self, ConsentAsk, Decision, InboxCard, RequestPayload};
use ehi_layer::grant::GrantRequest;
use ehi_layer::share;
use ehi_layer::{Access, AppKeystore, AppSession, EhiError, Network, Scope, Vault};
use serde_json::{Value, json};

const DAY_MS: u64 = 86_400_000;

async fn setup() -> anyhow::Result<(TestNet, tempfile::TempDir, Vault, std::path::PathBuf)> {
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (_keystore, path, vault) = net.new_patient_vault(&dir.path().join("device")).await?;
    Ok((net, dir, vault, path))
}

async fn app_net(net: &TestNet, card: &InboxCard) -> anyhow::Result<Network> {
    Ok(Network::connect(&net.broker_url, Some(card.slots_server)).await?)
}

fn ask(scopes: &[Scope], access: Access, purpose: &str, note: &str) -> ConsentAsk {
    ConsentAsk {
        scopes: scopes.to_vec(),
        access,
        purpose: purpose.into(),
        duration_ms: 30 * DAY_MS,
        note: note.into(),
    }
}

async fn consent_of(vault: &Vault, id: &str) -> anyhow::Result<Value> {
    Ok(vault.read("Consent", id).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_approved_then_the_app_reads() -> anyhow::Result<()> {
    let (net, _dir, vault, _) = setup().await?;
    // Before an inbox exists the list is empty.
    assert!(share::requests(&vault).await?.pending.is_empty());
    let card = share::inbox_card(&vault).await?;
    // The card travels as JSON and verifies; a swapped HPKE key does not.
    let card = InboxCard::parse(card.to_json()?.as_bytes())?;
    assert_eq!(card.patient, vault.slot());
    let mut swapped = card.clone();
    swapped.hpke_key = hex::encode([7u8; 32]);
    assert!(swapped.verify().is_err());
    // Asking again gives the same inbox.
    assert_eq!(share::inbox_card(&vault).await?.inbox, card.inbox);

    let app = AppKeystore::generate("CardioClinic")?;
    let anet = app_net(&net, &card).await?;
    let pending = consent::send_request(
        &anet,
        &app,
        &card,
        &ask(
            &[Scope::Medications],
            Access::Read,
            "TREAT",
            "for your visit",
        ),
    )
    .await?;
    assert_eq!(
        consent::poll(&anet, &app, &pending).await?,
        Decision::Pending
    );

    let list = share::requests(&vault).await?;
    assert!(list.unreadable.is_empty(), "{:?}", list.unreadable);
    assert_eq!(list.pending.len(), 1);
    let request = &list.pending[0];
    assert_eq!(request.id, pending.id);
    assert_eq!(request.app_name, "CardioClinic");
    assert_eq!(request.scopes, [Scope::Medications]);
    assert_eq!(request.purpose, "TREAT");
    assert_eq!(request.note, "for your visit");
    assert!(request.end_ms > request.start_ms);

    // Bad ids are refused with a message.
    assert!(matches!(
        share::approve_request(&vault, "zz").await,
        Err(EhiError::InvalidArgument(_))
    ));
    assert!(matches!(
        share::approve_request(&vault, "0000000000").await,
        Err(EhiError::NotFound(_))
    ));

    let outcome = share::approve_request(&vault, &pending.id[..12]).await?;
    let (info, _) = outcome
        .grant
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no grant"))?;
    assert_eq!(info.app_name, "CardioClinic");
    assert_eq!(info.scopes, [Scope::Medications]);
    assert_eq!(info.purpose, "TREAT");
    assert!(share::requests(&vault).await?.pending.is_empty());
    assert!(matches!(
        share::approve_request(&vault, &pending.id).await,
        Err(EhiError::InvalidArgument(m)) if m.contains("already approved")
    ));

    // The app learns the decision from its reply slot and reads with the grant.
    let Decision::Approved { ticket, consent_id } = consent::poll(&anet, &app, &pending).await?
    else {
        anyhow::bail!("the app did not learn the approval");
    };
    assert_eq!(consent_id, outcome.consent_id);
    assert_eq!(ticket.grant, info.id);
    let mut session = AppSession::open(anet.clone(), &app, &ticket).await?;
    assert!(session.search("MedicationRequest", "").await?.total >= 1);
    assert!(matches!(
        session.search("Observation", "").await,
        Err(EhiError::NotGranted(_))
    ));

    // The decision is a valid R4 Consent in the vault.
    let consent = consent_of(&vault, &outcome.consent_id).await?;
    assert_eq!(consent["resourceType"], "Consent");
    assert_eq!(consent["status"], "active");
    assert_eq!(consent["scope"]["coding"][0]["code"], "patient-privacy");
    assert_eq!(consent["category"][0]["coding"][0]["code"], "59284-0");
    assert!(
        consent["patient"]["reference"]
            .as_str()
            .is_some_and(|r| r.starts_with("Patient/"))
    );
    assert!(consent["dateTime"].is_string());
    assert_eq!(consent["policyRule"]["coding"][0]["code"], "OPTIN");
    assert_eq!(consent["provision"]["type"], "permit");
    assert_eq!(consent["provision"]["purpose"][0]["code"], "TREAT");
    assert_eq!(
        consent["provision"]["actor"][0]["reference"]["display"],
        "CardioClinic"
    );
    assert!(consent["provision"]["period"]["end"].is_string());
    assert!(
        consent["provision"]["class"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["code"] == "MedicationRequest"))
    );
    // The decision posted to the app counts among the vault's blocks (unpinned at
    // removal).
    let blocks = vault.blocks().await;
    let reply = invariant_spec::SlotsClient::new(
        &invariant_spec::BrokerClient::new(&net.broker_url)?
            .resolve(&card.slots_server)
            .await?
            .ok_or_else(|| anyhow::anyhow!("slots server"))?,
    )?
    .get(&pending.reply_slot)
    .await?
    .ok_or_else(|| anyhow::anyhow!("reply slot"))?;
    assert!(blocks.contains(&reply.address));
    // Logged, and the log verifies.
    let actions: Vec<String> = vault
        .audit_entries()
        .await?
        .iter()
        .filter_map(|e| e.action())
        .collect();
    assert!(actions.contains(&"consent".to_string()), "{actions:?}");
    assert!(actions.contains(&"grant".to_string()), "{actions:?}");
    vault.audit_verify().await?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_denied_the_app_learns_it_and_gets_nothing() -> anyhow::Result<()> {
    let (net, _dir, vault, _) = setup().await?;
    let card = share::inbox_card(&vault).await?;
    let app = AppKeystore::generate("AdBroker")?;
    let anet = app_net(&net, &card).await?;
    let pending = consent::send_request(
        &anet,
        &app,
        &card,
        &ask(&[Scope::Clinical], Access::Read, "HMARKT", "ads"),
    )
    .await?;
    let outcome = share::deny_request(&vault, &pending.id, "no thanks").await?;
    assert!(outcome.grant.is_none());
    assert!(share::grants(&vault).await.is_empty());
    let decision = consent::poll(&anet, &app, &pending).await?;
    assert_eq!(
        decision,
        Decision::Denied {
            consent_id: outcome.consent_id.clone(),
            note: "no thanks".into()
        }
    );
    let consent = consent_of(&vault, &outcome.consent_id).await?;
    assert_eq!(consent["status"], "rejected");
    assert_eq!(consent["provision"]["type"], "deny");
    assert_eq!(consent["provision"]["purpose"][0]["code"], "HMARKT");
    assert!(share::requests(&vault).await?.pending.is_empty());
    assert!(matches!(
        share::approve_request(&vault, &pending.id).await,
        Err(EhiError::InvalidArgument(m)) if m.contains("already denied")
    ));
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampered_and_forged_requests_are_refused() -> anyhow::Result<()> {
    let (net, _dir, vault, _) = setup().await?;
    let card = share::inbox_card(&vault).await?;
    let app = AppKeystore::generate("Honest")?;
    let thief = AppKeystore::generate("Thief")?;
    let anet = app_net(&net, &card).await?;
    let request = |a: &AppKeystore| -> anyhow::Result<RequestPayload> {
        Ok(RequestPayload::new(
            a,
            &ask(&[Scope::Allergies], Access::Read, "TREAT", ""),
            ehi_layer::vault::tombstone_address(),
        )?)
    };

    // One flipped byte in transit.
    let mut flipped = consent::seal_request(&app, &card, &request(&app)?)?;
    flipped[200] ^= 0x01;
    let flipped = consent::post_sealed_request(&anet, &card, flipped).await?;
    // The honest app's card, signed by another key.
    let forged = consent::seal_request(&thief, &card, &request(&app)?)?;
    let forged = consent::post_sealed_request(&anet, &card, forged).await?;
    // A request whose card lies about the name (its card signature breaks).
    let mut renamed = request(&app)?;
    renamed.card.name = "Trusted Hospital".into();
    let renamed = consent::seal_request(&app, &card, &renamed)?;
    let renamed = consent::post_sealed_request(&anet, &card, renamed).await?;
    // Garbage.
    let junk = consent::post_sealed_request(&anet, &card, b"EHQ\x01junk".to_vec()).await?;

    let list = share::requests(&vault).await?;
    assert!(list.pending.is_empty(), "{:?}", list.pending);
    let reason = |address: &invariant_spec::Id| {
        let id = consent::request_id(address);
        list.unreadable
            .iter()
            .find(|u| u.id == id)
            .map(|u| u.reason.clone())
            .unwrap_or_default()
    };
    assert!(
        reason(&flipped).contains("does not open"),
        "{}",
        reason(&flipped)
    );
    assert!(
        reason(&forged).contains("signature does not verify"),
        "{}",
        reason(&forged)
    );
    assert!(
        reason(&renamed).contains("app card"),
        "{}",
        reason(&renamed)
    );
    assert!(!reason(&junk).is_empty());
    // Approving one gives the same clear error, and grants nothing.
    let err = share::approve_request(&vault, &consent::request_id(&forged))
        .await
        .expect_err("forged request approved");
    assert!(matches!(err, EhiError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );
    let err = share::approve_request(&vault, &consent::request_id(&flipped))
        .await
        .expect_err("tampered request approved");
    assert!(err.to_string().contains("does not open"), "{err}");
    assert!(share::grants(&vault).await.is_empty());
    // Invalid asks are refused on the app's side already.
    assert!(
        RequestPayload::new(
            &app,
            &ask(&[Scope::Allergies], Access::Read, "FUN", ""),
            card.inbox
        )
        .is_err()
    );
    net.stop().await;
    Ok(())
}

fn medication(id: &str, code: &str) -> Value {
    json!({"resourceType": "MedicationRequest", "id": id, "status": "active", "intent": "order",
           "medicationCodeableConcept": {"coding": [{
               "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}]},
           "subject": {"reference": "Patient/0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b"}})
}

async fn grant(
    vault: &Vault,
    app: &AppKeystore,
    access: Access,
) -> anyhow::Result<ehi_layer::GrantTicket> {
    let (info, ticket) = share::grant(
        vault,
        GrantRequest {
            app: app.card().verify()?,
            scopes: vec![Scope::Medications],
            access,
            duration_ms: DAY_MS,
            purpose: "TREAT".into(),
        },
    )
    .await?;
    share::publish_channel(vault, &info.id).await?;
    Ok(ticket)
}

async fn session(
    net: &TestNet,
    app: &AppKeystore,
    ticket: &ehi_layer::GrantTicket,
) -> anyhow::Result<AppSession> {
    let network = Network::connect(&net.broker_url, Some(ticket.slots_server)).await?;
    Ok(AppSession::open(network, app, ticket).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contribution_accepted_with_provenance_rejected_not() -> anyhow::Result<()> {
    let (net, _dir, vault, _) = setup().await?;
    let app = AppKeystore::generate("Pharmacy Writer")?;
    let ticket = grant(&vault, &app, Access::Contribute).await?;
    let s = session(&net, &app, &ticket).await?;

    let (id, refs) = s
        .contribute(&app, vec![medication("contributed-1", "197361")], "refill")
        .await?;
    assert_eq!(refs, ["MedicationRequest/contributed-1"]);
    // Nothing is in the vault before the patient accepts.
    assert!(matches!(
        vault.read("MedicationRequest", "contributed-1").await,
        Err(EhiError::NotFound(_))
    ));
    let inbox = share::contributions(&vault).await?;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].id, id);
    assert_eq!(inbox[0].app_name, "Pharmacy Writer");
    assert_eq!(inbox[0].resources, refs);
    assert_eq!(inbox[0].note, "refill");
    assert_eq!(inbox[0].refused, None);

    share::accept_contribution(&vault, &id).await?;
    let stored = vault.read("MedicationRequest", "contributed-1").await?;
    assert_eq!(
        stored["medicationCodeableConcept"]["coding"][0]["code"],
        "197361"
    );
    let provenance = vault
        .read("Provenance", &format!("contribution-{id}"))
        .await?;
    assert_eq!(
        provenance["target"][0]["reference"],
        "MedicationRequest/contributed-1"
    );
    assert!(provenance["recorded"].is_string());
    assert_eq!(
        provenance["agent"][0]["type"]["coding"][0]["code"],
        "author"
    );
    assert_eq!(provenance["agent"][0]["who"]["display"], "Pharmacy Writer");
    assert_eq!(
        provenance["agent"][0]["who"]["identifier"]["value"],
        app.card().signing_key
    );
    assert!(provenance["signature"][0]["data"].is_string());
    assert!(share::contributions(&vault).await?.is_empty());
    assert!(share::accept_contribution(&vault, &id).await.is_err());

    // A second one, rejected: never imported.
    let (id2, _) = s
        .contribute(&app, vec![medication("contributed-2", "1")], "")
        .await?;
    share::reject_contribution(&vault, &id2).await?;
    assert!(matches!(
        vault.read("MedicationRequest", "contributed-2").await,
        Err(EhiError::NotFound(_))
    ));
    assert!(share::contributions(&vault).await?.is_empty());
    // An update of an existing resource becomes a new version once accepted.
    let (id3, _) = s
        .contribute(
            &app,
            vec![medication("contributed-1", "999")],
            "dose change",
        )
        .await?;
    share::accept_contribution(&vault, &id3).await?;
    let history = vault.history("MedicationRequest", "contributed-1").await?;
    assert_eq!(history.len(), 2);
    let actions: Vec<String> = vault
        .audit_entries()
        .await?
        .iter()
        .filter_map(|e| e.action())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "contribution").count(),
        3,
        "{actions:?}"
    );
    vault.audit_verify().await?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_and_out_of_scope_contributions_are_refused() -> anyhow::Result<()> {
    let (net, _dir, vault, _) = setup().await?;
    let reader = AppKeystore::generate("Reader")?;
    let ticket = grant(&vault, &reader, Access::Read).await?;
    let s = session(&net, &reader, &ticket).await?;
    // The library refuses...
    assert!(matches!(
        s.contribute(&reader, vec![medication("ro-1", "1")], "")
            .await,
        Err(EhiError::NotGranted(_))
    ));
    // ...and an app that skips the library's check is refused by the patient's device.
    let (id, _) = s
        .contribute_unchecked(&reader, vec![medication("ro-1", "1")], "")
        .await?;
    let inbox = share::contributions(&vault).await?;
    let refused = inbox
        .iter()
        .find(|c| c.id == id)
        .and_then(|c| c.refused.clone());
    assert!(
        refused.as_deref().is_some_and(|r| r.contains("read-only")),
        "{inbox:?}"
    );
    let err = share::accept_contribution(&vault, &id)
        .await
        .expect_err("accepted");
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(vault.read("MedicationRequest", "ro-1").await.is_err());

    // A contribute grant for medications cannot slip in an Observation.
    let writer = AppKeystore::generate("Writer")?;
    let ticket = grant(&vault, &writer, Access::Contribute).await?;
    let w = session(&net, &writer, &ticket).await?;
    let observation = json!({"resourceType": "Observation", "id": "sneaky", "status": "final",
                             "code": {"text": "x"}});
    let (id, _) = w.contribute(&writer, vec![observation], "").await?;
    let err = share::accept_contribution(&vault, &id)
        .await
        .expect_err("accepted");
    assert!(err.to_string().contains("does not cover"), "{err}");
    assert!(vault.read("Observation", "sneaky").await.is_err());
    // Rejecting a refused contribution clears it.
    share::reject_contribution(&vault, &id).await?;
    assert!(
        share::contributions(&vault)
            .await?
            .iter()
            .all(|c| c.id != id)
    );
    // A contribution signed by another key (a thief who learned the channel), and one
    // with a byte flipped on the way: listed as refused with the reason, never imported.
    let thief = AppKeystore::generate("Thief")?;
    let forged = w
        .post_forged_contribution(&writer, &thief, vec![medication("forged", "1")], None)
        .await?;
    let flipped = w
        .post_forged_contribution(
            &writer,
            &writer,
            vec![medication("flipped", "1")],
            Some(300),
        )
        .await?;
    let inbox = share::contributions(&vault).await?;
    let reason = |id: &str| {
        inbox
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| c.refused.clone())
            .unwrap_or_default()
    };
    assert!(
        reason(&forged).contains("signature does not verify"),
        "{inbox:?}"
    );
    assert!(reason(&flipped).contains("does not open"), "{inbox:?}");
    let err = share::accept_contribution(&vault, &forged)
        .await
        .expect_err("forged accepted");
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );
    let err = share::accept_contribution(&vault, &flipped)
        .await
        .expect_err("tampered accepted");
    assert!(err.to_string().contains("does not open"), "{err}");
    assert!(vault.read("MedicationRequest", "forged").await.is_err());
    assert!(vault.read("MedicationRequest", "flipped").await.is_err());
    // After revocation the grant's channel is no longer read.
    let (id, _) = w
        .contribute(&writer, vec![medication("late", "1")], "")
        .await?;
    share::revoke(&vault, &ticket.grant, false).await?;
    assert!(
        share::contributions(&vault)
            .await?
            .iter()
            .all(|c| c.id != id)
    );
    // Its channel was moved to the tombstone at revocation.
    let grant_id: [u8; 16] = hex::decode(&ticket.grant)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("grant id"))?;
    let channel = ehi_layer::contribution::channel_slot(&vault.slot(), &grant_id);
    let slots = common::slots_client(&net).await?;
    assert_eq!(
        slots.get(&channel).await?.map(|s| s.address),
        Some(ehi_layer::tombstone_address())
    );
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_audit_chains_are_merged_and_give_last_use() -> anyhow::Result<()> {
    let (net, _dir, vault, _) = setup().await?;
    let app = AppKeystore::generate("Reporting App")?;
    let ticket = grant(&vault, &app, Access::Read).await?;
    assert_eq!(share::grants(&vault).await[0].last_use_ms, None);
    let s = session(&net, &app, &ticket).await?;
    let first = s
        .report_use(&app, "read", &["MedicationRequest/a".to_string()])
        .await?;
    assert_eq!(first.seq, 0);
    // A new session continues the same chain (the tail comes from the channel).
    let s2 = session(&net, &app, &ticket).await?;
    let second = s2
        .report_use(
            &app,
            "search",
            &["MedicationRequest?status=active".to_string()],
        )
        .await?;
    assert_eq!(second.seq, 1);
    assert_eq!(second.prev_hash, first.hash());

    let report = share::merge_app_audit(&vault).await?;
    assert_eq!(report.merged, 2, "{report:?}");
    assert!(report.broken.is_empty());
    let grants = share::grants(&vault).await;
    assert!(grants[0].last_use_ms.is_some_and(|t| t > 0));
    let entries = vault.audit_entries().await?;
    let merged: Vec<_> = entries
        .iter()
        .filter(|e| e.action().as_deref() == Some("app-read"))
        .collect();
    assert_eq!(merged.len(), 1);
    assert!(merged[0].event.contains("Reporting App"));
    assert!(merged[0].event.contains("MedicationRequest/a"));
    assert!(merged[0].event.contains(&hex::encode(second.hash())));
    vault.audit_verify().await?;
    // Nothing new: nothing merged; a third report continues.
    assert_eq!(share::merge_app_audit(&vault).await?.merged, 0);
    let third = s
        .report_use(&app, "read", &["MedicationRequest/b".into()])
        .await?;
    assert_eq!(third.seq, 2);
    assert_eq!(share::merge_app_audit(&vault).await?.merged, 1);
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_vault_slot_is_refused() -> anyhow::Result<()> {
    let (net, dir, vault, keystore_path) = setup().await?;
    let seen = dir.path().join("seen.generation");
    let first = vault.check_rollback(&seen).await?;
    vault
        .import(vec![input(
            "m.json",
            &json!({"resourceType": "Bundle", "type": "collection",
                    "entry": [{"resource": medication("newer", "5")}]}),
        )])
        .await?;
    let second = vault.check_rollback(&seen).await?;
    assert!(second > first);

    // A server (here: anyone with the slot's key, to stage it) points the vault slot
    // back at the previous root.
    let keystore = ehi_layer::Keystore::open(&keystore_path, PASSPHRASE)?;
    let broker = invariant_spec::BrokerClient::new(&net.broker_url)?;
    let url = broker
        .resolve(&keystore.slots_server())
        .await?
        .ok_or_else(|| anyhow::anyhow!("slots server"))?;
    let slots = invariant_spec::SlotsClient::new(&url)?;
    let history = slots
        .history_all(&vault.slot())
        .await?
        .ok_or_else(|| anyhow::anyhow!("history"))?;
    let (current, older) = (history[0].address, history[1].address);
    slots
        .update_signed(&vault.slot(), &keystore.signer(), &current, &older)
        .await?;

    // The handle that saw the newer root refuses the older one by itself.
    assert!(matches!(
        vault.refresh().await,
        Err(EhiError::Rollback { seen, found, .. }) if seen == second && found < second
    ));
    let other = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await?;
    let err = other
        .check_rollback(&seen)
        .await
        .expect_err("rollback accepted");
    assert!(
        matches!(err, EhiError::Rollback { seen: s, found, .. } if s == second && found < second),
        "{err}"
    );
    assert!(err.to_string().contains("rollback"), "{err}");
    // A device without the record cannot tell (documented limit).
    assert!(
        other
            .check_rollback(&dir.path().join("fresh.generation"))
            .await
            .is_ok()
    );
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_finds_the_inbox_by_name() -> anyhow::Result<()> {
    let mut net = TestNet::start(2, false).await?;
    net.start_names().await?;
    let dir = tempfile::tempdir()?;
    let (_keystore, _path, vault) = net.new_vault(&dir.path().join("device")).await?;
    let (card, name) = share::publish_inbox_name(&vault, "zq-inbox-7").await?;
    assert_eq!(name, "zq-inbox-7.local");
    // Publishing again is fine; a bad name is refused with the reason.
    share::publish_inbox_name(&vault, "zq-inbox-7").await?;
    assert!(matches!(
        share::publish_inbox_name(&vault, "not a name!").await,
        Err(EhiError::InvalidArgument(m)) if m.contains("inbox name")
    ));
    // Another patient cannot take the name over.
    let other_dir = tempfile::tempdir()?;
    let (_k, _p, other) = net.new_vault(other_dir.path()).await?;
    assert!(matches!(
        share::publish_inbox_name(&other, "zq-inbox-7").await,
        Err(EhiError::InvalidArgument(m)) if m.contains("taken")
    ));

    let anet = Network::connect(&net.broker_url, None).await?;
    let found = consent::find_inbox(&anet, "ZQ-inbox-7").await?;
    assert_eq!(found, card);
    assert!(matches!(
        consent::find_inbox(&anet, "nobody-here").await,
        Err(EhiError::NotFound(_))
    ));
    let app = AppKeystore::generate("ByName")?;
    let anet = app_net(&net, &found).await?;
    let pending = consent::send_request(
        &anet,
        &app,
        &found,
        &ask(&[Scope::Immunizations], Access::Read, "PUBHLTH", ""),
    )
    .await?;
    assert_eq!(share::requests(&vault).await?.pending[0].id, pending.id);
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approving_again_after_a_crash_makes_no_second_grant() -> anyhow::Result<()> {
    use ehi_layer::share::ApproveStep;
    let (net, _dir, vault, _) = setup().await?;
    let card = share::inbox_card(&vault).await?;
    let app = AppKeystore::generate("CardioClinic")?;
    let anet = app_net(&net, &card).await?;
    let asked = ask(&[Scope::Medications], Access::Read, "TREAT", "");
    let grant_entries = |entries: &[ehi_layer::audit::AuditEntry]| {
        entries
            .iter()
            .filter(|e| e.action().as_deref() == Some("grant"))
            .count()
    };

    // Crash after the grant, after the Consent import, after the record: each time the
    // second approval completes what is missing and reuses the grant.
    for (n, step) in [
        ApproveStep::Grant,
        ApproveStep::Consent,
        ApproveStep::Record,
    ]
    .into_iter()
    .enumerate()
    {
        let pending = consent::send_request(&anet, &app, &card, &asked).await?;
        let first = share::approve_request_until(&vault, &pending.id, step).await?;
        let (first_grant, _) = first.grant.clone().expect("a grant");
        assert_eq!(share::grants(&vault).await.len(), n + 1, "{step:?}");
        assert_eq!(
            consent::poll(&anet, &app, &pending).await?,
            Decision::Pending,
            "{step:?}: the app learns nothing yet"
        );
        if step == ApproveStep::Record {
            // Recorded as decided: approving again is refused, but the decision that
            // was never posted is delivered.
            assert!(share::requests(&vault).await?.pending.is_empty());
            let err = share::approve_request(&vault, &pending.id)
                .await
                .expect_err("decided twice");
            assert!(err.to_string().contains("already approved"), "{err}");
        } else {
            assert_eq!(share::requests(&vault).await?.pending.len(), 1, "{step:?}");
            let second = share::approve_request(&vault, &pending.id).await?;
            let (second_grant, _) = second.grant.expect("a grant");
            assert_eq!(second_grant.id, first_grant.id, "{step:?}");
        }
        // Exactly one grant for this request, one Consent version, one grant entry.
        let grants = share::grants(&vault).await;
        assert_eq!(grants.len(), n + 1, "{step:?}: {grants:?}");
        assert_eq!(grants.iter().filter(|g| g.id == first_grant.id).count(), 1);
        assert_eq!(
            vault.history("Consent", &first.consent_id).await?.len(),
            1,
            "{step:?}"
        );
        assert_eq!(
            consent_of(&vault, &first.consent_id).await?["status"],
            "active"
        );
        assert_eq!(grant_entries(&vault.audit_entries().await?), n + 1);
        // The app learns the approval and reads with that grant.
        let Decision::Approved { ticket, .. } = consent::poll(&anet, &app, &pending).await? else {
            anyhow::bail!("{step:?}: the app did not learn the approval");
        };
        assert_eq!(ticket.grant, first_grant.id);
        let mut session = AppSession::open(anet.clone(), &app, &ticket).await?;
        assert!(session.search("MedicationRequest", "").await?.total >= 1);
        assert!(share::requests(&vault).await?.pending.is_empty());
    }

    // An approval interrupted after its grant, then denied: the grant is revoked and
    // the app learns the refusal.
    let pending = consent::send_request(&anet, &app, &card, &asked).await?;
    let first = share::approve_request_until(&vault, &pending.id, ApproveStep::Grant).await?;
    let (grant, ticket) = first.grant.expect("a grant");
    assert_eq!(share::grants(&vault).await.len(), 4);
    share::deny_request(&vault, &pending.id, "changed my mind").await?;
    assert!(share::grants(&vault).await.iter().all(|g| g.id != grant.id));
    assert!(AppSession::open(anet.clone(), &app, &ticket).await.is_err());
    assert!(matches!(
        consent::poll(&anet, &app, &pending).await?,
        Decision::Denied { .. }
    ));
    assert_eq!(
        consent_of(&vault, &first.consent_id).await?["status"],
        "rejected"
    );

    // An approval interrupted after the channel, whose grant is then revoked: approving
    // again is refused (the derived grant id and its channel are spent); denying works.
    let pending = consent::send_request(&anet, &app, &card, &asked).await?;
    let first = share::approve_request_until(&vault, &pending.id, ApproveStep::Channel).await?;
    let (grant, _) = first.grant.expect("a grant");
    share::revoke(&vault, &grant.id, false).await?;
    let err = share::approve_request(&vault, &pending.id)
        .await
        .expect_err("approved with a spent grant id");
    assert!(
        matches!(err, EhiError::InvalidArgument(ref m) if m.contains("revoked")),
        "{err}"
    );
    assert!(share::grants(&vault).await.iter().all(|g| g.id != grant.id));
    share::deny_request(&vault, &pending.id, "").await?;
    assert!(matches!(
        consent::poll(&anet, &app, &pending).await?,
        Decision::Denied { .. }
    ));
    net.stop().await;
    Ok(())
}
