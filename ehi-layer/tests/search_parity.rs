//! One search everywhere: `ehi search` and `ehi serve` answer the same query table with
//! the same resources (including `_summary`, `_elements`, `_include`, `_total`); FHIR's
//! handling preference (strict → 400 for an unknown parameter, lenient → ignored and
//! reported), fhirpy's `.count()`; `Patient/$everything` returns what the compartment
//! references; `_elements` keeps mandatory elements.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::cli::{ehi, ok};
use common::{TestNet, input, patient_bundle};
use ehi_layer::serve::{self, TokenKey};
use serde_json::{Value, json};

const PATIENT: &str = "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b";

/// What a Bundle says, without what differs by transport (timestamps, base urls).
fn essence(bundle: &Value) -> Value {
    let entries: BTreeSet<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut r = e["resource"].clone();
            if let Some(obj) = r.as_object_mut() {
                obj.remove("meta");
            }
            format!("{} {}", e["search"]["mode"], r)
        })
        .collect();
    json!({"total": bundle.get("total"), "entries": entries})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_and_the_facade_search_alike() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let home = tempfile::tempdir()?;
    let broker = net.broker_url.clone();
    common::cli::init_with_patient(home.path(), &broker).await?;

    // The facade over the same vault (opened by a second handle on this device).
    let keystore = ehi_layer::Keystore::open(
        &home.path().join(".config/ehi/keystore.json"),
        common::PASSPHRASE,
    )?;
    let network = net.connect(Some(&keystore)).await?;
    let vault = Arc::new(ehi_layer::Vault::open(network, &keystore).await?);
    let key = TokenKey::from_keystore(&keystore);
    let token = key.mint_patient(ehi_layer::time::now_ms() / 1000, 3600)?;
    let server = serve::start(vault, key, "127.0.0.1:0".parse()?).await?;
    let http = reqwest::Client::new();

    let table = [
        ("Observation", "code=http://loinc.org|8302-2"),
        ("Observation", "_summary=count"),
        ("Observation", "_elements=status"),
        ("Observation", "_include=Observation:subject"),
        ("Patient", "_revinclude=Observation:subject"),
        ("Observation", "_sort=-date"),
        ("Observation", "_total=none"),
        ("Observation", "_summary=data&_count=1"),
        ("Condition", ""),
        ("Patient", "name=Quixotebaum"),
    ];
    for (t, query) in table {
        let args: Vec<String> = std::iter::once("search".to_string())
            .chain(std::iter::once(t.to_string()))
            .chain(
                query
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string),
            )
            .collect();
        let out = ehi(home.path(), &broker, &args).await?;
        ok(&out)?;
        let from_cli: Value = serde_json::from_slice(&out.stdout)?;
        let resp = http
            .get(format!("{}/{t}?{query}", server.url()))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(resp.status(), 200, "{t}?{query}");
        let from_serve: Value = serde_json::from_str(&resp.text().await?)?;
        assert_eq!(essence(&from_cli), essence(&from_serve), "{t}?{query}");
    }
    // `_summary=count` on the command line counts and lists nothing.
    let out = ehi(
        home.path(),
        &broker,
        ["search", "Observation", "_summary=count"],
    )
    .await?;
    let count: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(count["total"], 2);
    assert!(count.get("entry").is_none());

    // Strict by default: an unknown parameter is an error, on both.
    let out = ehi(
        home.path(),
        &broker,
        ["search", "Observation", "colour=red"],
    )
    .await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown search parameter \"colour\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resp = http
        .get(format!("{}/Observation?colour=red", server.url()))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    // Lenient: ignored, and said so in an OperationOutcome entry.
    let out = ehi(
        home.path(),
        &broker,
        ["search", "--lenient", "Observation", "colour=red"],
    )
    .await?;
    ok(&out)?;
    let lenient: Value = serde_json::from_slice(&out.stdout)?;
    let resp = http
        .get(format!("{}/Observation?colour=red", server.url()))
        .bearer_auth(&token)
        .header("prefer", "handling=lenient")
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let served: Value = serde_json::from_str(&resp.text().await?)?;
    for bundle in [&lenient, &served] {
        assert_eq!(bundle["total"], 2, "the unknown parameter was ignored");
        let outcome = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["search"]["mode"] == "outcome")
            .map(|e| e["resource"].clone())
            .unwrap_or_default();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("colour")),
            "{outcome}"
        );
    }
    let resp = http
        .get(format!("{}/Observation?_total=sometimes", server.url()))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    server.stop().await?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_returns_what_the_compartment_references() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _p, vault) = net.new_vault(dir.path()).await?;
    let mut bundle = patient_bundle();
    // A Location and an Organization referenced only from the Encounter.
    if let Some(entries) = bundle["entry"].as_array_mut() {
        for (t, id) in [("Location", "loc-1"), ("Organization", "org-1")] {
            entries.push(
                json!({"resource": {"resourceType": t, "id": id, "name": id},
                "request": {"method": "PUT", "url": format!("{t}/{id}")}}),
            );
        }
        // An Organization nobody references stays out.
        entries.push(
            json!({"resource": {"resourceType": "Organization", "id": "org-unused",
            "name": "unused"}, "request": {"method": "PUT", "url": "Organization/org-unused"}}),
        );
        for e in entries.iter_mut() {
            if e["resource"]["resourceType"] == "Encounter" {
                e["resource"]["location"] = json!([{"location": {"reference": "Location/loc-1"}}]);
                e["resource"]["serviceProvider"] = json!({"reference": "Organization/org-1"});
            }
        }
    }
    vault.import(vec![input("patient.json", &bundle)]).await?;
    let compartment = vault.patient_compartment(PATIENT).await?;
    let vault = Arc::new(vault);
    let key = TokenKey::from_keystore(&keystore);
    let token = key.mint_patient(ehi_layer::time::now_ms() / 1000, 3600)?;
    let server = serve::start(vault.clone(), key, "127.0.0.1:0".parse()?).await?;
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/Patient/{PATIENT}/$everything?_count=1000",
            server.url()
        ))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let everything: Value = serde_json::from_str(&resp.text().await?)?;
    let got: BTreeSet<String> = everything["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| common::reference(&e["resource"]))
        .collect();
    for r in &compartment {
        let k = common::reference(r);
        assert!(got.contains(&k), "{k} of the compartment is missing");
    }
    for referenced in ["Location/loc-1", "Organization/org-1"] {
        assert!(
            got.contains(referenced),
            "{referenced} missing from {got:?}"
        );
    }
    // The patient bundle's Practitioner is referenced by its Encounter.
    assert!(
        got.iter().any(|k| k.starts_with("Practitioner/")),
        "{got:?}"
    );
    assert!(!got.contains("Organization/org-unused"));
    assert_eq!(everything["total"], got.len());
    server.stop().await?;
    net.stop().await;
    Ok(())
}

#[test]
fn required_elements_come_from_the_r4_definitions() {
    let names = |t: &str| -> Vec<String> {
        ehi_layer::validate::required_elements(t)
            .iter()
            .map(|r| format!("{r:?}"))
            .collect()
    };
    assert_eq!(
        names("Observation"),
        ["Required(\"status\")", "Required(\"code\")"]
    );
    assert!(names("Patient").is_empty());
    let choice = ehi_layer::validate::required_elements("Observation");
    assert!(choice.iter().any(|r| r.matches("status")));
    assert!(!choice.iter().any(|r| r.matches("subject")));
}
