//! The binary's exit statuses and reports against fakes on 127.0.0.1: 0 all passed,
//! 1 a check failed, 2 usage error or unreachable (or crashed) server, 3 passed with
//! skips under `--strict`; the JSON summary, JUnit output, `--list --json`, the
//! `distribute` alias, a closed stdout, and the help on what `--broker` leaves behind.

mod binary;
mod fakes;

use std::process::{Command, Output, Stdio};

use binary::BIN;

fn cli(args: &[&str]) -> Output {
    binary::run(args, &[])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A multi-threaded runtime, so the fakes serve while the test waits for the binary.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn exit_statuses_follow_the_verdict() {
    let rt = runtime();
    let url = rt.block_on(fakes::core_storage());

    let pass = cli(&["storage", &url, "--profile", "core"]);
    assert_eq!(pass.status.code(), Some(0), "{}", text(&pass.stdout));

    // Under core the oversize check is skipped (no --max-blob-size): --strict says 3.
    let strict = cli(&["storage", &url, "--profile", "core", "--strict"]);
    assert_eq!(strict.status.code(), Some(3), "{}", text(&strict.stdout));

    let fail = cli(&["storage", &url, "--only", "storage-range"]);
    assert_eq!(fail.status.code(), Some(1), "{}", text(&fail.stdout));
    assert!(text(&fail.stdout).contains("fail   storage-range"));

    let no_check = cli(&["storage", &url, "--only", "storage-get-"]);
    assert_eq!(no_check.status.code(), Some(2));
    assert!(
        text(&no_check.stderr).contains("no storage check"),
        "{}",
        text(&no_check.stderr)
    );

    // Usage errors (clap) are 2 too.
    assert_eq!(cli(&["teapot", &url]).status.code(), Some(2));
    assert_eq!(
        cli(&["storage", &url, "--profile", "lax"]).status.code(),
        Some(2)
    );

    let unreachable = cli(&["storage", &fakes::closed_port_url()]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(unreachable.stdout.is_empty());
    let error = text(&unreachable.stderr);
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    assert!(error.contains("unreachable"), "{error}");
}

#[test]
fn a_crash_mid_run_exits_2_with_one_error() {
    let rt = runtime();
    let url = rt.block_on(fakes::crashing_storage());
    let output = cli(&["storage", &url]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stdout));
    let error = text(&output.stderr);
    let lines: Vec<&str> = error
        .lines()
        .filter(|l| l.starts_with("invariant-conformance:"))
        .collect();
    assert_eq!(lines.len(), 1, "{error}");
    assert!(lines[0].contains("storage-put"), "{error}");
    let table = text(&output.stdout);
    assert_eq!(table.matches("fail   ").count(), 1, "{table}");
    assert!(table.contains("not run"), "{table}");
}

#[test]
fn the_json_report_has_a_summary_and_junit_is_written() {
    let rt = runtime();
    let url = rt.block_on(fakes::core_storage());
    let dir = tempfile::tempdir().expect("tempdir");
    let junit = dir.path().join("report.xml");
    let junit_arg = junit.to_string_lossy().into_owned();
    let output = cli(&[
        "storage",
        &url,
        "--json",
        "--only",
        "storage-get*,storage-range",
        "--junit",
        &junit_arg,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["profile"], "full");
    assert_eq!(report["tool"], "invariant-conformance");
    assert_eq!(report["tool_version"], env!("CARGO_PKG_VERSION"));
    assert!(report["spec_version"].is_string());
    assert!(report["started"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert!(report["finished"].is_string());
    let summary = &report["summary"];
    assert_eq!(summary["total"], 3);
    assert_eq!(summary["pass"], 2);
    assert_eq!(summary["fail"], 1);
    assert_eq!(summary["verdict"], "fail");
    let flags: Vec<&str> = report["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(flags.contains(&"--profile=full"), "{flags:?}");
    assert!(flags.iter().any(|f| f.starts_with("--only=")), "{flags:?}");
    let results = report["results"].as_array().expect("results");
    let range = results
        .iter()
        .find(|r| r["check"] == "storage-range")
        .expect("storage-range ran");
    assert_eq!(range["anchor"], "storage.md#storage-range");
    assert_eq!(range["profile"], "full");
    assert_eq!(range["cause"], "storage-range");
    let xml = std::fs::read_to_string(&junit).expect("the JUnit file");
    assert!(xml.contains(r#"tests="3" failures="1""#), "{xml}");
    assert!(xml.contains(r#"name="storage-range""#), "{xml}");
}

#[test]
fn lists_honour_json_and_the_distribute_alias() {
    let output = cli(&["--list", "distribute", "http://127.0.0.1:9", "--json"]);
    assert_eq!(output.status.code(), Some(0));
    let checks: Vec<serde_json::Value> =
        serde_json::from_slice(&output.stdout).expect("a JSON list");
    assert!(checks.iter().any(|c| c["id"] == "distributor-pin"));
    assert!(
        checks
            .iter()
            .all(|c| c["profile"].is_string() && c["anchor"].is_string())
    );

    let core = cli(&[
        "--list",
        "storage",
        "http://127.0.0.1:9",
        "--profile",
        "core",
    ]);
    let listed = text(&core.stdout);
    assert!(listed.contains("storage-get "), "{listed}");
    assert!(!listed.contains("storage-range"), "{listed}");
}

#[test]
fn a_closed_stdout_exits_quietly() {
    let mut child = Command::new(BIN)
        .args(["--list", "storage", "http://127.0.0.1:9", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_help_says_broker_registrations_stay_behind() {
    let output = cli(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    // clap wraps long help at the terminal width: compare without line breaks.
    let help = text(&output.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("These registrations stay behind after the run"),
        "{help}"
    );
    assert!(help.contains("spec/broker.md#broker-liveness"), "{help}");
}
