//! `invariant up` as a real process: every role starts and registers with the broker,
//! the CLI stores and reads blobs through it, and SIGTERM stops the whole network.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration_tests::bin_path;

fn invariant(args: &[&str], broker: &str) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(bin_path("invariant")?)
        .args(args)
        .env("INVARIANT_BROKER", broker)
        .stdin(Stdio::null())
        .output()?)
}

#[test]
fn up_starts_every_role_and_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("network.toml");
    std::fs::write(
        &config,
        "[broker]\nport = 0\n[storage]\ncount = 3\nports = [0, 0, 0]\n\
         [find]\nport = 0\n[slots]\nport = 0\n[names]\nport = 0\n\
         [productions]\nport = 0\n[files]\nport = 0\n[distributor]\nport = 0\n",
    )?;
    let data = dir.path().join("net");
    let mut up = Command::new(bin_path("invariant")?)
        .arg("up")
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;

    // Read `<name> <url>` lines until "network up".
    let stdout = up.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut urls: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(remaining)??;
        if line.starts_with("network up") {
            break;
        }
        let mut parts = line.split_whitespace();
        if let (Some(name), Some(url)) = (parts.next(), parts.next()) {
            urls.insert(name.to_string(), url.to_string());
        }
    }
    let broker = urls.get("broker").expect("a broker line").clone();
    for name in [
        "storage-1",
        "storage-2",
        "storage-3",
        "slots",
        "names",
        "productions",
        "find",
    ] {
        assert!(urls.contains_key(name), "{name} not started: {urls:?}");
    }

    // Every server registers itself with the broker.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = invariant(&["status"], &broker)?;
        let text = String::from_utf8_lossy(&status.stdout).to_string();
        let storage_lines = text.lines().filter(|l| l.starts_with("storage")).count();
        let has = |kind: &str| text.lines().any(|l| l.starts_with(kind));
        if status.status.success() && storage_lines == 3 && has("slots") && has("names") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "registrations incomplete:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Blobs through the CLI.
    let file = dir.path().join("blob.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content)?;
    let put = invariant(&["put", file.to_str().expect("utf-8 path")], &broker)?;
    assert!(
        put.status.success(),
        "put failed: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let address = String::from_utf8(put.stdout)?.trim().to_string();
    assert_eq!(address.len(), 64);
    let cat = invariant(&["cat", &address], &broker)?;
    assert!(cat.status.success());
    assert_eq!(cat.stdout, content);

    // The distributor keeps the blob on 3 storage servers; find locates it.
    let pinned = invariant(&["pin", &address], &broker)?;
    assert!(
        pinned.status.success(),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = invariant(&["find", &address], &broker)?;
        let holders = String::from_utf8_lossy(&found.stdout).lines().count();
        if found.status.success() && holders == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected 3 holders, find said:\n{}",
            String::from_utf8_lossy(&found.stdout)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Slots and names through the CLI, keys kept in a private config dir.
    let config_dir = dir.path().join("config");
    let cfg = config_dir.to_str().expect("utf-8 path");
    let created = invariant(&["--config-dir", cfg, "slot", "create", &address], &broker)?;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let slot = String::from_utf8(created.stdout)?.trim().to_string();
    let next = "ab".repeat(32);
    let set = invariant(&["--config-dir", cfg, "slot", "set", &slot, &next], &broker)?;
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let history = invariant(&["slot", "history", &slot], &broker)?;
    let history = String::from_utf8(history.stdout)?;
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "history: {history}");
    assert!(lines[0].contains(&next) && lines[1].contains(&address));
    // Without the key, a signed slot refuses the update.
    let other = dir.path().join("other-config");
    let refused = invariant(
        &[
            "--config-dir",
            other.to_str().expect("utf-8"),
            "slot",
            "set",
            &slot,
            &address,
        ],
        &broker,
    )?;
    assert!(!refused.status.success());

    let registered = invariant(&["name", "register", "photos", &address], &broker)?;
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    let looked = invariant(&["name", "lookup", "PHOTOS.local"], &broker)?;
    assert!(String::from_utf8(looked.stdout)?.contains(&address));

    // SIGTERM stops everything; the servers' ports close.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(up.id().to_string())
        .status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = up.try_wait()? {
            break exit;
        }
        assert!(Instant::now() < deadline, "invariant up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "invariant up exited with {exit}");
    for (name, url) in &urls {
        let addr = url.trim_start_matches("http://");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{name} still listening at {url} after up stopped"
        );
    }
    Ok(())
}
