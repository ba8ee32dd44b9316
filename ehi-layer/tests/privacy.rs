//! "Storage learns nothing": after importing a hand-written patient (and, when the
//! `synthea` command is installed, a generated one), every file under every server's
//! data directory — blobs, slot records, broker registrations, distributor pins — is
//! scanned for every name, identifier, code, date, id, resource type and text of the
//! input (strings of at least 6 characters): there must be no hit.

mod common;

use ehi_layer::share;
use std::collections::HashSet;

use common::{TestNet, input, needles, patient_bundle};
use ehi_layer::Input;
use serde_json::Value;

/// Needles are cut to this many bytes (a leaked long string leaks its prefix too).
const MAX_NEEDLE: usize = 48;
const MIN_NEEDLE: usize = 6;

/// Finds needles inside `data`: every run of printable ASCII is checked for every
/// needle-sized substring.
struct Scanner {
    needles: HashSet<Vec<u8>>,
    lengths: Vec<usize>,
}

impl Scanner {
    fn new(strings: &[String]) -> Scanner {
        let needles: HashSet<Vec<u8>> = strings
            .iter()
            .filter(|s| s.is_ascii())
            .map(|s| s.as_bytes()[..s.len().min(MAX_NEEDLE)].to_vec())
            .collect();
        let mut lengths: Vec<usize> = needles.iter().map(Vec::len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        Scanner { needles, lengths }
    }

    fn hits(&self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for run in data.split(|b| !(0x20..0x7f).contains(b)) {
            if run.len() < MIN_NEEDLE {
                continue;
            }
            for start in 0..run.len() {
                for &len in &self.lengths {
                    let Some(window) = run.get(start..start + len) else {
                        break;
                    };
                    if self.needles.contains(window) {
                        out.push(String::from_utf8_lossy(window).into_owned());
                    }
                }
            }
        }
        out
    }
}

#[test]
fn the_scanner_finds_what_is_there() {
    let scanner = Scanner::new(&["Quixotebaum".to_string(), "8302-2".to_string()]);
    assert_eq!(
        scanner.hits(b"\x00\x01xxQuixotebaumyy\xff"),
        ["Quixotebaum"]
    );
    assert_eq!(scanner.hits(b"code 8302-2;"), ["8302-2"]);
    assert!(scanner.hits(b"Quixoteba\x00um 8302-").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_learns_nothing() -> anyhow::Result<()> {
    let net = TestNet::start(3, true).await?;
    let dir = tempfile::tempdir()?;
    let (_keystore, _path, vault) = net.new_vault(&dir.path().join("device")).await?;

    let mut documents: Vec<Value> = vec![patient_bundle()];
    let mut inputs = vec![input("patient.json", &patient_bundle())];
    let generated = dir.path().join("synthea");
    if let Some(files) = common::synthea(1, 7, &generated)? {
        for file in files {
            let bytes = std::fs::read(&file)?;
            documents.push(serde_json::from_slice(&bytes)?);
            inputs.push(Input::from_bytes(file.display().to_string(), bytes));
        }
    }
    let report = vault
        .import_with(inputs, &common::household(), None)
        .await?;
    assert!(report.created >= 10, "{report:?}");
    // Searches and reads do not write plaintext anywhere either.
    vault.search("Observation", "code=8302-2").await?;
    ehi_layer::export::bundle(&vault, true).await?;

    let mut strings = Vec::new();
    for document in &documents {
        strings.extend(needles(document, MIN_NEEDLE));
    }
    strings.sort();
    strings.dedup();
    for expected in [
        "Quixotebaum",
        "Zelphina",
        "MRN-77120934",
        "999-41-8823",
        "8302-2",
        "44054006",
        "1961-08-29",
        "2019-03-14T09:31:07-04:00",
        "0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b",
        "Observation",
        "Patient",
        "Wintergreen Hollow",
    ] {
        assert!(
            strings.iter().any(|s| s.contains(expected)),
            "{expected} is not among the needles"
        );
    }
    let scanner = Scanner::new(&strings);
    eprintln!("{} needles", scanner.needles.len());

    // Let the distributor copy blocks around first, so its copies are scanned too.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let files = net.data_file_contents()?;
    let mut scanned = 0u64;
    let mut leaks = Vec::new();
    for (server, path, data) in &files {
        scanned += data.len() as u64;
        for hit in scanner.hits(data) {
            leaks.push(format!("{server}: {} contains {hit:?}", path.display()));
        }
    }
    eprintln!("scanned {} files, {scanned} bytes", files.len());
    assert!(net.blob_files().len() > 10, "the blobs were scanned");
    assert!(
        leaks.is_empty(),
        "plaintext reached the servers:\n{}",
        leaks.join("\n")
    );
    net.stop().await;
    Ok(())
}

/// With consent requests (approved and denied), a contribution accepted, app audit
/// reports merged, no server data directory holds an app name, a purpose, a scope
/// name, a note, the text of a contributed resource, a resource id, an app key, or the
/// FHIR types and codes of what the layer wrote (Consent, Provenance, AuditEvent).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_see_nothing_of_requests_contributions_and_app_audit() -> anyhow::Result<()> {
    use ehi_layer::consent::{self, ConsentAsk, Decision};
    use ehi_layer::{Access, AppKeystore, AppSession, Network, Scope};
    use serde_json::json;

    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (_keystore, _path, vault) = net.new_patient_vault(&dir.path().join("device")).await?;
    let card = share::inbox_card(&vault).await?;
    let anet = Network::connect(&net.broker_url, Some(card.slots_server)).await?;

    // Approved: contribute access to medications, purpose research.
    let writer = AppKeystore::generate("Quillfeather Research Clinic")?;
    let pending = consent::send_request(
        &anet,
        &writer,
        &card,
        &ConsentAsk {
            scopes: vec![Scope::Medications],
            access: Access::Contribute,
            purpose: "HRESCH".into(),
            duration_ms: 86_400_000,
            note: "Zanzibar trial enrolment note".into(),
        },
    )
    .await?;
    share::approve_request(&vault, &pending.id).await?;
    let Decision::Approved { ticket, .. } = consent::poll(&anet, &writer, &pending).await? else {
        anyhow::bail!("not approved");
    };
    let session = AppSession::open(anet.clone(), &writer, &ticket).await?;
    let (contribution, _) = session
        .contribute(
            &writer,
            vec![
                json!({"resourceType": "MedicationStatement", "id": "florabunda-med-19",
                        "status": "active", "subject": {"reference": "Patient/0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b"},
                        "medicationCodeableConcept": {"text": "Florabunda contributed tincture"}}),
            ],
            "Pendlewick dosage remark",
        )
        .await?;
    share::accept_contribution(&vault, &contribution).await?;
    session
        .report_use(
            &writer,
            "read",
            &["MedicationRequest/velvetrose-read-4411".into()],
        )
        .await?;
    assert_eq!(share::merge_app_audit(&vault).await?.merged, 1);

    // Denied: another app, another purpose.
    let denied = AppKeystore::generate("Wobblesworth Marketing")?;
    let pending = consent::send_request(
        &anet,
        &denied,
        &card,
        &ConsentAsk {
            scopes: vec![Scope::Financial],
            access: Access::Read,
            purpose: "HMARKT".into(),
            duration_ms: 86_400_000,
            note: "Glimmerdale promotion".into(),
        },
    )
    .await?;
    share::deny_request(&vault, &pending.id, "Thornquist refusal").await?;
    assert!(matches!(
        consent::poll(&anet, &denied, &pending).await?,
        Decision::Denied { .. }
    ));
    assert!(vault.audit_verify().await? >= 6);

    let mut strings: Vec<String> = [
        "Quillfeather Research Clinic",
        "Wobblesworth Marketing",
        "HRESCH",
        "HMARKT",
        "Zanzibar trial",
        "Glimmerdale",
        "Thornquist",
        "Pendlewick",
        "florabunda-med-19",
        "Florabunda contributed",
        "velvetrose-read-4411",
        "MedicationStatement",
        "medications",
        "financial",
        "contribute",
        "Consent",
        "Provenance",
        "AuditEvent",
        "patient-privacy",
        "59284-0",
        "app-read",
        "ehi-consent",
        "ehi-grant-channel",
        "Quixotebaum",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for app in [&writer, &denied] {
        strings.push(app.card().hpke_key.clone());
        strings.push(app.card().signing_key.clone());
    }
    strings.push(card.hpke_key.clone());
    strings.push(ticket.grant.clone());
    let scanner = Scanner::new(&strings);
    let raw_keys: Vec<Vec<u8>> = [&writer, &denied]
        .iter()
        .flat_map(|a| [a.card().hpke_key, a.card().signing_key])
        .chain(std::iter::once(card.hpke_key.clone()))
        .map(hex::decode)
        .collect::<Result<_, _>>()?;
    let mut leaks = Vec::new();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    for (server, path, data) in net.data_file_contents()? {
        for hit in scanner.hits(&data) {
            leaks.push(format!("{server}: {} contains {hit:?}", path.display()));
        }
        for key in &raw_keys {
            if data.windows(key.len()).any(|w| w == key.as_slice()) {
                leaks.push(format!(
                    "{server}: {} contains a raw app key",
                    path.display()
                ));
            }
        }
    }
    assert!(net.blob_files().len() > 10);
    assert!(
        leaks.is_empty(),
        "plaintext reached the servers:\n{}",
        leaks.join("\n")
    );
    net.stop().await;
    Ok(())
}
