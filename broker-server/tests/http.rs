//! In-process HTTP tests of the broker: every route and error path, resolution against
//! real storage servers, liveness dropping, and restart persistence.
//!
//! Each test starts its own broker on `127.0.0.1:0` over a fresh temporary data
//! directory. Success paths go through the typed [`BrokerClient`]; status codes,
//! headers and error answers are checked with raw `reqwest`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use broker_server::{BrokerConfig, LivenessConfig};
use bytes::Bytes;
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::broker::{KINDS, Registration};
use invariant_spec::{BrokerClient, Id};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Liveness settings under which no check happens during a test.
fn quiet() -> LivenessConfig {
    LivenessConfig {
        interval: Duration::from_secs(3600),
        jitter: Duration::ZERO,
        ..LivenessConfig::default()
    }
}

/// Fast liveness settings: rounds every ~100 ms, dropped after 3 failures.
fn fast() -> LivenessConfig {
    LivenessConfig {
        interval: Duration::from_millis(100),
        jitter: Duration::from_millis(20),
        failure_threshold: 3,
        check_timeout: Duration::from_secs(5),
        max_concurrent_checks: 4,
    }
}

async fn launch_broker(data_dir: &Path, liveness: LivenessConfig) -> Server {
    let ctx = ServerContext::prepare(ServerOptions::ephemeral(Role::Broker, data_dir))
        .expect("prepare broker context");
    broker_server::start(&ctx, BrokerConfig { liveness })
        .await
        .expect("start broker")
}

/// A running broker with its data directory, a typed client and a raw client.
struct TestBroker {
    _dir: TempDir,
    server: Server,
    client: BrokerClient,
    http: reqwest::Client,
}

impl TestBroker {
    async fn start(liveness: LivenessConfig) -> TestBroker {
        let dir = tempfile::tempdir().expect("create temp data dir");
        let server = launch_broker(dir.path(), liveness).await;
        let client = BrokerClient::new(server.url()).expect("broker client");
        TestBroker {
            _dir: dir,
            server,
            client,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    async fn stop(self) {
        self.server.stop().await.expect("stop broker");
    }
}

/// A real storage server in its own temp dir.
struct Storage {
    _dir: TempDir,
    server: Server,
}

async fn start_storage() -> Storage {
    let dir = tempfile::tempdir().expect("storage temp dir");
    let ctx = ServerContext::prepare(ServerOptions::ephemeral(Role::Storage, dir.path()))
        .expect("prepare storage context");
    let server = storage_server::start(&ctx, Default::default())
        .await
        .expect("start storage server");
    Storage { _dir: dir, server }
}

/// A loopback url on which nothing listens (the port was bound, then released).
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", listener.local_addr().expect("addr"))
}

fn registration(id: Id, urls: &[&str], kind: &str) -> Registration {
    Registration {
        id,
        urls: urls.iter().map(|u| u.to_string()).collect(),
        url: None,
        kind: kind.to_string(),
    }
}

fn id_of(seed: &[u8]) -> Id {
    Id::of_content(seed)
}

/// Checks a plain-text error answer: its status and a non-empty reason.
async fn assert_plain_error(response: reqwest::Response, status: StatusCode, what: &str) {
    assert_eq!(response.status(), status, "{what}");
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "{what}: {content_type}"
    );
    let reason = response.text().await.expect("error body");
    assert!(!reason.trim().is_empty(), "{what}: empty reason");
}

/// Polls `condition` every 25 ms until it holds; panics after `limit` (a liveness
/// deadline, not a speed assertion: it is many rounds longer than needed).
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn is_registered(client: &BrokerClient, id: &Id) -> bool {
    client.location(id).await.expect("location").is_some()
}

// ---------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn register_then_locate_and_list() {
    let b = TestBroker::start(quiet()).await;
    let a = id_of(b"a");
    let answer = b
        .client
        .register(&registration(
            a,
            &["http://127.0.0.1:1/", "http://127.0.0.1:2"],
            "storage",
        ))
        .await
        .expect("register");
    assert_eq!(answer.id, b.server.id());
    assert_eq!(answer.salt, None);

    let location = b
        .client
        .location(&a)
        .await
        .expect("location")
        .expect("known");
    assert_eq!(location.id, a);
    assert_eq!(
        location.urls,
        vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]
    );
    assert_eq!(location.url.as_deref(), Some("http://127.0.0.1:1"));

    // Raw: both url forms are emitted, JSON content type, uppercase id accepted.
    let response = b
        .http
        .get(b.url(&format!(
            "/broker/location/{}/",
            a.to_string().to_uppercase()
        )))
        .send()
        .await
        .expect("GET location");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[CONTENT_TYPE].to_str().expect("ascii");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let json: serde_json::Value = response.json().await.expect("location JSON");
    assert_eq!(json["id"], a.to_string());
    assert_eq!(json["url"], "http://127.0.0.1:1");
    assert_eq!(
        json["urls"],
        serde_json::json!(["http://127.0.0.1:1", "http://127.0.0.1:2"])
    );

    assert_eq!(b.client.registered("storage").await.expect("list"), vec![a]);
    assert!(b.client.registered("slots").await.expect("list").is_empty());

    let response = b
        .http
        .get(b.url("/broker/servers/storage/"))
        .send()
        .await
        .expect("GET servers");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[CONTENT_TYPE].to_str().expect("ascii");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(response.text().await.expect("text"), format!("{a}\n"));

    let response = b
        .http
        .get(b.url("/broker/servers/find"))
        .send()
        .await
        .expect("GET servers, none");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("text"), "");

    // The broker's own id, as /id/ reports it.
    let response = b.http.get(b.url("/id/")).send().await.expect("GET /id/");
    assert_eq!(
        response.text().await.expect("id").trim(),
        b.server.id().to_string()
    );
    b.stop().await;
}

#[tokio::test]
async fn both_url_forms_are_accepted() {
    let b = TestBroker::start(quiet()).await;
    let single = id_of(b"single");
    let both = id_of(b"both");
    let response = b
        .http
        .post(b.url("/broker/register/"))
        .json(&serde_json::json!({
            "id": single,
            "url": "http://127.0.0.1:7001",
            "kind": "slots",
        }))
        .send()
        .await
        .expect("register, url form");
    assert_eq!(response.status(), StatusCode::OK);
    let json: serde_json::Value = response.json().await.expect("register answer");
    assert_eq!(json["id"], b.server.id().to_string());

    let response = b
        .http
        .post(b.url("/broker/register"))
        .json(&serde_json::json!({
            "id": both,
            "urls": ["http://127.0.0.1:7002", "http://127.0.0.1:7003"],
            "url": "http://127.0.0.1:7004/",
            "kind": "slots",
        }))
        .send()
        .await
        .expect("register, both forms");
    assert_eq!(response.status(), StatusCode::OK);

    let location = b
        .client
        .location(&single)
        .await
        .expect("location")
        .expect("known");
    assert_eq!(location.urls, vec!["http://127.0.0.1:7001"]);
    assert_eq!(location.url.as_deref(), Some("http://127.0.0.1:7001"));
    let location = b
        .client
        .location(&both)
        .await
        .expect("location")
        .expect("known");
    assert_eq!(
        location.urls,
        vec![
            "http://127.0.0.1:7002",
            "http://127.0.0.1:7003",
            "http://127.0.0.1:7004"
        ]
    );
    let mut expected = vec![single, both];
    expected.sort();
    assert_eq!(b.client.registered("slots").await.expect("list"), expected);
    b.stop().await;
}

#[tokio::test]
async fn re_registration_replaces_urls_and_kind() {
    let b = TestBroker::start(quiet()).await;
    let a = id_of(b"a");
    let other = id_of(b"other");
    b.client
        .register(&registration(
            a,
            &["http://127.0.0.1:1", "http://127.0.0.1:2"],
            "storage",
        ))
        .await
        .expect("first registration");
    b.client
        .register(&registration(other, &["http://127.0.0.1:3"], "storage"))
        .await
        .expect("other registration");
    b.client
        .register(&registration(a, &["http://127.0.0.1:9"], "names"))
        .await
        .expect("re-registration");

    let location = b
        .client
        .location(&a)
        .await
        .expect("location")
        .expect("known");
    assert_eq!(location.urls, vec!["http://127.0.0.1:9"]);
    assert_eq!(location.url.as_deref(), Some("http://127.0.0.1:9"));
    assert_eq!(
        b.client.registered("storage").await.expect("list"),
        vec![other]
    );
    assert_eq!(b.client.registered("names").await.expect("list"), vec![a]);

    // Same kind, new urls.
    b.client
        .register(&registration(a, &["https://127.0.0.1:10"], "names"))
        .await
        .expect("re-registration, same kind");
    let location = b
        .client
        .location(&a)
        .await
        .expect("location")
        .expect("known");
    assert_eq!(location.urls, vec!["https://127.0.0.1:10"]);
    assert_eq!(b.client.registered("names").await.expect("list"), vec![a]);
    b.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_plain_400() {
    let b = TestBroker::start(quiet()).await;
    let id = id_of(b"x").to_string();
    let bodies = [
        ("not JSON", "not json".to_string()),
        ("truncated JSON", format!(r#"{{"id":"{id}","urls":["#)),
        ("empty object", "{}".to_string()),
        ("JSON array", "[]".to_string()),
        (
            "bad id hex",
            r#"{"id":"zz","urls":["http://127.0.0.1:1"],"kind":"storage"}"#.to_string(),
        ),
        (
            "short id",
            r#"{"id":"abcd","urls":["http://127.0.0.1:1"],"kind":"storage"}"#.to_string(),
        ),
        (
            "missing id",
            r#"{"urls":["http://127.0.0.1:1"],"kind":"storage"}"#.to_string(),
        ),
        (
            "missing kind",
            format!(r#"{{"id":"{id}","urls":["http://127.0.0.1:1"]}}"#),
        ),
        (
            "unknown kind",
            format!(r#"{{"id":"{id}","urls":["http://127.0.0.1:1"],"kind":"bogus"}}"#),
        ),
        ("no url", format!(r#"{{"id":"{id}","kind":"storage"}}"#)),
        (
            "empty urls",
            format!(r#"{{"id":"{id}","urls":[],"kind":"storage"}}"#),
        ),
        (
            "urls not an array",
            format!(r#"{{"id":"{id}","urls":"http://127.0.0.1:1","kind":"storage"}}"#),
        ),
        (
            "not http",
            format!(r#"{{"id":"{id}","url":"ftp://127.0.0.1:1","kind":"storage"}}"#),
        ),
        (
            "not a url",
            format!(r#"{{"id":"{id}","url":"somewhere","kind":"storage"}}"#),
        ),
        (
            "one bad url among good ones",
            format!(
                r#"{{"id":"{id}","urls":["http://127.0.0.1:1","file:///etc"],"kind":"storage"}}"#
            ),
        ),
    ];
    for (what, body) in bodies {
        let response = b
            .http
            .post(b.url("/broker/register"))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("POST register");
        assert_plain_error(response, StatusCode::BAD_REQUEST, what).await;
    }
    // Nothing was stored by any refused registration.
    assert!(
        b.client
            .location(&id_of(b"x"))
            .await
            .expect("location")
            .is_none()
    );
    for kind in KINDS {
        assert!(
            b.client.registered(kind).await.expect("list").is_empty(),
            "{kind}"
        );
    }
    // The typed client reports the 400 too.
    let err = b
        .client
        .register(&registration(id_of(b"x"), &[], "storage"))
        .await
        .expect_err("no url");
    assert_eq!(err.status(), Some(400));

    for path in [
        "/broker/location/xyz",
        "/broker/location/0123",
        &format!("/broker/location/{}g", &id[..63]),
        &format!("/broker/location/{id}0"),
        "/broker/registered/bogus",
        "/broker/registered/Storage",
        "/broker/servers/bogus",
    ] {
        let response = b.http.get(b.url(path)).send().await.expect("GET");
        assert_plain_error(response, StatusCode::BAD_REQUEST, path).await;
    }
    let err = b.client.registered("nope").await.expect_err("unknown kind");
    assert_eq!(err.status(), Some(400));
    b.stop().await;
}

#[tokio::test]
async fn unknown_id_is_404() {
    let b = TestBroker::start(quiet()).await;
    let unknown = id_of(b"never registered");
    let response = b
        .http
        .get(b.url(&format!("/broker/location/{unknown}")))
        .send()
        .await
        .expect("GET location");
    assert_plain_error(response, StatusCode::NOT_FOUND, "unknown id").await;
    assert_eq!(b.client.location(&unknown).await.expect("location"), None);
    assert_eq!(b.client.resolve(&unknown).await.expect("resolve"), None);
    b.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let b = TestBroker::start(quiet()).await;
    for path in ["/broker", "/broker/nope", "/broker/location", "/nope"] {
        let response = b.http.get(b.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let response = b
        .http
        .get(b.url("/broker/register"))
        .send()
        .await
        .expect("GET register");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let response = b
        .http
        .delete(b.url(&format!("/broker/location/{}", id_of(b"a"))))
        .send()
        .await
        .expect("DELETE location");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_stay_consistent() {
    let b = TestBroker::start(quiet()).await;
    let ids: Vec<Id> = (0..8u8).map(|i| id_of(&[i])).collect();
    let mut rng = StdRng::seed_from_u64(42);
    let mut attempts: BTreeMap<Id, Vec<(String, &str)>> = BTreeMap::new();
    let mut tasks = Vec::new();
    for n in 0..64u32 {
        let id = ids[rng.random_range(0..ids.len())];
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        let url = format!("http://127.0.0.1:{}", 1000 + n);
        attempts.entry(id).or_default().push((url.clone(), kind));
        let client = b.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .register(&registration(id, &[&url], kind))
                .await
                .expect("concurrent register");
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }

    // Each id holds exactly one of the registrations sent for it, and is listed under
    // exactly the kind of that registration.
    let mut listed: BTreeMap<Id, Vec<&str>> = BTreeMap::new();
    for kind in KINDS {
        for id in b.client.registered(kind).await.expect("list") {
            listed.entry(id).or_default().push(kind);
        }
    }
    assert_eq!(
        listed.keys().copied().collect::<BTreeSet<_>>(),
        attempts.keys().copied().collect::<BTreeSet<_>>()
    );
    for (id, sent) in &attempts {
        let location = b
            .client
            .location(id)
            .await
            .expect("location")
            .expect("known");
        let (_, winner_kind) = sent
            .iter()
            .find(|(url, _)| location.urls == [url.clone()])
            .expect("the stored urls are one of those sent");
        assert_eq!(listed[id], vec![*winner_kind], "{id}");
    }
    b.stop().await;
}

// ---------------------------------------------------------------------------------------
// Resolution against real storage servers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resolve_finds_a_url_answering_with_the_id() {
    let b = TestBroker::start(quiet()).await;
    let s1 = start_storage().await;
    let s2 = start_storage().await;
    let dead = dead_url();

    // s1: a dead url first, then its real one.
    b.client
        .register(&registration(
            s1.server.id(),
            &[&dead, s1.server.url()],
            "storage",
        ))
        .await
        .expect("register s1");
    b.client
        .register(&registration(s2.server.id(), &[s2.server.url()], "storage"))
        .await
        .expect("register s2");
    // An id whose only url is a server with another id.
    let impostor = id_of(b"impostor");
    b.client
        .register(&registration(impostor, &[s1.server.url()], "storage"))
        .await
        .expect("register impostor");

    assert_eq!(
        b.client.resolve(&s1.server.id()).await.expect("resolve s1"),
        Some(s1.server.url().to_string())
    );
    assert_eq!(
        b.client.resolve(&s2.server.id()).await.expect("resolve s2"),
        Some(s2.server.url().to_string())
    );
    assert_eq!(
        b.client.resolve(&impostor).await.expect("resolve impostor"),
        None
    );
    assert_eq!(
        b.client.resolve(&id_of(b"nobody")).await.expect("resolve"),
        None
    );

    // A storage client obtained through the broker reaches the right server.
    let storage = b
        .client
        .storage(&s2.server.id())
        .await
        .expect("storage client")
        .expect("s2 reachable");
    let data = Bytes::from_static(b"through the broker");
    let address = storage.put_bytes(data.clone()).await.expect("put");
    let direct = invariant_spec::StorageClient::new(s2.server.url()).expect("client");
    assert_eq!(direct.get_bytes(&address).await.expect("get"), Some(data));
    assert!(
        b.client
            .storage(&impostor)
            .await
            .expect("storage")
            .is_none()
    );

    b.stop().await;
    s1.server.stop().await.expect("stop s1");
    s2.server.stop().await.expect("stop s2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_server_started_with_a_broker_registers_itself() {
    let b = TestBroker::start(fast()).await;
    let dir = tempfile::tempdir().expect("storage temp dir");
    let mut options = ServerOptions::ephemeral(Role::Storage, dir.path());
    options.broker = Some(b.server.url().to_string());
    let ctx = ServerContext::prepare(options).expect("prepare storage context");
    let storage = storage_server::start(&ctx, Default::default())
        .await
        .expect("start storage server");
    let id = storage.id();
    let client = &b.client;
    wait_until(
        Duration::from_secs(20),
        "storage registered",
        || async move { client.registered("storage").await.expect("list") == vec![id] },
    )
    .await;
    assert_eq!(
        b.client.resolve(&id).await.expect("resolve"),
        Some(storage.url().to_string())
    );
    storage.stop().await.expect("stop storage");
    b.stop().await;
}

// ---------------------------------------------------------------------------------------
// Liveness
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn liveness_drops_only_servers_that_stop_answering() {
    let b = TestBroker::start(fast()).await;
    let live1 = start_storage().await;
    let live2 = start_storage().await;
    let dead = dead_url();

    // live1 has a dead url before its real one: one answering url is enough.
    b.client
        .register(&registration(
            live1.server.id(),
            &[&dead, live1.server.url()],
            "storage",
        ))
        .await
        .expect("register live1");
    b.client
        .register(&registration(
            live2.server.id(),
            &[live2.server.url()],
            "storage",
        ))
        .await
        .expect("register live2");
    let silent = id_of(b"nothing listens");
    b.client
        .register(&registration(silent, &[&dead], "storage"))
        .await
        .expect("register silent");
    let impostor = id_of(b"answers with another id");
    b.client
        .register(&registration(impostor, &[live2.server.url()], "files"))
        .await
        .expect("register impostor");

    let limit = Duration::from_secs(20);
    let client = &b.client;
    wait_until(limit, "bad servers dropped", || async move {
        !is_registered(client, &silent).await && !is_registered(client, &impostor).await
    })
    .await;
    // Dropping took at least three rounds; the live servers passed all of them.
    assert!(is_registered(&b.client, &live1.server.id()).await);
    assert!(is_registered(&b.client, &live2.server.id()).await);
    let mut live = vec![live1.server.id(), live2.server.id()];
    live.sort();
    assert_eq!(b.client.registered("storage").await.expect("list"), live);
    assert!(b.client.registered("files").await.expect("list").is_empty());

    // A server that stops is dropped; the other stays.
    let stopped = live2.server.id();
    live2.server.stop().await.expect("stop live2");
    wait_until(limit, "stopped server dropped", || async move {
        !is_registered(client, &stopped).await
    })
    .await;
    assert_eq!(
        b.client.registered("storage").await.expect("list"),
        vec![live1.server.id()]
    );
    b.stop().await;
    live1.server.stop().await.expect("stop live1");
}

// ---------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_registrations_and_resumes_checking() {
    let dir = tempfile::tempdir().expect("broker temp dir");
    let live = start_storage().await;
    let silent = id_of(b"gone before the restart");
    let dead = dead_url();
    let other = id_of(b"a slots server");

    let broker = launch_broker(dir.path(), quiet()).await;
    let broker_id = broker.id();
    let client = BrokerClient::new(broker.url()).expect("client");
    client
        .register(&registration(
            live.server.id(),
            &[live.server.url()],
            "storage",
        ))
        .await
        .expect("register live");
    client
        .register(&registration(silent, &[&dead], "storage"))
        .await
        .expect("register silent");
    client
        .register(&Registration {
            id: other,
            urls: vec![],
            url: Some("http://127.0.0.1:4444".to_string()),
            kind: "slots".to_string(),
        })
        .await
        .expect("register other");
    broker.stop().await.expect("stop broker");

    // Same data dir, no checks: everything is served as before.
    let broker = launch_broker(dir.path(), quiet()).await;
    assert_eq!(broker.id(), broker_id);
    let client = BrokerClient::new(broker.url()).expect("client");
    let location = client
        .location(&other)
        .await
        .expect("location")
        .expect("kept");
    assert_eq!(location.urls, vec!["http://127.0.0.1:4444"]);
    let mut storage = vec![live.server.id(), silent];
    storage.sort();
    assert_eq!(client.registered("storage").await.expect("list"), storage);
    assert_eq!(client.registered("slots").await.expect("list"), vec![other]);
    broker.stop().await.expect("stop broker");

    // Restarted with checks on: the silent server is dropped, the rest kept.
    let broker = launch_broker(dir.path(), fast()).await;
    let client = BrokerClient::new(broker.url()).expect("client");
    let checked = &client;
    wait_until(
        Duration::from_secs(20),
        "silent server dropped",
        || async move { !is_registered(checked, &silent).await },
    )
    .await;
    assert!(is_registered(&client, &live.server.id()).await);
    broker.stop().await.expect("stop broker");

    // And the drop itself was persisted.
    let broker = launch_broker(dir.path(), quiet()).await;
    let client = BrokerClient::new(broker.url()).expect("client");
    assert_eq!(
        client.registered("storage").await.expect("list"),
        vec![live.server.id()]
    );
    assert!(!is_registered(&client, &silent).await);
    broker.stop().await.expect("stop broker");
    live.server.stop().await.expect("stop storage");
}
