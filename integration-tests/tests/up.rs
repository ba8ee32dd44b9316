//! `invariant up` as a real process: every role starts and registers with the broker,
//! the CLI stores and reads blobs, pins and finds them, and drives slots and names
//! through it, and SIGTERM stops the whole network. The same flow runs with token
//! checks (the default) and over HTTPS with `--tls`; `--open` needs no token.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::up::{Up, UpMode, host_port};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Status, put/cat, pin + find, slot create/set/history, name register/lookup.
fn network_flow(net: &Up, dir: &Path) -> anyhow::Result<()> {
    for name in [
        "broker",
        "storage-1",
        "storage-2",
        "storage-3",
        "slots",
        "names",
        "productions",
        "find",
        "files",
        "distributor",
    ] {
        assert!(
            net.urls().contains_key(name),
            "{name} not started: {:?}",
            net.urls()
        );
    }
    // Every server registers itself with the broker.
    net.wait_registered(3, &["slots", "names"])?;

    // Blobs through the CLI.
    let file = dir.join("blob.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content)?;
    let put = net.invariant(&["put", file.to_str().expect("utf-8 path")])?;
    assert!(put.status.success(), "put failed: {}", text(&put.stderr));
    let address = String::from_utf8(put.stdout)?.trim().to_string();
    assert_eq!(address.len(), 64);
    let cat = net.invariant(&["cat", &address])?;
    assert!(cat.status.success(), "{}", text(&cat.stderr));
    assert_eq!(cat.stdout, content);

    // The distributor keeps the blob on 3 storage servers; find locates it.
    let pinned = net.invariant(&["pin", &address])?;
    assert!(pinned.status.success(), "{}", text(&pinned.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = net.invariant(&["find", &address])?;
        let holders = text(&found.stdout).lines().count();
        if found.status.success() && holders == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected 3 holders, find said:\n{}\n{}",
            text(&found.stdout),
            text(&found.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Slots and names through the CLI, keys kept in a private config dir.
    let config_dir = dir.join("keys");
    let cfg = config_dir.to_str().expect("utf-8 path");
    let created = net.invariant(&["--config-dir", cfg, "slot", "create", &address])?;
    assert!(created.status.success(), "{}", text(&created.stderr));
    let slot = String::from_utf8(created.stdout)?.trim().to_string();
    let next = "ab".repeat(32);
    let set = net.invariant(&["--config-dir", cfg, "slot", "set", &slot, &next])?;
    assert!(set.status.success(), "{}", text(&set.stderr));
    let history = net.invariant(&["slot", "history", &slot])?;
    let history = String::from_utf8(history.stdout)?;
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "history: {history}");
    assert!(lines[0].contains(&next) && lines[1].contains(&address));
    // Without the key, a signed slot refuses the update (the token allows it: the
    // signature is what is missing).
    let other = dir.join("other-keys");
    let refused = net.invariant(&[
        "--config-dir",
        other.to_str().expect("utf-8"),
        "slot",
        "set",
        &slot,
        &address,
    ])?;
    assert!(!refused.status.success());
    assert!(
        !text(&refused.stderr).contains("answered 401"),
        "{}",
        text(&refused.stderr)
    );

    let registered = net.invariant(&["name", "register", "photos", &address])?;
    assert!(registered.status.success(), "{}", text(&registered.stderr));
    let looked = net.invariant(&["name", "lookup", "PHOTOS.local"])?;
    assert!(String::from_utf8(looked.stdout)?.contains(&address));
    Ok(())
}

/// SIGTERM stops everything; the servers' ports close.
fn stop_and_check_ports(mut net: Up) -> anyhow::Result<()> {
    let exit = net.stop()?;
    assert!(exit.success(), "invariant up exited with {exit}");
    for (name, url) in net.urls() {
        assert!(
            std::net::TcpStream::connect(host_port(url)).is_err(),
            "{name} still listening at {url} after up stopped"
        );
    }
    Ok(())
}

#[test]
fn up_starts_every_role_and_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = Up::start(dir.path(), UpMode::default())?;
    assert!(
        net.lines().iter().any(|l| l.starts_with("auth: on")),
        "{:?}",
        net.lines()
    );
    network_flow(&net, dir.path())?;

    let file = dir.path().join("small.txt");
    std::fs::write(&file, b"tokens")?;
    let file = file.to_str().expect("utf-8");
    // Without a token, writes are refused with a message that says what to do.
    let empty = dir.path().join("empty-config");
    let anonymous = net
        .cli()?
        .env_remove("INVARIANT_TOKEN_FILE")
        .env("INVARIANT_CONFIG_DIR", &empty)
        .args(["put", file])
        .output()?;
    assert!(!anonymous.status.success());
    let stderr = text(&anonymous.stderr);
    assert!(
        stderr.contains("answered 401")
            && stderr.contains("requires a capability token")
            && stderr.contains("hint:")
            && stderr.contains("operator.token"),
        "unclear refusal: {stderr}"
    );
    // Reads stay open.
    let reader = net
        .cli()?
        .env_remove("INVARIANT_TOKEN_FILE")
        .env("INVARIANT_CONFIG_DIR", &empty)
        .arg("status")
        .output()?;
    assert!(reader.status.success(), "{}", text(&reader.stderr));

    // Without any option, the CLI uses the operator token `up` left for this broker.
    let broker = net.broker()?.to_string();
    let left = invariant_spec::client_config::up_token_path(net.config_dir(), &broker)
        .expect("broker url");
    assert_eq!(
        std::fs::metadata(&left)?.permissions().mode() & 0o777,
        0o600
    );
    let automatic = net
        .cli()?
        .env_remove("INVARIANT_TOKEN_FILE")
        .args(["put", file])
        .output()?;
    assert!(
        automatic.status.success(),
        "the CLI did not pick up up's token: {}",
        text(&automatic.stderr)
    );
    // The server tokens and the root key are private.
    for private in [
        "root.key",
        "operator.token",
        "storage-1.token",
        "files.token",
    ] {
        let path = net.data_dir().join("auth").join(private);
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600,
            "{}",
            path.display()
        );
    }
    stop_and_check_ports(net)?;
    assert!(!left.exists(), "up left its token behind after stopping");
    Ok(())
}

#[test]
fn up_tls_runs_the_same_flow_over_https() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = Up::start(
        dir.path(),
        UpMode {
            tls: true,
            open: false,
        },
    )?;
    for (name, url) in net.urls() {
        assert!(url.starts_with("https://127.0.0.1:"), "{name}: {url}");
    }
    let ca = net.ca_cert();
    let export = format!("export INVARIANT_CA_CERT={}", ca.display());
    assert!(
        net.lines().iter().any(|l| l.trim() == export),
        "{:?}",
        net.lines()
    );
    network_flow(&net, dir.path())?;

    // Every registration the broker holds is https.
    let status = net.invariant(&["status"])?;
    let listed = text(&status.stdout);
    assert!(
        listed.lines().count() >= 10 && !listed.contains("http://"),
        "{listed}"
    );

    // A client that does not trust the CA is refused, and told why.
    let untrusting = net
        .cli()?
        .env_remove("INVARIANT_CA_CERT")
        .arg("status")
        .output()?;
    assert!(!untrusting.status.success());
    let stderr = text(&untrusting.stderr);
    assert!(
        stderr.contains("certificate") && stderr.contains("--ca-cert"),
        "{stderr}"
    );
    // Skipping verification works, loudly.
    let insecure = net
        .cli()?
        .env_remove("INVARIANT_CA_CERT")
        .args(["--insecure-skip-verify", "status"])
        .output()?;
    assert!(insecure.status.success(), "{}", text(&insecure.stderr));
    assert!(text(&insecure.stderr).contains("warning: --insecure-skip-verify"));

    // The next start reuses the CA clients already trust.
    let ca_pem = std::fs::read(&ca)?;
    stop_and_check_ports(net)?;
    let net = Up::start(
        dir.path(),
        UpMode {
            tls: true,
            open: false,
        },
    )?;
    assert_eq!(std::fs::read(net.ca_cert())?, ca_pem);
    net.wait_registered(3, &["slots"])?;
    stop_and_check_ports(net)
}

#[test]
fn up_open_needs_no_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = Up::start(
        dir.path(),
        UpMode {
            tls: false,
            open: true,
        },
    )?;
    assert!(
        net.lines().iter().any(|l| l.starts_with("auth: off")),
        "{:?}",
        net.lines()
    );
    assert!(!net.data_dir().join("auth").exists());
    net.wait_registered(3, &["slots"])?;
    let file = dir.path().join("open.txt");
    std::fs::write(&file, b"anyone")?;
    let put = net.invariant(&["put", file.to_str().expect("utf-8")])?;
    assert!(put.status.success(), "{}", text(&put.stderr));
    stop_and_check_ports(net)
}
