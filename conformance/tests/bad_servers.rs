//! The suite must catch broken implementations, not only bless ours: a fake storage
//! server that stores bodies without verifying them and answers 404 for malformed
//! addresses gets a failure and a warning with the right anchors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use invariant_conformance::{Options, Role, Status, run};
use invariant_spec::Id;

type Blobs = Arc<Mutex<HashMap<String, Bytes>>>;

async fn post_blob(State(blobs): State<Blobs>, body: Bytes) -> Response {
    let id = Id::of_content(&body).to_string();
    blobs.lock().expect("lock").insert(id.clone(), body);
    id.into_response()
}

/// Broken on purpose: trusts the address instead of hashing the body.
async fn put_blob(
    State(blobs): State<Blobs>,
    Path(address): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(id) = Id::parse(&address) else {
        return (StatusCode::NOT_FOUND, "no\n").into_response();
    };
    blobs.lock().expect("lock").insert(id.to_string(), body);
    StatusCode::OK.into_response()
}

/// Malformed addresses are simply "not found" (the reference's accident).
async fn get_blob(State(blobs): State<Blobs>, Path(address): Path<String>) -> Response {
    match blobs
        .lock()
        .expect("lock")
        .get(&address.to_ascii_lowercase())
    {
        Some(bytes) => (
            [
                (header::ETAG, format!("\"{address}\"")),
                (header::CACHE_CONTROL, "immutable".to_string()),
            ],
            bytes.clone(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no\n").into_response(),
    }
}

async fn id() -> String {
    Id::of_content(b"fake storage").to_string()
}

async fn spawn_fake() -> String {
    let blobs: Blobs = Arc::default();
    let app = Router::new()
        .route("/id", get(id))
        .route("/id/", get(id))
        .route("/storage/", post(post_blob))
        .route("/storage", post(post_blob))
        .route("/storage/{address}", get(get_blob).put(put_blob))
        .with_state(blobs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test]
async fn a_server_that_stores_unverified_bodies_fails() {
    let url = spawn_fake().await;
    let report = run(
        Role::Storage,
        &url,
        Options {
            only: Some("storage-put-mismatch".into()),
            ..Options::default()
        },
    )
    .await
    .expect("run");
    assert_eq!(report.results.len(), 1);
    let result = &report.results[0];
    assert_eq!(result.status, Status::Fail, "{}", report.table());
    assert_eq!(result.spec, "spec/storage.md#storage-put-mismatch");
    assert!(!report.passed());
}

#[tokio::test]
async fn a_404_for_a_malformed_address_is_a_warning() {
    let url = spawn_fake().await;
    let report = run(
        Role::Storage,
        &url,
        Options {
            only: Some("storage-malformed-address".into()),
            ..Options::default()
        },
    )
    .await
    .expect("run");
    let result = &report.results[0];
    assert_eq!(result.status, Status::Warn, "{}", report.table());
    assert_eq!(result.spec, "spec/common.md#common-malformed-id");
    assert!(report.passed(), "a warning is not a failure");
}

#[tokio::test]
async fn an_unknown_check_is_an_error() {
    let url = spawn_fake().await;
    let outcome = run(
        Role::Storage,
        &url,
        Options {
            only: Some("no-such-check".into()),
            ..Options::default()
        },
    )
    .await;
    assert!(outcome.is_err());
}
