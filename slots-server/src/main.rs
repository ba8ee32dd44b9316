//! `slots-server`: the slots role as a process. See the crate docs and README.

use clap::Parser;
use invariant_runtime::{CommonArgs, Role, run_main};
use slots_server::{DEFAULT_MAX_BATCH, DEFAULT_WATCH_BUFFER, SlotsConfig};

/// Mutable, optionally signed pointers to content for the invariant network.
#[derive(Parser, Debug)]
#[command(name = "slots-server", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Largest number of changes committed in one transaction (group commit).
    #[arg(long, env = "INVARIANT_SLOTS_MAX_BATCH", default_value_t = DEFAULT_MAX_BATCH)]
    max_batch: usize,

    /// States buffered per watched slot; a slower watcher is served from the database.
    #[arg(long, env = "INVARIANT_SLOTS_WATCH_BUFFER", default_value_t = DEFAULT_WATCH_BUFFER)]
    watch_buffer: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = SlotsConfig {
        max_batch: cli.max_batch,
        watch_buffer: cli.watch_buffer,
    };
    run_main(Role::Slots, &cli.common, |ctx| async move {
        slots_server::start(&ctx, config).await
    })
}
