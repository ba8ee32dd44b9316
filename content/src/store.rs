//! Where blobs live: the [`BlockStore`] trait the reader and writer use, with
//! implementations over one storage server ([`StorageClient`]), a set of them
//! ([`StorageSet`]) and memory ([`MemoryStore`], for tests and caches).
//!
//! Contract: `get` returns only bytes that hash to the requested address (a store
//! that cannot vouch for its bytes must check them) and reports a mismatch as
//! [`StoreError::Corrupt`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use invariant_spec::{ClientError, Id, StorageClient};

/// Why a store could not complete an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The bytes held for an address hash to `actual`.
    #[error("stored bytes hash to {actual}")]
    Corrupt {
        /// The SHA-256 of the bytes received.
        actual: Id,
    },
    /// A storage server request failed.
    #[error(transparent)]
    Client(ClientError),
    /// The store refused the operation.
    #[error("{0}")]
    Rejected(String),
}

impl From<ClientError> for StoreError {
    fn from(error: ClientError) -> StoreError {
        match error {
            ClientError::HashMismatch { actual, .. } => StoreError::Corrupt { actual },
            other => StoreError::Client(other),
        }
    }
}

/// A content-addressed blob store.
pub trait BlockStore: Send + Sync + fmt::Debug {
    /// The blob at `address`, verified, or `None` when the store does not hold it.
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>>;
    /// Whether the store holds `address`.
    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Stores `data`, whose SHA-256 is `address`.
    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>>;
}

impl<S: BlockStore + ?Sized> BlockStore for Arc<S> {
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        (**self).get(address)
    }
    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
        (**self).has(address)
    }
    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        (**self).put(address, data)
    }
}

impl BlockStore for StorageClient {
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move { Ok(self.get_bytes(&address).await?) })
    }
    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { Ok(StorageClient::has(self, &address).await?.is_some()) })
    }
    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { Ok(StorageClient::put(self, &address, data).await?) })
    }
}

/// Several stores used together, in one of two placements:
/// - [`StorageSet::new`]: reads try each store in the given order (skipping ones that
///   lack or corrupt the blob), writes go to every store that lacks the blob;
/// - [`StorageSet::nearest`]: stores known by their server id; reads try them nearest
///   to the blob's address first (XOR distance, the order in which the distributor
///   places pinned blocks), and a write goes to the `copies` nearest stores that
///   accept it, skipping ones that fail.
///
/// A read that finds no intact copy reports a corrupt copy before any other failure:
/// it says more about the network than a server that did not answer.
#[derive(Debug, Clone)]
pub struct StorageSet {
    stores: Vec<(Option<Id>, Arc<dyn BlockStore>)>,
    /// `None`: write to every store; `Some(n)`: to the `n` nearest that accept.
    copies: Option<usize>,
}

impl StorageSet {
    /// A set reading in the given order. An empty set holds nothing and refuses writes.
    pub fn new(stores: Vec<Arc<dyn BlockStore>>) -> StorageSet {
        StorageSet {
            stores: stores.into_iter().map(|s| (None, s)).collect(),
            copies: None,
        }
    }

    /// A set of stores known by server id, used nearest to each address first; a write
    /// keeps `copies` copies (at least one). An empty set holds nothing and refuses
    /// writes.
    pub fn nearest(stores: Vec<(Id, Arc<dyn BlockStore>)>, copies: usize) -> StorageSet {
        StorageSet {
            stores: stores.into_iter().map(|(id, s)| (Some(id), s)).collect(),
            copies: Some(copies.max(1)),
        }
    }

    /// The server ids of a [`StorageSet::nearest`] set (none for [`StorageSet::new`]).
    pub fn ids(&self) -> Vec<Id> {
        self.stores.iter().filter_map(|(id, _)| *id).collect()
    }

    /// The stores in the order they are tried for `address`.
    fn order(&self, address: &Id) -> Vec<&Arc<dyn BlockStore>> {
        let mut stores: Vec<&(Option<Id>, Arc<dyn BlockStore>)> = self.stores.iter().collect();
        if self.copies.is_some() {
            stores.sort_by_key(|(id, _)| id.map(|id| address.distance(&id)));
        }
        stores.into_iter().map(|(_, store)| store).collect()
    }
}

impl BlockStore for StorageSet {
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            let mut corrupt = None;
            let mut failure = None;
            for store in self.order(&address) {
                match store.get(address).await {
                    Ok(Some(bytes)) => return Ok(Some(bytes)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(%address, error = %e, "store failed, trying the next");
                        match e {
                            StoreError::Corrupt { .. } => corrupt.get_or_insert(e),
                            e => failure.get_or_insert(e),
                        };
                    }
                }
            }
            corrupt.or(failure).map_or(Ok(None), Err)
        })
    }

    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            for store in &self.stores {
                if !store.1.has(address).await? {
                    return Ok(false);
                }
            }
            Ok(!self.stores.is_empty())
        })
    }

    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.stores.is_empty() {
                return Err(StoreError::Rejected("no stores to write to".into()));
            }
            let Some(copies) = self.copies else {
                for (_, store) in &self.stores {
                    if !store.has(address).await? {
                        store.put(address, data.clone()).await?;
                    }
                }
                return Ok(());
            };
            let mut written = 0;
            let mut failure = None;
            for store in self.order(&address) {
                match store.put(address, data.clone()).await {
                    Ok(()) => {
                        written += 1;
                        if written == copies {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%address, error = %e, "store refused a write, trying the next");
                        failure.get_or_insert(e);
                    }
                }
            }
            match failure {
                Some(e) if written == 0 => Err(e),
                _ => Ok(()),
            }
        })
    }
}

/// Blobs in memory, verified on read like a remote store's.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    blobs: Arc<Mutex<HashMap<Id, Bytes>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn blobs(&self) -> std::sync::MutexGuard<'_, HashMap<Id, Bytes>> {
        self.blobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of blobs held.
    pub fn len(&self) -> usize {
        self.blobs().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.blobs().is_empty()
    }

    /// Replaces the bytes held for `address` without checking them (to test
    /// corruption handling).
    pub fn insert_unchecked(&self, address: Id, data: Bytes) {
        self.blobs().insert(address, data);
    }

    /// The addresses held.
    pub fn addresses(&self) -> Vec<Id> {
        self.blobs().keys().copied().collect()
    }
}

impl BlockStore for MemoryStore {
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let found = self.blobs().get(&address).cloned();
        Box::pin(async move {
            let Some(data) = found else {
                return Ok(None);
            };
            let actual = Id::of_content(&data);
            if actual != address {
                return Err(StoreError::Corrupt { actual });
            }
            Ok(Some(data))
        })
    }

    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
        let found = self.blobs().contains_key(&address);
        Box::pin(async move { Ok(found) })
    }

    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = if Id::of_content(&data) == address {
            self.blobs().insert(address, data);
            Ok(())
        } else {
            Err(StoreError::Rejected(format!(
                "body does not hash to {address}"
            )))
        };
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_verifies() {
        let store = MemoryStore::new();
        let data = Bytes::from_static(b"hello");
        let address = Id::of_content(&data);
        assert!(!store.has(address).await.expect("has"));
        assert!(
            store
                .put(Id::of_content(b"other"), data.clone())
                .await
                .is_err()
        );
        store.put(address, data.clone()).await.expect("put");
        assert_eq!(store.get(address).await.expect("get"), Some(data));
        store.insert_unchecked(address, Bytes::from_static(b"evil"));
        assert!(matches!(
            store.get(address).await,
            Err(StoreError::Corrupt { actual }) if actual == Id::of_content(b"evil")
        ));
    }

    #[tokio::test]
    async fn storage_set_falls_back_and_replicates() {
        let a = MemoryStore::new();
        let b = MemoryStore::new();
        let set = StorageSet::new(vec![Arc::new(a.clone()), Arc::new(b.clone())]);
        let data = Bytes::from_static(b"blob");
        let address = Id::of_content(&data);
        b.put(address, data.clone()).await.expect("put b");
        assert!(!set.has(address).await.expect("has"));
        assert_eq!(set.get(address).await.expect("get"), Some(data.clone()));
        // A corrupt copy in the first store is skipped.
        a.insert_unchecked(address, Bytes::from_static(b"bad"));
        assert_eq!(set.get(address).await.expect("get"), Some(data.clone()));
        // Writing fills the stores that lack it.
        let other = Bytes::from_static(b"other");
        let other_address = Id::of_content(&other);
        set.put(other_address, other).await.expect("put");
        assert!(a.has(other_address).await.expect("has a"));
        assert!(b.has(other_address).await.expect("has b"));
        assert!(set.has(other_address).await.expect("has set"));
    }

    /// A store that refuses every request, like a server that is down.
    #[derive(Debug)]
    struct Down;

    impl BlockStore for Down {
        fn get(&self, _: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
            Box::pin(async { Err(StoreError::Rejected("down".into())) })
        }
        fn has(&self, _: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
            Box::pin(async { Err(StoreError::Rejected("down".into())) })
        }
        fn put(&self, _: Id, _: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async { Err(StoreError::Rejected("down".into())) })
        }
    }

    #[tokio::test]
    async fn nearest_set_writes_to_the_nearest_that_accepts() {
        let data = Bytes::from_static(b"placed blob");
        let address = Id::of_content(&data);
        // Server ids at growing XOR distance from the address.
        let near = |bit: u8| {
            let mut bytes = *address.as_bytes();
            bytes[0] ^= bit;
            Id::from_bytes(bytes)
        };
        let (a, b, c) = (MemoryStore::new(), MemoryStore::new(), MemoryStore::new());
        let set = StorageSet::nearest(
            vec![
                (near(0x40), Arc::new(c.clone())),
                (near(0x01), Arc::new(a.clone())),
                (near(0x08), Arc::new(b.clone())),
            ],
            1,
        );
        assert_eq!(set.ids().len(), 3);
        set.put(address, data.clone()).await.expect("put");
        assert!(a.has(address).await.expect("has a"), "nearest holds it");
        assert!(!b.has(address).await.expect("has b"));
        assert!(!c.has(address).await.expect("has c"));

        // The nearest is down: the write goes to the next one, and two copies to two.
        let set = StorageSet::nearest(
            vec![
                (near(0x01), Arc::new(Down)),
                (near(0x08), Arc::new(b.clone())),
                (near(0x40), Arc::new(c.clone())),
            ],
            2,
        );
        set.put(address, data.clone())
            .await
            .expect("put past a down store");
        assert!(b.has(address).await.expect("has b"));
        assert!(c.has(address).await.expect("has c"));
        assert_eq!(set.get(address).await.expect("get"), Some(data.clone()));

        // Every store down: the write fails.
        let down = StorageSet::nearest(vec![(near(0x01), Arc::new(Down))], 1);
        assert!(down.put(address, data).await.is_err());
        assert!(
            StorageSet::nearest(Vec::new(), 1)
                .put(address, Bytes::new())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_corrupt_copy_is_reported_before_a_failure() {
        let data = Bytes::from_static(b"only copy");
        let address = Id::of_content(&data);
        let corrupt = MemoryStore::new();
        corrupt.insert_unchecked(address, Bytes::from_static(b"bad"));
        let set = StorageSet::new(vec![Arc::new(Down), Arc::new(corrupt)]);
        assert!(matches!(
            set.get(address).await,
            Err(StoreError::Corrupt { actual }) if actual == Id::of_content(b"bad")
        ));
        let empty = StorageSet::new(vec![Arc::new(MemoryStore::new())]);
        assert_eq!(empty.get(address).await.expect("get"), None);
    }
}
