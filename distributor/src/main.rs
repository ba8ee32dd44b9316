//! `distributor`: the distributor role as a process. See the crate docs and README.

use std::time::Duration;

use clap::Parser;
use distributor::DistributorConfig;
use invariant_runtime::{CommonArgs, Role, run_main};

/// Keeps pinned blocks on the N nearest storage servers of the invariant network.
#[derive(Parser, Debug)]
#[command(name = "distributor", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Copies each pinned block should have.
    #[arg(long, env = "INVARIANT_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    replicas: u16,

    /// Blocks repaired (copied) at once.
    #[arg(long, env = "INVARIANT_PARALLELISM", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    parallelism: u16,

    /// Distribute only onto explicitly registered storage servers, not onto every
    /// storage server the broker lists.
    #[arg(long, env = "INVARIANT_NO_BROKER_STORAGES")]
    no_broker_storages: bool,

    /// Seconds between health checks of the storage servers (±20%).
    #[arg(long, env = "INVARIANT_HEALTH_INTERVAL", default_value = "10", value_parser = seconds)]
    health_interval: Duration,

    /// Seconds between full placement passes (±20%).
    #[arg(long, env = "INVARIANT_REPAIR_INTERVAL", default_value = "300", value_parser = seconds)]
    repair_interval: Duration,

    /// Seconds a block stays on the storage servers after its last unpin before it is
    /// collected.
    #[arg(long, env = "INVARIANT_GC_GRACE", default_value = "86400", value_parser = seconds)]
    gc_grace: Duration,

    /// Also collect blocks that were never pinned, this many seconds after a storage
    /// listing first showed them (off unless given: a client may write blocks and pin
    /// them later).
    #[arg(long, env = "INVARIANT_GC_UNPINNED_AFTER", value_parser = seconds)]
    gc_unpinned_after: Option<Duration>,

    /// Seconds between automatic garbage-collection sweeps (±10%); 0 sweeps only on
    /// request (`POST /distributor/gc`).
    #[arg(long, env = "INVARIANT_GC_INTERVAL", default_value = "3600", value_parser = seconds_or_zero)]
    gc_interval: Duration,

    /// Also copy every pinned block to this storage server (a backup outside the
    /// placement: repairs and collection leave it alone). Progress is in the status.
    #[arg(long, env = "INVARIANT_BACKUP_STORAGE", value_name = "URL")]
    backup_storage: Option<String>,

    /// Most megabytes (10^6 bytes) copied to the backup per hour; unlimited when
    /// absent.
    #[arg(long, env = "INVARIANT_BACKUP_MB_PER_HOUR", requires = "backup_storage", value_parser = clap::value_parser!(u64).range(1..))]
    backup_mb_per_hour: Option<u64>,
}

fn seconds_or_zero(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    seconds(text)
}

fn seconds(text: &str) -> Result<Duration, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text} is not a positive number of seconds"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = DistributorConfig {
        replicas: usize::from(cli.replicas),
        parallelism: usize::from(cli.parallelism),
        broker_storages: !cli.no_broker_storages,
        health_interval: cli.health_interval,
        repair_interval: cli.repair_interval,
        gc_grace: cli.gc_grace,
        gc_unpinned_after: cli.gc_unpinned_after,
        gc_interval: (!cli.gc_interval.is_zero()).then_some(cli.gc_interval),
        backup: cli.backup_storage.map(|url| distributor::BackupConfig {
            url,
            bytes_per_hour: cli
                .backup_mb_per_hour
                .map(|mb| mb.saturating_mul(1_000_000)),
        }),
        ..DistributorConfig::default()
    };
    run_main(Role::Distributor, &cli.common, |ctx| async move {
        Ok(distributor::start(&ctx, config).await?)
    })
}
