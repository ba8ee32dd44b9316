//! The suite against a fake server of each role that implements only that role's
//! `core` profile (slots, broker, find, names, productions), and against a variant of
//! each with one deliberate defect, on 127.0.0.1: the core fake passes `core` with no
//! failure and fails exactly the role's extension checks under `full`; each defect
//! fails exactly the checks that rest on the broken rule.

mod fakes;

use invariant_conformance::{Options, Profile, Report, Role, Status, reserve_suite_broker, run};

/// Runs the checks of `role` in `profile` against `url`, with the suite broker bound
/// to `suite_broker` when one is given.
async fn measure(
    role: Role,
    url: &str,
    profile: Profile,
    suite_broker: Option<std::net::TcpListener>,
) -> Report {
    let options = Options {
        profile: Some(profile),
        suite_broker,
        ..Options::default()
    };
    run(role, url, options).await.expect("the run starts")
}

/// The ids of the checks that ended with `status`, sorted.
fn with_status(report: &Report, status: Status) -> Vec<&str> {
    let mut ids: Vec<&str> = report
        .results
        .iter()
        .filter(|r| r.status == status)
        .map(|r| r.check.as_str())
        .collect();
    ids.sort_unstable();
    ids
}

/// The core run passes with no failure and holds the server to core checks only.
fn assert_passes_core(report: &Report) {
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.summary.fail, 0, "{}", report.table());
    assert!(report.aborted.is_none(), "{}", report.table());
    assert!(
        report.results.iter().all(|r| r.profile == Profile::Core),
        "{}",
        report.table()
    );
}

/// The full run fails exactly `extensions`, each of them a `full` check citing an
/// anchor, and warns about exactly what the core run warned about.
fn assert_fails_only(full: &Report, core: &Report, extensions: &[&str]) {
    assert_eq!(
        with_status(full, Status::Fail),
        extensions,
        "{}",
        full.table()
    );
    for r in full.failures() {
        assert_eq!(r.profile, Profile::Full, "{r:?}");
        assert!(r.anchor.contains(".md#"), "{r:?}");
    }
    assert_eq!(
        with_status(full, Status::Warn),
        with_status(core, Status::Warn),
        "{}",
        full.table()
    );
    assert_eq!(full.summary.verdict, "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_only_slots_server_passes_core_and_fails_only_extensions_under_full() {
    let url = fakes::slots::core().await;
    let core = measure(Role::Slots, &url, Profile::Core, None).await;
    assert_passes_core(&core);
    // Its only warning: the configuration route is an extension, so a malformed id
    // there meets no route (404).
    assert_eq!(with_status(&core, Status::Warn), ["slots-malformed-id"]);
    let full = measure(Role::Slots, &url, Profile::Full, None).await;
    assert_fails_only(
        &full,
        &core,
        &["slots-config", "slots-ed25519", "slots-id-case"],
    );
    // A core server refuses an ed25519 registration for its unknown kind: the check
    // that such a registration with a bad key is 400 passes.
    assert!(
        with_status(&full, Status::Pass).contains(&"slots-ed25519-not-a-key"),
        "{}",
        full.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slots_server_without_compare_and_swap_fails_exactly_the_cas_checks() {
    let url = fakes::slots::without_compare_and_swap().await;
    let report = measure(Role::Slots, &url, Profile::Core, None).await;
    assert_eq!(
        with_status(&report, Status::Fail),
        ["slots-cas-race", "slots-update-stale"],
        "{}",
        report.table()
    );
    let stale = report
        .failures()
        .find(|r| r.check == "slots-update-stale")
        .expect("slots-update-stale failed");
    assert!(stale.detail.contains("expected 409, got 200"), "{stale:?}");
    assert_eq!(report.summary.verdict, "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_only_broker_passes_core_and_fails_only_extensions_under_full() {
    let url = fakes::broker::core().await;
    let core = measure(Role::Broker, &url, Profile::Core, None).await;
    assert_passes_core(&core);
    assert_eq!(with_status(&core, Status::Warn), Vec::<&str>::new());
    let full = measure(Role::Broker, &url, Profile::Full, None).await;
    assert_fails_only(
        &full,
        &core,
        &[
            "broker-id-case",
            "broker-location-url-and-urls",
            "broker-register-kind-required",
            "broker-register-url",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_finds_unknown_ids_fails_exactly_the_checks_that_look_one_up() {
    let url = fakes::broker::finding_unknown_ids().await;
    let report = measure(Role::Broker, &url, Profile::Core, None).await;
    // The refused registrations are looked up afterwards: that check meets the defect
    // too.
    assert_eq!(
        with_status(&report, Status::Fail),
        ["broker-location-unknown", "broker-register-malformed"],
        "{}",
        report.table()
    );
    for r in report.failures() {
        assert!(r.detail.contains("expected 404, got 200"), "{r:?}");
    }
}

/// Runs the find checks against a fresh find fake that resolves peers through the
/// suite broker, so notify and forwarding are checked, not skipped.
async fn measure_find(profile: Profile, forgetting: bool) -> Report {
    let (listener, broker) = reserve_suite_broker().expect("a suite broker port");
    let url = if forgetting {
        fakes::find::forgetting_holders(&broker).await
    } else {
        fakes::find::core(&broker).await
    };
    measure(Role::Find, &url, profile, Some(listener)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_only_find_server_passes_core_and_fails_only_extensions_under_full() {
    let core = measure_find(Profile::Core, false).await;
    assert_passes_core(&core);
    assert_eq!(with_status(&core, Status::Warn), Vec::<&str>::new());
    assert_eq!(with_status(&core, Status::Skip), Vec::<&str>::new());
    let full = measure_find(Profile::Full, false).await;
    assert_fails_only(&full, &core, &["find-id-case"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_find_server_that_forgets_holders_fails_exactly_find_has() {
    let report = measure_find(Profile::Core, true).await;
    assert_eq!(
        with_status(&report, Status::Fail),
        ["find-has"],
        "{}",
        report.table()
    );
    assert!(
        report
            .failures()
            .all(|r| r.detail.contains("must list both")),
        "{}",
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_only_names_server_passes_core_and_full() {
    let url = fakes::names::core().await;
    let core = measure(Role::Names, &url, Profile::Core, None).await;
    assert_passes_core(&core);
    assert_eq!(with_status(&core, Status::Warn), Vec::<&str>::new());
    // Names has no extension checks: full holds a core server to the same rules.
    let full = measure(Role::Names, &url, Profile::Full, None).await;
    assert!(full.passed(), "{}", full.table());
    let ids = |r: &Report| {
        let mut ids: Vec<String> = r.results.iter().map(|c| c.check.clone()).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(ids(&full), ids(&core));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_names_server_failing_on_broken_json_fails_exactly_names_malformed() {
    let url = fakes::names::failing_on_broken_json().await;
    let report = measure(Role::Names, &url, Profile::Core, None).await;
    assert_eq!(
        with_status(&report, Status::Fail),
        ["names-malformed"],
        "{}",
        report.table()
    );
    let failure = report.failures().next().expect("one failure");
    assert!(failure.detail.contains("broken JSON"), "{failure:?}");
    assert!(failure.detail.contains("got 500"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_names_server_answering_updates_with_nothing_warns_as_documented() {
    let url = fakes::names::silent_updates().await;
    let report = measure(Role::Names, &url, Profile::Core, None).await;
    assert_passes_core(&report);
    assert_eq!(
        with_status(&report, Status::Warn),
        ["names-cas-race", "names-update", "names-update-stale"],
        "{}",
        report.table()
    );
    for warning in report.results.iter().filter(|r| r.status == Status::Warn) {
        assert!(warning.detail.contains("names-divergences"), "{warning:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_only_productions_server_passes_core_and_fails_only_extensions_under_full() {
    let url = fakes::productions::core().await;
    let core = measure(Role::Productions, &url, Profile::Core, None).await;
    assert_passes_core(&core);
    assert_eq!(with_status(&core, Status::Warn), Vec::<&str>::new());
    let full = measure(Role::Productions, &url, Profile::Full, None).await;
    assert_fails_only(&full, &core, &["productions-id-case"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_productions_server_losing_replacements_fails_exactly_productions_replace() {
    let url = fakes::productions::losing_replacements().await;
    let report = measure(Role::Productions, &url, Profile::Core, None).await;
    assert_eq!(
        with_status(&report, Status::Fail),
        ["productions-replace"],
        "{}",
        report.table()
    );
}
