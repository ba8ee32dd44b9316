//! Start-up and lifetime of `ehi serve`: its options ([`ServeOptions`]), binding and
//! serving ([`start`], [`start_with`]) with the `Host` check against DNS rebinding,
//! the background task (refresh, revoked tokens, audit flushes), the running
//! [`Server`] handle, and [`answer_locally`] (one request answered in process, for
//! `ehi search`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::cache::{Cache, warm_up};
use super::follow::{flush_audit, follow_slot, refresh};
use super::respond::fhir_response;
use super::route::handle;
use super::{
    AppState, MAX_BODY, REFRESH_EVERY, REVOKED_POLL, ServeError, TokenKey, auth, bulk, error, oauth,
};
use ehi_vault::time::now_ms;
use ehi_vault::vault::Vault;

/// How `ehi serve` runs ([`start_with`]); `ServeOptions::default()` is what [`start`]
/// uses.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// How often the vault is re-read (other devices' commits, grants revoked
    /// elsewhere). Default [`REFRESH_EVERY`].
    pub refresh_every: Duration,
    /// The revoked-token file ([`token::revoked_tokens_path`]); `None`: no per-token
    /// revocation. Default `None` (`ehi serve` passes the keystore's).
    ///
    /// [`token::revoked_tokens_path`]: super::token::revoked_tokens_path
    pub revoked_tokens: Option<PathBuf>,
    /// Pre-authorized OAuth clients: `(client_id, grant id)` ([`oauth`]). Default none.
    pub clients: Vec<(String, String)>,
    /// Lifetime of an authorization code. Default [`oauth::CODE_TTL`] (60 s).
    pub code_ttl: Duration,
    /// Whether requests are written to the audit log ([`crate::audit`]). Default true.
    pub audit: bool,
    /// Flush the audit queue at least this often. Default 1 s.
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

    /// Appends every queued audit entry to the vault's log now (one commit per
    /// [`crate::audit::MAX_PER_COMMIT`] entries). Returns how many were appended.
    pub async fn flush_audit(&self) -> Result<usize, ServeError> {
        flush_audit(&self.state).await
    }

    /// Audit entries not yet appended.
    pub fn audit_pending(&self) -> usize {
        self.state.vault.audit_queue().len()
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
    /// queue, and waits.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join().await
    }

    /// Waits until the server stops (then flushes the audit queue).
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
    if options.audit {
        vault.audit_queue().set_batch(options.audit_batch);
    }
    Ok(Arc::new(AppState {
        vault,
        key,
        base,
        write: tokio::sync::Mutex::new(()),
        jobs: bulk::Jobs::default(),
        cache,
        auth,
        oauth: oauth::OAuth::new(options.clients.clone(), options.code_ttl),
        audit: options.audit,
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
                match state.audit {
                    true => state.vault.audit_queue().batch_full().await,
                    false => std::future::pending().await,
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
