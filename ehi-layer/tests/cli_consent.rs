//! The consent and contribution commands of the `ehi` binary end to end: `requests`
//! (and `requests card`), `approve`, `deny`, `inbox`, `accept`, `reject`, "last use"
//! in `grants`, and the rollback refusal — with the app's side through the library.

mod common;

use common::TestNet;
use common::cli::{ehi, init_with_patient, text};
use ehi_layer::consent::{self, ConsentAsk, Decision, InboxCard};
use ehi_layer::{Access, AppKeystore, AppSession, GrantTicket, Network, Scope};
use serde_json::{Value, json};

fn ask(access: Access, purpose: &str) -> ConsentAsk {
    ConsentAsk {
        scopes: vec![Scope::Medications],
        access,
        purpose: purpose.into(),
        duration_ms: 7 * 86_400_000,
        note: "please".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_decides_requests_and_reviews_contributions() -> anyhow::Result<()> {
    let net = TestNet::start(2, true).await?;
    let home = tempfile::tempdir()?;
    let broker = net.broker_url.clone();
    let run = |args: &[&str]| {
        ehi(
            home.path(),
            &broker,
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    };

    init_with_patient(home.path(), &broker).await?;

    // No inbox yet: nothing pending.
    let out = run(&["requests"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(list["pending"].as_array().map(Vec::len), Some(0));

    let out = run(&["requests", "card"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let card = InboxCard::parse(&out.stdout)?;
    let anet = Network::connect(&broker, Some(card.slots_server)).await?;

    // An app asks for contribute access; the patient approves on the command line.
    let app = AppKeystore::generate("ClinicBridge")?;
    let pending =
        consent::send_request(&anet, &app, &card, &ask(Access::Contribute, "TREAT")).await?;
    let out = run(&["requests", "--table"]).await?;
    let table = text(&out.stdout);
    assert!(table.contains(&pending.id), "{table}");
    assert!(
        table.contains("ClinicBridge") && table.contains("TREAT"),
        "{table}"
    );
    let out = run(&["approve", "not-hex"]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("request id"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["approve", &pending.id]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = GrantTicket::parse(&out.stdout)?;
    let Decision::Approved { ticket, consent_id } = consent::poll(&anet, &app, &pending).await?
    else {
        anyhow::bail!("the app did not learn the approval");
    };
    assert_eq!(ticket, printed);
    let out = run(&["show", &format!("Consent/{consent_id}")]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let consent: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(consent["status"], "active");

    // A second request, denied.
    let pending2 = consent::send_request(&anet, &app, &card, &ask(Access::Read, "HMARKT")).await?;
    let out = run(&["deny", &pending2.id, "--note", "not for ads"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(matches!(
        consent::poll(&anet, &app, &pending2).await?,
        Decision::Denied { note, .. } if note == "not for ads"
    ));
    let out = run(&["requests"]).await?;
    let list: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(list["pending"].as_array().map(Vec::len), Some(0));

    // Contributions through the approved grant.
    let session = AppSession::open(anet.clone(), &app, &ticket).await?;
    let resource = |id: &str| {
        json!({"resourceType": "MedicationRequest", "id": id, "status": "active",
               "intent": "order", "subject": {"reference": "Patient/0b5e4f2a-8c1d-4e3b-9a7f-1c2d3e4f5a6b"},
               "medicationCodeableConcept": {"text": "from the clinic"}})
    };
    let (accept_id, _) = session
        .contribute(&app, vec![resource("from-clinic")], "new prescription")
        .await?;
    let (reject_id, _) = session
        .contribute(&app, vec![resource("unwanted")], "")
        .await?;
    let out = run(&["inbox"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let inbox: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(inbox.as_array().map(Vec::len), Some(2), "{inbox}");
    let out = run(&["show", "MedicationRequest/from-clinic"]).await?;
    assert!(!out.status.success(), "imported before acceptance");
    let out = run(&["accept", &accept_id]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("Provenance"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["reject", &reject_id]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["show", "MedicationRequest/from-clinic"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["show", &format!("Provenance/contribution-{accept_id}")]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["show", "MedicationRequest/unwanted"]).await?;
    assert!(!out.status.success());
    let out = run(&["inbox", "--table"]).await?;
    assert!(text(&out.stdout).trim().is_empty(), "{}", text(&out.stdout));

    // The app reports a read; `grants` shows its last use.
    let out = run(&["grants", "--table"]).await?;
    assert!(
        text(&out.stdout).contains("last use unknown"),
        "{}",
        text(&out.stdout)
    );
    session
        .report_use(&app, "read", &["MedicationRequest/from-clinic".into()])
        .await?;
    let out = run(&["grants", "--table"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(!table.contains("last use unknown"), "{table}");
    let out = run(&["audit", "--type", "app-read"]).await?;
    let log: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(log["total"], 1, "{log}");
    let out = run(&["audit", "--type", "consent"]).await?;
    let log: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(log["total"], 2, "{log}");
    let out = run(&["audit", "verify"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Rollback: this device remembers a newer generation than the slot now shows.
    let seen_file = home.path().join(".config/ehi/keystore.json.generation");
    let mut seen: Value = serde_json::from_slice(&std::fs::read(&seen_file)?)?;
    let generation = seen["generation"].as_u64().unwrap_or(0);
    assert!(generation > 5, "{seen}");
    seen["generation"] = json!(generation + 100);
    std::fs::write(&seen_file, serde_json::to_vec(&seen)?)?;
    let out = run(&["status"]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("rollback"),
        "{}",
        text(&out.stderr)
    );
    net.stop().await;
    Ok(())
}
