//! In-process HTTP tests of the slots server: every route, every error path, CAS
//! linearizability, watch completeness, signatures, restart.
//!
//! Each test starts its own server on `127.0.0.1:0` over a fresh temporary data
//! directory. Success paths go through the typed [`SlotsClient`]; statuses and error
//! answers are checked with raw `reqwest`.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::slots::{
    Previous, ProofConfig, RegisterRequest, Rejection, SignatureConfig, SlotConfig, SlotSigner,
    SlotState, StateStream, UpdateRequest,
};
use invariant_spec::{Id, SlotsClient};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::json;
use slots_server::SlotsConfig;
use tempfile::TempDir;

/// A 1024-bit RSA key made for these tests only (PKCS#1 PEM).
const TEST_RSA_PRIVATE: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQDmQ3UW3DfPERbaftVQO+jDsWb10QEwBYABt9KzdzocdyUTSwbr
5jKwcLAs0X3cBe/UqyhKA1K5UIhLbafz+tEduunmdcBPM8ArPEuV5PWE64WBiBb3
TAZjJBA0Oh1v+Fjq/OegKPbW0uOaUW6UEW1pFIvGEn1fw5jH6pdPuiZ6+QIDAQAB
AoGAGxeuzCzHCD8LgFPSB2m1HmleIugfiqXrBMi7KtCJbtX578YxH0prhmUL5YoU
k/HC4TPuPp8beaBnGPDjBQrq1ap2oQWSEIXnT0NfQa9l+iKVGdaaOe4yeldz304y
XQia8fAe5WXZwvGT8uxm8NmeOW0jOtY1Dt6wYLs3dXd0/LECQQD/T1TZMTvGnanR
Sk2sV6ErTX88nfCB7osxNA5Z6S61Fp1tdRDXA3892Tv8v8AuHU4QfSxQR/8afbvl
N2p6O+u9AkEA5uLLXyukCytMPkSswpq3z0AP+5fRW48cX/IiSbj6apnU4OyVVm1b
QYw6Q8F6MrClz2oQzAF8BnQ01iApzx+B7QJBAPNgopew0TTS0zFJzaV+m4r2A1a7
kKurxFCROSUInpfOCSBwui7djIxe60pTWFYdZW9eg8G8ADk2psko/H2tZVkCQB9K
iWmCjp785T5jLE7LjTHHauMcNkGEacIPHNqE+VtNMe6x4aNu+rktehAIvrjz++Ta
aSBc6yQsx6Rlg4UQrhkCQQCHdFjOyNVFvUNPpv+nbVD99AfsLz10ykZT5oBdKEtv
kAhVsVM2oW+TLTDLJ4/TElA2LCK4DK+67Lw4djyuVspY
-----END RSA PRIVATE KEY-----";

/// The public half of `TEST_RSA_PRIVATE` in PKCS#1 form (the reference's form).
const TEST_RSA_PUBLIC_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----
MIGJAoGBAOZDdRbcN88RFtp+1VA76MOxZvXRATAFgAG30rN3Ohx3JRNLBuvmMrBw
sCzRfdwF79SrKEoDUrlQiEttp/P60R266eZ1wE8zwCs8S5Xk9YTrhYGIFvdMBmMk
EDQ6HW/4WOr856Ao9tbS45pRbpQRbWkUi8YSfV/DmMfql0+6Jnr5AgMBAAE=
-----END RSA PUBLIC KEY-----";

/// Upper bound on waiting for a stream item, so a broken stream fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

struct TestServer {
    dir: TempDir,
    server: Server,
    client: SlotsClient,
    http: reqwest::Client,
}

impl TestServer {
    async fn start() -> TestServer {
        TestServer::start_with(SlotsConfig::default()).await
    }

    async fn start_with(config: SlotsConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("create temp data dir");
        let server = launch(dir.path(), config).await;
        TestServer::wrap(dir, server)
    }

    fn wrap(dir: TempDir, server: Server) -> TestServer {
        let client = SlotsClient::new(server.url()).expect("slots client");
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

    /// Registers an unsigned slot at a fresh address; returns (slot, address).
    async fn unsigned_slot(&self) -> (Id, Id) {
        let (slot, address) = (Id::random(), Id::random());
        let created = self
            .client
            .register(&RegisterRequest::unsigned(slot, address))
            .await
            .expect("register");
        assert!(created);
        (slot, address)
    }

    async fn history(&self, slot: &Id) -> Vec<SlotState> {
        self.client
            .history_all(slot)
            .await
            .expect("history")
            .expect("slot exists")
    }

    async fn put_json(&self, path: &str, body: serde_json::Value) -> (StatusCode, String) {
        let response = self
            .http
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("PUT");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    async fn put_raw(&self, path: &str, body: &'static str) -> (StatusCode, String) {
        let response = self
            .http
            .put(self.url(path))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("PUT");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    async fn get_raw(&self, path: &str) -> (StatusCode, String) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }
}

async fn launch(data_dir: &Path, config: SlotsConfig) -> Server {
    let options = ServerOptions::ephemeral(Role::Slots, data_dir);
    let ctx = ServerContext::prepare(options).expect("prepare server context");
    slots_server::start(&ctx, config)
        .await
        .expect("start slots server")
}

fn rejection(result: Result<(), invariant_spec::ClientError>) -> Option<Rejection> {
    match result {
        Ok(()) => None,
        Err(e) => Some(Rejection::of(&e).unwrap_or_else(|| panic!("unexpected error {e}"))),
    }
}

async fn next_state(stream: &mut StateStream) -> SlotState {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a state arrives")
        .expect("stream still open")
        .expect("valid state")
}

fn addresses(states: &[SlotState]) -> Vec<Id> {
    states.iter().map(|s| s.address).collect()
}

// ---------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn register_get_update_config_history() {
    let t = TestServer::start().await;
    let (slot, first) = t.unsigned_slot().await;

    let state = t.client.get(&slot).await.expect("get").expect("present");
    assert_eq!(state.address, first);
    assert_eq!(state.previous, Previous::Root);
    assert!(state.time.expect("time set") > 1_600_000_000_000);
    assert_eq!(state.signature, None);

    // The raw answer uses the literal "root".
    let (status, body) = t.get_raw(&format!("/slots/{slot}/")).await;
    assert_eq!(status, StatusCode::OK);
    let raw: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(raw["previous"], "root");
    assert_eq!(raw["address"], first.to_string());

    let second = Id::random();
    t.client
        .update(&slot, &UpdateRequest::unsigned(first, second))
        .await
        .expect("update");
    let state = t.client.get(&slot).await.expect("get").expect("present");
    assert_eq!(
        (state.address, state.previous),
        (second, Previous::Address(first))
    );

    // The raw update answer is `true`; a signature on an unsigned slot is ignored.
    let third = Id::random();
    let (status, body) = t
        .put_json(
            &format!("/slots/{slot}"),
            json!({"address": third, "previous": second, "signature": "abcd", "time": 1}),
        )
        .await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "true"));
    let state = t.client.get(&slot).await.expect("get").expect("present");
    assert_eq!(state.signature, None);
    assert!(state.time.expect("time") > 1, "the server sets the time");

    assert_eq!(
        t.client.config(&slot).await.expect("config"),
        Some(SlotConfig::default())
    );
    let (status, body) = t.get_raw(&format!("/slots/configuration/{slot}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"signature":{"kind":"none"},"proof":"none"}"#);

    let history = t.history(&slot).await;
    assert_eq!(addresses(&history), vec![third, second, first]);
    assert_eq!(history[2].previous, Previous::Root);
    assert!(history.windows(2).all(|w| w[0].time >= w[1].time));

    let response = t
        .http
        .get(t.url(&format!("/slots/history/{slot}")))
        .send()
        .await
        .expect("history");
    assert_eq!(
        response.headers()[CONTENT_TYPE].to_str().expect("ascii"),
        "application/x-ndjson"
    );
    let text = response.text().await.expect("body");
    assert_eq!(text.lines().count(), 3);
    for line in text.lines() {
        serde_json::from_str::<SlotState>(line).expect("each line is a state");
    }
}

#[tokio::test]
async fn register_accepts_the_reference_forms_and_refuses_duplicates() {
    let t = TestServer::start().await;
    let (slot, address) = (Id::random(), Id::random());
    // POST, explicit none signature and proof, extra `time` field.
    let response = t
        .http
        .post(t.url("/slots/register/"))
        .json(&json!({
            "id": slot, "address": address, "time": 5,
            "signature": {"kind": "none"}, "proof": "none",
        }))
        .send()
        .await
        .expect("POST register");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body").trim(), "true");

    // A second registration of the id: 409, and the typed client says false.
    let (status, reason) = t
        .put_json(
            "/slots/register",
            json!({"id": slot, "address": Id::random()}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(reason.contains("already registered"), "{reason}");
    let again = t
        .client
        .register(&RegisterRequest::unsigned(slot, Id::random()))
        .await
        .expect("register");
    assert!(!again);
    let state = t.client.get(&slot).await.expect("get").expect("present");
    assert_eq!(
        state.address, address,
        "the refused registration changed nothing"
    );

    // Ids are accepted in any case and emitted lowercase.
    let upper = Id::random();
    let (status, _) = t
        .put_json(
            "/slots/register",
            json!({"id": upper.to_string().to_uppercase(), "address": address, "proof": {"kind": "none"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = t
        .get_raw(&format!("/slots/{}", upper.to_string().to_uppercase()))
        .await;
    assert!(body.contains(&address.to_string()));
}

#[tokio::test]
async fn malformed_requests_get_400_with_a_reason() {
    let t = TestServer::start().await;
    let (slot, address) = t.unsigned_slot().await;

    for path in [
        "/slots/nothex",
        "/slots/config/12",
        "/slots/configuration/zz",
        "/slots/history/abc",
        "/slots/watch/abc",
    ] {
        let (status, reason) = t.get_raw(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(!reason.trim().is_empty(), "{path} has a reason");
    }
    let (status, _) = t
        .put_json(
            "/slots/nothex",
            json!({"address": address, "previous": address}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let update_path = format!("/slots/{slot}");
    let bad_updates: [&'static str; 5] = [
        "{",
        "[]",
        r#"{"address":"xyz","previous":"root"}"#,
        r#"{"previous":"root"}"#,
        r#"{"address":"0000000000000000000000000000000000000000000000000000000000000000","previous":"nope"}"#,
    ];
    for body in bad_updates {
        let (status, reason) = t.put_raw(&update_path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(reason.contains("JSON"), "{body}: {reason}");
    }

    let bad_registrations = [
        json!({"id": Id::random()}),
        json!({"id": "short", "address": address}),
        json!({"id": Id::random(), "address": address, "signature": {"kind": "dsa"}}),
        json!({"id": Id::random(), "address": address, "signature": {"kind": "sha256:rsa"}}),
        json!({"id": Id::random(), "address": address, "proof": "proof-of-work:4"}),
        json!({"id": Id::random(), "address": address,
               "signature": {"kind": "sha256:rsa", "key": "not a pem"}}),
        // y = 2 is not on the curve: not an ed25519 public key.
        json!({"id": format!("02{}", "0".repeat(62)), "address": address,
               "signature": {"kind": "ed25519"}}),
    ];
    for body in bad_registrations {
        let (status, reason) = t.put_json("/slots/register", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reason}");
        assert!(!reason.trim().is_empty());
    }
    let (status, reason) = t
        .put_json(
            "/slots/register",
            json!({"id": format!("02{}", "0".repeat(62)), "address": address,
                   "signature": {"kind": "ed25519"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(reason.contains("ed25519"), "{reason}");

    // Nothing above changed the slot.
    assert_eq!(addresses(&t.history(&slot).await), vec![address]);
}

#[tokio::test]
async fn unknown_slots_are_404_everywhere() {
    let t = TestServer::start().await;
    let unknown = Id::random();
    assert_eq!(t.client.get(&unknown).await.expect("get"), None);
    assert_eq!(t.client.config(&unknown).await.expect("config"), None);
    assert!(t.client.history(&unknown).await.expect("history").is_none());
    assert!(t.client.watch(&unknown).await.expect("watch").is_none());
    let update = t
        .client
        .update(
            &unknown,
            &UpdateRequest::unsigned(Id::random(), Id::random()),
        )
        .await;
    assert_eq!(rejection(update), Some(Rejection::NotFound));
    for path in [
        format!("/slots/{unknown}"),
        format!("/slots/config/{unknown}"),
        format!("/slots/history/{unknown}"),
        format!("/slots/watch/{unknown}"),
    ] {
        let (status, reason) = t.get_raw(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(reason.contains("not registered"), "{path}: {reason}");
    }
}

#[tokio::test]
async fn stale_previous_is_409_and_changes_nothing() {
    let t = TestServer::start().await;
    let (slot, first) = t.unsigned_slot().await;
    let second = Id::random();
    t.client
        .update(&slot, &UpdateRequest::unsigned(first, second))
        .await
        .expect("update");

    // From the old address, from an unrelated one, and from "root".
    for previous in [
        Previous::Address(first),
        Previous::Address(Id::random()),
        Previous::Root,
    ] {
        let request = UpdateRequest {
            address: Id::random(),
            previous,
            signature: None,
            proof: None,
        };
        let result = t.client.update(&slot, &request).await;
        assert_eq!(rejection(result), Some(Rejection::Conflict), "{previous}");
    }
    let (status, reason) = t
        .put_json(
            &format!("/slots/{slot}"),
            json!({"address": Id::random(), "previous": first}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        reason.contains(&second.to_string()),
        "names the current address: {reason}"
    );
    assert_eq!(addresses(&t.history(&slot).await), vec![second, first]);
}

// ---------------------------------------------------------------------------------------
// Linearizability and watch
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_has_exactly_one_winner_per_round() {
    const ROUNDS: usize = 1000;
    const CONTENDERS: usize = 32;
    let t = TestServer::start().await;
    let (slot, first) = t.unsigned_slot().await;
    let mut rng = StdRng::seed_from_u64(0x5107);
    let mut current = first;
    let mut winners = vec![first];
    for round in 0..ROUNDS {
        let candidates: Vec<Id> = (0..CONTENDERS)
            .map(|_| {
                let mut bytes = [0u8; 32];
                rng.fill_bytes(&mut bytes);
                Id::from_bytes(bytes)
            })
            .collect();
        let attempts = candidates.iter().map(|candidate| {
            let client = t.client.clone();
            let request = UpdateRequest::unsigned(current, *candidate);
            async move { client.update(&slot, &request).await }
        });
        let results = join_all(attempts).await;
        let mut round_winners = Vec::new();
        for (candidate, result) in candidates.iter().zip(results) {
            match rejection(result) {
                None => round_winners.push(*candidate),
                Some(Rejection::Conflict) => {}
                Some(other) => panic!("round {round}: unexpected rejection {other:?}"),
            }
        }
        assert_eq!(round_winners.len(), 1, "round {round}: exactly one winner");
        current = round_winners[0];
        winners.push(current);
    }
    let mut history = addresses(&t.history(&slot).await);
    history.reverse();
    assert_eq!(history, winners, "history is the winners in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_every_accepted_state_in_order() {
    let t = TestServer::start().await;
    let (slot, first) = t.unsigned_slot().await;
    let mut watch = t.client.watch(&slot).await.expect("watch").expect("exists");
    assert_eq!(
        next_state(&mut watch).await.address,
        first,
        "current state at once"
    );

    // A burst: 8 racing writers, each retrying from the current address until it has
    // made 40 accepted updates.
    let writers = (0..8).map(|_| {
        let client = t.client.clone();
        async move {
            let mut made = 0;
            while made < 40 {
                let current = client.get(&slot).await.expect("get").expect("present");
                let request = UpdateRequest::unsigned(current.address, Id::random());
                match rejection(client.update(&slot, &request).await) {
                    None => made += 1,
                    Some(Rejection::Conflict) => {}
                    Some(other) => panic!("unexpected rejection {other:?}"),
                }
            }
        }
    });
    let reader = async {
        let mut seen = vec![first];
        while seen.len() < 1 + 8 * 40 {
            seen.push(next_state(&mut watch).await.address);
        }
        seen
    };
    let (_, seen) = tokio::join!(join_all(writers), reader);
    let mut history = addresses(&t.history(&slot).await);
    history.reverse();
    assert_eq!(seen, history, "the watch saw exactly the history, in order");

    // A second watcher starts at the current state and sees the next update.
    let mut late = t.client.watch(&slot).await.expect("watch").expect("exists");
    let current = next_state(&mut late).await;
    assert_eq!(Some(&current.address), history.last());
    let next = Id::random();
    t.client
        .update(&slot, &UpdateRequest::unsigned(current.address, next))
        .await
        .expect("update");
    assert_eq!(next_state(&mut late).await.address, next);
    assert_eq!(next_state(&mut watch).await.address, next);
}

#[tokio::test]
async fn a_watcher_that_reads_late_still_gets_every_state() {
    // One buffered state per watcher: the updates below overflow it.
    let t = TestServer::start_with(SlotsConfig {
        watch_buffer: 1,
        ..SlotsConfig::default()
    })
    .await;
    let (slot, first) = t.unsigned_slot().await;
    let mut watch = t.client.watch(&slot).await.expect("watch").expect("exists");
    let mut expected = vec![first];
    for _ in 0..100 {
        let next = Id::random();
        t.client
            .update(
                &slot,
                &UpdateRequest::unsigned(*expected.last().expect("nonempty"), next),
            )
            .await
            .expect("update");
        expected.push(next);
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        seen.push(next_state(&mut watch).await.address);
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn watch_and_history_streams_are_ndjson() {
    let t = TestServer::start().await;
    let (slot, first) = t.unsigned_slot().await;
    let response = t
        .http
        .get(t.url(&format!("/slots/watch/{slot}")))
        .send()
        .await
        .expect("watch");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[CONTENT_TYPE].to_str().expect("ascii"),
        "application/x-ndjson"
    );
    let mut body = response.bytes_stream();
    let chunk = tokio::time::timeout(PATIENCE, body.next())
        .await
        .expect("first line arrives")
        .expect("open")
        .expect("bytes");
    let line = std::str::from_utf8(&chunk).expect("utf-8");
    assert!(line.ends_with('\n'), "{line:?}");
    let state: SlotState = serde_json::from_str(line.trim()).expect("a state");
    assert_eq!(state.address, first);
}

#[tokio::test]
async fn watch_streams_end_when_the_server_stops() {
    let t = TestServer::start().await;
    let (slot, _) = t.unsigned_slot().await;
    let mut watch = t.client.watch(&slot).await.expect("watch").expect("exists");
    next_state(&mut watch).await;
    let TestServer { dir, server, .. } = t;
    let stopping = tokio::spawn(server.stop());
    let end = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "clean end, got {end:?}");
    stopping
        .await
        .expect("stop task")
        .expect("server stopped cleanly");
    drop(dir);
}

// ---------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------

/// Sends `request` raw and returns the status.
async fn put_update(t: &TestServer, slot: &Id, request: &UpdateRequest) -> StatusCode {
    t.http
        .put(t.url(&format!("/slots/{slot}")))
        .json(request)
        .send()
        .await
        .expect("PUT")
        .status()
}

/// Checks that `signer`'s slot accepts its signature and refuses every alteration.
async fn check_signed_slot(t: &TestServer, signer: &SlotSigner, slot: Id, first: Id) {
    let second = Id::random();
    let unsigned = UpdateRequest::unsigned(first, second);
    assert_eq!(
        put_update(t, &slot, &unsigned).await,
        StatusCode::FORBIDDEN,
        "missing"
    );
    let garbage = UpdateRequest {
        signature: Some("not a signature".into()),
        ..unsigned.clone()
    };
    assert_eq!(
        put_update(t, &slot, &garbage).await,
        StatusCode::FORBIDDEN,
        "garbage"
    );

    let good = signer.update_request(&slot, &first, &second).expect("sign");
    let signature = hex_decode(good.signature.as_deref().expect("signed"));
    // Every byte of the signature, flipped.
    for i in 0..signature.len() {
        let mut altered = signature.clone();
        altered[i] ^= 0x01;
        let request = UpdateRequest {
            signature: Some(hex_encode(&altered)),
            ..good.clone()
        };
        assert_eq!(
            put_update(t, &slot, &request).await,
            StatusCode::FORBIDDEN,
            "sig byte {i}"
        );
    }
    // Every byte of the address and of previous, altered under the genuine signature.
    for i in 0..32 {
        let mut address = *second.as_bytes();
        address[i] ^= 0x01;
        let request = UpdateRequest {
            address: Id::from_bytes(address),
            ..good.clone()
        };
        assert_eq!(
            put_update(t, &slot, &request).await,
            StatusCode::FORBIDDEN,
            "address byte {i}"
        );
        let mut previous = *first.as_bytes();
        previous[i] ^= 0x01;
        let request = UpdateRequest {
            previous: Previous::Address(Id::from_bytes(previous)),
            ..good.clone()
        };
        assert_eq!(
            put_update(t, &slot, &request).await,
            StatusCode::FORBIDDEN,
            "previous byte {i}"
        );
    }
    assert_eq!(
        addresses(&t.history(&slot).await),
        vec![first],
        "refusals changed nothing"
    );

    t.client
        .update(&slot, &good)
        .await
        .expect("the genuine signature is accepted");
    let state = t.client.get(&slot).await.expect("get").expect("present");
    assert_eq!(state.address, second);
    assert_eq!(
        state.signature, good.signature,
        "the signature is kept, as hex"
    );

    // Replaying it is now stale; the next update through the typed helper works.
    assert_eq!(put_update(t, &slot, &good).await, StatusCode::CONFLICT);
    let third = Id::random();
    t.client
        .update_signed(&slot, signer, &second, &third)
        .await
        .expect("update_signed");
    // The same signature in base64 is accepted too.
    let fourth = Id::random();
    let mut b64 = signer.update_request(&slot, &third, &fourth).expect("sign");
    b64.signature = Some(base64_encode(&hex_decode(
        b64.signature.as_deref().expect("sig"),
    )));
    t.client
        .update(&slot, &b64)
        .await
        .expect("base64 signature");
    assert_eq!(
        addresses(&t.history(&slot).await),
        vec![fourth, third, second, first]
    );
}

#[tokio::test]
async fn ed25519_slots_accept_only_their_key() {
    let t = TestServer::start().await;
    let mut seed = [0u8; 32];
    StdRng::seed_from_u64(25519).fill_bytes(&mut seed);
    let signer = SlotSigner::ed25519_from_seed(&seed);
    let slot = signer.ed25519_slot().expect("ed25519 slot id");
    let first = Id::random();
    assert!(
        t.client
            .register(&signer.register_request(slot, first))
            .await
            .expect("register")
    );
    let config = t
        .client
        .config(&slot)
        .await
        .expect("config")
        .expect("present");
    assert_eq!(config.signature, SignatureConfig::Ed25519);
    assert_eq!(config.proof, ProofConfig::None);
    check_signed_slot(&t, &signer, slot, first).await;

    // Another key's signature is refused.
    let other = SlotSigner::ed25519_from_seed(&[7; 32]);
    let current = t
        .client
        .get(&slot)
        .await
        .expect("get")
        .expect("present")
        .address;
    let forged = other
        .update_request(&slot, &current, &Id::random())
        .expect("sign");
    assert_eq!(put_update(&t, &slot, &forged).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn rsa_slots_accept_only_their_key() {
    let t = TestServer::start().await;
    let signer = SlotSigner::rsa_from_pem(TEST_RSA_PRIVATE).expect("test key");

    // Registered with the SPKI PEM the signer exports.
    let (slot, first) = (Id::random(), Id::random());
    assert!(
        t.client
            .register(&signer.register_request(slot, first))
            .await
            .expect("register")
    );
    check_signed_slot(&t, &signer, slot, first).await;

    // Registered with a PKCS#1 PEM, as the reference does.
    let (slot, first) = (Id::random(), Id::random());
    let (status, _) = t
        .put_json(
            "/slots/register",
            json!({"id": slot, "address": first,
                   "signature": {"kind": "sha256:rsa", "key": TEST_RSA_PUBLIC_PKCS1}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let config = t
        .client
        .config(&slot)
        .await
        .expect("config")
        .expect("present");
    assert_eq!(
        config.signature,
        SignatureConfig::Sha256Rsa {
            key: TEST_RSA_PUBLIC_PKCS1.into()
        }
    );
    let second = Id::random();
    t.client
        .update_signed(&slot, &signer, &first, &second)
        .await
        .expect("signed update");
    let wrong_key = SlotSigner::ed25519_from_seed(&[1; 32]);
    let forged = wrong_key
        .update_request(&slot, &second, &Id::random())
        .expect("sign");
    assert_eq!(put_update(&t, &slot, &forged).await, StatusCode::FORBIDDEN);
}

// ---------------------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_restart_keeps_slots_configs_and_history() {
    let t = TestServer::start().await;
    let signer = SlotSigner::ed25519_from_seed(&[3; 32]);
    let signed = signer.ed25519_slot().expect("slot");
    let first = Id::random();
    assert!(
        t.client
            .register(&signer.register_request(signed, first))
            .await
            .expect("register")
    );
    let second = Id::random();
    t.client
        .update_signed(&signed, &signer, &first, &second)
        .await
        .expect("update");
    let (plain, mut address) = t.unsigned_slot().await;
    for _ in 0..20 {
        let next = Id::random();
        t.client
            .update(&plain, &UpdateRequest::unsigned(address, next))
            .await
            .expect("update");
        address = next;
    }
    let before = (t.history(&signed).await, t.history(&plain).await);
    let server_id = t.server.id();

    let TestServer { dir, server, .. } = t;
    server.stop().await.expect("stop");
    let server = launch(dir.path(), SlotsConfig::default()).await;
    let t = TestServer::wrap(dir, server);
    assert_eq!(t.server.id(), server_id);
    assert_eq!((t.history(&signed).await, t.history(&plain).await), before);
    assert_eq!(
        t.client
            .config(&signed)
            .await
            .expect("config")
            .expect("present")
            .signature,
        SignatureConfig::Ed25519
    );
    // Still enforced, and still writable.
    let unsigned = UpdateRequest::unsigned(second, Id::random());
    assert_eq!(
        put_update(&t, &signed, &unsigned).await,
        StatusCode::FORBIDDEN
    );
    t.client
        .update(&plain, &UpdateRequest::unsigned(address, Id::random()))
        .await
        .expect("update after restart");
    assert!(t.dir.path().join(slots_server::DB_FILE).is_file());
}

// ---------------------------------------------------------------------------------------
// Helpers: signature encodings
// ---------------------------------------------------------------------------------------

fn hex_decode(text: &str) -> Vec<u8> {
    invariant_spec::slots::decode_signature(text).expect("hex signature")
}

fn hex_encode(bytes: &[u8]) -> String {
    invariant_spec::slots::encode_signature(bytes)
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
