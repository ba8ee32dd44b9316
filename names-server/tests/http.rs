//! In-process HTTP tests of the names server: every route, every error path, the
//! compare-and-swap under concurrency, restarts, and the DNS fallback.
//!
//! Each test starts its own server on `127.0.0.1:0` over a fresh temporary data
//! directory. DNS tests run a real hickory-server on an ephemeral loopback port (UDP and
//! TCP) serving in-memory zones `example.test.` and `local.`; nothing leaves 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::rdata::{SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::names::{NameRecord, RegisterRequest, UpdateRequest};
use invariant_spec::{Id, NamesClient};
use names_server::{DEFAULT_TTL, NamesConfig};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

struct TestServer {
    dir: TempDir,
    config: NamesConfig,
    server: Server,
    client: NamesClient,
    http: reqwest::Client,
}

impl TestServer {
    async fn start() -> TestServer {
        TestServer::start_with(NamesConfig::default()).await
    }

    async fn start_with(config: NamesConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("create temp data dir");
        TestServer::over(dir, config).await
    }

    /// A server over `dir` (new or reused).
    async fn over(dir: TempDir, config: NamesConfig) -> TestServer {
        let server = launch(dir.path(), config.clone()).await;
        let client = NamesClient::new(server.url()).expect("names client");
        TestServer {
            dir,
            config,
            server,
            client,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// Stops the server and starts a new one over the same data directory.
    async fn restart(self) -> TestServer {
        let TestServer {
            dir,
            config,
            server,
            ..
        } = self;
        server.stop().await.expect("stop server");
        TestServer::over(dir, config).await
    }

    async fn lookup(&self, name: &str) -> Option<NameRecord> {
        self.client.lookup(name).await.expect("lookup")
    }

    /// Raw request; returns status, content type and body.
    async fn raw(&self, request: reqwest::RequestBuilder) -> (StatusCode, String, String) {
        let response = request.send().await.expect("send");
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, content_type, response.text().await.expect("body"))
    }
}

async fn launch(data_dir: &Path, config: NamesConfig) -> Server {
    let options = ServerOptions::ephemeral(Role::Names, data_dir);
    let ctx = ServerContext::prepare(options).expect("prepare server context");
    names_server::start(&ctx, config)
        .await
        .expect("start names server")
}

fn id(n: u8) -> Id {
    Id::from_bytes([n; 32])
}

/// A DNS server on a loopback port serving `example.test.` and `local.` from memory.
struct TestDns {
    addr: SocketAddr,
    example: Arc<InMemoryZoneHandler>,
    server: hickory_server::Server<Catalog>,
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("valid DNS name")
}

fn txt(owner: &str, ttl: u32, strings: &[&str]) -> Record {
    let strings = strings.iter().map(|s| s.to_string()).collect();
    Record::from_rdata(name(owner), ttl, RData::TXT(TXT::new(strings)))
}

fn zone(origin: &str, records: Vec<Record>) -> Arc<InMemoryZoneHandler> {
    let origin = name(origin);
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    );
    let soa = SOA::new(
        name("ns.example.test."),
        name("admin.example.test."),
        1,
        3600,
        600,
        86400,
        60,
    );
    assert!(zone.upsert_mut(Record::from_rdata(origin, 3600, RData::SOA(soa)), 1));
    for record in records {
        assert!(zone.upsert_mut(record, 1), "record accepted by the zone");
    }
    Arc::new(zone)
}

impl TestDns {
    async fn start(example: Vec<Record>, local: Vec<Record>) -> TestDns {
        let example = zone("example.test.", example);
        let local = zone("local.", local);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&name("example.test.")),
            vec![example.clone() as Arc<dyn ZoneHandler>],
        );
        catalog.upsert(
            LowerName::new(&name("local.")),
            vec![local as Arc<dyn ZoneHandler>],
        );
        let mut server = hickory_server::Server::new(catalog);
        // UDP and TCP on the same ephemeral port; retry if TCP's is taken.
        let mut bound = None;
        for _ in 0..50 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind DNS UDP");
            let addr = udp.local_addr().expect("UDP address");
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                bound = Some((udp, tcp, addr));
                break;
            }
        }
        let (udp, tcp, addr) = bound.expect("a port free for both UDP and TCP");
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        TestDns {
            addr,
            example,
            server,
        }
    }

    /// Deletes the TXT records of `owner` from `example.test.`.
    async fn remove_txt(&self, owner: &str) {
        let key = RrKey::new(LowerName::new(&name(owner)), RecordType::TXT);
        assert!(
            self.example.records_mut().await.remove(&key).is_some(),
            "{owner} had TXT records"
        );
    }

    async fn stop(mut self) {
        self.server
            .shutdown_gracefully()
            .await
            .expect("stop DNS server");
    }
}

fn dns_config(addr: SocketAddr) -> NamesConfig {
    NamesConfig {
        dns: Some(addr),
        ..NamesConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Register and lookup
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn registered_names_resolve_authoritatively_with_defaults() {
    let t = TestServer::start().await;
    t.client
        .register(&RegisterRequest::new("Home", id(1)))
        .await
        .expect("register");
    let record = t.lookup("home").await.expect("registered");
    assert_eq!(
        record,
        NameRecord {
            name: "home.local".into(),
            address: id(1),
            ttl: DEFAULT_TTL,
            authoritative: true,
            slot: false,
        }
    );
    // Same name in other spellings.
    assert_eq!(t.lookup("HOME.local").await, Some(record.clone()));
    assert_eq!(t.lookup("home.local.").await, Some(record));

    // Explicit ttl and slot; a dotted name gets no `.local`.
    let request = RegisterRequest {
        name: "Docs.Example.COM".into(),
        address: id(2),
        ttl: Some(60),
        slot: Some(true),
    };
    t.client.register(&request).await.expect("register");
    let record = t.lookup("docs.example.com").await.expect("registered");
    assert_eq!(record.name, "docs.example.com");
    assert_eq!((record.address, record.ttl, record.slot), (id(2), 60, true));
    assert!(t.lookup("docs.example.com.local").await.is_none());
}

#[tokio::test]
async fn lookup_answers_json_with_every_field() {
    let t = TestServer::start().await;
    t.client
        .register(&RegisterRequest::new("a", id(3)))
        .await
        .expect("register");
    let (status, content_type, body) = t.raw(t.http.get(t.url("/names/lookup/a/"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let value: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        value,
        json!({
            "name": "a.local",
            "address": id(3).to_string(),
            "ttl": DEFAULT_TTL,
            "authoritative": true,
            "slot": false,
        })
    );
}

#[tokio::test]
async fn unknown_names_are_404_without_dns() {
    let t = TestServer::start().await;
    assert_eq!(t.lookup("nobody").await, None);
    let (status, content_type, body) = t.raw(t.http.get(t.url("/names/lookup/nobody"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(content_type.starts_with("text/plain"));
    assert!(body.contains("nobody.local"), "{body}");
}

#[tokio::test]
async fn taken_names_are_409_and_keep_their_record() {
    let t = TestServer::start().await;
    t.client
        .register(&RegisterRequest::new("taken", id(1)))
        .await
        .expect("register");
    for spelling in ["taken", "TAKEN.local", "taken.local."] {
        let err = t
            .client
            .register(&RegisterRequest::new(spelling, id(2)))
            .await
            .expect_err("already registered");
        assert_eq!(err.status(), Some(409), "{spelling}");
    }
    let (status, content_type, body) = t
        .raw(
            t.http
                .put(t.url("/names/register"))
                .json(&json!({"name": "taken", "address": id(1)})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(content_type.starts_with("text/plain"));
    assert!(body.contains("already registered"), "{body}");
    assert_eq!(t.lookup("taken").await.map(|r| r.address), Some(id(1)));
}

#[tokio::test]
async fn register_answers_true() {
    let t = TestServer::start().await;
    let (status, _, body) = t
        .raw(
            t.http
                .put(t.url("/names/register/"))
                .json(&json!({"name": "x", "address": id(4).to_string().to_uppercase()})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "true");
    assert_eq!(t.lookup("x").await.map(|r| r.address), Some(id(4)));
}

#[tokio::test]
async fn malformed_names_and_bodies_are_400_and_write_nothing() {
    let t = TestServer::start().await;
    let long_label = "a".repeat(64);
    let too_long = ["b".repeat(63).as_str(); 4].join(".");
    for bad in [
        "a..b",
        "-a",
        "a-",
        "a_b",
        "a%20b",
        "%C3%A9",
        ".a",
        long_label.as_str(),
        too_long.as_str(),
    ] {
        let (status, content_type, body) = t
            .raw(t.http.get(t.url(&format!("/names/lookup/{bad}"))))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "lookup {bad}: {body}");
        assert!(content_type.starts_with("text/plain"));
        assert!(body.contains("invalid name"), "{bad}: {body}");
    }

    let address = id(5).to_string();
    let bodies = [
        json!({"name": "a..b", "address": address}),
        json!({"name": "", "address": address}),
        json!({"name": "ok", "address": "abc"}),
        json!({"name": "ok"}),
        json!({"address": address}),
        json!({"name": "ok", "address": address, "ttl": -1}),
        json!({"name": "ok", "address": address, "ttl": 1.5}),
        json!({"name": "ok", "address": address, "ttl": 4294967296u64}),
        json!({"name": "ok", "address": address, "slot": "yes"}),
        json!({"name": 7, "address": address}),
        json!([1, 2]),
    ];
    for body in &bodies {
        let (status, content_type, reason) =
            t.raw(t.http.put(t.url("/names/register")).json(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reason}");
        assert!(content_type.starts_with("text/plain"));
        assert!(!reason.trim().is_empty());
    }
    let (status, _, _) = t
        .raw(t.http.put(t.url("/names/register")).body("{not json"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(t.lookup("ok").await, None, "nothing was registered");
}

// ---------------------------------------------------------------------------------------
// Update (compare-and-swap)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn update_swaps_only_from_the_current_address() {
    let t = TestServer::start().await;
    t.client
        .register(&RegisterRequest {
            name: "site".into(),
            address: id(1),
            ttl: Some(10),
            slot: Some(true),
        })
        .await
        .expect("register");

    // Stale previous: false, nothing changes.
    let stale = UpdateRequest::new("site", id(9), id(2));
    assert!(!t.client.update(&stale).await.expect("update"));
    let record = t.lookup("site").await.expect("held");
    assert_eq!((record.address, record.ttl, record.slot), (id(1), 10, true));

    // Current previous: true; omitted ttl/slot mean default ttl, not a slot.
    let swap = UpdateRequest::new("SITE.local", id(1), id(2));
    assert!(t.client.update(&swap).await.expect("update"));
    let record = t.lookup("site").await.expect("held");
    assert_eq!(
        (record.address, record.ttl, record.slot),
        (id(2), DEFAULT_TTL, false)
    );

    // The old previous is now stale.
    assert!(!t.client.update(&swap).await.expect("update"));

    // ttl and slot are taken from the request.
    let with_options = UpdateRequest {
        ttl: Some(99),
        slot: Some(true),
        ..UpdateRequest::new("site", id(2), id(3))
    };
    assert!(t.client.update(&with_options).await.expect("update"));
    let record = t.lookup("site").await.expect("held");
    assert_eq!((record.address, record.ttl, record.slot), (id(3), 99, true));
}

#[tokio::test]
async fn update_answers_json_booleans_and_404_for_unknown_names() {
    let t = TestServer::start().await;
    t.client
        .register(&RegisterRequest::new("n", id(1)))
        .await
        .expect("register");
    let update = |previous: Id| {
        t.http
            .post(t.url("/names/update/"))
            .json(&json!({"name": "n", "previous": previous, "address": id(2)}))
    };
    let (status, content_type, body) = t.raw(update(id(7))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "false"));
    assert!(content_type.starts_with("application/json"));
    let (status, _, body) = t.raw(update(id(1))).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "true"));

    let err = t
        .client
        .update(&UpdateRequest::new("ghost", id(1), id(2)))
        .await
        .expect_err("unknown name");
    assert_eq!(err.status(), Some(404));
    assert_eq!(t.lookup("ghost").await, None, "update never creates");
}

#[tokio::test]
async fn malformed_updates_are_400_and_change_nothing() {
    let t = TestServer::start().await;
    t.client
        .register(&RegisterRequest::new("n", id(1)))
        .await
        .expect("register");
    let bodies = [
        json!({"name": "n", "previous": id(1), "address": "zz"}),
        json!({"name": "n", "previous": "zz", "address": id(2)}),
        json!({"name": "n", "address": id(2)}),
        json!({"name": "n_", "previous": id(1), "address": id(2)}),
        json!({"name": "n", "previous": id(1), "address": id(2), "ttl": -5}),
    ];
    for body in &bodies {
        let (status, content_type, reason) =
            t.raw(t.http.post(t.url("/names/update")).json(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reason}");
        assert!(content_type.starts_with("text/plain"));
    }
    assert_eq!(t.lookup("n").await.map(|r| r.address), Some(id(1)));
    // Wrong methods.
    let (status, _, _) = t.raw(t.http.get(t.url("/names/update"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = t.raw(t.http.post(t.url("/names/register"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn concurrent_updates_from_one_previous_have_exactly_one_winner() {
    let t = TestServer::start().await;
    t.client
        .register(&RegisterRequest::new("race", id(0)))
        .await
        .expect("register");
    for round in 0u8..3 {
        let previous = t.lookup("race").await.expect("held").address;
        let attempts = (1u8..=16).map(|n| {
            let client = t.client.clone();
            let address = Id::from_bytes([round * 16 + n; 32]);
            async move {
                let won = client
                    .update(&UpdateRequest::new("race", previous, address))
                    .await
                    .expect("update");
                (won, address)
            }
        });
        let results = futures_util::future::join_all(attempts).await;
        let winners: Vec<Id> = results
            .iter()
            .filter(|(won, _)| *won)
            .map(|(_, address)| *address)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert_eq!(
            t.lookup("race").await.map(|r| r.address),
            Some(winners[0]),
            "the winner's address is current"
        );
    }
}

#[tokio::test]
async fn restart_keeps_names_and_updates() {
    let t = TestServer::start().await;
    for n in 0u8..10 {
        t.client
            .register(&RegisterRequest {
                ttl: Some(u32::from(n) + 1),
                slot: Some(n % 2 == 0),
                ..RegisterRequest::new(format!("n{n}.example.org"), id(n))
            })
            .await
            .expect("register");
    }
    assert!(
        t.client
            .update(&UpdateRequest::new("n3.example.org", id(3), id(33)))
            .await
            .expect("update")
    );
    let t = t.restart().await;
    for n in 0u8..10 {
        let record = t.lookup(&format!("n{n}.example.org")).await.expect("kept");
        // n3 was updated without ttl or slot: default ttl, not a slot.
        let expected = if n == 3 {
            (id(33), DEFAULT_TTL, false)
        } else {
            (id(n), u32::from(n) + 1, n % 2 == 0)
        };
        assert_eq!((record.address, record.ttl, record.slot), expected);
        assert!(record.authoritative);
    }
    assert!(t.dir.path().join("names.redb").is_file());
}

// ---------------------------------------------------------------------------------------
// DNS fallback
// ---------------------------------------------------------------------------------------

fn data(n: u8) -> String {
    format!("invariant-data={}", id(n))
}

fn slot(n: u8) -> String {
    format!("invariant-slot={}", id(n))
}

#[tokio::test]
async fn dns_answers_names_the_server_does_not_hold() {
    let dns = TestDns::start(
        vec![
            txt("data.example.test.", 3600, &[&data(1)]),
            txt("slot.example.test.", 3600, &[&slot(2)]),
            txt("mixed.example.test.", 3600, &["hello", &data(3)]),
            txt("both.example.test.", 3600, &[&data(4), &slot(5)]),
            txt("held.example.test.", 3600, &[&data(6)]),
            txt("other.example.test.", 3600, &["v=spf1 -all"]),
        ],
        vec![txt("printer.local.", 3600, &[&data(8)])],
    )
    .await;
    let t = TestServer::start_with(dns_config(dns.addr)).await;
    t.client
        .register(&RegisterRequest::new("held.example.test", id(7)))
        .await
        .expect("register");

    let record = t.lookup("Data.Example.Test").await.expect("from DNS");
    assert_eq!(record.name, "data.example.test");
    assert_eq!((record.address, record.slot), (id(1), false));
    assert!(!record.authoritative);
    assert!(record.ttl > 3500 && record.ttl <= 3600, "{}", record.ttl);

    let record = t.lookup("slot.example.test").await.expect("from DNS");
    assert_eq!((record.address, record.slot), (id(2), true));
    assert!(!record.authoritative);

    let record = t.lookup("mixed.example.test").await.expect("from DNS");
    assert_eq!((record.address, record.slot), (id(3), false));

    let record = t.lookup("both.example.test").await.expect("from DNS");
    assert_eq!((record.address, record.slot), (id(5), true), "slot wins");

    // A held name is answered from the server's own records.
    let record = t.lookup("held.example.test").await.expect("held");
    assert_eq!(record.address, id(7));
    assert!(record.authoritative);

    // A name without a dot is looked up in DNS as `<name>.local`.
    let record = t.lookup("printer").await.expect("from DNS");
    assert_eq!(
        (record.name.as_str(), record.address),
        ("printer.local", id(8))
    );
    assert!(!record.authoritative);

    // Absent in both, or no invariant TXT record: 404.
    for absent in ["nothing.example.test", "other.example.test", "scanner"] {
        let (status, _, body) = t
            .raw(t.http.get(t.url(&format!("/names/lookup/{absent}"))))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{absent}: {body}");
    }

    // DNS names are not registered here: updating one is 404, registering works.
    let err = t
        .client
        .update(&UpdateRequest::new("data.example.test", id(1), id(9)))
        .await
        .expect_err("not held");
    assert_eq!(err.status(), Some(404));
    t.client
        .register(&RegisterRequest::new("data.example.test", id(9)))
        .await
        .expect("register over a DNS name");
    let record = t.lookup("data.example.test").await.expect("held now");
    assert_eq!((record.address, record.authoritative), (id(9), true));
    dns.stop().await;
}

#[tokio::test]
async fn dns_answers_are_cached_within_their_ttl() {
    let dns = TestDns::start(
        vec![txt("cached.example.test.", 3600, &[&slot(1)])],
        Vec::new(),
    )
    .await;
    let t = TestServer::start_with(NamesConfig {
        dns_timeout: Duration::from_millis(300),
        ..dns_config(dns.addr)
    })
    .await;
    let first = t.lookup("cached.example.test").await.expect("from DNS");
    assert_eq!((first.address, first.slot), (id(1), true));
    dns.stop().await;

    // The DNS server is gone; the answer comes from the cache.
    let second = t.lookup("cached.example.test").await.expect("cached");
    assert_eq!((second.address, second.slot), (id(1), true));
    assert!(!second.authoritative);
    assert!(second.ttl <= first.ttl && second.ttl > 3500, "{second:?}");
    // A name not cached needs the (stopped) server, which proves the above was cached.
    let err = t
        .client
        .lookup("uncached.example.test")
        .await
        .expect_err("DNS is down");
    assert_eq!(err.status(), Some(503));
}

#[tokio::test]
async fn dns_answers_expire_after_their_ttl() {
    const TTL: u64 = 2;
    let dns = TestDns::start(
        vec![txt("brief.example.test.", TTL as u32, &[&data(1)])],
        Vec::new(),
    )
    .await;
    let t = TestServer::start_with(dns_config(dns.addr)).await;
    let first = t.lookup("brief.example.test").await.expect("from DNS");
    let answered = Instant::now();
    assert_eq!(first.address, id(1));
    assert!(first.ttl <= TTL as u32, "{first:?}");

    dns.remove_txt("brief.example.test.").await;
    // Still cached right after removal.
    assert_eq!(
        t.lookup("brief.example.test").await.map(|r| r.address),
        Some(id(1))
    );
    // Once the TTL has passed, DNS is asked again and the name is gone.
    tokio::time::sleep(Duration::from_secs(TTL) + Duration::from_millis(500)).await;
    assert!(answered.elapsed() > Duration::from_secs(TTL));
    assert_eq!(t.lookup("brief.example.test").await, None);
    dns.stop().await;
}

#[tokio::test]
async fn unreachable_dns_is_503_but_held_names_still_resolve() {
    // A UDP socket that never answers, on a port with no TCP listener.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind silent socket");
    let config = NamesConfig {
        dns: Some(silent.local_addr().expect("address")),
        dns_timeout: Duration::from_millis(200),
        ..NamesConfig::default()
    };
    let t = TestServer::start_with(config).await;
    t.client
        .register(&RegisterRequest::new("mine", id(1)))
        .await
        .expect("register");
    assert_eq!(t.lookup("mine").await.map(|r| r.address), Some(id(1)));
    let (status, content_type, body) = t
        .raw(t.http.get(t.url("/names/lookup/elsewhere.example.test")))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(content_type.starts_with("text/plain"));
    assert!(body.contains("DNS"), "{body}");
    let err = t
        .client
        .lookup("elsewhere.example.test")
        .await
        .expect_err("DNS failed");
    assert_eq!(err.status(), Some(503));
    drop(silent);
}
