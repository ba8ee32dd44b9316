//! In-process HTTP tests of the find server: every route and error path, forwarding
//! between three find servers, lookups, aging and restarts.
//!
//! Servers run on `127.0.0.1:0` over temporary data directories. A small fake broker
//! (register, location, registered) stands in for the broker role; storage servers are
//! the real `storage_server` crate or small fakes. Waits for background work poll with
//! a generous deadline; nothing asserts on speed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path as AxumPath;
use axum::http::{StatusCode as AxumStatus, header};
use axum::response::IntoResponse;
use find_server::FindConfig;
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::find::{AggregateReader, FindAnswer, LookupOptions, lookup};
use invariant_spec::{FindClient, Id, StorageClient};
use invariant_test_support::{FakeBroker, eventually, spawn_app};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;
use storage_server::StorageConfig;
use tempfile::TempDir;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Settings for tests: fast peer discovery and forwarding, no aging unless asked.
fn quick_config() -> FindConfig {
    FindConfig {
        record_ttl: Duration::from_secs(3600),
        check_interval: Duration::from_secs(3600),
        check_sample: 64,
        check_failures: 1,
        peer_refresh: Duration::from_millis(100),
        peer_failures: 1,
        forward_delay: Duration::from_millis(20),
        forward_fanout: 3,
    }
}

/// Settings with a fast aging pass.
fn aging_config() -> FindConfig {
    FindConfig {
        check_interval: Duration::from_millis(100),
        ..quick_config()
    }
}

struct TestFind {
    dir: TempDir,
    server: Server,
    client: FindClient,
    http: reqwest::Client,
    broker: Option<String>,
}

impl TestFind {
    async fn start(config: FindConfig, broker: Option<&str>) -> TestFind {
        let dir = tempfile::tempdir().expect("create temp data dir");
        TestFind::start_in(dir, config, broker.map(str::to_string)).await
    }

    async fn start_in(dir: TempDir, config: FindConfig, broker: Option<String>) -> TestFind {
        let server = launch_find(dir.path(), config, broker.clone()).await;
        let client = FindClient::new(server.url()).expect("find client");
        TestFind {
            dir,
            server,
            client,
            http: reqwest::Client::new(),
            broker,
        }
    }

    /// Stops the server and starts it again over the same data directory.
    async fn restart(self, config: FindConfig) -> TestFind {
        let TestFind {
            dir,
            server,
            broker,
            ..
        } = self;
        server.stop().await.expect("stop find server");
        TestFind::start_in(dir, config, broker).await
    }

    fn id(&self) -> Id {
        self.server.id()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    async fn answers(&self, id: &Id) -> Vec<FindAnswer> {
        self.client.find(id).await.expect("GET /find/:id")
    }

    async fn holders(&self, id: &Id) -> Vec<Id> {
        holders(&self.answers(id).await)
    }

    async fn knows_peer(&self, peer: &Id) -> bool {
        self.answers(peer)
            .await
            .contains(&FindAnswer::Closer(*peer))
    }
}

async fn launch_find(data_dir: &Path, config: FindConfig, broker: Option<String>) -> Server {
    let mut options = ServerOptions::ephemeral(Role::Find, data_dir);
    options.broker = broker;
    let ctx = ServerContext::prepare(options).expect("prepare find context");
    find_server::start(&ctx, config)
        .await
        .expect("start find server")
}

async fn launch_storage(data_dir: &Path, broker: Option<String>, find: Vec<String>) -> Server {
    let mut options = ServerOptions::ephemeral(Role::Storage, data_dir);
    options.broker = broker;
    let ctx = ServerContext::prepare(options).expect("prepare storage context");
    let config = StorageConfig {
        find,
        ..StorageConfig::default()
    };
    storage_server::start(&ctx, config)
        .await
        .expect("start storage server")
}

fn holders(answers: &[FindAnswer]) -> Vec<Id> {
    answers
        .iter()
        .filter_map(|a| match a {
            FindAnswer::Has(c) => Some(*c),
            FindAnswer::Closer(_) => None,
        })
        .collect()
}

fn closers(answers: &[FindAnswer]) -> Vec<Id> {
    answers
        .iter()
        .filter_map(|a| match a {
            FindAnswer::Closer(f) => Some(*f),
            FindAnswer::Has(_) => None,
        })
        .collect()
}

/// A storage server that answers `/id` and `HEAD /storage/:id` (200 for `held`, else
/// 404) and nothing else.
async fn spawn_fake_storage(id: Id, held: HashSet<Id>) -> (String, JoinHandle<()>) {
    let held = Arc::new(held);
    let id_text = id.to_string();
    let router = axum::Router::new()
        .route(
            "/id",
            axum::routing::get({
                let id_text = id_text.clone();
                move || async move { id_text }
            }),
        )
        .route("/id/", axum::routing::get(move || async move { id_text }))
        .route(
            "/storage/{address}",
            axum::routing::head(move |AxumPath(address): AxumPath<String>| {
                let held = Arc::clone(&held);
                async move {
                    match Id::parse(&address) {
                        Ok(a) if held.contains(&a) => {
                            (AxumStatus::OK, [(header::CONTENT_LENGTH, "1")]).into_response()
                        }
                        _ => AxumStatus::NOT_FOUND.into_response(),
                    }
                }
            }),
        );
    spawn_app(router).await
}

fn seeded_ids(seed: u64, count: usize) -> Vec<Id> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            Id::from_bytes(bytes)
        })
        .collect()
}

fn seeded_blob(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

/// Three find servers registered with `broker`, once each knows the other two.
async fn three_find_servers(broker: &FakeBroker) -> Vec<TestFind> {
    let mut finds = Vec::new();
    for _ in 0..3 {
        finds.push(TestFind::start(quick_config(), Some(broker.url())).await);
    }
    for a in &finds {
        for b in &finds {
            if a.id() != b.id() {
                eventually("find servers know each other", || async {
                    a.knows_peer(&b.id()).await
                })
                .await;
            }
        }
    }
    finds
}

async fn text(response: reqwest::Response) -> String {
    response.text().await.expect("response body")
}

/// Asserts a plain-text error answer with `status` and a non-empty reason.
async fn assert_plain_error(response: reqwest::Response, status: StatusCode, what: &str) {
    assert_eq!(response.status(), status, "{what}: status");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "{what}: content type {content_type:?}"
    );
    let reason = text(response).await;
    assert!(!reason.trim().is_empty(), "{what}: empty reason");
}

// ---------------------------------------------------------------------------------------
// GET /find/:id
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_id_answers_empty_text() {
    let find = TestFind::start(quick_config(), None).await;
    let id = Id::of_content(b"nobody has this");
    let response = find
        .http
        .get(find.url(&format!("/find/{id}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert_eq!(text(response).await, "");
    assert!(find.answers(&id).await.is_empty());
}

#[tokio::test]
async fn has_reports_become_has_lines() {
    let find = TestFind::start(quick_config(), None).await;
    let ids = seeded_ids(1, 5);
    let (c1, c2) = (
        Id::of_content(b"container 1"),
        Id::of_content(b"container 2"),
    );

    find.client.has(&c1, &ids).await.expect("has c1");
    // Repeating a report refreshes, it does not duplicate.
    find.client.has(&c1, &ids[..2]).await.expect("has c1 again");
    // The docs' `items` form, raw, with uppercase hex and a trailing slash.
    let body = serde_json::json!({
        "container": c2.to_string().to_uppercase(),
        "items": [ids[0].to_string()],
    });
    let response = find
        .http
        .put(find.url("/find/has/"))
        .json(&body)
        .send()
        .await
        .expect("PUT has");
    assert_eq!(response.status(), StatusCode::OK);

    let mut first = find.holders(&ids[0]).await;
    first.sort();
    let mut expected = vec![c1, c2];
    expected.sort();
    assert_eq!(first, expected);
    for id in &ids[1..] {
        assert_eq!(find.holders(id).await, vec![c1]);
    }

    // Raw form: one `HAS <id>` line each, lowercase, newline-terminated.
    let raw = text(
        find.http
            .get(find.url(&format!("/find/{}", ids[1].to_string().to_uppercase())))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(raw, format!("HAS {c1}\n"));

    // POST is accepted too, and an empty report is a no-op.
    let response = find
        .http
        .post(find.url("/find/has"))
        .json(&serde_json::json!({"container": c2, "ids": []}))
        .send()
        .await
        .expect("POST has");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(find.holders(&ids[1]).await, vec![c1]);
}

#[tokio::test]
async fn gone_reports_remove_exactly_their_records() {
    let find = TestFind::start(quick_config(), None).await;
    let ids = seeded_ids(7, 4);
    let (c1, c2) = (Id::of_content(b"gone 1"), Id::of_content(b"gone 2"));
    find.client.has(&c1, &ids).await.expect("has c1");
    find.client.has(&c2, &ids[..1]).await.expect("has c2");

    find.client.gone(&c1, &ids[..2]).await.expect("gone c1");
    // Only c1's records of the two reported blocks go; c2's record of ids[0] stays.
    assert_eq!(find.holders(&ids[0]).await, vec![c2]);
    assert!(find.holders(&ids[1]).await.is_empty());
    assert_eq!(find.holders(&ids[2]).await, vec![c1]);
    // A gone report of records never made is a no-op, as is an empty one; POST works.
    for (method, body) in [
        (
            reqwest::Method::PUT,
            serde_json::json!({"container": c2, "ids": [ids[3]]}),
        ),
        (
            reqwest::Method::POST,
            serde_json::json!({"container": c2, "items": []}),
        ),
    ] {
        let response = find
            .http
            .request(method, find.url("/find/gone/"))
            .json(&body)
            .send()
            .await
            .expect("gone");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(find.holders(&ids[3]).await, vec![c1]);
    // Malformed: 400, nothing removed.
    let response = find
        .http
        .put(find.url("/find/gone/"))
        .json(&serde_json::json!({"container": c1, "ids": [ids[2].to_string(), "zz"]}))
        .send()
        .await
        .expect("gone malformed");
    assert_plain_error(response, StatusCode::BAD_REQUEST, "malformed gone").await;
    assert_eq!(find.holders(&ids[2]).await, vec![c1]);
}

#[tokio::test]
async fn gone_reports_are_forwarded_to_nearer_find_servers() {
    let broker = FakeBroker::start().await;
    let finds = three_find_servers(&broker).await;
    // Blocks nearer to another find server than to the one reported to.
    let first = &finds[0];
    let ids: Vec<Id> = seeded_ids(11, 64)
        .into_iter()
        .filter(|id| {
            finds
                .iter()
                .min_by_key(|f| id.distance(&f.id()))
                .is_some_and(|nearest| nearest.id() != first.id())
        })
        .take(4)
        .collect();
    assert_eq!(ids.len(), 4, "seeded ids cover the other servers");
    let container = Id::of_content(b"forwarded container");
    first.client.has(&container, &ids).await.expect("has");
    for id in &ids {
        let nearest = finds
            .iter()
            .min_by_key(|f| id.distance(&f.id()))
            .expect("three servers");
        eventually("the record is forwarded", || async {
            nearest.holders(id).await == vec![container]
        })
        .await;
    }
    first.client.gone(&container, &ids).await.expect("gone");
    for id in &ids {
        let nearest = finds
            .iter()
            .min_by_key(|f| id.distance(&f.id()))
            .expect("three servers");
        eventually("the removal is forwarded", || async {
            nearest.holders(id).await.is_empty()
        })
        .await;
    }
}

#[tokio::test]
async fn most_recently_seen_holder_comes_first() {
    let find = TestFind::start(quick_config(), None).await;
    let id = Id::of_content(b"block");
    let (old, new) = (Id::of_content(b"old"), Id::of_content(b"new"));
    find.client.has(&old, &[id]).await.expect("has old");
    // Millisecond timestamps: make sure the second report is later.
    tokio::time::sleep(Duration::from_millis(5)).await;
    find.client.has(&new, &[id]).await.expect("has new");
    assert_eq!(find.holders(&id).await, vec![new, old]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    find.client.has(&old, &[id]).await.expect("refresh old");
    assert_eq!(find.holders(&id).await, vec![old, new]);
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_paths_are_400() {
    let find = TestFind::start(quick_config(), None).await;
    let good = Id::of_content(b"x").to_string();
    let cases = [
        "zz".to_string(),
        good[..63].to_string(),
        format!("{good}0"),
        format!("{}g", &good[..63]),
    ];
    for case in cases {
        let response = find
            .http
            .get(find.url(&format!("/find/{case}")))
            .send()
            .await
            .expect("GET");
        assert_plain_error(response, StatusCode::BAD_REQUEST, &case).await;
    }
}

#[tokio::test]
async fn malformed_bodies_are_400_and_change_nothing() {
    let find = TestFind::start(quick_config(), None).await;
    let container = Id::of_content(b"container");
    let good = Id::of_content(b"good block");
    let c = container.to_string();
    let g = good.to_string();
    let bodies = [
        (
            "truncated JSON",
            format!(r#"{{"container":"{c}","ids":["{g}""#),
        ),
        (
            "bad id among good",
            format!(r#"{{"container":"{c}","ids":["{g}","xyz"]}}"#),
        ),
        (
            "short id",
            format!(r#"{{"container":"{c}","ids":["{}"]}}"#, &g[..60]),
        ),
        (
            "bad container",
            format!(r#"{{"container":"nope","ids":["{g}"]}}"#),
        ),
        ("missing container", format!(r#"{{"ids":["{g}"]}}"#)),
        ("missing ids", format!(r#"{{"container":"{c}"}}"#)),
        (
            "ids and items",
            format!(r#"{{"container":"{c}","ids":["{g}"],"items":["{g}"]}}"#),
        ),
        (
            "ids not a list",
            format!(r#"{{"container":"{c}","ids":"{g}"}}"#),
        ),
        ("not an object", format!(r#"["{c}"]"#)),
        ("empty body", String::new()),
    ];
    for (what, body) in bodies {
        let response = find
            .http
            .put(find.url("/find/has"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("PUT has");
        assert_plain_error(response, StatusCode::BAD_REQUEST, what).await;
    }

    // Over the JSON limit: 413, nothing recorded either.
    let many: Vec<String> = (0..20_000).map(|_| g.clone()).collect();
    let response = find
        .http
        .put(find.url("/find/has"))
        .json(&serde_json::json!({"container": c, "ids": many}))
        .send()
        .await
        .expect("PUT huge");
    assert_plain_error(response, StatusCode::PAYLOAD_TOO_LARGE, "huge body").await;

    let notify_bodies = [
        ("truncated", r#"{"find":"#.to_string()),
        ("bad id", r#"{"find":"abc"}"#.to_string()),
        ("missing", "{}".to_string()),
    ];
    for (what, body) in notify_bodies {
        let response = find
            .http
            .put(find.url("/find/notify"))
            .body(body)
            .send()
            .await
            .expect("PUT notify");
        assert_plain_error(response, StatusCode::BAD_REQUEST, what).await;
    }

    // Nothing was applied: no holder of the good block, no peer learned.
    assert!(find.answers(&good).await.is_empty());
    assert!(find.answers(&container).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// PUT /find/notify
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn notify_without_a_broker_adds_the_peer() {
    let find = TestFind::start(quick_config(), None).await;
    let peer = Id::of_content(b"peer");
    find.client.notify(&peer).await.expect("notify");
    assert!(find.knows_peer(&peer).await);
    // Notifying a server of itself changes nothing.
    find.client.notify(&find.id()).await.expect("notify self");
    assert!(closers(&find.answers(&find.id()).await).is_empty());
    // A peer is only given as CLOSER for ids it is nearer to than this server.
    let ids = seeded_ids(2, 64);
    for id in ids {
        let listed = closers(&find.answers(&id).await).contains(&peer);
        let nearer = id.distance(&peer) < id.distance(&find.id());
        assert_eq!(listed, nearer, "{id}");
    }
}

#[tokio::test]
async fn notify_with_a_broker_requires_resolution() {
    let broker = FakeBroker::start().await;
    let find = TestFind::start(quick_config(), Some(broker.url())).await;

    // Unknown to the broker: 404, not added.
    let stranger = Id::of_content(b"stranger");
    let response = find
        .http
        .put(find.url("/find/notify"))
        .json(&serde_json::json!({ "find": stranger }))
        .send()
        .await
        .expect("PUT notify");
    assert_plain_error(response, StatusCode::NOT_FOUND, "unknown peer").await;
    assert!(!find.knows_peer(&stranger).await);

    // Known to the broker but answering with another id: not resolvable either.
    let impostor = Id::of_content(b"impostor");
    let (fake_url, fake_task) = spawn_fake_storage(Id::of_content(b"other"), HashSet::new()).await;
    broker.register(impostor, "find", &fake_url);
    let err = find.client.notify(&impostor).await.expect_err("impostor");
    assert_eq!(err.status(), Some(404));
    assert!(!find.knows_peer(&impostor).await);
    fake_task.abort();

    // A real find server: added.
    let other = TestFind::start(quick_config(), Some(broker.url())).await;
    eventually("the broker knows the second find server", || async {
        broker.knows(&other.id())
    })
    .await;
    find.client.notify(&other.id()).await.expect("notify real");
    assert!(find.knows_peer(&other.id()).await);
}

#[tokio::test]
async fn notify_with_an_unreachable_broker_is_503() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let find = TestFind::start(quick_config(), Some(&dead)).await;
    let peer = Id::of_content(b"peer");
    let response = find
        .http
        .put(find.url("/find/notify"))
        .json(&serde_json::json!({ "find": peer }))
        .send()
        .await
        .expect("PUT notify");
    assert_plain_error(response, StatusCode::SERVICE_UNAVAILABLE, "dead broker").await;
    assert!(!find.knows_peer(&peer).await);
}

// ---------------------------------------------------------------------------------------
// Concurrency and restarts
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_reports_are_all_recorded() {
    let find = TestFind::start(quick_config(), None).await;
    let blocks = seeded_ids(3, 50);
    let containers = seeded_ids(4, 16);
    let tasks: Vec<_> = containers
        .iter()
        .map(|container| {
            let client = find.client.clone();
            let container = *container;
            let blocks = blocks.clone();
            tokio::spawn(async move { client.has(&container, &blocks).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("join").expect("has");
    }
    let mut expected = containers.clone();
    expected.sort();
    for block in &blocks {
        let mut found = find.holders(block).await;
        found.sort();
        assert_eq!(found, expected);
    }
}

#[tokio::test]
async fn restart_keeps_records_peers_and_id() {
    let find = TestFind::start(quick_config(), None).await;
    let id_before = find.id();
    let blocks = seeded_ids(5, 1500);
    let container = Id::of_content(b"container");
    find.client.has(&container, &blocks).await.expect("has");
    let peer = Id::of_content(b"peer");
    find.client.notify(&peer).await.expect("notify");

    let find = find.restart(quick_config()).await;
    assert_eq!(find.id(), id_before);
    for block in blocks.iter().step_by(97) {
        assert_eq!(find.holders(block).await, vec![container]);
    }
    assert!(find.knows_peer(&peer).await);
}

// ---------------------------------------------------------------------------------------
// Aging
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn records_not_refreshed_within_the_ttl_are_dropped() {
    let find = TestFind::start(quick_config(), None).await;
    let block = Id::of_content(b"block");
    let container = Id::of_content(b"container");
    find.client.has(&container, &[block]).await.expect("has");
    assert_eq!(find.holders(&block).await, vec![container]);

    // Restart with a short TTL and a fast aging pass: the record ages out.
    let config = FindConfig {
        record_ttl: Duration::from_millis(300),
        check_interval: Duration::from_millis(100),
        ..quick_config()
    };
    let find = find.restart(config).await;
    eventually("the stale record is dropped", || async {
        find.holders(&block).await.is_empty()
    })
    .await;
    // A new report ages out the same way.
    let fresh = Id::of_content(b"fresh");
    find.client
        .has(&container, &[fresh])
        .await
        .expect("has fresh");
    eventually("the fresh record ages out too", || async {
        find.holders(&fresh).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn records_of_a_stopped_storage_server_age_out() {
    let broker = FakeBroker::start().await;
    let find = TestFind::start(aging_config(), Some(broker.url())).await;
    let storage_dir = tempfile::tempdir().expect("storage dir");
    let storage = launch_storage(
        storage_dir.path(),
        Some(broker.url().to_string()),
        vec![find.server.url().to_string()],
    )
    .await;
    let storage_id = storage.id();
    let client = StorageClient::new(storage.url()).expect("storage client");
    let address = client
        .post(bytes::Bytes::from_static(b"short-lived"))
        .await
        .expect("post");

    eventually("the find server lists the storage server", || async {
        find.holders(&address).await == vec![storage_id]
    })
    .await;

    storage.stop().await.expect("stop storage");
    eventually("the stopped server's record is dropped", || async {
        find.holders(&address).await.is_empty()
    })
    .await;
}

#[tokio::test]
async fn records_of_blocks_a_container_lost_are_dropped() {
    let broker = FakeBroker::start().await;
    let find = TestFind::start(aging_config(), Some(broker.url())).await;
    let container = Id::of_content(b"fake storage");
    let kept = seeded_ids(6, 5);
    let lost = seeded_ids(7, 5);
    let (url, task) = spawn_fake_storage(container, kept.iter().copied().collect()).await;
    broker.register(container, "storage", &url);

    let all: Vec<Id> = kept.iter().chain(&lost).copied().collect();
    find.client.has(&container, &all).await.expect("has");
    eventually("records of lost blocks are dropped", || async {
        for id in &lost {
            if !find.holders(id).await.is_empty() {
                return false;
            }
        }
        true
    })
    .await;
    for id in &kept {
        assert_eq!(find.holders(id).await, vec![container], "kept {id}");
    }
    task.abort();
}

// ---------------------------------------------------------------------------------------
// Three find servers: discovery, forwarding, lookup
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn blobs_are_found_from_any_of_three_find_servers() {
    let broker = FakeBroker::start().await;
    let finds = three_find_servers(&broker).await;

    // The storage server reports only to the first find server.
    let storage_dir = tempfile::tempdir().expect("storage dir");
    let storage = launch_storage(
        storage_dir.path(),
        Some(broker.url().to_string()),
        vec![finds[0].server.url().to_string()],
    )
    .await;
    let storage_client = StorageClient::new(storage.url()).expect("storage client");
    // Blobs nearest to each find server, so records must be forwarded to be found
    // where lookups lead.
    let mut blobs = Vec::new();
    let mut per_server = [0usize; 3];
    for seed in 0u64.. {
        if per_server.iter().all(|n| *n >= 3) {
            break;
        }
        let data = seeded_blob(100 + seed, 1000 + seed as usize);
        let address = Id::of_content(&data);
        let nearest = (0..3)
            .min_by_key(|i| address.distance(&finds[*i].id()))
            .expect("three servers");
        if per_server[nearest] >= 3 {
            continue;
        }
        per_server[nearest] += 1;
        storage_client
            .put(&address, data.clone())
            .await
            .expect("put blob");
        blobs.push((address, data));
    }

    let broker_client = broker.client();
    for (address, data) in &blobs {
        // Forwarding: the find server nearest to the block learns of it.
        let nearest = finds
            .iter()
            .min_by_key(|f| address.distance(&f.id()))
            .expect("three servers");
        eventually("the nearest find server holds the record", || async {
            nearest.holders(address).await == vec![storage.id()]
        })
        .await;
        // Every find server leads a lookup to the holder, and the reader gets the bytes.
        for start in &finds {
            let found = lookup(
                &broker_client,
                &start.client,
                address,
                LookupOptions::default(),
            )
            .await
            .expect("lookup");
            assert_eq!(found, vec![storage.id()], "lookup from {}", start.id());
            let reader = AggregateReader::new(broker_client.clone(), start.client.clone());
            let bytes = reader
                .get_bytes(address)
                .await
                .expect("aggregate read")
                .expect("blob found");
            assert_eq!(bytes.as_ref(), data.as_slice());
        }
    }

    // A block nobody holds: the lookup ends empty and the reader says absent.
    let missing = Id::of_content(b"missing");
    let reader = AggregateReader::new(broker_client.clone(), finds[1].client.clone());
    assert!(reader.get_bytes(&missing).await.expect("read").is_none());
    storage.stop().await.expect("stop storage");
}

#[tokio::test]
async fn lookup_follows_closer_answers() {
    // A find server that knows nothing but a nearer peer, which holds the record.
    let broker = FakeBroker::start().await;
    let near = TestFind::start(quick_config(), Some(broker.url())).await;
    let far = TestFind::start(quick_config(), Some(broker.url())).await;
    eventually("the far server knows the near one", || async {
        far.knows_peer(&near.id()).await
    })
    .await;
    // Pick a block nearer to `near` than to `far`, report it to `near` only.
    let block = seeded_ids(8, 64)
        .into_iter()
        .find(|b| b.distance(&near.id()) < b.distance(&far.id()))
        .expect("some id is nearer to one server");
    let container = Id::of_content(b"container");
    near.client.has(&container, &[block]).await.expect("has");

    let answers = far.answers(&block).await;
    assert!(holders(&answers).is_empty());
    assert!(closers(&answers).contains(&near.id()));
    let found = lookup(
        &broker.client(),
        &far.client,
        &block,
        LookupOptions::default(),
    )
    .await
    .expect("lookup");
    assert_eq!(found, vec![container]);
    // With no rounds allowed the lookup stops at the first server.
    let shallow = lookup(
        &broker.client(),
        &far.client,
        &block,
        LookupOptions {
            max_rounds: 0,
            ..LookupOptions::default()
        },
    )
    .await
    .expect("lookup");
    assert!(shallow.is_empty());
}

#[tokio::test]
async fn a_find_server_that_stops_answering_leaves_the_routing_table() {
    let broker = FakeBroker::start().await;
    let a = TestFind::start(quick_config(), Some(broker.url())).await;
    let b = TestFind::start(quick_config(), Some(broker.url())).await;
    eventually("a knows b", || async { a.knows_peer(&b.id()).await }).await;
    let b_id = b.id();
    b.server.stop().await.expect("stop b");

    // A record for b's own id must be forwarded to b, which fails: b is dropped.
    let container = Id::of_content(b"container");
    a.client.has(&container, &[b_id]).await.expect("has");
    eventually("a forgets b", || async { !a.knows_peer(&b_id).await }).await;
    // The record itself stays.
    assert_eq!(a.holders(&b_id).await, vec![container]);
}

// ---------------------------------------------------------------------------------------
// The typed client's line parser
// ---------------------------------------------------------------------------------------

/// A find server whose `GET /find/:id` answers `chunks` as a streamed body.
async fn spawn_streaming_find(chunks: Vec<String>) -> (String, JoinHandle<()>) {
    let router = axum::Router::new().route(
        "/find/{id}",
        axum::routing::get(move || {
            let chunks = chunks.clone();
            async move {
                let stream = futures_util::stream::iter(
                    chunks
                        .into_iter()
                        .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
                );
                axum::body::Body::from_stream(stream)
            }
        }),
    );
    spawn_app(router).await
}

#[tokio::test]
async fn the_client_parses_lines_split_across_chunks() {
    let (a, b) = (Id::of_content(b"a"), Id::of_content(b"b"));
    let text = format!("HAS {a}\r\n\nMAYBE {b}\ncloser {b}\nHAS {b}");
    // Split every 7 bytes, so lines and even ids straddle chunks; no final newline.
    let chunks: Vec<String> = text
        .as_bytes()
        .chunks(7)
        .map(|c| String::from_utf8(c.to_vec()).expect("ASCII"))
        .collect();
    let (url, task) = spawn_streaming_find(chunks).await;
    let client = FindClient::new(&url).expect("client");
    let answers = client.find(&a).await.expect("find");
    assert_eq!(
        answers,
        vec![
            FindAnswer::Has(a),
            FindAnswer::Closer(b),
            FindAnswer::Has(b)
        ]
    );
    // A limited read stops after the first answers.
    let first = client.find_limited(&a, 1).await.expect("find limited");
    assert_eq!(first, vec![FindAnswer::Has(a)]);
    task.abort();

    // A malformed line is a protocol error, not a silent skip.
    let (url, task) = spawn_streaming_find(vec![format!("HAS {a}\nHAS 12345\n")]).await;
    let client = FindClient::new(&url).expect("client");
    let err = client.find(&a).await.expect_err("malformed line");
    assert!(
        matches!(err, invariant_spec::ClientError::Protocol { .. }),
        "{err}"
    );
    task.abort();
}
