//! Reports of new holders to find servers (`PUT /find/has/` `{container, ids}`).
//!
//! Best effort: holdings learned by repairs are gathered for up to
//! [`GATHER`] (or [`BATCH`] ids), then sent to every find server the broker lists
//! under kind `find` (the list is refreshed every [`FIND_TTL`], or after a failure).
//! A find server's url is used only once it answered `GET /id/` with its id, and only
//! through the probe peer client (no redirects, `--peer-allow`, the server's token,
//! which needs `find:report` where find servers check tokens). Failures are logged and
//! the report dropped; a later pass never re-sends it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use invariant_spec::Id;
use invariant_spec::http::Endpoint;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::state::Core;

/// Longest wait for more holdings before sending.
pub const GATHER: Duration = Duration::from_millis(200);
/// Most ids gathered before sending.
pub const BATCH: usize = 4096;
/// How long the list of find servers is reused.
pub const FIND_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct FindServers {
    endpoints: Vec<Endpoint>,
    fetched: Option<Instant>,
}

/// Sends reports from `reports` until shutdown.
pub(crate) async fn run(core: Arc<Core>, mut reports: mpsc::Receiver<(Id, Id)>) {
    let mut finds = FindServers::default();
    loop {
        let first = tokio::select! {
            item = reports.recv() => match item {
                Some(item) => item,
                None => return,
            },
            _ = core.shutdown.cancelled() => return,
        };
        let mut batch: HashMap<Id, Vec<Id>> = HashMap::new();
        batch.entry(first.0).or_default().push(first.1);
        let mut count = 1;
        let deadline = Instant::now() + GATHER;
        while count < BATCH {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
                Ok(Some((storage, block))) => {
                    batch.entry(storage).or_default().push(block);
                    count += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        tokio::select! {
            _ = send(&core, &mut finds, batch) => {}
            _ = core.shutdown.cancelled() => return,
        }
    }
}

async fn send(core: &Core, finds: &mut FindServers, batch: HashMap<Id, Vec<Id>>) {
    let Some(broker) = &core.broker else { return };
    let stale = finds.fetched.is_none_or(|at| at.elapsed() > FIND_TTL);
    if stale {
        finds.endpoints.clear();
        match broker.registered("find").await {
            Ok(ids) => {
                for id in ids {
                    let Some(url) = crate::health::resolve(core, &id).await else {
                        continue;
                    };
                    match core.probe.endpoint(&url) {
                        Ok(endpoint) => finds.endpoints.push(endpoint),
                        Err(e) => tracing::debug!(error = %e, "find server not contacted"),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot list find servers"),
        }
        finds.fetched = Some(Instant::now());
    }
    let mut failed = false;
    for endpoint in &finds.endpoints {
        let target = endpoint.url("/find/has");
        for (container, ids) in &batch {
            let body = serde_json::json!({ "container": container, "ids": ids });
            let sent = endpoint.http().put(&target).json(&body).send().await;
            match sent {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::debug!(%target, status = %response.status(), "find server refused a report");
                    failed = true;
                }
                Err(e) => {
                    tracing::debug!(%target, error = %e, "cannot report to find server");
                    failed = true;
                }
            }
        }
    }
    if failed {
        finds.fetched = None;
    }
}
