//! `names-server`: the names role as a process. See the crate docs.

use std::net::SocketAddr;

use clap::Parser;
use invariant_runtime::{CommonArgs, Role, run_main};
use names_server::{DEFAULT_TTL, NamesConfig};

/// Names → content addresses and slots for the invariant network.
#[derive(Parser, Debug)]
#[command(name = "names-server", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Nameserver (`ip:port`, UDP and TCP) used to resolve names this server does not
    /// hold from `invariant-slot=` / `invariant-data=` TXT records. Without it, only
    /// registered names resolve.
    #[arg(long, env = "INVARIANT_DNS")]
    dns: Option<SocketAddr>,

    /// Ttl in seconds given to names registered without one.
    #[arg(long, env = "INVARIANT_DEFAULT_TTL", default_value_t = DEFAULT_TTL)]
    default_ttl: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = NamesConfig {
        dns: cli.dns,
        default_ttl: cli.default_ttl,
        ..NamesConfig::default()
    };
    run_main(Role::Names, &cli.common, |ctx| async move {
        Ok(names_server::start(&ctx, config).await?)
    })
}
