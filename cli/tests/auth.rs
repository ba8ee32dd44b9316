//! `invariant auth` and the global client options through the real binary: a root key
//! made once and kept private, tokens issued, narrowed and explained, and client
//! options that cannot be used refused before anything is sent.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `invariant` with its own config dir and no client settings from the environment.
fn invariant(config_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_invariant"));
    for var in [
        "INVARIANT_TOKEN",
        "INVARIANT_TOKEN_FILE",
        "INVARIANT_CA_CERT",
        "INVARIANT_BROKER",
    ] {
        command.env_remove(var);
    }
    command
        .env("INVARIANT_CONFIG_DIR", config_dir)
        .stdin(Stdio::null());
    command
}

fn run(config_dir: &Path, args: &[&str]) -> Output {
    invariant(config_dir)
        .args(args)
        .output()
        .expect("run invariant")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
}

#[test]
fn init_issue_attenuate_inspect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path();

    // init: both files in the config dir, the private one 0600; the server line.
    let printed = ok(&run(config, &["auth", "init"]));
    let key = config.join("root.key");
    let public = config.join("root.pub");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        printed.contains(&format!("--auth-root-key {}", public.display())),
        "{printed}"
    );
    let before = std::fs::read(&key).expect("key");
    let again = run(config, &["auth", "init"]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read(&key).expect("key"), before);

    // issue, then inspect against the root in the config dir.
    let token = ok(&run(
        config,
        &[
            "auth",
            "issue",
            "--subject",
            "alice",
            "--allow",
            "storage:write,slots:*",
            "--expires",
            "7d",
            "--quota",
            "10G",
        ],
    ))
    .trim()
    .to_string();
    let explained = ok(&run(config, &["auth", "inspect", &token]));
    for expected in [
        "signature: valid",
        "subject:   alice",
        "rights:    slots:*, storage:write",
        "quota:     10737418240 bytes",
        "(in 6d 23h)",
    ] {
        assert!(explained.contains(expected), "{expected}:\n{explained}");
    }

    // attenuate from stdin; the narrowed token shows its extra block.
    let mut child = invariant(config)
        .args([
            "auth",
            "attenuate",
            "-",
            "--allow",
            "storage:write",
            "--expires",
            "1h",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), token.as_bytes())
        .expect("write token");
    let narrowed = ok(&child.wait_with_output().expect("wait"))
        .trim()
        .to_string();
    assert_ne!(narrowed, token);
    let explained = ok(&run(config, &["auth", "inspect", &narrowed]));
    assert!(
        explained.contains("narrowed:  1 attenuation block"),
        "{explained}"
    );
    assert!(
        explained.contains("operation(\"storage:write\")"),
        "{explained}"
    );

    // Without the root public key, inspect decodes but says nothing is proven.
    let elsewhere = dir.path().join("elsewhere");
    let unchecked = ok(&run(&elsewhere, &["auth", "inspect", &token]));
    assert!(unchecked.contains("NOT checked"), "{unchecked}");
    assert!(unchecked.contains("subject(\"alice\")"), "{unchecked}");
    // Against another root it fails, and says so.
    let other = dir.path().join("other");
    ok(&run(&other, &["auth", "init"]));
    let foreign = run(&other, &["auth", "inspect", &token]);
    assert!(!foreign.status.success());
    assert!(
        text(&foreign.stdout).contains("NOT valid"),
        "{}",
        text(&foreign.stdout)
    );

    // Bad input is refused with its reason.
    let bad = run(
        config,
        &[
            "auth",
            "issue",
            "--subject",
            "a",
            "--allow",
            "nope:x",
            "--expires",
            "1d",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("invalid right"),
        "{}",
        text(&bad.stderr)
    );
    let bad = run(
        config,
        &[
            "auth",
            "issue",
            "--subject",
            "a",
            "--allow",
            "*",
            "--expires",
            "1d",
            "--quota",
            "5X",
        ],
    );
    assert!(
        text(&bad.stderr).contains("size unit"),
        "{}",
        text(&bad.stderr)
    );
    let no_key = run(
        &elsewhere,
        &[
            "auth",
            "issue",
            "--subject",
            "a",
            "--allow",
            "*",
            "--expires",
            "never",
        ],
    );
    assert!(
        text(&no_key.stderr).contains("invariant auth init"),
        "{}",
        text(&no_key.stderr)
    );
}

#[test]
fn init_force_replaces_the_key_in_another_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let keys_arg = keys.to_str().expect("utf-8");
    ok(&run(dir.path(), &["auth", "init", "--dir", keys_arg]));
    let before = std::fs::read(keys.join("root.pub")).expect("pub");
    ok(&run(
        dir.path(),
        &["auth", "init", "--dir", keys_arg, "--force"],
    ));
    assert_ne!(std::fs::read(keys.join("root.pub")).expect("pub"), before);
    assert!(!dir.path().join("root.key").exists(), "--dir was used");
}

#[test]
fn client_options_are_checked_before_anything_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A listener nobody should reach: the run fails before connecting.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let broker = format!("http://{}", listener.local_addr().expect("addr"));
    let missing = dir.path().join("missing.token");
    let out = run(
        dir.path(),
        &[
            "--broker",
            &broker,
            "--token-file",
            missing.to_str().expect("utf-8"),
            "status",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("missing.token"),
        "{}",
        text(&out.stderr)
    );
    let bad_ca = dir.path().join("ca.pem");
    std::fs::write(&bad_ca, "not a certificate").expect("write");
    let out = run(
        dir.path(),
        &[
            "--broker",
            &broker,
            "--ca-cert",
            bad_ca.to_str().expect("utf-8"),
            "status",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ca.pem"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        listener.accept().is_err(),
        "a client with unusable options connected"
    );

    // --insecure-skip-verify warns on every run.
    let out = run(dir.path(), &["--insecure-skip-verify", "auth", "init"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("warning: --insecure-skip-verify"));
}
