//! `invariant up`: the whole local network in one command.
//!
//! Starts the broker, then every other role as a child process with `--broker`, each
//! with its own folder under the data directory (`<data>/broker`, `<data>/storage-1`,
//! ...), so ids and data are reused on the next `up`. Prints one line per server,
//! `<name> <url>`, then waits. SIGINT/SIGTERM (Ctrl-C) stops every server with SIGTERM,
//! last started first, waiting for each to drain. Server logs go to `<data>/logs/`.

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

/// A started server.
struct Running {
    name: String,
    url: String,
    child: Child,
}

/// One server to start.
struct Launch {
    name: String,
    role: Role,
    port: u16,
}

/// Runs the network until a signal arrives.
pub async fn up(config: &NetworkConfig, data_dir: &Path, bin_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir.join("logs"))
        .with_context(|| format!("creating {}", data_dir.display()))?;
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

    let mut running: Vec<Running> = Vec::new();
    let result = start_all(&launches, config, data_dir, bin_dir, &mut running).await;
    if let Err(e) = result {
        stop_all(&mut running).await;
        return Err(e);
    }
    println!("network up: {} servers; Ctrl-C stops them", running.len());
    wait_for_signal_or_exit(&mut running).await;
    stop_all(&mut running).await;
    println!("network stopped");
    Ok(())
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

async fn start_all(
    launches: &[Launch],
    config: &NetworkConfig,
    data_dir: &Path,
    bin_dir: &Path,
    running: &mut Vec<Running>,
) -> anyhow::Result<()> {
    let mut broker_url: Option<String> = None;
    for launch in launches {
        let binary = bin_dir.join(binary_name(launch.role));
        if !binary.is_file() {
            eprintln!(
                "skipping {}: {} is not built (build the workspace: cargo build --release --workspace)",
                launch.name,
                binary.display()
            );
            continue;
        }
        let server = start_one(launch, &binary, config, data_dir, broker_url.as_deref()).await?;
        println!("{:<12} {}", server.name, server.url);
        if launch.role == Role::Broker {
            broker_url = Some(server.url.clone());
        }
        running.push(server);
    }
    if broker_url.is_none() {
        bail!("the broker could not be started");
    }
    Ok(())
}

async fn start_one(
    launch: &Launch,
    binary: &Path,
    config: &NetworkConfig,
    data_dir: &Path,
    broker: Option<&str>,
) -> anyhow::Result<Running> {
    let log_path = data_dir.join("logs").join(format!("{}.log", launch.name));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(binary);
    command
        .arg("--listen")
        .arg(format!("{}:{}", config.host, launch.port))
        .arg("--data-dir")
        .arg(data_dir.join(&launch.name))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if let Some(broker) = broker {
        command.arg("--broker").arg(broker);
    }
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
