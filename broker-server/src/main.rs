//! `broker-server`: the broker role as a process. See the crate docs and README.

use std::time::Duration;

use broker_server::liveness::{
    DEFAULT_CHECK_TIMEOUT_MS, DEFAULT_FAILURE_THRESHOLD, DEFAULT_INTERVAL_MS, DEFAULT_JITTER_MS,
    DEFAULT_MAX_CONCURRENT_CHECKS,
};
use broker_server::{BrokerConfig, LivenessConfig};
use clap::Parser;
use invariant_runtime::{CommonArgs, Role, run_main};

/// Server id → urls for the invariant network, with liveness checks.
#[derive(Parser, Debug)]
#[command(name = "broker-server", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Mean milliseconds between liveness rounds.
    #[arg(long, env = "INVARIANT_CHECK_INTERVAL_MS", default_value_t = DEFAULT_INTERVAL_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    check_interval_ms: u64,

    /// Each wait between rounds moves by a random amount within ± this many milliseconds.
    #[arg(long, env = "INVARIANT_CHECK_JITTER_MS", default_value_t = DEFAULT_JITTER_MS)]
    check_jitter_ms: u64,

    /// Consecutive failed checks after which a server is dropped.
    #[arg(long, env = "INVARIANT_CHECK_FAILURES", default_value_t = DEFAULT_FAILURE_THRESHOLD,
          value_parser = clap::value_parser!(u32).range(1..))]
    check_failures: u32,

    /// Milliseconds allowed for each `GET /id/` check.
    #[arg(long, env = "INVARIANT_CHECK_TIMEOUT_MS", default_value_t = DEFAULT_CHECK_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    check_timeout_ms: u64,

    /// Most liveness checks in flight at once.
    #[arg(long, env = "INVARIANT_CHECK_CONCURRENCY", default_value_t = DEFAULT_MAX_CONCURRENT_CHECKS,
          value_parser = parse_positive)]
    check_concurrency: usize,
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = BrokerConfig {
        liveness: LivenessConfig {
            interval: Duration::from_millis(cli.check_interval_ms),
            jitter: Duration::from_millis(cli.check_jitter_ms),
            failure_threshold: cli.check_failures,
            check_timeout: Duration::from_millis(cli.check_timeout_ms),
            max_concurrent_checks: cli.check_concurrency,
        },
    };
    run_main(Role::Broker, &cli.common, |ctx| async move {
        Ok(broker_server::start(&ctx, config).await?)
    })
}
