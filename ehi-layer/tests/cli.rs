//! The `ehi` binary end to end against an in-process network: init, import, status,
//! search, show, history, patient, export, delete — and its errors.

mod common;

use common::cli::{ehi_as, text};
use common::{PASSPHRASE, TestNet, patient_bundle};
use serde_json::Value;

const PATIENT: &str = "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_drives_a_vault() -> anyhow::Result<()> {
    let net = TestNet::start(2, true).await?;
    let home = tempfile::tempdir()?;
    let broker = net.broker_url.clone();
    let run = |args: &'static [&'static str]| ehi_as(home.path(), &broker, PASSPHRASE, args);

    let out = run(&["init"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let keystore = home.path().join(".config/ehi/keystore.json");
    assert!(keystore.exists());
    let again = run(&["init"]).await?;
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already exists"));

    let bundle = home.path().join("patient.json");
    std::fs::write(&bundle, serde_json::to_vec(&patient_bundle())?)?;
    let out = ehi_as(
        home.path(),
        &broker,
        PASSPHRASE,
        &["import", bundle.to_str().unwrap_or_default()],
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("10 created"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["status"]).await?;
    let status: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(status["types"]["Observation"], 2);
    assert_eq!(status["generation"], 1);

    let out = run(&["search", "Observation", "code=http://loinc.org|8302-2"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let searchset: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(searchset["type"], "searchset");
    assert_eq!(searchset["total"], 1);
    assert_eq!(
        searchset["entry"][0]["resource"]["code"]["coding"][0]["code"],
        "8302-2"
    );

    let out = run(&["--table", "search", "Observation", "_sort=date"]).await?;
    let table = text(&out.stdout);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains("Body Height") && table.contains("Body Weight"),
        "{table}"
    );

    let out = ehi_as(
        home.path(),
        &broker,
        PASSPHRASE,
        &["show", &format!("Patient/{PATIENT}")],
    )
    .await?;
    let patient: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(patient["name"][0]["family"], "Quixotebaum");
    let out = ehi_as(
        home.path(),
        &broker,
        PASSPHRASE,
        &["history", &format!("Patient/{PATIENT}")],
    )
    .await?;
    let history: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 1);
    let out = ehi_as(
        home.path(),
        &broker,
        PASSPHRASE,
        &["--table", "patient", PATIENT],
    )
    .await?;
    assert_eq!(
        text(&out.stdout).lines().count(),
        10,
        "{}",
        text(&out.stdout)
    );

    let export_dir = home.path().join("export");
    let out = ehi_as(
        home.path(),
        &broker,
        PASSPHRASE,
        &["export", export_dir.to_str().unwrap_or_default()],
    )
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exported: Value = serde_json::from_slice(&std::fs::read(export_dir.join("bundle.json"))?)?;
    assert_eq!(exported["entry"].as_array().map(Vec::len), Some(10));
    assert!(export_dir.join("ndjson/Observation.ndjson").exists());

    // Errors are messages, not panics.
    let out = ehi_as(home.path(), &broker, "wrong passphrase", &["status"]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("wrong passphrase"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["show", "Patient/nobody"]).await?;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not found"));
    assert!(!text(&out.stderr).contains("panicked"));
    let out = run(&["show", "garbage"]).await?;
    assert!(!out.status.success() && !text(&out.stderr).contains("panicked"));

    // Every read above is in the audit log, the failed one as a failure.
    let pair = |what: String, outcome: &str| (what, outcome.to_string());
    assert_eq!(
        logged(home.path(), &broker, "read").await?,
        vec![
            pair(format!("Patient/{PATIENT}"), "0"),
            pair(format!("Patient/{PATIENT}/_history"), "0"),
            pair(format!("Patient/{PATIENT}/$everything"), "0"),
            pair("Patient/nobody".into(), "8"),
        ]
    );
    assert_eq!(
        logged(home.path(), &broker, "search").await?,
        vec![
            pair("Observation?code=http://loinc.org|8302-2".into(), "0"),
            pair("Observation?_sort=date".into(), "0"),
        ]
    );
    assert_eq!(
        logged(home.path(), &broker, "export").await?,
        vec![pair("10 entries".into(), "0")]
    );

    // Delete without --yes and no confirmation on stdin: refused.
    let out = run(&["delete"]).await?;
    assert!(!out.status.success());
    assert!(keystore.exists());
    let out = run(&["delete", "--yes"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("crypto-shredded"), "{said}");
    assert!(
        said.contains("after its grace period (24 h) at its next sweep (every 1 h)"),
        "{said}"
    );
    assert!(!keystore.exists());
    net.stop().await;
    Ok(())
}

/// The audit entries of one type, oldest first: what each concerned and its outcome
/// (`0` success, `8` failure).
async fn logged(
    home: &std::path::Path,
    broker: &str,
    kind: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let out = ehi_as(home, broker, PASSPHRASE, ["audit", "--type", kind]).await?;
    let log: Value = serde_json::from_slice(&out.stdout)?;
    Ok(log["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let event = &e["resource"];
            (
                event["entity"][0]["what"]["display"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                event["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}
