//! The storage servers blocks are distributed onto: the candidates and the published
//! active set.
//!
//! Candidates are the explicitly registered servers plus (unless turned off) every
//! server the broker lists under kind `storage`. The health rounds (`health`) probe them
//! and record here which answered: a server that answers with its id is active; an
//! active server that misses `lost_after` probes in a row is lost. Each round that
//! changes the active set publishes a new [`ActiveSet`]; servers coming back after
//! being lost are reported so that the next placement pass re-checks their holdings.
//!
//! Only an active server's url (one that answered with the expected id at the last
//! probe) is ever sent a block, asked for one, or asked to fetch one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use invariant_runtime::peers::PeerClient;
use invariant_spec::{Id, StorageClient};
use tokio::sync::Notify;

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

/// A candidate to probe: its id, the url that answered last time, and whether it
/// supports fetch when it is active (so that need not be asked again).
pub(crate) type Probe = (Id, Option<String>, Option<bool>);

/// What a health round found of one candidate: `Some((url, fetch supported))` when it
/// answered with its id.
pub(crate) type ProbeResult = (Id, Option<(String, bool)>);

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

    /// Replaces the servers the broker lists.
    pub fn set_from_broker(&self, ids: impl IntoIterator<Item = Id>) {
        self.lock().from_broker = ids.into_iter().collect();
    }

    /// Starts a health round: forgets servers that are no longer candidates (noting in
    /// `outcome` when an active one goes) and returns the candidates to probe.
    pub fn begin_round(&self, outcome: &mut RoundOutcome) -> Vec<Probe> {
        let mut table = self.lock();
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
    }

    /// Ends a health round with the probes' `results`: a server missing `lost_after`
    /// probes in a row is lost. When the active set changed, publishes the new one with
    /// clients on `transfer`.
    pub fn finish_round(
        &self,
        results: Vec<ProbeResult>,
        lost_after: u32,
        transfer: &PeerClient,
        outcome: &mut RoundOutcome,
    ) {
        let mut table = self.lock();
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
                    if member.active && member.failures >= lost_after {
                        member.active = false;
                        outcome.changed = true;
                        tracing::warn!(storage = %id, "storage server lost");
                    }
                }
            }
        }
        if outcome.changed {
            self.publish(&table, transfer);
        }
    }

    fn publish(&self, table: &Table, transfer: &PeerClient) {
        let mut set = ActiveSet::default();
        for (id, member) in &table.members {
            if !member.active {
                continue;
            }
            let Some(url) = &member.url else { continue };
            let Ok(endpoint) = transfer.endpoint(url) else {
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
