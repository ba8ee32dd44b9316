//! The vault's life on this device: `ehi init`, the keystore's recovery kit (`ehi
//! keystore backup|recover`), opening the vault for the other commands (with rollback
//! detection), `ehi status`, `ehi watch` and `ehi delete`.

use ehi_layer::share;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use ehi_layer::{KdfParams, Keystore, Network, Vault, present};
use zeroize::Zeroizing;

use super::common::{collection_note, confirm_delete, passphrase, print_json, prompt_secret};

pub(crate) async fn init(
    broker: &str,
    path: &Path,
    recovery_kit: Option<&Path>,
) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "a keystore already exists at {}; use --keystore for another one",
            path.display()
        );
    }
    if let Some(kit) = recovery_kit
        && kit.exists()
    {
        bail!(
            "{} exists; choose a new file for the recovery kit",
            kit.display()
        );
    }
    let passphrase = passphrase(true)?;
    let net = Network::connect(broker, None).await?;
    let keystore = Keystore::generate(net.slots_server())?;
    save_keystore(&keystore, path, passphrase).await?;
    match Vault::create(net, &keystore).await {
        Ok(vault) => {
            eprintln!(
                "created vault {} (keystore {})",
                vault.slot(),
                path.display()
            );
            eprintln!(
                "Keep the keystore and its passphrase: losing either loses the vault, because \
                 nothing else can decrypt it (not the servers, not us)."
            );
            match recovery_kit {
                Some(kit) => write_recovery_kit(&keystore, kit).await?,
                None => eprintln!(
                    "Write a recovery kit now: `ehi keystore backup <file>` (kept apart from its \
                     code, it restores the keystore with `ehi keystore recover`)."
                ),
            }
            Ok(())
        }
        Err(e) => {
            let _ = Keystore::destroy(path);
            Err(e.into())
        }
    }
}

/// Saves `keystore` to a new file at `path` under `passphrase` (Argon2id, off the
/// async workers).
pub(crate) async fn save_keystore(
    keystore: &Keystore,
    path: &Path,
    passphrase: Zeroizing<String>,
) -> anyhow::Result<()> {
    let keystore = keystore.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || keystore.save(&path, &passphrase, KdfParams::default()))
        .await??;
    Ok(())
}

/// Writes a recovery kit and prints its code once (stdout), with what to do (stderr).
async fn write_recovery_kit(keystore: &Keystore, kit: &Path) -> anyhow::Result<()> {
    let code = {
        let keystore = keystore.clone();
        let kit = kit.to_path_buf();
        tokio::task::spawn_blocking(move || keystore.save_recovery_kit(&kit, KdfParams::default()))
            .await??
    };
    eprintln!(
        "wrote the recovery kit {}. Its recovery code follows, shown this once: write it \
         down and keep it apart from the kit. Kit and code together restore the keystore \
         (`ehi keystore recover {}`); either alone reveals nothing.",
        kit.display(),
        kit.display()
    );
    println!("{}", code.as_str());
    Ok(())
}

/// `ehi keystore backup <kit>`.
pub(crate) async fn keystore_backup(keystore_path: &Path, kit: &Path) -> anyhow::Result<()> {
    if kit.exists() {
        bail!(
            "{} exists; choose a new file for the recovery kit",
            kit.display()
        );
    }
    let passphrase = passphrase(false)?;
    let keystore = {
        let path = keystore_path.to_path_buf();
        tokio::task::spawn_blocking(move || Keystore::open(&path, &passphrase)).await??
    };
    write_recovery_kit(&keystore, kit).await
}

/// `ehi keystore recover <kit>`: the keystore back from kit and code, under a new
/// passphrase, checked against the network (the vault must open).
pub(crate) async fn keystore_recover(
    broker: &str,
    keystore_path: &Path,
    kit: &Path,
) -> anyhow::Result<()> {
    if keystore_path.exists() {
        bail!(
            "a keystore already exists at {}; recover to another place with --keystore",
            keystore_path.display()
        );
    }
    let code = match std::env::var("EHI_RECOVERY_CODE") {
        Ok(code) => Zeroizing::new(code),
        Err(_) => prompt_secret("Recovery code: ", "the recovery code", "EHI_RECOVERY_CODE")?,
    };
    let keystore = {
        let kit = kit.to_path_buf();
        tokio::task::spawn_blocking(move || Keystore::open_recovery_kit(&kit, &code)).await??
    };
    let net = Network::connect(broker, Some(keystore.slots_server())).await?;
    let vault = Vault::open(net, &keystore)
        .await
        .context("the kit opened, but its vault did not")?;
    let passphrase = passphrase(true)?;
    save_keystore(&keystore, keystore_path, passphrase).await?;
    eprintln!(
        "recovered the keystore of vault {} to {} (under the new passphrase)",
        vault.slot(),
        keystore_path.display()
    );
    Ok(())
}

/// Where this device remembers the highest vault generation it saw.
fn seen_generation_file(keystore: &Path) -> PathBuf {
    let mut name = keystore.as_os_str().to_owned();
    name.push(".generation");
    PathBuf::from(name)
}

/// Unlocks the keystore and opens its vault, refusing a root older than one this
/// device saw; also returns the file where the generation seen is recorded.
pub(crate) async fn open(
    broker: &str,
    keystore_path: &Path,
) -> anyhow::Result<(Keystore, Arc<Vault>, PathBuf)> {
    let passphrase = passphrase(false)?;
    let keystore = {
        let path = keystore_path.to_path_buf();
        tokio::task::spawn_blocking(move || Keystore::open(&path, &passphrase)).await??
    };
    let net = Network::connect(broker, Some(keystore.slots_server())).await?;
    let vault = Arc::new(Vault::open(net, &keystore).await?);
    // Rollback detection: refuse a root older than one this device saw.
    let seen_file = seen_generation_file(keystore_path);
    vault.check_rollback(&seen_file).await?;
    Ok((keystore, vault, seen_file))
}

/// `ehi delete`: after confirmation (or `--yes`), removes the vault and destroys the
/// keystore.
pub(crate) async fn delete(
    vault: Arc<Vault>,
    keystore_path: &Path,
    yes: bool,
) -> anyhow::Result<()> {
    if !yes && !confirm_delete()? {
        bail!("not deleted");
    }
    let vault = Arc::into_inner(vault).context("the vault is still in use")?;
    let report = share::remove(vault, Some(keystore_path)).await?;
    eprintln!(
        "vault removed: slots point at the tombstone, {} of {} blocks unpinned{}, keystore {} destroyed.\n\
         the data cannot be decrypted from now on: every key is gone (crypto-shredded).\n\
         note: {}.",
        report.unpinned,
        report.blocks,
        if report.distributor {
            ""
        } else {
            " (no distributor)"
        },
        keystore_path.display(),
        collection_note(report.collection.as_ref()),
    );
    for note in report.notes {
        eprintln!("note: {note}");
    }
    Ok(())
}

/// `ehi status`: the vault's counts and ids, and the emergency accesses not yet
/// acknowledged.
pub(crate) async fn status(vault: &Vault, keystore: &Keystore, table: bool) -> anyhow::Result<()> {
    let status = vault.status().await?;
    // A log the holder wrote badly must not hide the vault's status.
    let pending = match ehi_layer::emergency::pending(vault, keystore).await {
        Ok(pending) => pending,
        Err(e) => {
            eprintln!("warning: the emergency access log could not be checked: {e}");
            Vec::new()
        }
    };
    if table {
        print!("{}", present::status_table(&status));
    } else {
        let mut json = present::status_json(&status);
        if !pending.is_empty() {
            json["emergencyAccess"] = serde_json::to_value(&pending)?;
        }
        print_json(&json)?;
    }
    for use_ in &pending {
        eprintln!("{} (acknowledge with `ehi emergency ack`)", use_.notice());
    }
    Ok(())
}

/// `ehi watch`: follows the vault slot and prints each change until Ctrl-C.
pub(crate) async fn watch(vault: &Vault) -> anyhow::Result<()> {
    eprintln!("watching vault {} (Ctrl-C stops)", vault.slot());
    let watch = vault.watch(|event| {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(
            stdout,
            "synced generation {} (root {})",
            event.generation, event.root
        );
        let _ = stdout.flush();
    });
    tokio::select! {
        result = watch => result?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
