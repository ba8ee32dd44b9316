//! The break-glass and device commands of the `ehi` binary end to end: `emergency
//! set|open|ack|show|clear`, `status` surfacing emergency access, `device
//! invite|join|list|remove`, and `watch`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cli::{command, ehi, init_with_patient, ok, text};
use common::{PASSPHRASE, TestNet};
use serde_json::Value;

/// Starts `ehi` with piped stdout; its lines arrive on the channel.
fn spawn(
    home: &Path,
    broker: &str,
    args: &[&str],
) -> anyhow::Result<(Child, mpsc::Receiver<String>)> {
    let mut child = command(home, broker, PASSPHRASE)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_sets_uses_surfaces_and_acknowledges_break_glass() -> anyhow::Result<()> {
    let net = TestNet::start(2, true).await?;
    let home = tempfile::tempdir()?;
    let broker = net.broker_url.clone();
    let h = home.path();
    let path = |p: &Path| p.to_string_lossy().into_owned();

    init_with_patient(h, &broker).await?;

    let app = h.join("er.json");
    let out = ehi(
        h,
        &broker,
        &["app", "new", "County ER", "--app-keystore", &path(&app)],
    )
    .await?;
    ok(&out)?;
    let card = h.join("er-card.json");
    std::fs::write(&card, &out.stdout)?;

    // A bad scope is refused with a message.
    let out = ehi(
        h,
        &broker,
        &["emergency", "set", &path(&card), "--scopes", "brains"],
    )
    .await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown scope"),
        "{}",
        text(&out.stderr)
    );

    let out = ehi(h, &broker, &["emergency", "set", &path(&card)]).await?;
    ok(&out)?;
    assert!(
        text(&out.stderr).contains("County ER may read"),
        "{}",
        text(&out.stderr)
    );
    let ticket: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(ticket["format"], "ehi-emergency-ticket");
    let ticket_file = h.join("ticket.json");
    std::fs::write(&ticket_file, &out.stdout)?;

    // No access yet: status says nothing about emergencies.
    let out = ehi(h, &broker, &["status"]).await?;
    ok(&out)?;
    assert!(!text(&out.stderr).contains("emergency access on"));

    // The holder uses it (its own keystore, no patient).
    let out = ehi(
        h,
        &broker,
        &[
            "emergency",
            "open",
            &path(&ticket_file),
            "--app-keystore",
            &path(&app),
            "--reason",
            "unresponsive in ER bay 3",
        ],
    )
    .await?;
    ok(&out)?;
    let given: Value = serde_json::from_slice(&out.stdout)?;
    let types: Vec<&str> = given["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["resource"]["resourceType"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(types.contains(&"AllergyIntolerance"), "{types:?}");
    assert!(types.contains(&"Condition"), "{types:?}");
    assert!(!types.contains(&"Claim"), "{types:?}");

    // The patient's next status shows it, until acknowledged.
    for _ in 0..2 {
        let out = ehi(h, &broker, &["status"]).await?;
        ok(&out)?;
        let stderr = text(&out.stderr);
        assert!(stderr.contains("emergency access on 20"), "{stderr}");
        assert!(stderr.contains("by County ER"), "{stderr}");
        let status: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(status["emergencyAccess"][0]["who"], "County ER");
    }
    let out = ehi(h, &broker, &["emergency", "ack"]).await?;
    ok(&out)?;
    assert!(text(&out.stderr).contains("1 emergency access(es) acknowledged"));
    let out = ehi(h, &broker, &["status"]).await?;
    ok(&out)?;
    assert!(!text(&out.stderr).contains("emergency access on"));
    let status: Value = serde_json::from_slice(&out.stdout)?;
    assert!(status.get("emergencyAccess").is_none());

    // The audit log holds it, flagged.
    let out = ehi(h, &broker, &["audit", "--type", "emergency"]).await?;
    ok(&out)?;
    let audit: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(audit["total"], 1);
    let event = &audit["entry"][0]["resource"];
    assert_eq!(event["meta"]["security"][0]["code"], "BTG");
    assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
    ok(&ehi(h, &broker, &["audit", "verify"]).await?)?;

    let out = ehi(h, &broker, &["emergency", "show"]).await?;
    ok(&out)?;
    let shown: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(shown["policy"]["holder"], "County ER");
    assert_eq!(shown["uses"].as_array().map(Vec::len), Some(1));

    // Clearing revokes: the holder is refused.
    ok(&ehi(h, &broker, &["emergency", "clear"]).await?)?;
    let out = ehi(
        h,
        &broker,
        &[
            "emergency",
            "open",
            &path(&ticket_file),
            "--app-keystore",
            &path(&app),
            "--reason",
            "again",
        ],
    )
    .await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no longer gives access"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_pairs_watches_lists_and_removes_devices() -> anyhow::Result<()> {
    let net = TestNet::start(2, true).await?;
    let broker = net.broker_url.clone();
    let home_a = tempfile::tempdir()?;
    let home_b = tempfile::tempdir()?;
    let home_c = tempfile::tempdir()?;
    let (a, b, c) = (home_a.path(), home_b.path(), home_c.path());
    let path = |p: &Path| p.to_string_lossy().into_owned();

    init_with_patient(a, &broker).await?;

    // A invites; the code is the first line on stdout.
    let (inviter, lines) = spawn(a, &broker, &["device", "invite", "--expires", "2m"])?;
    let code = lines.recv_timeout(Duration::from_secs(60))?;
    assert!(code.starts_with("ehi1-"), "{code}");

    // A wrong code is refused.
    let mut wrong: Vec<char> = code.chars().collect();
    wrong[10] = if wrong[10] == 'a' { 'b' } else { 'a' };
    let wrong: String = wrong.into_iter().collect();
    let out = ehi(c, &broker, &["device", "join", &wrong]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invite code refused"),
        "{}",
        text(&out.stderr)
    );

    // B joins.
    let out = ehi(b, &broker, &["device", "join", &code]).await?;
    ok(&out)?;
    let stderr = text(&out.stderr);
    assert!(stderr.contains("joined vault"), "{stderr}");
    let status = tokio::task::spawn_blocking(move || inviter.wait_with_output()).await??;
    assert!(status.status.success(), "{}", text(&status.stderr));
    let inviter_said = text(&status.stderr);
    // Both sides name the same device id.
    let id = stderr
        .split("as device ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no device id in {stderr}"))?
        .to_string();
    assert!(
        inviter_said.contains(&format!("device {id} joined")),
        "{inviter_said}"
    );

    // The code is spent.
    let out = ehi(c, &broker, &["device", "join", &code]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already used"),
        "{}",
        text(&out.stderr)
    );

    // B reads the data; both list two devices, each marking itself.
    let out = ehi(b, &broker, &["search", "Condition"]).await?;
    ok(&out)?;
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout)?["total"], 1);
    let out = ehi(b, &broker, &["device", "list"]).await?;
    ok(&out)?;
    let list: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(list.as_array().map(Vec::len), Some(2));
    let me: Vec<&Value> = list
        .as_array()
        .map(|l| l.iter().filter(|d| d["this_device"] == true).collect())
        .unwrap_or_default();
    assert_eq!(me.len(), 1);
    assert_eq!(me[0]["id"], id.as_str());

    // B watches; an import on A shows up within 2 s.
    let (mut watcher, synced) = spawn(b, &broker, &["watch"])?;
    tokio::time::sleep(Duration::from_secs(3)).await; // the keystore opening (Argon2id)
    let more = a.join("more.json");
    std::fs::write(
        &more,
        serde_json::to_vec(
            &serde_json::json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {"resourceType": "Observation", "id": "watched",
                "status": "final", "code": {"text": "pulse"}}}]}),
        )?,
    )?;
    ok(&ehi(a, &broker, &["import", &path(&more)]).await?)?;
    let imported = Instant::now();
    let line = synced.recv_timeout(Duration::from_secs(2))?;
    assert!(line.starts_with("synced generation"), "{line}");
    assert!(imported.elapsed() < Duration::from_secs(2));
    watcher.kill()?;
    watcher.wait()?;

    // A removes B: B can no longer open the vault.
    let out = ehi(a, &broker, &["device", "remove", &id]).await?;
    ok(&out)?;
    assert!(
        text(&out.stderr).contains("root key moved to generation 1"),
        "{}",
        text(&out.stderr)
    );
    let out = ehi(b, &broker, &["status"]).await?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot open the vault"),
        "{}",
        text(&out.stderr)
    );
    let out = ehi(a, &broker, &["--table", "device", "list"]).await?;
    ok(&out)?;
    assert_eq!(text(&out.stdout).lines().count(), 1);
    assert!(text(&out.stdout).contains("(this device)"));
    // A cannot remove itself.
    let own = text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let out = ehi(a, &broker, &["device", "remove", &own]).await?;
    assert!(!out.status.success());
    Ok(())
}
