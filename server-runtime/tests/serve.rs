//! The runtime's serving layer over real sockets: HTTPS (right and wrong CA, HTTP/2 by
//! ALPN), the plaintext rule for non-loopback binds, token checks (401/403 and the
//! handler never running), and the connection limits (idle and slow-header
//! connections closed, a stalled body dropped, a refused connection above the cap).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, put};
use invariant_runtime::conn::Limits;
use invariant_runtime::{Caller, Role, Server, ServerContext, ServerOptions, TlsFiles, serve};
use invariant_test_support::TestAuth;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A router counting how often its mutating handler ran.
fn counting_router(hits: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/storage/thing",
            put(
                move |caller: Option<axum::Extension<Arc<Caller>>>, body: Bytes| {
                    let hits = hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let who = caller.map(|c| c.subject.clone()).unwrap_or_default();
                        format!("{who}:{}", body.len())
                    }
                },
            ),
        )
        .route("/storage/thing", get(|| async { "read" }))
}

async fn start(options: ServerOptions, router: Router) -> Server {
    let ctx = ServerContext::prepare(options).expect("prepare");
    serve(&ctx, router).await.expect("serve")
}

fn options(dir: &tempfile::TempDir) -> ServerOptions {
    ServerOptions::ephemeral(Role::Storage, dir.path())
}

struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    files: TlsFiles,
}

/// A CA and a server certificate for 127.0.0.1 and localhost, written to files.
fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = invariant_test_support::TestPki::new(dir.path());
    Pki {
        ca_pem: std::fs::read_to_string(&made.ca_cert).expect("read CA"),
        files: TlsFiles {
            cert: made.cert,
            key: made.key,
        },
        dir,
    }
}

fn client_trusting(pem: &str) -> reqwest::Client {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, pem).expect("write ca");
    let mut security = invariant_spec::http::ClientSecurity::default();
    security.add_ca_file(&path).expect("ca");
    security.http_client().expect("client")
}

#[tokio::test]
async fn https_with_the_right_ca_and_refused_with_another() {
    let pki = pki();
    let data = tempfile::tempdir().expect("tempdir");
    let mut o = options(&data);
    o.tls = Some(pki.files.clone());
    let server = start(o, counting_router(Arc::default())).await;
    assert_eq!(server.scheme(), "https");
    let url = format!("{}/storage/thing", server.local_url());
    assert!(url.starts_with("https://127.0.0.1:"));

    let good = client_trusting(&pki.ca_pem);
    let answer = good.get(&url).send().await.expect("https get");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.expect("body"), "read");

    let other = pki_ca_only();
    let wrong = client_trusting(&other);
    let err = wrong
        .get(&url)
        .send()
        .await
        .expect_err("wrong CA must fail");
    assert!(
        err.is_connect() || err.to_string().contains("certificate"),
        "{err:?}"
    );

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/storage/thing", server.local_addr()))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
    server.stop().await.expect("stop");
    drop(pki.dir);
}

/// The PEM of a CA that signed nothing we serve.
fn pki_ca_only() -> String {
    pki().ca_pem
}

#[tokio::test]
async fn https_offers_http2_by_alpn() {
    let pki = pki();
    let data = tempfile::tempdir().expect("tempdir");
    let mut o = options(&data);
    o.tls = Some(pki.files.clone());
    let server = start(o, counting_router(Arc::default())).await;

    // A raw rustls client asking for h2 gets h2.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.expect("ca der")).expect("add root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    server.stop().await.expect("stop");
}

use rustls::pki_types::pem::PemObject as _;

#[tokio::test]
async fn plain_http_on_a_network_address_is_refused_without_plaintext() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut o = options(&data);
    o.listen = "0.0.0.0:0".parse().expect("addr");
    let ctx = ServerContext::prepare(o.clone()).expect("prepare");
    let err = serve(&ctx, counting_router(Arc::default()))
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("--plaintext"), "{err}");

    // With --plaintext it starts (bound on all addresses; we only talk to loopback).
    o.plaintext = true;
    let server = start(o, counting_router(Arc::default())).await;
    let url = format!(
        "http://127.0.0.1:{}/storage/thing",
        server.local_addr().port()
    );
    let answer = reqwest::get(&url).await.expect("get");
    assert_eq!(answer.status(), 200);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn tokens_are_checked_before_any_handler_runs() {
    let auth = TestAuth::new();
    let data = tempfile::tempdir().expect("tempdir");
    let mut o = options(&data);
    o.auth.root = Some(auth.public());
    let hits = Arc::new(AtomicUsize::new(0));
    let server = start(o, counting_router(hits.clone())).await;
    let url = format!("{}/storage/thing", server.url());

    let anonymous = reqwest::Client::new();
    let answer = anonymous.put(&url).body("x").send().await.expect("put");
    assert_eq!(answer.status(), 401);
    assert_eq!(
        answer
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"invariant\"")
    );
    assert!(answer.text().await.expect("reason").contains("Bearer"));

    let writer = auth.token("alice", "storage:write");
    let refused = [
        auth.token("bob", "storage:read"),
        auth.token("bob", "slots:write"),
        auth.expired("bob", "storage:write"),
        auth.foreign("bob"),
        auth.attenuated(&writer, "storage:read"),
    ];
    for token in &refused {
        let answer = TestAuth::client(token)
            .put(&url)
            .body("x")
            .send()
            .await
            .expect("put");
        assert_eq!(
            answer.status(),
            403,
            "{}",
            answer.text().await.unwrap_or_default()
        );
    }
    let bad_scheme = anonymous
        .put(&url)
        .header("authorization", "Basic abc")
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(bad_scheme.status(), 403);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no refused request reached the handler"
    );

    let answer = TestAuth::client(&writer)
        .put(&url)
        .body("xyz")
        .send()
        .await
        .expect("put");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.expect("body"), "alice:3");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Reads stay open; /id is always open.
    assert_eq!(anonymous.get(&url).send().await.expect("get").status(), 200);
    let id = anonymous
        .get(format!("{}/id", server.url()))
        .send()
        .await
        .expect("id");
    assert_eq!(id.status(), 200);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn with_auth_reads_reads_need_a_read_right() {
    let auth = TestAuth::new();
    let data = tempfile::tempdir().expect("tempdir");
    let mut o = options(&data);
    o.auth.root = Some(auth.public());
    o.auth.reads = true;
    let server = start(o, counting_router(Arc::default())).await;
    let url = format!("{}/storage/thing", server.url());
    let anonymous = reqwest::Client::new();
    assert_eq!(anonymous.get(&url).send().await.expect("get").status(), 401);
    let writer_only = TestAuth::client(&auth.token("w", "storage:write"));
    assert_eq!(
        writer_only.get(&url).send().await.expect("get").status(),
        403
    );
    for rights in ["storage:read", "*:read", "storage:*"] {
        let reader = TestAuth::client(&auth.token("r", rights));
        assert_eq!(
            reader.get(&url).send().await.expect("get").status(),
            200,
            "{rights}"
        );
    }
    let id = anonymous
        .get(format!("{}/id", server.url()))
        .send()
        .await
        .expect("id");
    assert_eq!(id.status(), 200, "/id stays open");
    server.stop().await.expect("stop");
}

fn quick_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        body_timeout: Duration::from_millis(400),
        ..Limits::default()
    }
}

/// Whether the peer closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed_while_requests_keep_answering() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut o = options(&data);
    o.limits = quick_limits();
    let server = start(o, counting_router(Arc::default())).await;
    let addr = server.local_addr();

    let mut idle = Vec::new();
    let mut slow = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /storage/thing HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("partial head");
        slow.push(s);
    }
    // Requests keep answering meanwhile.
    let url = format!("{}/storage/thing", server.url());
    assert_eq!(reqwest::get(&url).await.expect("get").status(), 200);

    let started = Instant::now();
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "slow header kept"
        );
    }
    let slow_done = started.elapsed();
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(3)).await, "idle kept");
    }
    assert!(slow_done < Duration::from_millis(600) + Duration::from_secs(1));
    assert_eq!(reqwest::get(&url).await.expect("get").status(), 200);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_stalled_body_fails_the_request_and_closes_the_connection() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut o = options(&data);
    o.limits = quick_limits();
    let hits = Arc::new(AtomicUsize::new(0));
    let server = start(o, counting_router(hits.clone())).await;
    let mut s = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    s.write_all(b"PUT /storage/thing HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .expect("partial body");
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the handler got no complete body"
    );
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn connections_above_the_cap_are_closed_at_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut o = options(&data);
    o.limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let server = start(o, counting_router(Arc::default())).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            TcpStream::connect(server.local_addr())
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    // Closing one frees a slot.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("{}/storage/thing", server.url());
    let answer = reqwest::Client::new().get(&url).send().await.expect("get");
    assert_eq!(answer.status(), 200);
    server.stop().await.expect("stop");
}
