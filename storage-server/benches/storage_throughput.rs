//! Storage throughput benchmark (a figure, not a test).
//!
//! Starts the `storage-server` binary built by this `cargo bench` run (release
//! profile), then measures at concurrency 1 and 16: PUT and GET of unique 1 MiB blobs
//! (MB/s, p50, p99) and of 4 KiB blobs (ops/s, p50, p99). In the same run it measures the
//! machine's limits: single-core SHA-256 throughput and fdatasync'd sequential writes
//! (1 MiB write + fdatasync, repeated) on the filesystem holding the data directory.
//!
//! Then, in the same run, it compares security modes side by side: PUT 1 MiB and GET
//! 4 KiB at concurrency 16 against a fresh server in open mode, with token checks
//! (`--auth-root-key`, the client sending a `storage:write` token), and with HTTPS plus
//! token checks. The modes run interleaved over several rounds and are compared by
//! their medians, so that drift over the run does not favour one of them.
//!
//! Run: `cargo bench -p storage-server --bench storage_throughput`
//! (`-- --quick` for a shorter run; `-- --modes-only` for just the security modes;
//! `INVARIANT_BENCH_DIR=/path` to choose the disk).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use invariant_spec::Id;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let base = match std::env::var_os("INVARIANT_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let scale = if quick { 4 } else { 1 };

    println!("machine limits");
    let sha = sha256_mb_per_s(if quick { 64 } else { 512 });
    println!("  sha256 single core        {sha:>9.0} MB/s");
    let sync_write = fdatasync_mb_per_s(base.path(), if quick { 32 } else { 256 })?;
    println!("  fdatasync'd 1 MiB writes  {sync_write:>9.0} MB/s");
    let put_target = 0.8 * sha.min(sync_write);

    let modes_only = std::env::args().any(|a| a == "--modes-only");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if !modes_only {
        let (mut server, url) = start_server(&base.path().join("data"), &[])?;
        let result = runtime.block_on(classic(&url, scale, put_target));
        let _ = server.kill();
        let _ = server.wait();
        result?;
    }
    runtime.block_on(security_modes(base.path(), scale))
}

/// Starts the server binary with `extra` options; returns it and its url.
fn start_server(
    data: &std::path::Path,
    extra: &[std::ffi::OsString],
) -> anyhow::Result<(std::process::Child, String)> {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_storage-server"));
    invariant_test_support::start_binary(bin, data, extra).context("starting storage-server")
}

/// HTTPS plus token checks, each against a fresh server.
///
/// The machine drifts over a run (page cache, writeback, other load), so the modes are
/// interleaved: every round runs each mode once, in order, and a mode's figure is its
/// median over the rounds. Targets compare medians.
async fn security_modes(base: &std::path::Path, scale: usize) -> anyhow::Result<()> {
    use invariant_test_support::{SECURITY_MODES, SecuritySetup};
    let setup = SecuritySetup::new(base);
    let token = setup.auth.token("bench", "storage:write");
    let mut rng = StdRng::seed_from_u64(11);
    let rounds = if scale > 1 { 1 } else { 5 };
    println!();
    println!(
        "security modes at concurrency 16 (fresh server each; median of {rounds} interleaved rounds)"
    );
    // Over TLS the client negotiates HTTP/2 (one connection carries all 16 streams);
    // the extra `h1` row runs the same over 16 HTTP/1.1 connections, as open mode does,
    // so the cost of TLS itself can be told from the cost of one connection.
    let runs: Vec<_> = SECURITY_MODES
        .iter()
        .map(|m| (*m, m.name.to_string(), false))
        .chain(
            SECURITY_MODES
                .iter()
                .filter(|m| m.tls)
                .map(|m| (*m, format!("{} h1", m.name), true)),
        )
        .collect();
    // Per mode: (PUT MB/s, PUT p99 ms, GET ops/s, GET p99 ms) of each round.
    let mut figures = vec![Vec::new(); runs.len()];
    for round in 0..rounds {
        for (i, (mode, name, http1)) in runs.iter().enumerate() {
            let data = base.join(format!("data-{}-{round}", name.replace(' ', "-")));
            let (mut server, url) = start_server(&data, &setup.server_args(*mode))?;
            let client = if *http1 {
                setup.client_builder(*mode, &token).http1_only().build()?
            } else {
                setup.client(*mode, &token)
            };
            let outcome = async {
                warm_up(&client, &url, 16).await?;
                let big = unique_blobs(&mut rng, 256 / scale, MIB);
                let put = run(&client, &url, 16, Op::Put(big)).await?;
                let small = unique_blobs(&mut rng, 4000 / scale, 4096);
                run(&client, &url, 16, Op::Put(small.clone())).await?;
                let get = run(&client, &url, 16, Op::Get(cycle(&small, 5 * small.len()))).await?;
                anyhow::Ok((put, get))
            }
            .await;
            let _ = server.kill();
            let _ = server.wait();
            let _ = std::fs::remove_dir_all(&data);
            let (put, get) = outcome?;
            figures[i].push([
                put.mb_per_s(),
                put.percentile_ms(0.99),
                get.ops_per_s(),
                get.percentile_ms(0.99),
            ]);
        }
    }
    println!(
        "{:<12} {:>14} {:>9} {:>14} {:>9}   PUT MB/s per round",
        "mode", "PUT 1 MiB MB/s", "p99 ms", "GET 4 KiB op/s", "p99 ms"
    );
    let mut medians = Vec::new();
    for ((_, name, _), rows) in runs.iter().zip(&figures) {
        let m: Vec<f64> = (0..4).map(|k| median(rows.iter().map(|r| r[k]))).collect();
        let per_round: Vec<String> = rows.iter().map(|r| format!("{:.0}", r[0])).collect();
        println!(
            "{:<12} {:>14.0} {:>9.2} {:>14.0} {:>9.2}   {}",
            name,
            m[0],
            m[1],
            m[2],
            m[3],
            per_round.join(" ")
        );
        medians.push((name.clone(), m[0], m[2]));
    }
    let (open_put, open_get) = (medians[0].1, medians[0].2);
    println!();
    println!("targets (medians relative to open mode, same run)");
    for (name, put, get) in &medians[1..] {
        target(
            &format!("{name}: PUT 1 MiB within 15% (MB/s)"),
            *put,
            0.85 * open_put,
        );
        target(
            &format!("{name}: GET 4 KiB within 25% (ops/s)"),
            *get,
            0.75 * open_get,
        );
    }
    Ok(())
}

/// The median of some figures (0 for none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

async fn classic(url: &str, scale: usize, put_target: f64) -> anyhow::Result<()> {
    let url = url.to_string();
    {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let mut rng = StdRng::seed_from_u64(7);
        println!();
        println!(
            "{:<14} {:>4} {:>7} {:>11} {:>11} {:>9} {:>9}",
            "op", "conc", "count", "MB/s", "ops/s", "p50 ms", "p99 ms"
        );
        for concurrency in [1usize, 16] {
            let big_count = if concurrency == 1 { 64 } else { 256 } / scale;
            let big = unique_blobs(&mut rng, big_count, MIB);
            let put_big = run(&client, &url, concurrency, Op::Put(big.clone())).await?;
            report("PUT 1 MiB", concurrency, &put_big);
            let get_big = run(
                &client,
                &url,
                concurrency,
                Op::Get(cycle(&big, 4 * big_count)),
            )
            .await?;
            report("GET 1 MiB", concurrency, &get_big);

            let small_count = if concurrency == 1 { 2000 } else { 8000 } / scale;
            let small = unique_blobs(&mut rng, small_count, 4096);
            let put_small = run(&client, &url, concurrency, Op::Put(small.clone())).await?;
            report("PUT 4 KiB", concurrency, &put_small);
            let get_small = run(
                &client,
                &url,
                concurrency,
                Op::Get(cycle(&small, 5 * small_count)),
            )
            .await?;
            report("GET 4 KiB", concurrency, &get_small);

            if concurrency == 16 {
                println!();
                println!("targets at concurrency 16");
                target(
                    "PUT 1 MiB MB/s (80% of min(sha, sync write))",
                    put_big.mb_per_s(),
                    put_target,
                );
                target("GET 1 MiB MB/s", get_big.mb_per_s(), 1200.0);
                target("GET 4 KiB ops/s", get_small.ops_per_s(), 25_000.0);
                target("PUT 4 KiB ops/s", put_small.ops_per_s(), 5_000.0);
            }
        }
        anyhow::Ok(())
    }
}

fn target(name: &str, measured: f64, goal: f64) {
    let verdict = if measured >= goal { "met" } else { "MISSED" };
    println!("  {name:<46} {measured:>10.0} / {goal:>8.0}  {verdict}");
}

fn sha256_mb_per_s(mib: usize) -> f64 {
    let buf = vec![0x5au8; MIB];
    let started = Instant::now();
    let mut hasher = Sha256::new();
    for _ in 0..mib {
        hasher.update(&buf);
    }
    std::hint::black_box(hasher.finalize());
    mib as f64 * MIB as f64 / 1e6 / started.elapsed().as_secs_f64()
}

fn fdatasync_mb_per_s(dir: &std::path::Path, mib: usize) -> anyhow::Result<f64> {
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut buf = vec![0u8; MIB];
    StdRng::seed_from_u64(1).fill_bytes(&mut buf);
    let started = Instant::now();
    for _ in 0..mib {
        file.write_all(&buf)?;
        file.sync_data()?;
    }
    let rate = mib as f64 * MIB as f64 / 1e6 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

#[derive(Clone)]
struct Blob {
    id: Id,
    data: Bytes,
}

fn unique_blobs(rng: &mut StdRng, count: usize, size: usize) -> Arc<Vec<Blob>> {
    let blobs = (0..count)
        .map(|_| {
            let mut data = vec![0u8; size];
            rng.fill_bytes(&mut data);
            Blob {
                id: Id::of_content(&data),
                data: Bytes::from(data),
            }
        })
        .collect();
    Arc::new(blobs)
}

fn cycle(blobs: &Arc<Vec<Blob>>, count: usize) -> Arc<Vec<Blob>> {
    Arc::new(blobs.iter().cycle().take(count).cloned().collect())
}

enum Op {
    Put(Arc<Vec<Blob>>),
    Get(Arc<Vec<Blob>>),
}

struct Outcome {
    bytes: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Outcome {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
    fn ops_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

fn report(name: &str, concurrency: usize, o: &Outcome) {
    println!(
        "{name:<14} {concurrency:>4} {:>7} {:>11.1} {:>11.0} {:>9.3} {:>9.3}",
        o.latencies.len(),
        o.mb_per_s(),
        o.ops_per_s(),
        o.percentile_ms(0.5),
        o.percentile_ms(0.99)
    );
}

/// Opens the client's connections before anything is timed, so that the one-time
/// costs of a fresh process and connection (TLS handshakes, seeding the random
/// generators on both ends) are not counted as throughput of the mode.
async fn warm_up(client: &reqwest::Client, url: &str, concurrency: usize) -> anyhow::Result<()> {
    let requests = (0..2 * concurrency).map(|_| async {
        let response = client.get(format!("{url}/id")).send().await?;
        if !response.status().is_success() {
            bail!("GET /id answered {}", response.status());
        }
        response.bytes().await?;
        anyhow::Ok(())
    });
    for done in futures_util::future::join_all(requests).await {
        done?;
    }
    Ok(())
}

async fn run(
    client: &reqwest::Client,
    url: &str,
    concurrency: usize,
    op: Op,
) -> anyhow::Result<Outcome> {
    let (blobs, put) = match op {
        Op::Put(b) => (b, true),
        Op::Get(b) => (b, false),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, blobs, next) =
            (client.clone(), url.to_string(), blobs.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut bytes = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(blob) = blobs.get(i) else { break };
                let target = format!("{url}/storage/{}", blob.id);
                let t = Instant::now();
                if put {
                    let response = client.put(&target).body(blob.data.clone()).send().await?;
                    if !response.status().is_success() {
                        bail!("PUT answered {}", response.status());
                    }
                    bytes += blob.data.len();
                } else {
                    let response = client.get(&target).send().await?;
                    if !response.status().is_success() {
                        bail!("GET answered {}", response.status());
                    }
                    let body = response.bytes().await?;
                    if body.len() != blob.data.len() {
                        bail!(
                            "GET returned {} bytes, expected {}",
                            body.len(),
                            blob.data.len()
                        );
                    }
                    bytes += body.len();
                }
                latencies.push(t.elapsed());
            }
            anyhow::Ok((bytes, latencies))
        }));
    }
    let mut outcome = Outcome {
        bytes: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for worker in workers {
        let (bytes, latencies) = worker.await??;
        outcome.bytes += bytes;
        outcome.latencies.extend(latencies);
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}
