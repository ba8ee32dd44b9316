//! The International Patient Summary (`ehi_layer::ips`, `ehi summary`, `Patient/$summary`
//! on `ehi serve`): summaries of the fixture patient, of a patient with nothing but a
//! Patient, and of a Synthea patient, each held to the IPS checklist ([`ips::check`]:
//! document type, the Composition first with the IPS type, subject = the one Patient,
//! required sections, every section entry included, unique fullUrls, every reference
//! resolvable), their signatures verified (and broken by tampering), and validated by
//! the Python `fhir.resources` R4B models (`tests/clients/validate_r4b.py`), their
//! signatures checked by an independent JOSE library too (`joserfc` with the `rfc8785`
//! canonicalizer, `tests/clients/verify_jws.py`). The Python parts are skipped with a
//! loud message without their packages, and fail when `CI` is set:
//! `pip install fhir.resources==8.3.0 joserfc==1.6.5 rfc8785==0.1.4`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, ensure};
use common::{TestNet, grant_to, input};
use ehi_layer::ips::{self, SignatureError};
use ehi_layer::reads::Reads;
use ehi_layer::serve::{self, TokenKey};
use ehi_layer::{Access, Scope, Vault};
use reqwest::StatusCode;
use serde_json::{Value, json};

const PATIENT: &str = "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b";
const REQUIRED: [&str; 3] = ["11450-4", "48765-2", "10160-0"];

/// The section with LOINC `code`, if the Composition has it.
fn section<'a>(bundle: &'a Value, code: &str) -> Option<&'a Value> {
    bundle["entry"][0]["resource"]["section"]
        .as_array()?
        .iter()
        .find(|s| s["code"]["coding"][0]["code"] == code)
}

/// The `Type/id` references of a section's entries.
fn section_refs(bundle: &Value, code: &str) -> BTreeSet<String> {
    section(bundle, code)
        .and_then(|s| s["entry"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e["reference"].as_str().map(str::to_string))
        .collect()
}

/// The bundle's resources by `Type/id`.
fn resources(bundle: &Value) -> HashMap<String, &Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (common::reference(&e["resource"]), &e["resource"]))
        .collect()
}

/// Checks what every summary must satisfy: the IPS checklist, the patient's signature
/// (and that tampering breaks it), and the stored resources included byte-for-byte.
async fn check_summary(vault: &Vault, bundle: &Value) -> anyhow::Result<()> {
    let problems = ips::check(bundle);
    ensure!(problems.is_empty(), "IPS checklist: {problems:#?}");
    for code in REQUIRED {
        ensure!(section(bundle, code).is_some(), "required section {code}");
    }
    let composition = &bundle["entry"][0]["resource"];
    assert_eq!(composition["type"]["coding"][0]["code"], "60591-5");
    let subject = composition["subject"]["reference"]
        .as_str()
        .context("subject")?;
    assert!(subject.starts_with("Patient/"), "{subject}");

    // Signed by the patient's key, over the canonical form (reformatting keeps it).
    let key = vault.signing.verifying_key();
    ips::verify(bundle, &key)?;
    assert_eq!(ips::signer(bundle)?, key);
    let reparsed: Value = serde_json::from_str(&serde_json::to_string_pretty(bundle)?)?;
    ips::verify(&reparsed, &key)?;
    assert_eq!(bundle["signature"]["sigFormat"], "application/jose");

    // Tampering breaks it: a changed narrative, a dropped entry, a changed date.
    let mut changed = bundle.clone();
    changed["entry"][0]["resource"]["section"][0]["text"]["div"] =
        json!("<div xmlns=\"http://www.w3.org/1999/xhtml\">nothing to see</div>");
    assert!(matches!(
        ips::verify(&changed, &key),
        Err(SignatureError::Mismatch)
    ));
    let mut dropped = bundle.clone();
    if let Some(entries) = dropped["entry"].as_array_mut() {
        entries.pop();
    }
    assert!(matches!(
        ips::verify(&dropped, &key),
        Err(SignatureError::Mismatch)
    ));
    let mut redated = bundle.clone();
    redated["timestamp"] = json!("2000-01-01T00:00:00Z");
    assert!(matches!(
        ips::verify(&redated, &key),
        Err(SignatureError::Mismatch)
    ));

    // Every included resource is the stored one, byte-for-byte.
    for (name, resource) in resources(bundle) {
        if name.starts_with("Composition/") {
            continue;
        }
        let (t, id) = name.split_once('/').context("reference")?;
        let stored = vault.read(t, id).await?;
        assert_eq!(
            serde_json::to_string(resource)?,
            serde_json::to_string(&stored)?,
            "{name} differs from the stored resource"
        );
    }
    Ok(())
}

/// Validates `bundle` with the `fhir.resources` R4B models (skipped, loudly, when
/// Python or the package is missing; a failure when `CI` is set).
fn validate_r4b(bundle: &Value, dir: &Path) -> anyhow::Result<()> {
    let works = Command::new("python3")
        .args(["-c", "import fhir.resources.R4B"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        invariant_test_support::missing_tool(
            "python3 with fhir.resources",
            "pip install fhir.resources==8.3.0",
        );
        return Ok(());
    }
    let file = dir.join("summary.json");
    std::fs::write(&file, serde_json::to_vec_pretty(bundle)?)?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/validate_r4b.py");
    let out = Command::new("python3").arg(script).arg(&file).output()?;
    ensure!(
        out.status.success(),
        "fhir.resources R4B refused the summary:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(out.stdout.trim_ascii())?;
    assert_eq!(
        seen["entries"].as_u64(),
        bundle["entry"].as_array().map(|e| e.len() as u64)
    );
    Ok(())
}

/// Verifies `bundle`'s signature with `key` through Python's `joserfc` and `rfc8785`
/// (`tests/clients/verify_jws.py`), and that a changed Bundle fails there too (skipped,
/// loudly, when they are missing; a failure when `CI` is set).
fn verify_in_python(bundle: &Value, key: [u8; 32], dir: &Path) -> anyhow::Result<()> {
    let works = Command::new("python3")
        .args(["-c", "import joserfc, rfc8785"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        invariant_test_support::missing_tool(
            "python3 with joserfc and rfc8785",
            "pip install joserfc==1.6.5 rfc8785==0.1.4",
        );
        return Ok(());
    }
    let x = hex::encode(key);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/verify_jws.py");
    let run = |bundle: &Value, name: &str| -> anyhow::Result<std::process::Output> {
        let file = dir.join(name);
        std::fs::write(&file, serde_json::to_vec_pretty(bundle)?)?;
        Ok(Command::new("python3")
            .arg(&script)
            .arg(&file)
            .arg(&x)
            .output()?)
    };
    let out = run(bundle, "signed.json")?;
    ensure!(
        out.status.success(),
        "joserfc did not verify the summary:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(out.stdout.trim_ascii())?;
    assert_eq!(seen["alg"], "Ed25519");
    let mut changed = bundle.clone();
    changed["entry"][0]["resource"]["title"] = json!("Someone else's summary");
    ensure!(
        !run(&changed, "changed.json")?.status.success(),
        "joserfc verified a changed summary"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixture_patient_summary_passes_the_checklist_and_is_signed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = TestNet::start(3, true).await?;
    let (_keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    let base = format!("ehi://{}", vault.slot());

    assert_eq!(ips::the_patient(&vault).await?, PATIENT);
    let queued = vault.audit_queue().len();
    let bundle = Reads::patient(&vault, "a test")
        .patient_summary(PATIENT, &base)
        .await?;
    assert_eq!(
        vault.audit_queue().len(),
        queued + 1,
        "the summary is one audited read"
    );
    check_summary(&vault, &bundle).await?;

    // The fixture's records, each in its section.
    let by_type = |t: &str| -> BTreeSet<String> {
        resources(&bundle)
            .into_keys()
            .filter(|k| k.starts_with(&format!("{t}/")))
            .collect()
    };
    assert_eq!(section_refs(&bundle, "11450-4"), by_type("Condition"));
    assert_eq!(
        section_refs(&bundle, "48765-2"),
        by_type("AllergyIntolerance")
    );
    assert_eq!(
        section_refs(&bundle, "10160-0"),
        by_type("MedicationRequest")
    );
    assert_eq!(section_refs(&bundle, "11369-6"), by_type("Immunization"));
    // Body height (vital-signs category) and body weight (a vital signs LOINC code).
    assert_eq!(section_refs(&bundle, "8716-3").len(), 2);
    assert_eq!(by_type("Patient").len(), 1);
    // What the entries reference came along: the encounter and the practitioner.
    assert_eq!(by_type("Encounter").len(), 1);
    assert_eq!(by_type("Practitioner").len(), 1);
    // The claim is in no IPS section and nothing included references it.
    assert!(by_type("Claim").is_empty());
    // Narrative from the resources' own displays, numbers as written.
    let problems = section(&bundle, "11450-4").context("problems")?;
    let div = problems["text"]["div"].as_str().context("div")?;
    assert!(div.contains("Diabetes mellitus type 2"), "{div}");
    let vitals = section(&bundle, "8716-3").context("vitals")?;
    let div = vitals["text"]["div"].as_str().context("div")?;
    assert!(div.contains("163.7 cm") && div.contains("71.3 kg"), "{div}");
    // Empty recommended sections say so.
    let procedures = section(&bundle, "47519-4").context("procedures")?;
    assert_eq!(
        procedures["emptyReason"]["coding"][0]["code"],
        "unavailable"
    );
    assert!(procedures.get("entry").is_none());

    validate_r4b(&bundle, dir.path())?;
    verify_in_python(
        &bundle,
        vault.signing.verifying_key().to_bytes(),
        dir.path(),
    )?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patient_without_records_gets_empty_required_sections() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = TestNet::start(3, true).await?;
    let (_keystore, _path, vault) = net.new_vault(dir.path()).await?;
    vault
        .import(vec![input(
            "p.json",
            &json!({"resourceType": "Patient", "id": "lonely",
                    "name": [{"text": "Ada <Lovelace> & Co"}]}),
        )])
        .await?;
    let bundle = ips::summary(&vault, "lonely", "http://127.0.0.1:1/fhir/").await?;
    assert_eq!(
        bundle["entry"][1]["fullUrl"],
        "http://127.0.0.1:1/fhir/Patient/lonely"
    );
    check_summary(&vault, &bundle).await?;
    for code in REQUIRED {
        let s = section(&bundle, code).context("required section")?;
        assert!(s.get("emptyReason").is_some(), "{code}: {s}");
        assert!(
            s["text"]["div"]
                .as_str()
                .is_some_and(|d| d.contains("No information"))
        );
    }
    // Optional sections without data are left out.
    assert!(section(&bundle, "11348-0").is_none());
    // The name is escaped in the narrative.
    let div = bundle["entry"][0]["resource"]["text"]["div"]
        .as_str()
        .context("div")?;
    assert!(div.contains("Ada &lt;Lovelace&gt; &amp; Co"), "{div}");
    assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(2));

    // An unknown patient is a not-found read.
    assert!(matches!(
        ips::summary(&vault, "nobody", "http://127.0.0.1:1/fhir").await,
        Err(ehi_layer::EhiError::NotFound(_))
    ));
    validate_r4b(&bundle, dir.path())?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_answers_patient_summary_to_the_patient_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = TestNet::start(3, true).await?;
    let (keystore, _path, vault) = net.new_patient_vault(dir.path()).await?;
    let vault = Arc::new(vault);
    let key = TokenKey::from_keystore(&keystore);
    let now = ehi_layer::time::now_ms() / 1000;
    let server = serve::start(vault.clone(), key.clone(), "127.0.0.1:0".parse()?).await?;
    let base = server.url().to_string();
    let token = key.mint_patient(now, 3600)?;
    let http = reqwest::Client::new();

    let (status, bundle) =
        common::get_json(&http, &format!("{base}/Patient/{PATIENT}/$summary"), &token).await?;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    check_summary(&vault, &bundle).await?;
    let full_url = bundle["entry"][1]["fullUrl"].as_str().context("fullUrl")?;
    assert_eq!(full_url, format!("{base}/Patient/{PATIENT}"));

    // By identifier, and as a POST with an empty Parameters body.
    let (status, by_id) = common::get_json(
        &http,
        &format!("{base}/Patient/$summary?identifier=http://hospital.example/mrn|MRN-77120934"),
        &token,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{by_id}");
    assert_eq!(
        by_id["entry"][0]["resource"]["subject"]["reference"],
        format!("Patient/{PATIENT}")
    );
    let (status, unknown) = common::get_json(
        &http,
        &format!("{base}/Patient/$summary?identifier=nobody"),
        &token,
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
    let resp = http
        .post(format!("{base}/Patient/{PATIENT}/$summary"))
        .bearer_auth(&token)
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType": "Parameters"}"#)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let posted: Value = serde_json::from_str(&resp.text().await?)?;
    ensure!(ips::check(&posted).is_empty());
    ips::verify(&posted, &vault.signing.verifying_key())?;

    // Unknown patient; an app's token.
    let (status, _) =
        common::get_json(&http, &format!("{base}/Patient/nobody/$summary"), &token).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let info = grant_to(
        &vault,
        "Reader",
        &[Scope::Clinical, Scope::Medications],
        Access::Read,
        3_600_000,
    )
    .await?;
    server.refresh().await?;
    let (app_token, _) = key.mint_grant(&info, None, now, 600)?;
    let (status, outcome) = common::get_json(
        &http,
        &format!("{base}/Patient/{PATIENT}/$summary"),
        &app_token,
    )
    .await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{outcome}");

    // The capability statement names the operation.
    let (_, cap) = common::get_json(&http, &format!("{base}/metadata"), &token).await?;
    assert!(cap.to_string().contains("OperationDefinition/summary"));
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synthea_patient_summary_passes_the_checklist_and_r4b() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(files) = common::synthea(1, 42, &dir.path().join("synthea"))? else {
        return Ok(());
    };
    let net = TestNet::start(3, true).await?;
    let (_keystore, _path, vault) = net.new_vault(&dir.path().join("v")).await?;
    let inputs = files
        .iter()
        .map(|f| {
            Ok(ehi_layer::Input::from_bytes(
                f.display().to_string(),
                std::fs::read(f)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    vault.import(inputs).await?;
    let patient = ips::the_patient(&vault).await?;
    let bundle = ips::summary(&vault, &patient, &format!("ehi://{}", vault.slot())).await?;
    check_summary(&vault, &bundle).await?;

    // Synthea's active conditions are problems, its immunizations and procedures are
    // listed, and vital signs are one (the latest) per code.
    assert!(!section_refs(&bundle, "11450-4").is_empty());
    assert!(!section_refs(&bundle, "11369-6").is_empty());
    assert!(!section_refs(&bundle, "47519-4").is_empty());
    let vitals = section_refs(&bundle, "8716-3");
    let all = resources(&bundle);
    let mut codes = BTreeSet::new();
    for r in &vitals {
        let obs = all.get(r).context("vital sign included")?;
        let code = obs["code"]["coding"][0]["code"].to_string();
        assert!(codes.insert(code), "two vital signs of one code");
    }
    assert!(!vitals.is_empty());
    eprintln!(
        "Synthea summary: {} entries, {} sections",
        all.len(),
        bundle["entry"][0]["resource"]["section"]
            .as_array()
            .map_or(0, Vec::len)
    );
    validate_r4b(&bundle, dir.path())?;
    verify_in_python(
        &bundle,
        vault.signing.verifying_key().to_bytes(),
        dir.path(),
    )?;
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_summary_writes_verifies_and_audits() -> anyhow::Result<()> {
    use common::cli::{ehi, init_with_patient, ok, text};
    let home = tempfile::tempdir()?;
    let net = TestNet::start(3, true).await?;
    let broker = net.broker_url.clone();
    init_with_patient(home.path(), &broker).await?;

    // To stdout, and to a file.
    let out = ehi(home.path(), &broker, ["summary"]).await?;
    ok(&out)?;
    let printed: Value = serde_json::from_slice(&out.stdout)?;
    let problems = ips::check(&printed);
    ensure!(problems.is_empty(), "{problems:#?}");
    let file = home.path().join("ips.json");
    let out = ehi(
        home.path(),
        &broker,
        ["summary", "--patient", PATIENT, "--out"]
            .map(String::from)
            .into_iter()
            .chain([file.display().to_string()]),
    )
    .await?;
    ok(&out)?;
    assert!(
        text(&out.stderr).contains("signed"),
        "{}",
        text(&out.stderr)
    );
    let written: Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    ensure!(ips::check(&written).is_empty());
    assert!(
        written["entry"][0]["fullUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with("ehi://")),
        "{}",
        written["entry"][0]["fullUrl"]
    );

    // Verified with the vault's key; a changed file is refused.
    let out = ehi(
        home.path(),
        &broker,
        [
            "summary".to_string(),
            "--verify".into(),
            file.display().to_string(),
        ],
    )
    .await?;
    ok(&out)?;
    let mut tampered = written.clone();
    tampered["entry"][1]["resource"]["birthDate"] = json!("1971-08-29");
    let bad = home.path().join("tampered.json");
    std::fs::write(&bad, serde_json::to_vec_pretty(&tampered)?)?;
    let out = ehi(
        home.path(),
        &broker,
        [
            "summary".to_string(),
            "--verify".into(),
            bad.display().to_string(),
        ],
    )
    .await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not verify"),
        "{}",
        text(&out.stderr)
    );

    // Each summary is a read in the audit log.
    let out = ehi(home.path(), &broker, ["audit"]).await?;
    ok(&out)?;
    let audit = text(&out.stdout);
    assert_eq!(
        audit
            .matches(&format!("Patient/{PATIENT}/$summary"))
            .count(),
        2,
        "{audit}"
    );
    net.stop().await;
    Ok(())
}
