//! Distributor figures, printed (no assertions on speed):
//!
//! 1. Pin throughput: ids/s of one `PUT /distributor/pin` of 100,000 ids (JSON array,
//!    then the newline-separated form) to an in-process distributor, durably committed.
//! 2. Repair: `REPAIR_BLOCKS` (default 256) blocks of 1 MiB placed on their 3 nearest of
//!    5 in-process storage servers; one server is stopped; the time until every block
//!    is back to 3 copies, compared with the loopback copy bandwidth measured in the same
//!    run (the same bytes copied GET → PUT between two storage servers, with the same
//!    parallelism as the distributor).
//! 3. Garbage-collection sweep: `SWEEP_BLOCKS` (default 100,000) pinned plus as many
//!    released blocks, every one on each of 3 in-process storage servers; the time of
//!    one sweep (grace 0) that deletes the released ones everywhere, in blocks/s, and
//!    the same number of blocks deleted with direct batch deletes from the three
//!    servers at once, measured in the same run.
//!
//! Run: `cargo bench -p distributor --bench repair` (all), or name stages:
//! `cargo bench -p distributor --bench repair -- sweep`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::extract::Path as UrlPath;
use axum::response::IntoResponse;
use bytes::Bytes;
use distributor::{Distributor, DistributorConfig};
use futures_util::StreamExt;
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::{DistributorClient, Id, StorageClient};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tempfile::TempDir;

const MIB: usize = 1024 * 1024;
const PIN_IDS: usize = 100_000;
const PARALLELISM: usize = 8;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |stage: &str| named.is_empty() || named.iter().any(|n| n == stage);
    runtime.block_on(async {
        if wanted("pin") {
            pin_throughput().await?;
        }
        if wanted("repair") {
            repair().await?;
        }
        if wanted("sweep") {
            sweep().await?;
        }
        Ok(())
    })
}

fn random_ids(seed: u64, n: usize) -> Vec<Id> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            Id::from_bytes(bytes)
        })
        .collect()
}

async fn launch(
    dir: &TempDir,
    broker: Option<&str>,
    config: DistributorConfig,
) -> anyhow::Result<Distributor> {
    let mut options = ServerOptions::ephemeral(Role::Distributor, dir.path());
    options.broker = broker.map(str::to_string);
    let ctx = ServerContext::prepare(options)?;
    Ok(distributor::launch(&ctx, config).await?)
}

async fn pin_throughput() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = launch(&dir, None, DistributorConfig::default()).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/distributor/pin", server.url());
    println!("pin throughput ({PIN_IDS} ids per request, in-process, durable commit):");
    for round in 0..3u64 {
        let ids = random_ids(round, PIN_IDS);
        let (form, body) = if round < 2 {
            ("JSON array", serde_json::to_string(&ids)?)
        } else {
            (
                "one per line",
                ids.iter().map(|id| format!("{id}\n")).collect(),
            )
        };
        let started = Instant::now();
        let response = http.put(&url).body(body).send().await?;
        let elapsed = started.elapsed();
        if !response.status().is_success() {
            bail!("pin answered {}", response.status());
        }
        println!(
            "  round {round} ({form}): {:>8.0} ids/s  ({:.0} ms)",
            PIN_IDS as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e3
        );
    }
    server.stop().await?;
    Ok(())
}

/// A minimal broker: location, registered and register.
async fn fake_broker() -> anyhow::Result<(String, Arc<Mutex<HashMap<Id, String>>>)> {
    let servers: Arc<Mutex<HashMap<Id, String>>> = Arc::default();
    let broker_id = Id::random();
    let lookup = Arc::clone(&servers);
    let location = move |UrlPath(id): UrlPath<String>| {
        let lookup = Arc::clone(&lookup);
        async move {
            let found = Id::parse(&id).ok().and_then(|id| {
                let table = lookup.lock().ok()?;
                table.get(&id).map(|url| (id, url.clone()))
            });
            match found {
                Some((id, url)) => {
                    axum::Json(serde_json::json!({"id": id, "urls": [url.clone()], "url": url}))
                        .into_response()
                }
                None => (axum::http::StatusCode::NOT_FOUND, "unknown").into_response(),
            }
        }
    };
    let table = Arc::clone(&servers);
    let register = move |axum::Json(body): axum::Json<serde_json::Value>| {
        let table = Arc::clone(&table);
        async move {
            let id = body["id"].as_str().and_then(|s| Id::parse(s).ok());
            let url = body["urls"][0].as_str().or(body["url"].as_str());
            if let (Some(id), Some(url), Ok(mut table)) = (id, url, table.lock()) {
                table.insert(id, url.to_string());
            }
            axum::Json(serde_json::json!({ "id": broker_id }))
        }
    };
    let router = axum::Router::new()
        .route("/broker/location/{id}", axum::routing::get(location))
        .route(
            "/broker/registered/{kind}",
            axum::routing::get(|| async { axum::Json(Vec::<Id>::new()) }),
        )
        .route("/broker/register", axum::routing::post(register.clone()))
        .route("/broker/register/", axum::routing::post(register));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((format!("http://{addr}"), servers))
}

struct Storage {
    _dir: TempDir,
    server: Server,
    client: StorageClient,
}

async fn start_storage(broker: &str) -> anyhow::Result<Storage> {
    let dir = tempfile::tempdir()?;
    let mut options = ServerOptions::ephemeral(Role::Storage, dir.path());
    options.broker = Some(broker.to_string());
    let ctx = ServerContext::prepare(options)?;
    let config = storage_server::StorageConfig {
        allow_open_delete: true,
        ..Default::default()
    };
    let server = storage_server::start(&ctx, config).await?;
    let client = StorageClient::new(server.url())?;
    Ok(Storage {
        _dir: dir,
        server,
        client,
    })
}

fn nearest(block: &Id, live: &[Id], n: usize) -> Vec<Id> {
    let mut sorted = live.to_vec();
    block.sort_by_distance(&mut sorted);
    sorted.truncate(n);
    sorted
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    while !check().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn repair() -> anyhow::Result<()> {
    let blocks_wanted: usize = std::env::var("REPAIR_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let (broker, registry) = fake_broker().await?;
    let mut storages = Vec::new();
    for _ in 0..5 {
        storages.push(start_storage(&broker).await?);
    }
    let spare = start_storage(&broker).await?;
    let ids: Vec<Id> = storages.iter().map(|s| s.server.id()).collect();
    wait_for("storage registrations", Duration::from_secs(30), || async {
        let table = registry.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(ids.iter().all(|id| table.contains_key(id)))
    })
    .await?;

    // Place every block on its 3 nearest servers directly (PUTs, 8 at a time).
    let mut rng = StdRng::seed_from_u64(99);
    let mut blocks = Vec::with_capacity(blocks_wanted);
    let mut uploads = Vec::new();
    for _ in 0..blocks_wanted {
        let mut data = vec![0u8; MIB];
        rng.fill_bytes(&mut data);
        let data = Bytes::from(data);
        let block = Id::of_content(&data);
        blocks.push(block);
        for target in nearest(&block, &ids, 3) {
            let index = ids.iter().position(|id| *id == target).context("target")?;
            uploads.push((storages[index].client.clone(), block, data.clone()));
        }
    }
    let placed = Instant::now();
    let results: Vec<_> = futures_util::stream::iter(uploads)
        .map(|(client, block, data)| async move { client.put(&block, data).await })
        .buffer_unordered(PARALLELISM)
        .collect()
        .await;
    for result in results {
        result?;
    }
    println!(
        "repair ({blocks_wanted} × 1 MiB blocks on 3 of 5 storage servers; placed in {:.1} s)",
        placed.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let config = DistributorConfig {
        broker_storages: false,
        health_interval: Duration::from_millis(500),
        parallelism: PARALLELISM,
        ..DistributorConfig::default()
    };
    let server = launch(&dir, Some(&broker), config).await?;
    let client = DistributorClient::new(server.url())?;
    client.register_storage(&ids).await?;
    wait_for("5 active servers", Duration::from_secs(30), || async {
        Ok(client.status().await?.storages_active == 5)
    })
    .await?;
    client.pin(&blocks).await?;
    wait_for(
        "initial placement confirmed",
        Duration::from_secs(300),
        || async {
            let s = client.status().await?;
            Ok(s.passes >= 1 && s.under_replicated == 0 && s.copies_in_flight == 0)
        },
    )
    .await?;
    if client.status().await?.copies_completed != 0 {
        bail!("initial placement should need no copies");
    }

    // The victim: the server in the most placements.
    let victim = (0..5)
        .max_by_key(|i| {
            blocks
                .iter()
                .filter(|b| nearest(b, &ids, 3).contains(&ids[*i]))
                .count()
        })
        .context("victim")?;
    let lost: Vec<Id> = blocks
        .iter()
        .filter(|b| nearest(b, &ids, 3).contains(&ids[victim]))
        .copied()
        .collect();
    let bytes = lost.len() * MIB;

    // Baseline: the same blocks copied GET → PUT from a surviving holder to the spare.
    let mut copies = Vec::new();
    for block in &lost {
        let holder = nearest(block, &ids, 3)
            .into_iter()
            .find(|id| *id != ids[victim])
            .context("holder")?;
        let index = ids.iter().position(|id| *id == holder).context("index")?;
        copies.push((storages[index].client.clone(), spare.client.clone(), *block));
    }
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(copies)
        .map(|(from, to, block)| async move {
            let stream = from.get(&block).await?.context("holder lacks block")?;
            to.put_stream(&block, stream).await?;
            Ok(())
        })
        .buffer_unordered(PARALLELISM)
        .collect()
        .await;
    for result in results {
        result?;
    }
    let baseline = started.elapsed();
    let baseline_bw = bytes as f64 / MIB as f64 / baseline.as_secs_f64();

    // Loss and repair.
    let stopped = storages.remove(victim);
    let before = client.status().await?.copies_completed;
    let t0 = Instant::now();
    stopped.server.stop().await?;
    let mut detected = None;
    let need = before + lost.len() as u64;
    loop {
        let s = client.status().await?;
        if s.storages_active == 4 && detected.is_none() {
            detected = Some(t0.elapsed());
        }
        if detected.is_some()
            && s.under_replicated == 0
            && s.copies_in_flight == 0
            && s.copies_completed >= need
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("timed out waiting for the repair: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = t0.elapsed();
    let detected = detected.unwrap_or(total);
    let repair = total.saturating_sub(detected);
    let copied = client.status().await?.copies_completed - before;

    // Check the result outside the timing.
    let live: Vec<Id> = storages.iter().map(|s| s.server.id()).collect();
    for block in &blocks {
        for target in nearest(block, &live, 3) {
            let index = live.iter().position(|id| *id == target).context("index")?;
            if storages[index].client.has(block).await?.is_none() {
                bail!("block {block} missing on {target} after repair");
            }
        }
    }

    let repair_bw = bytes as f64 / MIB as f64 / repair.as_secs_f64();
    println!(
        "  lost server held {} blocks ({} MiB); distributor copied {copied}",
        lost.len(),
        bytes / MIB
    );
    println!(
        "  loopback GET+PUT baseline ({PARALLELISM} parallel): {:.2} s = {baseline_bw:.1} MiB/s",
        baseline.as_secs_f64()
    );
    println!(
        "  loss detected after {:.2} s (health interval 0.5 s, lost after 2 misses)",
        detected.as_secs_f64()
    );
    println!(
        "  repair after detection: {:.2} s = {repair_bw:.1} MiB/s = {:.0}% of baseline bandwidth",
        repair.as_secs_f64(),
        100.0 * repair_bw / baseline_bw
    );
    println!(
        "  loss to 3 copies, detection included: {:.2} s",
        total.as_secs_f64()
    );
    server.stop().await?;
    Ok(())
}

/// Small distinct blobs: `seed` picks the series.
fn small_blobs(seed: u64, n: usize) -> Vec<(Id, Bytes)> {
    (0..n)
        .map(|i| {
            let data = Bytes::from(format!("sweep block {seed}/{i} {}", "x".repeat(40)));
            (Id::of_content(&data), data)
        })
        .collect()
}

async fn put_everywhere(storages: &[Storage], blobs: &[(Id, Bytes)]) -> anyhow::Result<()> {
    let uploads = storages.iter().flat_map(|s| {
        blobs
            .iter()
            .map(move |(id, data)| (s.client.clone(), *id, data.clone()))
    });
    let results: Vec<_> = futures_util::stream::iter(uploads)
        .map(|(client, id, data)| async move { client.put(&id, data).await })
        .buffer_unordered(64)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(())
}

async fn sweep() -> anyhow::Result<()> {
    let n: usize = std::env::var("SWEEP_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (broker, registry) = fake_broker().await?;
    let mut storages = Vec::new();
    for _ in 0..3 {
        storages.push(start_storage(&broker).await?);
    }
    let ids: Vec<Id> = storages.iter().map(|s| s.server.id()).collect();
    wait_for("storage registrations", Duration::from_secs(30), || async {
        let table = registry.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        Ok(ids.iter().all(|id| table.contains_key(id)))
    })
    .await?;
    let kept = small_blobs(1, n);
    let released = small_blobs(2, n);
    let baseline_blobs = small_blobs(3, n);
    let placed = Instant::now();
    put_everywhere(&storages, &kept).await?;
    put_everywhere(&storages, &released).await?;
    put_everywhere(&storages, &baseline_blobs).await?;
    println!(
        "sweep ({n} pinned + {n} released blocks, each on 3 storage servers; placed in {:.1} s)",
        placed.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    let config = DistributorConfig {
        broker_storages: false,
        health_interval: Duration::from_millis(500),
        gc_grace: Duration::ZERO,
        gc_interval: None,
        ..DistributorConfig::default()
    };
    let server = launch(&dir, Some(&broker), config).await?;
    let client = DistributorClient::new(server.url())?;
    client.register_storage(&ids).await?;
    wait_for("3 active servers", Duration::from_secs(30), || async {
        Ok(client.status().await?.storages_active == 3)
    })
    .await?;
    let all: Vec<Id> = kept.iter().chain(&released).map(|(id, _)| *id).collect();
    client.pin(&all).await?;
    wait_for("placement confirmed", Duration::from_secs(600), || async {
        let s = client.status().await?;
        Ok(s.passes >= 1 && s.under_replicated == 0 && s.copies_in_flight == 0)
    })
    .await?;
    let released_ids: Vec<Id> = released.iter().map(|(id, _)| *id).collect();
    client.unpin(&released_ids).await?;

    // Baseline: the same number of deletions sent straight to the three servers.
    let baseline_ids: Vec<Id> = baseline_blobs.iter().map(|(id, _)| *id).collect();
    let started = Instant::now();
    let deletes = storages.iter().map(|s| {
        let client = s.client.clone();
        let ids = &baseline_ids;
        async move {
            for chunk in ids.chunks(invariant_spec::storage::MAX_DELETE_BATCH) {
                client.delete_many(chunk).await?;
            }
            anyhow::Ok(())
        }
    });
    for result in futures_util::future::join_all(deletes).await {
        result?;
    }
    let baseline = started.elapsed();

    let started = Instant::now();
    let report = client.gc_run(false, |_| {}).await?;
    let elapsed = started.elapsed();
    if report.blocks != n as u64 {
        bail!(
            "the sweep collected {} of {n} blocks: {report:?}",
            report.blocks
        );
    }
    // Check outside the timing: released blocks gone, pinned ones kept.
    for storage in &storages {
        for (id, _) in released.iter().step_by(97) {
            if storage.client.has(id).await?.is_some() {
                bail!("{id} survived the sweep");
            }
        }
        for (id, _) in kept.iter().step_by(97) {
            if storage.client.has(id).await?.is_none() {
                bail!("pinned {id} was deleted");
            }
        }
    }
    println!(
        "  direct batch deletes of {n} blocks on 3 servers: {:.2} s = {:.0} blocks/s",
        baseline.as_secs_f64(),
        n as f64 / baseline.as_secs_f64()
    );
    println!(
        "  sweep: {:.2} s = {:.0} blocks/s ({} batches of at most {})",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        n.div_ceil(invariant_spec::storage::MAX_DELETE_BATCH),
        invariant_spec::storage::MAX_DELETE_BATCH
    );
    server.stop().await?;
    Ok(())
}
