//! Self-registration with a broker.
//!
//! With `--broker`, a server posts `{id, urls: [its url], kind}` to the broker's
//! `POST /broker/register/` as soon as it is listening, then again every
//! `--register-interval` seconds (±10% jitter) so a restarted broker, or one that
//! dropped the server after missed liveness checks, learns of it again. A failed
//! attempt is retried after a backoff (1 s doubling to the interval). The task ends
//! with the server's shutdown signal.

use std::time::Duration;

use invariant_spec::BrokerClient;
use invariant_spec::broker::Registration;
use tokio_util::sync::CancellationToken;

/// Registers `registration` with `broker` now and periodically until `shutdown`.
pub async fn run(
    broker: BrokerClient,
    registration: Registration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    {
        let mut backoff = Duration::from_secs(1).min(interval);
        let mut healthy: Option<bool> = None;
        loop {
            let wait = match broker.register(&registration).await {
                Ok(answer) => {
                    if healthy != Some(true) {
                        tracing::info!(
                            broker = broker.endpoint().base_url(),
                            broker_id = %answer.id,
                            "registered with broker"
                        );
                    }
                    healthy = Some(true);
                    backoff = Duration::from_secs(1).min(interval);
                    jittered(interval)
                }
                Err(e) => {
                    if healthy != Some(false) {
                        tracing::warn!(
                            broker = broker.endpoint().base_url(),
                            error = %e,
                            "broker registration failed; retrying"
                        );
                    }
                    healthy = Some(false);
                    let wait = backoff;
                    backoff = (backoff * 2).min(interval);
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// `base` ± 10%.
fn jittered(base: Duration) -> Duration {
    let factor = 0.9 + rand::random::<f64>() * 0.2;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }
}
