//! The `ehi` binary's answers to mistakes that need no network: bad dates, no
//! passphrase and no terminal, no broker, an export into a folder that is not empty.
//! Each says what to do instead.

mod common;

use std::process::{Command, Output};

use common::cli::{command, text};

/// A loopback url where nothing listens (a port that was free a moment ago).
fn nobody_listening() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{addr}"))
}

fn run(mut command: Command) -> anyhow::Result<Output> {
    Ok(command.output()?)
}

#[test]
fn audit_refuses_dates_it_cannot_read() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let broker = nobody_listening()?;
    for (flag, value) in [
        ("--since", "yesterday"),
        ("--since", "2026-13-45"),
        ("--until", "2026-02-30"),
        ("--since", "2026-01-01T10:00:00+02:00"),
    ] {
        let mut ehi = command(home.path(), &broker, "a passphrase");
        ehi.args(["audit", flag, value]);
        let out = run(ehi)?;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains("2026-01-31") && stderr.contains("2026-01-31T08:30:00Z"),
            "{flag} {value}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{flag} {value}");
    }
    Ok(())
}

#[test]
fn no_passphrase_and_no_terminal_says_what_to_do() -> anyhow::Result<()> {
    // `setsid` (util-linux) runs ehi without a controlling terminal, as a service or a
    // CI job would.
    let home = tempfile::tempdir()?;
    let broker = nobody_listening()?;
    let ehi = command(home.path(), &broker, "");
    let mut setsid = Command::new("setsid");
    setsid
        .arg("--wait")
        .arg(ehi.get_program())
        .arg("status")
        .env_remove("EHI_PASSPHRASE")
        .stdin(std::process::Stdio::null());
    for (key, value) in ehi.get_envs() {
        match value {
            Some(value) if key != "EHI_PASSPHRASE" => setsid.env(key, value),
            _ => setsid.env_remove(key),
        };
    }
    let out = run(setsid)?;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("EHI_PASSPHRASE"), "{stderr}");
    assert!(!stderr.contains("os error 6"), "{stderr}");
    Ok(())
}

#[test]
fn no_broker_says_how_to_start_one() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let broker = nobody_listening()?;
    let mut ehi = command(home.path(), &broker, "a long enough passphrase");
    ehi.arg("init");
    let out = run(ehi)?;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("no broker at {broker}")) && stderr.contains("invariant up"),
        "{stderr}"
    );
    assert!(!stderr.contains("Caused by"), "{stderr}");
    Ok(())
}

#[test]
fn export_refuses_a_folder_that_is_not_empty() -> anyhow::Result<()> {
    let home = tempfile::tempdir()?;
    let broker = nobody_listening()?;
    let dir = home.path().join("export");
    std::fs::create_dir(&dir)?;
    std::fs::write(dir.join("mine.txt"), "keep me")?;
    let mut ehi = command(home.path(), &broker, "a passphrase");
    ehi.arg("export").arg(&dir);
    let out = run(ehi)?;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(dir.join("mine.txt"))?, "keep me");
    // With --force the folder check passes: the command goes on to unlock the vault
    // (here there is none, so it fails later, for that reason).
    let mut ehi = command(home.path(), &broker, "a passphrase");
    ehi.arg("export").arg("--force").arg(&dir);
    let out = run(ehi)?;
    assert!(
        !text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}
