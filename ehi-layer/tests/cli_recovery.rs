//! Losing the keystore is not losing the vault when the patient kept a recovery kit:
//! `ehi init` says so, `ehi keystore backup` writes the kit and prints its code once,
//! and after the keystore is gone `ehi keystore recover` restores it (under a new
//! passphrase) so that every record reads again. A wrong code opens nothing.

mod common;

use common::cli::{command, ehi, ehi_as, init_with_patient, ok, text};
use common::{PASSPHRASE, TestNet};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recovery_kit_restores_a_lost_keystore() -> anyhow::Result<()> {
    let net = TestNet::start(1, false).await?;
    let home = tempfile::tempdir()?;
    let broker = net.broker_url.clone();
    let home = home.path();

    // `ehi init` states what losing the keystore means and offers the kit.
    let other_home = tempfile::tempdir()?;
    let out = ehi(other_home.path(), &broker, ["init"]).await?;
    ok(&out)?;
    let said = text(&out.stderr);
    assert!(
        said.contains("losing either loses the vault") && said.contains("ehi keystore backup"),
        "{said}"
    );
    // `--recovery-kit` writes the kit at once.
    let third = tempfile::tempdir()?;
    let kit_at_init = third.path().join("kit.json");
    let out = ehi(
        third.path(),
        &broker,
        [
            "init".as_ref(),
            "--recovery-kit".as_ref(),
            kit_at_init.as_os_str(),
        ],
    )
    .await?;
    ok(&out)?;
    assert!(kit_at_init.exists());
    assert_eq!(text(&out.stdout).trim().len(), 39, "the code is printed");

    init_with_patient(home, &broker).await?;
    let before = ehi(home, &broker, ["search", "Observation"]).await?;
    ok(&before)?;
    let before: Value = serde_json::from_slice(&before.stdout)?;
    assert_eq!(before["total"], 2);

    let kit = home.join("recovery-kit.json");
    let out = ehi(
        home,
        &broker,
        ["keystore".as_ref(), "backup".as_ref(), kit.as_os_str()],
    )
    .await?;
    ok(&out)?;
    let code = text(&out.stdout).trim().to_string();
    assert_eq!(code.split('-').count(), 8, "{code}");
    assert!(text(&out.stderr).contains("shown this once"));
    let again = ehi(
        home,
        &broker,
        ["keystore".as_ref(), "backup".as_ref(), kit.as_os_str()],
    )
    .await?;
    assert!(
        !again.status.success(),
        "an existing kit is not overwritten"
    );

    // The keystore is lost.
    let keystore = home.join(".config/ehi/keystore.json");
    std::fs::remove_file(&keystore)?;
    let lost = ehi(home, &broker, ["status"]).await?;
    assert!(!lost.status.success());

    // A wrong code opens nothing and writes no keystore.
    let recover = |code: String, passphrase: &str| {
        let mut cmd = command(home, &broker, passphrase);
        cmd.args(["keystore".as_ref(), "recover".as_ref(), kit.as_os_str()])
            .env("EHI_RECOVERY_CODE", code);
        tokio::task::spawn_blocking(move || cmd.output())
    };
    let wrong = recover("AAAA-".repeat(7) + "AAAA", "a new passphrase").await??;
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("the recovery code does not open the recovery kit"),
        "{}",
        text(&wrong.stderr)
    );
    assert!(!keystore.exists());

    // The right code, typed in lower case with spaces, restores it.
    let typed = code.replace('-', " ").to_lowercase();
    let out = recover(typed, "a new passphrase").await??;
    ok(&out)?;
    assert!(keystore.exists());
    let old = ehi_as(home, &broker, PASSPHRASE, ["status"]).await?;
    assert!(
        !old.status.success(),
        "the old passphrase no longer opens it"
    );
    let after = ehi_as(home, &broker, "a new passphrase", ["search", "Observation"]).await?;
    ok(&after)?;
    let after: Value = serde_json::from_slice(&after.stdout)?;
    assert_eq!(after["total"], before["total"]);
    assert_eq!(after["entry"], before["entry"], "every record reads again");
    net.stop().await;
    Ok(())
}
