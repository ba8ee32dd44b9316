//! Other find servers: learning of them, telling them of this one, reaching them.
//!
//! Peers come from `PUT /find/notify/`, from the broker's registered `find` servers
//! (asked at start and every [`FindConfig::peer_refresh`](crate::FindConfig)), and
//! from the database (peers known before a restart). Each peer is resolved to a url
//! through the broker (cached); each is told of this server once with
//! `PUT /find/notify/`, retried every refresh until it accepts. A peer that fails
//! [`FindConfig::peer_failures`](crate::FindConfig) contacts in a row, or that the broker
//! no longer knows, leaves the routing table and the database.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures_util::StreamExt;
use invariant_spec::http::Endpoint;
use invariant_spec::{ClientError, FindClient, Id};

use crate::routing::Inserted;
use crate::{AppState, FindError, blocking, now_ms};

/// Peers contacted at once when notifying.
const NOTIFY_CONCURRENCY: usize = 8;

/// Resolved urls and failure counts of peers.
#[derive(Debug, Default)]
pub struct PeerBook {
    urls: Mutex<HashMap<Id, String>>,
    failures: Mutex<HashMap<Id, u32>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Maps only: a panic mid-update leaves them usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A client for find server `id`: its cached url, else resolved through the broker.
/// `Ok(None)` when there is no broker or the broker cannot resolve `id`; `Err` when the
/// broker itself cannot be reached.
pub async fn client_for(state: &AppState, id: &Id) -> Result<Option<FindClient>, ClientError> {
    let Some(broker) = state.broker() else {
        return Ok(None);
    };
    let cached = lock(&state.peer_book().urls).get(id).cloned();
    let url = match cached {
        Some(url) => url,
        None => match broker.resolve(id).await? {
            Some(url) => {
                lock(&state.peer_book().urls).insert(*id, url.clone());
                url
            }
            None => return Ok(None),
        },
    };
    Ok(
        Endpoint::with_client(&url, broker.endpoint().http().clone())
            .ok()
            .map(FindClient::from_endpoint),
    )
}

/// Adds `id` to the routing table, persisting it when new. Returns what the table did.
pub async fn learn(state: &AppState, id: Id) -> Result<Inserted, FindError> {
    let inserted = state.routing().insert(id);
    if inserted == Inserted::Added {
        let store = state.store().clone();
        let stored = blocking(move || store.add_peer(&id, now_ms())).await;
        if let Err(e) = stored {
            // Keep table and database in agreement: what is not stored is not used.
            state.routing().remove(&id);
            return Err(e);
        }
        tracing::info!(peer = %id, "learned of find server");
    }
    Ok(inserted)
}

/// Records a successful contact with `id`.
pub fn succeeded(state: &AppState, id: &Id) {
    lock(&state.peer_book().failures).remove(id);
}

/// Records a failed contact with `id`; forgets it after too many in a row.
pub async fn failed(state: &AppState, id: &Id) {
    lock(&state.peer_book().urls).remove(id);
    let count = {
        let mut failures = lock(&state.peer_book().failures);
        let count = failures.entry(*id).or_insert(0);
        *count += 1;
        *count
    };
    if count >= state.config().peer_failures.max(1) {
        forget(state, id).await;
    }
}

async fn forget(state: &AppState, id: &Id) {
    lock(&state.peer_book().failures).remove(id);
    if state.routing().remove(id) {
        tracing::info!(peer = %id, "find server stopped answering; dropped");
    }
    let store = state.store().clone();
    let peer = *id;
    if let Err(e) = blocking(move || store.remove_peer(&peer)).await {
        tracing::warn!(peer = %id, error = %e, "cannot remove find server from the database");
    }
}

/// The peer task: learn of find servers from the broker and notify every peer of this
/// server, at start and every `peer_refresh`.
pub async fn run(state: AppState) {
    let mut notified: HashSet<Id> = HashSet::new();
    let mut broker_healthy = true;
    loop {
        if let Some(broker) = state.broker() {
            match broker.registered("find").await {
                Ok(ids) => {
                    broker_healthy = true;
                    discover(&state, ids).await;
                }
                Err(e) => {
                    if broker_healthy {
                        tracing::warn!(error = %e, "cannot list find servers at the broker");
                    }
                    broker_healthy = false;
                }
            }
        }
        let peers = state.routing().ids();
        notified.retain(|id| peers.contains(id));
        let pending: Vec<Id> = peers
            .into_iter()
            .filter(|id| !notified.contains(id))
            .collect();
        let accepted: Vec<Id> = futures_util::stream::iter(pending)
            .map(|peer| {
                let state = state.clone();
                async move { notify(&state, peer).await.then_some(peer) }
            })
            .buffer_unordered(NOTIFY_CONCURRENCY)
            .filter_map(|accepted| async move { accepted })
            .collect()
            .await;
        notified.extend(accepted);
        tokio::time::sleep(state.config().peer_refresh).await;
    }
}

/// Adds the registered find servers the broker can resolve.
async fn discover(state: &AppState, ids: Vec<Id>) {
    let own = state.id();
    for id in ids {
        if id == own || state.routing().contains(&id) {
            continue;
        }
        match client_for(state, &id).await {
            Ok(Some(_)) => {
                if let Err(e) = learn(state, id).await {
                    tracing::warn!(peer = %id, error = %e, "cannot record find server");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(peer = %id, error = %e, "cannot resolve find server");
                return;
            }
        }
    }
}

/// Tells `peer` of this server. True when it accepted.
async fn notify(state: &AppState, peer: Id) -> bool {
    match client_for(state, &peer).await {
        Ok(Some(client)) => match client.notify(&state.id()).await {
            Ok(()) => {
                succeeded(state, &peer);
                true
            }
            Err(e) => {
                // A 4xx usually means the peer cannot resolve this server yet (its
                // registration may be in flight): retried next round, not counted.
                if e.status().is_none_or(|s| s >= 500) {
                    failed(state, &peer).await;
                }
                tracing::debug!(%peer, error = %e, "notify failed; will retry");
                false
            }
        },
        Ok(None) => {
            if state.broker().is_some() {
                // The broker no longer knows it.
                failed(state, &peer).await;
            }
            false
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot resolve find server");
            false
        }
    }
}
