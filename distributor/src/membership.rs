//! The storage servers blocks are distributed onto, and their health.
//!
//! Candidates are the explicitly registered servers plus (unless turned off) every
//! server the broker lists under kind `storage`. A health round, every
//! `health_interval` ±20% and at once after a registration change, probes each
//! candidate (bounded concurrency, every call under a timeout): `GET /id/` at the url
//! that answered last time, else each url of the broker's location checked with
//! `GET /id/`. A server that answers with its id is active; an active server that
//! misses `lost_after` probes in a row is lost. Each round that changes the active set
//! publishes a new [`ActiveSet`] and asks for a placement pass; servers coming back
//! after being lost have their holdings re-checked by that pass.
//!
//! Only an active server's url (one that answered with the expected id at the last
//! probe) is ever sent a block, asked for one, or asked to fetch one. Probes and
//! transfers go through the peer clients (no redirects, `--peer-allow`, the server's
//! token): a url outside the allowed networks, or answering with a redirect, never
//! answers a probe, so its server never becomes active.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures_util::StreamExt;
use invariant_spec::{Id, StorageClient};
use tokio::sync::Notify;

use crate::state::Core;

/// Health probes run at once.
const PROBE_CONCURRENCY: usize = 16;

/// An active storage server.
#[derive(Clone, Debug)]
pub(crate) struct Storage {
    pub id: Id,
    /// Client on the copy (long-timeout) HTTP client.
    pub client: StorageClient,
    /// Whether it answers `HEAD /storage/fetch` with 200.
    pub fetch: bool,
}

/// The storage servers answering health checks, as of the last round.
#[derive(Debug, Default)]
pub(crate) struct ActiveSet {
    /// Their ids (any order).
    pub ids: Vec<Id>,
    pub storages: HashMap<Id, Storage>,
}

#[derive(Debug, Default)]
struct Member {
    url: Option<String>,
    fetch: bool,
    active: bool,
    /// Was active at some point in this process (so becoming active again is a return).
    seen_active: bool,
    failures: u32,
}

#[derive(Debug, Default)]
struct Table {
    registered: HashSet<Id>,
    from_broker: HashSet<Id>,
    members: HashMap<Id, Member>,
}

impl Table {
    fn is_candidate(&self, id: &Id) -> bool {
        self.registered.contains(id) || self.from_broker.contains(id)
    }
}

/// Candidate storage servers and the published active set.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    table: Mutex<Table>,
    active: RwLock<Arc<ActiveSet>>,
    /// Wakes the health loop for an immediate round.
    pub wake: Notify,
}

/// What a health round changed.
#[derive(Debug, Default)]
pub(crate) struct RoundOutcome {
    /// The active set changed.
    pub changed: bool,
    /// Servers active again after being lost.
    pub returned: Vec<Id>,
}

impl Membership {
    /// Membership starting with the explicitly registered servers.
    pub fn new(registered: impl IntoIterator<Item = Id>) -> Membership {
        let membership = Membership::default();
        membership.lock().registered.extend(registered);
        membership
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The active set as of the last round.
    pub fn active(&self) -> Arc<ActiveSet> {
        Arc::clone(&self.active.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Number of candidates.
    pub fn known(&self) -> usize {
        let table = self.lock();
        table.registered.union(&table.from_broker).count()
    }

    /// Adds explicit registrations and wakes the health loop.
    pub fn add_registered(&self, ids: &[Id]) {
        self.lock().registered.extend(ids.iter().copied());
        self.wake.notify_one();
    }

    /// Removes explicit registrations and wakes the health loop.
    pub fn remove_registered(&self, ids: &[Id]) {
        {
            let mut table = self.lock();
            for id in ids {
                table.registered.remove(id);
            }
        }
        self.wake.notify_one();
    }

    fn publish(&self, table: &Table, core: &Core) {
        let mut set = ActiveSet::default();
        for (id, member) in &table.members {
            if !member.active {
                continue;
            }
            let Some(url) = &member.url else { continue };
            let Ok(endpoint) = core.transfer.endpoint(url) else {
                continue;
            };
            set.ids.push(*id);
            set.storages.insert(
                *id,
                Storage {
                    id: *id,
                    client: StorageClient::from_endpoint(endpoint),
                    fetch: member.fetch,
                },
            );
        }
        set.ids.sort();
        *self.active.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }
}

/// One health round (see the module docs).
pub(crate) async fn round(core: &Core) -> RoundOutcome {
    let members = &core.members;
    if core.config.broker_storages
        && let Some(broker) = &core.broker
    {
        match tokio::time::timeout(core.config.probe_timeout, broker.registered("storage")).await {
            Ok(Ok(ids)) => members.lock().from_broker = ids.into_iter().collect(),
            Ok(Err(e)) => tracing::debug!(error = %e, "broker storage list unavailable"),
            Err(_) => tracing::debug!("broker storage list timed out"),
        }
    }

    let mut outcome = RoundOutcome::default();
    let probes: Vec<(Id, Option<String>, Option<bool>)> = {
        let mut table = members.lock();
        let candidates: Vec<Id> = table
            .registered
            .union(&table.from_broker)
            .copied()
            .collect();
        // Forget servers that are no longer candidates.
        let Table {
            registered,
            from_broker,
            members: known,
        } = &mut *table;
        known.retain(|id, member| {
            let keep = registered.contains(id) || from_broker.contains(id);
            if !keep && member.active {
                tracing::info!(storage = %id, "storage server no longer distributed onto");
                outcome.changed = true;
            }
            keep
        });
        candidates
            .into_iter()
            .map(|id| {
                let member = table.members.entry(id).or_default();
                let fetch = member.active.then_some(member.fetch);
                (id, member.url.clone(), fetch)
            })
            .collect()
    };

    let results: Vec<(Id, Option<(String, bool)>)> = futures_util::stream::iter(probes)
        .map(|(id, url, fetch)| async move { (id, probe(core, id, url, fetch).await) })
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect()
        .await;

    let mut table = members.lock();
    for (id, result) in results {
        if !table.is_candidate(&id) {
            continue;
        }
        let Some(member) = table.members.get_mut(&id) else {
            continue;
        };
        match result {
            Some((url, fetch)) => {
                member.failures = 0;
                if !member.active {
                    member.active = true;
                    outcome.changed = true;
                    if member.seen_active {
                        outcome.returned.push(id);
                        tracing::info!(storage = %id, %url, "storage server is back");
                    } else {
                        tracing::info!(storage = %id, %url, fetch, "storage server active");
                    }
                    member.seen_active = true;
                }
                if member.url.as_deref() != Some(url.as_str()) || member.fetch != fetch {
                    member.url = Some(url);
                    member.fetch = fetch;
                    outcome.changed = true;
                }
            }
            None => {
                member.failures = member.failures.saturating_add(1);
                if member.active && member.failures >= core.config.lost_after {
                    member.active = false;
                    outcome.changed = true;
                    tracing::warn!(storage = %id, "storage server lost");
                }
            }
        }
    }
    if outcome.changed {
        members.publish(&table, core);
    }
    outcome
}

/// Checks one server: `Some((url, fetch supported))` when it answers with its id.
async fn probe(
    core: &Core,
    id: Id,
    cached_url: Option<String>,
    cached_fetch: Option<bool>,
) -> Option<(String, bool)> {
    let check = async {
        if let Some(url) = cached_url
            && let Some(url) = answers_as(core, &url, &id).await
        {
            let fetch = match cached_fetch {
                Some(fetch) => fetch,
                None => fetch_supported(core, &url).await,
            };
            return Some((url, fetch));
        }
        let url = resolve(core, &id).await?;
        let fetch = fetch_supported(core, &url).await;
        Some((url, fetch))
    };
    // Each call has its own timeout; this bounds the whole probe.
    tokio::time::timeout(core.config.probe_timeout * 3, check)
        .await
        .ok()
        .flatten()
}

/// The base url of `url` when the server there answers `GET /id/` with `id`.
async fn answers_as(core: &Core, url: &str, id: &Id) -> Option<String> {
    let endpoint = match core.probe.endpoint(url) {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::debug!(storage = %id, error = %e, "url not contacted");
            return None;
        }
    };
    match endpoint.server_id().await {
        Ok(answered) if answered == *id => Some(endpoint.base_url().to_string()),
        Ok(answered) => {
            tracing::debug!(storage = %id, url, %answered, "url answers with another id");
            None
        }
        Err(_) => None,
    }
}

/// A url of server `id` from the broker's location that answers `GET /id/` with `id`.
pub(crate) async fn resolve(core: &Core, id: &Id) -> Option<String> {
    let broker = core.broker.as_ref()?;
    let location = broker.location(id).await.ok().flatten()?;
    for url in location.all_urls() {
        if let Some(url) = answers_as(core, &url, id).await {
            return Some(url);
        }
    }
    None
}

async fn fetch_supported(core: &Core, url: &str) -> bool {
    match core.probe.endpoint(url) {
        Ok(endpoint) => StorageClient::from_endpoint(endpoint)
            .fetch_supported()
            .await
            .unwrap_or(false),
        Err(_) => false,
    }
}
