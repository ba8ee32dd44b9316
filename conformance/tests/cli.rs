//! The `invariant-conformance` binary end to end: against a real `productions-server`
//! process when its binary is in the target directory (as under
//! `cargo test --workspace`), else against one started in-process; and against a
//! broken fake, where it must exit non-zero.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use invariant_runtime::{Role, ServerContext, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_invariant-conformance");

/// A server process started by this test; killed (by its own handle) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `target/<profile>/productions-server` on a free port; `None` when absent.
fn spawn_productions(data: &std::path::Path) -> Option<(Process, String)> {
    let dir = PathBuf::from(BIN).parent()?.to_path_buf();
    let binary = dir.join("productions-server");
    if !binary.is_file() {
        return None;
    }
    let mut child = Command::new(&binary)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn productions-server");
    let stdout = child.stdout.take().expect("stdout");
    let process = Process(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("productions-server printed no listening line in 30 s");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Some((process, url))
}

fn run_cli(args: &[&str]) -> std::process::Output {
    let started = Instant::now();
    let output = Command::new(BIN).args(args).output().expect("run binary");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the suite took too long"
    );
    output
}

#[test]
fn the_binary_passes_a_real_productions_server() {
    let data = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Prefer a real process; fall back to an in-process server.
    let (process, in_process, url) = match spawn_productions(data.path()) {
        Some((process, url)) => (Some(process), None, url),
        None => {
            eprintln!("productions-server binary not built; using an in-process server");
            let server = runtime.block_on(async {
                let ctx = ServerContext::prepare(ServerOptions::ephemeral(
                    Role::Productions,
                    data.path(),
                ))
                .expect("context");
                productions_server::start(&ctx).await.expect("start")
            });
            let url = server.url().to_string();
            (None, Some(server), url)
        }
    };
    let output = run_cli(&["productions", &url, "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["role"], "productions");
    let results = report["results"].as_array().expect("results");
    assert!(results.len() >= 5);
    assert!(results.iter().all(|r| r["status"] == "pass"), "{stdout}");

    let table = run_cli(&["productions", &url, "--only", "productions-put-get"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert!(text.contains("pass   productions-put-get"), "{text}");
    assert!(text.contains("1 checks: 1 passed, 0 failed"), "{text}");

    drop(process);
    if let Some(server) = in_process {
        runtime.block_on(server.stop()).expect("stop");
    }
}

#[test]
fn the_binary_fails_on_a_failing_check_and_lists_checks() {
    // Nothing listens on this port (bound, then released): every check fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let output = run_cli(&[
        "productions",
        &format!("http://127.0.0.1:{port}"),
        "--only",
        "common-id",
        "--timeout",
        "2",
    ]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("fail   common-id"), "{text}");

    let list = run_cli(&["storage", "http://127.0.0.1:1", "--list"]);
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("storage-put-mismatch"), "{text}");
    assert!(
        text.contains("spec/storage.md#storage-put-mismatch"),
        "{text}"
    );

    let bad_role = run_cli(&["teapot", "http://127.0.0.1:1"]);
    assert!(!bad_role.status.success());
}
