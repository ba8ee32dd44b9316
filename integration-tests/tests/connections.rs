//! Hostile and slow clients against a real storage-server process: idle and slow-header
//! connections are closed within the timeouts while normal requests keep answering;
//! thousands of stalled uploads cannot grow memory past the body budget; and under a
//! 1,024 open-file limit the server keeps answering once idle connections are reaped.

use std::time::{Duration, Instant};

use anyhow::Context;
use integration_tests::ServerProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Raises this test process's open-file limit so it can hold thousands of sockets.
fn raise_fd_limit(needed: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < needed {
        anyhow::ensure!(
            hard >= needed,
            "this test needs {needed} open files; the hard limit is {hard}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(())
}

/// These tests each hold thousands of sockets and time the server's reaping; run side by
/// side on a small machine they would measure each other. They take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn host_port(url: &str) -> anyhow::Result<String> {
    Ok(url
        .strip_prefix("http://")
        .context("an http url")?
        .trim_end_matches('/')
        .to_string())
}

async fn connect_many(addr: &str, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(TcpStream::connect(addr).await?);
    }
    Ok(streams)
}

/// Waits until every stream is closed by the server (EOF or reset); returns how many
/// were still open at `deadline`.
async fn still_open_at(streams: Vec<TcpStream>, deadline: Instant) -> usize {
    let waits = streams.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(_)) => continue,
                Err(_) => return true,
            }
        }
    });
    futures_util::future::join_all(waits)
        .await
        .into_iter()
        .filter(|open| *open)
        .count()
}

async fn get_id(http: &reqwest::Client, url: &str) -> anyhow::Result<u16> {
    Ok(http
        .get(format!("{url}/id"))
        .send()
        .await?
        .status()
        .as_u16())
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_header_connections_are_reaped_while_requests_answer() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    raise_fd_limit(8_000)?;
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(
        "storage-server",
        &dir.path().join("storage"),
        &["--header-timeout-ms", "2000", "--idle-timeout-ms", "5000"],
    )?;
    let addr = host_port(server.url())?;
    let http = reqwest::Client::new();

    let idle = connect_many(&addr, 2_000).await?;
    let idle_connected = Instant::now();
    let mut slow = connect_many(&addr, 1_000).await?;
    for s in &mut slow {
        s.write_all(b"PUT /storage/").await?;
    }
    let heads_started = Instant::now();
    // Normal requests answer while 3,000 hostile connections are open.
    for _ in 0..20 {
        assert_eq!(get_id(&http, server.url()).await?, 200);
    }
    // Deadlines: the timeout plus a margin for a loaded machine (the server may still be
    // accepting the backlog); a server without the timeouts keeps them open for good.
    let slow_open = still_open_at(slow, heads_started + Duration::from_secs(2 + 8)).await;
    assert_eq!(
        slow_open, 0,
        "slow-header connections left open after the header timeout"
    );
    let idle_open = still_open_at(idle, idle_connected + Duration::from_secs(5 + 10)).await;
    assert_eq!(
        idle_open, 0,
        "idle connections left open after the idle timeout"
    );
    assert_eq!(get_id(&http, server.url()).await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_stay_within_the_body_budget() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    raise_fd_limit(8_000)?;
    const BUDGET: u64 = 64 << 20;
    const UPLOADS: usize = 2_000;
    const SIZE: usize = 256 << 10;
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(
        "storage-server",
        &dir.path().join("storage"),
        &[
            "--body-budget",
            &BUDGET.to_string(),
            "--body-timeout-ms",
            "60000",
        ],
    )?;
    let pid = server.pid().context("pid")?;
    let before = rss_bytes(pid)?;
    let addr = host_port(server.url())?;
    // Each upload declares 256 KiB, sends all but the last byte, and stalls.
    let body = vec![7u8; SIZE - 1];
    let address = "0".repeat(64);
    let mut stalled = Vec::with_capacity(UPLOADS);
    for _ in 0..UPLOADS {
        let mut s = TcpStream::connect(&addr).await?;
        let head =
            format!("PUT /storage/{address} HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\n\r\n");
        s.write_all(head.as_bytes()).await?;
        stalled.push(s);
    }
    // Write the bodies concurrently; writes block once the server stops reading.
    let writers = stalled.into_iter().map(|mut s| {
        let body = body.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(20), s.write_all(&body)).await;
            s
        })
    });
    let writers: Vec<_> = writers.collect();
    let mut peak = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss_bytes(pid)?);
    }
    let http = reqwest::Client::new();
    assert_eq!(get_id(&http, server.url()).await?, 200, "still answering");
    let limit = BUDGET + (100 << 20);
    assert!(
        peak < limit,
        "RSS peaked at {} MiB with {UPLOADS} stalled uploads (started at {} MiB; budget {} MiB + 100 MiB)",
        peak >> 20,
        before >> 20,
        BUDGET >> 20
    );
    for writer in writers {
        drop(writer.await?);
    }
    assert_eq!(get_id(&http, server.url()).await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_1024_file_limit_the_server_answers_once_idle_connections_are_reaped()
-> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    raise_fd_limit(4_000)?;
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start_limited(
        "storage-server",
        &dir.path().join("storage"),
        &["--idle-timeout-ms", "3000"],
        Some(1024),
    )?;
    let addr = host_port(server.url())?;
    let idle = connect_many(&addr, 1_100).await?;
    // Over the cap, connections are closed at once rather than left hanging in an
    // accept-error loop; after the idle ones are reaped, new requests answer.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut answered = false;
    for _ in 0..40 {
        if let Ok(200) = get_id(&http, server.url()).await {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        answered,
        "no answer after idle connections were reaped:\n{}",
        server.logs()
    );
    let still_open = still_open_at(idle, Instant::now() + Duration::from_secs(3)).await;
    assert_eq!(still_open, 0);
    assert!(
        !server.logs().contains("panicked"),
        "server log:\n{}",
        server.logs()
    );
    Ok(())
}
