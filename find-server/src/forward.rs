//! Forwarding has-records (and their removals) to find servers nearer their blocks.
//!
//! `PUT /find/has/` and `PUT /find/gone/` hand each accepted batch to this task without
//! waiting (a full queue drops the batch: storage servers re-report periodically, and
//! records of deleted blobs age out). For each block the task picks the
//! [`FindConfig::forward_fanout`](crate::FindConfig) peers nearest to it among those
//! strictly nearer than this server, groups ids by (peer, container, kind), and sends
//! each group (`PUT /find/has/` or `PUT /find/gone/`) once it holds [`BATCH`] ids or
//! [`FindConfig::forward_delay`](crate::FindConfig) after the first id was queued. A
//! queued id in the opposite kind's group for the same peer and container is dropped
//! from it, so the latest report wins within a batch window. Forwarding always moves
//! strictly closer to the block, so it ends.

use std::collections::HashMap;

use futures_util::StreamExt;
use invariant_spec::Id;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::AppState;
use crate::peers;

/// Batches waiting in the queue between handlers and the task.
pub const QUEUE: usize = 1024;
/// Most ids sent in one forwarded `PUT /find/has/`.
pub const BATCH: usize = 1000;
/// Forwarded requests in flight at once.
const CONCURRENCY: usize = 4;

/// Whether a forwarded batch adds or removes records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `container` holds the ids (`PUT /find/has/`).
    Has,
    /// `container` deleted the ids (`PUT /find/gone/`).
    Gone,
}

impl Kind {
    fn opposite(self) -> Kind {
        match self {
            Kind::Has => Kind::Gone,
            Kind::Gone => Kind::Has,
        }
    }
}

/// Records a handler accepted: `container` holds (or no longer holds) `ids`.
#[derive(Debug)]
pub struct ForwardJob {
    /// Added or removed.
    pub kind: Kind,
    /// The storage server.
    pub container: Id,
    /// The blocks.
    pub ids: Vec<Id>,
}

type Groups = HashMap<(Id, Id, Kind), Vec<Id>>;

/// Queues `ids` for forwarding without waiting. False when the queue is full.
pub fn enqueue(state: &AppState, kind: Kind, container: Id, ids: Vec<Id>) -> bool {
    if ids.is_empty() {
        return true;
    }
    match state.forward_sender().try_send(ForwardJob {
        kind,
        container,
        ids,
    }) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(job)) => {
            tracing::warn!(
                container = %job.container,
                ids = job.ids.len(),
                "forward queue full; records not forwarded"
            );
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// The forwarding task: runs until the queue closes.
pub async fn run(state: AppState, mut jobs: mpsc::Receiver<ForwardJob>) {
    let mut pending: Groups = HashMap::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let until = deadline;
        let wait = async move {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else {
                    send_all(&state, pending.drain().collect()).await;
                    return;
                };
                group(&state, job, &mut pending);
                let full: Vec<(Id, Id, Kind)> = pending
                    .iter()
                    .filter(|(_, ids)| ids.len() >= BATCH)
                    .map(|(key, _)| *key)
                    .collect();
                let ready = full
                    .into_iter()
                    .filter_map(|key| pending.remove(&key).map(|ids| (key, ids)))
                    .collect();
                send_all(&state, ready).await;
                if pending.is_empty() {
                    deadline = None;
                } else if deadline.is_none() {
                    deadline = Some(Instant::now() + state.config().forward_delay);
                }
            }
            () = wait => {
                deadline = None;
                send_all(&state, pending.drain().collect()).await;
            }
        }
    }
}

/// Adds `job`'s ids to the groups of the peers nearer to each block, dropping them from
/// the opposite kind's pending group (the later report wins).
fn group(state: &AppState, job: ForwardJob, pending: &mut Groups) {
    let fanout = state.config().forward_fanout;
    let routing = state.routing();
    for id in job.ids {
        for peer in routing.closer_than_self(&id, fanout) {
            if let Some(other) = pending.get_mut(&(peer, job.container, job.kind.opposite())) {
                other.retain(|queued| *queued != id);
            }
            pending
                .entry((peer, job.container, job.kind))
                .or_default()
                .push(id);
        }
    }
    pending.retain(|_, ids| !ids.is_empty());
}

async fn send_all(state: &AppState, groups: Vec<((Id, Id, Kind), Vec<Id>)>) {
    let requests = groups
        .into_iter()
        .flat_map(|((peer, container, kind), ids)| {
            ids.chunks(BATCH)
                .map(|chunk| (peer, container, kind, chunk.to_vec()))
                .collect::<Vec<_>>()
        });
    futures_util::stream::iter(requests)
        .for_each_concurrent(CONCURRENCY, |(peer, container, kind, ids)| async move {
            send(state, peer, container, kind, ids).await;
        })
        .await;
}

async fn send(state: &AppState, peer: Id, container: Id, kind: Kind, ids: Vec<Id>) {
    match peers::client_for(state, &peer).await {
        Ok(Some(client)) => match match kind {
            Kind::Has => client.has(&container, &ids).await,
            Kind::Gone => client.gone(&container, &ids).await,
        } {
            Ok(()) => {
                peers::succeeded(state, &peer);
                tracing::debug!(%peer, %container, ids = ids.len(), "forwarded records");
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "forwarding failed");
                peers::failed(state, &peer).await;
            }
        },
        Ok(None) => {
            if state.broker().is_some() {
                peers::failed(state, &peer).await;
            }
        }
        Err(e) => tracing::debug!(%peer, error = %e, "broker unreachable; not forwarded"),
    }
}
