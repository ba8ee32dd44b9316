//! Slot signing keys kept on this machine.
//!
//! Each ed25519 slot created by `invariant slot create` has its 32-byte seed stored as
//! hex in `<config-dir>/slots/<slot-id>.key`, readable only by the owner (mode 0600).
//! The config dir is `--config-dir`, `INVARIANT_CONFIG_DIR`, or
//! `$XDG_CONFIG_HOME/invariant` / `~/.config/invariant`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use invariant_spec::Id;
use invariant_spec::slots::SlotSigner;

fn key_path(config_dir: &Path, slot: &Id) -> PathBuf {
    config_dir.join("slots").join(format!("{slot}.key"))
}

/// A new random ed25519 signer, saved under the config dir; returns it and its slot id.
pub fn create(config_dir: &Path) -> anyhow::Result<(SlotSigner, Id)> {
    let seed: [u8; 32] = rand::random();
    let signer = SlotSigner::ed25519_from_seed(&seed);
    let slot = signer
        .ed25519_slot()
        .context("ed25519 signer has a slot id")?;
    let path = key_path(config_dir, &slot);
    fs::create_dir_all(path.parent().context("key path has a parent")?)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{}", hex::encode(seed))?;
    file.sync_all()?;
    Ok((signer, slot))
}

/// The signer of `slot`, if its key is kept here.
pub fn load(config_dir: &Path, slot: &Id) -> anyhow::Result<Option<SlotSigner>> {
    let path = key_path(config_dir, slot);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let bytes =
        hex::decode(text.trim()).with_context(|| format!("{} is not hex", path.display()))?;
    let Ok(seed) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        bail!("{} does not hold a 32-byte seed", path.display());
    };
    let signer = SlotSigner::ed25519_from_seed(&seed);
    if signer.ed25519_slot() != Some(*slot) {
        bail!("{} holds the key of another slot", path.display());
    }
    Ok(Some(signer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_keys_load_back_and_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, slot) = create(dir.path()).expect("create");
        let loaded = load(dir.path(), &slot).expect("load").expect("present");
        assert_eq!(loaded.ed25519_slot(), Some(slot));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(key_path(dir.path(), &slot))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            load(dir.path(), &Id::of_content(b"other"))
                .expect("absent")
                .is_none()
        );
    }
}
