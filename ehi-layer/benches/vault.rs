//! Vault benchmark against an in-process local network (broker, 3 storage servers,
//! slots, distributor on 127.0.0.1): import rate, cold open of a 10,000-resource vault,
//! and search latency (p50/p99) for a token, a date range and a string query.
//!
//! Data: `synthea -p 3 -s 42 -r 20240601` when the `synthea` command is installed,
//! topped up to 10,000 resources with seeded synthetic Observations; without synthea,
//! synthetic data only. Run with `cargo bench -p ehi-layer --bench vault`.
//! Targets: import ≥ 2,000 resources/s, cold open ≤ 1 s, search p99 ≤ 20 ms.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::{TestNet, input};
use ehi_layer::{Input, Vault};
use serde_json::Value;
use support::{ms, percentile, synthetic_bundle_with_prefix};

const TARGET_RESOURCES: usize = 10_000;
const SEARCH_ROUNDS: usize = 200;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let net = TestNet::start(3, true).await?;

    // Inputs: synthea patients, then synthetic observations up to the target.
    let mut inputs: Vec<Input> = Vec::new();
    let mut count = 0usize;
    if let Some(files) = common::synthea(3, 42, &dir.path().join("synthea"))? {
        for file in files {
            let bytes = std::fs::read(&file)?;
            let bundle: Value = serde_json::from_slice(&bytes)?;
            count += bundle["entry"].as_array().map_or(0, Vec::len);
            inputs.push(Input::from_bytes(file.display().to_string(), bytes));
        }
        println!("synthea: 3 patients, {count} resources");
    }
    let synthetic = TARGET_RESOURCES.saturating_sub(count);
    if synthetic > 0 {
        inputs.push(input("synthetic.json", &synthetic_bundle(synthetic, 7)));
        println!("synthetic: {synthetic} resources (seed 7)");
    }

    // Import.
    let (keystore, _path, vault) = net.new_vault(&dir.path().join("device")).await?;
    let started = Instant::now();
    let report = vault
        .import_with(inputs, &common::household(), None)
        .await?;
    let elapsed = started.elapsed();
    let stored = report.created + report.updated;
    println!(
        "import: {stored} resources in {:.2} s = {:.0} resources/s ({} blobs, {} attempt)",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64(),
        report.blobs_written,
        report.attempts
    );
    let status = vault.status().await?;
    println!(
        "vault: {} resources, {} blocks",
        status.types.values().sum::<usize>(),
        status.blocks
    );

    // A second, smaller import into the full vault (incremental cost).
    let started = Instant::now();
    let small = vault
        .import_with(
            vec![input(
                "small.json",
                &synthetic_bundle_with_prefix(500, 11, "inc"),
            )],
            &common::household(),
            None,
        )
        .await?;
    let elapsed = started.elapsed();
    println!(
        "incremental import: {} resources into a {}-resource vault in {:.3} s = {:.0} resources/s",
        small.created,
        stored,
        elapsed.as_secs_f64(),
        small.created as f64 / elapsed.as_secs_f64()
    );
    drop(vault);

    // Cold open (new connection pool, nothing cached): root + 8 manifests.
    let mut opens = Vec::new();
    let mut with_indexes = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let net_b = net.connect(Some(&keystore)).await?;
        let vault = Vault::open(net_b, &keystore).await?;
        opens.push(started.elapsed());
        vault.load_indexes().await?;
        with_indexes.push(started.elapsed());
    }
    println!(
        "cold open ({} resources): median {:.0} ms (root + manifests), {:.0} ms with every search index decoded",
        stored + small.created,
        ms(median(&mut opens)),
        ms(median(&mut with_indexes))
    );

    // Search.
    let vault = Vault::open(net.connect(Some(&keystore)).await?, &keystore).await?;
    vault.load_indexes().await?;
    let queries = [
        ("token", "Observation", "code=http://loinc.org|8867-4"),
        (
            "date range",
            "Observation",
            "date=ge2021-01-01&date=lt2021-07-01",
        ),
        ("string", "Patient", "name=mar"),
    ];
    for (label, resource_type, query) in queries {
        let (total, _) = vault.search_ids(resource_type, query).await?;
        let mut ids_only = Vec::with_capacity(SEARCH_ROUNDS);
        let mut page = Vec::with_capacity(SEARCH_ROUNDS);
        let paged = format!("{query}&_count=20");
        for _ in 0..SEARCH_ROUNDS {
            let started = Instant::now();
            vault.search_ids(resource_type, query).await?;
            ids_only.push(started.elapsed());
            let started = Instant::now();
            vault.search(resource_type, &paged).await?;
            page.push(started.elapsed());
        }
        println!(
            "search {label:10} ({resource_type}?{query}, {total} matches): index p50 {:.2} ms p99 {:.2} ms; \
             with a page of 20 resources fetched+decrypted p50 {:.2} ms p99 {:.2} ms",
            ms(percentile(&mut ids_only, 50)),
            ms(percentile(&mut ids_only, 99)),
            ms(percentile(&mut page, 50)),
            ms(percentile(&mut page, 99)),
        );
    }
    net.stop().await;
    Ok(())
}

fn median(samples: &mut [Duration]) -> Duration {
    percentile(samples, 50)
}

fn synthetic_bundle(n: usize, seed: u64) -> Value {
    synthetic_bundle_with_prefix(n, seed, "syn")
}
