//! `invariant up` as a child process (every port 0, its files in a temporary folder),
//! and the `invariant` command pointed at it with the network's operator token and CA.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use invariant_spec::http::ClientSecurity;

use crate::bin_path;

/// Client variables a test must not inherit from the environment that runs it.
pub const CLIENT_ENV: [&str; 5] = [
    "INVARIANT_TOKEN",
    "INVARIANT_TOKEN_FILE",
    "INVARIANT_CA_CERT",
    "INVARIANT_BROKER",
    "INVARIANT_CONFIG_DIR",
];

/// Runs the `invariant` CLI with its own config folder and `broker`, none of the
/// caller's client variables, and no stdin.
pub fn invariant_cli(
    config_dir: &std::path::Path,
    broker: &str,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let mut command = std::process::Command::new(bin_path("invariant")?);
    for var in CLIENT_ENV {
        command.env_remove(var);
    }
    Ok(command
        .env("INVARIANT_CONFIG_DIR", config_dir)
        .env("INVARIANT_BROKER", broker)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?)
}

/// How `up` is started.
#[derive(Clone, Copy, Debug, Default)]
pub struct UpMode {
    /// `--tls`.
    pub tls: bool,
    /// `--open` (no token checks).
    pub open: bool,
}

/// A running `invariant up`.
#[derive(Debug)]
pub struct Up {
    child: Option<Child>,
    urls: BTreeMap<String, String>,
    lines: Vec<String>,
    data: PathBuf,
    config_dir: PathBuf,
    stderr: PathBuf,
    mode: UpMode,
}

impl Up {
    /// Starts `invariant up` with every role on a free port, data in `dir/net`, the CLI
    /// config dir `dir/config`, and waits for its `network up` line.
    pub fn start(dir: &Path, mode: UpMode) -> anyhow::Result<Up> {
        Up::start_with_env(dir, mode, &[])
    }

    /// [`Up::start`] with extra environment variables for `up` and the servers it
    /// starts (server settings such as `INVARIANT_GC_GRACE`).
    pub fn start_with_env(dir: &Path, mode: UpMode, env: &[(&str, &str)]) -> anyhow::Result<Up> {
        let config = dir.join("network.toml");
        std::fs::write(
            &config,
            "[broker]\nport = 0\n[storage]\ncount = 3\nports = [0, 0, 0]\n[find]\nport = 0\n\
             [slots]\nport = 0\n[names]\nport = 0\n[productions]\nport = 0\n[files]\nport = 0\n\
             [distributor]\nport = 0\n",
        )?;
        let data = dir.join("net");
        let config_dir = dir.join("config");
        let stderr = dir.join("up.stderr");
        let mut command = Command::new(bin_path("invariant")?);
        for var in CLIENT_ENV {
            command.env_remove(var);
        }
        command
            .arg("up")
            .arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .env("INVARIANT_CONFIG_DIR", &config_dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr)?));
        if mode.tls {
            command.arg("--tls");
        }
        if mode.open {
            command.arg("--open");
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut up = Up {
            child: Some(child),
            urls: BTreeMap::new(),
            lines: Vec::new(),
            data,
            config_dir,
            stderr,
            mode,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(remaining) {
                Ok(line) => line?,
                Err(e) => bail!(
                    "invariant up did not come up ({e}); printed {:?}; stderr:\n{}",
                    up.lines,
                    up.stderr_text()
                ),
            };
            if line.starts_with("network up") {
                return Ok(up);
            }
            let mut parts = line.split_whitespace();
            if let (Some(name), Some(url)) = (parts.next(), parts.next())
                && (url.starts_with("http://") || url.starts_with("https://"))
            {
                up.urls.insert(name.to_string(), url.to_string());
            }
            up.lines.push(line);
        }
    }

    /// `<name> → url` of every server started.
    pub fn urls(&self) -> &BTreeMap<String, String> {
        &self.urls
    }

    /// The url of server `name`.
    pub fn url(&self, name: &str) -> anyhow::Result<&str> {
        self.urls
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("no {name} line in {:?}", self.lines))
    }

    /// The broker's url.
    pub fn broker(&self) -> anyhow::Result<&str> {
        self.url("broker")
    }

    /// Every line printed before `network up`.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// What `up` wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The CLI config dir `up` was given.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// The local CA (with `--tls`).
    pub fn ca_cert(&self) -> PathBuf {
        self.data.join("tls").join("ca.pem")
    }

    /// The operator token file (without `--open`).
    pub fn operator_token_file(&self) -> PathBuf {
        self.data.join("auth").join("operator.token")
    }

    /// `invariant` for this network as an operator: its broker, the operator token
    /// file, its CA, and up's config dir; nothing inherited from the environment.
    pub fn cli(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(bin_path("invariant")?);
        for var in CLIENT_ENV {
            command.env_remove(var);
        }
        command
            .env("INVARIANT_BROKER", self.broker()?)
            .env("INVARIANT_CONFIG_DIR", &self.config_dir)
            .stdin(Stdio::null());
        if !self.mode.open {
            command.env("INVARIANT_TOKEN_FILE", self.operator_token_file());
        }
        if self.mode.tls {
            command.env("INVARIANT_CA_CERT", self.ca_cert());
        }
        Ok(command)
    }

    /// Runs `invariant args` as [`Up::cli`] does.
    pub fn invariant(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.cli()?.args(args).output()?)
    }

    /// Client settings of an operator of this network, for typed clients in tests.
    pub fn client_security(&self) -> anyhow::Result<ClientSecurity> {
        let mut security = ClientSecurity::default();
        if self.mode.tls {
            security.add_ca_file(&self.ca_cert())?;
        }
        if !self.mode.open {
            security.token = Some(invariant_spec::http::read_token_file(
                &self.operator_token_file(),
            )?);
        }
        Ok(security)
    }

    /// Waits until `invariant status` lists `storages` storage servers and one server
    /// of each of `kinds`.
    pub fn wait_registered(&self, storages: usize, kinds: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.invariant(&["status"])?;
            let text = String::from_utf8_lossy(&status.stdout).to_string();
            let count = |kind: &str| text.lines().filter(|l| l.starts_with(kind)).count();
            if status.status.success()
                && count("storage") == storages
                && kinds.iter().all(|k| count(k) > 0)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "registrations incomplete:\n{text}\n{}",
                    String::from_utf8_lossy(&status.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, then waits (bounded) for `up` to stop every server and exit.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("already stopped")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(exit) = child.try_wait()? {
                self.child = None;
                return Ok(exit);
            }
            if Instant::now() > deadline {
                bail!("invariant up did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM lets `up` stop its servers; a SIGKILL would leave them running.
        if self.child.is_some() && self.stop().is_err() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The `host:port` of a server url (`http://` or `https://`).
pub fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
}
