//! `ehi serve` benchmark: HTTP search latency (p50/p99) and throughput at concurrency 1
//! and 8 against a 10,000-resource vault (one Patient per 100 resources, seeded
//! synthetic Observations) on an in-process network (3 storage servers, slots,
//! distributor on 127.0.0.1), for a token, a one-month date range and a name-prefix
//! query, each returning a page of 20 resources; first a cold pass over distinct pages
//! (every resource fetched from storage and decrypted), then repeated queries (the
//! search runs every time; the page's resources come from the in-memory cache).
//! Run with `cargo bench -p ehi-layer --bench serve`.
//! Targets: p99 ≤ 30 ms, ≥ 1,000 requests/s at concurrency 8.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::Instant;

use anyhow::ensure;
use common::{TestNet, input};
use ehi_layer::serve::{self, TokenKey};
use serde_json::Value;
use support::{ms, percentile, synthetic_bundle_with_prefix};

const RESOURCES: usize = 10_000;
const REQUESTS: usize = 400;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = TestNet::start(3, true).await?;
    let (keystore, _path, vault) = net.new_vault(dir.path()).await?;
    vault
        .import(vec![input(
            "synthetic.json",
            &synthetic_bundle_with_prefix(RESOURCES, 7, "syn"),
        )])
        .await?;
    vault.load_indexes().await?;
    let key = TokenKey::from_keystore(&keystore);
    let token = key.mint_patient(ehi_layer::time::now_ms() / 1000, 3600)?;
    let server = serve::start(Arc::new(vault), key, "127.0.0.1:0".parse()?).await?;
    let base = server.url().to_string();
    println!("vault: {RESOURCES} resources; server {base}");

    let client = reqwest::Client::new();
    // Cold pages: every page of a token query once (nothing cached yet): each request
    // fetches and decrypts 20 resource blobs from the storage servers.
    let mut cold = Vec::new();
    let started = Instant::now();
    for offset in (0..1600).step_by(20) {
        let url =
            format!("{base}/Observation?code=http://loinc.org%7C8867-4&_count=20&_offset={offset}");
        let t = Instant::now();
        let resp = client.get(&url).bearer_auth(&token).send().await?;
        ensure!(resp.status().is_success(), "status {}", resp.status());
        let _ = resp.bytes().await?;
        cold.push(t.elapsed());
    }
    println!(
        "search token (cold, uncached pages) c=1: p50 {:.2} ms, p99 {:.2} ms, {:.0} req/s ({} requests)",
        ms(percentile(&mut cold, 50)),
        ms(percentile(&mut cold, 99)),
        cold.len() as f64 / started.elapsed().as_secs_f64(),
        cold.len(),
    );
    // Then the same queries repeatedly (pages served from the in-memory cache of
    // decrypted resources after the first request; the index is searched every time).
    let queries = [
        (
            "token",
            "Observation?code=http://loinc.org%7C8867-4&_count=20",
        ),
        (
            "date range",
            "Observation?date=ge2020-03-01&date=lt2020-04-01&_count=20",
        ),
        ("string", "Patient?name=Mar&_count=20"),
    ];
    for (label, query) in queries {
        let url = format!("{base}/{query}");
        // Warm up (and check the answer).
        let first: Value = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            first["total"].as_u64().unwrap_or(0) > 0,
            "{label}: no match: {first}"
        );
        for concurrency in [1usize, 8] {
            let started = Instant::now();
            let per_task = REQUESTS / concurrency;
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (client, url, token) = (client.clone(), url.clone(), token.clone());
                tasks.push(tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let t = Instant::now();
                        let resp = client.get(&url).bearer_auth(&token).send().await?;
                        ensure!(resp.status().is_success(), "status {}", resp.status());
                        let _ = resp.bytes().await?;
                        samples.push(t.elapsed());
                    }
                    Ok::<_, anyhow::Error>(samples)
                }));
            }
            let mut samples = Vec::new();
            for task in tasks {
                samples.extend(task.await??);
            }
            let elapsed = started.elapsed();
            let n = samples.len();
            println!(
                "search {label:10} c={concurrency}: p50 {:.2} ms, p99 {:.2} ms, {:.0} req/s ({n} requests, total {})",
                ms(percentile(&mut samples, 50)),
                ms(percentile(&mut samples, 99)),
                n as f64 / elapsed.as_secs_f64(),
                first["total"],
            );
        }
    }
    server.stop().await?;
    net.stop().await;
    Ok(())
}
