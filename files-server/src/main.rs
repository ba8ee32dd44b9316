//! `files-server`: the files role as a process. See the crate docs and `spec/files.md`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use files_server::{DEFAULT_MAX_FILE_SIZE, DEFAULT_WRITE_COPIES, FilesConfig, SlotKeys};
use invariant_runtime::{CommonArgs, Role, run_main};

/// POSIX-like file trees over content links for the invariant network.
#[derive(Parser, Debug)]
#[command(name = "files-server", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Storage server url (repeatable). Default: the storage servers the broker knows.
    #[arg(long, env = "INVARIANT_FILES_STORAGE", value_delimiter = ',')]
    storage: Vec<String>,

    /// Slots server url. Default: the first slots server the broker knows.
    #[arg(long, env = "INVARIANT_FILES_SLOTS")]
    slots: Option<String>,

    /// Seconds between automatic syncs (0: only explicit syncs and one at shutdown).
    #[arg(long, env = "INVARIANT_FILES_SYNC_INTERVAL", default_value_t = 30)]
    sync_interval: u64,

    /// File of ed25519 seeds (64 hex characters per line) for ed25519 slots this
    /// server may update; such slots are mounted read-only without their key. Needs
    /// --auth-root-key: the server signs for any caller that may change its trees.
    #[arg(long, env = "INVARIANT_FILES_SLOT_KEY")]
    slot_key: Option<PathBuf>,

    /// Largest file in bytes; a write or size change past it is refused with 413.
    #[arg(long, env = "INVARIANT_FILES_MAX_FILE_SIZE", default_value_t = DEFAULT_MAX_FILE_SIZE)]
    max_file_size: u64,

    /// Storage servers each new block is written to.
    #[arg(long, env = "INVARIANT_FILES_WRITE_COPIES", default_value_t = DEFAULT_WRITE_COPIES)]
    write_copies: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let slot_keys = match &cli.slot_key {
        Some(path) => SlotKeys::read(path)?,
        None => SlotKeys::default(),
    };
    let config = FilesConfig {
        storage: cli.storage,
        slots: cli.slots,
        sync_interval: Duration::from_secs(cli.sync_interval),
        slot_keys,
        write_copies: cli.write_copies,
        max_file_size: cli.max_file_size,
        ..FilesConfig::default()
    };
    run_main(Role::Files, &cli.common, |ctx| async move {
        Ok(files_server::start(&ctx, config).await?)
    })
}
