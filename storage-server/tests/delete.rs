//! In-process tests of deleting and listing blobs over HTTP: `DELETE /storage/:address`,
//! `POST /storage/delete` and `GET /storage/?after=&limit=`, in open mode (refused
//! without `--allow-open-delete`) and with token checks (`storage:delete`,
//! `storage:list`), for packed blobs and blob files alike, across a restart.
//! Every test talks only to 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use support::launch;

use bytes::Bytes;
use invariant_runtime::Server;
use invariant_spec::storage::MAX_DELETE_BATCH;
use invariant_spec::{ClientError, Id, StorageClient};
use invariant_test_support::TestAuth;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;
use storage_server::StorageConfig;

/// Larger than the largest packed blob: stored as a file.
const FILE_BLOB: usize = 3 << 20;

/// An open-mode server that serves deletes.
async fn launch_deleting(dir: &Path) -> Server {
    let config = StorageConfig {
        allow_open_delete: true,
        ..StorageConfig::default()
    };
    launch(dir, config, |_| {}).await
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

async fn status(request: reqwest::RequestBuilder) -> StatusCode {
    request.send().await.expect("send").status()
}

/// Stores `count` blobs (every third one a blob file, the rest packed).
async fn store_blobs(client: &StorageClient, seed: u64, count: u64) -> BTreeMap<Id, Vec<u8>> {
    let mut stored = BTreeMap::new();
    for i in 0..count {
        let len = if i % 3 == 0 {
            FILE_BLOB
        } else {
            100 + i as usize
        };
        let data = seeded(seed + i, len);
        let address = client.post(Bytes::from(data.clone())).await.expect("post");
        stored.insert(address, data);
    }
    stored
}

#[tokio::test]
async fn open_mode_refuses_deletes_without_the_flag() {
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch(dir.path(), StorageConfig::default(), |_| {}).await;
    let client = StorageClient::new(server.url()).expect("client");
    let http = reqwest::Client::new();
    let address = client
        .post(Bytes::from_static(b"kept"))
        .await
        .expect("post");

    let response = http
        .delete(blob_url(&server, &address))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let reason = response.text().await.expect("reason");
    assert!(reason.contains("--allow-open-delete"), "{reason}");
    let response = http
        .post(format!("{}/storage/delete", server.url()))
        .json(&[address])
        .send()
        .await
        .expect("POST delete");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(client.get_bytes(&address).await.expect("get").is_some());
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_answers_204_then_404_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch_deleting(dir.path()).await;
    let client = StorageClient::new(server.url()).expect("client");
    let http = reqwest::Client::new();
    let stored = store_blobs(&client, 100, 6).await;
    let (gone, kept): (Vec<_>, Vec<_>) = stored.iter().enumerate().partition(|(i, _)| i % 2 == 0);

    for (_, (address, _)) in &gone {
        let response = http
            .delete(blob_url(&server, address))
            .send()
            .await
            .expect("DELETE");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            status(http.get(blob_url(&server, address))).await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(http.head(blob_url(&server, address))).await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(http.delete(blob_url(&server, address))).await,
            StatusCode::NOT_FOUND,
            "a second delete"
        );
    }
    // Bad addresses: 400 with a reason.
    for bad in ["xyz", &"a".repeat(63), &"g".repeat(64)] {
        let response = http
            .delete(format!("{}/storage/{bad}", server.url()))
            .send()
            .await
            .expect("DELETE bad");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(!response.text().await.expect("reason").trim().is_empty());
    }
    server.stop().await.expect("stop");

    let server = launch_deleting(dir.path()).await;
    let client = StorageClient::new(server.url()).expect("client");
    for (_, (address, _)) in &gone {
        assert!(
            client.get_bytes(address).await.expect("get").is_none(),
            "a deleted blob came back after a restart"
        );
    }
    for (_, (address, data)) in &kept {
        assert_eq!(
            client.get_bytes(address).await.expect("get").expect("kept"),
            &data[..]
        );
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_a_delete_needs_storage_delete() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("data dir");
    let root = auth.public();
    // Token checks on: --allow-open-delete plays no part.
    let server = launch(dir.path(), StorageConfig::default(), move |o| {
        o.auth.root = Some(root)
    })
    .await;
    let writer = TestAuth::client(&auth.token("writer", "storage:write,storage:read"));
    let deleter = TestAuth::client(&auth.token("sweeper", "storage:delete"));
    let anonymous = reqwest::Client::new();
    let data = b"deleted only with the right".to_vec();
    let address = Id::of_content(&data);
    let response = writer
        .put(blob_url(&server, &address))
        .body(data.clone())
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::OK);

    let batch = format!("{}/storage/delete", server.url());
    assert_eq!(
        status(anonymous.delete(blob_url(&server, &address))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(anonymous.post(&batch).json(&[address])).await,
        StatusCode::UNAUTHORIZED
    );
    let refused = [
        ("without storage:delete", writer.clone()),
        (
            "expired",
            TestAuth::client(&auth.expired("sweeper", "storage:delete")),
        ),
        (
            "narrowed to reads",
            TestAuth::client(&auth.attenuated(
                &auth.token("sweeper", "storage:delete,storage:read"),
                "storage:read",
            )),
        ),
    ];
    for (what, client) in &refused {
        assert_eq!(
            status(client.delete(blob_url(&server, &address))).await,
            StatusCode::FORBIDDEN,
            "{what}"
        );
        assert_eq!(
            status(client.post(&batch).json(&[address])).await,
            StatusCode::FORBIDDEN,
            "{what}"
        );
    }
    let response = anonymous
        .get(blob_url(&server, &address))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the blob must still be there"
    );
    assert_eq!(response.bytes().await.expect("body"), &data[..]);

    assert_eq!(
        status(deleter.delete(blob_url(&server, &address))).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(anonymous.get(blob_url(&server, &address))).await,
        StatusCode::NOT_FOUND
    );

    // The listing needs storage:list.
    let list = format!("{}/storage/", server.url());
    assert_eq!(status(anonymous.get(&list)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(writer.get(&list)).await, StatusCode::FORBIDDEN);
    let lister = TestAuth::client(&auth.token("sweeper", "storage:list"));
    assert_eq!(status(lister.get(&list)).await, StatusCode::OK);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_gives_the_writers_usage_back() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("data dir");
    let root = auth.public();
    let server = launch(dir.path(), StorageConfig::default(), move |o| {
        o.auth.root = Some(root)
    })
    .await;
    let writer = TestAuth::client(&auth.token_with("writer", "storage:write", None, Some(10_000)));
    let deleter = TestAuth::client(&auth.token("sweeper", "storage:delete"));
    let first = seeded(1, 6_000);
    let second = seeded(2, 6_000);
    let put = |data: &Vec<u8>| {
        writer
            .put(blob_url(&server, &Id::of_content(data)))
            .body(data.clone())
            .send()
    };
    assert_eq!(put(&first).await.expect("PUT").status(), StatusCode::OK);
    // Over the quota while the first is held ...
    assert_eq!(
        put(&second).await.expect("PUT").status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        status(deleter.delete(blob_url(&server, &Id::of_content(&first)))).await,
        StatusCode::NO_CONTENT
    );
    // ... and within it once the first is deleted.
    assert_eq!(put(&second).await.expect("PUT").status(), StatusCode::OK);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_delete_reports_what_it_deleted() {
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch_deleting(dir.path()).await;
    let client = StorageClient::new(server.url()).expect("client");
    let http = reqwest::Client::new();
    let stored = store_blobs(&client, 500, 30).await;
    let addresses: Vec<Id> = stored.keys().copied().collect();
    let batch = format!("{}/storage/delete", server.url());

    // A bad address anywhere: 400, nothing deleted.
    let response = http
        .post(&batch)
        .json(&serde_json::json!([
            addresses[0].to_string(),
            "not an address"
        ]))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(!response.text().await.expect("reason").is_empty());
    // Not an array: 400.
    assert_eq!(
        status(http.post(&batch).json(&serde_json::json!({"ids": []}))).await,
        StatusCode::BAD_REQUEST
    );
    // Over the batch limit: 413, nothing deleted.
    let too_many: Vec<Id> = std::iter::once(addresses[0])
        .chain((0..MAX_DELETE_BATCH).map(|_| Id::random()))
        .collect();
    let response = http
        .post(&batch)
        .json(&too_many)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        client
            .get_bytes(&addresses[0])
            .await
            .expect("get")
            .is_some()
    );

    // Twenty held (one named twice) and five never stored.
    let mut ask: Vec<Id> = addresses[..20].to_vec();
    ask.push(addresses[3]);
    ask.extend((0..5).map(|_| Id::random()));
    let expected_bytes: u64 = addresses[..20].iter().map(|a| stored[a].len() as u64).sum();
    let report = client.delete_many(&ask).await.expect("delete many");
    assert_eq!(report.deleted, 20);
    assert_eq!(report.missing, 5);
    assert_eq!(report.bytes, expected_bytes);
    for address in &addresses[..20] {
        assert!(client.get_bytes(address).await.expect("get").is_none());
    }
    for address in &addresses[20..] {
        assert_eq!(
            client.get_bytes(address).await.expect("get").expect("kept"),
            &stored[address][..]
        );
    }
    // Again: all missing now.
    let report = client.delete_many(&addresses[..20]).await.expect("again");
    assert_eq!((report.deleted, report.missing, report.bytes), (0, 20, 0));
    // An empty batch is fine.
    let report = client.delete_many(&[]).await.expect("empty");
    assert_eq!((report.deleted, report.missing), (0, 0));
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_both_layouts_in_address_order() {
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch_deleting(dir.path()).await;
    let client = StorageClient::new(server.url()).expect("client");
    let http = reqwest::Client::new();
    let mut stored = store_blobs(&client, 900, 25).await;
    // A deleted blob is not listed.
    let deleted = *stored.keys().nth(4).expect("blob");
    assert!(client.delete(&deleted).await.expect("delete"));
    stored.remove(&deleted);

    let mut listed = Vec::new();
    let mut after: Option<Id> = None;
    let mut pages = 0;
    loop {
        let page = client.list_page(after.as_ref(), 7).await.expect("page");
        pages += 1;
        assert!(page.blobs.len() <= 7);
        listed.extend(page.blobs.iter().map(|b| (b.address, b.size)));
        match page.next {
            Some(next) => {
                assert_eq!(Some(next), page.blobs.last().map(|b| b.address));
                after = Some(next);
            }
            None => break,
        }
        assert!(pages < 20, "paging does not end");
    }
    let expected: Vec<(Id, u64)> = stored.iter().map(|(a, d)| (*a, d.len() as u64)).collect();
    assert_eq!(listed, expected, "ascending, each blob once, with its size");

    // Defaults and bad parameters.
    let whole = client.list_page(None, 10_000).await.expect("whole");
    assert_eq!(whole.blobs.len(), stored.len());
    assert_eq!(whole.next, None);
    let base = format!("{}/storage/", server.url());
    let response = http.get(&base).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    let page: invariant_spec::storage::ListPage =
        serde_json::from_str(&response.text().await.expect("body")).expect("a page");
    assert_eq!(page.blobs.len(), stored.len());
    for bad in ["limit=0", "limit=x", "after=nope", "limit=-1"] {
        let response = http.get(format!("{base}?{bad}")).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // Past the last address: an empty last page.
    let last = *stored.keys().last().expect("blob");
    let page = client.list_page(Some(&last), 5).await.expect("page");
    assert!(page.blobs.is_empty() && page.next.is_none());
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn client_delete_maps_404_to_false() {
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch_deleting(dir.path()).await;
    let client = StorageClient::new(server.url()).expect("client");
    let address = client
        .post(Bytes::from_static(b"once"))
        .await
        .expect("post");
    assert!(client.delete(&address).await.expect("delete"));
    assert!(!client.delete(&address).await.expect("delete again"));
    server.stop().await.expect("stop");
    // A refused delete is an error, not `false`.
    let dir = tempfile::tempdir().expect("data dir");
    let server = launch(dir.path(), StorageConfig::default(), |_| {}).await;
    let client = StorageClient::new(server.url()).expect("client");
    match client.delete(&address).await {
        Err(ClientError::Status { status, .. }) => assert_eq!(status, 403),
        other => panic!("expected a 403, got {other:?}"),
    }
    server.stop().await.expect("stop");
}
