//! Binding, common routes and lifecycle of a server.
//!
//! A role crate builds its protocol [`Router`] and hands it to [`serve`], which adds
//! `GET /id` and `GET /metrics`, request metrics, panic containment (a panicking
//! handler answers 500; the server stays up), token checks ([`crate::auth`]) when the
//! server has a root key, and trailing-slash normalization; binds (refusing plain HTTP
//! on a non-loopback address unless `--plaintext` was given), serves HTTP or HTTPS
//! under the connection limits of [`crate::conn`], starts self-registration when a
//! broker is configured, and runs until the context's shutdown token is cancelled.
//! Shutdown stops accepting and lets in-flight requests finish.

use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use invariant_spec::broker::Registration;
use invariant_spec::http::Endpoint;
use invariant_spec::{BrokerClient, Id};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::normalize_path::NormalizePathLayer;

use std::sync::Arc;

use crate::auth::Authorizer;
use crate::conn;
use crate::tls::TlsAcceptor;
use crate::{CommonArgs, Role, ServerOptions, identity, logging, metrics, registration};

/// What a role needs to build its router: resolved options, the server's id, and the
/// shutdown signal every background task should watch.
#[derive(Clone, Debug)]
pub struct ServerContext {
    /// Resolved options.
    pub options: ServerOptions,
    /// The persistent server id.
    pub id: Id,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Client for `--broker`, when given.
    pub broker: Option<BrokerClient>,
    /// Background tasks of the server (spawn them here): [`Server::join`] returns only
    /// after every tracked task has finished, so a stopped server holds no resources.
    /// Tasks must end when [`ServerContext::shutdown`] is cancelled.
    pub tasks: TaskTracker,
    /// HTTP client for this server's own calls to other servers: trusts
    /// `--ca-cert` besides the system roots and sends `--token`.
    pub http: reqwest::Client,
}

impl ServerContext {
    /// Checks the broker url, creates the data directory and loads (or creates) the
    /// server id.
    pub fn prepare(options: ServerOptions) -> io::Result<ServerContext> {
        let invalid = |e: invariant_spec::ClientError| {
            io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
        };
        let http = options.client.http_client().map_err(invalid)?;
        let broker = match &options.broker {
            Some(url) => Some(BrokerClient::from_endpoint(
                Endpoint::with_client(url, http.clone()).map_err(invalid)?,
            )),
            None => None,
        };
        let id = identity::load_or_create(&options.data_dir)?;
        Ok(ServerContext {
            options,
            id,
            shutdown: CancellationToken::new(),
            broker,
            tasks: TaskTracker::new(),
            http,
        })
    }

    /// An endpoint at `url` reached with this server's client settings.
    pub fn endpoint(&self, url: &str) -> invariant_spec::ClientResult<Endpoint> {
        Endpoint::with_client(url, self.http.clone())
    }

    /// The server's role.
    pub fn role(&self) -> Role {
        self.options.role
    }

    /// The data directory.
    pub fn data_dir(&self) -> &PathBuf {
        &self.options.data_dir
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    id: Id,
    url: String,
    scheme: &'static str,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    /// The url clients should use (`--advertise`, else `http://<bound address>`).
    pub fn url(&self) -> &str {
        &self.url
    }
    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        self.scheme
    }
    /// `<scheme>://<bound address>`: the url of the bound socket itself.
    pub fn local_url(&self) -> String {
        format!("{}://{}", self.scheme, self.local_addr)
    }
    /// The server id.
    pub fn id(&self) -> Id {
        self.id
    }
    /// Asks the server to stop: no new connections; in-flight requests finish.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
    /// Waits until the server has stopped.
    pub async fn join(self) -> io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(e)),
        }
    }
    /// Shuts down and waits.
    pub async fn stop(self) -> io::Result<()> {
        self.shutdown();
        self.join().await
    }
}

/// Adds the common routes and layers to a role's router.
pub fn app(role: Role, id: Id, routes: Router) -> Router {
    let id_text = format!("{id}");
    let id_route = get(move || {
        let id_text = id_text.clone();
        async move {
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                id_text,
            )
        }
    });
    let _ = metrics::handle();
    routes
        .route("/id", id_route)
        .route("/metrics", get(metrics::render))
        .layer(axum::middleware::from_fn(move |req, next| {
            metrics::track(role, req, next)
        }))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            crate::ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            )
            .into_response_body()
        }))
}

impl crate::ApiError {
    fn into_response_body(self) -> axum::response::Response {
        axum::response::IntoResponse::into_response(self)
    }
}

/// Why a server refuses to start with its security options.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Plain HTTP on an address other hosts can reach, without `--plaintext`.
    #[error(
        "refusing to serve plain HTTP on {0}: anyone on the network could read and change the traffic. \
         Give --tls-cert and --tls-key, or --plaintext to accept that"
    )]
    PlaintextOnNetwork(SocketAddr),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Binds `ctx.options.listen` and serves `routes` (plus the common routes) until
/// `ctx.shutdown` is cancelled.
pub async fn serve(ctx: &ServerContext, routes: Router) -> io::Result<Server> {
    let options = &ctx.options;
    if options.tls.is_none() && !options.plaintext && !options.listen.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            StartError::PlaintextOnNetwork(options.listen),
        ));
    }
    let tls = match &options.tls {
        Some(files) => Some(
            TlsAcceptor::new(files)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, StartError::Tls(e)))?,
        ),
        None => None,
    };
    if options.client.insecure_skip_verify {
        tracing::warn!(
            "--insecure-skip-verify: this server accepts any certificate from the servers it calls; \
             anyone on the path can read and change that traffic"
        );
    }
    let mut app = app(ctx.role(), ctx.id, routes);
    match options.auth.root {
        Some(root) => {
            let authz = Arc::new(Authorizer::new(ctx.role(), root, options.auth.reads));
            app = app.layer(axum::middleware::from_fn_with_state(
                authz,
                crate::auth::authorize,
            ));
            tracing::info!(root = %root, reads_checked = options.auth.reads, "token checks on");
        }
        None => tracing::warn!(
            "open mode: no --auth-root-key, so anyone who reaches this server may change its state"
        ),
    }
    let listener = TcpListener::bind(options.listen).await?;
    let local_addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = options
        .advertise
        .clone()
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("{scheme}://{local_addr}"));
    let app = NormalizePathLayer::trim_trailing_slash().layer(app);
    let app = Router::new().fallback_service(app);
    let shutdown = ctx.shutdown.clone();
    if let Some(broker) = &ctx.broker {
        let registration = Registration {
            id: ctx.id,
            urls: vec![url.clone()],
            url: None,
            kind: ctx.role().kind().to_string(),
        };
        ctx.tasks.spawn(registration::run(
            broker.clone(),
            registration,
            options.register_interval,
            shutdown.clone(),
        ));
    }
    if let Some(tls) = &tls {
        tls.reload_on_sighup(shutdown.clone());
    }
    let tasks = ctx.tasks.clone();
    let limits = options.limits;
    let task = tokio::spawn(async move {
        let served = conn::serve(listener, tls, app, limits, shutdown).await;
        tasks.close();
        tasks.wait().await;
        served
    });
    Ok(Server {
        id: ctx.id,
        url,
        scheme,
        local_addr,
        shutdown: ctx.shutdown.clone(),
        task,
    })
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
                        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        token.cancel();
    });
}

/// The body of every server binary's `main`: parses nothing itself (the binary's clap
/// parser flattens [`CommonArgs`]), sets up logging and the runtime, prepares the data
/// directory and id, builds the role's server with `start`, prints
/// `listening on http://<addr>` to stdout (a closed stdout does not stop the server),
/// and waits for SIGINT/SIGTERM. A panic printing to a closed stdout exits quietly.
pub fn run_main<F, Fut>(role: Role, args: &CommonArgs, start: F) -> anyhow::Result<()>
where
    F: FnOnce(ServerContext) -> Fut,
    Fut: Future<Output = anyhow::Result<Server>>,
{
    crate::stdout::exit_quietly_on_closed_pipe();
    logging::init(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let options = args.resolve(role)?;
        // Clients built without an explicit HTTP client (`XClient::new`) use the
        // server's own TLS roots and token too.
        options.client.clone().install();
        let ctx = ServerContext::prepare(options.clone())
            .with_context(|| format!("preparing data directory {}", options.data_dir.display()))?;
        cancel_on_signals(ctx.shutdown.clone());
        let server = start(ctx.clone())
            .await
            .with_context(|| format!("starting the {} server", role.kind()))?;
        // The line is for whoever started the server; when they closed the pipe, the
        // server keeps serving (the log below carries the url too).
        let announced = {
            let mut stdout = io::stdout().lock();
            writeln!(stdout, "listening on {}", server.local_url()).and_then(|()| stdout.flush())
        };
        if let Err(e) = announced {
            if e.kind() != io::ErrorKind::BrokenPipe {
                return Err(anyhow::Error::from(e).context("printing the listening line"));
            }
        }
        tracing::info!(
            role = role.kind(),
            id = %server.id(),
            url = server.url(),
            data_dir = %options.data_dir.display(),
            "server started"
        );
        server.join().await.context("serving")?;
        tracing::info!("server stopped");
        Ok(())
    })
}
