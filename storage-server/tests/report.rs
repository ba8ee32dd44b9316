//! In-process tests of holdings reports to find servers (`storage_server::report`).
//!
//! A fake find server records every `PUT /find/has/` and `PUT /find/gone/` it receives; a fake broker answers
//! `registered`, `location` and `register`. Waits for background reports poll with a
//! generous deadline; nothing asserts on speed.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode as AxumStatus;
use bytes::Bytes;
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::find::HasRequest;
use invariant_spec::{Id, StorageClient};
use invariant_test_support::{FakeBroker, eventually, spawn_app};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use storage_server::StorageConfig;
use storage_server::report::BATCH;
use tokio::task::JoinHandle;

/// A find server that only records the has reports it receives.
struct FakeFind {
    id: Id,
    url: String,
    reports: Arc<Mutex<Vec<HasRequest>>>,
    /// The gone reports, in arrival order.
    gone: Arc<Mutex<Vec<HasRequest>>>,
    /// The `Authorization` header of each report (`None` when absent).
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
    task: JoinHandle<()>,
}

impl FakeFind {
    async fn start() -> FakeFind {
        let id = Id::random();
        let reports: Arc<Mutex<Vec<HasRequest>>> = Arc::default();
        let authorizations: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let on_has = {
            let reports = Arc::clone(&reports);
            let authorizations = Arc::clone(&authorizations);
            move |headers: axum::http::HeaderMap, axum::Json(request): axum::Json<HasRequest>| {
                let reports = Arc::clone(&reports);
                let authorizations = Arc::clone(&authorizations);
                async move {
                    let authorization = headers
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    authorizations
                        .lock()
                        .expect("authorizations lock")
                        .push(authorization);
                    reports.lock().expect("reports lock").push(request);
                    AxumStatus::OK
                }
            }
        };
        let gone: Arc<Mutex<Vec<HasRequest>>> = Arc::default();
        let on_gone = {
            let gone = Arc::clone(&gone);
            move |axum::Json(request): axum::Json<HasRequest>| {
                let gone = Arc::clone(&gone);
                async move {
                    gone.lock().expect("gone lock").push(request);
                    AxumStatus::OK
                }
            }
        };
        let id_text = id.to_string();
        let router = axum::Router::new()
            .route("/find/has", axum::routing::put(on_has.clone()))
            .route("/find/has/", axum::routing::put(on_has))
            .route("/find/gone", axum::routing::put(on_gone.clone()))
            .route("/find/gone/", axum::routing::put(on_gone))
            .route(
                "/id/",
                axum::routing::get(move || async move { id_text.clone() }),
            );
        let (url, task) = spawn_app(router).await;
        FakeFind {
            id,
            url,
            reports,
            gone,
            authorizations,
            task,
        }
    }

    fn reports(&self) -> Vec<HasRequest> {
        self.reports.lock().expect("reports lock").clone()
    }

    /// Every id reported for `container`.
    fn reported(&self, container: &Id) -> HashSet<Id> {
        self.reports()
            .into_iter()
            .filter(|r| r.container == *container)
            .flat_map(|r| r.ids)
            .collect()
    }
}

impl FakeFind {
    /// Every id reported gone for `container`.
    fn reported_gone(&self, container: &Id) -> HashSet<Id> {
        self.gone
            .lock()
            .expect("gone lock")
            .iter()
            .filter(|r| r.container == *container)
            .flat_map(|r| r.ids.clone())
            .collect()
    }
}

impl Drop for FakeFind {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn launch(data_dir: &Path, broker: Option<String>, find: Vec<String>) -> Server {
    launch_with_token(data_dir, broker, find, None).await
}

/// [`launch`] for a server that sends `token` on its own calls.
async fn launch_with_token(
    data_dir: &Path,
    broker: Option<String>,
    find: Vec<String>,
    token: Option<&str>,
) -> Server {
    launch_configured(data_dir, broker, find, token, false).await
}

/// [`launch_with_token`], serving deletes in open mode when `allow_open_delete`.
async fn launch_configured(
    data_dir: &Path,
    broker: Option<String>,
    find: Vec<String>,
    token: Option<&str>,
    allow_open_delete: bool,
) -> Server {
    let mut options = ServerOptions::ephemeral(Role::Storage, data_dir);
    options.broker = broker;
    options.client.token = token.map(str::to_string);
    let ctx = ServerContext::prepare(options).expect("prepare storage context");
    let config = StorageConfig {
        find,
        allow_open_delete,
        ..StorageConfig::default()
    };
    storage_server::start(&ctx, config)
        .await
        .expect("start storage server")
}

fn seeded(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

/// Writes blobs straight into the store's layout (`blobs/ab/cd/<rest>`), as if stored
/// before the server started.
fn preload(data_dir: &Path, count: u64) -> HashSet<Id> {
    let mut ids = HashSet::new();
    for seed in 0..count {
        let data = seeded(seed, 64);
        let id = Id::of_content(&data);
        let hex = id.to_string();
        let dir = data_dir.join("blobs").join(&hex[0..2]).join(&hex[2..4]);
        std::fs::create_dir_all(&dir).expect("create blob dir");
        std::fs::write(dir.join(&hex[4..]), &data).expect("write blob");
        ids.insert(id);
    }
    ids
}

#[tokio::test]
async fn holdings_are_reported_at_start_in_batches() {
    let find = FakeFind::start().await;
    let dir = tempfile::tempdir().expect("data dir");
    let held = preload(dir.path(), 2500);
    let storage = launch(dir.path(), None, vec![find.url.clone()]).await;

    eventually("every held blob is reported", || async {
        find.reported(&storage.id()) == held
    })
    .await;
    let reports = find.reports();
    assert!(reports.len() >= 3, "{} batches", reports.len());
    for report in &reports {
        assert_eq!(report.container, storage.id());
        assert!(!report.ids.is_empty() && report.ids.len() <= BATCH);
    }
    storage.stop().await.expect("stop");
}

#[tokio::test]
async fn new_blobs_are_reported_in_batches() {
    let find = FakeFind::start().await;
    let dir = tempfile::tempdir().expect("data dir");
    let storage = launch(dir.path(), None, vec![find.url.clone()]).await;
    let client = StorageClient::new(storage.url()).expect("client");

    let mut expected = HashSet::new();
    for seed in 0..40u64 {
        let data = Bytes::from(seeded(1000 + seed, 100));
        let address = if seed % 2 == 0 {
            client.post(data).await.expect("post")
        } else {
            let address = Id::of_content(&data);
            client.put(&address, data).await.expect("put");
            address
        };
        expected.insert(address);
    }
    eventually("new blobs are reported", || async {
        find.reported(&storage.id()) == expected
    })
    .await;
    // How many batches depends on timing; each names this server and fits a batch.
    for report in find.reports() {
        assert_eq!(report.container, storage.id());
        assert!(report.ids.len() <= BATCH);
    }
    storage.stop().await.expect("stop");
}

#[tokio::test]
async fn uploads_succeed_when_the_find_server_is_down() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let dir = tempfile::tempdir().expect("data dir");
    preload(dir.path(), 10);
    let storage = launch(dir.path(), None, vec![dead]).await;
    let client = StorageClient::new(storage.url()).expect("client");
    for seed in 0..20u64 {
        let data = Bytes::from(seeded(2000 + seed, 5000));
        let address = client.post(data.clone()).await.expect("post");
        assert_eq!(
            client
                .get_bytes(&address)
                .await
                .expect("get")
                .expect("held"),
            data
        );
    }
    storage.stop().await.expect("stop");
}

#[tokio::test]
async fn without_the_flag_the_brokers_find_servers_are_used() {
    let find = FakeFind::start().await;
    let holder_dir = tempfile::tempdir().expect("holder dir");
    let holder = launch(holder_dir.path(), None, Vec::new()).await;
    let holder_client = StorageClient::new(holder.url()).expect("holder client");
    let fetched = holder_client
        .post(Bytes::from_static(b"fetched through the broker"))
        .await
        .expect("post to holder");

    let broker = FakeBroker::start().await;
    broker.register(find.id, "find", &find.url);
    broker.register(holder.id(), "storage", holder.url());
    let dir = tempfile::tempdir().expect("data dir");
    let storage = launch(dir.path(), Some(broker.url().to_string()), Vec::new()).await;
    let client = StorageClient::new(storage.url()).expect("client");

    let put = client
        .post(Bytes::from_static(b"reported via the broker"))
        .await
        .expect("post");
    // A blob copied with /storage/fetch is reported too.
    assert!(client.fetch(&fetched, &holder.id()).await.expect("fetch"));
    let expected: HashSet<Id> = [put, fetched].into_iter().collect();
    eventually("blobs are reported to the broker's find server", || async {
        find.reported(&storage.id()) == expected
    })
    .await;
    // The holder has neither --find nor a broker: it reports nothing anywhere.
    assert!(find.reported(&holder.id()).is_empty());

    storage.stop().await.expect("stop");
    holder.stop().await.expect("stop holder");
    drop(broker);
}

#[tokio::test]
async fn reports_carry_the_servers_own_token() {
    let fixed = FakeFind::start().await;
    let listed = FakeFind::start().await;
    let broker = FakeBroker::start().await;
    broker.register(listed.id, "find", &listed.url);
    let fixed_dir = tempfile::tempdir().expect("data dir");
    let listed_dir = tempfile::tempdir().expect("data dir");
    preload(fixed_dir.path(), 3);
    preload(listed_dir.path(), 3);
    // One server reports to a --find server, the other to the broker's.
    let to_fixed = launch_with_token(
        fixed_dir.path(),
        None,
        vec![fixed.url.clone()],
        Some("token-of-the-storage-server"),
    )
    .await;
    let to_listed = launch_with_token(
        listed_dir.path(),
        Some(broker.url().to_string()),
        Vec::new(),
        Some("token-of-the-storage-server"),
    )
    .await;
    for find in [&fixed, &listed] {
        eventually("holdings are reported", || async {
            !find.reports().is_empty()
        })
        .await;
        let authorizations = find.authorizations.lock().expect("lock").clone();
        assert!(
            authorizations
                .iter()
                .all(|a| a.as_deref() == Some("Bearer token-of-the-storage-server")),
            "{authorizations:?}"
        );
    }
    to_fixed.stop().await.expect("stop");
    to_listed.stop().await.expect("stop");
    drop(broker);
}

#[tokio::test]
async fn deleted_blobs_are_reported_gone() {
    let find = FakeFind::start().await;
    let dir = tempfile::tempdir().expect("data dir");
    let storage = launch_configured(dir.path(), None, vec![find.url.clone()], None, true).await;
    let client = StorageClient::new(storage.url()).expect("client");
    let mut stored = Vec::new();
    for seed in 0..30u64 {
        // Packed and file-layout blobs alike.
        let len = if seed % 3 == 0 { 3 << 20 } else { 200 };
        stored.push(
            client
                .post(Bytes::from(seeded(3000 + seed, len)))
                .await
                .expect("post"),
        );
    }
    eventually("new blobs are reported", || async {
        find.reported(&storage.id()).len() == stored.len()
    })
    .await;
    assert!(find.reported_gone(&storage.id()).is_empty());

    // One by one, and in a batch.
    assert!(client.delete(&stored[0]).await.expect("delete"));
    let report = client
        .delete_many(&stored[1..20])
        .await
        .expect("delete many");
    assert_eq!(report.deleted, 19);
    let expected: HashSet<Id> = stored[..20].iter().copied().collect();
    eventually("deletions are reported gone", || async {
        find.reported_gone(&storage.id()) == expected
    })
    .await;
    // A delete of a blob not held reports nothing.
    assert!(!client.delete(&stored[0]).await.expect("delete again"));
    tokio::time::sleep(storage_server::report::DELAY * 3).await;
    assert_eq!(find.reported_gone(&storage.id()), expected);
    storage.stop().await.expect("stop");
}
