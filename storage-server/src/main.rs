//! `storage-server`: the storage role as a process. See the crate docs and README.

use clap::Parser;
use invariant_runtime::{CommonArgs, Role, run_main};
use storage_server::pack::PackConfig;
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

    /// A find server (base url) to report held blobs to; repeat for more. Without it,
    /// blobs are reported to the find servers the broker knows.
    #[arg(long = "find", env = "INVARIANT_FIND", value_delimiter = ',')]
    find: Vec<String>,

    /// Blobs up to this many bytes uploaded whole are appended to group-committed
    /// pack files (one sync per batch of concurrent uploads); 0 writes every blob as
    /// its own file.
    #[arg(long, env = "INVARIANT_PACK_MAX_BLOB", default_value_t = PackConfig::default().max_blob)]
    pack_max_blob: usize,

    /// Seconds between full reports of held blobs to find servers.
    #[arg(long, env = "INVARIANT_FIND_REFRESH", default_value_t = storage_server::report::DEFAULT_FIND_REFRESH.as_secs())]
    find_refresh: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = StorageConfig {
        max_blob_size: cli.max_blob_size,
        find: cli.find,
        find_refresh: std::time::Duration::from_secs(cli.find_refresh.max(1)),
        pack: PackConfig {
            max_blob: cli.pack_max_blob,
            ..PackConfig::default()
        },
    };
    run_main(Role::Storage, &cli.common, |ctx| async move {
        storage_server::start(&ctx, config).await
    })
}
