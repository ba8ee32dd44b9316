//! Health rounds: probing the candidate storage servers ([`crate::membership`]).
//!
//! A health round, every `health_interval` ±20% and at once after a registration change,
//! probes each candidate (bounded concurrency, every call under a timeout): `GET /id/`
//! at the url that answered last time, else each url of the broker's location checked
//! with `GET /id/`. A server that answers with its id is active; an active server that
//! misses `lost_after` probes in a row is lost. Each round that changes the active set
//! publishes a new active set and asks for a placement pass; servers coming back after
//! being lost have their holdings re-checked by that pass.
//!
//! Probes and transfers go through the peer clients (no redirects, `--peer-allow`, the
//! server's token): a url outside the allowed networks, or answering with a redirect,
//! never answers a probe, so its server never becomes active.

use futures_util::StreamExt;
use invariant_spec::{Id, StorageClient};

use crate::membership::{ProbeResult, RoundOutcome};
use crate::state::Core;

/// Health probes run at once.
const PROBE_CONCURRENCY: usize = 16;

/// One health round (see the module docs).
pub(crate) async fn round(core: &Core) -> RoundOutcome {
    let members = &core.members;
    if core.config.broker_storages
        && let Some(broker) = &core.broker
    {
        match tokio::time::timeout(core.config.probe_timeout, broker.registered("storage")).await {
            Ok(Ok(ids)) => members.set_from_broker(ids),
            Ok(Err(e)) => tracing::debug!(error = %e, "broker storage list unavailable"),
            Err(_) => tracing::debug!("broker storage list timed out"),
        }
    }

    let mut outcome = RoundOutcome::default();
    let probes = members.begin_round(&mut outcome);

    let results: Vec<ProbeResult> = futures_util::stream::iter(probes)
        .map(|(id, url, fetch)| async move { (id, probe(core, id, url, fetch).await) })
        .buffer_unordered(PROBE_CONCURRENCY)
        .collect()
        .await;

    members.finish_round(
        results,
        core.config.lost_after,
        &core.transfer,
        &mut outcome,
    );
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
