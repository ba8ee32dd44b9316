//! Running the `ehi` binary: a command with its own `HOME`, the test network's broker
//! and a passphrase in the environment (no keystore path or XDG config inherited, no
//! stdin).

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::{PASSPHRASE, patient_bundle};

/// `ehi` (no arguments yet) for the vault under `home`, unlocked with `passphrase`.
pub fn command(home: &Path, broker: &str, passphrase: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ehi"));
    command
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("EHI_KEYSTORE")
        .env("INVARIANT_BROKER", broker)
        .env("EHI_PASSPHRASE", passphrase)
        .stdin(Stdio::null());
    command
}

/// Runs `ehi args` to completion (off the async runtime) with `passphrase`.
pub async fn ehi_as(
    home: &Path,
    broker: &str,
    passphrase: &str,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> anyhow::Result<Output> {
    let mut command = command(home, broker, passphrase);
    command.args(args);
    Ok(tokio::task::spawn_blocking(move || command.output()).await??)
}

/// Runs `ehi args` to completion with [`PASSPHRASE`].
pub async fn ehi(
    home: &Path,
    broker: &str,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> anyhow::Result<Output> {
    ehi_as(home, broker, PASSPHRASE, args).await
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails with the command's stderr unless it succeeded.
pub fn ok(out: &Output) -> anyhow::Result<()> {
    anyhow::ensure!(out.status.success(), "failed: {}", text(&out.stderr));
    Ok(())
}

/// `ehi init`, then `ehi import` of [`patient_bundle`] (written to
/// `home/patient.json`); fails unless both succeed.
pub async fn init_with_patient(home: &Path, broker: &str) -> anyhow::Result<()> {
    ok(&ehi(home, broker, ["init"]).await?)?;
    let bundle = home.join("patient.json");
    std::fs::write(&bundle, serde_json::to_vec(&patient_bundle())?)?;
    ok(&ehi(
        home,
        broker,
        [std::ffi::OsStr::new("import"), bundle.as_os_str()],
    )
    .await?)
}
