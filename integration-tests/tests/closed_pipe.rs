//! Every binary of the workspace when the reader of its stdout is gone before it
//! prints (`ehi search … | head -2`): no panic, no exit status 101. Commands exit 0;
//! servers keep serving and stop cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use integration_tests::bin_path;

/// The write end of a pipe whose read end is already closed: every write fails with
/// `EPIPE`, deterministically.
fn closed_pipe() -> anyhow::Result<Stdio> {
    let (read, write) = nix::unistd::pipe().context("creating a pipe")?;
    drop(read);
    Ok(Stdio::from(write))
}

/// Runs `command` with a closed stdout and checks it exits 0 without a panic.
fn run_closed(name: &str, command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .stdout(closed_pipe()?)
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {name}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_quiet(name, output.status, &stderr);
    Ok(())
}

fn assert_quiet(name: &str, status: ExitStatus, stderr: &str) {
    assert_ne!(status.code(), Some(101), "{name} panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "{name} panicked: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{name}: {stderr}");
    assert!(status.success(), "{name} exited with {status}: {stderr}");
}

#[test]
fn commands_exit_quietly_when_stdout_is_closed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    run_closed(
        "invariant-conformance --list storage",
        Command::new(bin_path("invariant-conformance")?).args([
            "--list",
            "storage",
            "http://127.0.0.1:9",
        ]),
    )?;
    run_closed(
        "invariant auth init",
        Command::new(bin_path("invariant")?)
            .args(["auth", "init", "--dir"])
            .arg(dir.path().join("auth"))
            .env("XDG_CONFIG_HOME", dir.path().join("config")),
    )?;
    run_closed(
        "ehi app new",
        Command::new(bin_path("ehi")?)
            .args(["app", "new", "pipe-test", "--app-keystore"])
            .arg(dir.path().join("app.json"))
            .env("EHI_PASSPHRASE", "a passphrase for the test")
            .env("XDG_CONFIG_HOME", dir.path().join("config")),
    )?;
    Ok(())
}

/// Starts server `name` with a closed stdout, waits for its "server started" log line,
/// checks it still runs, then stops it with SIGTERM and checks the exit.
fn serve_closed(name: &str, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut child = Command::new(bin_path(name)?)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(closed_pipe()?)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {name}"))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("server started") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let started = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    let alive = started && {
        std::thread::sleep(Duration::from_millis(300));
        child.try_wait()?.is_none()
    };
    if alive {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
    } else {
        let _ = child.kill();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{name} did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = reader.join().unwrap_or_default();
    assert!(
        started && alive,
        "{name} did not keep serving: {status}\n{log}"
    );
    assert_quiet(name, status, &log);
    Ok(())
}

#[test]
fn servers_keep_serving_when_stdout_is_closed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for name in [
        "storage-server",
        "broker-server",
        "slots-server",
        "find-server",
        "names-server",
        "productions-server",
        "files-server",
        "distributor",
    ] {
        serve_closed(name, &dir.path().join(name))?;
    }
    Ok(())
}
