//! `storage-server`: the storage role as a process. See the crate docs and README.

use clap::Parser;
use invariant_runtime::{CommonArgs, Role, run_main};
use storage_server::{DEFAULT_MAX_BLOB_SIZE, StorageConfig};

/// Content-addressed blob storage for the invariant network.
#[derive(Parser, Debug)]
#[command(name = "storage-server", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Largest blob accepted, in bytes (larger uploads get 413).
    #[arg(long, env = "INVARIANT_MAX_BLOB_SIZE", default_value_t = DEFAULT_MAX_BLOB_SIZE)]
    max_blob_size: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = StorageConfig {
        max_blob_size: cli.max_blob_size,
    };
    run_main(Role::Storage, &cli.common, |ctx| async move {
        storage_server::start(&ctx, config).await
    })
}
