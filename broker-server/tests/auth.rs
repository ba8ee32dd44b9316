//! In-process tests of the broker with capability tokens and of its liveness checks'
//! limits: registrations are owned by the subject that made them (a hijack is refused),
//! token checks refuse what they must and change nothing, and liveness checks never
//! contact a url outside `--peer-allow` nor follow a redirect.
//!
//! Every listener is on 127.0.0.1; "outside the allowed networks" is made by allowing
//! only 127.0.0.128/25, and listeners that must not be contacted count the connections
//! they accept.

use std::path::Path;
use std::time::Duration;

use broker_server::{BrokerConfig, LivenessConfig};
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::broker::{Location, Registration};
use invariant_spec::http::Endpoint;
use invariant_spec::{BrokerClient, Id};
use invariant_test_support::{Recorder, TestAuth, eventually};
use reqwest::StatusCode;

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

/// Rounds every ~50 ms, dropped after 3 failures.
fn fast() -> LivenessConfig {
    LivenessConfig {
        interval: Duration::from_millis(50),
        jitter: Duration::from_millis(10),
        failure_threshold: 3,
        check_timeout: Duration::from_secs(2),
        max_concurrent_checks: 4,
    }
}

/// Starts a broker over `dir`; with `auth`, tokens are checked against its root.
async fn launch(
    dir: &Path,
    auth: Option<&TestAuth>,
    liveness: LivenessConfig,
    peer_allow: &str,
) -> Server {
    let mut options = ServerOptions::ephemeral(Role::Broker, dir);
    options.auth.root = auth.map(TestAuth::public);
    options.peer_allow = peer_allow
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| n.parse().expect("cidr"))
        .collect();
    let ctx = ServerContext::prepare(options).expect("broker context");
    broker_server::start(&ctx, BrokerConfig { liveness })
        .await
        .expect("start broker")
}

/// A broker client sending `token` (none: anonymous).
fn client(server: &Server, token: Option<&str>) -> BrokerClient {
    let http = match token {
        Some(token) => TestAuth::client(token),
        None => reqwest::Client::new(),
    };
    BrokerClient::from_endpoint(Endpoint::with_client(server.url(), http).expect("endpoint"))
}

fn registration(id: Id, url: &str, kind: &str) -> Registration {
    Registration {
        id,
        urls: vec![url.to_string()],
        url: None,
        kind: kind.to_string(),
    }
}

/// Sends a registration and returns the status and the reason.
async fn register_raw(
    server: &Server,
    token: Option<&str>,
    registration: &Registration,
) -> (StatusCode, String) {
    let http = match token {
        Some(token) => TestAuth::client(token),
        None => reqwest::Client::new(),
    };
    let response = http
        .post(format!("{}/broker/register", server.url()))
        .json(registration)
        .send()
        .await
        .expect("send");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

async fn location(server: &Server, id: &Id) -> Option<Location> {
    client(server, None).location(id).await.expect("location")
}

async fn start_storage() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("storage dir");
    let ctx = ServerContext::prepare(ServerOptions::ephemeral(Role::Storage, dir.path()))
        .expect("storage context");
    let server = storage_server::start(&ctx, Default::default())
        .await
        .expect("start storage");
    (dir, server)
}

// ---------------------------------------------------------------------------------------
// Ownership
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_is_owned_by_its_subject() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("dir");
    let broker = launch(dir.path(), Some(&auth), quiet(), "").await;
    let alice = auth.token("alice", "broker:register");
    let mallory = auth.token("mallory", "broker:register");
    let operator = auth.token("operator", "*");
    let id = Id::of_content(b"alice's storage server");

    client(&broker, Some(&alice))
        .register(&registration(id, "http://127.0.0.1:4001", "storage"))
        .await
        .expect("alice registers");

    // Another subject with broker:register cannot take the id: 403, nothing changed.
    let (status, reason) = register_raw(
        &broker,
        Some(&mallory),
        &registration(id, "http://127.0.0.1:6666", "files"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reason}");
    assert!(reason.contains("another subject"), "{reason}");
    assert!(reason.contains(&id.to_string()), "{reason}");
    let kept = location(&broker, &id).await.expect("still registered");
    assert_eq!(kept.urls, vec!["http://127.0.0.1:4001"]);
    let anyone = client(&broker, None);
    assert_eq!(anyone.registered("storage").await.expect("list"), vec![id]);
    assert!(anyone.registered("files").await.expect("list").is_empty());

    // The owner moves it.
    client(&broker, Some(&alice))
        .register(&registration(id, "http://127.0.0.1:4002", "storage"))
        .await
        .expect("the owner updates");
    assert_eq!(
        location(&broker, &id).await.expect("registered").urls,
        vec!["http://127.0.0.1:4002"]
    );

    // An operator (broker:admin through `*`) replaces it and owns it from then on.
    client(&broker, Some(&operator))
        .register(&registration(id, "http://127.0.0.1:4003", "storage"))
        .await
        .expect("the operator replaces");
    assert_eq!(
        location(&broker, &id).await.expect("registered").urls,
        vec!["http://127.0.0.1:4003"]
    );
    let (status, _) = register_raw(
        &broker,
        Some(&alice),
        &registration(id, "http://127.0.0.1:4004", "storage"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // broker:admin alone is an override too (with the right to register).
    let admin = auth.token("admin", "broker:register,broker:admin");
    client(&broker, Some(&admin))
        .register(&registration(id, "http://127.0.0.1:4005", "storage"))
        .await
        .expect("an admin replaces");
    assert_eq!(
        location(&broker, &id).await.expect("registered").urls,
        vec!["http://127.0.0.1:4005"]
    );
    broker.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_without_the_right_are_refused_and_change_nothing() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("dir");
    let broker = launch(dir.path(), Some(&auth), quiet(), "").await;
    let id = Id::of_content(b"server");
    let owner = auth.token("alice", "broker:register");
    client(&broker, Some(&owner))
        .register(&registration(id, "http://127.0.0.1:4001", "storage"))
        .await
        .expect("owner registers");
    let fresh = Id::of_content(b"never registered");

    let wide = auth.token("alice", "broker:register,broker:read");
    let refused: Vec<(Option<String>, StatusCode, &str)> = vec![
        (None, StatusCode::UNAUTHORIZED, "no token"),
        (
            Some(auth.token("alice", "broker:read,storage:write")),
            StatusCode::FORBIDDEN,
            "no broker:register",
        ),
        (
            Some(auth.expired("alice", "broker:register")),
            StatusCode::FORBIDDEN,
            "expired",
        ),
        (
            Some(auth.foreign("alice")),
            StatusCode::FORBIDDEN,
            "foreign root",
        ),
        (
            Some(auth.attenuated(&wide, "broker:read")),
            StatusCode::FORBIDDEN,
            "attenuated away",
        ),
    ];
    for (token, expected, what) in &refused {
        for target in [id, fresh] {
            let (status, reason) = register_raw(
                &broker,
                token.as_deref(),
                &registration(target, "http://127.0.0.1:6666", "storage"),
            )
            .await;
            assert_eq!(status, *expected, "{what}: {reason}");
            assert!(!reason.trim().is_empty(), "{what}: a reason");
        }
    }
    let response = reqwest::Client::new()
        .post(format!("{}/broker/register", broker.url()))
        .json(&registration(fresh, "http://127.0.0.1:6666", "storage"))
        .send()
        .await
        .expect("send");
    assert!(
        response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .is_some()
    );
    // Nothing changed; reads stay open.
    assert_eq!(
        location(&broker, &id).await.expect("kept").urls,
        vec!["http://127.0.0.1:4001"]
    );
    assert!(location(&broker, &fresh).await.is_none());
    assert_eq!(
        client(&broker, None)
            .registered("storage")
            .await
            .expect("list"),
        vec![id]
    );
    broker.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_mode_replaces_as_before_and_its_records_are_claimed_once() {
    let dir = tempfile::tempdir().expect("dir");
    let id = Id::of_content(b"registered before tokens");

    // Open mode: any caller replaces any registration, as always.
    let broker = launch(dir.path(), None, quiet(), "").await;
    let anonymous = client(&broker, None);
    anonymous
        .register(&registration(id, "http://127.0.0.1:4001", "storage"))
        .await
        .expect("first");
    anonymous
        .register(&registration(id, "http://127.0.0.1:4002", "files"))
        .await
        .expect("replaced");
    assert_eq!(
        location(&broker, &id).await.expect("registered").urls,
        vec!["http://127.0.0.1:4002"]
    );
    // A token sent to an open broker changes nothing either.
    let auth = TestAuth::new();
    client(&broker, Some(&auth.token("alice", "broker:register")))
        .register(&registration(id, "http://127.0.0.1:4003", "files"))
        .await
        .expect("open mode ignores tokens");
    anonymous
        .register(&registration(id, "http://127.0.0.1:4002", "files"))
        .await
        .expect("and anyone still replaces");
    broker.stop().await.expect("stop");

    // The same data in auth mode: the record has no owner; the first subject claims it.
    let broker = launch(dir.path(), Some(&auth), quiet(), "").await;
    assert_eq!(
        location(&broker, &id).await.expect("kept").urls,
        vec!["http://127.0.0.1:4002"]
    );
    client(&broker, Some(&auth.token("bob", "broker:register")))
        .register(&registration(id, "http://127.0.0.1:4010", "files"))
        .await
        .expect("bob claims the unowned record");
    let (status, _) = register_raw(
        &broker,
        Some(&auth.token("alice", "broker:register")),
        &registration(id, "http://127.0.0.1:4011", "files"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        location(&broker, &id).await.expect("kept").urls,
        vec!["http://127.0.0.1:4010"]
    );
    broker.stop().await.expect("stop");
}

// ---------------------------------------------------------------------------------------
// Liveness limits
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn liveness_never_contacts_a_url_outside_peer_allow() {
    let recorder = Recorder::start(None).await;
    let dir = tempfile::tempdir().expect("dir");
    let broker = launch(dir.path(), None, fast(), "127.0.0.128/25").await;
    let id = Id::of_content(b"outside the allowed networks");
    // An IP literal and a name that resolves to loopback: neither may be contacted.
    let by_name = format!("http://localhost:{}", recorder.port());
    client(&broker, None)
        .register(&Registration {
            id,
            urls: vec![recorder.url.clone(), by_name],
            url: None,
            kind: "storage".to_string(),
        })
        .await
        .expect("register");
    // Dropped after three failed rounds: the checks ran, and none connected.
    eventually("the unreachable registration dropped", || async {
        location(&broker, &id).await.is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recorder.accepted(), 0, "no connection outside --peer-allow");
    broker.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn liveness_follows_no_redirect() {
    let target = Recorder::start(None).await;
    let id = Id::of_content(b"redirecting server");
    // Answers every request with a redirect to the target's `/id/`.
    let redirect = Recorder::start(Some(format!(
        "HTTP/1.1 302 Found\r\nLocation: {}/id/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        target.url
    )))
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let broker = launch(dir.path(), None, fast(), "").await;
    client(&broker, None)
        .register(&registration(id, &redirect.url, "storage"))
        .await
        .expect("register");
    eventually("the redirecting registration dropped", || async {
        location(&broker, &id).await.is_none()
    })
    .await;
    assert!(redirect.accepted() >= 3, "the server itself was checked");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(target.accepted(), 0, "the redirect was not followed");
    broker.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_auth_mode_only_owned_registrations_are_checked() {
    let auth = TestAuth::new();
    let dir = tempfile::tempdir().expect("dir");
    let recorder = Recorder::start(None).await;
    let unowned = Id::of_content(b"registered in open mode");
    {
        let broker = launch(dir.path(), None, quiet(), "").await;
        client(&broker, None)
            .register(&registration(unowned, &recorder.url, "storage"))
            .await
            .expect("register");
        broker.stop().await.expect("stop");
    }
    let (_storage_dir, storage) = start_storage().await;
    let broker = launch(dir.path(), Some(&auth), fast(), "").await;
    let owner = auth.token("storage-1", "broker:register");
    client(&broker, Some(&owner))
        .register(&registration(storage.id(), storage.url(), "storage"))
        .await
        .expect("register a live server");
    eventually("the unowned registration dropped", || async {
        location(&broker, &unowned).await.is_none()
    })
    .await;
    assert_eq!(recorder.accepted(), 0, "an unowned url is never contacted");
    // The owned, live one passed the same rounds.
    assert!(location(&broker, &storage.id()).await.is_some());
    broker.stop().await.expect("stop");
    storage.stop().await.expect("stop storage");
}
