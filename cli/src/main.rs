//! `invariant`: start a local network and use it from the shell.
//!
//! - `up`: start every role locally ([`up`]).
//! - `systemd`: systemd units for the network `up` would start ([`systemd`]).
//! - `status`: what the broker knows, and whether each server answers.
//! - `put` / `get` / `cat`: blobs on the network's storage servers.
//! - `slot create|get|set|history|watch`: slots, ed25519-signed (keys in [`keys`]) or
//!   unsigned (`slot create --unsigned`, for servers without ed25519 slots).
//! - `name register|lookup|update`: names.
//! - `upload` / `download`: file trees ([`trees`]).
//! - `mount`: a tree, slot or name as a local folder through FUSE ([`mount`]).
//! - `pin` / `unpin`: blocks (or a whole tree's) kept on N storage servers by the
//!   distributor.
//! - `find`: which storage servers hold a blob.
//! - `auth init|issue|attenuate|inspect`: the network's root key and capability
//!   tokens ([`auth`]).
//!
//! Every command except `up`, `systemd` and `auth` finds the network through `--broker` (or
//! `INVARIANT_BROKER`), defaulting to the broker url `up` uses by default. Every
//! request carries the capability token and trusts the CAs of the global client
//! options (`--token`, `--token-file`, `--ca-cert`, `--insecure-skip-verify`; the
//! token is looked up as [`invariant_spec::client_config`] describes, which finds the
//! operator token of a network started by `invariant up` on this machine).

mod auth;
mod config;
mod gc;
mod keys;
mod mount;
mod network;
mod systemd;
mod trees;
mod up;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use invariant_spec::broker::KINDS;
use invariant_spec::find::{LookupOptions, lookup};
use invariant_spec::names;
use invariant_spec::{
    BrokerClient, DistributorClient, FindClient, Id, NamesClient, SlotsClient, StorageClient,
};

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

    /// Folder for local keys and tokens (default `$XDG_CONFIG_HOME/invariant` or
    /// `~/.config/invariant`).
    #[arg(long, global = true, env = "INVARIANT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,

    /// Capability token sent with every request. Without it or `--token-file`: the
    /// operator token `invariant up` left for this broker, else `<config dir>/token`.
    #[arg(long, global = true, env = "INVARIANT_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// File holding the capability token (used when `--token` is not given).
    #[arg(long, global = true, env = "INVARIANT_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// PEM file of CA certificates to trust besides the system roots (`invariant up
    /// --tls` prints its CA).
    #[arg(long, global = true, env = "INVARIANT_CA_CERT")]
    ca_cert: Option<PathBuf>,

    /// Accept any server certificate. Unsafe: anyone on the path can read and change
    /// the traffic, tokens included. Prints a warning every run.
    #[arg(long, global = true)]
    insecure_skip_verify: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum SlotCommand {
    /// Create a slot holding `address` and print its id. By default an ed25519 slot:
    /// its key is kept in the config dir and signs every update. With `--unsigned`, a
    /// plain slot: a random id, no key, and updates carry no signature.
    Create {
        /// The slot's first address.
        address: Id,
        /// Create an unsigned (`{"kind":"none"}`) slot: anyone who knows its current
        /// value may move it (on a server with token checks: its registrant or an
        /// operator). Servers that do not implement ed25519 slots, such as the
        /// TypeScript reference, accept only these.
        #[arg(long)]
        unsigned: bool,
    },
    /// The slot's current state (JSON).
    Get {
        /// The slot id.
        slot: Id,
    },
    /// Move the slot to `address` (compare-and-swap from its current value). Signed
    /// with the slot's key when the config dir holds one; without a key (an unsigned
    /// slot) the update carries no signature.
    Set {
        /// The slot id.
        slot: Id,
        /// The new address.
        address: Id,
    },
    /// Every state, newest first (one JSON object per line).
    History {
        /// The slot id.
        slot: Id,
    },
    /// The current state, then each new one as it is set (until Ctrl-C).
    Watch {
        /// The slot id.
        slot: Id,
    },
}

#[derive(Subcommand, Debug)]
enum NameCommand {
    /// Register `name` → `address`.
    Register {
        /// The name (no dot means `<name>.local`).
        name: String,
        /// A content address, or a slot id with `--slot`.
        address: Id,
        /// `address` is a slot id.
        #[arg(long)]
        slot: bool,
        /// Seconds lookups may cache the answer. Sent as given: a TypeScript
        /// reference server reads the number as milliseconds (spec/names.md).
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// Look a name up (JSON).
    Lookup {
        /// The name.
        name: String,
    },
    /// Move `name` from `previous` to `address` (compare-and-swap). A server that
    /// answers `{}` instead of true/false (the TypeScript reference) is checked with a
    /// lookup: the update succeeded when the name now holds `address`.
    Update {
        /// The name.
        name: String,
        /// The address it must hold now.
        previous: Id,
        /// The new address.
        address: Id,
        /// `address` is a slot id.
        #[arg(long)]
        slot: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the whole local network (broker, find, storage ×3, slots, names,
    /// productions, files, distributor); Ctrl-C stops it.
    Up {
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// Write systemd units for the network `up` would start: one service per server
    /// (`<prefix>-<name>.service`, hardened, restarted on failure) and a target
    /// grouping them (`<prefix>.target`). Prepares the data dir as `up` does (root
    /// key, tokens, certificates, one folder per server).
    Systemd {
        #[command(flatten)]
        network: NetworkArgs,
        /// Folder the unit files are written to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Unit names start with `<prefix>-`; the target is `<prefix>.target`.
        #[arg(long, default_value = "invariant")]
        prefix: String,
        /// Account the servers run as (`User=`; it must own the data dir). Default:
        /// root, confined to the server's data folder.
        #[arg(long)]
        user: Option<String>,
    },
    /// The network's root key and capability tokens.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
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
    /// Slots: mutable pointers, ed25519-signed or (`create --unsigned`) plain.
    #[command(subcommand)]
    Slot(SlotCommand),
    /// Names → addresses.
    #[command(subcommand)]
    Name(NameCommand),
    /// Upload a directory; prints the root content link (JSON) as the last line.
    Upload {
        /// The directory.
        dir: PathBuf,
        /// Encrypt every block (aes-256-cbc, a random key per file).
        #[arg(long)]
        encrypt: bool,
        /// Compress every block.
        #[arg(long, value_enum)]
        compress: Option<CompressArg>,
        /// Ask the distributor to keep the whole tree on N storage servers.
        #[arg(long)]
        pin: bool,
    },
    /// Download the tree at a content link into a new (or empty) directory.
    Download {
        /// The root content link as JSON, or `@file` holding it.
        link: String,
        /// Destination directory.
        dir: PathBuf,
    },
    /// Mount a tree as a local folder (FUSE) until Ctrl-C: read-only, or with
    /// `--read-write` changes go through the files server (a slot moves on each sync;
    /// closing a written file, fsync and the unmount sync; a slot whose key is in the
    /// config dir, or an unsigned one, is moved by this command). A writable mount
    /// prints the tree's final content link when it is unmounted.
    Mount {
        /// What to mount: a content link as JSON, `@file` holding one, a slot id, or
        /// a name.
        target: String,
        /// The (existing) folder to mount on.
        dir: PathBuf,
        /// Allow changes (else the mount is read-only).
        #[arg(long)]
        read_write: bool,
        /// Files server url (default: the first one the broker knows).
        #[arg(long)]
        files: Option<String>,
    },
    /// Ask the distributor to keep blocks on N storage servers.
    Pin {
        /// Block addresses.
        #[arg(required_unless_present = "tree")]
        blocks: Vec<Id>,
        /// Pin every blob of the tree at this content link (JSON or `@file`).
        #[arg(long)]
        tree: Option<String>,
    },
    /// Release pins taken with `pin`.
    Unpin {
        /// Block addresses.
        #[arg(required_unless_present = "tree")]
        blocks: Vec<Id>,
        /// Unpin every blob of the tree at this content link (JSON or `@file`).
        #[arg(long)]
        tree: Option<String>,
    },
    /// Garbage collection: blocks pending collection, sweeps.
    #[command(subcommand)]
    Gc(gc::GcCommand),
    /// The storage servers that hold a blob, by iterative lookup over find servers.
    Find {
        /// The blob's address.
        address: Id,
    },
}

/// The network `up` starts and `systemd` describes.
#[derive(clap::Args, Debug)]
struct NetworkArgs {
    /// Folder for every server's data; reused on the next `up`.
    #[arg(long, default_value = "invariant-data")]
    data_dir: PathBuf,
    /// TOML file with counts and ports (see the `config` module docs).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder holding the server binaries (default: beside `invariant`).
    #[arg(long, env = "INVARIANT_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Serve HTTPS with certificates from a local CA under `<data-dir>/tls/`.
    #[arg(long)]
    tls: bool,
    /// No token checks: anyone who reaches the ports may change the network.
    #[arg(long)]
    open: bool,
}

impl NetworkArgs {
    /// The config file with the flags applied, and the folder of the server binaries.
    fn resolve(&self) -> anyhow::Result<(config::NetworkConfig, PathBuf)> {
        let mut config = config::NetworkConfig::load(self.config.as_deref())?;
        config.tls |= self.tls;
        config.auth &= !self.open;
        let bin_dir = match &self.bin_dir {
            Some(dir) => dir.clone(),
            None => up::default_bin_dir()?,
        };
        Ok((config, bin_dir))
    }
}

/// Block compression for `upload`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CompressArg {
    /// zlib (`inflate`).
    Inflate,
    /// brotli.
    Brotli,
    /// gzip (`unzip`).
    Gzip,
}

impl From<CompressArg> for invariant_content::Compression {
    fn from(arg: CompressArg) -> invariant_content::Compression {
        match arg {
            CompressArg::Inflate => invariant_content::Compression::Inflate,
            CompressArg::Brotli => invariant_content::Compression::Brotli,
            CompressArg::Gzip => invariant_content::Compression::Gzip,
        }
    }
}

fn main() -> std::process::ExitCode {
    invariant_runtime::stdout::exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of the output left (`invariant cat … | head -c 10`).
        Err(e) if invariant_runtime::stdout::is_closed_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            if let Some(hint) = hint(&e) {
                eprintln!("\nhint: {hint}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Advice for the errors a newcomer to a secured network meets first.
fn hint(e: &anyhow::Error) -> Option<&'static str> {
    for cause in e.chain() {
        if let Some(client) = cause.downcast_ref::<invariant_spec::ClientError>() {
            match client.status() {
                Some(401) => {
                    return Some(
                        "this network checks capability tokens and none was sent: give one with \
                         --token, --token-file, INVARIANT_TOKEN or INVARIANT_TOKEN_FILE (a \
                         network started by `invariant up` has its operator token in \
                         <data-dir>/auth/operator.token)",
                    );
                }
                Some(403) => {
                    return Some(
                        "the server refused the token (reason above); \
                         `invariant auth inspect <token>` shows what it allows",
                    );
                }
                _ => {}
            }
        }
    }
    let text = format!("{e:#}");
    if text.contains("certificate") || text.contains("UnknownIssuer") {
        return Some(
            "the server's certificate is not trusted: give the network's CA with --ca-cert or \
             INVARIANT_CA_CERT (`invariant up --tls` prints its path)",
        );
    }
    None
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_dir = cli
        .config_dir
        .clone()
        .unwrap_or_else(invariant_spec::client_config::default_config_dir);
    if cli.insecure_skip_verify {
        eprintln!(
            "warning: --insecure-skip-verify: server certificates are not checked; anyone on \
             the path can read and change this traffic, tokens included"
        );
    }
    // `up`, `systemd` and `auth` send no requests; every other command's clients use
    // these.
    if !matches!(
        cli.command,
        Command::Up { .. } | Command::Systemd { .. } | Command::Auth(_)
    ) {
        let flags = invariant_spec::client_config::ClientFlags {
            token: cli.token.clone(),
            token_file: cli.token_file.clone(),
            ca_cert: cli.ca_cert.clone(),
            insecure_skip_verify: cli.insecure_skip_verify,
        };
        let (security, _) = flags.resolve(&config_dir, &cli.broker)?;
        security.install();
    }
    match cli.command {
        Command::Up { network } => {
            let (config, bin_dir) = network.resolve()?;
            let paths = up::UpPaths {
                data_dir: &network.data_dir,
                bin_dir: &bin_dir,
                config_dir: &config_dir,
            };
            up::up(&config, &paths).await
        }
        Command::Systemd {
            network,
            out,
            prefix,
            user,
        } => {
            let (config, bin_dir) = network.resolve()?;
            let options = systemd::UnitOptions { prefix, user };
            systemd::run(&config, &network.data_dir, &bin_dir, &out, &options)
        }
        Command::Auth(command) => auth::run(command, &config_dir),
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
        Command::Slot(command) => slot(&broker(&cli.broker)?, &config_dir, command).await,
        Command::Name(command) => name(&broker(&cli.broker)?, command).await,
        Command::Upload {
            dir,
            encrypt,
            compress,
            pin,
        } => {
            let options = trees::UploadOptions {
                encrypt,
                compress: compress.map(Into::into),
                pin,
            };
            let link = trees::upload(&broker(&cli.broker)?, &dir, options).await?;
            println!("{}", serde_json::to_string(&link)?);
            Ok(())
        }
        Command::Download { link, dir } => {
            let link = trees::parse_link(&link)?;
            trees::download(&broker(&cli.broker)?, &link, &dir).await
        }
        Command::Mount {
            target,
            dir,
            read_write,
            files,
        } => {
            let args = mount::MountArgs {
                target,
                dir,
                read_write,
                files,
                config_dir: config_dir.clone(),
            };
            mount::run(&broker(&cli.broker)?, args).await
        }
        Command::Pin { blocks, tree } => pin(&broker(&cli.broker)?, blocks, tree, true).await,
        Command::Unpin { blocks, tree } => pin(&broker(&cli.broker)?, blocks, tree, false).await,
        Command::Gc(command) => gc::run(&broker(&cli.broker)?, command).await,
        Command::Find { address } => {
            let broker = broker(&cli.broker)?;
            let start = FindClient::from_endpoint(network::first(&broker, "find").await?);
            let holders = lookup(&broker, &start, &address, LookupOptions::default()).await?;
            if holders.is_empty() {
                bail!("no find server knows a holder of {address}");
            }
            for holder in holders {
                match broker.resolve(&holder).await? {
                    Some(url) => println!("{holder} {url}"),
                    None => println!("{holder} (not answering)"),
                }
            }
            Ok(())
        }
    }
}

async fn pin(
    broker: &BrokerClient,
    blocks: Vec<Id>,
    tree: Option<String>,
    pin: bool,
) -> anyhow::Result<()> {
    if let Some(tree) = tree {
        let count = trees::pin_tree(broker, &trees::parse_link(&tree)?, pin).await?;
        println!("{} {count} blobs", if pin { "pinned" } else { "unpinned" });
    }
    if !blocks.is_empty() {
        let distributor =
            DistributorClient::from_endpoint(network::first(broker, "distribute").await?);
        if pin {
            distributor.pin(&blocks).await?;
        } else {
            distributor.unpin(&blocks).await?;
        }
        println!(
            "{} {} blocks",
            if pin { "pinned" } else { "unpinned" },
            blocks.len()
        );
    }
    Ok(())
}

async fn slot(
    broker: &BrokerClient,
    config_dir: &std::path::Path,
    command: SlotCommand,
) -> anyhow::Result<()> {
    let slots = SlotsClient::from_endpoint(network::first(broker, "slots").await?);
    match command {
        SlotCommand::Create { address, unsigned } => {
            let slot = if unsigned {
                let slot = Id::random();
                let request = invariant_spec::slots::RegisterRequest::unsigned(slot, address);
                if !slots.register(&request).await? {
                    bail!("slot {slot} already exists");
                }
                slot
            } else {
                let (signer, slot) = keys::create(config_dir)?;
                let registered = match slots
                    .register(&signer.register_request(slot, address))
                    .await
                {
                    Err(e) if e.status() == Some(400) => {
                        return Err(anyhow::Error::new(e).context(
                            "the slots server refused an ed25519 slot; a server without \
                             ed25519 slots (such as the TypeScript reference) takes \
                             `invariant slot create --unsigned`",
                        ));
                    }
                    other => other?,
                };
                if !registered {
                    bail!("slot {slot} already exists");
                }
                slot
            };
            println!("{slot}");
        }
        SlotCommand::Get { slot } => {
            let state = slots
                .get(&slot)
                .await?
                .with_context(|| format!("unknown slot {slot}"))?;
            println!("{}", serde_json::to_string(&state)?);
        }
        SlotCommand::Set { slot, address } => {
            let current = slots
                .get(&slot)
                .await?
                .with_context(|| format!("unknown slot {slot}"))?;
            match keys::load(config_dir, &slot)? {
                Some(signer) => {
                    slots
                        .update_signed(&slot, &signer, &current.address, &address)
                        .await?
                }
                None => {
                    let request =
                        invariant_spec::slots::UpdateRequest::unsigned(current.address, address);
                    slots.update(&slot, &request).await?
                }
            }
            println!("{address}");
        }
        SlotCommand::History { slot } => {
            let states = slots
                .history_all(&slot)
                .await?
                .with_context(|| format!("unknown slot {slot}"))?;
            for state in states {
                println!("{}", serde_json::to_string(&state)?);
            }
        }
        SlotCommand::Watch { slot } => {
            let mut stream = slots
                .watch(&slot)
                .await?
                .with_context(|| format!("unknown slot {slot}"))?;
            while let Some(state) = stream.next().await {
                println!("{}", serde_json::to_string(&state?)?);
            }
        }
    }
    Ok(())
}

async fn name(broker: &BrokerClient, command: NameCommand) -> anyhow::Result<()> {
    let names = NamesClient::from_endpoint(network::first(broker, "names").await?);
    match command {
        NameCommand::Register {
            name,
            address,
            slot,
            ttl,
        } => {
            let mut request = names::RegisterRequest::new(name, address);
            request.slot = slot.then_some(true);
            request.ttl = ttl;
            names.register(&request).await?;
            println!("registered");
        }
        NameCommand::Lookup { name } => {
            let record = names
                .lookup(&name)
                .await?
                .with_context(|| format!("{name} is not known"))?;
            println!("{}", serde_json::to_string(&record)?);
        }
        NameCommand::Update {
            name,
            previous,
            address,
            slot,
        } => {
            let mut request = names::UpdateRequest::new(name.clone(), previous, address);
            request.slot = slot.then_some(true);
            if !names.update(&request).await? {
                bail!("{name} no longer holds {previous}");
            }
            println!("updated");
        }
    }
    Ok(())
}

fn broker(url: &str) -> anyhow::Result<BrokerClient> {
    BrokerClient::new(url).with_context(|| format!("broker url {url}"))
}

async fn status(broker: &BrokerClient) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let broker_id = broker
        .endpoint()
        .server_id()
        .await
        .with_context(|| format!("no broker answers at {}", broker.endpoint().base_url()))?;
    println!(
        "{:<12} {broker_id} {}  {}",
        "broker",
        broker.endpoint().base_url(),
        answered(started.elapsed())
    );
    for kind in KINDS {
        let ids = broker.registered(kind).await?;
        for id in ids {
            let Some(url) = broker.resolve(&id).await? else {
                println!("{kind:<12} {id} (not answering)");
                continue;
            };
            println!("{kind:<12} {id} {url}  {}", health(kind, &id, &url).await);
        }
    }
    Ok(())
}

/// `ok, 3 ms`: a server answered `/id` after `elapsed`.
fn answered(elapsed: std::time::Duration) -> String {
    format!("ok, {} ms", elapsed.as_millis())
}

/// One server's health: whether `/id` answers with `id` and how fast; for the
/// distributor also its pins and whether they have their N copies.
async fn health(kind: &str, id: &Id, url: &str) -> String {
    let endpoint = match invariant_spec::http::Endpoint::new(url) {
        Ok(endpoint) => endpoint,
        Err(e) => return format!("unusable url: {e}"),
    };
    let started = std::time::Instant::now();
    let mut line = match endpoint.server_id().await {
        Ok(answer) if answer == *id => answered(started.elapsed()),
        Ok(other) => return format!("answers /id with another id ({other})"),
        Err(e) => return format!("not answering /id: {e}"),
    };
    if kind == "distribute" {
        match DistributorClient::from_endpoint(endpoint).status().await {
            Ok(status) => line.push_str(&distributor_health(&status)),
            Err(e) => line.push_str(&format!("; status unavailable: {e}")),
        }
    } else if kind == "storage" {
        line.push_str(&storage_health(&endpoint).await);
    }
    line
}

/// `; 1,204 blobs, 3.1 MiB`: what a storage server holds, from its `/metrics` gauges.
async fn storage_health(endpoint: &invariant_spec::http::Endpoint) -> String {
    let text = match endpoint.http().get(endpoint.url("/metrics")).send().await {
        Ok(resp) if resp.status().is_success() => resp.text().await.unwrap_or_default(),
        Ok(resp) => return format!("; holdings unavailable (/metrics: {})", resp.status()),
        Err(e) => return format!("; holdings unavailable: {e}"),
    };
    let gauge = |name: &str| -> Option<u64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (metric, value) = l.rsplit_once(' ')?;
                let metric = metric.split('{').next()?;
                (metric == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .map(|v| v as u64)
    };
    match (
        gauge("invariant_storage_blobs"),
        gauge("invariant_storage_bytes"),
    ) {
        (Some(blobs), Some(bytes)) => format!("; {blobs} blobs, {}", human_bytes(bytes)),
        _ => "; holdings unavailable (no blob gauges)".to_string(),
    }
}

/// `3.1 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `; 12 pinned, 0 under-replicated (3 of 3 storage servers active)`, plus a warning
/// when fewer than N storage servers are active.
fn distributor_health(status: &invariant_spec::distributor::DistributorStatus) -> String {
    let mut text = format!(
        "; {} pinned, {} under-replicated ({} storage servers active, N = {})",
        status.pinned, status.under_replicated, status.storages_active, status.replicas
    );
    if status.replica_shortfall > 0 {
        text.push_str(&format!(
            "; N copies unreachable: {} more storage server(s) needed",
            status.replica_shortfall
        ));
    }
    text
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
