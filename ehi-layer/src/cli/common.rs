//! What the subcommands share: the keystore's default path, passphrase and secret
//! prompts, the delete confirmation, JSON printing, parsing `Type/id` references, and
//! the notes on unpinned ciphertext.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use zeroize::Zeroizing;

pub(crate) fn default_keystore() -> anyhow::Result<PathBuf> {
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .context("HOME is not set; pass --keystore")?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(config.join("ehi").join("keystore.json"))
}

/// Fails unless `dir` is missing or an empty directory.
pub(crate) fn refuse_non_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context(format!("reading {}", dir.display()))),
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; choose a new folder, or pass --force to write into it \
                     (files of the same names are replaced)",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// Asks on the terminal, or says how to give the passphrase when there is none.
fn prompt_passphrase(prompt: &str) -> anyhow::Result<Zeroizing<String>> {
    prompt_secret(prompt, "the keystore passphrase", "EHI_PASSPHRASE")
}

/// Asks for a secret on the terminal, or says which variable gives it when there is no
/// terminal.
pub(crate) fn prompt_secret(
    prompt: &str,
    what: &str,
    variable: &str,
) -> anyhow::Result<Zeroizing<String>> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_err()
    {
        bail!(
            "no terminal to ask for {what}: set {variable} (for scripts and services), or \
             run ehi in a terminal"
        );
    }
    Ok(Zeroizing::new(
        rpassword::prompt_password(prompt).with_context(|| format!("reading {what}"))?,
    ))
}

pub(crate) fn passphrase(new: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(value) = std::env::var("EHI_PASSPHRASE") {
        return Ok(Zeroizing::new(value));
    }
    let first = prompt_passphrase("Keystore passphrase: ")?;
    if new {
        if first.chars().count() < 8 {
            bail!("choose a passphrase of at least 8 characters");
        }
        let again = prompt_passphrase("Repeat the passphrase: ")?;
        if *first != *again {
            bail!("the passphrases differ");
        }
    }
    Ok(first)
}

pub(crate) fn confirm_delete() -> anyhow::Result<bool> {
    eprint!("This removes the vault and destroys the keystore. Type DELETE to confirm: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the confirmation")?;
    Ok(line.trim() == "DELETE")
}

pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}

pub(crate) fn parse_reference(reference: &str) -> anyhow::Result<(String, String, Option<u64>)> {
    let parts: Vec<&str> = reference.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [t, id] => Ok((t.to_string(), id.to_string(), None)),
        [t, id, "_history", v] => Ok((
            t.to_string(),
            id.to_string(),
            Some(v.parse().with_context(|| format!("version {v:?}"))?),
        )),
        _ => bail!("expected Type/id or Type/id/_history/n, got {reference:?}"),
    }
}

/// When unpinned ciphertext leaves the storage servers, for the delete and revoke
/// messages.
pub(crate) fn collection_note(collection: Option<&ehi_layer::network::Collection>) -> String {
    match collection {
        Some(collection) => collection.describe(),
        None => "no distributor here collects unpinned blocks: the ciphertext stays on the \
                 storage servers until an operator deletes it"
            .to_string(),
    }
}
