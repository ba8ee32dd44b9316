//! Binding, common routes and lifecycle of a server.
//!
//! A role crate builds its protocol [`Router`] and hands it to [`serve`], which adds
//! `GET /id` and `GET /metrics`, request metrics, panic containment (a panicking
//! handler answers 500; the server stays up) and trailing-slash normalization, binds,
//! starts self-registration when a broker is configured, and runs until the context's
//! shutdown token is cancelled. Shutdown stops accepting
//! and lets in-flight requests finish.

use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use axum::Router;
use axum::extract::Request;
use axum::http::header;
use axum::routing::get;
use invariant_spec::broker::Registration;
use invariant_spec::{BrokerClient, Id};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::normalize_path::NormalizePathLayer;

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
}

impl ServerContext {
    /// Checks the broker url, creates the data directory and loads (or creates) the
    /// server id.
    pub fn prepare(options: ServerOptions) -> io::Result<ServerContext> {
        let broker = match &options.broker {
            Some(url) => Some(
                BrokerClient::new(url)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
            ),
            None => None,
        };
        let id = identity::load_or_create(&options.data_dir)?;
        Ok(ServerContext {
            options,
            id,
            shutdown: CancellationToken::new(),
            broker,
            tasks: TaskTracker::new(),
        })
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

/// Binds `ctx.options.listen` and serves `routes` (plus the common routes) until
/// `ctx.shutdown` is cancelled.
pub async fn serve(ctx: &ServerContext, routes: Router) -> io::Result<Server> {
    let listener = TcpListener::bind(ctx.options.listen).await?;
    let local_addr = listener.local_addr()?;
    let url = ctx
        .options
        .advertise
        .clone()
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("http://{local_addr}"));
    let app = NormalizePathLayer::trim_trailing_slash().layer(app(ctx.role(), ctx.id, routes));
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
            ctx.options.register_interval,
            shutdown.clone(),
        ));
    }
    let signal = shutdown.clone().cancelled_owned();
    let tasks = ctx.tasks.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            axum::ServiceExt::<Request>::into_make_service(app),
        )
        .with_graceful_shutdown(signal)
        .await;
        tasks.close();
        tasks.wait().await;
        served
    });
    Ok(Server {
        id: ctx.id,
        url,
        local_addr,
        shutdown,
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
/// `listening on http://<addr>` to stdout, and waits for SIGINT/SIGTERM.
pub fn run_main<F, Fut>(role: Role, args: &CommonArgs, start: F) -> anyhow::Result<()>
where
    F: FnOnce(ServerContext) -> Fut,
    Fut: Future<Output = anyhow::Result<Server>>,
{
    logging::init(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let options = args.resolve(role);
        let ctx = ServerContext::prepare(options.clone())
            .with_context(|| format!("preparing data directory {}", options.data_dir.display()))?;
        cancel_on_signals(ctx.shutdown.clone());
        let server = start(ctx.clone())
            .await
            .with_context(|| format!("starting the {} server", role.kind()))?;
        {
            let mut stdout = io::stdout().lock();
            writeln!(stdout, "listening on http://{}", server.local_addr())?;
            stdout.flush()?;
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
