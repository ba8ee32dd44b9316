//! The sharing commands of the `ehi` binary end to end: `app new`, `grant`, `grants`,
//! `audit`, `audit verify`, `revoke`, with the app reading through the library.

mod common;

use std::path::Path;

use common::cli::{ehi, init_with_patient, text};
use common::{PASSPHRASE, TestNet};
use ehi_layer::{AppKeystore, AppSession, GrantTicket, Network};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_grants_lists_audits_and_revokes() -> anyhow::Result<()> {
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
    let path = |p: &Path| p.to_string_lossy().into_owned();

    init_with_patient(home.path(), &broker).await?;

    // The app developer's side.
    let app_keystore = home.path().join("app.json");
    let out = run(&[
        "app",
        "new",
        "PillPal",
        "--app-keystore",
        &path(&app_keystore),
    ])
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let card: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(card["name"], "PillPal");
    assert_eq!(card["format"], "ehi-app-card");
    let card_file = home.path().join("card.json");
    std::fs::write(&card_file, &out.stdout)?;

    // A purpose outside the list is refused with a message.
    let out = run(&[
        "grant",
        &path(&card_file),
        "--scopes",
        "medications",
        "--purpose",
        "FUN",
    ])
    .await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("PurposeOfUse"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&[
        "grant",
        &path(&card_file),
        "--scopes",
        "medications,allergies",
        "--access",
        "read",
        "--expires",
        "30d",
        "--purpose",
        "TREAT",
    ])
    .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ticket = GrantTicket::parse(&out.stdout)?;

    let out = run(&["grants"]).await?;
    let grants: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(grants.as_array().map(Vec::len), Some(1));
    assert_eq!(grants[0]["purpose"], "TREAT");
    assert!(
        grants[0]["smart_scopes"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "patient/AllergyIntolerance.rs"))
    );

    // The app reads with the library alone.
    let app = AppKeystore::open(&app_keystore, PASSPHRASE)?;
    let mut session = AppSession::open(
        Network::connect(&broker, Some(ticket.slots_server)).await?,
        &app,
        &ticket,
    )
    .await?;
    assert!(session.search("AllergyIntolerance", "").await?.total >= 1);

    let out = run(&["audit", "verify"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["audit", "--type", "grant"]).await?;
    let log: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(log["total"], 1);
    assert_eq!(log["entry"][0]["resource"]["resourceType"], "AuditEvent");

    let out = run(&["revoke", &ticket.grant, "--reencrypt"]).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot take back"));
    let out = run(&["grants"]).await?;
    let grants: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(grants.as_array().map(Vec::len), Some(0));
    assert!(session.refresh().await.is_err());
    let out = run(&["audit", "--table"]).await?;
    assert!(
        text(&out.stdout).contains("revoke"),
        "{}",
        text(&out.stdout)
    );
    net.stop().await;
    Ok(())
}
