//! The `invariant-conformance` binary end to end: against a real `productions-server`
//! process when its binary is in the target directory (as under
//! `cargo test --workspace`), else against one started in-process, in open mode and in
//! auth mode (a token from the environment or a file); and against a broken fake,
//! where it must exit non-zero.

mod binary;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use invariant_runtime::{Role, Server, ServerContext, ServerOptions, TlsFiles};
use invariant_test_support::{TestAuth, TestPki};

use binary::BIN;

/// A server process started by this test; killed (by its own handle) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `target/<profile>/productions-server` on a free port (checking tokens against
/// the root public key in `root_key_file`, if given); `None` when absent.
fn spawn_productions(
    data: &std::path::Path,
    root_key_file: Option<&std::path::Path>,
) -> Option<(Process, String)> {
    let dir = PathBuf::from(BIN).parent()?.to_path_buf();
    let binary = dir.join("productions-server");
    if !binary.is_file() {
        return None;
    }
    let mut command = Command::new(&binary);
    if let Some(file) = root_key_file {
        command.arg("--auth-root-key").arg(file);
    }
    let mut child = command
        .env_remove("INVARIANT_AUTH_ROOT_KEY")
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

/// A productions server: a real process when the binary is built, else in-process.
/// With `auth`, it checks tokens against its root.
fn productions(
    runtime: &tokio::runtime::Runtime,
    data: &std::path::Path,
    auth: Option<&TestAuth>,
) -> (Option<Process>, Option<Server>, String) {
    let key_file = data.join("root.pub");
    if let Some(auth) = auth {
        std::fs::write(&key_file, auth.root.public_text()).expect("write root key");
    }
    let server_data = data.join("server");
    if let Some((process, url)) = spawn_productions(&server_data, auth.map(|_| key_file.as_path()))
    {
        return (Some(process), None, url);
    }
    eprintln!("productions-server binary not built; using an in-process server");
    let server = runtime.block_on(async {
        let mut options = ServerOptions::ephemeral(Role::Productions, &server_data);
        options.auth.root = auth.map(TestAuth::public);
        let ctx = ServerContext::prepare(options).expect("context");
        productions_server::start(&ctx).await.expect("start")
    });
    let url = server.url().to_string();
    (None, Some(server), url)
}

/// Runs the binary with no client settings from the caller's environment.
fn run_cli(args: &[&str]) -> std::process::Output {
    run_cli_with(args, &[])
}

/// Runs the binary with `env` set (and no other client settings from the environment).
fn run_cli_with(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let started = Instant::now();
    let output = binary::run(args, env);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the suite took too long"
    );
    output
}

/// The JSON report's results.
fn results(output: &std::process::Output) -> Vec<serde_json::Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["role"], "productions");
    report["results"].as_array().expect("results").clone()
}

fn is_auth(result: &serde_json::Value) -> bool {
    result["check"]
        .as_str()
        .is_some_and(|c| c.starts_with("auth-"))
}

#[test]
fn the_binary_passes_a_real_productions_server() {
    let data = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (process, in_process, url) = productions(&runtime, data.path(), None);
    let output = run_cli(&["productions", &url, "--json", "--profile", "secure"]);
    let results = results(&output);
    assert!(results.len() >= 5);
    let (auth, protocol): (Vec<_>, Vec<_>) = results.iter().partition(|r| is_auth(r));
    assert!(
        protocol.iter().all(|r| r["status"] == "pass"),
        "{results:?}"
    );
    // Without a token the server is taken to be open: the auth checks are skipped.
    assert!(auth.len() >= 6, "{results:?}");
    assert!(auth.iter().all(|r| r["status"] == "skip"), "{auth:?}");
    assert!(
        auth.iter().all(|r| r["spec"]
            .as_str()
            .is_some_and(|s| s.starts_with("spec/security.md#"))),
        "{auth:?}"
    );

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
fn the_binary_checks_a_server_in_auth_mode() {
    let data = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let auth = TestAuth::new();
    let (process, in_process, url) = productions(&runtime, data.path(), Some(&auth));
    let operator = auth.token("conformance-operator", "*");

    // The token from the environment: every check runs and passes, the auth ones too.
    let output = run_cli_with(
        &["productions", &url, "--json"],
        &[("INVARIANT_TOKEN", operator.as_str())],
    );
    let results = results(&output);
    assert!(results.iter().all(|r| r["status"] == "pass"), "{results:?}");
    assert!(
        results.iter().filter(|r| is_auth(r)).count() >= 6,
        "{results:?}"
    );

    // The token from a file.
    let token_file = data.path().join("operator.token");
    std::fs::write(&token_file, format!("{operator}\n")).expect("write token");
    let token_file = token_file.to_string_lossy().into_owned();
    let table = run_cli(&[
        "productions",
        &url,
        "--token-file",
        &token_file,
        "--only",
        "auth-no-token",
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{text}");
    assert!(text.contains("pass   auth-no-token"), "{text}");

    // Without the token, the existing checks' writes are refused: the run fails.
    let refused = run_cli(&["productions", &url, "--only", "productions-put-get"]);
    assert!(!refused.status.success());

    drop(process);
    if let Some(server) = in_process {
        runtime.block_on(server.stop()).expect("stop");
    }
}

#[test]
fn the_binary_fails_on_a_failing_check_and_lists_checks() {
    // Nothing listens on this port (bound, then released): one error, exit status 2,
    // no check run.
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
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("unreachable"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "{text}");

    let list = run_cli(&["storage", "http://127.0.0.1:1", "--list"]);
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("storage-put-mismatch"), "{text}");
    assert!(
        text.contains("spec/storage.md#storage-put-mismatch"),
        "{text}"
    );
    for check in [
        "auth-no-token",
        "auth-narrowed-token",
        "auth-reads",
        "auth-id-open",
    ] {
        assert!(text.contains(check), "{text}");
    }
    assert!(text.contains("spec/security.md#security-401"), "{text}");

    let bad_role = run_cli(&["teapot", "http://127.0.0.1:1"]);
    assert!(!bad_role.status.success());
}

#[test]
fn the_binary_trusts_the_given_ca() {
    let data = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let auth = TestAuth::new();
    let pki = TestPki::new(&data.path().join("pki"));
    let server = runtime.block_on(async {
        let mut options = ServerOptions::ephemeral(Role::Productions, data.path().join("server"));
        options.auth.root = Some(auth.public());
        options.tls = Some(TlsFiles {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
        });
        let ctx = ServerContext::prepare(options).expect("context");
        productions_server::start(&ctx).await.expect("start")
    });
    let url = server.url().to_string();
    assert!(url.starts_with("https://"), "{url}");
    let operator = auth.token("conformance-operator", "*");
    let ca = pki.ca_cert.to_string_lossy().into_owned();

    let output = run_cli(&[
        "productions",
        &url,
        "--json",
        "--ca-cert",
        &ca,
        "--token",
        &operator,
    ]);
    let results = results(&output);
    assert!(results.iter().all(|r| r["status"] == "pass"), "{results:?}");
    assert!(results.iter().filter(|r| is_auth(r)).count() >= 6);

    // The CA from the environment works the same.
    let from_env = run_cli_with(
        &["productions", &url, "--only", "common-id"],
        &[("INVARIANT_CA_CERT", ca.as_str())],
    );
    assert!(from_env.status.success());

    // Without the CA the certificate is not trusted: every check fails.
    let untrusted = run_cli(&["productions", &url, "--only", "common-id", "--timeout", "5"]);
    assert!(!untrusted.status.success());
    let text = String::from_utf8_lossy(&untrusted.stdout);
    assert!(text.contains("fail   common-id"), "{text}");

    runtime.block_on(server.stop()).expect("stop");
}
