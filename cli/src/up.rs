//! `invariant up`: the whole local network in one command.
//!
//! Starts the broker, then every other role as a child process with `--broker`, each
//! with its own folder under the data directory (`<data>/broker`, `<data>/storage-1`,
//! ...), so ids and data are reused on the next `up`. Prints one line per server,
//! `<name> <url>`, then waits. SIGINT/SIGTERM (Ctrl-C) stops every server with SIGTERM,
//! last started first, waiting for each to drain. Server logs go to `<data>/logs/`.
//! The servers and their arguments ([`launches`], [`server_args`], [`Security`]) also
//! describe the network to `invariant systemd` ([`crate::systemd`]).
//!
//! Security ([`auth`], [`tls`]):
//! - Token checks are on unless `--open` (or `auth = false`): every server gets
//!   `--auth-root-key <data>/auth/root.pub` and a token of its own with exactly the
//!   rights of its calls to other servers. The operator token (`*`) is written to
//!   `<data>/auth/operator.token` and copied to the CLI config dir under the broker's
//!   url (`<config>/up/<scheme>_<host>_<port>.token`), where the `invariant` and `ehi`
//!   commands of this machine find it when they talk to that broker
//!   ([`invariant_spec::client_config`]); the copy is removed when `up` stops.
//!   With `--open` the storage servers get `--allow-open-delete`, so the
//!   distributor can still delete unpinned blocks.
//! - `--tls` (or `tls = true`) serves HTTPS with certificates from a local CA under
//!   `<data>/tls/`; every server trusts that CA for its own calls.
//!
//! Security variables of `up`'s own environment (`INVARIANT_TOKEN`,
//! `INVARIANT_CA_CERT`, `INVARIANT_BROKER`, ...) are not passed to the servers: `up`
//! gives each one its own.

pub mod auth;
pub mod tls;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use invariant_runtime::Role;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::config::NetworkConfig;

/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Environment variables `up` does not pass on to the servers: it sets what they
/// mean itself, per server.
const WITHHELD_ENV: [&str; 11] = [
    "INVARIANT_TOKEN",
    "INVARIANT_TOKEN_FILE",
    "INVARIANT_CA_CERT",
    "INVARIANT_AUTH_ROOT_KEY",
    "INVARIANT_AUTH_READS",
    "INVARIANT_TLS_CERT",
    "INVARIANT_TLS_KEY",
    "INVARIANT_BROKER",
    "INVARIANT_ADVERTISE",
    "INVARIANT_LISTEN",
    "INVARIANT_DATA_DIR",
];

/// The binary implementing `role`.
pub fn binary_name(role: Role) -> &'static str {
    match role {
        Role::Storage => "storage-server",
        Role::Slots => "slots-server",
        Role::Broker => "broker-server",
        Role::Find => "find-server",
        Role::Files => "files-server",
        Role::Productions => "productions-server",
        Role::Names => "names-server",
        Role::Distributor => "distributor",
    }
}

/// Where the server binaries are: `--bin-dir`, else beside this executable.
pub fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the invariant executable")?;
    Ok(exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf())
}

/// Where `up` keeps its files and what it was asked for.
#[derive(Debug)]
pub struct UpPaths<'a> {
    /// Every server's data (`--data-dir`).
    pub data_dir: &'a Path,
    /// The server binaries.
    pub bin_dir: &'a Path,
    /// The CLI config dir, where the operator token is left for this network's broker.
    pub config_dir: &'a Path,
}

/// A started server.
struct Running {
    name: String,
    url: String,
    child: Child,
}

/// One server of the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Its name: the role's folder name, `storage-<n>` for storage servers; also the
    /// name of its folder under the data dir.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The port it binds (0: any free port).
    pub port: u16,
}

/// The servers `config` describes, in start order: the broker, find, slots, names,
/// productions, the storage servers, files, the distributor (leaving out disabled
/// roles).
pub fn launches(config: &NetworkConfig) -> Vec<Launch> {
    let mut launches = vec![Launch {
        name: "broker".into(),
        role: Role::Broker,
        port: config.broker.port.unwrap_or(Role::Broker.default_port()),
    }];
    for (role, role_config) in config.single_roles() {
        if role == Role::Files {
            // storage servers come before files and the distributor, which use them
            push_storage(&mut launches, config);
        }
        if role_config.enabled() {
            launches.push(Launch {
                name: role.dir_name().into(),
                role,
                port: role_config.port.unwrap_or(role.default_port()),
            });
        }
    }
    launches
}

/// The arguments of one server after its binary: where it listens and keeps its data
/// (`<data_dir>/<name>`), its security options, and the broker to register with.
pub fn server_args(
    launch: &Launch,
    config: &NetworkConfig,
    data_dir: &Path,
    broker: Option<&str>,
    security: &ServerSecurity,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--listen".into(),
        std::net::SocketAddr::new(config.host, launch.port)
            .to_string()
            .into(),
        "--data-dir".into(),
        data_dir.join(&launch.name).into(),
    ];
    args.extend(security.args.iter().cloned());
    if let Some(broker) = broker {
        args.push("--broker".into());
        args.push(broker.into());
    }
    args
}

/// The security options of one server, and the private files among them (its token
/// and TLS key), which no other server needs.
#[derive(Clone, Debug, Default)]
pub struct ServerSecurity {
    /// Options to pass.
    pub args: Vec<OsString>,
    /// Private files those options name.
    pub private: Vec<PathBuf>,
}

/// The network's security material.
#[derive(Debug)]
pub struct Security {
    auth: Option<auth::NetworkAuth>,
    tls: Option<tls::LocalCa>,
}

impl Security {
    /// Checks the config's host/TLS rule, then opens (or creates) the root key and
    /// the local CA under `data_dir` as the config asks.
    pub fn prepare(config: &NetworkConfig, data_dir: &Path) -> anyhow::Result<Security> {
        if !config.tls && !config.host.is_loopback() {
            bail!(
                "host {} is not a loopback address: servers reachable from other machines \
                 must use TLS (`invariant up --tls`, or `tls = true` in the config)",
                config.host
            );
        }
        let auth = if config.auth {
            Some(auth::NetworkAuth::open_or_create(data_dir)?)
        } else {
            None
        };
        let tls = if config.tls {
            let names = tls::names_for(config.host);
            Some(tls::LocalCa::open_or_create(&data_dir.join("tls"), names)?)
        } else {
            None
        };
        Ok(Security { auth, tls })
    }

    /// The root key (when token checks are on).
    pub fn auth(&self) -> Option<&auth::NetworkAuth> {
        self.auth.as_ref()
    }

    /// The local CA (with TLS).
    pub fn tls(&self) -> Option<&tls::LocalCa> {
        self.tls.as_ref()
    }

    /// The security options of one server, writing its token and certificate files
    /// when they are missing or no longer good.
    pub fn server(&self, launch: &Launch) -> anyhow::Result<ServerSecurity> {
        let mut args: Vec<OsString> = Vec::new();
        let mut private = Vec::new();
        if let Some(auth) = &self.auth {
            args.push("--auth-root-key".into());
            args.push(auth.root_pub_path().into());
            if let Some(token) = auth.server_token(&launch.name, launch.role)? {
                args.push("--token-file".into());
                args.push(token.clone().into());
                private.push(token);
            }
        } else if launch.role == Role::Storage {
            // Without tokens anyone may already change this local network; its
            // distributor must still be able to delete unpinned blocks.
            args.push("--allow-open-delete".into());
        }
        if let Some(ca) = &self.tls {
            let (files, _) = ca.server(&launch.name)?;
            args.extend([
                "--tls-cert".into(),
                files.cert.into(),
                "--tls-key".into(),
                files.key.clone().into(),
                "--ca-cert".into(),
                ca.ca_path().into(),
            ]);
            private.push(files.key);
        }
        Ok(ServerSecurity { args, private })
    }
}

/// The operator token left in the config dir for one broker url.
struct LeftToken {
    path: PathBuf,
    token: String,
}

impl LeftToken {
    /// Removes the file if it still holds this network's token.
    fn remove(&self) {
        let current = std::fs::read_to_string(&self.path).unwrap_or_default();
        if current.trim() == self.token {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Runs the network until a signal arrives.
pub async fn up(config: &NetworkConfig, paths: &UpPaths<'_>) -> anyhow::Result<()> {
    let data_dir = paths.data_dir;
    std::fs::create_dir_all(data_dir.join("logs"))
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let security = Security::prepare(config, data_dir)?;
    let launches = launches(config);

    let mut running: Vec<Running> = Vec::new();
    let started = start_all(&launches, config, paths, &security, &mut running).await;
    let left = match started.and_then(|broker| announce(&security, paths, &broker)) {
        Ok(left) => left,
        Err(e) => {
            stop_all(&mut running).await;
            return Err(e);
        }
    };
    println!("network up: {} servers; Ctrl-C stops them", running.len());
    wait_for_signal_or_exit(&mut running).await;
    stop_all(&mut running).await;
    if let Some(left) = left {
        left.remove();
    }
    println!("network stopped");
    Ok(())
}

/// Prints how clients reach the network and leaves the operator token for the CLI.
fn announce(
    security: &Security,
    paths: &UpPaths<'_>,
    broker: &str,
) -> anyhow::Result<Option<LeftToken>> {
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    if let Some(ca) = &security.tls {
        let ca_path = absolute(ca.ca_path());
        let new = if ca.created {
            " (new: clients must trust it)"
        } else {
            ""
        };
        println!(
            "tls: certificates of the local CA {}{new}",
            ca_path.display()
        );
        println!("  export INVARIANT_CA_CERT={}", ca_path.display());
        println!("  export INVARIANT_BROKER={broker}");
    }
    let left_path = invariant_spec::client_config::up_token_path(paths.config_dir, broker);
    let Some(auth) = &security.auth else {
        // A token left by an earlier run with auth would now mean nothing.
        if let Some(path) = &left_path {
            let _ = std::fs::remove_file(path);
        }
        println!("auth: off (--open): anyone who reaches these ports can change the network");
        return Ok(None);
    };
    let operator = absolute(auth.operator_token()?);
    let token = invariant_spec::http::read_token_file(&operator)?;
    println!("auth: on; operator token {}", operator.display());
    if auth.created {
        println!(
            "  new root key; servers check tokens against {}",
            absolute(auth.root_pub_path()).display()
        );
    }
    let left = match left_path {
        Some(path) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
                let _ = std::fs::set_permissions(
                    parent,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                );
            }
            crate::auth::write_private(&path, &format!("{token}\n"), true)?;
            println!(
                "  the invariant and ehi commands of this user use it for {broker} (copy: {})",
                path.display()
            );
            Some(LeftToken { path, token })
        }
        None => None,
    };
    println!(
        "  elsewhere: export INVARIANT_TOKEN_FILE={}",
        operator.display()
    );
    Ok(left)
}

fn push_storage(launches: &mut Vec<Launch>, config: &NetworkConfig) {
    for i in 0..config.storage.count {
        launches.push(Launch {
            name: format!("storage-{}", i + 1),
            role: Role::Storage,
            port: config.storage.ports.get(i).copied().unwrap_or(0),
        });
    }
}

/// Starts every server; returns the broker's url.
async fn start_all(
    launches: &[Launch],
    config: &NetworkConfig,
    paths: &UpPaths<'_>,
    security: &Security,
    running: &mut Vec<Running>,
) -> anyhow::Result<String> {
    let mut broker_url: Option<String> = None;
    for launch in launches {
        let binary = paths.bin_dir.join(binary_name(launch.role));
        if !binary.is_file() {
            eprintln!(
                "skipping {}: {} is not built (build the workspace: cargo build --release --workspace)",
                launch.name,
                binary.display()
            );
            continue;
        }
        let args = server_args(
            launch,
            config,
            paths.data_dir,
            broker_url.as_deref(),
            &security.server(launch)?,
        );
        let server = start_one(launch, &binary, paths.data_dir, &args).await?;
        println!("{:<12} {}", server.name, server.url);
        if launch.role == Role::Broker {
            broker_url = Some(server.url.clone());
        }
        running.push(server);
    }
    broker_url.context("the broker could not be started")
}

async fn start_one(
    launch: &Launch,
    binary: &Path,
    data_dir: &Path,
    args: &[OsString],
) -> anyhow::Result<Running> {
    let log_path = data_dir.join("logs").join(format!("{}.log", launch.name));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(binary);
    for var in WITHHELD_ENV {
        command.env_remove(var);
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
    let line = match first {
        Ok(Ok(Some(line))) => line,
        _ => {
            let _ = child.start_kill();
            bail!("{} did not start; see {}", launch.name, log_path.display());
        }
    };
    // Keep reading so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = line
        .strip_prefix("listening on ")
        .with_context(|| format!("{} printed {line:?}", launch.name))?
        .trim()
        .to_string();
    Ok(Running {
        name: launch.name.clone(),
        url,
        child,
    })
}

async fn wait_for_signal_or_exit(running: &mut [Running]) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("cannot watch SIGTERM: {e}");
            None
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut reported = vec![false; running.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => return,
            _ = tick.tick() => {
                // A server that dies is reported once; the rest of the network keeps
                // running (the distributor and broker cope with a lost server).
                for (server, reported) in running.iter_mut().zip(reported.iter_mut()) {
                    if *reported {
                        continue;
                    }
                    if let Ok(Some(status)) = server.child.try_wait() {
                        eprintln!("{} exited ({status}); the other servers keep running", server.name);
                        *reported = true;
                    }
                }
            }
        }
    }
}

async fn stop_all(running: &mut Vec<Running>) {
    while let Some(mut server) = running.pop() {
        if let Some(pid) = server.child.id() {
            let pid = i32::try_from(pid).map(Pid::from_raw);
            if let Ok(pid) = pid {
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP_TIMEOUT, server.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{} did not stop in time; killing it", server.name);
                let _ = server.child.kill().await;
            }
        }
    }
}
