//! Where the files server finds storage and slots servers.
//!
//! Explicit urls (`--storage`, repeatable, and `--slots`) win. Otherwise the broker
//! (`--broker`) is asked for servers of kind `storage` / `slots`, each resolved to a
//! url that answers `GET /id/` with its id; the answer is cached for
//! [`REFRESH`] ([`RETRY_EMPTY`] while it is empty or failed).
//!
//! Reads try every known storage server (nearest to this server's id by XOR distance
//! first, for broker-found servers; in the given order for explicit ones); writes go
//! to the first `write_copies` of them, each of which stores a blob it lacks. The
//! content reader and writer see these two sets through `PeerStore`.
//!
//! Every client uses the server's own HTTP client (`ServerContext::http`: its CA roots
//! and its token), as the broker client does, so the storage and slots servers see
//! this server's token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use invariant_content::{BlockStore, StorageSet, StoreError};
use invariant_spec::http::Endpoint;
use invariant_spec::{BrokerClient, Id, SlotsClient, StorageClient};

use crate::error::{FilesError, FilesResult};

/// How long a broker answer is used before asking again.
pub const REFRESH: Duration = Duration::from_secs(60);
/// How soon an empty or failed broker answer is retried.
pub const RETRY_EMPTY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct StorageSets {
    read: Arc<StorageSet>,
    write: Arc<StorageSet>,
    empty: bool,
}

impl StorageSets {
    fn of(clients: Vec<StorageClient>, write_copies: usize) -> StorageSets {
        let stores: Vec<Arc<dyn BlockStore>> = clients
            .into_iter()
            .map(|c| Arc::new(c) as Arc<dyn BlockStore>)
            .collect();
        let write = stores.iter().take(write_copies.max(1)).cloned().collect();
        StorageSets {
            empty: stores.is_empty(),
            read: Arc::new(StorageSet::new(stores)),
            write: Arc::new(StorageSet::new(write)),
        }
    }
}

#[derive(Debug, Default)]
struct Cache {
    storage: Option<(Instant, StorageSets)>,
    slots: Option<(Instant, SlotsClient)>,
}

/// Storage and slots servers, explicit or found through the broker.
#[derive(Debug)]
pub(crate) struct Peers {
    id: Id,
    http: reqwest::Client,
    broker: Option<BrokerClient>,
    explicit_storage: Option<StorageSets>,
    explicit_slots: Option<SlotsClient>,
    write_copies: usize,
    cache: tokio::sync::Mutex<Cache>,
}

impl Peers {
    /// Peers for server `id`, reached with `http`; fails on a malformed url.
    pub fn new(
        id: Id,
        http: reqwest::Client,
        broker: Option<BrokerClient>,
        storage: &[String],
        slots: Option<&str>,
        write_copies: usize,
    ) -> FilesResult<Peers> {
        let bad_url = |e: invariant_spec::ClientError| FilesError::Config(e.to_string());
        let endpoint = |url: &str| Endpoint::with_client(url, http.clone()).map_err(bad_url);
        let explicit_storage = if storage.is_empty() {
            None
        } else {
            let clients = storage
                .iter()
                .map(|url| endpoint(url).map(StorageClient::from_endpoint))
                .collect::<Result<Vec<_>, _>>()?;
            Some(StorageSets::of(clients, write_copies))
        };
        let explicit_slots = slots
            .map(|url| endpoint(url).map(SlotsClient::from_endpoint))
            .transpose()?;
        Ok(Peers {
            id,
            http,
            broker,
            explicit_storage,
            explicit_slots,
            write_copies,
            cache: tokio::sync::Mutex::new(Cache::default()),
        })
    }

    /// Whether storage servers can be found at all (explicitly or through a broker).
    pub fn has_storage_source(&self) -> bool {
        self.explicit_storage.is_some() || self.broker.is_some()
    }

    async fn storage(&self) -> StorageSets {
        if let Some(sets) = &self.explicit_storage {
            return sets.clone();
        }
        let Some(broker) = &self.broker else {
            return StorageSets::of(Vec::new(), self.write_copies);
        };
        let mut cache = self.cache.lock().await;
        if let Some((at, sets)) = &cache.storage {
            let fresh = if sets.empty { RETRY_EMPTY } else { REFRESH };
            if at.elapsed() < fresh {
                return sets.clone();
            }
        }
        let sets = match self.discover_storage(broker).await {
            Ok(clients) => StorageSets::of(clients, self.write_copies),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list storage servers through the broker");
                match &cache.storage {
                    // Keep using what worked before.
                    Some((_, sets)) if !sets.empty => sets.clone(),
                    _ => StorageSets::of(Vec::new(), self.write_copies),
                }
            }
        };
        cache.storage = Some((Instant::now(), sets.clone()));
        sets
    }

    async fn discover_storage(
        &self,
        broker: &BrokerClient,
    ) -> invariant_spec::ClientResult<Vec<StorageClient>> {
        let mut ids = broker.registered("storage").await?;
        self.id.sort_by_distance(&mut ids);
        let mut clients = Vec::new();
        for id in ids {
            match broker.storage(&id).await {
                Ok(Some(client)) => clients.push(client),
                Ok(None) => tracing::debug!(%id, "storage server does not answer"),
                Err(e) => tracing::debug!(%id, error = %e, "cannot resolve storage server"),
            }
        }
        Ok(clients)
    }

    /// The slots server to use.
    pub async fn slots(&self) -> FilesResult<SlotsClient> {
        if let Some(client) = &self.explicit_slots {
            return Ok(client.clone());
        }
        let broker = self.broker.as_ref().ok_or(FilesError::NoSlotsServer)?;
        let mut cache = self.cache.lock().await;
        if let Some((at, client)) = &cache.slots
            && at.elapsed() < REFRESH
        {
            return Ok(client.clone());
        }
        let ids = broker
            .registered("slots")
            .await
            .map_err(FilesError::Slots)?;
        for id in ids {
            if let Ok(Some(url)) = broker.resolve(&id).await
                && let Ok(endpoint) = Endpoint::with_client(&url, self.http.clone())
            {
                let client = SlotsClient::from_endpoint(endpoint);
                cache.slots = Some((Instant::now(), client.clone()));
                return Ok(client);
            }
        }
        Err(FilesError::NoSlotsServer)
    }
}

/// Which of the two storage sets a [`PeerStore`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// Every known server, for reading.
    Read,
    /// The first `write_copies` servers, for writing.
    Write,
}

/// A [`BlockStore`] over the current storage servers.
#[derive(Debug, Clone)]
pub(crate) struct PeerStore {
    peers: Arc<Peers>,
    use_: Use,
}

impl PeerStore {
    pub fn new(peers: Arc<Peers>, use_: Use) -> PeerStore {
        PeerStore { peers, use_ }
    }

    async fn set(&self) -> Arc<StorageSet> {
        let sets = self.peers.storage().await;
        match self.use_ {
            Use::Read => sets.read,
            Use::Write => sets.write,
        }
    }
}

impl BlockStore for PeerStore {
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move { self.set().await.get(address).await })
    }

    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { self.set().await.has(address).await })
    }

    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.set().await.put(address, data).await })
    }
}
