//! `invariant status` reports each server's health, not only its url: whether it
//! answers `/id` and how fast, and for the distributor its pins and whether N copies
//! are reachable with the storage servers alive.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use integration_tests::ServerProcess;

fn invariant(config_dir: &Path, broker: &str, args: &[&str]) -> anyhow::Result<Output> {
    integration_tests::up::invariant_cli(config_dir, broker, args)
}

#[test]
fn status_shows_each_servers_health() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let broker = ServerProcess::start("broker-server", &dir.path().join("broker"), &[])?;
    let with_broker = ["--broker", broker.url()];
    let storage = ServerProcess::start("storage-server", &dir.path().join("s"), &with_broker)?;
    // Two blobs (11 bytes) held before the status is asked.
    tokio::runtime::Runtime::new()?.block_on(async {
        let http = reqwest::Client::new();
        for body in ["hello", "world!"] {
            let resp = http
                .post(format!("{}/storage", storage.url()))
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(resp.status().is_success(), "{}", resp.status());
        }
        anyhow::Ok(())
    })?;
    let _distributor = ServerProcess::start(
        "distributor",
        &dir.path().join("d"),
        &["--broker", broker.url(), "--replicas", "3"],
    )?;
    // Wait until both registered and the distributor counts the storage server active.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let out = invariant(&config, broker.url(), &["status"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let distributor_ready = text
            .lines()
            .any(|l| l.starts_with("distribute") && l.contains("1 storage servers active"));
        if out.status.success() && text.contains("\nstorage") && distributor_ready {
            break text;
        }
        anyhow::ensure!(Instant::now() < deadline, "status never complete:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    for line in text.lines() {
        assert!(line.contains("ok, ") && line.contains(" ms"), "{line}");
    }
    let storage_line = text
        .lines()
        .find(|l| l.starts_with("storage"))
        .unwrap_or_default();
    assert!(storage_line.contains("; 2 blobs, 11 B"), "{storage_line}");
    let distributor = text
        .lines()
        .find(|l| l.starts_with("distribute"))
        .unwrap_or_default();
    assert!(
        distributor.contains("0 pinned, 0 under-replicated")
            && distributor.contains("N = 3")
            && distributor.contains("N copies unreachable: 2 more storage server(s) needed"),
        "{distributor}"
    );
    Ok(())
}
