//! In-process tests of the distributor with capability tokens and of its limits on
//! peers: pins belong to the subject that made them (another subject's unpin cannot
//! release them), token checks refuse what they must and change nothing, operators see
//! pins by subject, garbage collection never takes a block another subject still pins
//! (and deletes through real token checks once nobody does), old databases are migrated, peers outside `--peer-allow` or
//! redirecting elsewhere are never used, and a block nobody holds is retried at a
//! bounded rate.
//!
//! Every listener is on 127.0.0.1; "outside the allowed networks" is made by allowing
//! only 127.0.0.128/25, and listeners that must not be contacted count the connections
//! they accept.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use distributor::store::DB_FILE;
use distributor::{Distributor, DistributorConfig};
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::distributor::SubjectPins;
use invariant_spec::http::Endpoint;
use invariant_spec::{DistributorClient, Id, StorageClient};
use invariant_test_support::{FakeBroker, Recorder, TestAuth, eventually, spawn_app};
use reqwest::StatusCode;
use tempfile::TempDir;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Fast health checks and retries.
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

/// A distributor over `dir`; with `auth`, tokens are checked and the distributor calls
/// peers with a token of its own (`storage:write`, `storage:delete`, `find:report`).
async fn launch(
    dir: &Path,
    auth: Option<&TestAuth>,
    broker: Option<&FakeBroker>,
    peer_allow: &str,
    config: DistributorConfig,
) -> Distributor {
    let mut options = ServerOptions::ephemeral(Role::Distributor, dir);
    options.broker = broker.map(|b| b.url().to_string());
    if let Some(auth) = auth {
        options.auth.root = Some(auth.public());
        options.client.token =
            Some(auth.token("distributor", "storage:write,storage:delete,find:report"));
    }
    options.peer_allow = peer_allow
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().expect("cidr"))
        .collect();
    let ctx = ServerContext::prepare(options).expect("distributor context");
    distributor::launch(&ctx, config)
        .await
        .expect("start distributor")
}

/// A client of `url` sending `token` (none: anonymous).
fn client(url: &str, token: Option<&str>) -> DistributorClient {
    let http = match token {
        Some(token) => TestAuth::client(token),
        None => reqwest::Client::new(),
    };
    DistributorClient::from_endpoint(Endpoint::with_client(url, http).expect("endpoint"))
}

/// The raw status answer as JSON, asked with `token`.
async fn status_json(url: &str, token: Option<&str>) -> serde_json::Value {
    let http = match token {
        Some(token) => TestAuth::client(token),
        None => reqwest::Client::new(),
    };
    let response = http
        .get(format!("{url}/distributor/status"))
        .send()
        .await
        .expect("status");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

/// Sends a pin-list request and returns the status and the reason.
async fn put_raw(
    url: &str,
    route: &str,
    token: Option<&str>,
    blocks: &[Id],
) -> (StatusCode, String) {
    let http = match token {
        Some(token) => TestAuth::client(token),
        None => reqwest::Client::new(),
    };
    let response = http
        .put(format!("{url}{route}"))
        .body(serde_json::to_string(blocks).expect("json"))
        .send()
        .await
        .expect("send");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

/// A storage server in auth mode (same root), registered with `broker`.
struct Storage {
    _dir: TempDir,
    server: Server,
    client: StorageClient,
}

impl Storage {
    async fn start(auth: &TestAuth, broker: &FakeBroker) -> Storage {
        let dir = tempfile::tempdir().expect("storage dir");
        let mut options = ServerOptions::ephemeral(Role::Storage, dir.path());
        options.broker = Some(broker.url().to_string());
        options.auth.root = Some(auth.public());
        let ctx = ServerContext::prepare(options).expect("storage context");
        let server = storage_server::start(&ctx, Default::default())
            .await
            .expect("start storage server");
        // Reads are open; writes by the test use an operator token.
        let http = TestAuth::client(&auth.token("test-writer", "storage:write"));
        let client = StorageClient::from_endpoint(
            Endpoint::with_client(server.url(), http).expect("endpoint"),
        );
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

fn pins(blocks: u64, pins: u64) -> SubjectPins {
    SubjectPins { blocks, pins }
}

// ---------------------------------------------------------------------------------------
// Pins per subject
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_subject_cannot_unpin_and_the_copies_stay() {
    let auth = TestAuth::new();
    let broker = FakeBroker::start().await;
    let mut storages = Vec::new();
    for _ in 0..3 {
        storages.push(Storage::start(&auth, &broker).await);
    }
    for storage in &storages {
        let id = storage.server.id();
        eventually("storage registration", || async { broker.knows(&id) }).await;
    }
    let dir = tempfile::tempdir().expect("dir");
    // No grace period: a released block is collected by the next sweep.
    let config = DistributorConfig {
        gc_grace: Duration::ZERO,
        gc_interval: None,
        ..fast_config()
    };
    let server = launch(dir.path(), Some(&auth), Some(&broker), "", config).await;
    let url = server.url().to_string();
    let alice_token = auth.token("alice", "distributor:pin");
    let bob_token = auth.token("bob", "distributor:pin");
    let operator = auth.token("operator", "*");
    let alice = client(&url, Some(&alice_token));
    let bob = client(&url, Some(&bob_token));
    let admin = client(&url, Some(&operator));
    eventually("three active storage servers", || async {
        admin.status().await.expect("status").storages_active == 3
    })
    .await;

    // Alice's blocks, stored on one server, pinned: 3 copies each (the distributor
    // writes to storage servers in auth mode with its own token).
    let mut blocks = Vec::new();
    for n in 0..5u8 {
        let data = Bytes::from(vec![n; 1000 + usize::from(n)]);
        blocks.push(storages[0].client.post(data).await.expect("store"));
    }
    alice.pin(&blocks).await.expect("alice pins");
    eventually("every block on all three servers", || async {
        for storage in &storages {
            for block in &blocks {
                if !storage.holds(block).await {
                    return false;
                }
            }
        }
        let status = admin.status().await.expect("status");
        status.under_replicated == 0 && status.copies_in_flight == 0
    })
    .await;

    // The attack: Bob unpins Alice's blocks. Refused, nothing applied.
    let (status, reason) = put_raw(&url, "/distributor/unpin", Some(&bob_token), &blocks).await;
    assert_eq!(status, StatusCode::CONFLICT, "{reason}");
    assert!(reason.contains("of yours"), "{reason}");
    // Mixing one of his own pins in changes nothing either.
    bob.pin(&blocks[..1]).await.expect("bob pins one");
    let (status, _) = put_raw(&url, "/distributor/unpin", Some(&bob_token), &blocks[..2]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let status = admin.status().await.expect("status");
    assert_eq!(status.pinned, 5);
    assert_eq!(
        status
            .pins_by_subject
            .expect("operator sees pins by subject"),
        [
            ("alice".to_string(), pins(5, 5)),
            ("bob".to_string(), pins(1, 1)),
        ]
        .into_iter()
        .collect()
    );
    // Bob releases his own pin: the block stays pinned by Alice.
    bob.unpin(&blocks[..1]).await.expect("bob's own pin");
    let status = admin.status().await.expect("status");
    assert_eq!(status.pinned, 5);
    assert_eq!(
        status.pins_by_subject.expect("pins by subject"),
        [("alice".to_string(), pins(5, 5))].into_iter().collect()
    );
    // Bob may not sweep; the operator's sweep collects nothing Alice pins.
    let refused = bob
        .gc_run(false, |_| {})
        .await
        .expect_err("a sweep needs distributor:admin");
    assert_eq!(refused.status(), Some(403));
    let report = admin.gc_run(false, |_| {}).await.expect("sweep");
    assert_eq!(report.blocks, 0, "{report:?}");
    // Still every copy, and still placed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for storage in &storages {
        for block in &blocks {
            assert!(storage.holds(block).await, "{block} kept");
        }
    }
    let placements = admin.blocks(&blocks).await.expect("blocks");
    assert!(placements.iter().all(|p| p.storages.len() == 3));

    // Alice's unpin works.
    alice.unpin(&blocks).await.expect("alice unpins");
    let status = admin.status().await.expect("status");
    assert_eq!(status.pinned, 0);
    assert_eq!(
        status.pins_by_subject.expect("pins by subject"),
        Default::default()
    );
    // Now nobody pins them: the sweep deletes every copy, with the distributor's
    // `storage:delete` right on servers that check tokens.
    let report = admin.gc_run(false, |_| {}).await.expect("sweep");
    assert_eq!(report.blocks, 5, "{report:?}");
    assert_eq!(report.behind, 0, "{report:?}");
    for storage in &storages {
        for block in &blocks {
            assert!(!storage.holds(block).await, "{block} collected");
        }
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pins_without_the_right_are_refused_and_change_nothing() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("dir");
    let server = launch(dir.path(), Some(&auth), None, "", fast_config()).await;
    let url = server.url().to_string();
    let alice_token = auth.token("alice", "distributor:pin");
    let operator = auth.token("operator", "*");
    let [kept, fresh]: [Id; 2] = [Id::of_content(b"kept"), Id::of_content(b"fresh")];
    client(&url, Some(&alice_token))
        .pin(&[kept])
        .await
        .expect("alice pins");

    let wide = auth.token("alice", "distributor:pin,distributor:read");
    let refused: Vec<(Option<String>, StatusCode, &str)> = vec![
        (None, StatusCode::UNAUTHORIZED, "no token"),
        (
            Some(auth.token("alice", "distributor:read,storage:write")),
            StatusCode::FORBIDDEN,
            "no distributor:pin",
        ),
        (
            Some(auth.expired("alice", "distributor:pin")),
            StatusCode::FORBIDDEN,
            "expired",
        ),
        (
            Some(auth.foreign("alice")),
            StatusCode::FORBIDDEN,
            "foreign root",
        ),
        (
            Some(auth.attenuated(&wide, "distributor:read")),
            StatusCode::FORBIDDEN,
            "attenuated away",
        ),
    ];
    for (token, expected, what) in &refused {
        for route in [
            "/distributor/pin",
            "/distributor/unpin",
            "/distribute/unpin",
        ] {
            let (status, reason) = put_raw(&url, route, token.as_deref(), &[kept, fresh]).await;
            assert_eq!(status, *expected, "{route} {what}: {reason}");
            assert!(!reason.trim().is_empty(), "{route} {what}: a reason");
        }
    }
    // Nothing changed: Alice's one pin, `fresh` never pinned.
    let status = client(&url, Some(&operator))
        .status()
        .await
        .expect("status");
    assert_eq!(status.pinned, 1);
    assert_eq!(
        status.pins_by_subject.expect("pins by subject"),
        [("alice".to_string(), pins(1, 1))].into_iter().collect()
    );
    client(&url, Some(&alice_token))
        .unpin(&[kept])
        .await
        .expect("alice's pin is intact");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pins_by_subject_are_shown_to_operators_only() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("dir");
    let server = launch(dir.path(), Some(&auth), None, "", fast_config()).await;
    let url = server.url().to_string();
    let alice_token = auth.token("alice", "distributor:pin,distributor:read");
    let blocks = [Id::of_content(b"a"), Id::of_content(b"b")];
    client(&url, Some(&alice_token))
        .pin(&[blocks[0], blocks[1], blocks[0]])
        .await
        .expect("pin");

    for (token, what) in [
        (None, "anonymous"),
        (Some(alice_token.clone()), "a pinner"),
        (
            Some(auth.token("reader", "*:read")),
            "a reader of every role",
        ),
        (Some(auth.expired("operator", "*")), "an expired operator"),
        (Some(auth.foreign("operator")), "another network's operator"),
    ] {
        let json = status_json(&url, token.as_deref()).await;
        assert_eq!(json["pinned"], 2, "{what}");
        assert!(json.get("pins_by_subject").is_none(), "{what}: {json}");
    }
    for token in [
        auth.token("operator", "*"),
        auth.token("admin", "distributor:admin"),
    ] {
        let json = status_json(&url, Some(&token)).await;
        assert_eq!(json["pins_by_subject"]["alice"]["blocks"], 2, "{json}");
        assert_eq!(json["pins_by_subject"]["alice"]["pins"], 3, "{json}");
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_mode_pins_are_shared_as_before() {
    let dir = tempfile::tempdir().expect("dir");
    let server = launch(dir.path(), None, None, "", fast_config()).await;
    let url = server.url().to_string();
    let block = Id::of_content(b"shared");
    // Different clients are the same (anonymous) subject: one's pin is another's.
    client(&url, None).pin(&[block]).await.expect("pin");
    let auth = TestAuth::new();
    let ignored = auth.token("alice", "*");
    client(&url, Some(&ignored))
        .unpin(&[block])
        .await
        .expect("any caller unpins in open mode");
    let (status, reason) = put_raw(&url, "/distributor/unpin", None, &[block]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(!reason.contains("of yours"), "{reason}");
    let json = status_json(&url, Some(&ignored)).await;
    assert!(json.get("pins_by_subject").is_none(), "{json}");
    assert_eq!(json["pinned"], 0);
    server.stop().await.expect("stop");
}

/// Writes a distributor database as the code before per-subject pins did (schema 1):
/// counts in `pins`, no per-subject tables.
fn write_schema_1(dir: &Path, pins: &[(Id, u64)]) {
    use redb::{Database, TableDefinition};
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    const PINS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("pins");
    const STORAGES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("storages");
    const HOLDERS: TableDefinition<&[u8; 64], &[u8]> = TableDefinition::new("holders");
    let db = Database::create(dir.join(DB_FILE)).expect("create");
    let txn = db.begin_write().expect("txn");
    {
        txn.open_table(META)
            .expect("meta")
            .insert("schema", 1)
            .expect("schema");
        let mut rows = txn.open_table(PINS).expect("pins");
        for (block, count) in pins {
            let mut value = vec![1u8];
            value.extend_from_slice(&count.to_le_bytes());
            rows.insert(block.as_bytes(), value.as_slice())
                .expect("pin");
        }
        txn.open_table(STORAGES).expect("storages");
        txn.open_table(HOLDERS).expect("holders");
    }
    txn.commit().expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_pins_become_anonymous_pins() {
    let dir = tempfile::tempdir().expect("dir");
    let [a, b] = [Id::of_content(b"old a"), Id::of_content(b"old b")];
    write_schema_1(dir.path(), &[(a, 2), (b, 1)]);

    // Auth mode: the old pins belong to nobody with a token.
    let auth = TestAuth::new();
    let server = launch(dir.path(), Some(&auth), None, "", fast_config()).await;
    let url = server.url().to_string();
    let operator = auth.token("operator", "*");
    let status = client(&url, Some(&operator))
        .status()
        .await
        .expect("status");
    assert_eq!(status.pinned, 2);
    assert_eq!(
        status.pins_by_subject.expect("pins by subject"),
        [(String::new(), pins(2, 3))].into_iter().collect()
    );
    let (code, _) = put_raw(&url, "/distributor/unpin", Some(&operator), &[b]).await;
    assert_eq!(code, StatusCode::CONFLICT, "not the operator's pins");
    server.stop().await.expect("stop");

    // Open mode: they are the anonymous caller's, exactly as before.
    let server = launch(dir.path(), None, None, "", fast_config()).await;
    let anonymous = client(server.url(), None);
    assert_eq!(anonymous.status().await.expect("status").pinned, 2);
    anonymous
        .unpin(&[a, a, b])
        .await
        .expect("old pins released");
    assert_eq!(anonymous.status().await.expect("status").pinned, 0);
    let (code, _) = put_raw(server.url(), "/distributor/unpin", None, &[a]).await;
    assert_eq!(code, StatusCode::CONFLICT);
    server.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_servers_outside_peer_allow_are_never_contacted() {
    let broker = FakeBroker::start().await;
    let recorder = Recorder::start(None).await;
    let storage_id = Id::of_content(b"outside");
    broker.register(storage_id, "storage", &recorder.url);
    let named = Id::of_content(b"named");
    let port = recorder.url.rsplit(':').next().expect("port");
    broker.register(named, "storage", &format!("http://localhost:{port}"));

    let dir = tempfile::tempdir().expect("dir");
    let server = launch(
        dir.path(),
        None,
        Some(&broker),
        "127.0.0.128/25",
        fast_config(),
    )
    .await;
    let client = client(server.url(), None);
    client
        .pin(&[Id::of_content(b"a block")])
        .await
        .expect("pin");
    // Both are candidates, probed every 100 ms, and never contacted.
    eventually("candidates known and passes run", || async {
        let status = client.status().await.expect("status");
        status.storages_known == 2 && status.passes >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status = client.status().await.expect("status");
    assert_eq!(status.storages_active, 0);
    assert_eq!(recorder.accepted(), 0, "no connection outside --peer-allow");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redirecting_storage_server_is_not_followed() {
    let broker = FakeBroker::start().await;
    let target = Recorder::start(None).await;
    let redirect = Recorder::start(Some(format!(
        "HTTP/1.1 302 Found\r\nLocation: {}/id/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        target.url
    )))
    .await;
    let storage_id = Id::of_content(b"redirecting");
    broker.register(storage_id, "storage", &redirect.url);

    let dir = tempfile::tempdir().expect("dir");
    let server = launch(dir.path(), None, Some(&broker), "", fast_config()).await;
    let client = client(server.url(), None);
    eventually("the redirecting server probed a few times", || async {
        redirect.accepted() >= 3
    })
    .await;
    let status = client.status().await.expect("status");
    assert_eq!(status.storages_active, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(target.accepted(), 0, "the redirect was not followed");
    server.stop().await.expect("stop");
}

/// A storage double answering `/id` with `id`, holding nothing, counting `HEAD`s of
/// one block.
async fn empty_storage(id: Id, block: Id) -> (String, Arc<AtomicUsize>, JoinHandle<()>) {
    let heads = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&heads);
    let on_blob = move |axum::extract::Path(address): axum::extract::Path<String>| {
        let counted = Arc::clone(&counted);
        async move {
            if address == block.to_string() {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            StatusCode::NOT_FOUND
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
        .route("/storage/{address}", axum::routing::head(on_blob));
    let (url, task) = spawn_app(router).await;
    (url, heads, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_nobody_holds_is_retried_at_a_bounded_rate() {
    let broker = FakeBroker::start().await;
    let fake = Id::of_content(b"a made-up block");
    let storage_id = Id::of_content(b"an empty storage server");
    let (url, heads, task) = empty_storage(storage_id, fake).await;
    broker.register(storage_id, "storage", &url);

    let dir = tempfile::tempdir().expect("dir");
    let config = DistributorConfig {
        max_attempts: 3,
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(40),
        // A pass every ~200 ms: each may give the block one more attempt, no more.
        repair_interval: Duration::from_millis(200),
        ..fast_config()
    };
    let server = launch(dir.path(), None, Some(&broker), "", config).await;
    let client = client(server.url(), None);
    eventually("the storage server active", || async {
        client.status().await.expect("status").storages_active == 1
    })
    .await;
    client.pin(&[fake]).await.expect("pin");
    let before = client.status().await.expect("status").passes;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = client.status().await.expect("status");
    let passes = (status.passes - before) as usize;
    let seen = heads.load(Ordering::SeqCst);
    assert!(passes >= 3, "passes ran: {passes}");
    assert!(seen >= 3, "the block was looked for: {seen}");
    // One series of 3 attempts (one HEAD each), then at most one attempt per pass —
    // not a fresh series per pass, and never a loop.
    assert!(seen <= passes + 6, "{seen} HEADs in {passes} passes");
    assert_eq!(status.under_replicated, 1);
    server.stop().await.expect("stop");
    task.abort();
}
