//! For the tests that run the `invariant` binary: the command with none of the caller's
//! client settings, and reading what a run printed.

use std::path::Path;
use std::process::{Output, Stdio};

/// The client settings the binary would take from the environment.
pub const CLIENT_ENV: [&str; 5] = [
    "INVARIANT_TOKEN",
    "INVARIANT_TOKEN_FILE",
    "INVARIANT_CA_CERT",
    "INVARIANT_BROKER",
    "INVARIANT_CONFIG_DIR",
];

/// `invariant --broker <broker> --config-dir <config_dir>`, with no client settings
/// from the environment and no stdin; the caller adds its arguments.
pub fn invariant(broker: &str, config_dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_invariant"));
    for var in CLIENT_ENV {
        command.env_remove(var);
    }
    command
        .arg("--broker")
        .arg(broker)
        .arg("--config-dir")
        .arg(config_dir)
        .stdin(Stdio::null());
    command
}

/// Bytes as (lossy) text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The trimmed stdout of a run that must have succeeded.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "invariant failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout).trim().to_string()
}
