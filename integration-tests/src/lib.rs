//! # integration-tests
//!
//! Harness for multi-process tests: starts the real server binaries (built by the same
//! `cargo test` run) on `127.0.0.1:0`, reads each one's url from its
//! `listening on http://<addr>` line, and can stop them gracefully (SIGTERM) or kill
//! them outright (SIGKILL) to test crash recovery. Server logs go to a file beside the
//! data directory so a failing test can show them. [`up`] runs `invariant up` and the
//! `invariant` command against it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod up;

/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Broker flags for tests that lose servers: liveness checks every 200 ms (±50),
/// a server dropped after 2 missed checks of 500 ms each.
pub const FAST_BROKER_CHECKS: &[&str] = &[
    "--check-interval-ms",
    "200",
    "--check-jitter-ms",
    "50",
    "--check-failures",
    "2",
    "--check-timeout-ms",
    "500",
];

/// The directory holding the workspace's built binaries: `$INVARIANT_BIN_DIR`, else the
/// profile directory this test executable was built into (`target/<profile>`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("INVARIANT_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test-exe>
    let deps = exe.parent().context("test executable has no parent")?;
    let profile = deps.parent().context("deps directory has no parent")?;
    Ok(profile.to_path_buf())
}

/// Path of workspace binary `name`, checked to exist.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (`cargo build -p {name}`; `cargo test --workspace` does)",
            path.display()
        );
    }
    Ok(path)
}

/// A server binary running as a child process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    url: String,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts binary `name` with `--listen 127.0.0.1:0 --data-dir <data_dir>` plus
    /// `extra` arguments, and waits for its `listening on` line.
    pub fn start(name: &str, data_dir: &Path, extra: &[&str]) -> anyhow::Result<ServerProcess> {
        ServerProcess::start_limited(name, data_dir, extra, None)
    }

    /// As [`ServerProcess::start`], with the open-file limit (soft and hard) set to
    /// `open_files` first, as `ulimit -n` would.
    pub fn start_limited(
        name: &str,
        data_dir: &Path,
        extra: &[&str],
        open_files: Option<u64>,
    ) -> anyhow::Result<ServerProcess> {
        let bin = bin_path(name)?;
        std::fs::create_dir_all(data_dir)?;
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = match open_files {
            None => Command::new(&bin),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$@\""))
                    .arg("sh")
                    .arg(&bin);
                sh
            }
        };
        let mut child = command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("child has no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut process = ServerProcess {
            child: Some(child),
            url: String::new(),
            log,
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let logs = process.logs();
                bail!("{name} did not report its address ({other:?}); log:\n{logs}");
            }
        };
        let url = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from {name}: {line:?}"))?;
        process.url = url.trim().to_string();
        Ok(process)
    }

    /// The server's base url.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the server logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the process dies at once, as in a crash or power loss of the process.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("sending SIGKILL")?;
            child.wait().context("reaping the killed server")?;
        }
        Ok(())
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("server already stopped")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        Ok(())
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().context("server already reaped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("server did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()?;
        self.wait_exit(Duration::from_secs(20))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
