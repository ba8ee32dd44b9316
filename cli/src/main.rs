//! `invariant`: start a local network and use it from the shell.
//!
//! - `up`: start every role locally ([`up`]).
//! - `status`: what the broker knows, and whether each server answers.
//! - `put` / `get` / `cat`: blobs on the network's storage servers.
//!
//! Every command except `up` finds the network through `--broker` (or
//! `INVARIANT_BROKER`), defaulting to the broker url `up` uses by default.

mod config;
mod up;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use invariant_spec::broker::KINDS;
use invariant_spec::{BrokerClient, Id, StorageClient};

/// The invariant storage network from the command line.
#[derive(Parser, Debug)]
#[command(name = "invariant", version, about)]
struct Cli {
    /// Broker url of the network to use.
    #[arg(
        long,
        global = true,
        env = "INVARIANT_BROKER",
        default_value = "http://127.0.0.1:3000"
    )]
    broker: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the whole local network (broker, find, storage ×3, slots, names,
    /// productions, files, distributor); Ctrl-C stops it.
    Up {
        /// Folder for every server's data; reused on the next `up`.
        #[arg(long, default_value = "invariant-data")]
        data_dir: PathBuf,
        /// TOML file with counts and ports (see the `config` module docs).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Folder holding the server binaries (default: beside `invariant`).
        #[arg(long, env = "INVARIANT_BIN_DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Every server registered with the broker, with its id, url and health.
    Status,
    /// Store a file (or stdin with `-`) and print its address.
    Put {
        /// File to store, `-` for stdin.
        path: PathBuf,
    },
    /// Fetch a blob into a file (verified against its address).
    Get {
        /// The blob's address.
        address: Id,
        /// Where to write it.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Write a blob to stdout (verified against its address).
    Cat {
        /// The blob's address.
        address: Id,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            data_dir,
            config,
            bin_dir,
        } => {
            let config = config::NetworkConfig::load(config.as_deref())?;
            let bin_dir = match bin_dir {
                Some(dir) => dir,
                None => up::default_bin_dir()?,
            };
            up::up(&config, &data_dir, &bin_dir).await
        }
        Command::Status => status(&broker(&cli.broker)?).await,
        Command::Put { path } => {
            let data = if path.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
            };
            let storage = any_storage(&broker(&cli.broker)?).await?;
            let id = storage.post(Bytes::from(data)).await?;
            println!("{id}");
            Ok(())
        }
        Command::Get { address, output } => {
            let mut file = std::fs::File::create(&output)
                .with_context(|| format!("creating {}", output.display()))?;
            let result = copy_blob(&broker(&cli.broker)?, &address, &mut file).await;
            if result.is_err() {
                let _ = std::fs::remove_file(&output);
            }
            result
        }
        Command::Cat { address } => {
            let mut stdout = std::io::stdout().lock();
            copy_blob(&broker(&cli.broker)?, &address, &mut stdout).await
        }
    }
}

fn broker(url: &str) -> anyhow::Result<BrokerClient> {
    BrokerClient::new(url).with_context(|| format!("broker url {url}"))
}

async fn status(broker: &BrokerClient) -> anyhow::Result<()> {
    let broker_id = broker
        .endpoint()
        .server_id()
        .await
        .with_context(|| format!("no broker answers at {}", broker.endpoint().base_url()))?;
    println!(
        "{:<12} {broker_id} {}",
        "broker",
        broker.endpoint().base_url()
    );
    for kind in KINDS {
        let ids = broker.registered(kind).await?;
        for id in ids {
            match broker.resolve(&id).await? {
                Some(url) => println!("{kind:<12} {id} {url}"),
                None => println!("{kind:<12} {id} (not answering)"),
            }
        }
    }
    Ok(())
}

async fn storage_clients(broker: &BrokerClient) -> anyhow::Result<Vec<StorageClient>> {
    let mut clients = Vec::new();
    for id in broker.registered("storage").await? {
        if let Some(client) = broker.storage(&id).await? {
            clients.push(client);
        }
    }
    Ok(clients)
}

async fn any_storage(broker: &BrokerClient) -> anyhow::Result<StorageClient> {
    storage_clients(broker)
        .await?
        .into_iter()
        .next()
        .context("the broker knows no reachable storage server")
}

async fn copy_blob(
    broker: &BrokerClient,
    address: &Id,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for storage in storage_clients(broker).await? {
        let Some(mut stream) = storage.get(address).await? else {
            continue;
        };
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk?)?;
        }
        out.flush()?;
        return Ok(());
    }
    bail!("no reachable storage server holds {address}")
}
