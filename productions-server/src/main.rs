//! `productions-server`: the productions role as a process. See the crate docs.

use clap::Parser;
use invariant_runtime::{CommonArgs, Role, run_main};

/// Records which output a task produced from an input, for the invariant network.
#[derive(Parser, Debug)]
#[command(name = "productions-server", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    run_main(Role::Productions, &cli.common, |ctx| async move {
        Ok(productions_server::start(&ctx).await?)
    })
}
