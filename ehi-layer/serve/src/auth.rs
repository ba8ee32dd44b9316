//! Which tokens the facade accepts right now, beyond their tag and expiry ([`super::token`]):
//!
//! - **Grants**: a token bound to a grant (`grant` claim) is accepted only while the
//!   grant is in the vault's current grant list ([`ehi_share::grants()`]) and has not
//!   expired. The list is held in memory (grant id → app name, scopes, expiry), loaded
//!   at start and reloaded after every refresh of the vault — each time the vault slot
//!   moves (the server follows it, see [`super`]) and every
//!   [`super::ServeOptions::refresh_every`] — and after this server's own writes; a
//!   revocation made by `ehi revoke` in another process is therefore seen within 2 s
//!   of reaching the slots server. Expiry is checked against the clock on every
//!   request.
//! - **Revoked token ids**: the ids listed in the revocation file beside the keystore
//!   ([`super::token::revoked_tokens_path`]), re-read when its modification time or
//!   size changes (polled every [`super::REVOKED_POLL`]).
//!
//! Both checks are a hash-map lookup under a read lock per request.

use ehi_share as share;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use super::error::ServeError;
use super::token::{Claims, load_revoked};
use ehi_vault::audit::Requestor;
use ehi_vault::grant::GrantInfo;
use ehi_vault::vault::Vault;

/// A grant as the facade needs it.
#[derive(Clone, Debug)]
pub(crate) struct GrantEntry {
    pub(crate) info: GrantInfo,
}

/// The grants and revoked token ids (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Auth {
    grants: RwLock<HashMap<String, GrantEntry>>,
    revoked: RwLock<HashSet<String>>,
    revoked_path: Option<PathBuf>,
    revoked_stamp: Mutex<Option<(SystemTime, u64)>>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Auth {
    pub(crate) fn new(revoked_path: Option<PathBuf>) -> Auth {
        Auth {
            revoked_path,
            ..Auth::default()
        }
    }

    /// Reloads the grant list from the vault's in-memory state.
    pub(crate) async fn refresh_grants(&self, vault: &Vault) {
        let grants: HashMap<String, GrantEntry> = share::grants(vault)
            .await
            .into_iter()
            .map(|info| (info.id.clone(), GrantEntry { info }))
            .collect();
        *write(&self.grants) = grants;
    }

    /// The grant `id`, if the vault currently has it.
    pub(crate) fn grant(&self, id: &str) -> Option<GrantEntry> {
        read(&self.grants).get(id).cloned()
    }

    /// Re-reads the revocation file if it changed. Returns whether it was read.
    pub(crate) fn reload_revoked(&self) -> Result<bool, ServeError> {
        let Some(path) = &self.revoked_path else {
            return Ok(false);
        };
        let stamp = std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        {
            let mut last = self.revoked_stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *last == stamp && stamp.is_some() {
                return Ok(false);
            }
            *last = stamp;
        }
        let ids = load_revoked(path)?;
        *write(&self.revoked) = ids;
        Ok(true)
    }

    /// Checks the token's id and grant; returns who is asking (`None`: the patient).
    pub(crate) fn check(
        &self,
        claims: &Claims,
        now_ms: u64,
    ) -> Result<Option<Requestor>, ServeError> {
        if read(&self.revoked).contains(&claims.jti) {
            return Err(ServeError::Unauthorized(
                "the bearer token has been revoked".into(),
            ));
        }
        if claims.patient {
            return Ok(None);
        }
        let Some(grant_id) = &claims.grant else {
            return Ok(Some(Requestor {
                name: format!("app token {}", claims.jti),
                grant: None,
            }));
        };
        let Some(grant) = self.grant(grant_id) else {
            return Err(ServeError::Unauthorized(format!(
                "grant {grant_id} of this token has been revoked"
            )));
        };
        if grant.info.expires_ms <= now_ms {
            return Err(ServeError::Unauthorized(format!(
                "grant {grant_id} of this token has expired"
            )));
        }
        Ok(Some(Requestor {
            name: grant.info.app_name,
            grant: Some(grant_id.clone()),
        }))
    }
}
