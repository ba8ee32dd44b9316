//! In-process HTTP tests of the distributor: every route and error path, placement
//! over real in-process storage servers, and garbage collection (including a property
//! test of random interleavings of pins, unpins, writes and sweeps).
//!
//! Each test starts its own servers on `127.0.0.1:0` over fresh temporary directories.
//! The broker and the find server are small fakes (axum routers) standing in for the
//! real ones. Waits poll with a deadline; nothing asserts on speed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use distributor::{Distributor, DistributorConfig};
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::distributor::{BlockPlacement, DistributorStatus, SweepReport};
use invariant_spec::{DistributorClient, Id, StorageClient};
use invariant_test_support::{FakeBroker, eventually, spawn_app};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use reqwest::StatusCode;
use tempfile::TempDir;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A find server fake recording every `PUT /find/has` body.
struct FakeFind {
    id: Id,
    url: String,
    reports: Arc<Mutex<Vec<serde_json::Value>>>,
    task: JoinHandle<()>,
}

impl FakeFind {
    async fn start() -> FakeFind {
        let id = Id::random();
        let reports: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let record = {
            let reports = Arc::clone(&reports);
            move |axum::Json(body): axum::Json<serde_json::Value>| {
                let reports = Arc::clone(&reports);
                async move {
                    reports.lock().expect("lock").push(body);
                    StatusCode::OK
                }
            }
        };
        let router = axum::Router::new()
            .route(
                "/id",
                axum::routing::get(move || async move { id.to_string() }),
            )
            .route(
                "/id/",
                axum::routing::get(move || async move { id.to_string() }),
            )
            .route("/find/has", axum::routing::put(record.clone()))
            .route("/find/has/", axum::routing::put(record));
        let (url, task) = spawn_app(router).await;
        FakeFind {
            id,
            url,
            reports,
            task,
        }
    }

    /// Every `(container, id)` pair reported so far.
    fn pairs(&self) -> HashSet<(Id, Id)> {
        let reports = self.reports.lock().expect("lock");
        let mut out = HashSet::new();
        for report in reports.iter() {
            let container = report["container"]
                .as_str()
                .and_then(|s| Id::parse(s).ok())
                .expect("report names its container");
            for id in report["ids"].as_array().expect("report lists ids") {
                let id = id.as_str().and_then(|s| Id::parse(s).ok()).expect("hex id");
                out.insert((container, id));
            }
        }
        out
    }
}

impl Drop for FakeFind {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Storage settings: open mode, deletes allowed (the distributor collects garbage),
/// and small packs compacted continuously (any dead record makes a closed pack a
/// candidate), so sweeps interleave with compaction.
fn storage_config() -> storage_server::StorageConfig {
    let defaults = storage_server::StorageConfig::default();
    storage_server::StorageConfig {
        allow_open_delete: true,
        pack: storage_server::pack::PackConfig {
            max_pack: 1024,
            lanes: 2,
            compaction: storage_server::pack::CompactionConfig {
                threshold: 1.0,
                bytes_per_s: 0,
                interval: Duration::from_millis(20),
            },
            ..defaults.pack
        },
        ..defaults
    }
}

/// A storage server in its own directory.
struct Storage {
    _dir: TempDir,
    server: Server,
    client: StorageClient,
}

impl Storage {
    /// Starts a storage server; with `broker` it registers itself and can fetch.
    async fn start(broker: Option<&FakeBroker>) -> Storage {
        let dir = tempfile::tempdir().expect("storage dir");
        let mut options = ServerOptions::ephemeral(Role::Storage, dir.path());
        options.broker = broker.map(|b| b.url().to_string());
        let ctx = ServerContext::prepare(options).expect("storage context");
        let server = storage_server::start(&ctx, storage_config())
            .await
            .expect("start storage server");
        let client = StorageClient::new(server.url()).expect("storage client");
        Storage {
            _dir: dir,
            server,
            client,
        }
    }

    fn id(&self) -> Id {
        self.server.id()
    }

    /// Stops the server, keeping its directory.
    async fn stop(self) -> TempDir {
        self.server.stop().await.expect("stop storage server");
        self._dir
    }

    /// Starts a storage server on an existing directory (same id, new port).
    async fn restart(dir: TempDir, broker: &FakeBroker) -> Storage {
        let mut options = ServerOptions::ephemeral(Role::Storage, dir.path());
        options.broker = Some(broker.url().to_string());
        let ctx = ServerContext::prepare(options).expect("storage context");
        let server = storage_server::start(&ctx, storage_config())
            .await
            .expect("restart storage server");
        let client = StorageClient::new(server.url()).expect("storage client");
        Storage {
            _dir: dir,
            server,
            client,
        }
    }

    async fn holds(&self, block: &Id) -> bool {
        self.client.has(block).await.expect("HEAD").is_some()
    }
}

/// `n` storage servers that registered with `broker`.
async fn registered_storages(broker: &FakeBroker, n: usize) -> Vec<Storage> {
    let mut storages = Vec::new();
    for _ in 0..n {
        storages.push(Storage::start(Some(broker)).await);
    }
    for storage in &storages {
        let id = storage.id();
        eventually("storage registration", || async { broker.knows(&id) }).await;
    }
    storages
}

/// Settings for tests: fast health checks and retries.
fn fast_config() -> DistributorConfig {
    DistributorConfig {
        health_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_secs(2),
        lost_after: 2,
        repair_interval: Duration::from_secs(60),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        max_attempts: 100,
        ..DistributorConfig::default()
    }
}

async fn launch(dir: &Path, broker: Option<&FakeBroker>, config: DistributorConfig) -> Distributor {
    let mut options = ServerOptions::ephemeral(Role::Distributor, dir);
    options.broker = broker.map(|b| b.url().to_string());
    let ctx = ServerContext::prepare(options).expect("distributor context");
    distributor::launch(&ctx, config)
        .await
        .expect("start distributor")
}

/// A distributor with no broker, plus clients.
struct Harness {
    dir: TempDir,
    server: Option<Distributor>,
    client: DistributorClient,
    http: reqwest::Client,
}

impl Harness {
    async fn start(config: DistributorConfig) -> Harness {
        let dir = tempfile::tempdir().expect("distributor dir");
        let server = launch(dir.path(), None, config).await;
        let client = DistributorClient::new(server.url()).expect("client");
        Harness {
            dir,
            server: Some(server),
            client,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.client.endpoint().base_url())
    }

    async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .put(self.url(path))
            .body(body)
            .send()
            .await
            .expect("send")
    }

    async fn status(&self) -> DistributorStatus {
        self.client.status().await.expect("status")
    }

    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("stop distributor");
        }
    }
}

fn ids(seed: u64, n: usize) -> Vec<Id> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            Id::from_bytes(bytes)
        })
        .collect()
}

fn array_body(ids: &[Id]) -> String {
    serde_json::to_string(ids).expect("json")
}

async fn assert_plain_error(response: reqwest::Response, status: StatusCode, what: &str) -> String {
    assert_eq!(response.status(), status, "{what}");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "{what}: {content_type}"
    );
    let text = response.text().await.expect("body");
    assert!(!text.trim().is_empty(), "{what}: empty reason");
    text
}

// ---------------------------------------------------------------------------------------
// Routes and bodies
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pin_accepts_every_body_form() {
    let h = Harness::start(fast_config()).await;
    let all = ids(1, 12);
    let forms: Vec<(String, &[Id])> = vec![
        (array_body(&all[0..2]), &all[0..2]),
        (
            format!(
                " [\n \"{}\" ,\t\"{}\" ]\n",
                all[2],
                all[3].to_string().to_uppercase()
            ),
            &all[2..4],
        ),
        (format!("{}\n{}\r\n", all[4], all[5]), &all[4..6]),
        (format!("{},{},", all[6], all[7]), &all[6..8]),
        (format!("\"{}\" , \"{}\"", all[8], all[9]), &all[8..10]),
        (format!("{} ,\n{}", all[10], all[11]), &all[10..12]),
    ];
    let mut pinned = 0;
    for (body, expected) in forms {
        let response = h.put("/distributor/pin", body.clone()).await;
        assert_eq!(response.status(), StatusCode::OK, "{body:?}");
        pinned += expected.len() as u64;
        assert_eq!(h.status().await.pinned, pinned, "{body:?}");
    }
    // Each of them is pinned exactly once: one unpin each succeeds, a second fails.
    h.client.unpin(&all).await.expect("unpin all once");
    assert_eq!(h.status().await.pinned, 0);
    let err = h
        .client
        .unpin(&all[..1])
        .await
        .expect_err("nothing left to unpin");
    assert_eq!(err.status(), Some(409));

    // Empty bodies, the `/distribute/` spelling and a trailing slash.
    for body in ["", " \n", "[]", " [ ] "] {
        let response = h.put("/distributor/pin", body).await;
        assert_eq!(response.status(), StatusCode::OK, "{body:?}");
    }
    assert_eq!(h.status().await.pinned, 0);
    let response = h.put("/distribute/pin/", array_body(&all[..3])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(h.status().await.pinned, 3);
    let response = h
        .http
        .get(h.url("/distribute/status/"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn malformed_bodies_are_400_and_change_nothing() {
    let h = Harness::start(fast_config()).await;
    let good = ids(2, 2);
    h.client.pin(&good[..1]).await.expect("pin");
    h.client
        .register_storage(&good[..1])
        .await
        .expect("register");
    let before = h.status().await;

    let g = good[1].to_string();
    let bodies = [
        (format!("{g} {}", &g[..63]), "short id"),
        (format!("{g} {g}0"), "long id"),
        (format!("{g} {}x", &g[..63]), "bad hex"),
        (format!("[\"{g}\", \"{g}\""), "truncated array"),
        (format!("[\"{g}\""), "unclosed array"),
        (format!("[\"{g}\",]"), "trailing comma"),
        (format!("[\"{g}\"] [\"{g}\"]"), "data after the array"),
        (format!("[{g}]"), "unquoted id in an array"),
        (format!("\"{g}"), "unclosed quote"),
        ("{\"ids\": []}".to_string(), "an object"),
    ];
    let routes = [
        ("PUT", "/distributor/pin"),
        ("PUT", "/distributor/unpin"),
        ("PUT", "/distributor/register/storage"),
        ("PUT", "/distributor/unregister/storage"),
        ("POST", "/distributor/blocks"),
    ];
    for (method, route) in routes {
        for (body, what) in &bodies {
            let request = match method {
                "PUT" => h.http.put(h.url(route)),
                _ => h.http.post(h.url(route)),
            };
            let response = request.body(body.clone()).send().await.expect("send");
            let reason = assert_plain_error(
                response,
                StatusCode::BAD_REQUEST,
                &format!("{route} {what}"),
            )
            .await;
            assert!(reason.len() < 300, "short reason: {reason}");
        }
    }
    // Invalid bytes.
    let response = h.put("/distributor/pin", vec![0xffu8; 64]).await;
    assert_plain_error(response, StatusCode::BAD_REQUEST, "non-UTF-8").await;

    // Nothing was applied: counts are unchanged and `good[1]` was never pinned.
    assert_eq!(h.status().await, before);
    let err = h.client.unpin(&good[1..]).await.expect_err("never pinned");
    assert_eq!(err.status(), Some(409));
    h.client
        .unpin(&good[..1])
        .await
        .expect("the earlier pin is intact");
    h.client
        .unregister_storage(&good[..1])
        .await
        .expect("the earlier registration is intact");
}

#[tokio::test]
async fn too_many_ids_is_413_and_changes_nothing() {
    let h = Harness::start(DistributorConfig {
        max_ids_per_request: 5,
        ..fast_config()
    })
    .await;
    let all = ids(3, 6);
    let response = h.put("/distributor/pin", array_body(&all)).await;
    assert_plain_error(response, StatusCode::PAYLOAD_TOO_LARGE, "six ids").await;
    assert_eq!(h.status().await.pinned, 0);
    h.client.pin(&all[..5]).await.expect("five are fine");
    assert_eq!(h.status().await.pinned, 5);
}

#[tokio::test]
async fn pins_and_registrations_are_reference_counted() {
    let h = Harness::start(fast_config()).await;
    let [a, b, c]: [Id; 3] = ids(4, 3).try_into().expect("three ids");

    h.client.pin(&[a, a, b]).await.expect("pin");
    assert_eq!(h.status().await.pinned, 2);
    h.client.unpin(&[a]).await.expect("unpin one of two");
    assert_eq!(h.status().await.pinned, 2, "a still has one pin");

    // Below zero: 409 naming the block; nothing applied (a keeps its pin).
    let response = h.put("/distributor/unpin", array_body(&[a, c])).await;
    let reason = assert_plain_error(response, StatusCode::CONFLICT, "unpin c").await;
    assert!(reason.contains(&c.to_string()), "{reason}");
    let response = h.put("/distributor/unpin", array_body(&[b, b])).await;
    assert_plain_error(response, StatusCode::CONFLICT, "unpin b twice").await;
    assert_eq!(h.status().await.pinned, 2);
    h.client.unpin(&[a, b]).await.expect("last pins");
    assert_eq!(h.status().await.pinned, 0);

    h.client
        .register_storage(&[a, a, b])
        .await
        .expect("register");
    assert_eq!(h.status().await.storages_registered, 2);
    h.client.unregister_storage(&[a]).await.expect("one of two");
    assert_eq!(h.status().await.storages_registered, 2);
    let response = h
        .put("/distributor/unregister/storage", array_body(&[a, a]))
        .await;
    assert_plain_error(response, StatusCode::CONFLICT, "unregister a twice").await;
    assert_eq!(h.status().await.storages_registered, 2);
    h.client.unregister_storage(&[a, b]).await.expect("last");
    assert_eq!(h.status().await.storages_registered, 0);
    assert_eq!(h.status().await.storages_known, 0);
}

#[tokio::test]
async fn blocks_answers_in_request_order() {
    let h = Harness::start(fast_config()).await;
    let all = ids(5, 3000);
    h.client.pin(&all[..10]).await.expect("pin");
    // More than one internal chunk, with duplicates, in request order.
    let mut asked: Vec<Id> = all.clone();
    asked.push(all[0]);
    let placements = h.client.blocks(&asked).await.expect("blocks");
    let answered: Vec<Id> = placements.iter().map(|p| p.block).collect();
    assert_eq!(answered, asked);
    // No storage server is active, so no block has a placement.
    assert!(placements.iter().all(|p| p.storages.is_empty()));
    // Empty request, raw form.
    let response = h
        .http
        .post(h.url("/distributor/blocks"))
        .body("")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let empty: Vec<BlockPlacement> = response.json().await.expect("json");
    assert!(empty.is_empty());
}

#[tokio::test]
async fn status_fields_and_gauges_are_served() {
    let h = Harness::start(fast_config()).await;
    h.client.pin(&ids(6, 4)).await.expect("pin");
    let response = h
        .http
        .get(h.url("/distributor/status"))
        .send()
        .await
        .expect("status");
    assert_eq!(response.status(), StatusCode::OK);
    let json: serde_json::Value = response.json().await.expect("json");
    for field in [
        "pinned",
        "under_replicated",
        "replica_shortfall",
        "copies_in_flight",
        "storages_active",
        "storages_known",
        "replicas",
    ] {
        assert!(json[field].is_u64(), "{field} in {json}");
    }
    assert_eq!(json["pinned"], 4);
    assert_eq!(json["replicas"], 3);
    // With no storage server every pinned block is under-replicated, and all N
    // servers are missing.
    eventually("pins to count as under-replicated", || async {
        h.status().await.under_replicated == 4
    })
    .await;
    assert_eq!(h.status().await.replica_shortfall, 3);

    let metrics = h
        .http
        .get(h.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for gauge in [
        "distributor_pinned_blocks",
        "distributor_under_replicated_blocks",
        "distributor_copies_in_flight",
        "distributor_storages_active",
        "distributor_replica_shortfall",
    ] {
        assert!(metrics.contains(gauge), "{gauge} missing from /metrics");
    }
}

#[tokio::test]
async fn a_slow_large_pin_streams_and_does_not_block_other_requests() {
    let h = Harness::start(fast_config()).await;
    let all = ids(7, 20_000);
    let body = array_body(&all);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let request = h
        .http
        .put(h.url("/distributor/pin"))
        .body(reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .send();
    let pending = tokio::spawn(request);

    // Send the first half in odd-sized chunks that split ids.
    let bytes = body.into_bytes();
    let half = bytes.len() / 2;
    for chunk in bytes[..half].chunks(997) {
        tx.send(Ok(Bytes::copy_from_slice(chunk)))
            .await
            .expect("send chunk");
    }
    // While the body is incomplete, other requests are answered and nothing is applied.
    let status = tokio::time::timeout(Duration::from_secs(10), h.client.status())
        .await
        .expect("status answers during an upload")
        .expect("status");
    assert_eq!(status.pinned, 0);
    for chunk in bytes[half..].chunks(1009) {
        tx.send(Ok(Bytes::copy_from_slice(chunk)))
            .await
            .expect("send chunk");
    }
    drop(tx);
    let response = pending.await.expect("join").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(h.status().await.pinned, 20_000);

    // 200,000 more in the separated form, one request.
    let more = ids(8, 200_000);
    let body: String = more.iter().map(|id| format!("{id}\n")).collect();
    let response = h.put("/distributor/pin", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(h.status().await.pinned, 220_000);
}

#[tokio::test]
async fn pins_and_registrations_survive_a_restart() {
    let mut h = Harness::start(fast_config()).await;
    let blocks = ids(9, 100);
    let storages = ids(10, 2);
    h.client.pin(&blocks).await.expect("pin");
    h.client.pin(&blocks[..1]).await.expect("second pin");
    h.client
        .register_storage(&storages)
        .await
        .expect("register");
    h.stop().await;

    let server = launch(h.dir.path(), None, fast_config()).await;
    let client = DistributorClient::new(server.url()).expect("client");
    let status = client.status().await.expect("status");
    assert_eq!(status.pinned, 100);
    assert_eq!(status.storages_registered, 2);
    assert_eq!(status.storages_known, 2);
    // Counts, not just presence, were kept: blocks[0] has two pins.
    client.unpin(&blocks[..1]).await.expect("first");
    client.unpin(&blocks[..1]).await.expect("second");
    assert_eq!(
        client
            .unpin(&blocks[..1])
            .await
            .expect_err("none left")
            .status(),
        Some(409)
    );
    server.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------
// Placement over real storage servers
// ---------------------------------------------------------------------------------------

/// The `n` storage servers nearest to `block` among `live`.
fn nearest(block: &Id, live: &[Id], n: usize) -> Vec<Id> {
    let mut sorted = live.to_vec();
    block.sort_by_distance(&mut sorted);
    sorted.truncate(n);
    sorted
}

/// Deterministic blobs of assorted sizes (some above the 256 KiB streaming threshold).
fn blobs(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let len = if i % 10 == 0 {
                300 * 1024
            } else {
                rng.random_range(1..20_000)
            };
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            data
        })
        .collect()
}

/// Whether every block is held by exactly the servers `expected` says, among `servers`
/// (servers in `also` may hold it too).
async fn placed(servers: &[&Storage], blocks: &[Id], expected: impl Fn(&Id) -> Vec<Id>) -> bool {
    for block in blocks {
        let want = expected(block);
        for server in servers {
            if want.contains(&server.id()) && !server.holds(block).await {
                return false;
            }
        }
    }
    true
}

async fn converged(client: &DistributorClient, active: u64) -> bool {
    let status = client.status().await.expect("status");
    status.storages_active == active && status.under_replicated == 0 && status.copies_in_flight == 0
}

#[tokio::test]
async fn placement_follows_the_nearest_servers() {
    let broker = FakeBroker::start().await;
    let find = FakeFind::start().await;
    broker.register(find.id, "find", &find.url);

    // Three storage servers that can fetch (they know the broker) and two that cannot
    // (registered with the broker by hand), so both copy paths are used.
    let mut storages: Vec<Storage> = Vec::new();
    for i in 0..5 {
        let with_broker = i < 3;
        let storage = Storage::start(with_broker.then_some(&broker)).await;
        if !with_broker {
            broker.register(storage.id(), "storage", storage.server.url());
        }
        storages.push(storage);
    }
    for storage in &storages {
        let id = storage.id();
        eventually("storage registration", || async { broker.knows(&id) }).await;
    }
    let storage_ids: Vec<Id> = storages.iter().map(Storage::id).collect();

    // Explicit registration only: the broker's list is not used.
    let dir = tempfile::tempdir().expect("distributor dir");
    let config = DistributorConfig {
        broker_storages: false,
        ..fast_config()
    };
    let server = launch(dir.path(), Some(&broker), config.clone()).await;
    let client = DistributorClient::new(server.url()).expect("client");
    client
        .register_storage(&storage_ids)
        .await
        .expect("register");
    eventually("five active storage servers", || async {
        client.status().await.expect("status").storages_active == 5
    })
    .await;

    // 50 blobs stored on server 0 only, then pinned.
    let origin = &storages[0];
    let mut blocks = Vec::new();
    for data in blobs(42, 50) {
        blocks.push(
            origin
                .client
                .post(Bytes::from(data))
                .await
                .expect("store blob"),
        );
    }
    client.pin(&blocks).await.expect("pin");

    let refs: Vec<&Storage> = storages.iter().collect();
    eventually("every block on its 3 nearest servers", || async {
        converged(&client, 5).await && placed(&refs, &blocks, |b| nearest(b, &storage_ids, 3)).await
    })
    .await;
    // Exactly there: no other server than the origin holds a copy.
    for block in &blocks {
        let want = nearest(block, &storage_ids, 3);
        for storage in &storages[1..] {
            assert_eq!(
                storage.holds(block).await,
                want.contains(&storage.id()),
                "block {block} on {}",
                storage.id()
            );
        }
    }
    let placements = client.blocks(&blocks).await.expect("blocks");
    for placement in &placements {
        assert_eq!(
            placement.storages,
            nearest(&placement.block, &storage_ids, 3)
        );
    }
    let status = client.status().await.expect("status");
    assert_eq!(status.pinned, 50);
    assert!(status.copies_completed > 0);
    // Every copy was reported to the find server.
    eventually("holders reported to the find server", || async {
        let pairs = find.pairs();
        blocks.iter().all(|b| {
            nearest(b, &storage_ids, 3)
                .iter()
                .all(|s| pairs.contains(&(*s, *b)))
        })
    })
    .await;

    // Stop the server that is in the most placements: every block returns to 3 live
    // copies on its new nearest set.
    let busiest = (1..5)
        .max_by_key(|i| {
            blocks
                .iter()
                .filter(|b| nearest(b, &storage_ids, 3).contains(&storage_ids[*i]))
                .count()
        })
        .expect("a server");
    let stopped = storages.remove(busiest);
    stopped.server.stop().await.expect("stop storage");
    let live: Vec<Id> = storages.iter().map(Storage::id).collect();
    let refs: Vec<&Storage> = storages.iter().collect();
    eventually("every block back to 3 live copies", || async {
        converged(&client, 4).await && placed(&refs, &blocks, |b| nearest(b, &live, 3)).await
    })
    .await;
    let placements = client.blocks(&blocks).await.expect("blocks");
    for placement in &placements {
        assert_eq!(placement.storages, nearest(&placement.block, &live, 3));
    }

    // Restart the distributor on the same directory: pins, registrations and placement
    // knowledge are intact, so it converges without copying anything.
    server.stop().await.expect("stop distributor");
    let server = launch(dir.path(), Some(&broker), config).await;
    let client = DistributorClient::new(server.url()).expect("client");
    let status = client.status().await.expect("status");
    assert_eq!(status.pinned, 50);
    assert_eq!(status.storages_registered, 5);
    eventually("restarted distributor to settle", || async {
        let status = client.status().await.expect("status");
        status.passes >= 1 && converged(&client, 4).await
    })
    .await;
    let status = client.status().await.expect("status");
    assert_eq!(status.copies_completed, 0, "placement knowledge was kept");
    assert_eq!(client.blocks(&blocks).await.expect("blocks"), placements);

    // A sixth server: blocks whose nearest set now includes it are copied to it.
    let sixth = Storage::start(Some(&broker)).await;
    let sixth_id = sixth.id();
    eventually("sixth registration", || async { broker.knows(&sixth_id) }).await;
    client
        .register_storage(&[sixth_id])
        .await
        .expect("register sixth");
    storages.push(sixth);
    let live: Vec<Id> = storages.iter().map(Storage::id).collect();
    let refs: Vec<&Storage> = storages.iter().collect();
    eventually("blocks near the sixth server copied to it", || async {
        converged(&client, 5).await && placed(&refs, &blocks, |b| nearest(b, &live, 3)).await
    })
    .await;
    let sixth = storages.last().expect("sixth");
    let mut moved = 0;
    for block in &blocks {
        let near = nearest(block, &live, 3).contains(&sixth_id);
        assert_eq!(sixth.holds(block).await, near, "block {block} on the sixth");
        moved += usize::from(near);
    }
    assert!(moved > 0, "some block is near the sixth server");

    // Unpinning everything empties the distributor's work.
    client.unpin(&blocks).await.expect("unpin");
    let status = client.status().await.expect("status");
    assert_eq!(status.pinned, 0);
    assert!(
        client
            .blocks(&blocks)
            .await
            .expect("blocks")
            .iter()
            .all(|p| p.storages.is_empty())
    );
    server.stop().await.expect("stop distributor");
}

#[tokio::test]
async fn storage_servers_listed_by_the_broker_are_used_by_default() {
    let broker = FakeBroker::start().await;
    let storages = registered_storages(&broker, 3).await;

    let dir = tempfile::tempdir().expect("dir");
    let server = launch(dir.path(), Some(&broker), fast_config()).await;
    let client = DistributorClient::new(server.url()).expect("client");
    eventually("three active storage servers from the broker", || async {
        client.status().await.expect("status").storages_active == 3
    })
    .await;
    let data = Bytes::from_static(b"distributed by the broker's list");
    let block = storages[1].client.post(data).await.expect("store");
    client.pin(&[block]).await.expect("pin");
    eventually("the block on all three servers", || async {
        for storage in &storages {
            if !storage.holds(&block).await {
                return false;
            }
        }
        converged(&client, 3).await
    })
    .await;
    assert_eq!(
        client.status().await.expect("status").storages_registered,
        0
    );

    // With the broker's list turned off, no server is used.
    let other = tempfile::tempdir().expect("dir");
    let off = launch(
        other.path(),
        Some(&broker),
        DistributorConfig {
            broker_storages: false,
            ..fast_config()
        },
    )
    .await;
    let off_client = DistributorClient::new(off.url()).expect("client");
    eventually("a first pass", || async {
        off_client.status().await.expect("status").passes >= 1
    })
    .await;
    let status = off_client.status().await.expect("status");
    assert_eq!(status.storages_active, 0);
    assert_eq!(status.storages_known, 0);
    off.stop().await.expect("stop");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_returning_server_has_its_holdings_checked_again() {
    let broker = FakeBroker::start().await;
    let mut storages = registered_storages(&broker, 3).await;
    let dir = tempfile::tempdir().expect("dir");
    let server = launch(dir.path(), Some(&broker), fast_config()).await;
    let client = DistributorClient::new(server.url()).expect("client");
    eventually("three active servers", || async {
        client.status().await.expect("status").storages_active == 3
    })
    .await;
    let data = b"a block that will be lost on one server".to_vec();
    let block = storages[0]
        .client
        .post(Bytes::from(data))
        .await
        .expect("store");
    client.pin(&[block]).await.expect("pin");
    eventually("the block on all three", || async {
        for storage in &storages {
            if !storage.holds(&block).await {
                return false;
            }
        }
        converged(&client, 3).await
    })
    .await;

    // Server 1 goes away and loses the blob while down; it comes back on a new port.
    let leaving = storages.remove(1);
    let id = leaving.id();
    let data_dir = leaving.stop().await;
    // With 2 of 3 servers alive the block has 2 copies, below N: the status says so,
    // and that N cannot be reached with the live servers.
    eventually("the server counted as lost", || async {
        let status = client.status().await.expect("status");
        status.storages_active == 2
            && status.copies_in_flight == 0
            && status.under_replicated == 1
            && status.replica_shortfall == 1
    })
    .await;
    let hex = block.to_string();
    let file = data_dir
        .path()
        .join("blobs")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(&hex[4..]);
    std::fs::remove_file(&file).expect("remove the blob file");
    let back = Storage::restart(data_dir, &broker).await;
    assert_eq!(back.id(), id);
    assert!(!back.holds(&block).await);
    eventually("the block copied to the returning server", || async {
        back.holds(&block).await && converged(&client, 3).await
    })
    .await;
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn concurrent_pins_and_unpins_stay_consistent() {
    let h = Harness::start(fast_config()).await;
    let pool = ids(11, 40);
    let mut rng = StdRng::seed_from_u64(12);
    let subsets: Vec<Vec<Id>> = (0..8)
        .map(|_| {
            pool.iter()
                .filter(|_| rng.random_bool(0.5))
                .copied()
                .collect()
        })
        .collect();
    // Each client pins its subset twice and unpins it once, 10 times over.
    let mut tasks = Vec::new();
    for subset in subsets.clone() {
        let client = h.client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                client.pin(&subset).await.expect("pin");
                client.pin(&subset).await.expect("pin");
                client.unpin(&subset).await.expect("unpin");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    let mut expected: HashMap<Id, u64> = HashMap::new();
    for subset in &subsets {
        for id in subset {
            *expected.entry(*id).or_default() += 10;
        }
    }
    assert_eq!(h.status().await.pinned, expected.len() as u64);
    // Every id has exactly its expected count: that many unpins succeed, one more fails.
    for (id, count) in &expected {
        let body = array_body(&vec![*id; *count as usize + 1]);
        let response = h.put("/distributor/unpin", body).await;
        assert_eq!(response.status(), StatusCode::CONFLICT, "{id}");
        h.client
            .unpin(&vec![*id; *count as usize])
            .await
            .expect("exact count");
    }
    assert_eq!(h.status().await.pinned, 0);
}

// ---------------------------------------------------------------------------------------
// Garbage collection
// ---------------------------------------------------------------------------------------

/// Three storage servers known through the broker and a distributor on them.
struct Network {
    broker: FakeBroker,
    storages: Vec<Storage>,
    dir: TempDir,
    server: Option<Distributor>,
    client: DistributorClient,
}

impl Network {
    async fn start(config: DistributorConfig) -> Network {
        let broker = FakeBroker::start().await;
        let storages = registered_storages(&broker, 3).await;
        let dir = tempfile::tempdir().expect("distributor dir");
        let server = launch(dir.path(), Some(&broker), config).await;
        let client = DistributorClient::new(server.url()).expect("client");
        let network = Network {
            broker,
            storages,
            dir,
            server: Some(server),
            client,
        };
        network.wait_active(3).await;
        network
    }

    async fn wait_active(&self, n: u64) {
        eventually("storage servers active", || async {
            self.client.status().await.expect("status").storages_active == n
        })
        .await;
    }

    /// Restarts the distributor on its database with `config`.
    async fn restart_distributor(&mut self, config: DistributorConfig) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("stop distributor");
        }
        let server = launch(self.dir.path(), Some(&self.broker), config).await;
        self.client = DistributorClient::new(server.url()).expect("client");
        self.server = Some(server);
        self.wait_active(self.storages.len() as u64).await;
    }

    /// Stores `data` on server `on` and returns its address.
    async fn store(&self, on: usize, data: Vec<u8>) -> Id {
        self.storages[on]
            .client
            .post(Bytes::from(data))
            .await
            .expect("store blob")
    }

    /// Which servers hold `block`.
    async fn holders(&self, block: &Id) -> Vec<usize> {
        let mut out = Vec::new();
        for (n, storage) in self.storages.iter().enumerate() {
            if storage.holds(block).await {
                out.push(n);
            }
        }
        out
    }

    /// Waits until every block is on every server and nothing is being copied.
    async fn wait_everywhere(&self, blocks: &[Id]) {
        eventually("every block on every server", || async {
            for block in blocks {
                if self.holders(block).await.len() != self.storages.len() {
                    return false;
                }
            }
            converged(&self.client, self.storages.len() as u64).await
        })
        .await;
    }

    async fn sweep(&self, dry_run: bool) -> SweepReport {
        let mut lines = 0u64;
        let report = self
            .client
            .gc_run(dry_run, |_| lines += 1)
            .await
            .expect("sweep");
        assert!(lines >= 1, "a sweep reports progress before its report");
        report
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("stop distributor");
        }
    }
}

/// Fast settings with the given grace period and no automatic sweeps.
fn gc_config(grace: Duration) -> DistributorConfig {
    DistributorConfig {
        gc_grace: grace,
        gc_interval: None,
        ..fast_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn released_blocks_leave_every_storage_server() {
    let net = Network::start(gc_config(Duration::ZERO)).await;
    let data = blobs(21, 20);
    let mut blocks = Vec::new();
    for blob in &data {
        blocks.push(net.store(0, blob.clone()).await);
    }
    net.client.pin(&blocks).await.expect("pin");
    net.wait_everywhere(&blocks).await;
    let (kept, released) = blocks.split_at(10);
    let released_bytes: u64 = data[10..].iter().map(|d| d.len() as u64).sum();

    net.client.unpin(released).await.expect("unpin");
    let status = net.client.gc_status().await.expect("gc status");
    assert_eq!(status.pending_blocks, 10);
    assert_eq!(
        status.pending_bytes, released_bytes,
        "sizes learned while placing"
    );
    assert_eq!(status.grace_seconds, 0);
    assert_eq!(status.interval_seconds, None);
    assert_eq!(
        net.client.status().await.expect("status").gc_pending_blocks,
        10
    );

    // A dry run counts and deletes nothing.
    let dry = net.sweep(true).await;
    assert!(dry.dry_run);
    assert_eq!((dry.blocks, dry.bytes), (10, released_bytes));
    for block in released {
        assert_eq!(net.holders(block).await.len(), 3, "dry run kept {block}");
    }

    let report = net.sweep(false).await;
    assert_eq!(report.blocks, 10, "{report:?}");
    assert_eq!(report.storages, 3, "{report:?}");
    assert_eq!(
        report.bytes,
        3 * released_bytes,
        "freed on each server: {report:?}"
    );
    assert_eq!(report.behind, 0);
    for block in released {
        assert!(net.holders(block).await.is_empty(), "{block} collected");
    }
    for block in kept {
        assert_eq!(net.holders(block).await.len(), 3, "{block} pinned and kept");
    }
    let status = net.client.gc_status().await.expect("gc status");
    assert_eq!(status.pending_blocks, 0);
    assert_eq!(status.deleted_blocks, 10);
    assert_eq!(status.deleted_bytes, 3 * released_bytes);
    assert_eq!(status.sweeps, 1);
    assert!(status.last_sweep.is_some());
    assert_eq!(status.last_report.as_ref().map(|r| r.blocks), Some(10));
    let counters = net.client.status().await.expect("status");
    assert_eq!((counters.gc_deleted_blocks, counters.gc_sweeps), (10, 1));
    let metrics = reqwest::get(format!(
        "{}/metrics",
        net.client.endpoint().base_url().trim_end_matches('/')
    ))
    .await
    .expect("metrics")
    .text()
    .await
    .expect("metrics text");
    assert!(
        metrics.contains("distributor_gc_deleted_blocks_total 10"),
        "{metrics}"
    );

    // Nothing left to collect.
    assert_eq!(net.sweep(false).await.blocks, 0);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grace_period_and_a_new_pin_keep_blocks() {
    let mut net = Network::start(gc_config(Duration::from_secs(3600))).await;
    let a = net.store(0, b"released an hour from now".to_vec()).await;
    let b = net.store(0, b"released, then pinned again".to_vec()).await;
    net.client.pin(&[a, b]).await.expect("pin");
    net.wait_everywhere(&[a, b]).await;
    net.client.unpin(&[a, b]).await.expect("unpin");
    let report = net.sweep(false).await;
    assert_eq!(report.blocks, 0, "within the grace period: {report:?}");
    assert_eq!(net.holders(&a).await.len(), 3);
    assert_eq!(net.client.gc_status().await.expect("gc").pending_blocks, 2);

    // With no grace, the block pinned again is kept and the other goes.
    net.restart_distributor(gc_config(Duration::ZERO)).await;
    net.client.pin(&[b]).await.expect("pin again");
    let report = net.sweep(false).await;
    assert_eq!(report.blocks, 1, "{report:?}");
    assert!(net.holders(&a).await.is_empty());
    assert_eq!(net.holders(&b).await.len(), 3);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_down_during_a_sweep_deletes_when_it_returns() {
    let mut net = Network::start(gc_config(Duration::ZERO)).await;
    let mut blocks = Vec::new();
    for n in 0..5u8 {
        blocks.push(net.store(0, vec![n; 5000]).await);
    }
    net.client.pin(&blocks).await.expect("pin");
    net.wait_everywhere(&blocks).await;
    net.client.unpin(&blocks).await.expect("unpin");

    let leaving = net.storages.remove(2);
    let id = leaving.id();
    let dir = leaving.stop().await;
    eventually("the server counted as lost", || async {
        net.client.status().await.expect("status").storages_active == 2
    })
    .await;
    let report = net.sweep(false).await;
    assert_eq!(report.blocks, 5, "{report:?}");
    assert_eq!(report.storages, 2, "{report:?}");
    assert_eq!(
        report.behind, 5,
        "the absent server owes every deletion: {report:?}"
    );
    for block in &blocks {
        assert!(net.holders(block).await.is_empty());
    }

    let back = Storage::restart(dir, &net.broker).await;
    assert_eq!(back.id(), id);
    assert!(
        back.holds(&blocks[0]).await,
        "it still holds them when it returns"
    );
    eventually("the returning server deletes what it owes", || async {
        for block in &blocks {
            if back.holds(block).await {
                return false;
            }
        }
        net.client.gc_status().await.expect("gc").behind == 0
    })
    .await;
    net.storages.push(back);
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn never_pinned_blocks_are_collected_only_when_the_operator_opts_in() {
    let mut net = Network::start(gc_config(Duration::ZERO)).await;
    let pinned = net.store(1, b"pinned by someone".to_vec()).await;
    net.client.pin(&[pinned]).await.expect("pin");
    net.wait_everywhere(&[pinned]).await;
    let stray: Vec<Id> = vec![
        net.store(0, b"written, never pinned".to_vec()).await,
        net.store(2, b"another".to_vec()).await,
    ];
    let report = net.sweep(false).await;
    assert_eq!((report.blocks, report.discovered), (0, 0), "off by default");
    assert_eq!(net.holders(&stray[0]).await, vec![0]);

    net.restart_distributor(DistributorConfig {
        gc_unpinned_after: Some(Duration::ZERO),
        ..gc_config(Duration::ZERO)
    })
    .await;
    let report = net.sweep(false).await;
    assert_eq!(report.discovered, 2, "{report:?}");
    assert_eq!(report.blocks, 2, "{report:?}");
    for block in &stray {
        assert!(net.holders(block).await.is_empty());
    }
    assert_eq!(
        net.holders(&pinned).await.len(),
        3,
        "the pinned block stays"
    );
    net.stop().await;
}

/// 1,000 random steps over 200 blocks on 3 storage servers: writes, pins, unpins and
/// sweeps (no grace period), while the servers compact their packs (1 KiB packs,
/// checked every 20 ms and rewritten once they hold a dead record). After every sweep: every block with a
/// pin is still on every server it was written to and reads back intact, and every
/// block released before the sweep is on no server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_interleavings_never_collect_a_pinned_block() {
    const BLOCKS: usize = 200;
    const STEPS: usize = 1000;
    let net = Network::start(gc_config(Duration::ZERO)).await;
    let mut rng = StdRng::seed_from_u64(0x6c);
    let data: Vec<Vec<u8>> = (0..BLOCKS)
        .map(|i| format!("property block {i}").into_bytes())
        .collect();
    let ids: Vec<Id> = data.iter().map(|d| Id::of_content(d)).collect();
    let mut pins = vec![0u32; BLOCKS];
    // Servers each block was written to since it was last collected.
    let mut written: Vec<HashSet<usize>> = vec![HashSet::new(); BLOCKS];
    // Released (last pin removed) and not yet collected.
    let mut released = [false; BLOCKS];
    let mut sweeps = 0;
    for step in 0..STEPS {
        let i = rng.random_range(0..BLOCKS);
        match rng.random_range(0..100) {
            0..35 => {
                let on = rng.random_range(0..3);
                net.store(on, data[i].clone()).await;
                written[i].insert(on);
            }
            35..60 => {
                net.client.pin(&[ids[i]]).await.expect("pin");
                pins[i] += 1;
                released[i] = false;
            }
            60..90 => {
                if pins[i] > 0 {
                    net.client.unpin(&[ids[i]]).await.expect("unpin");
                    pins[i] -= 1;
                    if pins[i] == 0 {
                        released[i] = true;
                    }
                }
            }
            _ => {
                sweeps += 1;
                // A block whose repair was copying it when it was released waits for
                // the next sweep; sweep until none is held back.
                let mut report = net.sweep(false).await;
                for _ in 0..50 {
                    if report.kept == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    report = net.sweep(false).await;
                }
                assert_eq!(report.kept, 0, "step {step}: blocks held back: {report:?}");
                for b in 0..BLOCKS {
                    let holders = net.holders(&ids[b]).await;
                    if pins[b] > 0 {
                        for on in &written[b] {
                            assert!(
                                holders.contains(on),
                                "step {step}: pinned block {b} deleted from server {on}"
                            );
                            // The client verifies the bytes against the address.
                            let read = net.storages[*on]
                                .client
                                .get_bytes(&ids[b])
                                .await
                                .expect("read a pinned block");
                            assert_eq!(read.as_deref(), Some(&data[b][..]), "step {step}");
                        }
                    } else if released[b] {
                        assert!(
                            holders.is_empty(),
                            "step {step}: released block {b} still on {holders:?}"
                        );
                    }
                    if released[b] {
                        released[b] = false;
                        written[b].clear();
                    }
                }
            }
        }
    }
    assert!(sweeps >= 50, "the seed gives enough sweeps ({sweeps})");
    let metrics = reqwest::get(format!("{}/metrics", net.storages[0].server.url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let compacted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("invariant_storage_compaction_bytes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        compacted > 0.0,
        "compaction ran during the test:\n{metrics}"
    );
    net.stop().await;
}

// ---------------------------------------------------------------------------------------
// Backup destination
// ---------------------------------------------------------------------------------------

/// The status's backup section (the test configured one).
async fn backup_status(client: &DistributorClient) -> invariant_spec::distributor::BackupStatus {
    client
        .status()
        .await
        .expect("status")
        .backup
        .expect("a backup section")
}

#[tokio::test]
async fn every_pinned_block_is_copied_to_the_backup_at_the_set_rate_and_a_restart_resumes() {
    let broker = FakeBroker::start().await;
    let storages = registered_storages(&broker, 2).await;
    // The backup is not known to the broker: it is no placement target.
    let backup = Storage::start(None).await;
    let dir = tempfile::tempdir().expect("distributor dir");
    // 3.6 MB per hour = 1,000 bytes per second; blobs of 2,000 bytes: one every 2 s.
    let limited = DistributorConfig {
        replicas: 2,
        backup: Some(distributor::BackupConfig {
            url: backup.server.url().to_string(),
            bytes_per_hour: Some(3_600_000),
        }),
        ..fast_config()
    };
    let server = launch(dir.path(), Some(&broker), limited.clone()).await;
    let client = DistributorClient::new(server.url()).expect("client");
    eventually("two active storage servers", || async {
        client.status().await.expect("status").storages_active == 2
    })
    .await;

    let mut rng = StdRng::seed_from_u64(7);
    let mut blocks = Vec::new();
    for _ in 0..6 {
        let mut data = vec![0u8; 2_000];
        rng.fill_bytes(&mut data);
        blocks.push(
            storages[0]
                .client
                .post(Bytes::from(data))
                .await
                .expect("store"),
        );
    }
    client.pin(&blocks).await.expect("pin");

    // The first copy goes at once; the pace holds the others back.
    eventually("a first copy to the backup", || async {
        backup_status(&client).await.blocks_copied >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let status = backup_status(&client).await;
    assert!(
        status.blocks_copied <= 2,
        "the rate limit let {} copies through in about a second",
        status.blocks_copied
    );
    assert_eq!(status.bytes_per_hour, Some(3_600_000));
    assert_eq!(status.id, Some(backup.id()));
    assert!(status.blocks_behind >= 4, "{status:?}");
    // Sizes are counted once the placement learned them.
    eventually("the bytes behind counted", || async {
        let status = backup_status(&client).await;
        status.blocks_behind > 0 && status.bytes_behind == status.blocks_behind * 2_000
    })
    .await;
    // The backup stays outside the placement.
    assert_eq!(client.status().await.expect("status").storages_active, 2);

    // Stopped part way, then started again without a limit: it carries on with what
    // is left, and every pinned block ends up on the backup.
    server.stop().await.expect("stop distributor");
    let held_before: usize = {
        let mut n = 0;
        for block in &blocks {
            n += usize::from(backup.holds(block).await);
        }
        n
    };
    assert!(held_before < blocks.len());
    let unlimited = DistributorConfig {
        backup: Some(distributor::BackupConfig {
            url: backup.server.url().to_string(),
            bytes_per_hour: None,
        }),
        ..limited
    };
    let server = launch(dir.path(), Some(&broker), unlimited).await;
    let client = DistributorClient::new(server.url()).expect("client");
    eventually("every pinned block on the backup", || async {
        let status = backup_status(&client).await;
        status.blocks_behind == 0 && status.passes >= 1 && status.last_error.is_none()
    })
    .await;
    for block in &blocks {
        assert!(backup.holds(block).await, "{block} is not on the backup");
    }
    let status = backup_status(&client).await;
    assert!(
        status.blocks_copied as usize <= blocks.len() - held_before,
        "copied again what the backup held: {status:?}"
    );
    assert_eq!(status.bytes_per_hour, None);
    server.stop().await.expect("stop distributor");
}

#[tokio::test]
async fn an_unreachable_backup_is_reported_in_the_status() {
    let broker = FakeBroker::start().await;
    let storages = registered_storages(&broker, 1).await;
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let dir = tempfile::tempdir().expect("distributor dir");
    let config = DistributorConfig {
        replicas: 1,
        backup: Some(distributor::BackupConfig {
            url: format!("http://127.0.0.1:{port}"),
            bytes_per_hour: None,
        }),
        ..fast_config()
    };
    let server = launch(dir.path(), Some(&broker), config).await;
    let client = DistributorClient::new(server.url()).expect("client");
    let block = storages[0]
        .client
        .post(Bytes::from_static(b"kept twice"))
        .await
        .expect("store");
    client.pin(&[block]).await.expect("pin");
    eventually("the failure in the status", || async {
        let status = backup_status(&client).await;
        status.id.is_none() && status.last_error.is_some()
    })
    .await;
    server.stop().await.expect("stop distributor");
}
