//! Tokens made with `invariant auth` used against real servers: a root key from
//! `auth init` given to a broker and a storage server, a token from `auth issue` that
//! lets the CLI store a blob, and the same token narrowed by `auth attenuate` (or no
//! token at all) refused with a message that says why.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use integration_tests::ServerProcess;

fn invariant(config_dir: &Path, broker: &str, args: &[&str]) -> anyhow::Result<Output> {
    integration_tests::up::invariant_cli(config_dir, broker, args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(output: Output) -> anyhow::Result<String> {
    anyhow::ensure!(output.status.success(), "{}", text(&output.stderr));
    Ok(text(&output.stdout).trim().to_string())
}

#[test]
fn issued_tokens_open_exactly_their_routes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let none = "http://127.0.0.1:9";
    ok(invariant(&config, none, &["auth", "init"])?)?;
    let root_pub = config.join("root.pub");
    let root_pub = root_pub.to_str().expect("utf-8");

    // The storage server's own token: register with the broker only.
    let server_token = ok(invariant(
        &config,
        none,
        &[
            "auth",
            "issue",
            "--subject",
            "storage-1",
            "--allow",
            "broker:register",
            "--expires",
            "1d",
        ],
    )?)?;
    let token_file = dir.path().join("storage.token");
    std::fs::write(&token_file, &server_token)?;
    let broker = ServerProcess::start(
        "broker-server",
        &dir.path().join("broker"),
        &["--auth-root-key", root_pub],
    )?;
    let _storage = ServerProcess::start(
        "storage-server",
        &dir.path().join("storage"),
        &[
            "--broker",
            broker.url(),
            "--auth-root-key",
            root_pub,
            "--token-file",
            token_file.to_str().expect("utf-8"),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = invariant(&config, broker.url(), &["status"])?;
        if text(&status.stdout)
            .lines()
            .any(|l| l.starts_with("storage"))
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "storage did not register: {}",
            broker.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let file = dir.path().join("blob.txt");
    std::fs::write(&file, b"issued")?;
    let file = file.to_str().expect("utf-8");
    // No token: 401, and the CLI says how to give one.
    let refused = invariant(&config, broker.url(), &["put", file])?;
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("answered 401") && stderr.contains("hint: this network checks"),
        "{stderr}"
    );

    let alice = ok(invariant(
        &config,
        none,
        &[
            "auth",
            "issue",
            "--subject",
            "alice",
            "--allow",
            "storage:write,storage:read",
            "--expires",
            "1h",
        ],
    )?)?;
    let stored = ok(invariant(
        &config,
        broker.url(),
        &["--token", &alice, "put", file],
    )?)?;
    assert_eq!(stored.len(), 64, "{stored}");

    // Narrowed to reading, the same token may no longer write: 403 with the reason.
    let reader = ok(invariant(
        &config,
        none,
        &["auth", "attenuate", &alice, "--allow", "storage:read"],
    )?)?;
    let other = dir.path().join("other.txt");
    std::fs::write(&other, b"not allowed")?;
    let refused = invariant(
        &config,
        broker.url(),
        &["--token", &reader, "put", other.to_str().expect("utf-8")],
    )?;
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("answered 403") && stderr.contains("auth inspect"),
        "{stderr}"
    );
    let explained = ok(invariant(&config, none, &["auth", "inspect", &reader])?)?;
    assert!(explained.contains("narrowed:  1"), "{explained}");
    // ... and the blob is not there, while the allowed one is.
    let absent = invariant_spec::Id::of_content(b"not allowed").to_string();
    let cat = invariant(&config, broker.url(), &["cat", &absent])?;
    assert!(!cat.status.success());
    let cat = invariant(&config, broker.url(), &["cat", &stored])?;
    assert_eq!(ok(cat)?, "issued");

    // A token file in the config dir is used by default.
    std::fs::write(config.join("token"), format!("{alice}\n"))?;
    ok(invariant(&config, broker.url(), &["put", file])?)?;
    Ok(())
}
