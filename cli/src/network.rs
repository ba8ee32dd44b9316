//! Finding the servers of a network through its broker.

use anyhow::Context;
use invariant_spec::http::Endpoint;
use invariant_spec::{BrokerClient, Id};

/// Base urls of every reachable server registered with `kind`, with their ids.
pub async fn servers(broker: &BrokerClient, kind: &str) -> anyhow::Result<Vec<(Id, Endpoint)>> {
    let mut out = Vec::new();
    for id in broker.registered(kind).await? {
        if let Some(url) = broker.resolve(&id).await? {
            out.push((
                id,
                Endpoint::with_client(&url, broker.endpoint().http().clone())?,
            ));
        }
    }
    Ok(out)
}

/// The first reachable server of `kind`.
pub async fn first(broker: &BrokerClient, kind: &str) -> anyhow::Result<Endpoint> {
    servers(broker, kind)
        .await?
        .into_iter()
        .map(|(_, endpoint)| endpoint)
        .next()
        .with_context(|| format!("the broker knows no reachable {kind} server"))
}
