//! In-process HTTP tests of the storage server: every route, every error path.
//!
//! Each test starts its own server on `127.0.0.1:0` over a fresh temporary data
//! directory. Success paths go through the typed [`StorageClient`]; status codes,
//! headers and error answers are checked with raw `reqwest`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::{Id, StorageClient};
use invariant_test_support::{FakeBroker, spawn_app};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, IF_RANGE,
    RANGE,
};
use storage_server::{DEFAULT_MAX_BLOB_SIZE, StorageConfig};
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// Sizes. The server reads and writes up to 256 KiB inline and streams anything larger,
/// so tests use blobs on both sides of that threshold.
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A running storage server with its data directory, a typed client and a raw client.
struct TestServer {
    dir: TempDir,
    server: Server,
    client: StorageClient,
    http: reqwest::Client,
}

impl TestServer {
    async fn start(max_blob_size: u64) -> TestServer {
        TestServer::start_with_broker(max_blob_size, None).await
    }

    async fn start_with_broker(max_blob_size: u64, broker: Option<String>) -> TestServer {
        let dir = tempfile::tempdir().expect("create temp data dir");
        let server = launch(dir.path(), max_blob_size, broker).await;
        let client = StorageClient::new(server.url()).expect("storage client");
        TestServer {
            dir,
            server,
            client,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    fn blob_url(&self, address: &str) -> String {
        self.url(&format!("/storage/{address}"))
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    async fn stop(self) {
        self.server.stop().await.expect("stop server");
    }
}

async fn launch(data_dir: &Path, max_blob_size: u64, broker: Option<String>) -> Server {
    let mut options = ServerOptions::ephemeral(Role::Storage, data_dir);
    options.broker = broker;
    let ctx = ServerContext::prepare(options).expect("prepare server context");
    storage_server::start(
        &ctx,
        StorageConfig {
            max_blob_size,
            ..StorageConfig::default()
        },
    )
    .await
    .expect("start storage server")
}

/// A "storage server" that answers every `GET /storage/{address}` with bytes that do
/// not hash to the address.
async fn spawn_lying_storage() -> (String, JoinHandle<()>) {
    let router = axum::Router::new().route(
        "/storage/{address}",
        axum::routing::get(|| async { "these bytes do not hash to the address" }),
    );
    spawn_app(router).await
}

/// Deterministic pseudo-random bytes.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

/// Every byte value, twice over, plus a few.
fn all_byte_values() -> Vec<u8> {
    (0..=255u8)
        .chain((0..=255u8).rev())
        .chain([0, 255, 10, 13])
        .collect()
}

fn address_of(data: &[u8]) -> Id {
    Id::of_content(data)
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("response has no {name} header"))
        .to_str()
        .expect("header is ASCII")
}

fn content_length(response: &reqwest::Response) -> u64 {
    header(response, CONTENT_LENGTH)
        .parse()
        .expect("Content-Length is a number")
}

/// Files in `<data-dir>/blobs/tmp/`.
fn tmp_files(data_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data_dir.join("blobs").join("tmp"))
        .expect("read tmp dir")
        .map(|e| e.expect("tmp dir entry").path())
        .collect()
}

/// Every stored blob: the files under `<data-dir>/blobs/` (the temp dir excluded)
/// and the records of the packs under `<data-dir>/packs/` (each checked against its
/// address).
fn stored_blobs(data_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read blobs dir") {
            let entry = entry.expect("blobs dir entry");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                if entry.file_name() != "tmp" {
                    walk(&path, out);
                }
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data_dir.join("blobs"), &mut out);
    let packed = storage_server::pack::verify_packs(data_dir).expect("packs verify");
    out.extend(
        packed
            .iter()
            .map(|(id, _)| data_dir.join("packs").join(id.to_string())),
    );
    out
}

async fn status_and_text(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = response.text().await.expect("read response text");
    (status, content_type, text)
}

/// Asserts a plain-text 4xx/5xx answer with a non-empty reason.
async fn assert_plain_error(response: reqwest::Response, expected: StatusCode, what: &str) {
    let (status, content_type, text) = status_and_text(response).await;
    assert_eq!(status, expected, "{what}: status (reason {text:?})");
    assert!(
        content_type.starts_with("text/plain"),
        "{what}: content type {content_type:?}"
    );
    assert!(!text.trim().is_empty(), "{what}: empty reason");
}

// ---------------------------------------------------------------------------------------
// POST /storage/
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn post_answers_the_address_as_plain_text() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let data = b"posted with a trailing slash".to_vec();
    let response = s
        .http
        .post(s.url("/storage/"))
        .body(data.clone())
        .send()
        .await
        .expect("POST /storage/");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, CONTENT_TYPE).starts_with("text/plain"));
    let text = response.text().await.expect("body");
    assert_eq!(text.trim(), address_of(&data).to_string());
    assert_eq!(text.trim().len(), 64);

    let other = b"posted without a trailing slash".to_vec();
    let response = s
        .http
        .post(s.url("/storage"))
        .body(other.clone())
        .send()
        .await
        .expect("POST /storage");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, CONTENT_TYPE).starts_with("text/plain"));
    assert_eq!(
        response.text().await.expect("body").trim(),
        address_of(&other).to_string()
    );

    // Both are now readable.
    for blob in [&data, &other] {
        let got = s
            .client
            .get_bytes(&address_of(blob))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(&got[..], &blob[..]);
    }

    // The typed client agrees, including for binary and empty bodies.
    let binary = Bytes::from(all_byte_values());
    assert_eq!(
        s.client.post(binary.clone()).await.expect("typed post"),
        address_of(&binary)
    );
    assert_eq!(
        s.client.post(Bytes::new()).await.expect("empty post"),
        address_of(b"")
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// PUT / GET / HEAD
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn put_then_get_and_head_round_trip() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let blobs: Vec<Vec<u8>> = vec![b"hello, invariant".to_vec(), all_byte_values(), Vec::new()];
    for data in &blobs {
        let address = address_of(data);
        let response = s
            .http
            .put(s.blob_url(&address.to_string()))
            .body(data.clone())
            .send()
            .await
            .expect("PUT");
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "PUT of {} bytes",
            data.len()
        );

        // Idempotent: storing it again is fine.
        s.client
            .put(&address, data.clone())
            .await
            .expect("second PUT");

        // GET: exact bytes and the immutable-content headers.
        let response = s
            .http
            .get(s.blob_url(&address.to_string()))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, CONTENT_TYPE), "application/octet-stream");
        assert_eq!(header(&response, ETAG), format!("\"{address}\""));
        let cache = header(&response, CACHE_CONTROL);
        assert!(cache.contains("immutable"), "Cache-Control {cache:?}");
        assert!(cache.contains("max-age="), "Cache-Control {cache:?}");
        assert_eq!(header(&response, ACCEPT_RANGES), "bytes");
        assert_eq!(content_length(&response), data.len() as u64);
        let body = response.bytes().await.expect("GET body");
        assert_eq!(&body[..], &data[..]);

        // HEAD: length and ETag, no body.
        let response = s
            .http
            .head(s.blob_url(&address.to_string()))
            .send()
            .await
            .expect("HEAD");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(content_length(&response), data.len() as u64);
        assert_eq!(header(&response, ETAG), format!("\"{address}\""));
        assert!(response.bytes().await.expect("HEAD body").is_empty());

        // Typed client.
        assert_eq!(
            s.client.has(&address).await.expect("has"),
            Some(data.len() as u64)
        );
        let got = s
            .client
            .get_bytes(&address)
            .await
            .expect("get_bytes")
            .expect("present");
        assert_eq!(&got[..], &data[..]);
    }
    assert_eq!(stored_blobs(s.data_dir()).len(), blobs.len());
    assert!(tmp_files(s.data_dir()).is_empty());
    s.stop().await;
}

#[tokio::test]
async fn trailing_slash_on_a_blob_path_is_optional() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let data = b"trailing slash".to_vec();
    let address = address_of(&data).to_string();
    let response = s
        .http
        .put(s.url(&format!("/storage/{address}/")))
        .body(data.clone())
        .send()
        .await
        .expect("PUT with slash");
    assert_eq!(response.status(), StatusCode::OK);
    let response = s
        .http
        .get(s.url(&format!("/storage/{address}/")))
        .send()
        .await
        .expect("GET with slash");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&response.bytes().await.expect("body")[..], &data[..]);
    s.stop().await;
}

#[tokio::test]
async fn uppercase_hex_addresses_are_accepted() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let data = b"Upper Case Address".to_vec();
    let address = address_of(&data);
    let upper = address.to_string().to_uppercase();
    assert_ne!(upper, address.to_string());

    let response = s
        .http
        .put(s.blob_url(&upper))
        .body(data.clone())
        .send()
        .await
        .expect("PUT uppercase");
    assert_eq!(response.status(), StatusCode::OK);

    let response = s
        .http
        .get(s.blob_url(&upper))
        .send()
        .await
        .expect("GET uppercase");
    assert_eq!(response.status(), StatusCode::OK);
    // Emitted in lowercase.
    assert_eq!(header(&response, ETAG), format!("\"{address}\""));
    assert_eq!(&response.bytes().await.expect("body")[..], &data[..]);

    let response = s
        .http
        .head(s.blob_url(&upper))
        .send()
        .await
        .expect("HEAD uppercase");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_length(&response), data.len() as u64);

    // And it is the same blob as the lowercase address.
    assert_eq!(
        s.client.has(&address).await.expect("has"),
        Some(data.len() as u64)
    );
    s.stop().await;
}

#[tokio::test]
async fn malformed_addresses_are_plain_text_400s() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let valid = address_of(b"x").to_string();
    let bad = [
        "abc".to_string(),               // too short
        format!("{valid}00"),            // too long
        format!("{}zz", &valid[..62]),   // not hex
        format!("{}g", &valid[..63]),    // not hex, last position
        valid[..63].to_string(),         // one short
        "0x".to_string() + &valid[..62], // prefixed
    ];
    for address in &bad {
        let response = s
            .http
            .get(s.blob_url(address))
            .send()
            .await
            .expect("GET bad address");
        assert_plain_error(response, StatusCode::BAD_REQUEST, &format!("GET {address}")).await;

        let response = s
            .http
            .put(s.blob_url(address))
            .body("some body")
            .send()
            .await
            .expect("PUT bad address");
        assert_plain_error(response, StatusCode::BAD_REQUEST, &format!("PUT {address}")).await;

        let response = s
            .http
            .head(s.blob_url(address))
            .send()
            .await
            .expect("HEAD bad address");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "HEAD {address}");
    }
    assert!(stored_blobs(s.data_dir()).is_empty());
    s.stop().await;
}

#[tokio::test]
async fn put_with_the_wrong_content_stores_nothing() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    // Small (in-memory path) and large (streamed path) bodies.
    for (claimed_data, body) in [
        (
            b"what the client claims".to_vec(),
            b"what the client sends".to_vec(),
        ),
        (random_bytes(1, 300 * KIB), random_bytes(2, 700 * KIB)),
    ] {
        let claimed = address_of(&claimed_data);
        let real = address_of(&body);
        let response = s
            .http
            .put(s.blob_url(&claimed.to_string()))
            .body(body.clone())
            .send()
            .await
            .expect("PUT mismatched");
        let (status, content_type, text) = status_and_text(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "reason {text:?}");
        assert!(content_type.starts_with("text/plain"));
        assert!(!text.trim().is_empty());

        for address in [claimed, real] {
            let response = s
                .http
                .get(s.blob_url(&address.to_string()))
                .send()
                .await
                .expect("GET after mismatch");
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
            let response = s
                .http
                .head(s.blob_url(&address.to_string()))
                .send()
                .await
                .expect("HEAD after mismatch");
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
        }
        assert!(tmp_files(s.data_dir()).is_empty(), "temp files left behind");
    }

    // Streamed in chunks with no Content-Length, too.
    let claimed = address_of(b"claimed");
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..5)
        .map(|i| Ok(Bytes::from(random_bytes(10 + i, 100 * KIB))))
        .collect();
    let err = s
        .client
        .put_stream(&claimed, futures_util::stream::iter(chunks))
        .await
        .expect_err("mismatched stream must be refused");
    assert!(
        matches!(err, invariant_spec::ClientError::Status { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(s.client.has(&claimed).await.expect("has"), None);
    assert!(stored_blobs(s.data_dir()).is_empty());
    assert!(tmp_files(s.data_dir()).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_upload_stores_nothing() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let whole = random_bytes(20, 900 * KIB);
    let address = address_of(&whole);
    let sent: Vec<Bytes> = whole[..600 * KIB]
        .chunks(100 * KIB)
        .map(Bytes::copy_from_slice)
        .collect();
    for (method, url) in [
        (reqwest::Method::PUT, s.blob_url(&address.to_string())),
        (reqwest::Method::POST, s.url("/storage/")),
    ] {
        // Sends some chunks, waits until the server is writing them to a temp file,
        // then fails the body: the connection is cut mid-upload.
        let server_was_writing = Arc::new(AtomicBool::new(false));
        let state = (
            sent.clone().into_iter(),
            s.data_dir().to_path_buf(),
            Arc::clone(&server_was_writing),
            false,
        );
        let body =
            futures_util::stream::unfold(state, |(mut chunks, dir, seen, done)| async move {
                if done {
                    return None;
                }
                if let Some(chunk) = chunks.next() {
                    return Some((Ok(chunk), (chunks, dir, seen, false)));
                }
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while std::time::Instant::now() < deadline {
                    if !tmp_files(&dir).is_empty() {
                        seen.store(true, Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                let error = std::io::Error::other("client gave up");
                Some((Err(error), (chunks, dir, seen, true)))
            });
        let result = s
            .http
            .request(method.clone(), &url)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await;
        if let Ok(response) = result {
            assert!(
                !response.status().is_success(),
                "{method}: an aborted upload was acknowledged"
            );
        }
        assert!(
            server_was_writing.load(Ordering::SeqCst),
            "{method}: the server never started writing the upload"
        );
    }
    // The server notices the broken body asynchronously: wait for its cleanup.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !tmp_files(s.data_dir()).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(tmp_files(s.data_dir()).is_empty(), "temp files left behind");
    assert!(stored_blobs(s.data_dir()).is_empty());
    assert_eq!(s.client.has(&address).await.expect("has"), None);
    assert_eq!(
        s.client
            .has(&address_of(&whole[..600 * KIB]))
            .await
            .expect("has"),
        None
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Size limit
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn blobs_over_the_limit_get_413_and_store_nothing() {
    const LIMIT: u64 = 1000;
    let s = TestServer::start(LIMIT).await;
    let too_big = random_bytes(3, LIMIT as usize + 1);
    let too_big_address = address_of(&too_big);

    // Declared length over the limit.
    let response = s
        .http
        .put(s.blob_url(&too_big_address.to_string()))
        .body(too_big.clone())
        .send()
        .await
        .expect("PUT too large");
    assert_plain_error(response, StatusCode::PAYLOAD_TOO_LARGE, "PUT 1001 bytes").await;
    let response = s
        .http
        .post(s.url("/storage/"))
        .body(too_big.clone())
        .send()
        .await
        .expect("POST too large");
    assert_plain_error(response, StatusCode::PAYLOAD_TOO_LARGE, "POST 1001 bytes").await;

    // Chunked, no Content-Length: the limit is noticed while streaming.
    let chunked = |data: &[u8]| {
        let chunks: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(300)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };
    let response = s
        .http
        .put(s.blob_url(&too_big_address.to_string()))
        .body(chunked(&too_big))
        .send()
        .await
        .expect("chunked PUT too large");
    assert_plain_error(response, StatusCode::PAYLOAD_TOO_LARGE, "chunked PUT").await;
    let response = s
        .http
        .post(s.url("/storage/"))
        .body(chunked(&too_big))
        .send()
        .await
        .expect("chunked POST too large");
    assert_plain_error(response, StatusCode::PAYLOAD_TOO_LARGE, "chunked POST").await;

    // A chunked body far over the limit (more than one 256 KiB write chunk).
    let much_too_big = random_bytes(4, 600 * KIB);
    let response = s
        .http
        .post(s.url("/storage/"))
        .body(chunked(&much_too_big[..]))
        .send()
        .await
        .expect("large chunked POST");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(s.client.has(&too_big_address).await.expect("has"), None);
    assert_eq!(
        s.client.has(&address_of(&much_too_big)).await.expect("has"),
        None
    );
    assert!(stored_blobs(s.data_dir()).is_empty());
    assert!(tmp_files(s.data_dir()).is_empty());

    // Exactly the limit fits, by every route.
    let exact = random_bytes(5, LIMIT as usize);
    let exact_address = address_of(&exact);
    let response = s
        .http
        .put(s.blob_url(&exact_address.to_string()))
        .body(exact.clone())
        .send()
        .await
        .expect("PUT at the limit");
    assert_eq!(response.status(), StatusCode::OK);
    let exact2 = random_bytes(6, LIMIT as usize);
    assert_eq!(
        s.client
            .post(Bytes::from(exact2.clone()))
            .await
            .expect("POST at limit"),
        address_of(&exact2)
    );
    let exact3 = random_bytes(7, LIMIT as usize);
    let response = s
        .http
        .put(s.blob_url(&address_of(&exact3).to_string()))
        .body(chunked(&exact3))
        .send()
        .await
        .expect("chunked PUT at the limit");
    assert_eq!(response.status(), StatusCode::OK);
    for blob in [&exact, &exact2, &exact3] {
        let got = s
            .client
            .get_bytes(&address_of(blob))
            .await
            .expect("get")
            .expect("present");
        assert_eq!(&got[..], &blob[..]);
    }
    assert_eq!(stored_blobs(s.data_dir()).len(), 3);
    assert!(tmp_files(s.data_dir()).is_empty());
    s.stop().await;
}

/// A client still sending a body far over the limit must be able to read the 413 (not a
/// connection reset), whether the length was declared or the body is chunked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_far_over_the_limit_still_read_413() {
    let s = TestServer::start(1000).await;
    let big = Bytes::from(random_bytes(8, 8 * MIB));
    let address = address_of(&big);
    for round in 0..3 {
        for (method, url) in [
            (reqwest::Method::PUT, s.blob_url(&address.to_string())),
            (reqwest::Method::POST, s.url("/storage/")),
        ] {
            let declared = s
                .http
                .request(method.clone(), &url)
                .body(big.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}: {method} with a length: {e:?}"));
            assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let chunks: Vec<Result<Bytes, std::io::Error>> = (0..big.len())
                .step_by(64 * KIB)
                .map(|i| Ok(big.slice(i..(i + 64 * KIB).min(big.len()))))
                .collect();
            let chunked = s
                .http
                .request(method.clone(), &url)
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    chunks,
                )))
                .send()
                .await
                .unwrap_or_else(|e| panic!("round {round}: chunked {method}: {e:?}"));
            assert_eq!(chunked.status(), StatusCode::PAYLOAD_TOO_LARGE);
        }
    }
    assert_eq!(s.client.has(&address).await.expect("has"), None);
    assert!(stored_blobs(s.data_dir()).is_empty());
    assert!(tmp_files(s.data_dir()).is_empty());
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Large blobs (streamed paths)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_blobs_stream_both_ways() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let data = random_bytes(42, 5 * MIB + 123);
    let address = address_of(&data);

    // PUT from a stream of uneven chunks.
    let mut chunks = Vec::new();
    let mut rest = &data[..];
    let mut size = 1;
    while !rest.is_empty() {
        let n = size.min(rest.len());
        chunks.push(Ok::<Bytes, std::io::Error>(Bytes::copy_from_slice(
            &rest[..n],
        )));
        rest = &rest[n..];
        size = size * 7 + 13;
    }
    assert!(chunks.len() > 4);
    s.client
        .put_stream(&address, futures_util::stream::iter(chunks))
        .await
        .expect("put_stream");
    assert_eq!(
        s.client.has(&address).await.expect("has"),
        Some(data.len() as u64)
    );

    // Read back streaming: several chunks, same bytes, verified.
    let mut stream = s.client.get(&address).await.expect("get").expect("present");
    let mut got = Vec::with_capacity(data.len());
    let mut pieces = 0;
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.expect("verified chunk"));
        pieces += 1;
    }
    assert!(pieces > 1, "a 5 MiB blob should arrive in several chunks");
    assert_eq!(address_of(&got), address);
    assert!(got == data);

    let got = s
        .client
        .get_bytes(&address)
        .await
        .expect("get_bytes")
        .expect("present");
    assert_eq!(address_of(&got), address);

    // POST another large blob (declared length above the inline threshold).
    let posted = random_bytes(43, 5 * MIB);
    let posted_address = s
        .client
        .post(Bytes::from(posted.clone()))
        .await
        .expect("POST large");
    assert_eq!(posted_address, address_of(&posted));
    let response = s
        .http
        .get(s.blob_url(&posted_address.to_string()))
        .send()
        .await
        .expect("GET large");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_length(&response), posted.len() as u64);
    let body = response.bytes().await.expect("body");
    assert_eq!(address_of(&body), posted_address);

    assert_eq!(stored_blobs(s.data_dir()).len(), 2);
    assert!(tmp_files(s.data_dir()).is_empty());
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Missing blobs
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_blobs_are_404() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let address = address_of(b"never stored");
    let response = s
        .http
        .get(s.blob_url(&address.to_string()))
        .send()
        .await
        .expect("GET missing");
    assert_plain_error(response, StatusCode::NOT_FOUND, "GET missing").await;
    let response = s
        .http
        .head(s.blob_url(&address.to_string()))
        .send()
        .await
        .expect("HEAD missing");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = s
        .http
        .get(s.blob_url(&address.to_string()))
        .header(RANGE, "bytes=0-0")
        .send()
        .await
        .expect("ranged GET missing");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    assert_eq!(s.client.has(&address).await.expect("has"), None);
    assert!(s.client.get(&address).await.expect("get").is_none());
    assert!(
        s.client
            .get_bytes(&address)
            .await
            .expect("get_bytes")
            .is_none()
    );
    assert!(
        s.client
            .get_range(&address, 0..1)
            .await
            .expect("get_range")
            .is_none()
    );
    assert!(
        s.client
            .get_range(&address, 0..0)
            .await
            .expect("empty get_range")
            .is_none()
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Range
// ---------------------------------------------------------------------------------------

async fn ranged_get(
    s: &TestServer,
    address: &Id,
    range: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Bytes) {
    let response = s
        .http
        .get(s.blob_url(&address.to_string()))
        .header(RANGE, range)
        .send()
        .await
        .expect("ranged GET");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("ranged body");
    (status, headers, body)
}

fn header_str<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Asserts a 206 for `start..=end` of `data`.
async fn assert_partial(s: &TestServer, data: &[u8], range: &str, start: usize, end: usize) {
    let address = address_of(data);
    let (status, headers, body) = ranged_get(s, &address, range).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
    assert_eq!(
        header_str(&headers, "content-range"),
        Some(format!("bytes {start}-{end}/{}", data.len()).as_str()),
        "{range}"
    );
    assert_eq!(
        header_str(&headers, "content-length"),
        Some((end - start + 1).to_string().as_str()),
        "{range}"
    );
    assert_eq!(
        header_str(&headers, "etag"),
        Some(format!("\"{address}\"").as_str())
    );
    assert!(body[..] == data[start..=end], "{range}: wrong bytes");
}

/// Asserts the whole blob comes back with 200.
async fn assert_full(s: &TestServer, data: &[u8], range: &str) {
    let (status, headers, body) = ranged_get(s, &address_of(data), range).await;
    assert_eq!(status, StatusCode::OK, "{range}");
    assert!(headers.get("content-range").is_none(), "{range}");
    assert_eq!(
        header_str(&headers, "content-length"),
        Some(data.len().to_string().as_str())
    );
    assert!(body[..] == data[..], "{range}: wrong bytes");
}

#[tokio::test]
async fn range_requests_on_a_small_blob() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let data = b"0123456789".to_vec();
    let address = s
        .client
        .put_bytes(Bytes::from(data.clone()))
        .await
        .expect("put");

    assert_partial(&s, &data, "bytes=0-0", 0, 0).await;
    assert_partial(&s, &data, "bytes=2-5", 2, 5).await;
    assert_partial(&s, &data, "bytes=-3", 7, 9).await;
    assert_partial(&s, &data, "bytes=-30", 0, 9).await;
    assert_partial(&s, &data, "bytes=5-", 5, 9).await;
    assert_partial(&s, &data, "bytes=9-9", 9, 9).await;
    assert_partial(&s, &data, "bytes=5-100", 5, 9).await; // end clamps

    assert_full(&s, &data, "bytes=0-1,3-4").await; // multi-range
    assert_full(&s, &data, "bytes=a-b").await; // malformed
    assert_full(&s, &data, "bytes=5-2").await; // reversed
    assert_full(&s, &data, "items=0-1").await; // other unit
    assert_full(&s, &data, "garbage").await;

    for unsatisfiable in ["bytes=10-", "bytes=10-20", "bytes=100-200", "bytes=-0"] {
        let (status, headers, _) = ranged_get(&s, &address, unsatisfiable).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{unsatisfiable}");
        assert_eq!(
            header_str(&headers, "content-range"),
            Some("bytes */10"),
            "{unsatisfiable}"
        );
    }

    // If-Range: our ETag keeps the range; another validator sends everything.
    let response = s
        .http
        .get(s.blob_url(&address.to_string()))
        .header(RANGE, "bytes=2-3")
        .header(IF_RANGE, format!("\"{address}\""))
        .send()
        .await
        .expect("If-Range match");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&response.bytes().await.expect("body")[..], b"23");
    let response = s
        .http
        .get(s.blob_url(&address.to_string()))
        .header(RANGE, "bytes=2-3")
        .header(IF_RANGE, format!("\"{}\"", address_of(b"other")))
        .send()
        .await
        .expect("If-Range mismatch");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&response.bytes().await.expect("body")[..], &data[..]);

    // Typed client.
    let got = s
        .client
        .get_range(&address, 2..6)
        .await
        .expect("get_range")
        .expect("present");
    assert_eq!(&got[..], b"2345");
    let got = s
        .client
        .get_range(&address, 3..3)
        .await
        .expect("empty get_range")
        .expect("present");
    assert!(got.is_empty());
    assert!(
        s.client.get_range(&address, 10..12).await.is_err(),
        "a range past the end is an error, not bytes"
    );

    // An empty blob has no satisfiable range.
    let empty = s.client.put_bytes(Bytes::new()).await.expect("put empty");
    let (status, headers, _) = ranged_get(&s, &empty, "bytes=0-").await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header_str(&headers, "content-range"), Some("bytes */0"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_on_a_large_blob() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let data = random_bytes(7, 600 * KIB + 17);
    let address = s
        .client
        .put_bytes(Bytes::from(data.clone()))
        .await
        .expect("put large");
    let len = data.len();
    let boundary = 256 * KIB;

    // Small range straddling the 256 KiB boundary (read inline).
    assert_partial(
        &s,
        &data,
        &format!("bytes={}-{}", boundary - 10, boundary + 10),
        boundary - 10,
        boundary + 10,
    )
    .await;
    // Ranges larger than 256 KiB (streamed), crossing both 256 KiB boundaries.
    assert_partial(&s, &data, "bytes=100000-600000", 100_000, 600_000).await;
    assert_partial(&s, &data, "bytes=1-", 1, len - 1).await;
    assert_partial(&s, &data, "bytes=-300000", len - 300_000, len - 1).await;
    assert_partial(&s, &data, &format!("bytes=0-{}", 10 * len), 0, len - 1).await;
    assert_partial(&s, &data, &format!("bytes={}-", len - 1), len - 1, len - 1).await;
    assert_full(&s, &data, "bytes=0-10,20-30").await;

    let (status, headers, _) = ranged_get(&s, &address, &format!("bytes={len}-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header_str(&headers, "content-range"),
        Some(format!("bytes */{len}").as_str())
    );

    let got = s
        .client
        .get_range(&address, 200_000..(2 * boundary + 5) as u64)
        .await
        .expect("get_range")
        .expect("present");
    assert!(got[..] == data[200_000..2 * boundary + 5]);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// If-None-Match
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn if_none_match_answers_304() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let data = b"cache me".to_vec();
    let address = s
        .client
        .put_bytes(Bytes::from(data.clone()))
        .await
        .expect("put");
    let etag = format!("\"{address}\"");
    let other = format!("\"{}\"", address_of(b"other"));

    for tag in [
        etag.clone(),
        "*".to_string(),
        format!("W/{etag}"),
        format!("{other}, {etag}"),
        etag.to_uppercase(),
    ] {
        let response = s
            .http
            .get(s.blob_url(&address.to_string()))
            .header(IF_NONE_MATCH, &tag)
            .send()
            .await
            .expect("conditional GET");
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{tag}");
        assert_eq!(header(&response, ETAG), etag, "{tag}");
        assert!(response.bytes().await.expect("body").is_empty(), "{tag}");
    }

    // With a Range too, 304 wins.
    let response = s
        .http
        .get(s.blob_url(&address.to_string()))
        .header(IF_NONE_MATCH, &etag)
        .header(RANGE, "bytes=0-1")
        .send()
        .await
        .expect("conditional ranged GET");
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);

    let response = s
        .http
        .get(s.blob_url(&address.to_string()))
        .header(IF_NONE_MATCH, &other)
        .send()
        .await
        .expect("GET with another tag");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&response.bytes().await.expect("body")[..], &data[..]);

    let missing = address_of(b"missing");
    for tag in [format!("\"{missing}\""), "*".to_string()] {
        let response = s
            .http
            .get(s.blob_url(&missing.to_string()))
            .header(IF_NONE_MATCH, &tag)
            .send()
            .await
            .expect("conditional GET of a missing blob");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{tag}");
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// /id, restart
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn id_is_served_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = launch(dir.path(), DEFAULT_MAX_BLOB_SIZE, None).await;
    let http = reqwest::Client::new();
    let id = server.id();
    for path in ["/id", "/id/"] {
        let response = http
            .get(format!("{}{path}", server.url()))
            .send()
            .await
            .expect("GET /id");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(header(&response, CONTENT_TYPE).starts_with("text/plain"));
        let text = response.text().await.expect("id text");
        let text = text.trim();
        assert_eq!(text.len(), 64, "{path}");
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{path}: not lowercase hex: {text}"
        );
        assert_eq!(text, id.to_string(), "{path}");
    }
    let client = StorageClient::new(server.url()).expect("client");
    assert_eq!(client.id().await.expect("typed id"), id);

    let small = b"kept across restarts".to_vec();
    let large = random_bytes(9, 300 * KIB);
    let small_address = client.post(Bytes::from(small.clone())).await.expect("post");
    let large_address = client.post(Bytes::from(large.clone())).await.expect("post");
    server.stop().await.expect("stop");

    let server = launch(dir.path(), DEFAULT_MAX_BLOB_SIZE, None).await;
    assert_eq!(server.id(), id);
    let client = StorageClient::new(server.url()).expect("client");
    assert_eq!(client.id().await.expect("typed id after restart"), id);
    for (address, data) in [(small_address, small), (large_address, large)] {
        let got = client
            .get_bytes(&address)
            .await
            .expect("get after restart")
            .expect("present after restart");
        assert!(got[..] == data[..]);
    }
    server.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let address = s
        .client
        .put_bytes(Bytes::from_static(b"measured"))
        .await
        .expect("put");
    s.client
        .get_bytes(&address)
        .await
        .expect("get")
        .expect("present");
    let _ = s.client.has(&address_of(b"absent")).await.expect("has");

    let response = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, CONTENT_TYPE).starts_with("text/plain"));
    let text = response.text().await.expect("metrics text");
    assert!(text.contains("http_requests_total"), "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .collect();
    let has_line = |method: &str, status: &str| {
        lines.iter().any(|l| {
            l.contains("route=\"/storage/{address}\"")
                && l.contains(&format!("method=\"{method}\""))
                && l.contains(&format!("status=\"{status}\""))
                && l.contains("role=\"storage\"")
        })
    };
    assert!(has_line("PUT", "200"), "{text}");
    assert!(has_line("GET", "200"), "{text}");
    assert!(has_line("HEAD", "404"), "{text}");
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// /storage/fetch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fetch_without_a_broker_is_404() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let response = s
        .http
        .head(s.url("/storage/fetch"))
        .send()
        .await
        .expect("HEAD fetch");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(!s.client.fetch_supported().await.expect("fetch_supported"));

    let body = serde_json::json!({
        "address": address_of(b"a").to_string(),
        "container": address_of(b"c").to_string(),
    });
    let response = s
        .http
        .put(s.url("/storage/fetch"))
        .json(&body)
        .send()
        .await
        .expect("PUT fetch");
    assert_plain_error(response, StatusCode::NOT_FOUND, "PUT fetch, no broker").await;
    let response = s
        .http
        .post(s.url("/storage/fetch/"))
        .json(&body)
        .send()
        .await
        .expect("POST fetch");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(
        !s.client
            .fetch(&address_of(b"a"), &address_of(b"c"))
            .await
            .expect("typed fetch")
    );

    for malformed in [
        "not json".to_string(),
        "{}".to_string(),
        r#"{"address": "abc", "container": "def"}"#.to_string(),
        format!(r#"{{"address": "{}"}}"#, address_of(b"a")),
    ] {
        let response = s
            .http
            .put(s.url("/storage/fetch"))
            .body(malformed.clone())
            .send()
            .await
            .expect("PUT malformed fetch");
        assert_plain_error(
            response,
            StatusCode::BAD_REQUEST,
            &format!("malformed fetch {malformed}"),
        )
        .await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetch_copies_blobs_through_a_broker() {
    // A: the holder. B: fetches from A, resolving A's id through a fake broker.
    let a = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let (liar_url, liar_task) = spawn_lying_storage().await;
    let liar_id = address_of(b"a lying storage server");
    let dead_id = address_of(b"a storage server that is gone");
    let dead_url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let broker = FakeBroker::start().await;
    broker.register(a.server.id(), "storage", a.server.url());
    broker.register(liar_id, "storage", &liar_url);
    broker.register(dead_id, "storage", &dead_url);
    let b =
        TestServer::start_with_broker(DEFAULT_MAX_BLOB_SIZE, Some(broker.url().to_string())).await;

    let response = b
        .http
        .head(b.url("/storage/fetch"))
        .send()
        .await
        .expect("HEAD fetch");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(b.client.fetch_supported().await.expect("fetch_supported"));

    // PUT /storage/fetch (typed client) of a small blob A holds.
    let small = b"copied from A to B".to_vec();
    let small_address = a
        .client
        .put_bytes(Bytes::from(small.clone()))
        .await
        .expect("put in A");
    assert_eq!(b.client.has(&small_address).await.expect("has"), None);
    assert!(
        b.client
            .fetch(&small_address, &a.server.id())
            .await
            .expect("fetch")
    );
    let got = b
        .client
        .get_bytes(&small_address)
        .await
        .expect("get from B")
        .expect("B holds it now");
    assert_eq!(&got[..], &small[..]);
    // Fetching what B already holds is fine.
    assert!(
        b.client
            .fetch(&small_address, &a.server.id())
            .await
            .expect("fetch again")
    );

    // POST /storage/fetch of a large blob.
    let large = random_bytes(11, 700 * KIB);
    let large_address = a
        .client
        .put_bytes(Bytes::from(large.clone()))
        .await
        .expect("put large in A");
    let response = b
        .http
        .post(b.url("/storage/fetch"))
        .json(&serde_json::json!({
            "address": large_address,
            "container": a.server.id(),
        }))
        .send()
        .await
        .expect("POST fetch");
    assert_eq!(response.status(), StatusCode::OK);
    let got = b
        .client
        .get_bytes(&large_address)
        .await
        .expect("get large from B")
        .expect("B holds the large blob");
    assert!(got[..] == large[..]);

    // A does not hold it → 404 / false.
    let absent = address_of(b"A never had this");
    let response = b
        .http
        .put(b.url("/storage/fetch"))
        .json(&serde_json::json!({"address": absent, "container": a.server.id()}))
        .send()
        .await
        .expect("PUT fetch absent");
    assert_plain_error(response, StatusCode::NOT_FOUND, "fetch of an absent blob").await;
    assert!(
        !b.client
            .fetch(&absent, &a.server.id())
            .await
            .expect("fetch absent")
    );
    assert_eq!(b.client.has(&absent).await.expect("has"), None);

    // Unknown container → false.
    let unknown = address_of(b"nobody");
    let fresh = a
        .client
        .put_bytes(Bytes::from_static(b"only A has this"))
        .await
        .expect("put fresh in A");
    assert!(
        !b.client
            .fetch(&fresh, &unknown)
            .await
            .expect("fetch from unknown container")
    );
    // Container the broker knows but that no longer answers → false.
    assert!(
        !b.client
            .fetch(&fresh, &dead_id)
            .await
            .expect("fetch from dead container")
    );
    // Container that serves the wrong bytes → false, nothing stored.
    assert!(
        !b.client
            .fetch(&fresh, &liar_id)
            .await
            .expect("fetch from lying container")
    );
    assert_eq!(b.client.has(&fresh).await.expect("has"), None);
    let liar_content = address_of(b"these bytes do not hash to the address");
    assert_eq!(b.client.has(&liar_content).await.expect("has"), None);
    assert_eq!(stored_blobs(b.data_dir()).len(), 2);
    assert!(tmp_files(b.data_dir()).is_empty());

    // Malformed JSON is still a 400 with a broker.
    let response = b
        .http
        .put(b.url("/storage/fetch"))
        .body("{\"address\":")
        .send()
        .await
        .expect("malformed fetch");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    b.stop().await;
    a.stop().await;
    drop(broker);
    liar_task.abort();
}

#[tokio::test]
async fn fetch_with_an_unreachable_broker_is_404() {
    let dead_broker = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let s = TestServer::start_with_broker(DEFAULT_MAX_BLOB_SIZE, Some(dead_broker)).await;
    assert!(s.client.fetch_supported().await.expect("fetch_supported"));
    assert!(
        !s.client
            .fetch(&address_of(b"a"), &address_of(b"c"))
            .await
            .expect("fetch")
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_of_shared_and_distinct_blobs() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let shared_small = Arc::new(b"everyone writes this".to_vec());
    let shared_large = Arc::new(random_bytes(100, 400 * KIB));
    let mut tasks = Vec::new();
    let mut expected: Vec<Arc<Vec<u8>>> = vec![shared_small.clone(), shared_large.clone()];
    for i in 0..32u64 {
        let data = match i % 4 {
            0 => shared_small.clone(),
            1 => shared_large.clone(),
            2 => Arc::new(random_bytes(200 + i, 1000 + i as usize)),
            _ => Arc::new(random_bytes(300 + i, 300 * KIB + i as usize)),
        };
        if i % 4 >= 2 {
            expected.push(data.clone());
        }
        let http = s.http.clone();
        let url = s.blob_url(&address_of(&data).to_string());
        tasks.push(tokio::spawn(async move {
            let response = http
                .put(url)
                .body(data.as_ref().clone())
                .send()
                .await
                .expect("concurrent PUT");
            response.status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), StatusCode::OK);
    }
    for data in &expected {
        let got = s
            .client
            .get_bytes(&address_of(data))
            .await
            .expect("get")
            .expect("present");
        assert!(got[..] == data[..]);
    }
    assert_eq!(stored_blobs(s.data_dir()).len(), expected.len());
    assert!(tmp_files(s.data_dir()).is_empty());
    s.stop().await;
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_routes_and_methods() {
    let s = TestServer::start(DEFAULT_MAX_BLOB_SIZE).await;
    let address = address_of(b"x").to_string();
    for path in ["/nope", "/storage/a/b", "/storagex", "/"] {
        let response = s.http.get(s.url(path)).send().await.expect("GET unknown");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // DELETE is a route; an open-mode server started without --allow-open-delete
    // refuses it.
    let response = s
        .http
        .delete(s.blob_url(&address))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = s
        .http
        .post(s.blob_url(&address))
        .body("x")
        .send()
        .await
        .expect("POST to a blob");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    // GET /storage is the listing.
    let response = s
        .http
        .get(s.url("/storage"))
        .send()
        .await
        .expect("GET /storage");
    assert_eq!(response.status(), StatusCode::OK);
    let response = s
        .http
        .put(s.url("/storage/delete"))
        .send()
        .await
        .expect("PUT /storage/delete");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let response = s
        .http
        .delete(s.url("/storage/fetch"))
        .send()
        .await
        .expect("DELETE fetch");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    s.stop().await;
}
