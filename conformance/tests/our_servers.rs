//! Runs the conformance suite against every server of this workspace, started
//! in-process on 127.0.0.1:0, and requires zero failures: once in open mode (where the
//! `auth-*` checks are skipped) and once in auth mode (a root key; the suite gets an
//! operator token, and the `auth-*` checks must run and pass).
//!
//! Servers that fetch from or notify peers (storage, find) get the suite's broker as
//! their `--broker`, so those interplay checks run instead of being skipped.

use std::path::Path;
use std::time::Duration;

use invariant_conformance::{
    ClientSecurity, Options, Profile, Report, Role, Status, reserve_suite_broker, run,
};
use invariant_runtime::{Role as ServerRole, Server, ServerContext, ServerOptions, TlsFiles};
use invariant_test_support::{TestAuth, TestPki};
use tempfile::TempDir;

/// Blob limit given to the storage server, so the 413 check runs.
const MAX_BLOB: u64 = 2 * 1024 * 1024;

/// How the server under test checks tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// No root key: no checks.
    Open,
    /// A root key: changes need a token.
    Auth,
    /// A root key and `--auth-reads`: reads need a token too.
    AuthReads,
    /// HTTPS (a test CA the suite is given) and a root key.
    TlsAuth,
}

/// A server and suite setup for one mode: the network's root key when tokens are on,
/// and a CA with a server certificate for HTTPS.
struct Setup {
    mode: Mode,
    auth: Option<TestAuth>,
    pki: Option<(TestPki, TempDir)>,
}

impl Setup {
    fn new(mode: Mode) -> Setup {
        let auth = (mode != Mode::Open).then(TestAuth::new);
        let pki = (mode == Mode::TlsAuth).then(|| {
            let dir = tempfile::tempdir().expect("pki dir");
            (TestPki::new(dir.path()), dir)
        });
        Setup { mode, auth, pki }
    }

    fn context(&self, role: ServerRole, dir: &Path, broker: Option<String>) -> ServerContext {
        let mut options = ServerOptions::ephemeral(role, dir);
        options.broker = broker;
        if let Some(auth) = &self.auth {
            options.auth.root = Some(auth.public());
            options.auth.reads = self.mode == Mode::AuthReads;
        }
        if let Some((pki, _)) = &self.pki {
            options.tls = Some(TlsFiles {
                cert: pki.cert.clone(),
                key: pki.key.clone(),
            });
        }
        ServerContext::prepare(options).expect("prepare server context")
    }

    /// Suite options: in auth mode, an operator token for every request; with TLS,
    /// the test CA.
    fn options(&self) -> Options {
        let token = self
            .auth
            .as_ref()
            .map(|auth| auth.token("conformance-operator", "*"));
        let security = match &self.pki {
            Some((pki, _)) => pki.client_security(token.as_deref()),
            None => ClientSecurity {
                token,
                ..ClientSecurity::default()
            },
        };
        // Every profile: ours must pass the extensions and the authorization rules too.
        Options {
            profile: Some(Profile::Secure),
            request_timeout: Duration::from_secs(10),
            check_timeout: Duration::from_secs(30),
            security,
            auth_reads: self.mode == Mode::AuthReads,
            ..Options::default()
        }
    }
}

/// Fails the test with the report's table when any check failed; returns the report.
fn assert_passed(report: Report) -> Report {
    assert!(report.passed(), "conformance failures:\n{}", report.table());
    assert!(
        report.count(Status::Pass) > 0,
        "nothing passed:\n{}",
        report.table()
    );
    eprintln!("{}", report.table());
    report
}

/// The checks that did not pass (warn or skip), for a readable assertion message.
fn not_passed(report: &Report) -> Vec<String> {
    report
        .results
        .iter()
        .filter(|r| r.status != Status::Pass)
        .map(|r| format!("{} {}: {}", r.status.as_str(), r.check, r.detail))
        .collect()
}

async fn stop(server: Server, _dir: TempDir) {
    server.stop().await.expect("stop server");
}

/// Runs the suite for `role` against `server` and requires every check to pass
/// (no fail, warn or skip), except that in open mode each `auth-*` check must be
/// skipped for want of a token; then stops the server.
async fn passes_every_check(
    role: Role,
    server: Server,
    dir: TempDir,
    options: Options,
    mode: Mode,
) {
    if mode == Mode::TlsAuth {
        assert!(server.url().starts_with("https://"), "{}", server.url());
    }
    let report = run(role, server.url(), options).await.expect("run suite");
    let report = assert_passed(report);
    let auth_checks: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.check.starts_with("auth-"))
        .collect();
    assert!(
        auth_checks.len() >= 6,
        "the auth checks are missing:\n{}",
        report.table()
    );
    let others: Vec<String> = not_passed(&report)
        .into_iter()
        .filter(|line| !line.starts_with("skip auth-"))
        .collect();
    assert!(
        others.is_empty(),
        "our {} server should pass every check: {others:?}",
        role.name(),
    );
    for result in auth_checks {
        match mode {
            Mode::Open => assert!(
                result.status == Status::Skip && result.detail.contains("no token"),
                "{} should be skipped without a token: {result:?}",
                result.check
            ),
            Mode::Auth | Mode::AuthReads | Mode::TlsAuth => assert_eq!(
                result.status,
                Status::Pass,
                "{} should run and pass in auth mode: {result:?}",
                result.check
            ),
        }
    }
    stop(server, dir).await;
}

async fn storage_with_suite_broker(mode: Mode) {
    let setup = Setup::new(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    let (listener, broker_url) = reserve_suite_broker().expect("suite broker");
    let ctx = setup.context(ServerRole::Storage, dir.path(), Some(broker_url));
    let config = storage_server::StorageConfig {
        max_blob_size: MAX_BLOB,
        // In open mode the delete checks run without a token.
        allow_open_delete: true,
        ..Default::default()
    };
    let server = storage_server::start(&ctx, config)
        .await
        .expect("start storage");
    passes_every_check(
        Role::Storage,
        server,
        dir,
        Options {
            suite_broker: Some(listener),
            max_blob_size: Some(MAX_BLOB),
            ..setup.options()
        },
        mode,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_without_broker_cannot_fetch() {
    let setup = Setup::new(Mode::Open);
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = setup.context(ServerRole::Storage, dir.path(), None);
    let server = storage_server::start(&ctx, Default::default())
        .await
        .expect("start storage");
    let report = run(
        Role::Storage,
        server.url(),
        Options {
            only: Some("storage-fetch*".into()),
            ..setup.options()
        },
    )
    .await
    .expect("run suite");
    let report = assert_passed(report);
    assert!(
        report
            .results
            .iter()
            .all(|r| r.check.starts_with("storage-fetch"))
    );
    stop(server, dir).await;
}

async fn slots(mode: Mode) {
    let setup = Setup::new(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = setup.context(ServerRole::Slots, dir.path(), None);
    let server = slots_server::start(&ctx, Default::default())
        .await
        .expect("start slots");
    passes_every_check(Role::Slots, server, dir, setup.options(), mode).await;
}

async fn broker(mode: Mode) {
    let setup = Setup::new(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = setup.context(ServerRole::Broker, dir.path(), None);
    let server = broker_server::start(&ctx, Default::default())
        .await
        .expect("start broker");
    passes_every_check(Role::Broker, server, dir, setup.options(), mode).await;
}

async fn find_with_suite_broker(mode: Mode) {
    let setup = Setup::new(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    let (listener, broker_url) = reserve_suite_broker().expect("suite broker");
    let ctx = setup.context(ServerRole::Find, dir.path(), Some(broker_url));
    let server = find_server::start(&ctx, Default::default())
        .await
        .expect("start find");
    passes_every_check(
        Role::Find,
        server,
        dir,
        Options {
            suite_broker: Some(listener),
            ..setup.options()
        },
        mode,
    )
    .await;
}

async fn productions(mode: Mode) {
    let setup = Setup::new(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = setup.context(ServerRole::Productions, dir.path(), None);
    let server = productions_server::start(&ctx)
        .await
        .expect("start productions");
    passes_every_check(Role::Productions, server, dir, setup.options(), mode).await;
}

async fn files(mode: Mode) {
    let setup = Setup::new(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = setup.context(ServerRole::Files, dir.path(), None);
    let server = files_server::start(&ctx, Default::default())
        .await
        .expect("start files");
    passes_every_check(Role::Files, server, dir, setup.options(), mode).await;
}

async fn names(mode: Mode) {
    let setup = Setup::new(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = setup.context(ServerRole::Names, dir.path(), None);
    let server = names_server::start(&ctx, Default::default())
        .await
        .expect("start names");
    passes_every_check(Role::Names, server, dir, setup.options(), mode).await;
}

async fn distributor_with_suite_broker(mode: Mode) {
    let setup = Setup::new(mode);
    let dir = tempfile::tempdir().expect("tempdir");
    let (listener, broker_url) = reserve_suite_broker().expect("suite broker");
    let ctx = setup.context(ServerRole::Distributor, dir.path(), Some(broker_url));
    let server = distributor::start(&ctx, Default::default())
        .await
        .expect("start distributor");
    passes_every_check(
        Role::Distributor,
        server,
        dir,
        Options {
            suite_broker: Some(listener),
            ..setup.options()
        },
        mode,
    )
    .await;
}

/// One test per role and mode.
macro_rules! modes {
    ($($run:ident: $open:ident, $auth:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $open() {
            $run(Mode::Open).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $auth() {
            $run(Mode::Auth).await;
        }
    )*};
}

modes! {
    storage_with_suite_broker: storage_open, storage_auth;
    slots: slots_open, slots_auth;
    broker: broker_open, broker_auth;
    find_with_suite_broker: find_open, find_auth;
    productions: productions_open, productions_auth;
    files: files_open, files_auth;
    names: names_open, names_auth;
    distributor_with_suite_broker: distributor_open, distributor_auth;
}

/// With `--auth-reads` the existing checks still pass (their reads carry the token)
/// and anonymous reads are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_with_auth_reads() {
    slots(Mode::AuthReads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributor_with_auth_reads() {
    distributor_with_suite_broker(Mode::AuthReads).await;
}

/// Over HTTPS (the suite trusts the test CA) with tokens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_over_tls() {
    storage_with_suite_broker(Mode::TlsAuth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_over_tls() {
    names(Mode::TlsAuth).await;
}
