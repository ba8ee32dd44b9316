//! `storage-server`: the storage role as a process. See the crate docs and README.

use clap::Parser;
use invariant_runtime::{CommonArgs, Role, run_main};
use storage_server::pack::{CompactionConfig, PackConfig};
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

    /// Serve deletes without token checks (open mode only; with --auth-root-key
    /// deletes need a storage:delete token). Without it an open-mode server refuses
    /// deletes with 403.
    #[arg(long, env = "INVARIANT_ALLOW_OPEN_DELETE")]
    allow_open_delete: bool,

    /// Packs whose live bytes fall under this fraction are rewritten without their
    /// deleted records (0 turns compaction off).
    #[arg(long, env = "INVARIANT_COMPACTION_THRESHOLD", default_value_t = storage_server::pack::DEFAULT_COMPACTION_THRESHOLD)]
    compaction_threshold: f64,

    /// Most MB (10^6 bytes) per second compaction reads (0: unlimited).
    #[arg(long, env = "INVARIANT_COMPACTION_MB_PER_S", default_value_t = 64)]
    compaction_mb_per_s: u64,

    /// Seconds between looks for packs to compact (0: never).
    #[arg(long, env = "INVARIANT_COMPACTION_INTERVAL", default_value_t = storage_server::pack::DEFAULT_COMPACTION_INTERVAL.as_secs())]
    compaction_interval: u64,

    /// Seconds between full reports of held blobs to find servers.
    #[arg(long, env = "INVARIANT_FIND_REFRESH", default_value_t = storage_server::report::DEFAULT_FIND_REFRESH.as_secs())]
    find_refresh: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !(0.0..=1.0).contains(&cli.compaction_threshold) {
        anyhow::bail!(
            "--compaction-threshold must be between 0 and 1, not {}",
            cli.compaction_threshold
        );
    }
    let config = StorageConfig {
        max_blob_size: cli.max_blob_size,
        find: cli.find,
        find_refresh: std::time::Duration::from_secs(cli.find_refresh.max(1)),
        pack: PackConfig {
            max_blob: cli.pack_max_blob,
            compaction: CompactionConfig {
                threshold: cli.compaction_threshold,
                bytes_per_s: cli.compaction_mb_per_s.saturating_mul(1_000_000),
                interval: std::time::Duration::from_secs(cli.compaction_interval),
            },
            ..PackConfig::default()
        },
        allow_open_delete: cli.allow_open_delete,
    };
    run_main(Role::Storage, &cli.common, |ctx| async move {
        storage_server::start(&ctx, config).await
    })
}
