//! In-process tests of the slots server in auth mode (`--auth-root-key`): tokens on
//! every mutating route, owners of unsigned slots, and the claim that defeats
//! squatting on an ed25519 key. One test checks that claims work in open mode too.
//!
//! Each test starts its own server on `127.0.0.1:0` over a fresh temporary data
//! directory. Every refusal is followed by a read-back showing that nothing changed.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::http::Endpoint;
use invariant_spec::slots::{
    Previous, RegisterRequest, SignatureConfig, SlotSigner, SlotState, StateStream, UpdateRequest,
};
use invariant_spec::{Id, SlotsClient};
use invariant_test_support::TestAuth;
use reqwest::StatusCode;
use serde_json::{Value, json};
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

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A slots server, in auth mode when `auth` is given.
struct Slots {
    dir: TempDir,
    server: Server,
    auth: TestAuth,
}

impl Slots {
    async fn start(auth_mode: bool) -> Slots {
        let dir = tempfile::tempdir().expect("temp data dir");
        let auth = TestAuth::new();
        let server = launch(dir.path(), auth_mode.then_some(&auth)).await;
        Slots { dir, server, auth }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// A client acting as `subject` with `rights`.
    fn as_subject(&self, subject: &str, rights: &str) -> Subject {
        let token = self.auth.token(subject, rights);
        Subject::new(self.server.url(), TestAuth::client(&token))
    }

    /// A client that sends no token.
    fn anonymous(&self) -> Subject {
        Subject::new(self.server.url(), reqwest::Client::new())
    }

    async fn state(&self, slot: &Id) -> Option<SlotState> {
        self.anonymous().client.get(slot).await.expect("GET slot")
    }

    async fn history(&self, slot: &Id) -> Vec<SlotState> {
        self.anonymous()
            .client
            .history_all(slot)
            .await
            .expect("history")
            .expect("slot exists")
    }

    async fn kind(&self, slot: &Id) -> SignatureConfig {
        self.anonymous()
            .client
            .config(slot)
            .await
            .expect("config")
            .expect("slot exists")
            .signature
    }
}

async fn launch(data_dir: &Path, auth: Option<&TestAuth>) -> Server {
    let mut options = ServerOptions::ephemeral(Role::Slots, data_dir);
    options.auth.root = auth.map(TestAuth::public);
    let ctx = ServerContext::prepare(options).expect("prepare server context");
    slots_server::start(&ctx, SlotsConfig::default())
        .await
        .expect("start slots server")
}

/// One caller: a typed client and raw requests with the same token.
struct Subject {
    base: String,
    http: reqwest::Client,
    client: SlotsClient,
}

impl Subject {
    fn new(base: &str, http: reqwest::Client) -> Subject {
        let endpoint = Endpoint::with_client(base, http.clone()).expect("endpoint");
        Subject {
            base: base.to_string(),
            client: SlotsClient::from_endpoint(endpoint),
            http,
        }
    }

    async fn put(&self, path: &str, body: &impl serde::Serialize) -> (StatusCode, String) {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("PUT");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    async fn register(&self, request: &RegisterRequest) -> (StatusCode, String) {
        self.put("/slots/register", request).await
    }

    async fn update(&self, slot: &Id, request: &UpdateRequest) -> (StatusCode, String) {
        self.put(&format!("/slots/{slot}"), request).await
    }
}

fn assert_status((got, reason): (StatusCode, String), want: StatusCode, what: &str) {
    assert_eq!(got, want, "{what}: {reason}");
    if !want.is_success() {
        assert!(!reason.trim().is_empty(), "{what}: no reason given");
    }
}

async fn next_state(stream: &mut StateStream) -> SlotState {
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a state arrives")
        .expect("stream still open")
        .expect("valid state")
}

fn addresses(states: &[SlotState]) -> Vec<Id> {
    states.iter().map(|s| s.address).collect()
}

/// `signer`'s ed25519 registration without its claim (the form older clients send).
fn unclaimed(signer: &SlotSigner, slot: Id, address: Id) -> RegisterRequest {
    RegisterRequest {
        claim: None,
        ..signer.register_request(slot, address)
    }
}

// ---------------------------------------------------------------------------------------
// Squatting
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn squatting_on_an_ed25519_key_fails() {
    let t = Slots::start(true).await;
    let alice = t.as_subject("alice", "slots:write");
    let mallory = t.as_subject("mallory", "slots:write");
    let key = SlotSigner::ed25519_from_seed(&[0xa1; 32]);
    let slot = key.ed25519_slot().expect("ed25519 slot");

    // Mallory registers Alice's public key first, as an unsigned slot she controls.
    let (m1, m2) = (Id::random(), Id::random());
    assert_status(
        mallory.register(&RegisterRequest::unsigned(slot, m1)).await,
        StatusCode::OK,
        "squat",
    );
    assert_status(
        mallory
            .update(&slot, &UpdateRequest::unsigned(m1, m2))
            .await,
        StatusCode::OK,
        "the squatter updates her slot",
    );

    // Alice's registration without a claim is refused as before, changing nothing.
    let first = Id::random();
    assert_status(
        alice.register(&unclaimed(&key, slot, first)).await,
        StatusCode::CONFLICT,
        "unclaimed registration of a squatted key",
    );
    assert_eq!(addresses(&t.history(&slot).await), vec![m2, m1]);
    assert_eq!(t.kind(&slot).await, SignatureConfig::None);

    // With the claim (what every SlotSigner registration carries) Alice takes it over.
    let mut watch = mallory
        .client
        .watch(&slot)
        .await
        .expect("watch")
        .expect("slot exists");
    assert_eq!(next_state(&mut watch).await.address, m2);
    let claimed = key.register_request(slot, first);
    assert!(claimed.claim.is_some());
    assert!(
        alice.client.register(&claimed).await.expect("claim"),
        "the key's claim wins"
    );
    // A watcher of the squatted slot sees the claimed registration as the next state.
    let seen = next_state(&mut watch).await;
    assert_eq!((seen.address, seen.previous), (first, Previous::Root));
    assert_eq!(t.kind(&slot).await, SignatureConfig::Ed25519);
    let history = t.history(&slot).await;
    assert_eq!(
        addresses(&history),
        vec![first],
        "the squatter's history is gone"
    );
    assert_eq!(history[0].previous, Previous::Root);
    assert_eq!(
        history[0].signature, claimed.claim,
        "the claim signs the root"
    );

    // Alice's signed updates work; Mallory's unsigned ones are refused.
    let second = Id::random();
    alice
        .client
        .update_signed(&slot, &key, &first, &second)
        .await
        .expect("the owner's signed update");
    assert_status(
        mallory
            .update(&slot, &UpdateRequest::unsigned(second, m1))
            .await,
        StatusCode::FORBIDDEN,
        "the squatter's unsigned update after the claim",
    );
    // Neither re-squatting nor replaying Alice's claim takes the slot back.
    assert_status(
        mallory.register(&RegisterRequest::unsigned(slot, m1)).await,
        StatusCode::CONFLICT,
        "re-squatting",
    );
    assert_status(
        mallory.register(&claimed).await,
        StatusCode::CONFLICT,
        "replaying the claim",
    );
    assert_eq!(addresses(&t.history(&slot).await), vec![second, first]);
}

#[tokio::test]
async fn a_claim_also_replaces_an_rsa_squatter() {
    let t = Slots::start(true).await;
    let alice = t.as_subject("alice", "slots:write");
    let mallory = t.as_subject("mallory", "slots:write");
    let key = SlotSigner::ed25519_from_seed(&[0xa2; 32]);
    let slot = key.ed25519_slot().expect("ed25519 slot");
    let rsa = SlotSigner::rsa_from_pem(TEST_RSA_PRIVATE).expect("rsa signer");
    let (m1, m2) = (Id::random(), Id::random());
    assert!(
        mallory
            .client
            .register(&rsa.register_request(slot, m1))
            .await
            .expect("rsa squat")
    );
    mallory
        .client
        .update_signed(&slot, &rsa, &m1, &m2)
        .await
        .expect("the squatter's rsa update");
    let first = Id::random();
    assert!(
        alice
            .client
            .register(&key.register_request(slot, first))
            .await
            .expect("claim")
    );
    assert_eq!(t.kind(&slot).await, SignatureConfig::Ed25519);
    assert_eq!(addresses(&t.history(&slot).await), vec![first]);
    // The squatter's key no longer authorises anything.
    let forged = rsa.update_request(&slot, &first, &m1).expect("sign");
    assert_status(
        mallory.update(&slot, &forged).await,
        StatusCode::FORBIDDEN,
        "an rsa signature on the claimed slot",
    );
    assert_eq!(addresses(&t.history(&slot).await), vec![first]);
}

#[tokio::test]
async fn a_claim_that_does_not_verify_changes_nothing() {
    let t = Slots::start(true).await;
    let alice = t.as_subject("alice", "slots:write");
    let mallory = t.as_subject("mallory", "slots:write");
    let key = SlotSigner::ed25519_from_seed(&[0xa3; 32]);
    let slot = key.ed25519_slot().expect("ed25519 slot");
    let m1 = Id::random();
    assert_status(
        mallory.register(&RegisterRequest::unsigned(slot, m1)).await,
        StatusCode::OK,
        "squat",
    );

    let first = Id::random();
    let genuine = key.register_request(slot, first);
    let stranger = SlotSigner::ed25519_from_seed(&[0x5e; 32]);
    let other_address = key.claim(&Id::random()).expect("claim");
    let update_signature = key
        .sign(&slot, &Previous::Address(m1), &first)
        .expect("sign");
    let mut flipped = hex::decode(genuine.claim.as_deref().expect("claim")).expect("hex");
    flipped[10] ^= 1;
    for (what, claim) in [
        ("a claim by another key", stranger.claim(&first)),
        ("a claim for another address", Some(other_address)),
        ("an update signature as a claim", Some(update_signature)),
        ("an altered claim", Some(hex::encode(&flipped))),
        ("a claim that is not hex or base64", Some("zz".to_string())),
    ] {
        let request = RegisterRequest {
            claim,
            ..genuine.clone()
        };
        assert_status(alice.register(&request).await, StatusCode::FORBIDDEN, what);
        assert_eq!(t.kind(&slot).await, SignatureConfig::None, "{what}");
        assert_eq!(addresses(&t.history(&slot).await), vec![m1], "{what}");
    }
    // A claim on a slot kind that has none is malformed.
    let request = RegisterRequest {
        signature: Some(SignatureConfig::None),
        ..genuine.clone()
    };
    assert_status(
        alice.register(&request).await,
        StatusCode::BAD_REQUEST,
        "a claim on an unsigned registration",
    );
    // A bad claim does not create a fresh slot either.
    let fresh = SlotSigner::ed25519_from_seed(&[0xa4; 32]);
    let fresh_slot = fresh.ed25519_slot().expect("ed25519 slot");
    let request = RegisterRequest {
        claim: stranger.claim(&first),
        ..fresh.register_request(fresh_slot, first)
    };
    assert_status(
        alice.register(&request).await,
        StatusCode::FORBIDDEN,
        "a bad claim on a fresh id",
    );
    assert_eq!(t.state(&fresh_slot).await, None);
    // The genuine claim still works afterwards.
    assert!(alice.client.register(&genuine).await.expect("claim"));
    assert_eq!(addresses(&t.history(&slot).await), vec![first]);
}

#[tokio::test]
async fn claims_work_in_open_mode_and_unclaimed_requests_behave_as_before() {
    let t = Slots::start(false).await;
    let anyone = t.anonymous();
    let key = SlotSigner::ed25519_from_seed(&[0xa5; 32]);
    let slot = key.ed25519_slot().expect("ed25519 slot");
    let m1 = Id::random();
    assert!(
        anyone
            .client
            .register(&RegisterRequest::unsigned(slot, m1))
            .await
            .expect("squat")
    );
    let first = Id::random();
    assert!(
        !anyone
            .client
            .register(&unclaimed(&key, slot, first))
            .await
            .expect("unclaimed"),
        "an unclaimed registration of a taken id is still 409"
    );
    assert!(
        anyone
            .client
            .register(&key.register_request(slot, first))
            .await
            .expect("claim")
    );
    assert_eq!(addresses(&t.history(&slot).await), vec![first]);
    // An unclaimed ed25519 registration of a fresh key works as before, and then a
    // claim cannot replace it (only its key could update it anyway).
    let other = SlotSigner::ed25519_from_seed(&[0xa6; 32]);
    let other_slot = other.ed25519_slot().expect("ed25519 slot");
    assert!(
        anyone
            .client
            .register(&unclaimed(&other, other_slot, first))
            .await
            .expect("unclaimed fresh")
    );
    assert_eq!(t.history(&other_slot).await[0].signature, None);
    assert_status(
        anyone
            .register(&other.register_request(other_slot, Id::random()))
            .await,
        StatusCode::CONFLICT,
        "a claim over an ed25519 slot",
    );
    // In open mode anyone may update an unsigned slot, as before.
    let (plain, a) = (Id::random(), Id::random());
    assert!(
        anyone
            .client
            .register(&RegisterRequest::unsigned(plain, a))
            .await
            .expect("register")
    );
    anyone
        .client
        .update(&plain, &UpdateRequest::unsigned(a, Id::random()))
        .await
        .expect("anonymous update in open mode");
}

// ---------------------------------------------------------------------------------------
// Owners and tokens
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unsigned_slots_are_updated_only_by_their_owner_or_an_operator() {
    let t = Slots::start(true).await;
    let alice = t.as_subject("alice", "slots:write");
    let bob = t.as_subject("bob", "slots:write");
    let admin = t.as_subject("ops", "slots:write,slots:admin");
    let operator = t.as_subject("root", "*");
    let (slot, a) = (Id::random(), Id::random());
    assert!(
        alice
            .client
            .register(&RegisterRequest::unsigned(slot, a))
            .await
            .expect("register")
    );

    let b = Id::random();
    assert_status(
        bob.update(&slot, &UpdateRequest::unsigned(a, b)).await,
        StatusCode::FORBIDDEN,
        "another subject's update",
    );
    assert_eq!(addresses(&t.history(&slot).await), vec![a]);
    alice
        .client
        .update(&slot, &UpdateRequest::unsigned(a, b))
        .await
        .expect("the owner's update");
    let c = Id::random();
    admin
        .client
        .update(&slot, &UpdateRequest::unsigned(b, c))
        .await
        .expect("a slots:admin update");
    let d = Id::random();
    operator
        .client
        .update(&slot, &UpdateRequest::unsigned(c, d))
        .await
        .expect("an operator's update");
    assert_eq!(addresses(&t.history(&slot).await), vec![d, c, b, a]);
    // A stale update by a stranger is refused for ownership, not staleness.
    assert_status(
        bob.update(&slot, &UpdateRequest::unsigned(a, b)).await,
        StatusCode::FORBIDDEN,
        "a stale update by another subject",
    );

    // Signed slots keep their rule: any slots:write holder with a valid signature.
    let key = SlotSigner::ed25519_from_seed(&[0xb1; 32]);
    let signed = key.ed25519_slot().expect("ed25519 slot");
    assert!(
        alice
            .client
            .register(&key.register_request(signed, a))
            .await
            .expect("register signed")
    );
    bob.client
        .update_signed(&signed, &key, &a, &b)
        .await
        .expect("a signed update by another subject");
    assert_status(
        alice.update(&signed, &UpdateRequest::unsigned(b, c)).await,
        StatusCode::FORBIDDEN,
        "an unsigned update of a signed slot by its registrant",
    );
    assert_eq!(addresses(&t.history(&signed).await), vec![b, a]);
}

#[tokio::test]
async fn mutating_routes_need_a_token_with_slots_write() {
    let t = Slots::start(true).await;
    let alice = t.as_subject("alice", "slots:write");
    let (slot, a) = (Id::random(), Id::random());
    assert!(
        alice
            .client
            .register(&RegisterRequest::unsigned(slot, a))
            .await
            .expect("register")
    );
    let key = SlotSigner::ed25519_from_seed(&[0xc1; 32]);
    let fresh = key.ed25519_slot().expect("ed25519 slot");
    let update = UpdateRequest::unsigned(a, Id::random());
    let reader = t.as_subject("alice", "slots:read");
    let expired = Subject::new(
        t.server.url(),
        TestAuth::client(&t.auth.expired("alice", "slots:write")),
    );
    let foreign = Subject::new(t.server.url(), TestAuth::client(&t.auth.foreign("alice")));
    let narrowed = Subject::new(
        t.server.url(),
        TestAuth::client(&t.auth.attenuated(
            &t.auth.token("alice", "slots:write,slots:read"),
            "slots:read",
        )),
    );
    let cases = [
        (t.anonymous(), StatusCode::UNAUTHORIZED, "no token"),
        (reader, StatusCode::FORBIDDEN, "a slots:read token"),
        (expired, StatusCode::FORBIDDEN, "an expired token"),
        (foreign, StatusCode::FORBIDDEN, "another root's token"),
        (narrowed, StatusCode::FORBIDDEN, "an attenuated token"),
    ];
    for (subject, status, what) in &cases {
        assert_status(subject.update(&slot, &update).await, *status, what);
        assert_status(
            subject.register(&key.register_request(fresh, a)).await,
            *status,
            what,
        );
        // POST is a synonym of PUT for registration and is guarded the same way.
        let response = subject
            .http
            .post(t.url("/slots/register"))
            .json(&json!({"id": Id::random(), "address": a}))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), *status, "POST register, {what}");
    }
    assert_eq!(addresses(&t.history(&slot).await), vec![a]);
    assert_eq!(t.state(&fresh).await, None);
    // Reads stay open without --auth-reads.
    let response = reqwest::get(t.url(&format!("/slots/config/{slot}")))
        .await
        .expect("GET config");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("config json");
    assert_eq!(body["signature"]["kind"], "none");
}

#[tokio::test]
async fn slots_registered_before_auth_have_no_owner() {
    let dir = tempfile::tempdir().expect("temp data dir");
    let auth = TestAuth::new();
    let (slot, a) = (Id::random(), Id::random());
    {
        let server = launch(dir.path(), None).await;
        let client = SlotsClient::new(server.url()).expect("client");
        assert!(
            client
                .register(&RegisterRequest::unsigned(slot, a))
                .await
                .expect("register in open mode")
        );
        server.stop().await.expect("stop");
    }
    let server = launch(dir.path(), Some(&auth)).await;
    let t = Slots { dir, server, auth };
    let bob = t.as_subject("bob", "slots:write");
    let b = Id::random();
    bob.client
        .update(&slot, &UpdateRequest::unsigned(a, b))
        .await
        .expect("any slots:write holder updates an unowned slot");
    let carol = t.as_subject("carol", "slots:write");
    carol
        .client
        .update(&slot, &UpdateRequest::unsigned(b, a))
        .await
        .expect("and so does another");
    assert_eq!(addresses(&t.history(&slot).await), vec![a, b, a]);
    assert!(t.dir.path().join(slots_server::DB_FILE).is_file());
}
