//! Keeping up with the vault: following the vault slot
//! ([`Vault::watch`](ehi_vault::vault::Vault::watch)), refreshing the vault, its grants and
//! the cache, flushing the audit queue, and the vault's removal (every request
//! answered 410 Gone from then on).

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;

use super::cache::rewarm;
use super::respond::fhir_response;
use super::{AppState, ServeError, error};
use ehi_vault::error::EhiError;

/// Pause before watching the vault slot again after the watch failed.
const WATCH_RETRY: Duration = Duration::from_millis(200);

/// The vault was removed: drops the decrypted resources (cache, search results, bulk
/// export files, the vault handle's manifests and indexes) and the audit entries waiting (there is no log to append them to);
/// from now on every request is answered 410 ([`removed_response`]).
pub(super) fn mark_removed(state: &AppState) {
    if state.removed.send_replace(true) {
        return;
    }
    tracing::warn!("the vault was removed: answering every request with 410 Gone");
    state.cache.clear();
    state.jobs.clear();
    state.vault.audit_queue().discard();
    let vault = state.vault.clone();
    tokio::spawn(async move { vault.forget_loaded().await });
}

/// The answer to every request once the vault was removed.
pub(super) fn removed_response() -> Response {
    fhir_response(
        StatusCode::GONE,
        &error::outcome(
            "deleted",
            "the vault was removed (ehi delete): this server no longer serves it",
        ),
    )
}

pub(super) async fn flush_audit(state: &AppState) -> Result<usize, ServeError> {
    if *state.removed.borrow() {
        return Ok(0);
    }
    Ok(state.vault.flush_audit().await?)
}

/// Re-reads the vault; reloads the grants; empties and re-warms the cache if the
/// resources changed.
pub(super) async fn refresh(state: &Arc<AppState>) -> Result<(), ServeError> {
    if *state.removed.borrow() {
        return Ok(());
    }
    let result = state.vault.refresh().await;
    if let Err(EhiError::Removed { .. }) = &result {
        mark_removed(state);
        return Ok(());
    }
    state.auth.refresh_grants(&state.vault).await;
    result?;
    let now = state.vault.resources_fingerprint().await;
    let changed = {
        let mut known = state.cache.known();
        let changed = *known != now;
        *known = now;
        changed
    };
    if changed {
        rewarm(state, state.warm_up);
    }
    Ok(())
}

/// Follows the vault slot ([`Vault::watch`](ehi_vault::vault::Vault::watch)): each move re-reads the vault and wakes
/// the background task through `moved` (which reloads the grants and the cache); the
/// slot moved to the tombstone marks the vault removed. Runs until the server stops.
pub(super) async fn follow_slot(state: Arc<AppState>, moved: Arc<tokio::sync::Notify>) {
    loop {
        let notify = moved.clone();
        let result = state.vault.watch(move |_| notify.notify_one()).await;
        match result {
            Err(EhiError::Removed { .. }) => {
                mark_removed(&state);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "following the vault slot; retrying"),
            Ok(()) => {}
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}
