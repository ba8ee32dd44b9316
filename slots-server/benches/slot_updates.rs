//! Slot update benchmark (a figure, not a test).
//!
//! Starts the `slots-server` binary built by this `cargo bench` run (release profile),
//! then measures durable compare-and-swap updates through the typed client with 1 and
//! with 16 concurrent clients, each on its own slot: updates/s, p50, p99, and the mean
//! number of updates per committed transaction (group commit), read from `/metrics`.
//! In the same run it measures the machine's limit: 4 KiB writes each followed by
//! fdatasync on the filesystem holding the data directory.
//!
//! Then, in the same run, it compares security modes side by side: CAS updates with
//! 16 clients against a fresh server in open mode, with token checks
//! (`--auth-root-key`, the clients sending a `slots:write` token), and with HTTPS plus
//! token checks.
//!
//! Run: `cargo bench -p slots-server --bench slot_updates`
//! (`-- --quick` for a shorter run; `-- --modes-only` for just the security modes;
//! `INVARIANT_BENCH_DIR=/path` to choose the disk).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use invariant_spec::slots::{RegisterRequest, UpdateRequest};
use invariant_spec::{Id, SlotsClient};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let base = match std::env::var_os("INVARIANT_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };

    println!("machine limit");
    let syncs = fdatasync_4k_per_s(base.path(), if quick { 500 } else { 3000 })?;
    println!("  4 KiB write + fdatasync   {syncs:>9.0} /s");

    let modes_only = std::env::args().any(|a| a == "--modes-only");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if !modes_only {
        let (mut server, url) = start_server(&base.path().join("data"), &[])?;
        let result = runtime.block_on(classic(&url, quick));
        let _ = server.kill();
        let _ = server.wait();
        result?;
    }
    runtime.block_on(security_modes(base.path(), quick))
}

/// Starts the server binary with `extra` options; returns it and its url.
fn start_server(
    data: &std::path::Path,
    extra: &[std::ffi::OsString],
) -> anyhow::Result<(std::process::Child, String)> {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_slots-server"));
    invariant_test_support::start_binary(bin, data, extra).context("starting slots-server")
}

/// token checks, each against a fresh server.
async fn security_modes(base: &std::path::Path, quick: bool) -> anyhow::Result<()> {
    use invariant_test_support::{SECURITY_MODES, SecuritySetup};
    let setup = SecuritySetup::new(base);
    let token = setup.auth.token("bench", "slots:write");
    let per_client = if quick { 200 } else { 1000 };
    let mut rng = StdRng::seed_from_u64(1600);
    println!();
    println!("security modes, CAS updates with 16 clients (fresh server each)");
    println!(
        "{:<12} {:>10} {:>9} {:>9}",
        "mode", "ops/s", "p50 ms", "p99 ms"
    );
    let mut rates = Vec::new();
    for mode in SECURITY_MODES {
        let data = base.join(format!("data-{}", mode.name));
        let (mut server, url) = start_server(&data, &setup.server_args(mode))?;
        let http = setup.client(mode, &token);
        let outcome = async {
            let client = SlotsClient::from_endpoint(invariant_spec::http::Endpoint::with_client(
                &url, http,
            )?);
            run(&client, &mut rng, 16, per_client).await
        }
        .await;
        let _ = server.kill();
        let _ = server.wait();
        let run = outcome?;
        println!(
            "{:<12} {:>10.0} {:>9.2} {:>9.2}",
            mode.name,
            run.ops_per_s(),
            run.percentile(0.50),
            run.percentile(0.99)
        );
        rates.push((mode.name, run.ops_per_s()));
    }
    println!();
    println!("targets (relative to open mode, same run)");
    let open = rates[0].1;
    for (name, rate) in &rates[1..] {
        let goal = 0.85 * open;
        let verdict = if *rate >= goal { "met" } else { "MISSED" };
        println!("  {name}: CAS c=16 within 15% (ops/s) {rate:>10.0} / {goal:>8.0}  {verdict}");
    }
    Ok(())
}

async fn classic(url: &str, quick: bool) -> anyhow::Result<()> {
    let url = url.to_string();
    {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        let client = SlotsClient::from_endpoint(invariant_spec::http::Endpoint::with_client(
            &url,
            http.clone(),
        )?);
        let mut rng = StdRng::seed_from_u64(1500);
        println!();
        println!(
            "{:<24} {:>7} {:>8} {:>10} {:>9} {:>9} {:>10}",
            "op", "clients", "count", "ops/s", "p50 ms", "p99 ms", "per commit"
        );
        let mut figures = Vec::new();
        for (clients, per_client) in [(1usize, 3000usize), (16, 1000)] {
            let per_client = if quick { per_client / 5 } else { per_client };
            let before = batch_totals(&http, &url).await.unwrap_or((0.0, 0.0));
            let run = run(&client, &mut rng, clients, per_client).await?;
            let after = batch_totals(&http, &url).await;
            let per_commit = match (before, after) {
                ((s0, c0), Some((s1, c1))) if c1 > c0 => {
                    format!("{:.1}", (s1 - s0) / (c1 - c0))
                }
                _ => "-".to_string(),
            };
            println!(
                "{:<24} {:>7} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>10}",
                "CAS update (durable)",
                clients,
                run.latencies.len(),
                run.ops_per_s(),
                run.percentile(0.50),
                run.percentile(0.99),
                per_commit
            );
            figures.push((clients, run.ops_per_s()));
        }
        println!();
        println!("targets");
        for (clients, measured) in figures {
            let goal = if clients == 1 { 1_500.0 } else { 9_000.0 };
            let verdict = if measured >= goal { "met" } else { "MISSED" };
            println!(
                "  updates/s with {clients:>2} client(s) on distinct slots {measured:>10.0} / {goal:>6.0}  {verdict}"
            );
        }
        anyhow::Ok(())
    }
}

struct Run {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Run {
    fn ops_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency at quantile `q`, in milliseconds.
    fn percentile(&self, q: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

fn random_id(rng: &mut StdRng) -> Id {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    Id::from_bytes(bytes)
}

/// `clients` tasks, each registering its own slot then making `per_client` sequential
/// CAS updates of it.
async fn run(
    client: &SlotsClient,
    rng: &mut StdRng,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<Run> {
    let mut tasks = Vec::new();
    let mut plans = Vec::new();
    for _ in 0..clients {
        let slot = random_id(rng);
        let first = random_id(rng);
        if !client
            .register(&RegisterRequest::unsigned(slot, first))
            .await?
        {
            bail!("slot {slot} already registered");
        }
        let chain: Vec<Id> = (0..per_client).map(|_| random_id(rng)).collect();
        plans.push((slot, first, chain));
    }
    let started = Instant::now();
    for (slot, first, chain) in plans {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(chain.len());
            let mut previous = first;
            for next in chain {
                let began = Instant::now();
                client
                    .update(&slot, &UpdateRequest::unsigned(previous, next))
                    .await?;
                latencies.push(began.elapsed());
                previous = next;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Run {
        latencies,
        elapsed: started.elapsed(),
    })
}

/// `(sum, count)` of the server's `slots_commit_batch_size`, if exported.
async fn batch_totals(http: &reqwest::Client, url: &str) -> Option<(f64, f64)> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((
        value("slots_commit_batch_size_sum")?,
        value("slots_commit_batch_size_count")?,
    ))
}

fn fdatasync_4k_per_s(dir: &std::path::Path, count: usize) -> anyhow::Result<f64> {
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut buf = vec![0u8; 4096];
    StdRng::seed_from_u64(1).fill_bytes(&mut buf);
    let started = Instant::now();
    for _ in 0..count {
        file.write_all(&buf)?;
        file.sync_data()?;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}
