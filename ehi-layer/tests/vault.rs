//! The vault against a real local network (broker, 3 storage servers, slots,
//! distributor, all in-process): import, read, history, patient compartment, export and
//! re-import, a second device, concurrent writers, removal, and the errors.

mod common;

use common::{
    PASSPHRASE, TestNet, distributor, input, patient_bundle, slots_client, without_timestamp,
};
use ehi_layer::share;
use ehi_layer::{
    EhiError, ImportReport, Input, Keystore, KeystoreError, Vault, export, tombstone_address,
};
use invariant_spec::Id;
use serde_json::{Value, json};

const PATIENT: &str = "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b";
const ENCOUNTER: &str = "7d1f3a9c-2b4e-4c6d-8e0f-1a2b3c4d5e6f";

fn update_bundle() -> Value {
    // A batch: a new version of the Patient, one new Observation, one deletion.
    json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "PUT", "url": format!("Patient/{PATIENT}")},
         "resource": {"resourceType": "Patient", "id": PATIENT,
            "name": [{"family": "Quixotebaum-Lindqvist", "given": ["Zelphina"]}],
            "gender": "female", "birthDate": "1961-08-29"}},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {"resourceType": "Observation", "id": "glucose-20230412", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
            "subject": {"reference": format!("Patient/{PATIENT}")},
            "effectiveDateTime": "2023-04-12T07:15:00Z",
            "valueQuantity": {"value": 131, "unit": "mg/dL"}}},
        {"request": {"method": "DELETE", "url": "AllergyIntolerance/a1b2c3d4-0006-4a5b-8c6d-7e8f9a0b1c2d"}}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn import_read_history_and_compartment() -> anyhow::Result<()> {
    let net = TestNet::start(3, true).await?;
    let dir = tempfile::tempdir()?;
    let (_keystore, _path, vault) = net.new_vault(dir.path()).await?;

    let report = vault
        .import(vec![input("patient.json", &patient_bundle())])
        .await?;
    assert_eq!(report.created, 10, "{report:?}");
    assert_eq!(report.attempts, 1);
    assert_eq!(report.generation, 1);

    // References were rewritten from urn:uuid to Type/id; meta was set.
    let encounter = vault.read("Encounter", ENCOUNTER).await?;
    assert_eq!(
        encounter["subject"]["reference"],
        format!("Patient/{PATIENT}")
    );
    assert_eq!(encounter["meta"]["versionId"], "1");
    assert!(encounter["meta"]["lastUpdated"].as_str().is_some());
    let patient = vault.read("Patient", PATIENT).await?;
    assert_eq!(patient["name"][0]["family"], "Quixotebaum");

    // The same bundle again changes nothing.
    let again = vault
        .import(vec![input("patient.json", &patient_bundle())])
        .await?;
    assert_eq!((again.created, again.updated, again.unchanged), (0, 0, 10));
    assert_eq!(
        again.generation, 1,
        "an import that changes nothing does not commit"
    );

    // Updates add versions; deletions are versions too.
    let update = vault
        .import(vec![input("update.json", &update_bundle())])
        .await?;
    assert_eq!(
        (update.created, update.updated, update.deleted),
        (1, 1, 1),
        "{update:?}"
    );
    let history = vault.history("Patient", PATIENT).await?;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].version, 2);
    assert_eq!(
        history[0]
            .resource
            .as_ref()
            .map(|r| r["name"][0]["family"].clone()),
        Some(json!("Quixotebaum-Lindqvist"))
    );
    assert_eq!(
        history[1]
            .resource
            .as_ref()
            .map(|r| r["meta"]["versionId"].clone()),
        Some(json!("1"))
    );
    let old = vault.read_version("Patient", PATIENT, 1).await?;
    assert_eq!(old["name"][0]["family"], "Quixotebaum");

    let allergy = "a1b2c3d4-0006-4a5b-8c6d-7e8f9a0b1c2d";
    assert!(matches!(
        vault.read("AllergyIntolerance", allergy).await,
        Err(EhiError::Gone(_))
    ));
    let history = vault.history("AllergyIntolerance", allergy).await?;
    assert!(history[0].deleted && history[0].resource.is_none() && !history[1].deleted);
    assert!(matches!(
        vault.read("Patient", "nobody").await,
        Err(EhiError::NotFound(_))
    ));

    // The patient compartment: the Patient and everything referencing it (not the
    // Practitioner, not the deleted allergy).
    let compartment = vault.patient_compartment(PATIENT).await?;
    let mut names: Vec<String> = compartment
        .iter()
        .map(|r| r["resourceType"].as_str().unwrap_or("?").to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Claim",
            "Condition",
            "Encounter",
            "Immunization",
            "MedicationRequest",
            "Observation",
            "Observation",
            "Observation",
            "Patient"
        ]
    );

    let status = vault.status().await?;
    assert_eq!(status.generation, 2);
    assert_eq!(status.types.get("Observation"), Some(&3));
    assert_eq!(status.types.get("AllergyIntolerance"), None);
    assert!(status.distributor);
    let by_scope = |name: &str| {
        status
            .scopes
            .iter()
            .find(|s| s.scope.name() == name)
            .map(|s| (s.resources, s.versions))
    };
    assert_eq!(by_scope("demographics"), Some((2, 3)));
    assert_eq!(by_scope("allergies"), Some((0, 2)));
    assert_eq!(by_scope("financial"), Some((1, 1)));

    // Every block the vault references is pinned at the distributor.
    let blocks = vault.blocks().await;
    let distributor = distributor(&net).await?;
    let pinned = distributor.status().await?.pinned;
    assert_eq!(
        pinned as usize,
        blocks.len(),
        "superseded blocks are unpinned"
    );
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_input_commits_nothing_and_names_the_entry() -> anyhow::Result<()> {
    let net = TestNet::start(2, false).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_vault(dir.path()).await?;
    let slots = slots_client(&net).await?;
    let before = slots.get(&keystore.vault_slot()).await?.map(|s| s.address);

    let mut bad = patient_bundle();
    bad["entry"][4]["resource"]["subject"]["reference"] =
        json!("urn:uuid:deadbeef-0000-4000-8000-000000000000");
    let cases: Vec<(Input, &str)> = vec![
        (
            Input::from_bytes("broken.json", b"{\"resourceType\": ".to_vec()),
            "broken.json: not JSON",
        ),
        (
            input("bad-ref.json", &bad),
            "bad-ref.json, entry 4 (fullUrl urn:uuid:a1b2c3d4-0002",
        ),
        (
            input(
                "no-type.json",
                &json!({"resourceType": "Bundle", "type": "collection",
                "entry": [{"resource": {"id": "x"}}]}),
            ),
            "no-type.json, entry 0: the resource has no resourceType",
        ),
        (
            input(
                "dup.json",
                &json!({"resourceType": "Bundle", "type": "collection", "entry": [
                {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient"}},
                {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient"}}]}),
            ),
            "duplicate fullUrl urn:uuid:1",
        ),
    ];
    for (bad_input, expected) in cases {
        // A valid input alongside: nothing of it may be committed either.
        let err = vault
            .import(vec![input("good.json", &patient_bundle()), bad_input])
            .await
            .expect_err("invalid input must be refused");
        let message = err.to_string();
        assert!(matches!(err, EhiError::Import(_)), "{message}");
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
        assert!(message.contains("nothing was stored"), "{message}");
    }
    assert_eq!(
        slots.get(&keystore.vault_slot()).await?.map(|s| s.address),
        before
    );
    assert!(vault.list().await.is_empty());
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_then_reimport_gives_the_same_vault() -> anyhow::Result<()> {
    let net = TestNet::start(3, true).await?;
    let dir = tempfile::tempdir()?;
    let (_k, _p, vault) = net.new_patient_vault(&dir.path().join("a")).await?;
    vault
        .import(vec![input("update.json", &update_bundle())])
        .await?;

    // With history, as a Bundle (carries deletions).
    let exported = export::bundle(&vault, true).await?;
    assert_eq!(exported["type"], "history");
    let (_k2, _p2, copy) = net.new_vault(&dir.path().join("b")).await?;
    copy.import(vec![input("export.json", &exported)]).await?;
    assert_eq!(
        without_timestamp(export::bundle(&copy, true).await?),
        without_timestamp(exported.clone())
    );
    assert_eq!(
        copy.history("Patient", PATIENT).await?,
        vault.history("Patient", PATIENT).await?
    );

    // Current state, as a collection and as NDJSON.
    let current = export::bundle(&vault, false).await?;
    assert_eq!(current["type"], "collection");
    assert_eq!(current["entry"].as_array().map(Vec::len), Some(10));
    let ndjson_dir = dir.path().join("ndjson");
    let files = export::ndjson(&vault, &ndjson_dir, false).await?;
    assert!(
        files
            .iter()
            .any(|f| f.resource_type == "Observation" && f.count == 3)
    );
    let inputs = files
        .iter()
        .map(|f| Input::from_path(&f.path))
        .collect::<Result<Vec<_>, _>>()?;
    let (_k3, _p3, from_ndjson) = net.new_vault(&dir.path().join("c")).await?;
    from_ndjson.import(inputs).await?;
    assert_eq!(
        without_timestamp(export::bundle(&from_ndjson, false).await?),
        without_timestamp(current.clone())
    );
    // And the collection Bundle itself re-imports to the same current state.
    let (_k4, _p4, from_bundle) = net.new_vault(&dir.path().join("d")).await?;
    from_bundle
        .import(vec![input("current.json", &current)])
        .await?;
    assert_eq!(
        without_timestamp(export::bundle(&from_bundle, false).await?),
        without_timestamp(current)
    );
    // Re-importing the export into the original changes nothing.
    let again = vault.import(vec![input("export.json", &exported)]).await?;
    assert_eq!((again.created, again.updated), (0, 0), "{again:?}");
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_device_opens_the_same_vault_from_the_keystore() -> anyhow::Result<()> {
    let net = TestNet::start(3, true).await?;
    let dir = tempfile::tempdir()?;
    let (_keystore, path, vault) = net.new_patient_vault(dir.path()).await?;

    // Device B: a copy of the keystore file and the broker url, nothing else.
    let other = tempfile::tempdir()?;
    let copy = other.path().join("keystore.json");
    std::fs::copy(&path, &copy)?;
    let keystore_b = Keystore::open(&copy, PASSPHRASE)?;
    let device_b = Vault::open(net.connect(Some(&keystore_b)).await?, &keystore_b).await?;
    assert_eq!(device_b.list().await, vault.list().await);
    assert_eq!(
        device_b.read("Patient", PATIENT).await?,
        vault.read("Patient", PATIENT).await?
    );

    // B writes; A sees it after a refresh.
    device_b
        .import(vec![input("update.json", &update_bundle())])
        .await?;
    assert_eq!(vault.history("Patient", PATIENT).await?.len(), 1);
    vault.refresh().await?;
    assert_eq!(vault.history("Patient", PATIENT).await?.len(), 2);
    assert_eq!(
        without_timestamp(export::bundle(&vault, true).await?),
        without_timestamp(export::bundle(&device_b, true).await?)
    );

    // A wrong passphrase is a clear error, not a panic.
    let err = Keystore::open(&copy, "not the passphrase").expect_err("wrong passphrase");
    assert!(matches!(err, KeystoreError::WrongPassphrase { .. }));
    assert!(err.to_string().contains("wrong passphrase"), "{err}");
    net.stop().await;
    Ok(())
}

/// `n` Observations for `patient` with ids `{prefix}-{i}`.
fn observations(prefix: &str, n: usize) -> Value {
    let entries: Vec<Value> = (0..n)
        .map(|i| {
            json!({"resource": {"resourceType": "Observation", "id": format!("{prefix}-{i}"),
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{PATIENT}")},
                "effectiveDateTime": format!("2022-01-{:02}T08:00:00Z", 1 + i % 28),
                "valueQuantity": {"value": 60 + i, "unit": "/min"}}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_two_devices_lose_no_import() -> anyhow::Result<()> {
    let net = TestNet::start(3, true).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, device_a) = net.new_vault(dir.path()).await?;
    device_a
        .import(vec![input("patient.json", &patient_bundle())])
        .await?;
    let device_b = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await?;

    // Both devices import several batches at the same time; both touch the Patient.
    let patient_v = |family: &str| json!({"resourceType": "Patient", "id": PATIENT, "name": [{"family": family}]});
    async fn run(
        vault: &Vault,
        prefix: &str,
        patient: Value,
    ) -> Result<Vec<ImportReport>, EhiError> {
        let mut reports = Vec::new();
        for round in 0..4 {
            let mut inputs = vec![input(
                "obs.json",
                &observations(&format!("{prefix}{round}"), 25),
            )];
            if round == 0 {
                inputs.push(input("patient.json", &patient));
            }
            reports.push(vault.import(inputs).await?);
        }
        Ok(reports)
    }
    let (a, b) = tokio::join!(
        run(&device_a, "alpha", patient_v("alpha")),
        run(&device_b, "beta", patient_v("beta"))
    );
    let (a, b) = (a?, b?);
    let retried = a.iter().chain(&b).filter(|r| r.attempts > 1).count();
    eprintln!("commits that had to merge: {retried}");

    for vault in [&device_a, &device_b] {
        vault.refresh().await?;
        let list = vault.list().await;
        for prefix in ["alpha", "beta"] {
            for round in 0..4 {
                for i in 0..25 {
                    let name = format!("Observation/{prefix}{round}-{i}");
                    assert!(list.contains(&name), "{name} was lost");
                }
            }
        }
        // Both devices' Patient versions are kept.
        let history = vault.history("Patient", PATIENT).await?;
        assert_eq!(history.len(), 3, "v1 + one version from each device");
        let families: Vec<Value> = history
            .iter()
            .filter_map(|h| h.resource.as_ref().map(|r| r["name"][0]["family"].clone()))
            .collect();
        assert!(families.contains(&json!("alpha")) && families.contains(&json!("beta")));
    }
    // Deterministically: B is stale (A commits after B's last read), so B's commit
    // must lose the swap, merge onto A's root and renumber its Patient version.
    device_a
        .import(vec![input(
            "a.json",
            &json!({"resourceType": "Patient", "id": PATIENT,
            "name": [{"family": "gamma"}]}),
        )])
        .await?;
    let merged = device_b
        .import(vec![
            input(
                "b.json",
                &json!({"resourceType": "Patient", "id": PATIENT,
                "name": [{"family": "delta"}]}),
            ),
            input("obs.json", &observations("late", 3)),
        ])
        .await?;
    assert_eq!(merged.attempts, 2, "{merged:?}");
    assert_eq!(merged.updated, 1);
    device_a.refresh().await?;
    let history = device_a.history("Patient", PATIENT).await?;
    assert_eq!(history.len(), 5);
    let field = |i: usize, pointer: &str| {
        history[i]
            .resource
            .as_ref()
            .and_then(|r| r.pointer(pointer).cloned())
    };
    assert_eq!(field(0, "/name/0/family"), Some(json!("delta")));
    assert_eq!(field(0, "/meta/versionId"), Some(json!("5")));
    assert_eq!(field(1, "/name/0/family"), Some(json!("gamma")));
    assert!(
        device_a
            .list()
            .await
            .contains(&"Observation/late-2".to_string())
    );

    let status = device_a.status().await?;
    assert_eq!(
        status.generation, 11,
        "1 + 10 imports, each committed exactly once"
    );
    assert_eq!(
        without_timestamp(export::bundle(&device_a, true).await?),
        without_timestamp(export::bundle(&device_b, true).await?)
    );
    // Pins: exactly the referenced blocks (failed attempts and superseded objects were
    // unpinned).
    let pinned = distributor(&net).await?.status().await?.pinned;
    assert_eq!(pinned as usize, device_a.blocks().await.len());
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removal_leaves_a_tombstone_and_nothing_decryptable() -> anyhow::Result<()> {
    let net = TestNet::start(3, true).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, path, vault) = net.new_patient_vault(dir.path()).await?;
    let backup = dir.path().join("backup.json");
    std::fs::copy(&path, &backup)?;
    let scope_slots: Vec<Id> = vault
        .status()
        .await?
        .scopes
        .iter()
        .map(|s| s.slot)
        .collect();
    let blocks = vault.blocks().await;
    assert!(distributor(&net).await?.status().await?.pinned > 0);

    let report = share::remove(vault, Some(&path)).await?;
    assert!(report.keystore_destroyed && report.distributor);
    // The distributor's default collection: 24 h grace, a sweep every hour.
    let collection = report
        .collection
        .expect("the distributor says when it collects");
    assert_eq!(
        (collection.grace_seconds, collection.interval_seconds),
        (86_400, Some(3600))
    );
    assert_eq!(collection.within_seconds(), Some(90_000));
    // Every block of the vault, plus the removal's own audit entry (the removal is
    // the log's last entry; this small vault's root stays one block).
    assert_eq!(report.blocks, blocks.len() + 1);
    assert_eq!(report.unpinned, report.blocks);
    assert!(report.notes.is_empty(), "{:?}", report.notes);

    // Slots: the vault slot and every scope slot hold the tombstone.
    let slots = slots_client(&net).await?;
    let tombstone = tombstone_address();
    assert_eq!(
        slots.get(&keystore.vault_slot()).await?.map(|s| s.address),
        Some(tombstone)
    );
    for slot in scope_slots {
        assert_eq!(slots.get(&slot).await?.map(|s| s.address), Some(tombstone));
    }
    // No pins remain; the keystore file is gone.
    assert_eq!(distributor(&net).await?.status().await?.pinned, 0);
    assert!(matches!(
        Keystore::open(&path, PASSPHRASE),
        Err(KeystoreError::NotFound { .. })
    ));
    // Even a backup of the keystore cannot open the vault through the network: the
    // slot is a tombstone.
    let backup = Keystore::open(&backup, PASSPHRASE)?;
    let err = Vault::open(net.connect(Some(&backup)).await?, &backup)
        .await
        .expect_err("removed");
    assert!(matches!(err, EhiError::Removed { .. }), "{err}");
    // And a new vault cannot be created over the tombstone.
    assert!(matches!(
        Vault::create(net.connect(Some(&backup)).await?, &backup).await,
        Err(EhiError::Removed { .. })
    ));
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_and_tampered_data_give_clear_errors() -> anyhow::Result<()> {
    let net = TestNet::start(2, false).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    let patient = vault.read("Patient", PATIENT).await?;
    assert_eq!(patient["gender"], "female");

    // Corrupt every copy of every blob of size 1 KiB or 2 KiB except the manifests and
    // root: simplest is to corrupt the Patient's blob, found by trying each.
    let files = net.blob_files();
    let mut corrupted = 0;
    for file in &files {
        let original = std::fs::read(file)?;
        let mut bad = original.clone();
        if let Some(b) = bad.get_mut(100) {
            *b ^= 0xff;
        }
        std::fs::write(file, &bad)?;
        match vault.read("Patient", PATIENT).await {
            Ok(_) => std::fs::write(file, &original)?,
            Err(e) => {
                let message = e.to_string();
                assert!(matches!(e, EhiError::Corrupt { .. }), "{message}");
                assert!(
                    message.contains("Patient/") && message.contains("corrupted"),
                    "{message}"
                );
                corrupted += 1;
                std::fs::write(file, &original)?;
            }
        }
    }
    assert_eq!(corrupted, 1, "exactly one blob holds the Patient");
    assert_eq!(vault.read("Patient", PATIENT).await?, patient);

    // Corrupt every manifest/root copy too: opening fails with a clear error.
    let mut opened_errors = Vec::new();
    for file in &files {
        let original = std::fs::read(file)?;
        let mut bad = original.clone();
        if let Some(b) = bad.get_mut(40) {
            *b ^= 0x01;
        }
        std::fs::write(file, &bad)?;
        if let Err(e) = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await {
            opened_errors.push(e.to_string());
        }
        std::fs::write(file, &original)?;
    }
    assert_eq!(
        opened_errors.len(),
        9,
        "root + 8 manifests: {opened_errors:?}"
    );
    assert!(
        opened_errors.iter().all(|m| m.contains("corrupted")),
        "{opened_errors:?}"
    );

    // A tampered root: the slot (signed with the patient's key, as an attacker holding
    // it could) points at a valid envelope sealed under another key.
    let slots = slots_client(&net).await?;
    let current = slots
        .get(&keystore.vault_slot())
        .await?
        .ok_or_else(|| anyhow::anyhow!("slot"))?
        .address;
    let forged = ehi_layer::seal::seal_object(
        &ehi_layer::keys::SecretKey::from_bytes([9; 32]),
        ehi_layer::seal::Kind::Root,
        "vault",
        0,
        b"forged root",
    )?;
    let storage = net.connect(None).await?;
    let storage_url = {
        let broker = invariant_spec::BrokerClient::new(&net.broker_url)?;
        let id = storage.storage_servers()[0];
        broker
            .resolve(&id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("storage"))?
    };
    invariant_spec::StorageClient::new(&storage_url)?
        .put(&forged.head.address, forged.head.bytes.clone())
        .await?;
    slots
        .update_signed(
            &keystore.vault_slot(),
            &keystore.signer(),
            &current,
            &forged.head.address,
        )
        .await?;
    let err = Vault::open(net.connect(Some(&keystore)).await?, &keystore)
        .await
        .expect_err("tampered root");
    assert!(matches!(err, EhiError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("does not authenticate"), "{err}");
    // A commit from the old handle now fails cleanly too (the slot moved; the merge
    // cannot read the forged root).
    let err = vault
        .import(vec![input("update.json", &update_bundle())])
        .await
        .expect_err("cannot merge onto a forged root");
    assert!(matches!(err, EhiError::Corrupt { .. }), "{err}");
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_answers_from_the_encrypted_indexes() -> anyhow::Result<()> {
    let net = TestNet::start(2, false).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    vault
        .import(vec![input("update.json", &update_bundle())])
        .await?;

    let ids = |hits: &ehi_layer::SearchHits| -> Vec<String> {
        hits.resources
            .iter()
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect()
    };
    // Token.
    let hits = vault
        .search("Observation", "code=http://loinc.org|8302-2")
        .await?;
    assert_eq!(ids(&hits), ["a1b2c3d4-0001-4a5b-8c6d-7e8f9a0b1c2d"]);
    // Date range, sorted.
    let hits = vault
        .search("Observation", "date=ge2020-01-01&date=lt2024&_sort=date")
        .await?;
    assert_eq!(
        ids(&hits),
        ["a1b2c3d4-0002-4a5b-8c6d-7e8f9a0b1c2d", "glucose-20230412"]
    );
    // String (prefix, case-insensitive), on the updated Patient only.
    let hits = vault.search("Patient", "name=quixotebaum-l").await?;
    assert_eq!(hits.total, 1);
    assert_eq!(hits.resources[0]["meta"]["versionId"], "2");
    assert_eq!(vault.search("Patient", "family=Nobody").await?.total, 0);
    // Reference and _count.
    let hits = vault
        .search(
            "Observation",
            &format!("subject=Patient/{PATIENT}&_count=2&_sort=-date"),
        )
        .await?;
    assert_eq!((hits.total, hits.resources.len()), (3, 2));
    assert_eq!(hits.resources[0]["id"], "glucose-20230412");
    // Deleted resources are not found.
    assert_eq!(vault.search("AllergyIntolerance", "").await?.total, 0);
    // A bad query is an error, not a panic.
    assert!(matches!(
        vault.search("Observation", "nonsense-param=1").await,
        Err(EhiError::Search(_))
    ));
    assert!(matches!(
        vault.search("not a type", "").await,
        Err(EhiError::InvalidArgument(_))
    ));

    // A second device searches the same index (it was stored encrypted in the manifests).
    let device_b = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await?;
    let hits = device_b.search("Condition", "code=44054006").await?;
    assert_eq!(hits.total, 1);
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_bundle_types_large_resources_and_scopes() -> anyhow::Result<()> {
    use rand::{RngCore, SeedableRng};
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (_k, _p, vault) = net.new_vault(dir.path()).await?;

    let document = json!({"resourceType": "Bundle", "type": "document",
    "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:11111111-2222-4333-8444-555555555555"},
    "entry": [
        {"fullUrl": "urn:uuid:c0000000-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Composition", "status": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]},
            "subject": {"reference": "urn:uuid:c0000000-0000-4000-8000-000000000002"},
            "date": "2024-02-02T10:00:00Z", "title": "Summary",
            "author": [{"reference": "urn:uuid:c0000000-0000-4000-8000-000000000002"}]}},
        {"fullUrl": "urn:uuid:c0000000-0000-4000-8000-000000000002",
         "resource": {"resourceType": "Patient", "name": [{"family": "Doc"}]}}
    ]});
    let searchset = json!({"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
        {"resource": {"resourceType": "Condition", "id": "labelled",
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]},
            "code": {"text": "something private"},
            "subject": {"reference": "Patient/c0000000-0000-4000-8000-000000000002"}},
         "search": {"mode": "match"}},
        {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]},
         "search": {"mode": "outcome"}}
    ]});
    // A 2.5 MB attachment: chunked into several blobs.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut data = vec![0u8; 1_900_000];
    rng.fill_bytes(&mut data);
    let big = json!({"resourceType": "Binary", "id": "scan", "contentType": "application/octet-stream",
        "data": base64_encode(&data)});
    let ndjson = b"{\"resourceType\":\"Observation\",\"id\":\"n1\",\"status\":\"final\",\"code\":{\"text\":\"x\"}}\n{\"resourceType\":\"Observation\",\"id\":\"n2\",\"status\":\"final\",\"code\":{\"text\":\"y\"}}\n";
    let report = vault
        .import(vec![
            input("doc.json", &document),
            input("search.json", &searchset),
            input("big.json", &big),
            Input::from_bytes("Observation.ndjson", ndjson.to_vec()),
        ])
        .await?;
    assert_eq!(report.created, 6, "{report:?}");
    assert_eq!(
        report.notes.len(),
        1,
        "the outcome entry is skipped: {:?}",
        report.notes
    );

    let composition = vault
        .read("Composition", "c0000000-0000-4000-8000-000000000001")
        .await?;
    assert_eq!(
        composition["subject"]["reference"],
        "Patient/c0000000-0000-4000-8000-000000000002"
    );
    let mut stored = vault.read("Binary", "scan").await?;
    assert_eq!(stored["meta"]["versionId"], "1");
    if let Some(map) = stored.as_object_mut() {
        map.remove("meta");
    }
    assert_eq!(stored, big);
    assert!(
        vault.blocks().await.len() > 8 + 1 + 6,
        "the Binary took several blocks"
    );

    // The labelled Condition went to the sensitive scope; it is still searchable.
    let status = vault.status().await?;
    let sensitive = status
        .scopes
        .iter()
        .find(|s| s.scope == ehi_layer::Scope::Sensitive);
    assert_eq!(sensitive.map(|s| s.resources), Some(1));
    assert_eq!(
        vault.search("Condition", "code:text=private").await?.total,
        1
    );

    // Scope overrides: refused for a stored type, accepted for a new one.
    assert!(matches!(
        vault
            .set_scope_override("Observation", ehi_layer::Scope::Sensitive)
            .await,
        Err(EhiError::InvalidArgument(_))
    ));
    vault
        .set_scope_override("Goal", ehi_layer::Scope::Sensitive)
        .await?;
    vault
        .import(vec![input(
            "goal.json",
            &json!({"resourceType": "Goal", "id": "g",
            "lifecycleStatus": "active", "description": {"text": "walk"},
            "subject": {"reference": "Patient/c0000000-0000-4000-8000-000000000002"}}),
        )])
        .await?;
    let status = vault.status().await?;
    let sensitive = status
        .scopes
        .iter()
        .find(|s| s.scope == ehi_layer::Scope::Sensitive);
    assert_eq!(sensitive.map(|s| s.resources), Some(2));
    assert_eq!(vault.search("Goal", "").await?.total, 1);
    net.stop().await;
    Ok(())
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
