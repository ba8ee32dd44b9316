//! Aging of has-records: the periodic pass that keeps answers true.
//!
//! Every [`FindConfig::check_interval`](crate::FindConfig):
//! 1. Records last seen more than [`FindConfig::record_ttl`](crate::FindConfig) ago are
//!    dropped. A record is refreshed when a has report repeats it or a check confirms it.
//! 2. With a broker, each container with records is checked: it is resolved through the
//!    broker, and a random window of up to `check_sample` of its records is checked with
//!    `HEAD /storage/:id`. Confirmed records are refreshed; records of blocks the
//!    container no longer holds are dropped. A container that cannot be resolved or
//!    does not answer in `check_failures` passes in a row loses all its records.
//!    When the broker itself is unreachable nothing is judged.

use std::collections::HashMap;

use futures_util::StreamExt;
use invariant_spec::Id;

use crate::{AppState, blocking, now_ms};

/// Containers checked at once.
const CONCURRENCY: usize = 4;

/// What checking one container found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// It answered: these blocks are held, these are not.
    Answered { present: Vec<Id>, absent: Vec<Id> },
    /// It could not be resolved or reached.
    Unreachable,
    /// Nothing can be said (the broker is unreachable, or the database failed).
    Unknown,
}

/// The aging task: runs one pass per `check_interval`, forever.
pub async fn run(state: AppState) {
    let mut failures: HashMap<Id, u32> = HashMap::new();
    loop {
        tokio::time::sleep(state.config().check_interval).await;
        pass(&state, &mut failures).await;
    }
}

/// One aging pass.
async fn pass(state: &AppState, failures: &mut HashMap<Id, u32>) {
    let ttl = u64::try_from(state.config().record_ttl.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now_ms().saturating_sub(ttl);
    let store = state.store().clone();
    match blocking(move || store.expire(cutoff)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(records = n, "dropped records not refreshed within the TTL"),
        Err(e) => tracing::error!(error = %e, "expiring records failed"),
    }

    if state.broker().is_none() {
        return;
    }
    let store = state.store().clone();
    let containers = match blocking(move || store.containers()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "listing containers failed");
            return;
        }
    };
    failures.retain(|c, _| containers.contains(c));
    let verdicts: Vec<(Id, Verdict)> = futures_util::stream::iter(containers)
        .map(|container| async move { (container, check(state, container).await) })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for (container, verdict) in verdicts {
        apply(state, failures, container, verdict).await;
    }
}

async fn check(state: &AppState, container: Id) -> Verdict {
    let Some(broker) = state.broker() else {
        return Verdict::Unknown;
    };
    let client = match broker.storage(&container).await {
        Ok(Some(client)) => client,
        Ok(None) => return Verdict::Unreachable,
        Err(e) => {
            tracing::debug!(%container, error = %e, "broker unreachable; container not judged");
            return Verdict::Unknown;
        }
    };
    let store = state.store().clone();
    let sample_size = state.config().check_sample;
    let start = Id::random();
    let sample = match blocking(move || store.sample(&container, &start, sample_size)).await {
        Ok(sample) => sample,
        Err(e) => {
            tracing::error!(error = %e, "sampling records failed");
            return Verdict::Unknown;
        }
    };
    let mut present = Vec::new();
    let mut absent = Vec::new();
    for id in sample {
        match client.has(&id).await {
            Ok(Some(_)) => present.push(id),
            Ok(None) => absent.push(id),
            Err(e) => {
                tracing::debug!(%container, error = %e, "container did not answer");
                return Verdict::Unreachable;
            }
        }
    }
    Verdict::Answered { present, absent }
}

async fn apply(state: &AppState, failures: &mut HashMap<Id, u32>, container: Id, verdict: Verdict) {
    let store = state.store().clone();
    match verdict {
        Verdict::Unknown => {}
        Verdict::Answered { present, absent } => {
            failures.remove(&container);
            let now = now_ms();
            let dropped = blocking(move || {
                store.record(&container, &present, now)?;
                store.remove(&container, &absent)
            })
            .await;
            match dropped {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(%container, records = n, "container no longer holds blocks")
                }
                Err(e) => {
                    tracing::error!(%container, error = %e, "updating checked records failed")
                }
            }
        }
        Verdict::Unreachable => {
            let count = failures.entry(container).or_insert(0);
            *count += 1;
            if *count < state.config().check_failures.max(1) {
                return;
            }
            failures.remove(&container);
            match blocking(move || store.remove_container(&container)).await {
                Ok(n) => {
                    tracing::info!(%container, records = n, "container stopped answering; records dropped")
                }
                Err(e) => tracing::error!(%container, error = %e, "dropping records failed"),
            }
        }
    }
}
