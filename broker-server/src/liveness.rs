//! Background liveness checks: registered servers that stop answering are dropped.
//!
//! Every round (one per [`LivenessConfig::interval`], each wait moved by a uniformly
//! random amount within ±[`LivenessConfig::jitter`] so that brokers do not probe in
//! step) the checker reads every registration and asks each server's urls, in order,
//! for `GET /id/`. A check succeeds when one url answers with the registered id within
//! [`LivenessConfig::check_timeout`]. At most [`LivenessConfig::max_concurrent_checks`]
//! checks run at once. A success resets the server's count of consecutive failures;
//! at [`LivenessConfig::failure_threshold`] failures the registration is removed —
//! unless the server re-registered meanwhile (new urls or kind start a fresh count).
//! Counts live in memory: a restarted broker starts them at zero. The checker stops
//! when the server's shutdown token is cancelled.
//!
//! Checks go through a [`PeerClient`]: only `http`/`https` urls, no redirects followed
//! (a 3xx is a failed check), only addresses `--peer-allow` permits (a host name is
//! resolved and every address it resolves to must be allowed before anything is
//! connected to), with the broker's own CAs and token. A url that may not be contacted
//! counts as not answering, so such a registration is dropped like a dead one. In
//! auth mode a record without an owner (written in open mode or by an older broker,
//! so by nobody known to hold `broker:register`) is never contacted either: it is
//! dropped unless its server registers again with a token, which claims it.
//!
//! Metrics: `broker_liveness_checks_total{outcome="alive"|"failed"}` (checks made),
//! `broker_servers_dropped_total` (registrations removed), `broker_registered_servers`
//! (gauge: registrations at the start of the last round).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use invariant_runtime::peers::PeerClient;
use invariant_spec::Id;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::record::Record;
use crate::store::{RegistrationStore, StoreError};

/// Default [`LivenessConfig::interval`]: 10 s.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// Default [`LivenessConfig::jitter`]: 2 s.
pub const DEFAULT_JITTER_MS: u64 = 2_000;
/// Default [`LivenessConfig::failure_threshold`]: 3.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
/// Default [`LivenessConfig::check_timeout`]: 5 s.
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 5_000;
/// Default [`LivenessConfig::max_concurrent_checks`]: 16.
pub const DEFAULT_MAX_CONCURRENT_CHECKS: usize = 16;

/// How the broker checks registered servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Mean time between check rounds. Default 10 s.
    pub interval: Duration,
    /// Each wait is `interval` plus a uniformly random offset in `[-jitter, +jitter]`
    /// (never below 1 ms). Default 2 s.
    pub jitter: Duration,
    /// Consecutive failed checks after which a server is dropped (at least 1). Default 3.
    pub failure_threshold: u32,
    /// Limit on each `GET /id/` request, connecting included. Default 5 s.
    pub check_timeout: Duration,
    /// Most checks in flight at once (at least 1). Default 16.
    pub max_concurrent_checks: usize,
}

impl Default for LivenessConfig {
    fn default() -> LivenessConfig {
        LivenessConfig {
            interval: Duration::from_millis(DEFAULT_INTERVAL_MS),
            jitter: Duration::from_millis(DEFAULT_JITTER_MS),
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            check_timeout: Duration::from_millis(DEFAULT_CHECK_TIMEOUT_MS),
            max_concurrent_checks: DEFAULT_MAX_CONCURRENT_CHECKS,
        }
    }
}

/// Why a [`LivenessConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidLivenessConfig {
    /// `interval` is zero.
    #[error("the check interval must be above zero")]
    ZeroInterval,
    /// `check_timeout` is zero.
    #[error("the check timeout must be above zero")]
    ZeroTimeout,
    /// `failure_threshold` is zero.
    #[error("the failure threshold must be at least 1")]
    ZeroThreshold,
    /// `max_concurrent_checks` is zero.
    #[error("at least one check must be allowed at a time")]
    ZeroConcurrency,
}

impl LivenessConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), InvalidLivenessConfig> {
        if self.interval.is_zero() {
            return Err(InvalidLivenessConfig::ZeroInterval);
        }
        if self.check_timeout.is_zero() {
            return Err(InvalidLivenessConfig::ZeroTimeout);
        }
        if self.failure_threshold == 0 {
            return Err(InvalidLivenessConfig::ZeroThreshold);
        }
        if self.max_concurrent_checks == 0 {
            return Err(InvalidLivenessConfig::ZeroConcurrency);
        }
        Ok(())
    }

    /// The wait before the next round: `interval ± jitter`, at least 1 ms.
    pub fn next_wait(&self, rng: &mut impl Rng) -> Duration {
        let jitter = self.jitter.as_millis() as u64;
        let interval = self.interval.as_millis() as u64;
        let offset = rng.random_range(0..=jitter.saturating_mul(2));
        let wait = interval.saturating_add(offset).saturating_sub(jitter);
        Duration::from_millis(wait.max(1))
    }
}

/// Consecutive failures per server, across rounds.
#[derive(Debug, Default)]
pub struct FailureTracker {
    failures: HashMap<Id, (Record, u32)>,
}

/// The outcome of checking one server in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The server checked.
    pub id: Id,
    /// Its registration when the round started.
    pub record: Record,
    /// Whether one of its urls answered with its id.
    pub alive: bool,
}

impl FailureTracker {
    /// Records one round's results (which cover every registered server) and returns the
    /// servers that reached `threshold` consecutive failures. Servers absent from
    /// `results` are forgotten.
    pub fn record_round(&mut self, results: &[CheckResult], threshold: u32) -> Vec<(Id, Record)> {
        let mut next: HashMap<Id, (Record, u32)> = HashMap::new();
        let mut dead = Vec::new();
        for result in results {
            if result.alive {
                continue;
            }
            let count = match self.failures.get(&result.id) {
                Some((record, count)) if *record == result.record => count + 1,
                _ => 1,
            };
            if count >= threshold {
                dead.push((result.id, result.record.clone()));
            } else {
                next.insert(result.id, (result.record.clone(), count));
            }
        }
        self.failures = next;
        dead
    }

    /// Consecutive failures counted for `id`.
    pub fn failures(&self, id: &Id) -> u32 {
        self.failures.get(id).map_or(0, |(_, count)| *count)
    }
}

/// What a check may contact.
#[derive(Clone, Debug)]
pub struct Checker {
    /// The client for registered urls.
    pub peers: PeerClient,
    /// Contact only records with an owner (auth mode).
    pub require_owner: bool,
}

/// Runs check rounds until `shutdown` is cancelled.
pub async fn run(
    store: RegistrationStore,
    config: LivenessConfig,
    checker: Checker,
    shutdown: CancellationToken,
) {
    let mut rng = StdRng::from_os_rng();
    let mut tracker = FailureTracker::default();
    loop {
        let wait = config.next_wait(&mut rng);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            outcome = round(&store, &config, &checker, &mut tracker) => {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "liveness round failed");
                }
            }
        }
    }
    tracing::debug!("liveness checker stopped");
}

/// One round: check every registration, drop the servers found dead.
async fn round(
    store: &RegistrationStore,
    config: &LivenessConfig,
    checker: &Checker,
    tracker: &mut FailureTracker,
) -> Result<(), StoreError> {
    let snapshot = store.blocking(|s| s.all()).await?;
    metrics::gauge!("broker_registered_servers").set(snapshot.len() as f64);
    let results: Vec<CheckResult> = futures_util::stream::iter(snapshot)
        .map(|(id, record)| async move {
            let alive = check(checker, config.check_timeout, &id, &record).await;
            let outcome = if alive { "alive" } else { "failed" };
            metrics::counter!("broker_liveness_checks_total", "outcome" => outcome).increment(1);
            CheckResult { id, record, alive }
        })
        .buffer_unordered(config.max_concurrent_checks)
        .collect()
        .await;
    for result in results.iter().filter(|r| !r.alive) {
        tracing::debug!(
            id = %result.id,
            failures = tracker.failures(&result.id) + 1,
            "server failed its liveness check"
        );
    }
    for (id, record) in tracker.record_round(&results, config.failure_threshold) {
        let expected = record.clone();
        let removed = store
            .blocking(move |s| s.remove_if_unchanged(&id, &expected))
            .await?;
        if removed {
            metrics::counter!("broker_servers_dropped_total").increment(1);
            tracing::info!(
                %id,
                kind = record.kind,
                urls = ?record.urls,
                failures = config.failure_threshold,
                "dropped a server that stopped answering"
            );
        }
    }
    Ok(())
}

/// Whether one of the record's urls answers `GET /id/` with `id` in time.
async fn check(checker: &Checker, timeout: Duration, id: &Id, record: &Record) -> bool {
    if checker.require_owner && record.owner.is_none() {
        tracing::debug!(%id, "registration has no owner; not contacted in auth mode");
        return false;
    }
    for url in &record.urls {
        let endpoint = match checker.peers.endpoint(url) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                tracing::debug!(%id, url, error = %e, "url not contacted");
                continue;
            }
        };
        match tokio::time::timeout(timeout, endpoint.server_id()).await {
            Ok(Ok(answered)) if answered == *id => return true,
            Ok(Ok(answered)) => {
                tracing::debug!(%id, url, %answered, "url answers with another id");
            }
            Ok(Err(e)) => tracing::debug!(%id, url, error = %e, "url does not answer"),
            Err(_) => tracing::debug!(%id, url, "url timed out"),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(url: &str) -> Record {
        Record {
            kind: "storage".to_string(),
            urls: vec![url.to_string()],
            owner: None,
        }
    }

    fn result(id: Id, url: &str, alive: bool) -> CheckResult {
        CheckResult {
            id,
            record: record(url),
            alive,
        }
    }

    #[test]
    fn dropped_only_after_threshold_consecutive_failures() {
        let a = Id::of_content(b"a");
        let b = Id::of_content(b"b");
        let mut tracker = FailureTracker::default();
        let round = [result(a, "http://a", false), result(b, "http://b", true)];
        assert!(tracker.record_round(&round, 3).is_empty());
        assert!(tracker.record_round(&round, 3).is_empty());
        assert_eq!(tracker.failures(&a), 2);
        assert_eq!(tracker.failures(&b), 0);
        assert_eq!(
            tracker.record_round(&round, 3),
            vec![(a, record("http://a"))]
        );
        assert_eq!(tracker.failures(&a), 0);
    }

    #[test]
    fn success_resets_the_count() {
        let a = Id::of_content(b"a");
        let mut tracker = FailureTracker::default();
        let fail = [result(a, "http://a", false)];
        let ok = [result(a, "http://a", true)];
        assert!(tracker.record_round(&fail, 3).is_empty());
        assert!(tracker.record_round(&fail, 3).is_empty());
        assert!(tracker.record_round(&ok, 3).is_empty());
        assert_eq!(tracker.failures(&a), 0);
        assert!(tracker.record_round(&fail, 3).is_empty());
        assert!(tracker.record_round(&fail, 3).is_empty());
        assert_eq!(tracker.record_round(&fail, 3).len(), 1);
    }

    #[test]
    fn re_registration_and_disappearance_restart_the_count() {
        let a = Id::of_content(b"a");
        let mut tracker = FailureTracker::default();
        assert!(
            tracker
                .record_round(&[result(a, "http://old", false)], 2)
                .is_empty()
        );
        // New urls: a fresh count, not the second failure of the old registration.
        assert!(
            tracker
                .record_round(&[result(a, "http://new", false)], 2)
                .is_empty()
        );
        assert_eq!(tracker.failures(&a), 1);
        // Gone from the registrations: forgotten.
        assert!(tracker.record_round(&[], 2).is_empty());
        assert_eq!(tracker.failures(&a), 0);
    }

    #[test]
    fn threshold_one_drops_at_first_failure() {
        let a = Id::of_content(b"a");
        let mut tracker = FailureTracker::default();
        assert_eq!(
            tracker
                .record_round(&[result(a, "http://a", false)], 1)
                .len(),
            1
        );
    }

    #[test]
    fn waits_stay_within_the_jitter() {
        let config = LivenessConfig {
            interval: Duration::from_millis(1000),
            jitter: Duration::from_millis(200),
            ..LivenessConfig::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let waits: Vec<Duration> = (0..200).map(|_| config.next_wait(&mut rng)).collect();
        assert!(waits.iter().all(|w| (800..=1200).contains(&w.as_millis())));
        // Jitter actually varies the wait.
        assert!(waits.iter().any(|w| w.as_millis() < 950));
        assert!(waits.iter().any(|w| w.as_millis() > 1050));

        let no_jitter = LivenessConfig {
            jitter: Duration::ZERO,
            ..config.clone()
        };
        assert_eq!(no_jitter.next_wait(&mut rng), Duration::from_millis(1000));
        let huge_jitter = LivenessConfig {
            interval: Duration::from_millis(10),
            jitter: Duration::from_secs(60),
            ..config
        };
        assert!((0..100).all(|_| huge_jitter.next_wait(&mut rng) >= Duration::from_millis(1)));
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(LivenessConfig::default().validate(), Ok(()));
        let bad = [
            (
                LivenessConfig {
                    interval: Duration::ZERO,
                    ..LivenessConfig::default()
                },
                InvalidLivenessConfig::ZeroInterval,
            ),
            (
                LivenessConfig {
                    check_timeout: Duration::ZERO,
                    ..LivenessConfig::default()
                },
                InvalidLivenessConfig::ZeroTimeout,
            ),
            (
                LivenessConfig {
                    failure_threshold: 0,
                    ..LivenessConfig::default()
                },
                InvalidLivenessConfig::ZeroThreshold,
            ),
            (
                LivenessConfig {
                    max_concurrent_checks: 0,
                    ..LivenessConfig::default()
                },
                InvalidLivenessConfig::ZeroConcurrency,
            ),
        ];
        for (config, expected) in bad {
            assert_eq!(config.validate(), Err(expected));
        }
    }
}
