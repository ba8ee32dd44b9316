//! The decrypted-resource cache and the search-result cache of `ehi serve` (in memory
//! only), their warm-up, and the reads that go through them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use serde_json::Value;

use super::{AppState, ServeError};
use ehi_vault::error::EhiError;
use ehi_vault::vault::Vault;

/// Decrypted current versions, in memory only (never on disk), keyed by `(type, id)`:
/// a [`moka`] cache bounded by [`ServeOptions::cache_bytes`] (weighed by each
/// resource's JSON size, least recently used evicted first). It is filled at start by
/// a warm-up that reads every current resource, so searches answer from memory.
///
/// Staleness: this server's writes invalidate the written resource (and bump the
/// epoch, so a read that started before cannot insert the old value afterwards); a
/// refresh of the vault that changed its resources ([`Vault::resources_fingerprint`])
/// — another device's commit, a revocation's re-encryption — empties the cache and
/// warms it again. Audit-only and grant-only commits keep it.
///
/// [`ServeOptions::cache_bytes`]: super::ServeOptions::cache_bytes
#[derive(Debug)]
pub(crate) struct Cache {
    map: moka::sync::Cache<(String, String), Arc<Value>>,
    /// Search results: `(type, query)` → `(total, ids in order)`, so that paging
    /// through a query (or repeating it) searches the index once. Emptied on every
    /// write and refresh that changed resources (like `map`).
    searches: moka::sync::Cache<(String, String), FoundIds>,
    epoch: AtomicU64,
    /// Bumped when the whole cache is dropped (a running warm-up stops).
    clears: AtomicU64,
    /// The resources fingerprint the cache is current for.
    known: std::sync::Mutex<[u8; 32]>,
    /// The memory budget (weight units: bytes of JSON).
    capacity: u64,
}

impl Cache {
    pub(super) fn new(bytes: u64) -> Cache {
        Cache {
            map: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|k: &(String, String), v: &Arc<Value>| {
                    let size = 64 + k.0.len() + k.1.len() + json_size(v);
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .build(),
            searches: moka::sync::Cache::builder()
                .max_capacity(SEARCH_CACHE_IDS)
                .weigher(|_: &(String, String), v: &FoundIds| {
                    u32::try_from(v.1.len().max(1)).unwrap_or(u32::MAX)
                })
                .build(),
            epoch: AtomicU64::new(0),
            clears: AtomicU64::new(0),
            known: std::sync::Mutex::new([0; 32]),
            capacity: bytes,
        }
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn get(&self, t: &str, id: &str) -> Option<Value> {
        self.map
            .get(&(t.to_string(), id.to_string()))
            .map(|v| (*v).clone())
    }

    fn contains(&self, t: &str, id: &str) -> bool {
        self.map.contains_key(&(t.to_string(), id.to_string()))
    }

    fn put(&self, epoch: u64, t: &str, id: &str, value: &Value) {
        if self.epoch() == epoch {
            self.map
                .insert((t.to_string(), id.to_string()), Arc::new(value.clone()));
        }
    }

    /// Drops one resource (this server wrote it) and every search result.
    pub(super) fn invalidate(&self, t: &str, id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.invalidate(&(t.to_string(), id.to_string()));
        self.searches.invalidate_all();
    }

    /// Drops everything.
    pub(super) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.clears.fetch_add(1, Ordering::AcqRel);
        self.map.invalidate_all();
        self.searches.invalidate_all();
    }

    pub(super) fn known(&self) -> std::sync::MutexGuard<'_, [u8; 32]> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resources cached (approximate until moka's pending tasks run).
    pub(crate) fn len(&self) -> u64 {
        self.map.run_pending_tasks();
        self.map.entry_count()
    }
}

/// The length of `value` as JSON text (approximately what it weighs in the cache).
fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// A search result: the total and the matching ids in order.
pub(super) type FoundIds = Arc<(usize, Vec<String>)>;

/// Most ids held by the search-result cache (over all cached queries).
pub const SEARCH_CACHE_IDS: u64 = 2_000_000;

/// `Vault::search_ids(t, query)`, from the search-result cache when it has it.
pub(super) async fn cached_search(
    vault: &Vault,
    cache: &Cache,
    t: &str,
    query: &str,
) -> Result<FoundIds, EhiError> {
    let key = (t.to_string(), query.to_string());
    if let Some(hit) = cache.searches.get(&key) {
        return Ok(hit);
    }
    let epoch = cache.epoch();
    let result = Arc::new(vault.search_ids(t, query).await?);
    if cache.epoch() == epoch {
        cache.searches.insert(key, result.clone());
    }
    Ok(result)
}

/// The current version of `t/id`, from the cache or the vault.
pub(super) async fn cached_read(
    vault: &Vault,
    cache: &Cache,
    t: &str,
    id: &str,
) -> Result<Value, EhiError> {
    if let Some(value) = cache.get(t, id) {
        return Ok(value);
    }
    let epoch = cache.epoch();
    let value = vault.read(t, id).await?;
    cache.put(epoch, t, id, &value);
    Ok(value)
}

/// Every current resource of the vault as `(type, id)`.
pub(crate) async fn current_refs(vault: &Vault) -> Vec<(String, String)> {
    vault
        .list()
        .await
        .into_iter()
        .filter_map(|r| {
            r.split_once('/')
                .map(|(t, id)| (t.to_string(), id.to_string()))
        })
        .collect()
}

/// Reads every current resource into the cache (stops if the cache is emptied
/// meanwhile, or when it is full); then marks the server warmed.
pub(super) async fn warm_up(state: Arc<AppState>) {
    let clears = state.cache.clears.load(Ordering::Acquire);
    let started = std::time::Instant::now();
    let refs = current_refs(&state.vault).await;
    let total = refs.len();
    let mut loaded = 0usize;
    for chunk in refs.chunks(1024) {
        if state.cache.clears.load(Ordering::Acquire) != clears {
            return;
        }
        state.cache.map.run_pending_tasks();
        if state.cache.map.weighted_size() >= state.cache.capacity / 100 * 95 {
            tracing::warn!(
                loaded,
                total,
                "the resource cache is full: warm-up stopped (raise cache_bytes)"
            );
            break;
        }
        let futures: Vec<_> = chunk
            .iter()
            .filter(|(t, id)| !state.cache.contains(t, id))
            .map(|(t, id)| {
                let state = state.clone();
                async move { cached_read(&state.vault, &state.cache, t, id).await }
            })
            .collect();
        let results: Vec<Result<Value, EhiError>> = futures_util::stream::iter(futures)
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;
        for r in results {
            match r {
                Ok(_) => loaded += 1,
                Err(EhiError::NotFound(_) | EhiError::Gone(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "warming the resource cache");
                    let _ = state.warmed.send_replace(true);
                    return;
                }
            }
        }
    }
    tracing::info!(
        loaded,
        total,
        ms = started.elapsed().as_millis() as u64,
        "resource cache warmed"
    );
    // `send_replace`, not `send`: with nobody subscribed yet, `send` would drop the
    // value and a later `Server::warmed` would wait forever.
    let _ = state.warmed.send_replace(true);
}

/// Empties the cache and warms it again (another device changed the resources).
pub(super) fn rewarm(state: &Arc<AppState>, warm: bool) {
    state.cache.clear();
    if warm {
        let _ = state.warmed.send_replace(false);
        tokio::spawn(warm_up(state.clone()));
    }
}

/// Resources fetched concurrently for a page.
pub(super) const FETCH_CONCURRENCY: usize = 16;

/// Reads `ids` of type `t` (current versions; ids deleted meanwhile are skipped).
pub(super) async fn fetch_all(
    state: &AppState,
    t: &str,
    ids: &[String],
) -> Result<Vec<Value>, ServeError> {
    let refs: Vec<(String, String)> = ids.iter().map(|id| (t.to_string(), id.clone())).collect();
    fetch_refs(state, refs).await
}

/// Reads `(type, id)` pairs, [`FETCH_CONCURRENCY`] at a time, in order (resources
/// deleted meanwhile are skipped).
pub(crate) async fn fetch_refs(
    state: &AppState,
    refs: Vec<(String, String)>,
) -> Result<Vec<Value>, ServeError> {
    let futures: Vec<_> = refs
        .into_iter()
        .map(|(t, id)| {
            let vault = state.vault.clone();
            let cache = state.cache.clone();
            async move { cached_read(&vault, &cache, &t, &id).await }
        })
        .collect();
    let fetched: Vec<Result<Value, EhiError>> = futures_util::stream::iter(futures)
        .buffered(FETCH_CONCURRENCY)
        .collect()
        .await;
    let mut out = Vec::with_capacity(fetched.len());
    for r in fetched {
        match r {
            Ok(resource) => out.push(resource),
            Err(EhiError::NotFound(_) | EhiError::Gone(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}
