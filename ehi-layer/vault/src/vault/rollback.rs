//! Rollback detection for the vault slot: a server can serve an older root (it cannot
//! forge one), and a device that never saw the newer one cannot tell. A device that
//! **did** see it can: it keeps the highest generation it has seen of this vault in a
//! small file next to its keystore (`<keystore>.generation`, JSON
//! `{"format": "ehi-seen-generation", "version": 1, "vault": …, "vault_id": …,
//! "generation": n}`), and [`Vault::check_rollback`] refuses a root whose generation is
//! lower ([`EhiError::Rollback`]) — the `ehi` command line checks at every start and
//! records the new generation after every command.
//!
//! Within one open handle, [`Vault::refresh`] (every re-read of the root) refuses a
//! root older than the one the handle holds, without any file.
//!
//! Limits: the file is as trustworthy as the device's disk; a device that never saw
//! the newer root (a new device) is still fooled; a rollback that happens *between* two
//! checks of one long-running handle is seen at the next check.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::*;

const FORMAT: &str = "ehi-seen-generation";

#[derive(Serialize, Deserialize)]
struct Seen {
    format: String,
    version: u32,
    vault: String,
    vault_id: String,
    generation: u64,
}

impl Vault {
    /// Compares the current root with the highest generation recorded in `path`:
    /// refuses an older root ([`EhiError::Rollback`]) or another vault id, else
    /// records the current generation when it is higher. Returns the current
    /// generation.
    pub async fn check_rollback(&self, path: &Path) -> Result<u64> {
        let (generation, vault_id) = {
            let mut state = self.state.lock().await;
            self.refresh_state(&mut state).await?;
            (state.root.generation, hex::encode(state.root.vault_id))
        };
        let io = |source| EhiError::Io {
            path: path.to_path_buf(),
            source,
        };
        let seen = match std::fs::read(path) {
            Ok(bytes) => {
                let seen: Seen = serde_json::from_slice(&bytes).map_err(|e| {
                    EhiError::InvalidArgument(format!(
                        "{} is not a seen-generation file: {e}",
                        path.display()
                    ))
                })?;
                if seen.format != FORMAT || seen.version != 1 {
                    return Err(EhiError::InvalidArgument(format!(
                        "{} has format {:?} version {}",
                        path.display(),
                        seen.format,
                        seen.version
                    )));
                }
                (seen.vault == self.slot.to_string()).then_some(seen)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        if let Some(seen) = &seen {
            if seen.vault_id != vault_id {
                return Err(EhiError::corrupt(
                    "the vault root",
                    format!(
                        "the vault slot now holds vault {vault_id}, not vault {} this device \
                         knew",
                        seen.vault_id
                    ),
                ));
            }
            if generation < seen.generation {
                return Err(EhiError::Rollback {
                    seen: seen.generation,
                    found: generation,
                    hint: format!(
                        " If the vault was restored on purpose, remove {}",
                        path.display()
                    ),
                });
            }
            if generation == seen.generation {
                return Ok(generation);
            }
        }
        let record = Seen {
            format: FORMAT.into(),
            version: 1,
            vault: self.slot.to_string(),
            vault_id,
            generation,
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| EhiError::InvalidArgument(format!("encoding {}: {e}", path.display())))?;
        let tmp = path.with_extension("generation.tmp");
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(generation)
    }
}
