//! The `invariant` binary's own surface: help lists every command, and bad input is
//! refused with a clear message before anything starts. (Building this test also makes
//! `cargo test --workspace` build the binary the multi-process tests drive.)

use std::process::Command;

fn invariant() -> Command {
    Command::new(env!("CARGO_BIN_EXE_invariant"))
}

#[test]
fn help_lists_every_command() {
    let output = invariant().arg("--help").output().expect("run invariant");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in [
        "up", "systemd", "status", "put", "get", "cat", "upload", "download", "slot", "name",
        "pin", "unpin", "find", "auth",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "`{command}` missing from --help:\n{help}"
        );
    }
}

#[test]
fn a_bad_config_file_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[storage]\ncount = \"three\"\n").expect("write");
    let output = invariant()
        .arg("up")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run invariant");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing started");
}

#[test]
fn a_malformed_address_is_a_usage_error() {
    let output = invariant()
        .args(["cat", "not-an-address"])
        .output()
        .expect("run invariant");
    assert_eq!(output.status.code(), Some(2), "clap usage errors exit 2");
    assert!(String::from_utf8_lossy(&output.stderr).contains("64 hex"));
}

#[test]
fn no_broker_is_a_clear_error() {
    let output = invariant()
        .args(["--broker", "http://127.0.0.1:9", "status"])
        .output()
        .expect("run invariant");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no broker answers"));
}
