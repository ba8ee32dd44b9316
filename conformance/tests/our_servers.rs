//! Runs the conformance suite against every server of this workspace, started
//! in-process on 127.0.0.1:0, and requires zero failures.
//!
//! Servers that fetch from or notify peers (storage, find) get the suite's broker as
//! their `--broker`, so those interplay checks run instead of being skipped.

use std::path::Path;
use std::time::Duration;

use invariant_conformance::{Options, Report, Role, Status, reserve_suite_broker, run};
use invariant_runtime::{Role as ServerRole, Server, ServerContext, ServerOptions};
use tempfile::TempDir;

/// Blob limit given to the storage server, so the 413 check runs.
const MAX_BLOB: u64 = 2 * 1024 * 1024;

fn context(role: ServerRole, dir: &Path, broker: Option<String>) -> ServerContext {
    let mut options = ServerOptions::ephemeral(role, dir);
    options.broker = broker;
    ServerContext::prepare(options).expect("prepare server context")
}

fn options() -> Options {
    Options {
        request_timeout: Duration::from_secs(10),
        check_timeout: Duration::from_secs(30),
        ..Options::default()
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
/// (no fail, warn or skip); then stops the server.
async fn passes_every_check(role: Role, server: Server, dir: TempDir, options: Options) {
    let report = run(role, server.url(), options).await.expect("run suite");
    let report = assert_passed(report);
    assert!(
        not_passed(&report).is_empty(),
        "our {} server should pass every check: {:?}",
        role.name(),
        not_passed(&report)
    );
    stop(server, dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_with_suite_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (listener, broker_url) = reserve_suite_broker().expect("suite broker");
    let ctx = context(ServerRole::Storage, dir.path(), Some(broker_url));
    let config = storage_server::StorageConfig {
        max_blob_size: MAX_BLOB,
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
            ..options()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_without_broker_cannot_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context(ServerRole::Storage, dir.path(), None);
    let server = storage_server::start(&ctx, Default::default())
        .await
        .expect("start storage");
    let report = run(
        Role::Storage,
        server.url(),
        Options {
            only: Some("storage-fetch".into()),
            ..options()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context(ServerRole::Slots, dir.path(), None);
    let server = slots_server::start(&ctx, Default::default())
        .await
        .expect("start slots");
    passes_every_check(Role::Slots, server, dir, options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context(ServerRole::Broker, dir.path(), None);
    let server = broker_server::start(&ctx, Default::default())
        .await
        .expect("start broker");
    passes_every_check(Role::Broker, server, dir, options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_with_suite_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (listener, broker_url) = reserve_suite_broker().expect("suite broker");
    let ctx = context(ServerRole::Find, dir.path(), Some(broker_url));
    let server = find_server::start(&ctx, Default::default())
        .await
        .expect("start find");
    passes_every_check(
        Role::Find,
        server,
        dir,
        Options {
            suite_broker: Some(listener),
            ..options()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn productions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context(ServerRole::Productions, dir.path(), None);
    let server = productions_server::start(&ctx)
        .await
        .expect("start productions");
    passes_every_check(Role::Productions, server, dir, options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context(ServerRole::Files, dir.path(), None);
    let server = files_server::start(&ctx, Default::default())
        .await
        .expect("start files");
    passes_every_check(Role::Files, server, dir, options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = context(ServerRole::Names, dir.path(), None);
    let server = names_server::start(&ctx, Default::default())
        .await
        .expect("start names");
    passes_every_check(Role::Names, server, dir, options()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributor_with_suite_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (listener, broker_url) = reserve_suite_broker().expect("suite broker");
    let ctx = context(ServerRole::Distributor, dir.path(), Some(broker_url));
    let server = distributor::start(&ctx, Default::default())
        .await
        .expect("start distributor");
    passes_every_check(
        Role::Distributor,
        server,
        dir,
        Options {
            suite_broker: Some(listener),
            ..options()
        },
    )
    .await;
}
