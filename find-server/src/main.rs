//! `find-server`: the find role as a process. See the crate docs and README.

use std::time::Duration;

use clap::Parser;
use find_server::FindConfig;
use invariant_runtime::{CommonArgs, Role, run_main};

/// Which storage servers hold a block, for the invariant network.
#[derive(Parser, Debug)]
#[command(name = "find-server", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Seconds a has-record lives without being re-reported or verified.
    #[arg(long, env = "INVARIANT_FIND_RECORD_TTL", default_value_t = find_server::DEFAULT_RECORD_TTL.as_secs())]
    record_ttl: u64,

    /// Seconds between aging passes (expiry and container checks).
    #[arg(long, env = "INVARIANT_FIND_CHECK_INTERVAL", default_value_t = find_server::DEFAULT_CHECK_INTERVAL.as_secs())]
    check_interval: u64,

    /// Records per container checked with HEAD in each pass.
    #[arg(long, env = "INVARIANT_FIND_CHECK_SAMPLE", default_value_t = find_server::DEFAULT_CHECK_SAMPLE)]
    check_sample: usize,

    /// Failed checks in a row before a container's records are dropped.
    #[arg(long, env = "INVARIANT_FIND_CHECK_FAILURES", default_value_t = find_server::DEFAULT_CHECK_FAILURES)]
    check_failures: u32,

    /// Seconds between asking the broker for find servers.
    #[arg(long, env = "INVARIANT_FIND_PEER_REFRESH", default_value_t = find_server::DEFAULT_PEER_REFRESH.as_secs())]
    peer_refresh: u64,

    /// Find servers nearer to a block that each record is forwarded to.
    #[arg(long, env = "INVARIANT_FIND_FORWARD_FANOUT", default_value_t = find_server::DEFAULT_FORWARD_FANOUT)]
    forward_fanout: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = FindConfig {
        record_ttl: Duration::from_secs(cli.record_ttl.max(1)),
        check_interval: Duration::from_secs(cli.check_interval.max(1)),
        check_sample: cli.check_sample,
        check_failures: cli.check_failures,
        peer_refresh: Duration::from_secs(cli.peer_refresh.max(1)),
        forward_fanout: cli.forward_fanout,
        ..FindConfig::default()
    };
    run_main(Role::Find, &cli.common, |ctx| async move {
        Ok(find_server::start(&ctx, config).await?)
    })
}
