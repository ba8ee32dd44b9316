//! What an import accepts: every resource must have the FHIR R4 structure (refused
//! before anything is stored, with the entry, resource, element path and rule named;
//! `--lenient` stores it with a warning), and a vault keeps one patient's records
//! (another Patient is refused unless allowed, and the decision is audited). `ehi serve`
//! writes follow the same rules and answer 422 with an OperationOutcome naming the path.

mod common;

use std::sync::Arc;

use common::cli::{ehi_as, text};
use common::{PASSPHRASE, TestNet, input, patient_bundle};
use ehi_layer::serve::{self, TokenKey};
use ehi_layer::{EhiError, ImportError, ImportOptions};
use serde_json::{Value, json};

const PATIENT: &str = "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b";

fn bundle(resources: Vec<Value>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| json!({"resource": r}))
        .collect();
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

fn observation(id: &str, value: Value) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"text": "weight"}, "subject": {"reference": format!("Patient/{PATIENT}")},
        "valueQuantity": {"value": value, "unit": "kg"}})
}

fn other_patient() -> Value {
    json!({"resourceType": "Patient", "id": "someone-else", "name": [{"family": "Other"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_resources_are_refused_before_anything_is_stored() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let dir = tempfile::tempdir()?;
    let (_k, _p, vault) = net.new_vault(dir.path()).await?;

    let typo = bundle(vec![
        observation("ok", json!(70)),
        json!({"resourceType": "Observaton", "id": "typo", "status": "final"}),
    ]);
    let err = vault
        .import(vec![input("typo.json", &typo)])
        .await
        .expect_err("an unknown resource type");
    let message = err.to_string();
    assert!(
        message.contains("typo.json, entry 1: Observaton/typo is not valid FHIR R4")
            && message.contains("unknown resourceType \"Observaton\""),
        "{message}"
    );
    assert!(vault.list().await.is_empty(), "nothing was stored");

    let abc = bundle(vec![observation("w", json!("abc"))]);
    let err = vault
        .import(vec![input("abc.json", &abc)])
        .await
        .expect_err("a string where a decimal belongs");
    match &err {
        EhiError::Import(ImportError::Invalid {
            entry,
            resource,
            violations,
            ..
        }) => {
            assert_eq!(entry, "entry 0");
            assert_eq!(resource, "Observation/w");
            assert_eq!(violations.len(), 1);
            assert_eq!(violations[0].path, "Observation.valueQuantity.value");
            assert_eq!(violations[0].rule, "a decimal must be a JSON number");
        }
        other => panic!("expected an invalid-resource error, got {other}"),
    }
    // NDJSON lines are named by line.
    let ndjson = format!(
        "{}\n{}\n",
        serde_json::to_string(&observation("a", json!(1)))?,
        serde_json::to_string(&json!({"resourceType": "Observation", "id": "b"}))?
    );
    let err = vault
        .import(vec![ehi_layer::Input::from_bytes(
            "obs.ndjson",
            ndjson.into_bytes(),
        )])
        .await
        .expect_err("missing required elements");
    let message = err.to_string();
    assert!(
        message.contains("obs.ndjson, line 2: Observation/b")
            && message.contains("Observation.status: required element is missing"),
        "{message}"
    );
    assert!(vault.list().await.is_empty());

    // Lenient: stored, with a warning naming each invalid resource.
    let options = ImportOptions {
        lenient: true,
        ..ImportOptions::default()
    };
    let report = vault
        .import_with(
            vec![input("typo.json", &typo), input("abc.json", &abc)],
            &options,
            None,
        )
        .await?;
    assert_eq!(report.created, 3);
    let warnings: Vec<&String> = report
        .notes
        .iter()
        .filter(|n| n.contains("--lenient"))
        .collect();
    assert_eq!(warnings.len(), 2, "{:?}", report.notes);
    assert!(warnings[0].contains("Observaton/typo"), "{warnings:?}");
    assert!(
        warnings[1].contains("Observation.valueQuantity.value"),
        "{warnings:?}"
    );
    assert_eq!(vault.read("Observaton", "typo").await?["status"], "final");
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vault_keeps_one_patients_records_unless_told_otherwise() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let dir = tempfile::tempdir()?;
    let (_k, _p, vault) = net.new_vault(dir.path()).await?;
    vault
        .import(vec![input("patient.json", &patient_bundle())])
        .await?;
    let before = vault.list().await;

    // Another Patient, and another patient's Observation, are each refused.
    let err = vault
        .import(vec![input("other.json", &bundle(vec![other_patient()]))])
        .await
        .expect_err("another patient");
    assert!(matches!(err, EhiError::OtherPatients { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("Patient/someone-else")
            && message.contains(&format!("the vault keeps Patient/{PATIENT}"))
            && message.contains("--allow-other-patients"),
        "{message}"
    );
    let theirs = json!({"resourceType": "Observation", "id": "theirs", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/someone-else"}});
    let err = vault
        .import(vec![input("theirs.json", &bundle(vec![theirs]))])
        .await
        .expect_err("another patient's observation");
    assert!(matches!(err, EhiError::OtherPatients { .. }), "{err}");
    assert_eq!(vault.list().await, before, "nothing was stored");

    // Two patients in one import into an empty vault are refused too.
    let dir2 = tempfile::tempdir()?;
    let (_k2, _p2, empty) = net.new_vault(dir2.path()).await?;
    let mut two = patient_bundle();
    if let Some(entries) = two["entry"].as_array_mut() {
        entries.push(
            json!({"fullUrl": "urn:uuid:5a6b7c8d-1111-4222-8333-944455556666",
            "resource": other_patient(), "request": {"method": "POST", "url": "Patient"}}),
        );
    }
    let err = empty
        .import(vec![input("two.json", &two)])
        .await
        .expect_err("two patients");
    assert!(err.to_string().contains("those of 2 ("), "{err}");

    // Allowed: stored, reported, and recorded in the audit log.
    let options = ImportOptions {
        allow_other_patients: true,
        ..ImportOptions::default()
    };
    let report = vault
        .import_with(
            vec![input("other.json", &bundle(vec![other_patient()]))],
            &options,
            None,
        )
        .await?;
    assert_eq!(report.created, 1);
    assert_eq!(report.other_patients, ["Patient/someone-else"]);
    let audit = vault.audit_entries().await?;
    let recorded = audit
        .iter()
        .filter(|e| format!("{e:?}").contains("other patients allowed: Patient/someone-else"))
        .count();
    assert_eq!(recorded, 1, "the decision is in the audit log");
    // Once kept, that patient's records import without the option.
    let more = json!({"resourceType": "Observation", "id": "theirs-2", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/someone-else"}});
    vault
        .import(vec![input("more.json", &bundle(vec![more]))])
        .await?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_refuses_invalid_input_and_obeys_its_flags() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let home = tempfile::tempdir()?;
    let broker = net.broker_url.clone();
    let ehi = |args: Vec<String>| {
        let broker = broker.clone();
        let home = home.path().to_path_buf();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ehi_as(&home, &broker, PASSPHRASE, &args).await
        }
    };
    let out = ehi(vec!["init".into()]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = |name: &str, value: &Value| -> anyhow::Result<String> {
        let path = home.path().join(name);
        std::fs::write(&path, serde_json::to_vec(value)?)?;
        Ok(path.display().to_string())
    };
    let patient = file("patient.json", &patient_bundle())?;
    let bad = file(
        "bad.json",
        &bundle(vec![observation("w", json!({"oops": 1}))]),
    )?;
    let other = file("other.json", &bundle(vec![other_patient()]))?;

    let out = ehi(vec!["import".into(), patient]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ehi(vec!["import".into(), bad.clone()]).await?;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("entry 0: Observation/w is not valid FHIR R4")
            && stderr.contains("Observation.valueQuantity.value: a decimal must be a JSON number"),
        "{stderr}"
    );
    let out = ehi(vec!["import".into(), "--lenient".into(), bad]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warning (stored anyway, --lenient)"),
        "{}",
        text(&out.stderr)
    );
    let out = ehi(vec!["import".into(), other.clone()]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--allow-other-patients"),
        "{}",
        text(&out.stderr)
    );
    let out = ehi(vec![
        "import".into(),
        "--allow-other-patients".into(),
        other,
    ])
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("records of Patient/someone-else kept in this vault"),
        "{}",
        text(&out.stderr)
    );
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_answers_422_naming_the_element() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let dir = tempfile::tempdir()?;
    let (keystore, _p, vault) = net.new_vault(dir.path()).await?;
    vault
        .import(vec![input("patient.json", &patient_bundle())])
        .await?;
    let vault = Arc::new(vault);
    let key = TokenKey::from_keystore(&keystore);
    let token = key.mint_patient(ehi_layer::time::now_ms() / 1000, 3600)?;
    let server = serve::start(vault.clone(), key, "127.0.0.1:0".parse()?).await?;
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("{}/{path}", server.url()))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };

    let mut bad = observation("w1", json!("abc"));
    let resp = send(reqwest::Method::POST, "Observation", bad.clone()).await?;
    assert_eq!(resp.status(), 422);
    let outcome: Value = resp.json().await?;
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(
        outcome["issue"][0]["expression"],
        json!(["Observation.valueQuantity.value"])
    );
    assert_eq!(outcome["issue"][0]["code"], "value");

    bad["colour"] = json!("red");
    let resp = send(reqwest::Method::PUT, "Observation/w1", bad).await?;
    assert_eq!(resp.status(), 422);
    let outcome: Value = resp.json().await?;
    let paths: Vec<&str> = outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    assert_eq!(
        paths,
        ["Observation.colour", "Observation.valueQuantity.value"]
    );

    let resp = send(reqwest::Method::POST, "Patient", other_patient()).await?;
    assert_eq!(resp.status(), 422, "another patient");
    let resp = send(
        reqwest::Method::POST,
        "Observation",
        observation("w2", json!(71.50)),
    )
    .await?;
    assert_eq!(resp.status(), 201);
    assert!(vault.list().await.iter().all(|r| r != "Observation/w1"));
    server.stop().await?;
    net.stop().await;
    Ok(())
}
