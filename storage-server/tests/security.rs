//! In-process tests of the storage server's security: token checks of every write
//! (and of reads with `--auth-reads`), per-subject quotas and their usage in
//! `/metrics`, and `/storage/fetch` refusing to be used for server-side request
//! forgery (only http/https urls registered with the broker, inside `--peer-allow`,
//! after `GET /id` answers the container's id, no redirects).
//!
//! Peers that must not be contacted are loopback listeners that record every
//! connection and request head; every test talks only to 127.0.0.1.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::launch;

use bytes::Bytes;
use invariant_runtime::{Server, ServerOptions};
use invariant_spec::{Id, StorageClient};
use invariant_test_support::{FakeBroker, TestAuth};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;
use storage_server::StorageConfig;
use storage_server::pack::PackConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const KIB: usize = 1024;
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A server checking tokens against `auth`'s root.
async fn launch_auth(dir: &Path, auth: &TestAuth, config: StorageConfig) -> Server {
    let root = auth.public();
    launch(dir, config, move |o| o.auth.root = Some(root)).await
}

fn seeded(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn blob_url(server: &Server, address: &Id) -> String {
    format!("{}/storage/{address}", server.url())
}

async fn put(client: &reqwest::Client, server: &Server, data: &[u8]) -> reqwest::Response {
    client
        .put(blob_url(server, &Id::of_content(data)))
        .body(data.to_vec())
        .send()
        .await
        .expect("PUT")
}

async fn get_status(client: &reqwest::Client, server: &Server, address: &Id) -> StatusCode {
    client
        .get(blob_url(server, address))
        .send()
        .await
        .expect("GET")
        .status()
}

/// The value of `invariant_storage_subject_bytes` for `subject` on `server`, if
/// exported.
async fn usage_metric(server: &Server, subject: &str) -> Option<u64> {
    let text = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let server_label = format!("server=\"{}\"", server.id());
    let subject_label = format!("subject=\"{subject}\"");
    text.lines()
        .filter(|l| l.starts_with("invariant_storage_subject_bytes{"))
        .find(|l| l.contains(&server_label) && l.contains(&subject_label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Pack settings with packing off: every blob is a file.
fn files_only() -> StorageConfig {
    StorageConfig {
        pack: PackConfig {
            max_blob: 0,
            ..PackConfig::default()
        },
        ..StorageConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Token checks
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn writes_need_a_token_with_storage_write_and_change_nothing_otherwise() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch_auth(dir.path(), &auth, StorageConfig::default()).await;
    let anonymous = reqwest::Client::new();
    let full = auth.token("writer", "storage:write,storage:read");
    let refused: Vec<(&str, reqwest::Client)> = vec![
        (
            "read-only",
            TestAuth::client(&auth.token("reader", "storage:read")),
        ),
        (
            "expired",
            TestAuth::client(&auth.expired("writer", "storage:write")),
        ),
        ("foreign root", TestAuth::client(&auth.foreign("writer"))),
        (
            "attenuated to reads",
            TestAuth::client(&auth.attenuated(&full, "storage:read")),
        ),
    ];

    let data = b"a blob nobody may write without the right".to_vec();
    let address = Id::of_content(&data);
    let fetch_body = serde_json::json!({"address": address, "container": Id::random()});

    // No token: 401 with a Bearer challenge, for every write route.
    let response = put(&anonymous, &server, &data).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer")),
        "401 without a Bearer challenge"
    );
    let response = anonymous
        .post(format!("{}/storage", server.url()))
        .body(data.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = anonymous
        .put(format!("{}/storage/fetch", server.url()))
        .json(&fetch_body)
        .send()
        .await
        .expect("PUT fetch");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // A token without the right, expired, from another root, or narrowed: 403.
    for (what, client) in &refused {
        let response = put(client, &server, &data).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "PUT with {what}");
        let response = client
            .post(format!("{}/storage/", server.url()))
            .body(data.clone())
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "POST with {what}");
        let response = client
            .post(format!("{}/storage/fetch", server.url()))
            .json(&fetch_body)
            .send()
            .await
            .expect("POST fetch");
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "fetch with {what}"
        );
    }

    // Nothing was stored; reads stay open.
    assert_eq!(
        get_status(&anonymous, &server, &address).await,
        StatusCode::NOT_FOUND
    );
    assert!(
        storage_server::pack::verify_packs(dir.path())
            .expect("packs")
            .is_empty()
    );

    // The right token writes; anyone reads.
    let writer = TestAuth::client(&full);
    assert_eq!(put(&writer, &server, &data).await.status(), StatusCode::OK);
    let response = anonymous
        .get(blob_url(&server, &address))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.expect("body"), &data[..]);

    server.stop().await.expect("stop");
}

#[tokio::test]
async fn with_auth_reads_a_read_needs_storage_read() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("data dir");
    let root = auth.public();
    let server = launch(dir.path(), StorageConfig::default(), move |o| {
        o.auth.root = Some(root);
        o.auth.reads = true;
    })
    .await;
    let writer = TestAuth::client(&auth.token("writer", "storage:write"));
    let reader = TestAuth::client(&auth.token("reader", "storage:read"));
    let data = b"read me only with a token".to_vec();
    let address = Id::of_content(&data);
    assert_eq!(put(&writer, &server, &data).await.status(), StatusCode::OK);

    let anonymous = reqwest::Client::new();
    assert_eq!(
        get_status(&anonymous, &server, &address).await,
        StatusCode::UNAUTHORIZED
    );
    let head = anonymous
        .head(blob_url(&server, &address))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), StatusCode::UNAUTHORIZED);
    // storage:write does not include reading.
    assert_eq!(
        get_status(&writer, &server, &address).await,
        StatusCode::FORBIDDEN
    );
    let expired = TestAuth::client(&auth.expired("reader", "storage:read"));
    assert_eq!(
        get_status(&expired, &server, &address).await,
        StatusCode::FORBIDDEN
    );
    let response = reader
        .get(blob_url(&server, &address))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.expect("body"), &data[..]);
    // `GET /id` stays open.
    let id = anonymous
        .get(format!("{}/id", server.url()))
        .send()
        .await
        .expect("GET /id");
    assert_eq!(id.status(), StatusCode::OK);

    server.stop().await.expect("stop");
}

#[tokio::test]
async fn open_mode_reads_and_writes_without_tokens() {
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch(dir.path(), StorageConfig::default(), |_| {}).await;
    let anonymous = reqwest::Client::new();
    let data = seeded(5, 3000);
    assert_eq!(
        put(&anonymous, &server, &data).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get_status(&anonymous, &server, &Id::of_content(&data)).await,
        StatusCode::OK
    );
    // Nobody is charged in open mode.
    assert_eq!(usage_metric(&server, "").await, None);
    server.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------
// Quotas
// ---------------------------------------------------------------------------------------

/// Alice (quota 1 MiB) stores two 400 KiB blobs; the third gets 413 and is not
/// stored; content already held costs nothing; bob (no quota) is unaffected; usage
/// shows in /metrics and survives a restart.
async fn quota_scenario(config: StorageConfig, streamed: bool) {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch_auth(dir.path(), &auth, config.clone()).await;
    let alice_token = auth.token_with("alice", "storage:write", None, Some(MIB));
    let alice = TestAuth::client(&alice_token);
    let bob = TestAuth::client(&auth.token("bob", "storage:write"));
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| seeded(100 + i, 400 * KIB)).collect();
    let ids: Vec<Id> = blobs.iter().map(|b| Id::of_content(b)).collect();
    const USED: u64 = 2 * 400 * 1024;

    // Streamed bodies (no Content-Length) take the temp-file path.
    let upload = |client: reqwest::Client, url: String, data: Vec<u8>| async move {
        let request = client.put(url);
        let request = if streamed {
            let chunks: Vec<Result<Bytes, std::io::Error>> = data
                .chunks(64 * KIB)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            request.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        } else {
            request.body(data)
        };
        request.send().await.expect("upload")
    };

    for (data, id) in blobs.iter().zip(&ids).take(2) {
        let response = upload(alice.clone(), blob_url(&server, id), data.clone()).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = upload(alice.clone(), blob_url(&server, &ids[2]), blobs[2].clone()).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let reason = response.text().await.expect("reason");
    for part in ["alice", &MIB.to_string(), &USED.to_string()] {
        assert!(reason.contains(part), "reason {reason:?} lacks {part}");
    }
    let anonymous = reqwest::Client::new();
    assert_eq!(
        get_status(&anonymous, &server, &ids[2]).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(usage_metric(&server, "alice").await, Some(USED));

    // Content already held costs nothing, by PUT or POST.
    let response = upload(alice.clone(), blob_url(&server, &ids[0]), blobs[0].clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = alice
        .post(format!("{}/storage", server.url()))
        .body(blobs[1].clone())
        .send()
        .await
        .expect("POST held blob");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("address"), ids[1].to_string());
    assert_eq!(usage_metric(&server, "alice").await, Some(USED));

    // Another subject is unaffected, and alice is not charged for bob's blob.
    let response = upload(bob.clone(), blob_url(&server, &ids[2]), blobs[2].clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        usage_metric(&server, "bob").await,
        Some(blobs[2].len() as u64)
    );
    // Now that bob stored it, alice may upload it for free.
    let response = upload(alice.clone(), blob_url(&server, &ids[2]), blobs[2].clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(usage_metric(&server, "alice").await, Some(USED));

    server.stop().await.expect("stop");

    // After a restart alice's usage still counts: 248 KiB fit, 300 KiB do not.
    let server = launch_auth(dir.path(), &auth, config).await;
    assert_eq!(usage_metric(&server, "alice").await, Some(USED));
    let too_much = seeded(200, 300 * KIB);
    let response = upload(
        alice.clone(),
        blob_url(&server, &Id::of_content(&too_much)),
        too_much.clone(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let fits = seeded(201, (MIB - USED) as usize);
    let response = upload(
        alice.clone(),
        blob_url(&server, &Id::of_content(&fits)),
        fits.clone(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(usage_metric(&server, "alice").await, Some(MIB));
    assert_eq!(
        get_status(&anonymous, &server, &Id::of_content(&too_much)).await,
        StatusCode::NOT_FOUND
    );
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_caps_packed_blobs() {
    quota_scenario(StorageConfig::default(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_caps_blob_files() {
    quota_scenario(files_only(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_caps_streamed_uploads() {
    quota_scenario(StorageConfig::default(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_never_take_usage_past_the_quota() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch_auth(dir.path(), &auth, StorageConfig::default()).await;
    let alice = TestAuth::client(&auth.token_with("alice", "storage:write", None, Some(MIB)));
    let blobs: Vec<Vec<u8>> = (0..12).map(|i| seeded(300 + i, 200 * KIB)).collect();
    let uploads = blobs.iter().map(|data| {
        let alice = alice.clone();
        let url = blob_url(&server, &Id::of_content(data));
        let data = data.clone();
        async move {
            alice
                .put(url)
                .body(data)
                .send()
                .await
                .expect("PUT")
                .status()
        }
    });
    let statuses = futures_util::future::join_all(uploads).await;
    let stored = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::PAYLOAD_TOO_LARGE)
        .count();
    // 1 MiB holds five 200 KiB blobs: five succeed, the rest are refused.
    assert_eq!(stored + refused, blobs.len(), "statuses {statuses:?}");
    assert_eq!(stored, 5, "statuses {statuses:?}");
    let used = usage_metric(&server, "alice").await.expect("alice's usage");
    assert_eq!(used, stored as u64 * 200 * 1024);
    assert!(used <= MIB);
    let anonymous = reqwest::Client::new();
    let mut held = 0;
    for data in &blobs {
        if get_status(&anonymous, &server, &Id::of_content(data)).await == StatusCode::OK {
            held += 1;
        }
    }
    assert_eq!(held, stored);
    server.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------
// Fetch: no server-side request forgery
// ---------------------------------------------------------------------------------------

/// A loopback listener that records every connection and request head, answering
/// each request with what `respond` makes of its path.
struct Recorder {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    async fn start(respond: impl Fn(&str) -> String + Send + Sync + 'static) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("recorder address")
        );
        let connections = Arc::new(AtomicUsize::new(0));
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let respond = Arc::new(respond);
        let task = {
            let connections = Arc::clone(&connections);
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let requests = Arc::clone(&requests);
                    let respond = Arc::clone(&respond);
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&head).to_string();
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        requests.lock().expect("requests lock").push(head);
                        let _ = socket.write_all(respond(&path).as_bytes()).await;
                        let _ = socket.shutdown().await;
                    });
                }
            })
        };
        Recorder {
            url,
            connections,
            requests,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The request lines (`GET /id/ HTTP/1.1`) seen so far.
    fn request_lines(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("requests lock")
            .iter()
            .map(|h| h.lines().next().unwrap_or("").to_string())
            .collect()
    }

    fn heads(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A holder server A with one blob, a broker, and a fetching server B.
struct FetchSetup {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    holder: Server,
    broker: FakeBroker,
    fetcher: Server,
    fetcher_client: StorageClient,
    blob: Id,
}

impl FetchSetup {
    async fn start(configure: impl FnOnce(&mut ServerOptions)) -> FetchSetup {
        let holder_dir = tempfile::tempdir().expect("holder dir");
        let holder = launch(holder_dir.path(), StorageConfig::default(), |_| {}).await;
        let blob = StorageClient::new(holder.url())
            .expect("holder client")
            .post(Bytes::from(seeded(77, 5000)))
            .await
            .expect("post to holder");
        let broker = FakeBroker::start().await;
        let fetcher_dir = tempfile::tempdir().expect("fetcher dir");
        let broker_url = broker.url().to_string();
        let fetcher = launch(fetcher_dir.path(), StorageConfig::default(), move |o| {
            o.broker = Some(broker_url);
            configure(o);
        })
        .await;
        let fetcher_client = StorageClient::new(fetcher.url()).expect("fetcher client");
        FetchSetup {
            _dirs: (holder_dir, fetcher_dir),
            holder,
            broker,
            fetcher,
            fetcher_client,
            blob,
        }
    }

    /// Asks the fetcher to copy the blob from `container`; true when it did.
    async fn fetch_from(&self, container: &Id) -> bool {
        self.fetcher_client
            .fetch(&self.blob, container)
            .await
            .expect("fetch call")
    }

    async fn fetcher_holds_blob(&self) -> bool {
        self.fetcher_client
            .has(&self.blob)
            .await
            .expect("has")
            .is_some()
    }

    async fn stop(self) {
        self.fetcher.stop().await.expect("stop fetcher");
        self.holder.stop().await.expect("stop holder");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_checks_the_peers_id_before_transferring() {
    let setup = FetchSetup::start(|o| o.client.token = Some("fetcher-token".into())).await;
    // An impostor registered under the holder's id answers another id.
    let impostor = Recorder::start(|path| {
        if path.starts_with("/id") {
            answer("200 OK", "", &Id::of_content(b"someone else").to_string())
        } else {
            answer("200 OK", "", "anything")
        }
    })
    .await;
    let registered = setup.holder.id();
    setup.broker.register(registered, "storage", &impostor.url);
    assert!(!setup.fetch_from(&registered).await);
    assert!(!setup.fetcher_holds_blob().await);
    assert_eq!(
        impostor.request_lines(),
        vec!["GET /id/ HTTP/1.1".to_string()]
    );
    // The check went out with the fetching server's own token.
    assert!(
        impostor.heads()[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer fetcher-token"),
        "{:?}",
        impostor.heads()
    );

    // The real holder at the same id: copied.
    setup
        .broker
        .register(registered, "storage", setup.holder.url());
    assert!(setup.fetch_from(&registered).await);
    assert!(setup.fetcher_holds_blob().await);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_never_connects_outside_peer_allow() {
    let allow = vec!["127.0.0.128/25".parse().expect("cidr")];
    let setup = FetchSetup::start(move |o| o.peer_allow = allow).await;
    let holder_id = setup.holder.id();
    let port = setup.holder.local_addr().port();
    let listener = Recorder::start(|_| answer("200 OK", "", "")).await;
    let listener_port = listener.url.rsplit(':').next().expect("port").to_string();
    // The real holder's url, an IP literal and a name that resolves to loopback: all
    // outside 127.0.0.128/25.
    for url in [
        setup.holder.url().to_string(),
        listener.url.clone(),
        format!("http://localhost:{listener_port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
    ] {
        setup.broker.register(holder_id, "storage", &url);
        assert!(!setup.fetch_from(&holder_id).await, "fetched through {url}");
    }
    assert!(!setup.fetcher_holds_blob().await);
    assert_eq!(listener.connections(), 0);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_inside_peer_allow_works_by_address_and_by_name() {
    let allow = vec!["127.0.0.0/8".parse().expect("cidr")];
    let setup = FetchSetup::start(move |o| o.peer_allow = allow).await;
    let holder_id = setup.holder.id();
    let port = setup.holder.local_addr().port();
    setup
        .broker
        .register(holder_id, "storage", &format!("http://localhost:{port}"));
    assert!(setup.fetch_from(&holder_id).await);
    assert!(setup.fetcher_holds_blob().await);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_follows_no_redirect() {
    let setup = FetchSetup::start(|_| {}).await;
    let holder_id = setup.holder.id();
    let target = Recorder::start(|_| answer("200 OK", "", "")).await;
    // Answers /id as the holder, then redirects the blob request to `target`.
    let redirecting = {
        let id = holder_id.to_string();
        let target = target.url.clone();
        Recorder::start(move |path| {
            if path.starts_with("/id") {
                answer("200 OK", "", &id)
            } else {
                answer("302 Found", &format!("Location: {target}{path}\r\n"), "")
            }
        })
        .await
    };
    setup
        .broker
        .register(holder_id, "storage", &redirecting.url);
    assert!(!setup.fetch_from(&holder_id).await);
    // A redirect of the id check itself is not followed either.
    let redirecting_id = {
        let target = target.url.clone();
        Recorder::start(move |path| {
            answer(
                "307 Temporary Redirect",
                &format!("Location: {target}{path}\r\n"),
                "",
            )
        })
        .await
    };
    setup
        .broker
        .register(holder_id, "storage", &redirecting_id.url);
    assert!(!setup.fetch_from(&holder_id).await);

    assert!(!setup.fetcher_holds_blob().await);
    assert_eq!(
        redirecting.request_lines().len(),
        2,
        "{:?}",
        redirecting.request_lines()
    );
    assert_eq!(redirecting_id.request_lines().len(), 1);
    assert_eq!(target.connections(), 0);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_contacts_no_url_of_another_scheme() {
    let setup = FetchSetup::start(|_| {}).await;
    let holder_id = setup.holder.id();
    let listener = Recorder::start(|_| answer("200 OK", "", "")).await;
    let authority = listener.url.trim_start_matches("http://").to_string();
    for url in [
        format!("ftp://{authority}"),
        format!("ws://{authority}"),
        format!("gopher://{authority}"),
        "file:///etc/hosts".to_string(),
    ] {
        setup.broker.register(holder_id, "storage", &url);
        assert!(!setup.fetch_from(&holder_id).await, "fetched through {url}");
    }
    assert!(!setup.fetcher_holds_blob().await);
    assert_eq!(listener.connections(), 0);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_is_charged_to_its_caller() {
    let auth = TestAuth::new();
    let holder_dir = tempfile::tempdir().expect("holder dir");
    let holder = launch(holder_dir.path(), StorageConfig::default(), |_| {}).await;
    let holder_client = StorageClient::new(holder.url()).expect("holder client");
    let small = holder_client
        .post(Bytes::from(seeded(400, 100 * KIB)))
        .await
        .expect("post small");
    let large = holder_client
        .post(Bytes::from(seeded(401, 200 * KIB)))
        .await
        .expect("post large");
    let broker = FakeBroker::start().await;
    broker.register(holder.id(), "storage", holder.url());
    let fetcher_dir = tempfile::tempdir().expect("fetcher dir");
    let root = auth.public();
    let broker_url = broker.url().to_string();
    let fetcher = launch(fetcher_dir.path(), StorageConfig::default(), move |o| {
        o.auth.root = Some(root);
        o.broker = Some(broker_url);
    })
    .await;
    let token = auth.token_with("carol", "storage:write", None, Some(150 * KIB as u64));
    let carol = StorageClient::from_endpoint(
        invariant_spec::http::Endpoint::with_client(fetcher.url(), TestAuth::client(&token))
            .expect("endpoint"),
    );
    assert!(
        carol
            .fetch(&small, &holder.id())
            .await
            .expect("fetch small")
    );
    let refused = carol
        .fetch(&large, &holder.id())
        .await
        .expect_err("over quota");
    assert!(refused.to_string().contains("413"), "{refused}");
    assert_eq!(carol.has(&large).await.expect("has"), None);
    assert_eq!(
        usage_metric(&fetcher, "carol").await,
        Some(100 * KIB as u64)
    );
    fetcher.stop().await.expect("stop fetcher");
    holder.stop().await.expect("stop holder");
    drop(broker);
}
