//! The invariant network as the vault sees it: storage servers, the slots server that
//! holds the vault slot, and (optionally) a distributor, all found through a broker.
//!
//! - Servers are found with `BrokerClient::registered(kind)` and checked with
//!   `resolve` (the url must answer `GET /id/` with the registered id).
//! - A blob is written to the storage server nearest its address by XOR distance (the
//!   distributor places pinned blocks on the N nearest, so that server is one of them)
//!   and, if that fails, to the next nearest. Reads try servers nearest first; a server
//!   answering bytes that do not hash to the address is skipped, and only when every
//!   server fails is the blob reported missing or corrupted. Both are the content
//!   crate's `StorageSet::nearest`, the one multi-server blob client of the project.
//! - Pins go to the distributor when one is registered; without one, pinning is a
//!   no-op and the blobs live only where they were written.
//! - All clients share one HTTP connection pool.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use invariant_content::{BlockStore, StorageSet, StoreError};
use invariant_spec::http::{Endpoint, default_http_client};
use invariant_spec::{
    BrokerClient, ClientError, DistributorClient, Id, SlotsClient, StorageClient,
};

use crate::error::{EhiError, Result};
use crate::seal::Blob;

/// Ids per pin/unpin request.
const PIN_BATCH: usize = 20_000;

/// The servers a vault uses.
#[derive(Clone, Debug)]
pub struct Network {
    broker_url: String,
    storage: StorageSet,
    slots_id: Id,
    slots: SlotsClient,
    distributor: Option<DistributorClient>,
}

impl Network {
    /// Finds the servers through the broker at `broker_url`. `slots_server` is the slots
    /// server that holds (or will hold) the vault slot; `None` picks the registered one
    /// with the smallest id.
    pub async fn connect(broker_url: &str, slots_server: Option<Id>) -> Result<Network> {
        let http = default_http_client();
        let endpoint = Endpoint::with_client(broker_url, http.clone())
            .map_err(|e| EhiError::network(format!("broker {broker_url}"), e))?;
        let broker = BrokerClient::from_endpoint(endpoint);
        let broker_url = broker.endpoint().base_url().to_string();
        let client = |url: &str| {
            Endpoint::with_client(url, http.clone())
                .map_err(|e| EhiError::network(format!("server url {url}"), e))
        };

        let storage_ids = registered(&broker, "storage").await?;
        let resolved = join_all(storage_ids.iter().map(|id| broker.resolve(id))).await;
        let mut storages = Vec::new();
        for (id, url) in storage_ids.iter().zip(resolved) {
            if let Ok(Some(url)) = url {
                let store = StorageClient::from_endpoint(client(&url)?);
                storages.push((*id, Arc::new(store) as Arc<dyn BlockStore>));
            }
        }
        if storages.is_empty() {
            return Err(EhiError::MissingServer {
                broker: broker_url,
                kind: "storage",
                hint: String::new(),
            });
        }

        let (slots_id, slots_url) = match slots_server {
            Some(id) => {
                let url = broker
                    .resolve(&id)
                    .await
                    .map_err(|e| EhiError::network("resolving the slots server", e))?
                    .ok_or_else(|| EhiError::MissingServer {
                        broker: broker_url.clone(),
                        kind: "slots",
                        hint: format!(" (the vault's slots server {id} does not answer)"),
                    })?;
                (id, url)
            }
            None => {
                let mut ids = registered(&broker, "slots").await?;
                ids.sort();
                let mut found = None;
                for id in ids {
                    if let Ok(Some(url)) = broker.resolve(&id).await {
                        found = Some((id, url));
                        break;
                    }
                }
                found.ok_or_else(|| EhiError::MissingServer {
                    broker: broker_url.clone(),
                    kind: "slots",
                    hint: String::new(),
                })?
            }
        };
        let slots = SlotsClient::from_endpoint(client(&slots_url)?);

        let mut distributor = None;
        let mut ids = registered(&broker, "distribute").await?;
        ids.sort();
        for id in ids {
            if let Ok(Some(url)) = broker.resolve(&id).await {
                distributor = Some(DistributorClient::from_endpoint(client(&url)?));
                break;
            }
        }

        Ok(Network {
            broker_url,
            storage: StorageSet::nearest(storages, 1),
            slots_id,
            slots,
            distributor,
        })
    }

    /// The broker's base url.
    pub fn broker_url(&self) -> &str {
        &self.broker_url
    }

    /// The slots server holding the vault slot.
    pub fn slots_server(&self) -> Id {
        self.slots_id
    }

    /// Ids of the storage servers in use.
    pub fn storage_servers(&self) -> Vec<Id> {
        self.storage.ids()
    }

    /// Whether a distributor keeps the vault's blocks replicated.
    pub fn has_distributor(&self) -> bool {
        self.distributor.is_some()
    }

    #[doc(hidden)]
    pub fn slots(&self) -> &SlotsClient {
        &self.slots
    }

    /// Stores `blob` on the storage server nearest its address that accepts it.
    #[doc(hidden)]
    pub async fn put(&self, blob: &Blob) -> Result<()> {
        self.storage
            .put(blob.address, blob.bytes.clone())
            .await
            .map_err(|e| store_error(format!("storing blob {}", blob.address), e))
    }

    /// Reads blob `address` (verified against its address) from the storage servers,
    /// nearest first. `what` names it in errors.
    #[doc(hidden)]
    pub async fn get(&self, address: &Id, what: &str) -> Result<Bytes> {
        match self.storage.get(*address).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(EhiError::MissingBlob {
                what: what.to_string(),
                address: *address,
            }),
            Err(StoreError::Corrupt { actual }) => Err(EhiError::corrupt(
                format!("{what} (blob {address})"),
                format!(
                    "no server holds an intact copy; a storage server returned bytes hashing to {actual}"
                ),
            )),
            Err(e) => Err(store_error(format!("reading {what} ({address})"), e)),
        }
    }

    /// Adds one pin to each block (no-op without a distributor).
    #[doc(hidden)]
    pub async fn pin(&self, blocks: &[Id]) -> Result<()> {
        let Some(distributor) = &self.distributor else {
            return Ok(());
        };
        for batch in blocks.chunks(PIN_BATCH) {
            distributor
                .pin(batch)
                .await
                .map_err(|e| EhiError::network("pinning the vault's blocks", e))?;
        }
        Ok(())
    }

    /// Removes one pin from each block; blocks that are not pinned are skipped.
    /// Returns how many pins were removed (0 without a distributor).
    #[doc(hidden)]
    pub async fn unpin(&self, blocks: &[Id]) -> Result<usize> {
        let Some(distributor) = &self.distributor else {
            return Ok(0);
        };
        let mut removed = 0;
        for batch in blocks.chunks(PIN_BATCH) {
            match distributor.unpin(batch).await {
                Ok(()) => removed += batch.len(),
                Err(e) if e.status() == Some(409) => {
                    // Some block is not pinned and the batch was refused whole: go one
                    // by one so every pinned block still loses its pin.
                    for block in batch {
                        match distributor.unpin(std::slice::from_ref(block)).await {
                            Ok(()) => removed += 1,
                            Err(e) if e.status() == Some(409) => {}
                            Err(e) => {
                                return Err(EhiError::network("unpinning the vault's blocks", e));
                            }
                        }
                    }
                }
                Err(e) => return Err(EhiError::network("unpinning the vault's blocks", e)),
            }
        }
        Ok(removed)
    }

    /// When the distributor deletes unpinned blocks from the storage servers, as it
    /// reports it (`None`: no distributor, or it does not say).
    #[doc(hidden)]
    pub async fn collection(&self) -> Option<Collection> {
        let status = self.distributor.as_ref()?.gc_status().await.ok()?;
        Some(Collection {
            grace_seconds: status.grace_seconds,
            interval_seconds: status.interval_seconds,
        })
    }

    /// Unpins without failing (for superseded objects; a lost unpin only keeps a block
    /// replicated longer).
    #[doc(hidden)]
    pub async fn unpin_quietly(&self, blocks: &[Id]) {
        if blocks.is_empty() {
            return;
        }
        if let Err(e) = self.unpin(blocks).await {
            tracing::warn!(error = %e, count = blocks.len(), "could not unpin superseded blocks");
        }
    }
}

/// A storage failure other than corruption, as the vault reports it.
fn store_error(context: String, error: StoreError) -> EhiError {
    match error {
        StoreError::Client(e) => EhiError::network(context, e),
        source => EhiError::Storage { context, source },
    }
}

async fn registered(broker: &BrokerClient, kind: &'static str) -> Result<Vec<Id>> {
    broker.registered(kind).await.map_err(|e| match e {
        ClientError::Transport { source, .. } if connection_refused(&source) => {
            EhiError::NoBroker {
                url: broker.endpoint().base_url().to_string(),
            }
        }
        e => EhiError::network(
            format!(
                "asking the broker at {} for {kind} servers",
                broker.endpoint().base_url()
            ),
            e,
        ),
    })
}

/// Whether a request failed because nothing listens at the address (as opposed to a
/// TLS, DNS or protocol failure, which keep their own message).
fn connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// When unpinned blocks leave the storage servers: the distributor deletes a block
/// from every storage server once it has stayed unpinned for the grace period, at its
/// next sweep; storage compaction then reclaims the disk space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Collection {
    /// Seconds a block stays after its last unpin.
    pub grace_seconds: u64,
    /// Seconds between sweeps; `None`: sweeps run only when an operator asks.
    pub interval_seconds: Option<u64>,
}

impl Collection {
    /// Seconds after the unpin by which the blocks are deleted from every reachable
    /// storage server (grace plus one sweep interval); `None` without automatic sweeps.
    pub fn within_seconds(&self) -> Option<u64> {
        self.interval_seconds
            .map(|interval| self.grace_seconds.saturating_add(interval))
    }

    /// One sentence for people: when the ciphertext leaves the servers.
    pub fn describe(&self) -> String {
        let grace = crate::time::span(self.grace_seconds);
        match self.interval_seconds {
            Some(interval) => format!(
                "the distributor deletes the unpinned ciphertext from every storage server \
                 after its grace period ({grace}) at its next sweep (every {}): gone from \
                 the servers within about {}, then storage compaction reclaims the space",
                crate::time::span(interval),
                crate::time::span(self.grace_seconds.saturating_add(interval))
            ),
            None => format!(
                "the distributor deletes the unpinned ciphertext from every storage server \
                 once its grace period ({grace}) has passed and an operator runs a sweep \
                 (`invariant gc run`); storage compaction then reclaims the space"
            ),
        }
    }
}
