//! Serving connections: the accept loop, TLS, HTTP/1.1 and HTTP/2, and the limits that
//! keep slow or hostile clients from holding a server hostage.
//!
//! Every server (and `ehi serve`) accepts connections here, so the limits hold in one
//! place:
//!
//! - **Connection cap.** At most [`Limits::max_connections`] connections are open
//!   (never more than the open-file limit allows, keeping a reserve for files); a
//!   connection above the cap is closed at once. Accept errors (such as running out
//!   of file descriptors) back off instead of spinning.
//! - **Header timeout.** Once a client has sent the first byte of a request, the
//!   request line and headers must arrive within [`Limits::header_timeout`]; a TLS
//!   handshake has the same bound.
//! - **Idle timeout.** A connection with no request in flight and no traffic for
//!   [`Limits::idle_timeout`] is closed (HTTP/1.1 keep-alive and HTTP/2 alike).
//! - **Body timeout.** A request body that delivers nothing for
//!   [`Limits::body_timeout`] fails; the handler sees a read error and the connection
//!   is closed after its answer.
//! - **Read buffers.** A connection's read buffer is at most 8 KiB (so is a request
//!   head).
//! - **Body budget.** Request body bytes are charged against one budget per server
//!   ([`Limits::body_budget`]) before they are read from the socket, up to
//!   [`BUFFERED_BODY_CAP`] per request (the most any handler buffers whole; handlers
//!   that stream more have bounded buffers of their own). When the budget is spent,
//!   reading waits, so stalled uploads cannot grow memory; the time spent waiting does
//!   not count against the body timeout.
//!
//! A watchdog task per connection enforces the header and idle timeouts from the
//! connection's own activity record (bytes read and written, requests in flight),
//! which the I/O wrapper and the service wrapper keep up to date.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::tls::TlsAcceptor;

/// The most request body bytes charged to the budget per request: the largest body
/// any handler buffers whole (JSON bodies, blobs received in one piece).
pub const BUFFERED_BODY_CAP: usize = 2 << 20;

/// Body bytes reserved from the budget ahead of each read.
const BUDGET_CHUNK: usize = 64 << 10;

/// Largest read buffer of an HTTP/1.1 connection (and so the largest request head, and
/// the largest body frame one read yields). hyper's default (about 400 KiB) lets a few
/// thousand slow uploads hold gigabytes in read buffers that no budget sees; at 8 KiB,
/// 2,000 stalled uploads cost about 25 KiB each beyond the body budget.
const READ_BUFFER: usize = 8 << 10;

/// File descriptors kept free of connections for files, databases and outgoing calls.
const FD_RESERVE: u64 = 64;

/// Connection limits (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed for a request's line and headers (and a TLS handshake).
    pub header_timeout: Duration,
    /// Time an idle connection is kept.
    pub idle_timeout: Duration,
    /// Time a request body may deliver nothing.
    pub body_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
    /// Bytes of request bodies all connections may hold at once.
    pub body_budget: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            body_budget: 256 << 20,
        }
    }
}

/// The open-file limit, raised to its hard maximum when allowed.
fn open_file_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The connection cap: the configured one, within the open-file limit.
fn connection_cap(configured: usize) -> usize {
    match open_file_limit() {
        Some(limit) if limit != u64::MAX => {
            let room = limit.saturating_sub(FD_RESERVE).max(16);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        _ => configured,
    }
}

/// Shared budget of buffered request body bytes.
#[derive(Clone, Debug)]
struct BodyBudget {
    permits: Arc<Semaphore>,
}

impl BodyBudget {
    fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            permits: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
        }
    }
}

/// Activity record of one connection, written by its I/O and service wrappers and read
/// by its watchdog. Times are milliseconds since `epoch`.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    last_io: AtomicU64,
    in_flight: AtomicUsize,
    /// 1 + the time the first byte of a not-yet-started request arrived; 0 = none.
    head_started: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_io: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn on_read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
        // A server writes between requests only for protocol upkeep (HTTP/2 pings,
        // settings): the peer is not in the middle of a request head.
        if self.in_flight.load(Ordering::Acquire) == 0 {
            self.head_started.store(0, Ordering::Release);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn request_finished(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a connection was closed by its watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    SlowHeaders,
    Idle,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::SlowHeaders => "header_timeout",
            Closed::Idle => "idle_timeout",
        }
    }
}

/// Resolves when the connection has been idle, or slow to send a request head, for
/// longer than allowed.
async fn watchdog(activity: Arc<Activity>, limits: Limits) -> Closed {
    let header = u64::try_from(limits.header_timeout.as_millis()).unwrap_or(u64::MAX);
    let idle = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let tick = (limits.header_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if activity.in_flight.load(Ordering::Acquire) > 0 {
            continue;
        }
        let now = activity.now();
        let head = activity.head_started.load(Ordering::Acquire);
        if head != 0 {
            if now.saturating_sub(head - 1) >= header {
                return Closed::SlowHeaders;
            }
        } else if now.saturating_sub(activity.last_io.load(Ordering::Relaxed)) >= idle {
            return Closed::Idle;
        }
    }
}

/// An I/O stream that records its activity.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.activity.on_read(buf.filled().len() - before);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.on_write();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.on_write();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Ends a request's in-flight mark when dropped (with the response body).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type Acquire =
    Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> + Send>>;

/// A request body under the body timeout and the body budget.
struct GuardedBody {
    inner: Incoming,
    budget: Arc<Semaphore>,
    /// Permits held for bytes received (and reserved ahead).
    held: Option<OwnedSemaphorePermit>,
    /// Reserved but not yet received.
    reserved: usize,
    /// Bytes charged so far (received).
    charged: usize,
    acquiring: Option<Acquire>,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl GuardedBody {
    fn new(inner: Incoming, budget: &BodyBudget, timeout: Duration) -> GuardedBody {
        GuardedBody {
            inner,
            budget: budget.permits.clone(),
            held: None,
            reserved: 0,
            charged: 0,
            acquiring: None,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn hold(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
    }

    fn charging(&self) -> bool {
        self.charged < BUFFERED_BODY_CAP
    }
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        // Reserve budget before reading, so a spent budget stops reads at the socket:
        // at least one read buffer's worth (the largest frame a read yields), so a
        // frame never arrives without budget for it.
        if this.charging() && !this.inner.is_end_stream() {
            let room = BUFFERED_BODY_CAP - this.charged;
            let needed = READ_BUFFER.min(room);
            if this.reserved < needed {
                let want = BUDGET_CHUNK
                    .min(room - this.reserved)
                    .max(needed - this.reserved);
                let budget = this.budget.clone();
                let acquiring = this.acquiring.get_or_insert_with(|| {
                    let n = u32::try_from(want).unwrap_or(u32::MAX);
                    Box::pin(budget.acquire_many_owned(n))
                });
                match acquiring.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(permit)) => {
                        this.acquiring = None;
                        this.reserved += permit.num_permits();
                        this.hold(permit);
                        // Waiting for the budget is not the client's stall.
                        let deadline = tokio::time::Instant::now() + this.timeout;
                        this.deadline.as_mut().reset(deadline);
                    }
                    Poll::Ready(Err(_)) => {
                        this.acquiring = None;
                        this.charged = BUFFERED_BODY_CAP;
                    }
                }
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len();
                    if this.charging() {
                        let covered = n.min(this.reserved);
                        this.reserved -= covered;
                        let extra = (n - covered).min(BUFFERED_BODY_CAP - this.charged);
                        // A frame larger than the reservation is already in memory:
                        // charge what the budget has, never wait holding it.
                        if extra > 0
                            && let Ok(permit) = this
                                .budget
                                .clone()
                                .try_acquire_many_owned(u32::try_from(extra).unwrap_or(u32::MAX))
                        {
                            this.hold(permit);
                        }
                        this.charged = this.charged.saturating_add(n);
                    }
                }
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.deadline.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(io::Error::other(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    metrics::counter!("invariant_body_timeouts_total").increment(1);
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the request body sent nothing for {} s",
                            this.timeout.as_secs_f64()
                        ),
                    ))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Logs at most one warning per interval for a repeating condition.
#[derive(Debug)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new() -> RateLimitedLog {
        RateLimitedLog {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed count)` when it is time to log again.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(10) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Whether an accept error concerns only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` is
/// cancelled, then stops accepting and waits for open connections to finish their
/// requests. Servers outside the eight roles (`ehi serve`) use this directly to get
/// the same limits.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let cap = connection_cap(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap));
    let budget = BodyBudget::new(limits.body_budget);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(READ_BUFFER);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut over_cap_log = RateLimitedLog::new();
    let mut accept_error_log = RateLimitedLog::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(5);
                accepted
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: wait for connections to close
                // instead of spinning on the error.
                if let Some(suppressed) = accept_error_log.due() {
                    tracing::warn!(error = %e, suppressed, "accepting a connection failed; backing off");
                }
                metrics::counter!("invariant_accept_errors_total").increment(1);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics::counter!("invariant_connections_refused_total").increment(1);
            if let Some(suppressed) = over_cap_log.due() {
                tracing::warn!(%peer, cap, suppressed, "connection limit reached; closing new connections");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            limits,
            budget: budget.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            shutdown: shutdown.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            metrics::gauge!("invariant_open_connections").increment(1.0);
            connection.run(stream, tls).await;
            metrics::gauge!("invariant_open_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// What one connection task needs.
struct Connection {
    app: Router,
    limits: Limits,
    budget: BodyBudget,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let activity = Arc::new(Activity::new());
        match tls {
            None => {
                self.serve_io(stream, activity).await;
            }
            Some(tls) => {
                let handshake = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    done = tokio::time::timeout(self.limits.header_timeout, tls.accept(stream)) => done,
                };
                match handshake {
                    Ok(Ok(stream)) => self.serve_io(stream, activity).await,
                    Ok(Err(e)) => {
                        metrics::counter!("invariant_tls_handshake_failures_total").increment(1);
                        tracing::debug!(error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("invariant_connections_closed_total", "reason" => "handshake_timeout")
                            .increment(1);
                    }
                }
            }
        }
    }

    async fn serve_io<S>(self, stream: S, activity: Arc<Activity>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let app = self.app;
        let budget = self.budget;
        let body_timeout = self.limits.body_timeout;
        let service_activity = activity.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            service_activity.request_started();
            let in_flight = InFlight(service_activity.clone());
            let request =
                request.map(|body| Body::new(GuardedBody::new(body, &budget, body_timeout)));
            let app = app.clone();
            async move {
                let response = match app.oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(TrackedBody {
                        inner: body,
                        _in_flight: in_flight,
                    })
                }))
            }
        });
        let conn = self.builder.serve_connection(io, service).into_owned();
        let conn = self.watcher.watch(conn);
        tokio::pin!(conn);
        tokio::select! {
            served = &mut conn => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            reason = watchdog(activity, self.limits) => {
                metrics::counter!("invariant_connections_closed_total", "reason" => reason.label())
                    .increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_tracks_request_heads() {
        let a = Activity::new();
        a.on_read(10);
        assert_ne!(a.head_started.load(Ordering::Acquire), 0);
        a.request_started();
        assert_eq!(a.head_started.load(Ordering::Acquire), 0);
        // Body bytes of an in-flight request do not start a head.
        a.on_read(10);
        assert_eq!(a.head_started.load(Ordering::Acquire), 0);
        a.request_finished();
        a.on_read(1);
        assert_ne!(a.head_started.load(Ordering::Acquire), 0);
        // Protocol upkeep written between requests clears it.
        a.on_write();
        assert_eq!(a.head_started.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn watchdog_closes_idle_and_slow_connections() {
        let limits = Limits {
            header_timeout: Duration::from_millis(50),
            idle_timeout: Duration::from_millis(120),
            ..Limits::default()
        };
        let idle = Arc::new(Activity::new());
        let started = Instant::now();
        assert_eq!(watchdog(idle, limits).await, Closed::Idle);
        assert!(started.elapsed() >= Duration::from_millis(120));

        let slow = Arc::new(Activity::new());
        slow.on_read(3);
        let started = Instant::now();
        assert_eq!(watchdog(slow, limits).await, Closed::SlowHeaders);
        assert!(started.elapsed() < Duration::from_millis(120));

        let busy = Arc::new(Activity::new());
        busy.request_started();
        let outcome =
            tokio::time::timeout(Duration::from_millis(300), watchdog(busy, limits)).await;
        assert!(
            outcome.is_err(),
            "a connection with a request in flight is kept"
        );
    }

    #[test]
    fn rate_limited_log_counts_suppressed_lines() {
        let mut log = RateLimitedLog::new();
        assert_eq!(log.due(), Some(0));
        assert_eq!(log.due(), None);
        assert_eq!(log.due(), None);
        log.last = Some(Instant::now() - Duration::from_secs(11));
        assert_eq!(log.due(), Some(2));
    }

    #[test]
    fn the_connection_cap_respects_the_file_limit() {
        let cap = connection_cap(usize::MAX);
        assert!(cap < usize::MAX, "capped by the open-file limit");
        assert_eq!(connection_cap(10), 10);
    }
}
