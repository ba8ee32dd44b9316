//! `invariant systemd` with the real binaries: the units it writes pass
//! `systemd-analyze verify` (their `ExecStart=` binaries exist and every setting is
//! known), and the `ExecStart=` lines, run as systemd would run them (clean
//! environment, in the target's order), start a network whose servers register with
//! the broker and accept the operator token.
//!
//! Data lives under Cargo's target tmp folder, not `/tmp`: units refuse data under
//! `/tmp` (services get a private one).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration_tests::up::invariant_cli;
use integration_tests::{bin_dir, bin_path};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A folder under Cargo's target tmp dir, removed when dropped.
fn work_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under target")
}

/// Runs `invariant systemd --data-dir <dir>/data --out <dir>/units --bin-dir <built>
/// --config <config> extra…` and returns the unit files by name.
fn generate(dir: &Path, config: &str, extra: &[&str]) -> BTreeMap<String, String> {
    let config_path = dir.join("network.toml");
    std::fs::write(&config_path, config).expect("write config");
    let units = dir.join("units");
    let output = Command::new(bin_path("invariant").expect("invariant is built"))
        .arg("systemd")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--out")
        .arg(&units)
        .arg("--bin-dir")
        .arg(bin_dir().expect("bin dir"))
        .arg("--config")
        .arg(&config_path)
        .args(extra)
        .env_remove("INVARIANT_BIN_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run invariant systemd");
    assert!(
        output.status.success(),
        "invariant systemd failed: {}",
        text(&output.stderr)
    );
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&units).expect("units written") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_string();
        files.insert(name, std::fs::read_to_string(&path).expect("read unit"));
    }
    files
}

/// `systemd-analyze verify` of every file in `units`; `None` (after a loud skip, or a
/// failure under `CI`) when the tool is missing.
fn verify(units: &Path) -> Option<Output> {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        invariant_test_support::missing_tool("`systemd-analyze` on PATH", "Debian package systemd");
        return None;
    }
    let files: Vec<PathBuf> = std::fs::read_dir(units)
        .expect("units")
        .map(|entry| entry.expect("entry").path())
        .collect();
    Some(
        Command::new("systemd-analyze")
            .arg("verify")
            .args(&files)
            .stdin(Stdio::null())
            .output()
            .expect("run systemd-analyze"),
    )
}

/// Asserts that `systemd-analyze verify` accepted the units in `dir/units` without a
/// word about any of them (unknown settings are only warnings there).
fn assert_verified(dir: &Path, prefix: &str) {
    let Some(output) = verify(&dir.join("units")) else {
        return;
    };
    let stderr = text(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(prefix))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complained:\n{stderr}"
    );
}

#[test]
fn units_for_a_secured_network_pass_systemd_analyze_verify() {
    let dir = work_dir();
    let units = generate(
        dir.path(),
        "tls = true\n[storage]\ncount = 2\nports = [3101, 3111]\n",
        &["--user", "invariant", "--prefix", "invtest"],
    );
    assert_eq!(
        units.len(),
        10,
        "a target and 9 services: {:?}",
        units.keys()
    );
    let storage = &units["invtest-storage-2.service"];
    let exec = storage
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let binary = bin_dir().expect("bin dir").join("storage-server");
    assert!(
        exec.starts_with(&format!("{} ", binary.display())),
        "{exec}"
    );
    for flag in [
        "--listen 127.0.0.1:3111",
        "--tls-cert",
        "--token-file",
        "--auth-root-key",
        "--broker https://127.0.0.1:3000",
    ] {
        assert!(exec.contains(flag), "{flag} missing: {exec}");
    }
    // The files the units name exist: up's security material was prepared.
    let data = dir.path().join("data");
    for file in [
        "auth/root.pub",
        "auth/storage-2.token",
        "auth/operator.token",
        "tls/ca.pem",
        "tls/storage-2.pem",
        "storage-2",
    ] {
        assert!(data.join(file).exists(), "{file} missing");
    }
    assert!(storage.contains("\nUser=invariant\n"));
    assert!(storage.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    assert_verified(dir.path(), "invtest");
}

#[test]
fn units_for_an_open_network_pass_systemd_analyze_verify() {
    let dir = work_dir();
    let units = generate(dir.path(), "", &["--open"]);
    assert_eq!(units.len(), 11, "{:?}", units.keys());
    let storage = &units["invariant-storage-1.service"];
    assert!(storage.contains("--allow-open-delete"), "{storage}");
    assert!(!storage.contains("--token-file"), "{storage}");
    assert!(
        !dir.path().join("data/auth").exists(),
        "no root key when open"
    );
    assert_verified(dir.path(), "invariant-");
}

/// Servers started from `ExecStart=` lines; killed when dropped.
struct Started(Vec<(String, Child)>);

impl Drop for Started {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port (free when this returns; the test binds it soon after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// Runs one unit's `ExecStart=` as systemd would (no inherited environment) and waits
/// for its `listening on` line.
fn exec_start(unit: &str, log: &Path) -> Child {
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(
        !exec.contains(['"', '%', '$']),
        "this test splits plain words only: {exec}"
    );
    let mut words = exec.split_whitespace();
    let binary = words.next().expect("binary");
    let mut child = Command::new(binary)
        .args(words)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).expect("log file")))
        .spawn()
        .expect("start server");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(Ok(line))) if line.starts_with("listening on ") => child,
        other => {
            let _ = child.kill();
            panic!(
                "{binary} did not start ({other:?}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

#[test]
fn exec_start_lines_start_a_network_that_takes_the_operator_token() {
    let dir = work_dir();
    let broker_port = free_port();
    let config = format!(
        "[broker]\nport = {broker_port}\n[storage]\ncount = 1\nports = [0]\n\
         [find]\nport = 0\n[slots]\nport = 0\n[names]\nport = 0\n[productions]\nport = 0\n\
         [files]\nport = 0\n[distributor]\nport = 0\n"
    );
    let units = generate(dir.path(), &config, &[]);
    let target = &units["invariant.target"];
    let order: Vec<&str> = target
        .lines()
        .find_map(|line| line.strip_prefix("Wants="))
        .expect("Wants")
        .split_whitespace()
        .collect();
    assert_eq!(order.len(), 8, "{target}");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let mut started = Started(Vec::new());
    for unit_name in order {
        let log = logs.join(format!("{unit_name}.log"));
        let child = exec_start(&units[unit_name], &log);
        started.0.push((unit_name.to_string(), child));
    }

    let broker = format!("http://127.0.0.1:{broker_port}");
    let config_dir = dir.path().join("config");
    let token = dir.path().join("data/auth/operator.token");
    let token = token.to_str().expect("utf-8 path");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = invariant_cli(&config_dir, &broker, &["--token-file", token, "status"])
            .expect("status");
        let out = text(&status.stdout);
        let registered = [
            "storage",
            "find",
            "slots",
            "names",
            "productions",
            "files",
            "distribute",
        ]
        .iter()
        .all(|kind| out.lines().any(|line| line.starts_with(kind)));
        if status.status.success() && registered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every server registered:\n{out}\n{}",
            text(&status.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Token checks are on, and the operator token the command prepared works.
    let file = dir.path().join("blob.txt");
    std::fs::write(&file, b"from a unit").expect("write blob");
    let file = file.to_str().expect("utf-8 path");
    let anonymous = invariant_cli(&config_dir, &broker, &["put", file]).expect("put");
    assert!(!anonymous.status.success(), "a write without a token");
    let put =
        invariant_cli(&config_dir, &broker, &["--token-file", token, "put", file]).expect("put");
    assert!(put.status.success(), "{}", text(&put.stderr));

    // SIGTERM (systemd's stop) ends every server cleanly, last started first.
    for (name, mut child) in std::mem::take(&mut started.0).into_iter().rev() {
        let killed = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{name} exited with {status}");
    }
}
