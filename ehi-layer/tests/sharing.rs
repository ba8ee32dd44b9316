//! Sharing: grants to apps, what an app can and cannot decrypt, revocation (with and
//! without re-encryption), expiry, and what the servers see of grants.

mod common;

use common::{PASSPHRASE, TestNet, input};
use ehi_layer::grant::GrantRequest;
use ehi_layer::share;
use ehi_layer::{Access, AppKeystore, AppSession, EhiError, GrantTicket, KdfParams, Scope, Vault};
use serde_json::{Value, json};

const DAY_MS: u64 = 86_400_000;

fn request(app: &AppKeystore, scopes: &[Scope], duration_ms: u64) -> anyhow::Result<GrantRequest> {
    Ok(GrantRequest {
        app: app.card().verify()?,
        scopes: scopes.to_vec(),
        access: Access::Read,
        duration_ms,
        purpose: "TREAT".into(),
    })
}

fn medication_request(id: &str, code: &str) -> Value {
    json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
        "resourceType": "MedicationRequest", "id": id, "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}]},
        "subject": {"reference": "Patient/0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b"}}}]})
}

async fn session(
    net: &TestNet,
    app: &AppKeystore,
    ticket: &GrantTicket,
) -> ehi_layer::Result<AppSession> {
    let network = ehi_layer::Network::connect(&net.broker_url, Some(ticket.slots_server)).await?;
    AppSession::open(network, app, ticket).await
}

async fn setup() -> anyhow::Result<(TestNet, tempfile::TempDir, Vault)> {
    let net = TestNet::start(2, true).await?;
    let dir = tempfile::tempdir()?;
    let (_keystore, _path, vault) = net.new_patient_vault(&dir.path().join("device")).await?;
    Ok((net, dir, vault))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_reads_only_granted_scopes() -> anyhow::Result<()> {
    let (net, dir, vault) = setup().await?;
    // The app's own keystore round-trips.
    let app_path = dir.path().join("app.json");
    AppKeystore::generate("MedTracker")?.save(&app_path, PASSPHRASE, KdfParams::insecure_fast())?;
    let app = AppKeystore::open(&app_path, PASSPHRASE)?;

    let (info, ticket) =
        share::grant(&vault, request(&app, &[Scope::Medications], 30 * DAY_MS)?).await?;
    assert_eq!(info.scopes, [Scope::Medications]);
    assert!(
        info.smart_scopes
            .contains(&"patient/MedicationRequest.rs".to_string())
    );
    assert_eq!(share::grants(&vault).await.len(), 1);
    // The ticket travels as JSON.
    let ticket = GrantTicket::parse(&serde_json::to_vec(&ticket)?)?;

    let mut s = session(&net, &app, &ticket).await?;
    assert_eq!(s.scopes(), [Scope::Medications]);
    assert_eq!(s.purpose(), "TREAT");
    let listed = s.list()?;
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|r| r.starts_with("Medication")),
        "{listed:?}"
    );
    let hits = s.search("MedicationRequest", "").await?;
    assert_eq!(hits.total, listed.len());
    let first = listed[0]
        .split_once('/')
        .map(|(t, i)| (t.to_string(), i.to_string()));
    let (t, id) = first.ok_or_else(|| anyhow::anyhow!("no reference"))?;
    let resource = s.read(&t, &id).await?;
    assert_eq!(resource["resourceType"], "MedicationRequest");
    let bundle = s.export_bundle().await?;
    assert_eq!(bundle["total"], listed.len());

    // Other scopes: refused by the library...
    let patient_id = vault
        .list()
        .await
        .into_iter()
        .find(|r| r.starts_with("Patient/"))
        .ok_or_else(|| anyhow::anyhow!("no patient"))?;
    let (_, pid) = patient_id
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("ref"))?;
    assert!(matches!(
        s.read("Patient", pid).await,
        Err(EhiError::NotGranted(_))
    ));
    assert!(matches!(
        s.search("Observation", "").await,
        Err(EhiError::NotGranted(_))
    ));
    // ...and, more to the point, undecryptable with every key the grant holds.
    let status = vault.status().await?;
    for scope in &status.scopes {
        let opened = s.try_open_slot(scope.slot).await;
        if scope.scope == Scope::Medications {
            assert!(opened.is_ok());
        } else {
            assert!(opened.is_err(), "the grant opens scope {}", scope.scope);
        }
    }
    // Another app cannot open this grant.
    let other = AppKeystore::generate("Other")?;
    assert!(session(&net, &other, &ticket).await.is_err());
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_rotates_and_remaining_grantees_keep_access() -> anyhow::Result<()> {
    let (net, _dir, vault) = setup().await?;
    let revoked_app = AppKeystore::generate("Revoked")?;
    let kept_app = AppKeystore::generate("Kept")?;
    let (gone, gone_ticket) = share::grant(
        &vault,
        request(&revoked_app, &[Scope::Medications], DAY_MS)?,
    )
    .await?;
    let (_, kept_ticket) = share::grant(
        &vault,
        request(&kept_app, &[Scope::Medications, Scope::Allergies], DAY_MS)?,
    )
    .await?;
    let mut stale = session(&net, &revoked_app, &gone_ticket).await?;
    let before = stale.list()?;
    let epoch_before = vault
        .status()
        .await?
        .scopes
        .iter()
        .find(|s| s.scope == Scope::Medications)
        .map(|s| s.epoch);

    let report = share::revoke(&vault, &gone.id, false).await?;
    assert_eq!(report.rotated.len(), 1);
    assert_eq!(report.resealed.len(), 1);
    assert_eq!(share::grants(&vault).await.len(), 1);
    let epoch_after = vault
        .status()
        .await?
        .scopes
        .iter()
        .find(|s| s.scope == Scope::Medications)
        .map(|s| s.epoch);
    assert_ne!(epoch_before, epoch_after);
    vault
        .import(vec![input(
            "new.json",
            &medication_request("after-revoke", "197361"),
        )])
        .await?;

    // The revoked app: its grant slot is a tombstone, and with the keys it kept it can
    // no longer open the scope (new epoch), so it cannot see the new resource.
    assert!(matches!(
        session(&net, &revoked_app, &gone_ticket).await,
        Err(EhiError::Revoked { .. })
    ));
    assert!(matches!(
        stale.refresh().await,
        Err(EhiError::Revoked { .. })
    ));
    // What it read before stays read (revocation cannot take it back): its old manifest
    // still lists only the old resources.
    assert!(!before.iter().any(|r| r.contains("after-revoke")));

    // The remaining grantee reads old and new data.
    let mut kept = session(&net, &kept_app, &kept_ticket).await?;
    let resource = kept.read("MedicationRequest", "after-revoke").await?;
    assert_eq!(resource["id"], "after-revoke");
    for reference in &before {
        let (t, id) = reference
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("ref"))?;
        kept.read(t, id).await?;
    }
    assert!(kept.search("AllergyIntolerance", "").await?.total >= 1);
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_with_reencrypt_moves_old_blobs_to_the_new_key() -> anyhow::Result<()> {
    let (net, _dir, vault) = setup().await?;
    let revoked_app = AppKeystore::generate("Revoked")?;
    let kept_app = AppKeystore::generate("Kept")?;
    let (gone, gone_ticket) = share::grant(
        &vault,
        request(&revoked_app, &[Scope::Medications], DAY_MS)?,
    )
    .await?;
    let (_, kept_ticket) =
        share::grant(&vault, request(&kept_app, &[Scope::Medications], DAY_MS)?).await?;
    let blocks_before = vault.blocks().await;
    let report = share::revoke(&vault, &gone.id, true).await?;
    assert!(report.reencrypted >= 1, "{report:?}");
    assert!(report.unpinned >= report.reencrypted);
    let blocks_after = vault.blocks().await;
    let dropped = blocks_before
        .iter()
        .filter(|b| !blocks_after.contains(b))
        .count();
    assert!(dropped >= report.reencrypted, "old blobs left the vault");

    assert!(session(&net, &revoked_app, &gone_ticket).await.is_err());
    let kept = session(&net, &kept_app, &kept_ticket).await?;
    for reference in kept.list()? {
        let (t, id) = reference
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("ref"))?;
        kept.read(t, id).await?;
    }
    // The patient still reads everything.
    for reference in vault.list().await {
        let (t, id) = reference
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("ref"))?;
        vault.read(t, id).await?;
    }
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_grant_is_refused_and_rotated_at_next_write() -> anyhow::Result<()> {
    let (net, _dir, vault) = setup().await?;
    let app = AppKeystore::generate("Brief")?;
    let (_, ticket) = share::grant(&vault, request(&app, &[Scope::Allergies], 300)?).await?;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(share::grants(&vault).await[0].expired);
    assert!(matches!(
        session(&net, &app, &ticket).await,
        Err(EhiError::GrantExpired { .. })
    ));
    let epoch = |status: &ehi_layer::Status| {
        status
            .scopes
            .iter()
            .find(|s| s.scope == Scope::Allergies)
            .map(|s| s.epoch)
    };
    let before = epoch(&vault.status().await?);
    vault
        .import(vec![input("new.json", &medication_request("later", "1"))])
        .await?;
    assert!(share::grants(&vault).await.is_empty());
    assert_ne!(before, epoch(&vault.status().await?));
    // Invalid requests are refused.
    let mut bad = request(&app, &[Scope::Allergies], DAY_MS)?;
    bad.purpose = "FUN".into();
    assert!(share::grant(&vault, bad).await.is_err());
    assert!(
        share::grant(&vault, request(&app, &[], DAY_MS)?)
            .await
            .is_err()
    );
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_see_no_grant_contents() -> anyhow::Result<()> {
    let (net, _dir, vault) = setup().await?;
    let app = AppKeystore::generate("Quixotic Pharmacy Reader")?;
    let (info, ticket) = share::grant(
        &vault,
        request(&app, &[Scope::Medications, Scope::Allergies], DAY_MS)?,
    )
    .await?;
    session(&net, &app, &ticket).await?;
    share::revoke(&vault, &info.id, false).await?;
    assert!(vault.audit_verify().await? >= 3);
    let needles: Vec<Vec<u8>> = [
        "Quixotic Pharmacy Reader".to_string(),
        "medications".to_string(),
        "Medications".to_string(),
        "allergies".to_string(),
        "TREAT".to_string(),
        info.id.clone(),
        app.card().hpke_key.clone(),
        "Quixotebaum".to_string(),
        "MedicationRequest".to_string(),
        // Audit entries (grant and revoke were logged).
        "AuditEvent".to_string(),
        "Patient Record".to_string(),
        "110110".to_string(),
        "ehi-audit".to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let hpke_raw = hex::decode(&app.card().hpke_key)?;
    let mut leaks = Vec::new();
    for (server, path, data) in net.data_file_contents()? {
        for needle in needles.iter().chain(std::iter::once(&hpke_raw)) {
            if data.windows(needle.len()).any(|w| w == needle.as_slice()) {
                leaks.push(format!(
                    "{server}: {} has {:?}",
                    path.display(),
                    String::from_utf8_lossy(needle)
                ));
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    net.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_log_chains_verifies_and_detects_tampering() -> anyhow::Result<()> {
    use ehi_layer::audit::{AuditAction, AuditRecord, verify_chain};
    let (net, dir, vault) = setup().await?;
    let app = AppKeystore::generate("Auditor")?;
    let (info, _) = share::grant(&vault, request(&app, &[Scope::Medications], DAY_MS)?).await?;
    share::revoke(&vault, &info.id, false).await?;
    vault
        .audit(AuditRecord::new(AuditAction::Export, "bundle").with_entities(vec!["Bundle".into()]))
        .await?;
    let entries = vault.audit_entries().await?;
    let actions: Vec<String> = entries.iter().filter_map(|e| e.action()).collect();
    assert_eq!(actions, ["import", "grant", "revoke", "export"]);
    let grant_event = entries[1].event()?;
    assert_eq!(grant_event["resourceType"], "AuditEvent");
    assert_eq!(
        grant_event["purposeOfEvent"][0]["coding"][0]["code"],
        "TREAT"
    );
    assert_eq!(vault.audit_verify().await?, 4);

    // Another device sees the same log (walked from the root's audit head).
    let keystore =
        ehi_layer::Keystore::open(&dir.path().join("device").join("keystore.json"), PASSPHRASE)?;
    let other = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await?;
    assert_eq!(other.audit_entries().await?, entries);
    other
        .import(vec![input("n.json", &medication_request("x", "2"))])
        .await?;
    assert_eq!(vault.audit_verify().await?, 5);

    let entries = vault.audit_entries().await?;
    let trusted = [keystore_key(&entries)];
    assert_eq!(verify_chain(&entries, &trusted), Ok(5));
    let first_bad =
        |bad: &[ehi_layer::audit::AuditEntry]| verify_chain(bad, &trusted).map_err(|b| b.index);
    let mut bad = entries.clone();
    bad[3].signature[5] ^= 0x40;
    assert_eq!(first_bad(&bad), Err(3));
    let mut bad = entries.clone();
    bad[2].event = bad[2].event.replace("revoked", "kept");
    assert_eq!(first_bad(&bad), Err(2));
    let mut bad = entries.clone();
    bad.swap(1, 2);
    assert_eq!(first_bad(&bad), Err(1));
    let mut bad = entries.clone();
    bad.remove(0);
    assert_eq!(first_bad(&bad), Err(0));
    net.stop().await;
    Ok(())
}

/// The patient's key, as the writer of the first entry (the test checks the rest
/// against it).
fn keystore_key(entries: &[ehi_layer::audit::AuditEntry]) -> [u8; 32] {
    entries.first().map(|e| e.writer).unwrap_or([0; 32])
}
