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

/// A token for runs against the fakes: they check none, so any value would do for
/// the suite's own requests; the auth checks derive narrower tokens from it, so it is
/// a real one.
fn some_token() -> String {
    invariant_test_support::TestAuth::new().token("conformance-operator", "*")
}

fn with_token() -> Options {
    Options {
        only: Some("auth-no-token".into()),
        security: invariant_conformance::ClientSecurity {
            token: Some(some_token()),
            ..Default::default()
        },
        ..Options::default()
    }
}

#[tokio::test]
async fn an_open_server_fails_the_auth_checks_when_given_a_token() {
    let url = spawn_fake().await;
    let report = run(Role::Storage, &url, with_token()).await.expect("run");
    let result = &report.results[0];
    assert_eq!(result.status, Status::Fail, "{}", report.table());
    assert_eq!(result.spec, "spec/security.md#security-401");
    assert!(result.detail.contains("expected 401"), "{}", result.detail);
}

/// Broken on purpose: stores the body, then answers as if it had refused it.
async fn store_then_refuse(
    State(blobs): State<Blobs>,
    request: axum::extract::Request,
) -> Response {
    let path = request.uri().path().to_string();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    if !path.contains("fetch") {
        blobs
            .lock()
            .expect("lock")
            .insert(Id::of_content(&body).to_string(), body);
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "token needed\n",
    )
        .into_response()
}

#[tokio::test]
async fn a_refusal_that_changed_state_fails() {
    let blobs: Blobs = Arc::default();
    let app = Router::new()
        .route("/id", get(id))
        .route("/storage", post(store_then_refuse))
        .route(
            "/storage/fetch",
            axum::routing::put(store_then_refuse).post(store_then_refuse),
        )
        .route("/storage/{address}", get(get_blob).put(store_then_refuse))
        .with_state(blobs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let report = run(Role::Storage, &url, with_token()).await.expect("run");
    let result = &report.results[0];
    assert_eq!(result.status, Status::Fail, "{}", report.table());
    assert!(
        result.detail.contains("nothing stored"),
        "{}",
        result.detail
    );
}

#[tokio::test]
async fn without_a_token_the_auth_checks_are_skipped() {
    let url = spawn_fake().await;
    let report = run(
        Role::Storage,
        &url,
        Options {
            only: Some("auth-*".into()),
            profile: Some(invariant_conformance::Profile::Secure),
            ..Options::default()
        },
    )
    .await
    .expect("run");
    assert!(report.results.len() >= 6, "{}", report.table());
    assert!(
        report.results.iter().all(|r| r.status == Status::Skip),
        "{}",
        report.table()
    );
}
