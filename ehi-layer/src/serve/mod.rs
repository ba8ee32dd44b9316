//! `ehi serve`: a FHIR R4 REST API over the decrypted vault, on the patient's device.
//!
//! The server binds `127.0.0.1` by default and keeps nothing on disk: resources are
//! read from (and written to) the vault through [`Vault`], decrypted resources are
//! cached in memory only, bulk export files live in memory until the job is deleted or
//! the server stops, and bearer tokens are checked by their keyed tag ([`token`]) and
//! against the vault's current grants and the revoked token ids ([`auth`]) rather than
//! looked up. The one file it reads besides the keystore is the revoked-token list
//! beside it (token ids only).
//!
//! ## Interactions (every resource type of [`ehi_search::resource_types`])
//! - `GET /metadata` — the CapabilityStatement ([`capability`]), generated from the
//!   `ehi-search` parameter table; public (no token).
//! - `GET [type]/[id]` read, `GET [type]/[id]/_history/[vid]` vread,
//!   `GET [type]/[id]/_history` and `GET [type]/_history` history (type history lists
//!   the versions of the type's current resources, newest first, paged).
//! - `GET [type]?…` and `POST [type]/_search` (form body) search: a `searchset` Bundle
//!   with `total` and `self`/`first`/`next`/`previous` links. **Paging** is stateless:
//!   the server asks the vault for every matching id in sort order (`_sort` is passed
//!   through; an index-only query, nothing is decrypted) and fetches only the page
//!   `[_offset, _offset + _count)` (`_count` defaults to 50, at most 1000); the links
//!   carry `_offset`. A page is consistent with the vault at the time of the request.
//!   `_summary=count|data|false`, `_elements` (which also keeps the type's mandatory
//!   elements), `_include` and `_revinclude` (on reference parameters) shape the
//!   answer; `_total=none` leaves `total` out. Unknown parameters follow FHIR's
//!   handling preference: 400 by default (`Prefer: handling=strict`), or ignored and
//!   reported in an OperationOutcome entry (`search.mode = outcome`) under
//!   `Prefer: handling=lenient`. `ehi search` answers through this same code
//!   ([`answer_locally`]).
//! - `POST [type]` create (the server assigns the id), `PUT [type]/[id]` update or
//!   create, `DELETE [type]/[id]`, all through [`Vault::import`]; `If-Match: W/"n"` on
//!   update is checked under the server's write lock (412 on mismatch). The lock
//!   serializes this server's writes; another device's commit between check and
//!   commit is not detected.
//! - `GET Patient/[id]/$everything` — the patient compartment and the resources it
//!   references (practitioners, organizations, locations, medications; paged like
//!   search).
//! - Bulk Data ([`bulk`]): `GET $export`, `GET Patient/$export`,
//!   `GET Patient/[id]/$export` with `Prefer: respond-async`.
//!
//! - `_summary=true|text|data|count|false` ([`summary`]) on search and read.
//!
//! Decrypted current versions are kept in an in-memory cache bounded by
//! [`ServeOptions::cache_bytes`] and warmed at start (every current resource read
//! once), so searches answer from memory; this server's writes invalidate what they
//! wrote, and a refresh of the vault that brought other devices' changes empties and
//! re-warms it.
//!
//! **Following the vault slot**: the server watches the vault slot on the slots
//! server ([`Vault::watch`], the NDJSON watch stream; [`ServeOptions::watch`]) and
//! refreshes as soon as it moves, besides every [`ServeOptions::refresh_every`] (30 s,
//! a fallback while the watch is down; it is re-opened after 200 ms). So another
//! device's commit shows, and **a grant revoked elsewhere (`ehi revoke`) has its
//! tokens refused, within 2 s of the revocation reaching the slots server** (in
//! practice the time to re-read the changed manifests); an expired grant's tokens are
//! refused at once (its expiry is checked on every request).
//!
//! **Removal**: once the vault slot holds the tombstone (`ehi delete` on any device;
//! seen through the watch, a refresh, or a request), the server answers **every**
//! request (metadata included) with 410 Gone and an OperationOutcome saying the vault
//! was removed, within the same 2 s bound; it drops its decrypted resources (cache,
//! search results, bulk export files, the vault handle's manifests and indexes) and
//! the audit entries not yet written. `ehi serve --exit-on-removal` then exits
//! ([`Server::removed`]).
//!
//! **Authorization**: every request except `/metadata`,
//! `/.well-known/smart-configuration`, `/authorize` and `/token` needs a bearer token
//! ([`token`]): the patient's, one bound to a grant (`ehi token <grant>` or the
//! authorization-code flow of [`oauth`]; refused once the grant is revoked or expired,
//! [`auth`]), or one minted from bare scopes. A token can be revoked on its own
//! (`ehi token revoke`).
//!
//! **Confinement**: beyond its type scopes, a grant token sees only the resources kept
//! in the grant's scopes ([`Vault::placements`]), and a token with a patient context
//! (`launch_patient`, set by `ehi token <grant>` and `/token` to
//! [`context_patient`]) sees only the compartment of that Patient plus resources in no
//! patient's compartment (Practitioner, Organization, Medication, …) — on read, vread,
//! history, search (totals count what it sees), `_include`/`_revinclude`,
//! `$everything` and `$export`. A resource it may not see answers 404 as if it did not
//! exist; writing a resource that references another patient is a 403.
//!
//! **Audit**: every request is written to the vault's audit log, batched ([`audit`]).
//!
//! **Performance**: search results are cached per query (emptied with the resource
//! cache), so paging costs one index search; figures from `cargo bench -p ehi-layer
//! --bench serve` are in `BENCHMARKS.md`.
//!
//! Only JSON is served: `Accept: application/fhir+xml` or `_format=xml` gets 406.
//! Errors are OperationOutcomes ([`error`]); OAuth endpoints answer RFC 6749 JSON
//! errors.

pub mod audit;
pub mod auth;
pub mod bulk;
pub mod capability;
pub mod error;
pub mod oauth;
pub mod summary;
pub mod token;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use error::ServeError;
pub use token::{Access, Claims, Perm, TokenKey};

use crate::error::EhiError;
use crate::fhir::{Input, valid_id};
use crate::time::{instant, now_ms};
use crate::vault::{HistoryEntry, Vault};

/// Largest request body accepted (16 MiB).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Page size when `_count` is not given.
pub const DEFAULT_COUNT: usize = 50;
/// Largest page.
pub const MAX_COUNT: usize = 1000;
/// How often the server re-reads the vault by default, besides following the vault
/// slot (the fallback while the slot watch is down).
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How often the revoked-token file is checked for changes.
pub const REVOKED_POLL: Duration = Duration::from_secs(1);
/// Pause before watching the vault slot again after the watch failed.
const WATCH_RETRY: Duration = Duration::from_millis(200);

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
/// Resources fetched concurrently for a page.
const FETCH_CONCURRENCY: usize = 16;

/// How `ehi serve` runs ([`start_with`]); `ServeOptions::default()` is what [`start`]
/// uses.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// How often the vault is re-read (other devices' commits, grants revoked
    /// elsewhere). Default [`REFRESH_EVERY`].
    pub refresh_every: Duration,
    /// The revoked-token file ([`token::revoked_tokens_path`]); `None`: no per-token
    /// revocation. Default `None` (`ehi serve` passes the keystore's).
    pub revoked_tokens: Option<PathBuf>,
    /// Pre-authorized OAuth clients: `(client_id, grant id)` ([`oauth`]). Default none.
    pub clients: Vec<(String, String)>,
    /// Lifetime of an authorization code. Default [`oauth::CODE_TTL`] (60 s).
    pub code_ttl: Duration,
    /// Whether requests are written to the audit log ([`audit`]). Default true.
    pub audit: bool,
    /// Flush the audit buffer at least this often. Default 1 s.
    pub audit_flush_every: Duration,
    /// Flush as soon as this many entries wait. Default 100.
    pub audit_batch: usize,
    /// Memory budget of the decrypted-resource cache, in bytes of resource JSON (the
    /// parsed values take about 3–4 times that). Default 256 MiB.
    pub cache_bytes: u64,
    /// Load every current resource into the cache at start (and after a refresh that
    /// brought changes). Default true.
    pub warm_up: bool,
    /// Connection limits (header, idle and body timeouts, connection cap, body
    /// budget), the same as every network server's. Default
    /// [`invariant_runtime::conn::Limits::default`].
    pub limits: invariant_runtime::conn::Limits,
    /// Follow the vault slot through the slots server's watch stream, so that other
    /// devices' commits, revoked grants and the vault's removal are seen at once
    /// rather than at the next [`ServeOptions::refresh_every`]. Default true.
    pub watch: bool,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            refresh_every: REFRESH_EVERY,
            revoked_tokens: None,
            clients: Vec::new(),
            code_ttl: oauth::CODE_TTL,
            audit: true,
            audit_flush_every: Duration::from_secs(1),
            audit_batch: 100,
            cache_bytes: 256 * 1024 * 1024,
            warm_up: true,
            limits: invariant_runtime::conn::Limits::default(),
            watch: true,
        }
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub(crate) struct AppState {
    vault: Arc<Vault>,
    key: TokenKey,
    base: String,
    write: tokio::sync::Mutex<()>,
    jobs: bulk::Jobs,
    cache: Arc<Cache>,
    auth: auth::Auth,
    oauth: oauth::OAuth,
    audit: Option<audit::AuditBuffer>,
    warmed: watch::Sender<bool>,
    /// [`ServeOptions::warm_up`]: whether a refresh that changed the resources warms
    /// the emptied cache again.
    warm_up: bool,
    /// Set once the vault is seen removed: every request is answered 410 from then on.
    removed: watch::Sender<bool>,
}

/// The vault was removed: drops the decrypted resources (cache, search results, bulk
/// export files, the vault handle's manifests and indexes) and the audit entries waiting (there is no log to append them to);
/// from now on every request is answered 410 ([`removed_response`]).
fn mark_removed(state: &AppState) {
    if state.removed.send_replace(true) {
        return;
    }
    tracing::warn!("the vault was removed: answering every request with 410 Gone");
    state.cache.clear();
    state.jobs.clear();
    if let Some(audit) = &state.audit {
        audit.discard();
    }
    let vault = state.vault.clone();
    tokio::spawn(async move { vault.forget_loaded().await });
}

/// The answer to every request once the vault was removed.
fn removed_response() -> Response {
    fhir_response(
        StatusCode::GONE,
        &error::outcome(
            "deleted",
            "the vault was removed (ehi delete): this server no longer serves it",
        ),
    )
}

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
    fn new(bytes: u64) -> Cache {
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
    fn invalidate(&self, t: &str, id: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.invalidate(&(t.to_string(), id.to_string()));
        self.searches.invalidate_all();
    }

    /// Drops everything.
    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.clears.fetch_add(1, Ordering::AcqRel);
        self.map.invalidate_all();
        self.searches.invalidate_all();
    }

    fn known(&self) -> std::sync::MutexGuard<'_, [u8; 32]> {
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
type FoundIds = Arc<(usize, Vec<String>)>;

/// Most ids held by the search-result cache (over all cached queries).
pub const SEARCH_CACHE_IDS: u64 = 2_000_000;

/// `Vault::search_ids(t, query)`, from the search-result cache when it has it.
async fn cached_search(
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
async fn cached_read(vault: &Vault, cache: &Cache, t: &str, id: &str) -> Result<Value, EhiError> {
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
async fn warm_up(state: Arc<AppState>) {
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
fn rewarm(state: &Arc<AppState>, warm: bool) {
    state.cache.clear();
    if warm {
        let _ = state.warmed.send_replace(false);
        tokio::spawn(warm_up(state.clone()));
    }
}

/// A running `ehi serve`.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    state: Arc<AppState>,
}

impl Server {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The FHIR base url (`http://<addr>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Appends every buffered audit entry to the vault's log now (one commit per
    /// [`audit::MAX_PER_COMMIT`] entries). Returns how many were appended.
    pub async fn flush_audit(&self) -> Result<usize, ServeError> {
        flush_audit(&self.state).await
    }

    /// Audit entries not yet appended.
    pub fn audit_pending(&self) -> usize {
        self.state.audit.as_ref().map_or(0, |a| a.len())
    }

    /// Waits until the cache warm-up has finished (at once without warm-up).
    pub async fn warmed(&self) {
        let mut rx = self.state.warmed.subscribe();
        let _ = rx.wait_for(|w| *w).await;
    }

    /// Resources in the decrypted-resource cache.
    pub fn cached(&self) -> u64 {
        self.state.cache.len()
    }

    /// Whether the vault was seen removed (every request then gets 410).
    pub fn is_removed(&self) -> bool {
        *self.state.removed.borrow()
    }

    /// Waits until the vault is seen removed (never returns otherwise).
    pub async fn removed(&self) {
        let mut rx = self.state.removed.subscribe();
        let _ = rx.wait_for(|removed| *removed).await;
    }

    /// Re-reads the vault and its grants now (what the server does every
    /// [`ServeOptions::refresh_every`]).
    pub async fn refresh(&self) -> Result<(), ServeError> {
        refresh(&self.state).await
    }

    /// Stops accepting connections, lets in-flight requests finish, flushes the audit
    /// buffer, and waits.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join().await
    }

    /// Waits until the server stops (then flushes the audit buffer).
    pub async fn join(self) -> Result<(), ServeError> {
        let addr = self.local_addr.to_string();
        let served = match self.task.await {
            Ok(result) => result.map_err(|source| ServeError::Io { addr, source }),
            Err(e) => Err(ServeError::Io {
                addr,
                source: std::io::Error::other(e),
            }),
        };
        let flushed = flush_audit(&self.state).await;
        served?;
        flushed.map(|_| ())
    }
}

async fn flush_audit(state: &AppState) -> Result<usize, ServeError> {
    if *state.removed.borrow() {
        return Ok(0);
    }
    match &state.audit {
        Some(buffer) => Ok(buffer.flush(&state.vault).await?),
        None => Ok(0),
    }
}

/// Re-reads the vault; reloads the grants; empties and re-warms the cache if the
/// resources changed.
async fn refresh(state: &Arc<AppState>) -> Result<(), ServeError> {
    if *state.removed.borrow() {
        return Ok(());
    }
    let result = state.vault.refresh().await;
    if let Err(EhiError::Removed { .. }) = &result {
        mark_removed(state);
        return Ok(());
    }
    state.auth.refresh_grants(&state.vault).await;
    result?;
    let now = state.vault.resources_fingerprint().await;
    let changed = {
        let mut known = state.cache.known();
        let changed = *known != now;
        *known = now;
        changed
    };
    if changed {
        rewarm(state, state.warm_up);
    }
    Ok(())
}

/// Binds `listen` and serves `vault`, checking tokens with `key`
/// ([`ServeOptions::default`]).
pub async fn start(
    vault: Arc<Vault>,
    key: TokenKey,
    listen: SocketAddr,
) -> Result<Server, ServeError> {
    start_with(vault, key, listen, ServeOptions::default()).await
}

/// The state of one facade: its vault, token key, base url and caches.
async fn new_state(
    vault: Arc<Vault>,
    key: TokenKey,
    base: String,
    options: &ServeOptions,
) -> Result<Arc<AppState>, ServeError> {
    let auth = auth::Auth::new(options.revoked_tokens.clone());
    auth.reload_revoked()?;
    auth.refresh_grants(&vault).await;
    let cache = Arc::new(Cache::new(options.cache_bytes));
    *cache.known() = vault.resources_fingerprint().await;
    let (warmed, _) = watch::channel(!options.warm_up);
    let (removed, _) = watch::channel(false);
    Ok(Arc::new(AppState {
        vault,
        key,
        base,
        write: tokio::sync::Mutex::new(()),
        jobs: bulk::Jobs::default(),
        cache,
        auth,
        oauth: oauth::OAuth::new(options.clients.clone(), options.code_ttl),
        audit: options
            .audit
            .then(|| audit::AuditBuffer::new(options.audit_batch)),
        warmed,
        warm_up: options.warm_up,
        removed,
    }))
}

/// Answers one read-only FHIR request (`Observation?code=…`, `Patient/p1`, relative to
/// the base) in process, as the patient, through exactly the code `ehi serve` runs —
/// so the command line (`ehi search`) and the REST facade behave alike. Nothing is
/// cached between calls and nothing is audited here (the caller logs what it does).
/// Full urls in the answer start with `ehi://<vault slot>`. Returns the HTTP status and
/// the JSON body (a Bundle, a resource, or an OperationOutcome).
pub async fn answer_locally(
    vault: Arc<Vault>,
    key: TokenKey,
    path_and_query: &str,
    prefer: Option<&str>,
) -> Result<(StatusCode, Value), ServeError> {
    let options = ServeOptions {
        audit: false,
        warm_up: false,
        watch: false,
        ..ServeOptions::default()
    };
    let base = format!("ehi://{}", vault.slot());
    let token = key.mint_patient(now_ms() / 1000, 300)?;
    let state = new_state(vault, key, base, &options).await?;
    let mut request = Request::builder()
        .method("GET")
        .uri(format!("/{}", path_and_query.trim_start_matches('/')))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::ACCEPT, "application/fhir+json");
    if let Some(prefer) = prefer {
        request = request.header("prefer", prefer);
    }
    let request = request
        .body(axum::body::Body::empty())
        .map_err(|e| ServeError::BadRequest(format!("{path_and_query:?}: {e}")))?;
    let response = handle(State(state), request).await;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), MAX_BODY * 64)
        .await
        .map_err(|e| ServeError::BadRequest(format!("reading the answer: {e}")))?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, body))
}

/// Binds `listen` and serves `vault` with `options`.
pub async fn start_with(
    vault: Arc<Vault>,
    key: TokenKey,
    listen: SocketAddr,
    options: ServeOptions,
) -> Result<Server, ServeError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Io {
            addr: listen.to_string(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Io {
        addr: listen.to_string(),
        source,
    })?;
    let url = format!("http://{local_addr}");
    let state = new_state(vault.clone(), key, url.clone(), &options).await?;
    if options.warm_up {
        tokio::spawn(warm_up(state.clone()));
    }
    let hosts = Arc::new(allowed_hosts(local_addr));
    let app = Router::new()
        .fallback(handle)
        .with_state(state.clone())
        .layer(axum::middleware::from_fn(
            move |request: Request, next: axum::middleware::Next| {
                let hosts = hosts.clone();
                async move { check_host(&hosts, request, next).await }
            },
        ));
    let (tx, rx) = oneshot::channel::<()>();
    let background_state = state.clone();
    let (stop_background, mut stopped) = oneshot::channel::<()>();
    let slot_moved = Arc::new(tokio::sync::Notify::new());
    let watcher = options
        .watch
        .then(|| tokio::spawn(follow_slot(state.clone(), slot_moved.clone())));
    let background = tokio::spawn(async move {
        let state = background_state;
        let mut refresh_tick = tokio::time::interval(options.refresh_every);
        let mut revoked_tick = tokio::time::interval(REVOKED_POLL);
        let mut audit_tick = tokio::time::interval(options.audit_flush_every);
        refresh_tick.tick().await;
        loop {
            let full = async {
                match &state.audit {
                    Some(buffer) => buffer.full.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stopped => break,
                _ = slot_moved.notified() => {
                    if let Err(e) = refresh(&state).await {
                        tracing::warn!(error = %e, "refreshing the vault");
                    }
                }
                _ = refresh_tick.tick() => {
                    if let Err(e) = refresh(&state).await {
                        tracing::warn!(error = %e, "refreshing the vault");
                    }
                }
                _ = revoked_tick.tick() => {
                    // File I/O: off the runtime threads.
                    let reader = state.clone();
                    match tokio::task::spawn_blocking(move || reader.auth.reload_revoked()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "reading the revoked tokens"),
                        Err(e) => tracing::warn!(error = %e, "reading the revoked tokens"),
                    }
                }
                _ = audit_tick.tick() => {
                    if let Err(e) = flush_audit(&state).await {
                        tracing::warn!(error = %e, "appending to the audit log");
                    }
                }
                _ = full => {
                    if let Err(e) = flush_audit(&state).await {
                        tracing::warn!(error = %e, "appending to the audit log");
                    }
                }
            }
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = rx.await;
        stop_on_signal.cancel();
    });
    let limits = options.limits;
    let task = tokio::spawn(async move {
        let result = invariant_runtime::conn::serve(listener, None, app, limits, stop).await;
        // Stop between two iterations (never in the middle of a flush).
        let _ = stop_background.send(());
        let _ = background.await;
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        result
    });
    Ok(Server {
        local_addr,
        url,
        shutdown: Some(tx),
        task,
        state,
    })
}

/// Follows the vault slot ([`Vault::watch`]): each move re-reads the vault and wakes
/// the background task through `moved` (which reloads the grants and the cache); the
/// slot moved to the tombstone marks the vault removed. Runs until the server stops.
async fn follow_slot(state: Arc<AppState>, moved: Arc<tokio::sync::Notify>) {
    loop {
        let notify = moved.clone();
        let result = state.vault.watch(move |_| notify.notify_one()).await;
        match result {
            Err(EhiError::Removed { .. }) => {
                mark_removed(&state);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "following the vault slot; retrying"),
            Ok(()) => {}
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}

/// The `Host` values a request may carry: the bound address, and `localhost` when
/// bound on loopback. Anything else is refused, so a web page on another origin that
/// a DNS-rebinding attack points at this port cannot use the patient's session.
fn allowed_hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![addr.to_string()];
    if addr.ip().is_loopback() {
        hosts.push(format!("localhost:{port}"));
        match addr.ip() {
            std::net::IpAddr::V4(_) => hosts.push(format!("127.0.0.1:{port}")),
            std::net::IpAddr::V6(_) => hosts.push(format!("[::1]:{port}")),
        }
    }
    hosts
}

/// Refuses a request whose `Host` header names another server (400, before anything
/// else runs; HTTP/2 requests carry it as the `:authority`).
async fn check_host(hosts: &[String], request: Request, next: axum::middleware::Next) -> Response {
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    match host {
        Some(host) if hosts.iter().any(|h| h.eq_ignore_ascii_case(host.trim())) => {
            next.run(request).await
        }
        other => {
            let shown = other.unwrap_or_else(|| "(none)".into());
            fhir_response(
                StatusCode::BAD_REQUEST,
                &error::outcome(
                    "security",
                    &format!(
                        "the Host header {shown:?} is not this server ({}); refused to prevent DNS rebinding",
                        hosts.join(", ")
                    ),
                ),
            )
        }
    }
}

/// A FHIR JSON response.
pub(crate) fn fhir_response(status: StatusCode, value: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON))],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response()
}

async fn handle(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if *state.removed.borrow() {
        return removed_response();
    }
    let ms = now_ms();
    let method = request.method().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_string(), |p| p.to_string());
    let mut who: Option<Caller> = None;
    let response = match route(&state, request, &mut who).await {
        Ok(response) => response,
        Err(ServeError::Vault(EhiError::Removed { .. })) => {
            mark_removed(&state);
            return removed_response();
        }
        Err(e) => e.into_response(),
    };
    if *state.removed.borrow() {
        // Removed while this request ran: what it read is not handed out.
        return removed_response();
    }
    if let Some(buffer) = &state.audit {
        let segs: Vec<&str> = target
            .split('?')
            .next()
            .unwrap_or("")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let interaction = audit::Interaction::of(&method, &segs);
        let requestor = match who {
            Some(caller) => caller.requestor,
            None => Some(crate::audit::Requestor {
                name: "unauthenticated client".into(),
                grant: None,
            }),
        };
        buffer.push(audit::entry(
            &method,
            &target,
            requestor,
            response.status().as_u16(),
            ms,
            interaction,
        ));
    }
    response
}

/// The caller of a request.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    access: Access,
    jti: String,
    /// Who is asking, for the audit log (`None`: the patient).
    requestor: Option<crate::audit::Requestor>,
    /// Which resources it may see at all.
    confine: Confinement,
}

/// The resources a token may see beyond its type scopes (see the module docs,
/// "Confinement"): those kept in its grant's scopes, and, with a patient context,
/// those in that patient's compartment or in no patient's compartment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Confinement {
    /// The scopes of the token's grant (`None`: not a grant token).
    scopes: Option<Vec<crate::Scope>>,
    /// The token's patient context.
    patient: Option<String>,
}

impl Confinement {
    /// Whether nothing is confined (the patient's token, bare-scope tokens).
    fn is_open(&self) -> bool {
        self.scopes.is_none() && self.patient.is_none()
    }

    /// Whether a resource kept at `placement` may be seen.
    fn allows(&self, placement: &crate::Placement) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(&placement.scope))
            && self.allows_patients(&placement.patients)
    }

    /// Whether a resource in the compartments of `patients` may be seen.
    fn allows_patients(&self, patients: &[String]) -> bool {
        self.patient
            .as_ref()
            .is_none_or(|p| patients.is_empty() || patients.iter().any(|x| x == p))
    }
}

/// The 404 of a resource the caller may not see (the same whether it exists or not).
fn not_visible(t: &str, id: &str) -> ServeError {
    ServeError::NotFound(format!("{t}/{id}: no such resource for this token"))
}

/// `refs` without those the caller may not see (in order). With confinement, a
/// reference without a current version is dropped too.
pub(crate) async fn visible_refs(
    state: &AppState,
    caller: &Caller,
    refs: Vec<(String, String)>,
) -> Vec<(String, String)> {
    if caller.confine.is_open() {
        return refs;
    }
    let placements = state.vault.placements(&refs).await;
    refs.into_iter()
        .zip(placements)
        .filter(|(_, p)| p.as_ref().is_some_and(|p| caller.confine.allows(p)))
        .map(|(r, _)| r)
        .collect()
}

/// The ids of type `t` among `ids` that the caller may see (in order).
async fn visible_ids(state: &AppState, caller: &Caller, t: &str, ids: &[String]) -> Vec<String> {
    if caller.confine.is_open() {
        return ids.to_vec();
    }
    let refs = ids.iter().map(|id| (t.to_string(), id.clone())).collect();
    visible_refs(state, caller, refs)
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

/// `resources` without those the caller may not see (in order).
pub(crate) async fn visible_resources(
    state: &AppState,
    caller: &Caller,
    resources: Vec<Value>,
) -> Vec<Value> {
    if caller.confine.is_open() {
        return resources;
    }
    let refs: Vec<(String, String)> = resources
        .iter()
        .map(|r| {
            (
                r["resourceType"].as_str().unwrap_or("").to_string(),
                r["id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let placements = state.vault.placements(&refs).await;
    resources
        .into_iter()
        .zip(placements)
        .filter(|(_, p)| p.as_ref().is_some_and(|p| caller.confine.allows(p)))
        .map(|(r, _)| r)
        .collect()
}

/// A 404 unless the caller may see `t/id` (a confined caller sees nothing without a
/// current version).
pub(crate) async fn check_visible(
    state: &AppState,
    caller: &Caller,
    t: &str,
    id: &str,
) -> Result<(), ServeError> {
    if caller.confine.is_open() {
        return Ok(());
    }
    let placement = state
        .vault
        .placements(&[(t.to_string(), id.to_string())])
        .await
        .pop()
        .flatten();
    match placement {
        Some(p) if caller.confine.allows(&p) => Ok(()),
        _ => Err(not_visible(t, id)),
    }
}

/// The patient context of grant tokens: the vault's Patient (the first by id when a
/// household vault keeps several). `/token` answers it as `patient`.
pub async fn context_patient(vault: &Vault) -> Option<String> {
    vault
        .list()
        .await
        .into_iter()
        .find_map(|r| r.strip_prefix("Patient/").map(str::to_string))
}

type Pairs = Vec<(String, String)>;

async fn route(
    state: &Arc<AppState>,
    request: Request,
    who: &mut Option<Caller>,
) -> Result<Response, ServeError> {
    let (parts, body) = request.into_parts();
    let mut pairs: Pairs = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    check_format(&parts.headers, &pairs)?;
    let segments: Vec<String> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ServeError::BadRequest(format!("path segment {s:?} is not UTF-8")))
        })
        .collect::<Result<_, _>>()?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = parts.method.clone();
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["metadata"]) => {
            return Ok(fhir_response(
                StatusCode::OK,
                &capability::capability_statement(&state.base),
            ));
        }
        ("GET", [".well-known", "smart-configuration"]) => {
            return Ok(axum::Json(oauth::smart_configuration(&state.base)).into_response());
        }
        ("GET", ["authorize"]) => return Ok(oauth::authorize(state, &pairs).await),
        ("POST", ["token"]) => {
            let body = axum::body::to_bytes(body, 64 * 1024)
                .await
                .map_err(|e| ServeError::BadRequest(format!("reading the body: {e}")))?;
            pairs.extend(form_urlencoded::parse(&body).into_owned());
            return Ok(match oauth::token(state, &pairs).await {
                Ok(response) => response,
                Err(e) => e.into_response(),
            });
        }
        _ => {}
    }
    let caller = authorize(state, &parts.headers)?;
    *who = Some(caller.clone());
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ServeError::BadRequest(format!("reading the body: {e}")))?;
    let headers = &parts.headers;
    let full_url = format!(
        "{}{}",
        state.base,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["$export"]) => {
            bulk::kickoff(
                state,
                &caller,
                headers,
                &pairs,
                bulk::Level::System,
                full_url,
            )
            .await
        }
        ("GET", ["Patient", "$export"]) => {
            bulk::kickoff(
                state,
                &caller,
                headers,
                &pairs,
                bulk::Level::Patients,
                full_url,
            )
            .await
        }
        ("GET", ["Patient", id, "$export"]) => {
            let level = bulk::Level::Patient((*id).to_string());
            bulk::kickoff(state, &caller, headers, &pairs, level, full_url).await
        }
        ("GET", ["$export-status", job]) => bulk::status(state, &caller, job),
        ("DELETE", ["$export-status", job]) => bulk::cancel(state, &caller, job),
        ("GET", ["$export-file", job, file]) => bulk::file(state, &caller, job, file),
        ("GET", [t]) => search(state, &caller, known_type(t)?, pairs, headers).await,
        ("POST", [t]) => create(state, &caller, known_type(t)?, headers, &body).await,
        ("POST", [t, "_search"]) => {
            let t = known_type(t)?;
            let form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if !form && !body.is_empty() {
                return Err(ServeError::UnsupportedMediaType(
                    "POST _search takes an application/x-www-form-urlencoded body".into(),
                ));
            }
            pairs.extend(form_urlencoded::parse(&body).into_owned());
            search(state, &caller, t, pairs, headers).await
        }
        ("GET", [t, "_history"]) => type_history(state, &caller, known_type(t)?, &pairs).await,
        ("GET", ["Patient", id, "$everything"]) => everything(state, &caller, id, &pairs).await,
        ("GET", [t, id]) => read(state, &caller, known_type(t)?, id, &pairs).await,
        ("PUT", [t, id]) => update(state, &caller, known_type(t)?, id, headers, &body).await,
        ("DELETE", [t, id]) => delete(state, &caller, known_type(t)?, id).await,
        ("GET", [t, id, "_history"]) => history(state, &caller, known_type(t)?, id).await,
        ("GET", [t, id, "_history", v]) => vread(state, &caller, known_type(t)?, id, v).await,
        (_, [] | [_] | [_, _] | [_, _, "_history"] | [_, _, "_history", _]) => Err(
            ServeError::MethodNotAllowed(format!("{method} is not supported on this path")),
        ),
        _ => Err(ServeError::NotFound(format!(
            "no such endpoint: {}",
            parts.uri.path()
        ))),
    }
}

/// 406 unless the client accepts FHIR JSON (or ndjson for bulk files).
fn check_format(headers: &HeaderMap, pairs: &Pairs) -> Result<(), ServeError> {
    const JSON: &[&str] = &[
        "json",
        "application/json",
        "application/fhir+json",
        "application/json+fhir",
    ];
    for (k, v) in pairs {
        let media = v.split(';').next().unwrap_or("").trim();
        if k == "_format" && !JSON.contains(&media) {
            return Err(ServeError::NotAcceptable(format!(
                "_format={v}: only application/fhir+json is served"
            )));
        }
    }
    for accept in headers.get_all(header::ACCEPT) {
        let Ok(accept) = accept.to_str() else {
            continue;
        };
        let ok = accept.split(',').any(|m| {
            let m = m
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            m.is_empty()
                || m == "*/*"
                || m == "application/*"
                || JSON.contains(&m.as_str())
                || m == "application/fhir+ndjson"
                || m == "application/ndjson"
        });
        if !ok {
            return Err(ServeError::NotAcceptable(format!(
                "Accept: {accept}: only application/fhir+json is served"
            )));
        }
    }
    Ok(())
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Caller, ServeError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ServeError::Unauthorized("a bearer token is required".into()))?
        .to_str()
        .map_err(|_| ServeError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ServeError::Unauthorized("expected Authorization: Bearer <token>".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ServeError::Unauthorized(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    let now = now_ms();
    let (claims, access) = state.key.verify(token.trim(), now / 1000)?;
    let requestor = state.auth.check(&claims, now)?;
    let scopes = claims
        .grant
        .as_deref()
        .and_then(|g| state.auth.grant(g))
        .map(|g| g.info.scopes);
    Ok(Caller {
        access,
        jti: claims.jti,
        requestor,
        confine: Confinement {
            scopes,
            patient: claims.launch_patient,
        },
    })
}

fn known_type(t: &str) -> Result<&str, ServeError> {
    if ehi_search::supported_parameters(t).is_some() {
        Ok(t)
    } else {
        Err(ServeError::NotFound(format!(
            "{t:?} is not a supported resource type"
        )))
    }
}

fn check_id(id: &str) -> Result<(), ServeError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ServeError::NotFound(format!("{id:?} is not a valid id")))
    }
}

fn version_of(resource: &Value) -> Option<&str> {
    resource.pointer("/meta/versionId").and_then(Value::as_str)
}

/// A resource response with `ETag` (and `Location` when given).
fn resource_response(status: StatusCode, resource: &Value, location: Option<String>) -> Response {
    let mut response = fhir_response(status, resource);
    if let Some(v) = version_of(resource)
        && let Ok(value) = HeaderValue::from_str(&format!("W/\"{v}\""))
    {
        response.headers_mut().insert(header::ETAG, value);
    }
    if let Some(location) = location
        && let Ok(value) = HeaderValue::from_str(&location)
    {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

// ---------------------------------------------------------------------------------------
// Read
// ---------------------------------------------------------------------------------------

async fn read(
    state: &AppState,
    caller: &Caller,
    t: &str,
    id: &str,
    pairs: &Pairs,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Read)?;
    check_id(id)?;
    let mut summary = Summary::False;
    let mut elements: Option<Vec<String>> = None;
    for (k, v) in pairs {
        match k.as_str() {
            "_summary" => summary = Summary::parse(v)?,
            "_elements" => elements = Some(parse_elements(v)),
            _ => {}
        }
    }
    if summary == Summary::Count {
        return Err(ServeError::BadRequest(
            "_summary=count applies to searches".into(),
        ));
    }
    check_visible(state, caller, t, id).await?;
    let resource = cached_read(&state.vault, &state.cache, t, id).await?;
    let resource = shape_resource(resource, summary, elements.as_deref());
    Ok(resource_response(StatusCode::OK, &resource, None))
}

async fn vread(
    state: &AppState,
    caller: &Caller,
    t: &str,
    id: &str,
    v: &str,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Read)?;
    check_id(id)?;
    let version: u64 = v
        .parse()
        .map_err(|_| ServeError::NotFound(format!("{t}/{id}/_history/{v}: no such version")))?;
    check_visible(state, caller, t, id).await?;
    let resource = state.vault.read_version(t, id, version).await?;
    if !caller
        .confine
        .allows_patients(&crate::fhir::patient_refs(t, id, &resource))
    {
        return Err(not_visible(t, id));
    }
    Ok(resource_response(StatusCode::OK, &resource, None))
}

fn history_entry(base: &str, t: &str, id: &str, h: &HistoryEntry) -> Value {
    let (method, url) = if h.deleted {
        ("DELETE", format!("{t}/{id}"))
    } else if h.version == 1 {
        ("POST", t.to_string())
    } else {
        ("PUT", format!("{t}/{id}"))
    };
    let mut entry = json!({
        "fullUrl": format!("{base}/{t}/{id}"),
        "request": {"method": method, "url": url},
        "response": {"status": if h.deleted { "204" } else if h.version == 1 { "201" } else { "200" },
                     "etag": format!("W/\"{}\"", h.version),
                     "lastModified": h.last_updated},
    });
    if let Some(r) = &h.resource {
        entry["resource"] = r.clone();
    }
    entry
}

async fn history(
    state: &AppState,
    caller: &Caller,
    t: &str,
    id: &str,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Read)?;
    check_id(id)?;
    check_visible(state, caller, t, id).await?;
    let versions = state.vault.history(t, id).await?;
    let entries: Vec<Value> = versions
        .iter()
        .filter(|h| {
            h.resource.as_ref().is_none_or(|r| {
                caller
                    .confine
                    .allows_patients(&crate::fhir::patient_refs(t, id, r))
            })
        })
        .map(|h| history_entry(&state.base, t, id, h))
        .collect();
    Ok(fhir_response(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle", "type": "history", "timestamp": instant(now_ms()),
            "total": entries.len(),
            "link": [{"relation": "self", "url": format!("{}/{t}/{id}/_history", state.base)}],
            "entry": entries,
        }),
    ))
}

async fn type_history(
    state: &AppState,
    caller: &Caller,
    t: &str,
    pairs: &Pairs,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Read)?;
    let page = Page::from_pairs(pairs)?;
    let prefix = format!("{t}/");
    let ids: Vec<String> = state
        .vault
        .list()
        .await
        .into_iter()
        .filter_map(|r| r.strip_prefix(&prefix).map(str::to_string))
        .collect();
    let ids = visible_ids(state, caller, t, &ids).await;
    let futures: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let vault = state.vault.clone();
            let t = t.to_string();
            async move { vault.history(&t, &id).await.map(|h| (id, h)) }
        })
        .collect();
    let histories: Vec<Result<(String, Vec<HistoryEntry>), EhiError>> =
        futures_util::stream::iter(futures)
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
    let mut all: Vec<(String, HistoryEntry)> = Vec::new();
    for h in histories {
        match h {
            Ok((id, versions)) => all.extend(
                versions
                    .into_iter()
                    .filter(|v| {
                        v.resource.as_ref().is_none_or(|r| {
                            caller
                                .confine
                                .allows_patients(&crate::fhir::patient_refs(t, &id, r))
                        })
                    })
                    .map(|v| (id.clone(), v)),
            ),
            Err(EhiError::NotFound(_) | EhiError::Gone(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    all.sort_by(|a, b| {
        b.1.last_updated
            .cmp(&a.1.last_updated)
            .then_with(|| a.0.cmp(&b.0))
            .then_with(|| b.1.version.cmp(&a.1.version))
    });
    let total = all.len();
    let entries: Vec<Value> = page
        .slice(&all)
        .iter()
        .map(|(id, h)| history_entry(&state.base, t, id, h))
        .collect();
    let links = page.links(&format!("{}/{t}/_history", state.base), pairs, total);
    Ok(fhir_response(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle", "type": "history", "timestamp": instant(now_ms()),
            "total": total, "link": links, "entry": entries,
        }),
    ))
}

// ---------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------

/// `_count` and `_offset`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Page {
    count: usize,
    offset: usize,
}

impl Page {
    fn from_pairs(pairs: &Pairs) -> Result<Page, ServeError> {
        let mut page = Page {
            count: DEFAULT_COUNT,
            offset: 0,
        };
        for (k, v) in pairs {
            let parse = |what: &str| {
                v.trim().parse::<usize>().map_err(|_| {
                    ServeError::BadRequest(format!("{what}={v}: expected a whole number ≥ 0"))
                })
            };
            match k.as_str() {
                "_count" => page.count = parse("_count")?.min(MAX_COUNT),
                "_offset" => page.offset = parse("_offset")?,
                _ => {}
            }
        }
        Ok(page)
    }

    fn range(&self, total: usize) -> std::ops::Range<usize> {
        let start = self.offset.min(total);
        start..start.saturating_add(self.count).min(total)
    }

    fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        items.get(self.range(items.len())).unwrap_or_default()
    }

    /// `self`, `first`, `previous` and `next` links over `url` with `pairs`.
    fn links(&self, url: &str, pairs: &Pairs, total: usize) -> Vec<Value> {
        let link = |offset: usize| {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                if k != "_count" && k != "_offset" {
                    query.append_pair(k, v);
                }
            }
            query.append_pair("_count", &self.count.to_string());
            query.append_pair("_offset", &offset.to_string());
            format!("{url}?{}", query.finish())
        };
        let mut links = vec![
            json!({"relation": "self", "url": link(self.offset)}),
            json!({"relation": "first", "url": link(0)}),
        ];
        if self.offset > 0 {
            let prev = self.offset.saturating_sub(self.count.max(1));
            links.push(json!({"relation": "previous", "url": link(prev)}));
        }
        if self.count > 0 && self.offset.saturating_add(self.count) < total {
            links.push(json!({"relation": "next", "url": link(self.offset + self.count)}));
        }
        links
    }
}

/// `_summary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Summary {
    False,
    Count,
    Data,
    True,
    Text,
}

impl Summary {
    fn parse(value: &str) -> Result<Summary, ServeError> {
        Ok(match value {
            "false" => Summary::False,
            "count" => Summary::Count,
            "data" => Summary::Data,
            "true" => Summary::True,
            "text" => Summary::Text,
            other => {
                return Err(ServeError::BadRequest(format!(
                    "_summary={other} is not supported (true, text, data, count, false are)"
                )));
            }
        })
    }
}

/// Result parameters handled here, not by the index.
const RESULT_PARAMS: &[&str] = &[
    "_count",
    "_offset",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
    "_pretty",
    "_total",
];

/// FHIR's handling preference (`Prefer: handling=strict|lenient`, strict by default):
/// whether unknown or unsupported search parameters are refused (400) or ignored and
/// reported in an OperationOutcome entry of the Bundle.
fn lenient(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=lenient"))
}

/// Whether `key` (`code`, `code:text`, `subject.name`, `_sort`) names a parameter the
/// search of `t` knows.
fn known_search_parameter(t: &str, key: &str) -> bool {
    let name = key.split([':', '.']).next().unwrap_or(key);
    name == "_sort" || ehi_search::parameter(t, name).is_some()
}

/// `_total`: whether the Bundle carries `total` (`none` leaves it out; `estimate` and
/// `accurate` both give the exact count).
fn parse_total(value: &str) -> Result<bool, ServeError> {
    match value {
        "none" => Ok(false),
        "estimate" | "accurate" => Ok(true),
        other => Err(ServeError::BadRequest(format!(
            "_total={other} is not supported (none, estimate, accurate are)"
        ))),
    }
}

async fn search(
    state: &AppState,
    caller: &Caller,
    t: &str,
    pairs: Pairs,
    headers: &HeaderMap,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Search)?;
    let page = Page::from_pairs(&pairs)?;
    let lenient = lenient(headers);
    let mut summary = Summary::False;
    let mut elements: Option<Vec<String>> = None;
    let mut includes = Vec::new();
    let mut revincludes = Vec::new();
    let mut with_total = true;
    let mut ignored: Vec<String> = Vec::new();
    let mut index_pairs: Vec<(&str, &str)> = Vec::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "_summary" => summary = Summary::parse(v)?,
            "_elements" => elements = Some(parse_elements(v)),
            "_include" => includes.push(Include::parse(t, v, false)?),
            "_revinclude" => revincludes.push(Include::parse(t, v, true)?),
            "_total" => with_total = parse_total(v)?,
            k if RESULT_PARAMS.contains(&k) => {}
            k if known_search_parameter(t, k) => index_pairs.push((k, v)),
            k if lenient => ignored.push(k.to_string()),
            k => {
                return Err(ServeError::BadRequest(format!(
                    "unknown search parameter {k:?} for {t} (send `Prefer: handling=lenient` \
                     to have unknown parameters ignored)"
                )));
            }
        }
    }
    // Unknown parameters ignored under `handling=lenient`, reported as FHIR asks.
    let outcome_entry = (!ignored.is_empty()).then(|| {
        let issues: Vec<Value> = ignored
            .iter()
            .map(|k| {
                json!({"severity": "warning", "code": "not-supported",
                       "diagnostics": format!("search parameter {k:?} is not supported for {t}: ignored (Prefer: handling=lenient)")})
            })
            .collect();
        json!({"resource": {"resourceType": "OperationOutcome", "issue": issues},
               "search": {"mode": "outcome"}})
    });
    let query = encode_query(&index_pairs);
    let mut found = cached_search(&state.vault, &state.cache, t, &query).await?;
    if !caller.confine.is_open() {
        let ids = visible_ids(state, caller, t, &found.1).await;
        found = Arc::new((ids.len(), ids));
    }
    let (total, ids) = (found.0, &found.1);
    let base_url = format!("{}/{t}", state.base);
    let finish = |mut bundle: Value| {
        if !with_total && let Some(obj) = bundle.as_object_mut() {
            obj.remove("total");
        }
        if let Some(outcome) = &outcome_entry {
            match bundle.get_mut("entry").and_then(Value::as_array_mut) {
                Some(entries) => entries.push(outcome.clone()),
                None => bundle["entry"] = json!([outcome]),
            }
        }
        fhir_response(StatusCode::OK, &bundle)
    };
    if summary == Summary::Count {
        return Ok(finish(
            json!({"resourceType": "Bundle", "type": "searchset", "timestamp": instant(now_ms()),
                    "total": total, "link": [{"relation": "self", "url": page.links(&base_url, &pairs, total)[0]["url"]}]}),
        ));
    }
    caller.access.require(t, Perm::Read)?;
    let matches = fetch_all(state, t, page.slice(ids)).await?;
    let mut seen: HashSet<String> = matches
        .iter()
        .filter_map(|r| r["id"].as_str().map(|id| format!("{t}/{id}")))
        .collect();
    let mut included = Vec::new();
    for inc in &includes {
        included.extend(inc.forward(state, caller, &matches, &mut seen).await?);
    }
    for inc in &revincludes {
        included.extend(inc.reverse(state, caller, t, &matches, &mut seen).await?);
    }
    let shape = |r: Value| shape_resource(r, summary, elements.as_deref());
    let mut entries: Vec<Value> = matches
        .into_iter()
        .map(|r| entry(&state.base, shape(r), "match"))
        .collect();
    entries.extend(
        included
            .into_iter()
            .map(|r| entry(&state.base, shape(r), "include")),
    );
    Ok(finish(json!({
        "resourceType": "Bundle", "type": "searchset", "timestamp": instant(now_ms()),
        "total": total, "link": page.links(&base_url, &pairs, total), "entry": entries,
    })))
}

/// Calls `f` with every `reference` string in `value`.
fn collect_references(value: &Value, f: &mut dyn FnMut(&str)) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("reference") {
                f(reference);
            }
            map.values().for_each(|v| collect_references(v, f));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_references(v, f)),
        _ => {}
    }
}

/// A form-urlencoded query string.
fn encode_query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn entry(base: &str, resource: Value, mode: &str) -> Value {
    let full_url = match (resource["resourceType"].as_str(), resource["id"].as_str()) {
        (Some(t), Some(id)) => format!("{base}/{t}/{id}"),
        _ => String::new(),
    };
    json!({"fullUrl": full_url, "resource": resource, "search": {"mode": mode}})
}

/// Reads `ids` of type `t` (current versions; ids deleted meanwhile are skipped).
async fn fetch_all(state: &AppState, t: &str, ids: &[String]) -> Result<Vec<Value>, ServeError> {
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

/// The element names of an `_elements` value (comma-separated, blanks dropped).
fn parse_elements(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// `_summary=data` drops `text`; `_summary=true` and `_summary=text` keep what
/// [`summary`] says; `_elements` keeps the listed top-level elements (and
/// `resourceType`, `id`, `meta`). Any of them marks the resource SUBSETTED.
fn shape_resource(mut resource: Value, summary: Summary, elements: Option<&[String]>) -> Value {
    let mut subsetted = match summary {
        Summary::Data => resource
            .as_object_mut()
            .is_some_and(|obj| obj.remove("text").is_some()),
        Summary::True => summary::summary_true(&mut resource),
        Summary::Text => summary::summary_text(&mut resource),
        Summary::False | Summary::Count => false,
    };
    if let Some(keep) = elements
        && let Some(obj) = resource.as_object_mut()
    {
        let before = obj.len();
        let t = obj
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // FHIR: `_elements` also returns the resource's mandatory elements.
        let required = crate::validate::required_elements(&t);
        obj.retain(|k, _| {
            let name = k.strip_prefix('_').unwrap_or(k);
            matches!(k.as_str(), "resourceType" | "id" | "meta")
                || keep.iter().any(|e| e == k)
                || required.iter().any(|r| r.matches(name))
        });
        subsetted |= obj.len() != before;
    }
    if subsetted {
        summary::mark_subsetted(&mut resource);
    }
    resource
}

/// One `_include` (`Source:param[:Target]`) or `_revinclude`.
#[derive(Debug)]
struct Include {
    source: String,
    param: &'static ehi_search::ParamDef,
    target: Option<String>,
}

impl Include {
    fn parse(searched: &str, value: &str, reverse: bool) -> Result<Include, ServeError> {
        let what = if reverse { "_revinclude" } else { "_include" };
        let bad = |why: &str| ServeError::BadRequest(format!("{what}={value}: {why}"));
        let mut parts = value.split(':');
        let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
            return Err(bad("expected Type:parameter[:Target]"));
        };
        let target = parts.next().map(str::to_string);
        if parts.next().is_some() || value.contains('*') {
            return Err(bad("expected Type:parameter[:Target] (no wildcards)"));
        }
        if !reverse && source != searched {
            return Err(bad(&format!("the source type must be {searched}")));
        }
        if let Some(target) = &target {
            known_type(target).map_err(|_| bad("unknown target type"))?;
        }
        if reverse && target.as_deref().is_some_and(|t| t != searched) {
            return Err(bad(&format!("the target type must be {searched}")));
        }
        let param = ehi_search::parameter(source, param)
            .filter(|p| p.kind == ehi_search::ParamKind::Reference)
            .ok_or_else(|| bad("not a reference search parameter of that type"))?;
        Ok(Include {
            source: source.to_string(),
            param,
            target,
        })
    }

    /// The resources referenced by `matches` (that the caller may read).
    async fn forward(
        &self,
        state: &AppState,
        caller: &Caller,
        matches: &[Value],
        seen: &mut HashSet<String>,
    ) -> Result<Vec<Value>, ServeError> {
        let expression =
            ehi_search::fhirpath::Expression::parse(self.param.expression, &self.source)
                .map_err(|e| ServeError::BadRequest(format!("_include: {e}")))?;
        let mut wanted: Vec<(String, String)> = Vec::new();
        for resource in matches {
            for node in expression.evaluate(resource) {
                let Some(reference) = node.value.get("reference").and_then(Value::as_str) else {
                    continue;
                };
                let Some((t, id)) = relative_reference(reference) else {
                    continue;
                };
                if self.target.as_deref().is_some_and(|target| target != t)
                    || !caller.access.allows(t, Perm::Read)
                    || known_type(t).is_err()
                    || !valid_id(id)
                {
                    continue;
                }
                if seen.insert(format!("{t}/{id}")) {
                    wanted.push((t.to_string(), id.to_string()));
                }
            }
        }
        let wanted = visible_refs(state, caller, wanted).await;
        fetch_refs(state, wanted).await
    }

    /// The resources of the source type referencing any of `matches`.
    async fn reverse(
        &self,
        state: &AppState,
        caller: &Caller,
        t: &str,
        matches: &[Value],
        seen: &mut HashSet<String>,
    ) -> Result<Vec<Value>, ServeError> {
        if matches.is_empty()
            || !caller.access.allows(&self.source, Perm::Search)
            || !caller.access.allows(&self.source, Perm::Read)
        {
            return Ok(Vec::new());
        }
        let targets: Vec<String> = matches
            .iter()
            .filter_map(|r| r["id"].as_str().map(|id| format!("{t}/{id}")))
            .collect();
        let query = encode_query(&[(self.param.code, &targets.join(","))]);
        let (_, ids) = state.vault.search_ids(&self.source, &query).await?;
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| seen.insert(format!("{}/{id}", self.source)))
            .collect();
        let ids = visible_ids(state, caller, &self.source, &ids).await;
        fetch_all(state, &self.source, &ids).await
    }
}

/// `Type/id` of a relative (or absolute `…/Type/id[/_history/n]`) reference.
fn relative_reference(reference: &str) -> Option<(&str, &str)> {
    let reference = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let mut parts = reference.rsplit('/');
    let id = parts.next()?;
    let t = parts.next()?;
    Some((t, id))
}

async fn everything(
    state: &AppState,
    caller: &Caller,
    id: &str,
    pairs: &Pairs,
) -> Result<Response, ServeError> {
    check_id(id)?;
    let page = Page::from_pairs(pairs)?;
    check_visible(state, caller, "Patient", id).await?;
    // 404/410 for an unknown or deleted patient.
    state.vault.read("Patient", id).await?;
    let compartment = state.vault.patient_compartment(id).await?;
    let mut resources: Vec<Value> = visible_resources(state, caller, compartment)
        .await
        .into_iter()
        .filter(|r| {
            r["resourceType"]
                .as_str()
                .is_some_and(|t| caller.access.allows(t, Perm::Read))
        })
        .collect();
    // The operation also returns what the compartment's resources reference
    // (practitioners, organizations, locations, medications, ...).
    let mut seen: HashSet<String> = resources
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{}/{}",
                r["resourceType"].as_str()?,
                r["id"].as_str()?
            ))
        })
        .collect();
    let mut wanted: Vec<(String, String)> = Vec::new();
    for r in &resources {
        collect_references(r, &mut |reference| {
            if let Some((t, rid)) = relative_reference(reference)
                && caller.access.allows(t, Perm::Read)
                && known_type(t).is_ok()
                && valid_id(rid)
                && seen.insert(format!("{t}/{rid}"))
            {
                wanted.push((t.to_string(), rid.to_string()));
            }
        });
    }
    let wanted = visible_refs(state, caller, wanted).await;
    resources.extend(fetch_refs(state, wanted).await?);
    let total = resources.len();
    let links = page.links(
        &format!("{}/Patient/{id}/$everything", state.base),
        pairs,
        total,
    );
    let entries: Vec<Value> = page
        .slice(&resources)
        .iter()
        .map(|r| entry(&state.base, r.clone(), "match"))
        .collect();
    Ok(fhir_response(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle", "type": "searchset", "timestamp": instant(now_ms()),
            "total": total, "link": links, "entry": entries,
        }),
    ))
}

// ---------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------

/// Parses and checks a resource body for type `t` (415, 400 or 422).
fn resource_body(headers: &HeaderMap, body: &Bytes, t: &str) -> Result<Value, ServeError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let media = ct.split(';').next().unwrap_or("").trim();
        if !matches!(
            media,
            "application/fhir+json" | "application/json" | "application/json+fhir"
        ) {
            return Err(ServeError::UnsupportedMediaType(format!(
                "Content-Type {ct}: only application/fhir+json is accepted"
            )));
        }
    }
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|e| ServeError::BadRequest(format!("the body is not JSON: {e}")))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(ServeError::Unprocessable(
            "the body is not a FHIR resource (not a JSON object)".into(),
        ));
    };
    match obj.get("resourceType").and_then(Value::as_str) {
        None => {
            return Err(ServeError::Unprocessable(
                "the resource has no resourceType".into(),
            ));
        }
        Some(rt) if rt != t => {
            return Err(ServeError::BadRequest(format!(
                "the resource is a {rt}, the url names {t}"
            )));
        }
        Some(_) => {}
    }
    for (k, v) in obj.iter() {
        let valid_name = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(ServeError::Unprocessable(format!(
                "{k:?} is not a FHIR element name"
            )));
        }
        if v.is_null() {
            return Err(ServeError::Unprocessable(format!(
                "element {k} is null (FHIR JSON omits empty elements)"
            )));
        }
    }
    if obj.get("id").is_some_and(|id| !id.is_string()) {
        return Err(ServeError::Unprocessable("id must be a string".into()));
    }
    match obj.get_mut("meta") {
        None => {}
        Some(Value::Object(meta)) => {
            // The server numbers versions and stamps the time.
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                obj.remove("meta");
            }
        }
        Some(_) => return Err(ServeError::Unprocessable("meta must be an object".into())),
    }
    Ok(value)
}

/// Imports `value` (which writes `t/id`), under the caller's write lock. First brings
/// the vault up to date, so that other devices' changes are told apart from this
/// write: if the resources changed meanwhile the cache is emptied and warmed again,
/// otherwise only `t/id` is dropped from it.
async fn store(
    state: &Arc<AppState>,
    name: &str,
    value: &Value,
    t: &str,
    id: &str,
) -> Result<(), ServeError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| ServeError::Unprocessable(format!("encoding the resource: {e}")))?;
    refresh(state).await?;
    let result = state
        .vault
        .import(vec![Input::from_bytes(name, bytes)])
        .await;
    // Whatever happened, the written resource may have moved.
    state.cache.invalidate(t, id);
    *state.cache.known() = state.vault.resources_fingerprint().await;
    // An import rotates expired grants away.
    state.auth.refresh_grants(&state.vault).await;
    result?;
    Ok(())
}

/// A 403 when a caller with a patient context writes a resource into another
/// patient's compartment.
fn check_patients(caller: &Caller, t: &str, id: &str, resource: &Value) -> Result<(), ServeError> {
    if caller
        .confine
        .allows_patients(&crate::fhir::patient_refs(t, id, resource))
    {
        Ok(())
    } else {
        Err(ServeError::Forbidden(format!(
            "the token's patient context does not cover the patients {t}/{id} references"
        )))
    }
}

fn new_id() -> Result<String, ServeError> {
    let mut b =
        crate::keys::random_bytes::<16>().map_err(|e| ServeError::Vault(EhiError::Keystore(e)))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

async fn create(
    state: &Arc<AppState>,
    caller: &Caller,
    t: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Create)?;
    let mut resource = resource_body(headers, body, t)?;
    let id = new_id()?;
    check_patients(caller, t, &id, &resource)?;
    resource["id"] = Value::String(id.clone());
    let _guard = state.write.lock().await;
    store(state, &format!("POST {t}"), &resource, t, &id).await?;
    let stored = state.vault.read(t, &id).await?;
    let location = format!(
        "{}/{t}/{id}/_history/{}",
        state.base,
        version_of(&stored).unwrap_or("1")
    );
    Ok(resource_response(
        StatusCode::CREATED,
        &stored,
        Some(location),
    ))
}

/// The version in `If-Match: W/"n"` (or `"n"`, or `n`).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ServeError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let inner = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    inner.parse().map(Some).map_err(|_| {
        ServeError::BadRequest(format!(
            "If-Match {text:?}: expected a version ETag W/\"n\""
        ))
    })
}

async fn update(
    state: &Arc<AppState>,
    caller: &Caller,
    t: &str,
    id: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Update)?;
    if !valid_id(id) {
        return Err(ServeError::BadRequest(format!("{id:?} is not a valid id")));
    }
    let resource = resource_body(headers, body, t)?;
    match resource.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => {}
        Some(body_id) => {
            return Err(ServeError::BadRequest(format!(
                "the resource's id {body_id:?} differs from the url's {id:?}"
            )));
        }
        None => {
            return Err(ServeError::BadRequest(
                "an update needs the resource's id (equal to the url's)".into(),
            ));
        }
    }
    let expected = if_match(headers)?;
    check_patients(caller, t, id, &resource)?;
    let _guard = state.write.lock().await;
    if !state
        .vault
        .placements(&[(t.to_string(), id.to_string())])
        .await
        .iter()
        .all(Option::is_none)
    {
        check_visible(state, caller, t, id).await?;
    }
    let current = match state.vault.read(t, id).await {
        Ok(r) => version_of(&r).and_then(|v| v.parse::<u64>().ok()),
        Err(EhiError::NotFound(_) | EhiError::Gone(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(expected) = expected
        && current != Some(expected)
    {
        return Err(ServeError::PreconditionFailed(format!(
            "If-Match W/\"{expected}\" but the current version of {t}/{id} is {}",
            current.map_or_else(|| "none".to_string(), |v| format!("W/\"{v}\""))
        )));
    }
    store(state, &format!("PUT {t}/{id}"), &resource, t, id).await?;
    let stored = state.vault.read(t, id).await?;
    let status = if current.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let location = format!(
        "{}/{t}/{id}/_history/{}",
        state.base,
        version_of(&stored).unwrap_or("1")
    );
    Ok(resource_response(status, &stored, Some(location)))
}

async fn delete(
    state: &Arc<AppState>,
    caller: &Caller,
    t: &str,
    id: &str,
) -> Result<Response, ServeError> {
    caller.access.require(t, Perm::Delete)?;
    check_id(id)?;
    check_visible(state, caller, t, id).await?;
    let _guard = state.write.lock().await;
    match state.vault.read(t, id).await {
        Ok(_) => {}
        Err(EhiError::Gone(_)) => return Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => return Err(e.into()),
    }
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": format!("{t}/{id}")}}
    ]});
    store(state, &format!("DELETE {t}/{id}"), &bundle, t, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
