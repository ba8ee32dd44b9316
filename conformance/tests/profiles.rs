//! Profiles and honest verdicts against fakes on 127.0.0.1: a storage server that
//! implements only the `core` profile passes `core` with zero failures and fails
//! exactly this project's extensions under `full`; an unreachable server is one error;
//! a server that crashes mid-run ends the run with one clear reason.

mod fakes;

use invariant_conformance::{ConformanceError, Options, Profile, Role, Status, run};

fn profile(profile: Profile) -> Options {
    Options {
        profile: Some(profile),
        ..Options::default()
    }
}

fn failed(report: &invariant_conformance::Report) -> Vec<&str> {
    report.failures().map(|r| r.check.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_only_storage_server_passes_core() {
    let url = fakes::core_storage().await;
    let report = run(Role::Storage, &url, profile(Profile::Core))
        .await
        .expect("run");
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.summary.fail, 0);
    assert!(
        report.results.iter().all(|r| r.profile == Profile::Core),
        "{}",
        report.table()
    );
    for extension in ["storage-range", "storage-if-none-match", "storage-id-case"] {
        assert!(
            report.results.iter().all(|r| r.check != extension),
            "{extension} is not a core check:\n{}",
            report.table()
        );
    }
    assert!(
        report.results.iter().all(|r| !r.check.starts_with("auth-")),
        "{}",
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_only_storage_server_fails_exactly_the_extensions_under_full() {
    let url = fakes::core_storage().await;
    let report = run(Role::Storage, &url, profile(Profile::Full))
        .await
        .expect("run");
    let mut failures = failed(&report);
    failures.sort_unstable();
    assert_eq!(
        failures,
        [
            "storage-delete",
            "storage-delete-batch",
            "storage-id-case",
            "storage-if-none-match",
            "storage-list",
            "storage-range",
        ],
        "{}",
        report.table()
    );
    for r in report.failures() {
        assert_eq!(r.profile, Profile::Full, "{r:?}");
        assert!(r.anchor.contains(".md#"), "{r:?}");
        assert!(!r.detail.contains("Id("), "{r:?}");
    }
    assert_eq!(report.summary.verdict, "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_one_error() {
    let url = fakes::closed_port_url();
    let outcome = run(Role::Storage, &url, Options::default()).await;
    match outcome {
        Err(ConformanceError::Unreachable { url: at, .. }) => assert_eq!(at, url),
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_run_is_reported_once() {
    let url = fakes::crashing_storage().await;
    let report = run(Role::Storage, &url, profile(Profile::Full))
        .await
        .expect("run");
    assert_eq!(failed(&report), ["storage-put"], "{}", report.table());
    let reason = report.aborted.clone().expect("the run is aborted");
    assert!(reason.contains("storage-put"), "{reason}");
    assert!(reason.contains("stopped accepting connections"), "{reason}");
    assert!(!report.not_run.is_empty(), "{}", report.table());
    assert_eq!(report.summary.verdict, "aborted");
    assert!(!report.passed());
    assert!(
        report
            .results
            .iter()
            .all(|r| r.status != Status::Skip || r.check != "storage-put")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_like_distributor_passes_core_and_fails_only_extensions_under_full() {
    let url = fakes::core_distributor().await;
    let core = run(Role::Distributor, &url, profile(Profile::Core))
        .await
        .expect("run");
    assert!(core.passed(), "{}", core.table());
    let full = run(Role::Distributor, &url, profile(Profile::Full))
        .await
        .expect("run");
    let mut failures = failed(&full);
    failures.sort_unstable();
    assert_eq!(
        failures,
        [
            "distributor-blocks",
            "distributor-body-malformed",
            "distributor-unpin-below-zero",
        ],
        "{}",
        full.table()
    );
    assert!(
        full.failures().all(|r| r.profile == Profile::Full),
        "{}",
        full.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_answer_for_an_unknown_files_node_is_a_warning() {
    let url = fakes::reference_like_files().await;
    let report = run(Role::Files, &url, profile(Profile::Core))
        .await
        .expect("run");
    assert!(report.passed(), "{}", report.table());
    for check in ["files-unknown-node", "files-unknown-node-changes"] {
        let result = report
            .results
            .iter()
            .find(|r| r.check == check)
            .expect("the check ran");
        assert_eq!(result.status, Status::Warn, "{}", report.table());
        assert!(result.detail.contains("400"), "{result:?}");
    }
}
