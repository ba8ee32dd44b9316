//! Devices against a real local network: pairing with an invite code (one-time,
//! short-lived, refused when wrong, expired or reused), two devices kept in sync by
//! watching the vault slot, concurrent writes from both, and removal with key rotation.

mod common;

use ehi_layer::share;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestNet, input, pair};
use ehi_layer::device::{self, Invite};
use ehi_layer::{EhiError, Network, Vault};
use serde_json::{Value, json};

/// The stored bytes of the vault's current root, read from a storage server's disk.
async fn root_bytes(net: &TestNet, vault: &Vault) -> anyhow::Result<Vec<u8>> {
    blob_bytes(net, &vault.status().await?.root)
}

fn observation(id: &str, value: f64) -> Value {
    json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
        "resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b"}, "effectiveDateTime": "2024-01-02",
        "valueQuantity": {"value": value, "unit": "/min"}}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invite_pairing_is_one_time_and_short_lived() -> anyhow::Result<()> {
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    let vault = Arc::new(vault);
    assert_eq!(share::devices(&vault).await.len(), 1);
    assert_eq!(
        share::devices(&vault).await[0].id,
        device::this_device(&keystore)
    );

    let invite = Invite::create(&vault, Duration::from_secs(60)).await?;
    let code = invite.code();
    assert!(code.starts_with("ehi1-"));
    let inviter = {
        let vault = vault.clone();
        let keystore = keystore.clone();
        tokio::spawn(async move { invite.complete(&vault, &keystore).await })
    };
    let joiner_net = Network::connect(&net.broker_url, None).await?;

    // A wrong code (one digit of the secret changed) is refused and disturbs nothing.
    let mut wrong: Vec<char> = code.chars().collect();
    wrong[12] = if wrong[12] == '0' { '1' } else { '0' };
    let wrong: String = wrong.into_iter().collect();
    let err = device::join(&joiner_net, &wrong)
        .await
        .expect_err("wrong code");
    assert!(matches!(err, EhiError::Invite(_)), "{err}");
    assert!(err.to_string().contains("no invitation matches"), "{err}");
    // Garbage.
    assert!(matches!(
        device::join(&joiner_net, "hello").await,
        Err(EhiError::Invite(_))
    ));

    // The right code: the new device gets the patient's keys and its own HPKE key.
    let joined = device::join(&joiner_net, &code).await?;
    let added = inviter.await??;
    assert_eq!(joined.vault_slot(), keystore.vault_slot());
    assert_ne!(joined.hpke_public(), keystore.hpke_public());
    assert_eq!(added.id, device::this_device(&joined));
    let ids: Vec<String> = share::devices(&vault)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&added.id));
    // The joined keystore opens the vault and reads the data.
    let second = Vault::open(net.connect(Some(&joined)).await?, &joined).await?;
    let patients = second.search("Patient", "").await?;
    assert_eq!(patients.total, 1);
    // The join is in the audit log.
    assert!(
        vault
            .audit_entries()
            .await?
            .iter()
            .any(|e| e.action().as_deref() == Some("device") && e.event.contains(&added.id))
    );

    // The same code again: refused (spent).
    let err = device::join(&joiner_net, &code)
        .await
        .expect_err("reused code");
    assert!(matches!(err, EhiError::Invite(_)), "{err}");
    assert!(err.to_string().contains("already used"), "{err}");
    assert_eq!(share::devices(&vault).await.len(), 2);

    // An expired code: refused by the joiner, and the inviter gives up.
    let short = Invite::create(&vault, Duration::from_secs(1)).await?;
    let short_code = short.code();
    let inviter = {
        let vault = vault.clone();
        let keystore = keystore.clone();
        tokio::spawn(async move { short.complete(&vault, &keystore).await })
    };
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = device::join(&joiner_net, &short_code)
        .await
        .expect_err("expired code");
    assert!(matches!(err, EhiError::Invite(_)), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    let err = inviter.await?.expect_err("nobody joined");
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(share::devices(&vault).await.len(), 2);
    // Lifetimes out of range are refused.
    assert!(
        Invite::create(&vault, Duration::from_secs(7200))
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_watching_devices_sync_within_two_seconds() -> anyhow::Result<()> {
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_vault(dir.path()).await?;
    let a = Arc::new(vault);
    let (joined, _) = pair(&net, &a, &keystore).await?;
    let b = Arc::new(Vault::open(net.connect(Some(&joined)).await?, &joined).await?);

    // Both devices watch.
    let (tx_a, mut seen_a) = tokio::sync::mpsc::unbounded_channel();
    let (tx_b, mut seen_b) = tokio::sync::mpsc::unbounded_channel();
    let watch_a = {
        let a = a.clone();
        tokio::spawn(async move {
            a.watch(move |e| {
                let _ = tx_a.send(e.generation);
            })
            .await
        })
    };
    let watch_b = {
        let b = b.clone();
        tokio::spawn(async move {
            b.watch(move |e| {
                let _ = tx_b.send(e.generation);
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // An import on A shows on B within 2 s, without B asking.
    assert!(b.read("Observation", "hr-a").await.is_err());
    let started = Instant::now();
    a.import(vec![input("a.json", &observation("hr-a", 61.0))])
        .await?;
    let deadline = started + Duration::from_secs(2);
    while b.read("Observation", "hr-a").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "B did not see A's import within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_b = b.read("Observation", "hr-a").await?;
    assert_eq!(on_b["valueQuantity"]["value"], 61.0);
    assert!(seen_b.recv().await.is_some());
    eprintln!("A → B in {:?}", started.elapsed());

    // And the other way.
    let started = Instant::now();
    b.import(vec![input("b.json", &observation("hr-b", 72.0))])
        .await?;
    let deadline = started + Duration::from_secs(2);
    while a.read("Observation", "hr-b").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "A did not see B's import within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen_a.recv().await.is_some());

    // Concurrent writes from both devices merge (CAS with retry): nothing is lost.
    let (ra, rb) = tokio::join!(
        a.import(vec![input("a2.json", &observation("hr-c", 80.0))]),
        b.import(vec![input("b2.json", &observation("hr-d", 90.0))]),
    );
    ra?;
    rb?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let a_sees = a.read("Observation", "hr-d").await.is_ok();
        let b_sees = b.read("Observation", "hr-c").await.is_ok();
        if a_sees && b_sees {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the concurrent writes did not merge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in ["hr-a", "hr-b", "hr-c", "hr-d"] {
        a.read("Observation", id).await?;
        b.read("Observation", id).await?;
    }
    watch_a.abort();
    watch_b.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_device_rotates_every_scope_key() -> anyhow::Result<()> {
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    let vault = Arc::new(vault);
    let (joined, id) = pair(&net, &vault, &keystore).await?;
    let before = vault.status().await?;

    // Unknown ids and the last device are refused.
    assert!(matches!(
        share::remove_device(&vault, "0123456789abcdef").await,
        Err(EhiError::NotFound(_))
    ));
    // Before: the joined device's own keys open the root as it is stored.
    let old_root = root_bytes(&net, &vault).await?;
    assert!(device::opens_root(&joined, &old_root));
    assert_eq!(ehi_layer::seal::epoch_of(&old_root), Some(0));

    let removal = share::remove_device(&vault, &id).await?;
    assert_eq!(removal.rotated.len(), 8);
    assert_eq!(removal.root_generation, 1);
    assert_eq!(share::devices(&vault).await.len(), 1);
    let after = vault.status().await?;
    for (old, new) in before.scopes.iter().zip(&after.scopes) {
        assert_eq!(new.epoch, old.epoch + 1, "scope {}", old.scope);
    }
    let only = share::devices(&vault).await[0].id.clone();
    assert!(matches!(
        share::remove_device(&vault, &only).await,
        Err(EhiError::InvalidArgument(_))
    ));
    // New data is written under the new epochs; the vault still reads everything.
    vault
        .import(vec![input(
            "later.json",
            &observation("after-removal", 55.0),
        )])
        .await?;
    assert_eq!(
        vault.read("Observation", "after-removal").await?["valueQuantity"]["value"],
        55.0
    );
    assert!(
        vault
            .audit_entries()
            .await?
            .iter()
            .any(|e| e.action().as_deref() == Some("device") && e.event.contains("removed"))
    );
    // The bytes the removed device can fetch: the new root is sealed under generation
    // 1, which its keys do not open (nor those of the gen-0 key of anyone).
    let new_root = root_bytes(&net, &vault).await?;
    assert_eq!(ehi_layer::seal::epoch_of(&new_root), Some(1));
    assert!(!device::opens_root(&joined, &new_root));
    assert!(!device::opens_root(&keystore, &new_root));
    // So the removed device cannot open the vault any more (the keyring has no entry
    // for it) and never learns the new scope keys.
    let err = Vault::open(net.connect(Some(&joined)).await?, &joined)
        .await
        .expect_err("removed device");
    assert!(matches!(err, EhiError::NotADevice(_)), "{err}");
    // The remaining device opens it afresh (through the keyring), audit log included.
    let reopened = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await?;
    assert_eq!(
        reopened.read("Observation", "after-removal").await?["valueQuantity"]["value"],
        55.0
    );
    reopened.audit_verify().await?;
    // A device paired after the removal is given the new generation and reads.
    let (third, _) = pair(&net, &vault, &keystore).await?;
    let on_third = Vault::open(net.connect(Some(&third)).await?, &third).await?;
    on_third.read("Observation", "after-removal").await?;
    assert_eq!(share::devices(&vault).await.len(), 2);
    Ok(())
}

/// The stored bytes of blob `address`, read from a storage server's disk.
fn blob_bytes(net: &TestNet, address: &invariant_spec::Id) -> anyhow::Result<Vec<u8>> {
    let wanted = address.to_string();
    for file in net.blob_files() {
        let name: String = file
            .iter()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if name == wanted {
            return Ok(std::fs::read(file)?);
        }
    }
    anyhow::bail!("blob {wanted} is on no storage server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_device_re_keys_the_emergency_policy() -> anyhow::Result<()> {
    use ehi_layer::AppKeystore;
    use ehi_layer::emergency::{self, EmergencyAccess};
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    let vault = Arc::new(vault);
    let (joined, id) = pair(&net, &vault, &keystore).await?;
    let holder = AppKeystore::generate("County ER")?;
    let ticket =
        emergency::set_policy(&vault, &keystore, holder.card().verify()?, Vec::new()).await?;
    let holder_net = Network::connect(&net.broker_url, Some(ticket.grant.slots_server)).await?;
    EmergencyAccess::open(holder_net.clone(), &holder, &ticket, "first use").await?;
    // Before: the policy is keyed from generation 0, which the other device holds.
    let (old_slot, old_address) = emergency::policy_location(&vault, &keystore)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no policy"))?;
    assert!(emergency::opens_policy(
        &joined,
        &blob_bytes(&net, &old_address)?
    ));

    let removal = share::remove_device(&vault, &id).await?;
    assert!(removal.emergency_rekeyed);
    // After: a new slot and a new blob, keyed from generation 1; the removed device's
    // keys (and the generation-0 keys of anyone) do not open the bytes it can fetch,
    // and the old slot holds the tombstone.
    let (new_slot, new_address) = emergency::policy_location(&vault, &keystore)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no policy after the removal"))?;
    assert_ne!(new_slot, old_slot);
    let new_bytes = blob_bytes(&net, &new_address)?;
    assert!(!emergency::opens_policy(&joined, &new_bytes));
    assert!(!emergency::opens_policy(&keystore, &new_bytes));
    let slots = common::slots_client(&net).await?;
    assert_eq!(
        slots.get(&old_slot).await?.map(|s| s.address),
        Some(ehi_layer::tombstone_address())
    );
    // The policy is the same (holder, grant), on this device and on a fresh open.
    let policy = emergency::policy(&vault, &keystore)
        .await?
        .ok_or_else(|| anyhow::anyhow!("policy lost"))?;
    assert_eq!(policy.holder, "County ER");
    let reopened = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await?;
    assert_eq!(
        emergency::policy(&reopened, &keystore).await?,
        Some(policy.clone())
    );
    // The holder still opens emergency access with its old ticket and reads the new
    // data; the patient sees both uses and acknowledges them (the policy stays under
    // generation 1).
    vault
        .import(vec![input(
            "later.json",
            &observation("after-removal", 61.0),
        )])
        .await?;
    let (mut session, used) =
        EmergencyAccess::open(holder_net, &holder, &ticket, "second use").await?;
    assert_eq!(used.seq, 1);
    assert!(
        session
            .search("Observation", "")
            .await?
            .resources
            .iter()
            .any(|r| r["id"] == "after-removal")
    );
    let pending = emergency::pending(&reopened, &keystore).await?;
    assert_eq!(pending.len(), 2);
    assert_eq!(emergency::acknowledge(&reopened, &keystore).await?.len(), 2);
    let (slot_after_ack, _) = emergency::policy_location(&vault, &keystore)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no policy after ack"))?;
    assert_eq!(slot_after_ack, new_slot);
    assert!(emergency::pending(&vault, &keystore).await?.is_empty());
    Ok(())
}
