//! Deletion and pack compaction benchmark (a figure, not a test).
//!
//! Two in-process storage servers (release profile, loopback, the client on the same
//! cores), each filled with unique 4 KiB packed blobs, reopened (so their packs are
//! closed), then three quarters of the blobs deleted:
//!
//! - server A: the batch delete through HTTP (`POST /storage/delete`, 10,000 addresses
//!   a request) in blobs/s, then compaction without a rate limit (MB/s read and written)
//!   while 16 clients GET 4 KiB live blobs;
//! - server B: 16 clients GET 4 KiB live blobs while idle, then while compaction runs at
//!   its default rate limit (`--compaction-mb-per-s 64`).
//!
//! Every GET's bytes are hashed and compared with the address. GET figures are p50/p99
//! latency and ops/s, idle and during compaction, from the same run.
//!
//! Run: `cargo bench -p storage-server --bench compaction` (`-- --quick` for a smaller
//! data set; `INVARIANT_BENCH_DIR=/path` to choose the disk).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::{Id, StorageClient};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use storage_server::pack::{
    CompactionConfig, CompactionReport, DEFAULT_COMPACTION_BYTES_PER_S, PackConfig,
};
use storage_server::peer::Peers;
use storage_server::store::BlobStore;
use storage_server::{AppState, DEFAULT_MAX_BLOB_SIZE};

const BLOB: usize = 4096;
const CLIENTS: usize = 16;

fn config(bytes_per_s: u64) -> PackConfig {
    PackConfig {
        compaction: CompactionConfig {
            bytes_per_s,
            // Only the bench's own call compacts.
            interval: Duration::ZERO,
            ..CompactionConfig::default()
        },
        ..PackConfig::default()
    }
}

/// Stores `count` unique blobs with 8 writer threads; returns their addresses.
fn fill(store: &BlobStore, count: usize, seed: u64) -> anyhow::Result<Vec<Id>> {
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || -> anyhow::Result<Vec<Id>> {
                let mut rng = StdRng::seed_from_u64(seed * 100 + t);
                let mut ids = Vec::new();
                for _ in 0..count / 8 {
                    let mut data = vec![0u8; BLOB];
                    rng.fill_bytes(&mut data);
                    ids.push(store.put(Bytes::from(data), None)?);
                }
                Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for thread in threads {
        ids.extend(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("writer panicked"))??,
        );
    }
    Ok(ids)
}

/// A server over a store filled with `count` blobs, reopened so every pack is closed.
async fn prepared(
    dir: &Path,
    count: usize,
    seed: u64,
    bytes_per_s: u64,
) -> anyhow::Result<(BlobStore, Server, Vec<Id>)> {
    let ctx = ServerContext::prepare(ServerOptions::ephemeral(Role::Storage, dir))?;
    let data_dir = ctx.data_dir().clone();
    let ids = {
        let store = BlobStore::open_with(&data_dir, DEFAULT_MAX_BLOB_SIZE, config(bytes_per_s))?;
        tokio::task::spawn_blocking(move || fill(&store, count, seed)).await??
    };
    let store = BlobStore::open_with(&data_dir, DEFAULT_MAX_BLOB_SIZE, config(bytes_per_s))?;
    let peers = Peers::new(&ctx.options.client, Vec::new())?;
    let state = AppState::new(store.clone(), None, peers).allowing_deletes(true);
    let server = invariant_runtime::serve(&ctx, storage_server::http::router(state)).await?;
    Ok((store, server, ids))
}

/// GET latencies of 16 clients reading random `ids` until `stop` (at least `least`).
async fn get_load(
    url: &str,
    ids: Arc<Vec<Id>>,
    stop: Arc<AtomicBool>,
    least: Duration,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (http, ids, stop) = (http.clone(), ids.clone(), stop.clone());
            let base = format!("{url}/storage/");
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(i as u64);
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) || started.elapsed() < least {
                    let id = ids[rng.random_range(0..ids.len())];
                    let at = Instant::now();
                    let response = http.get(format!("{base}{id}")).send().await?;
                    anyhow::ensure!(response.status() == 200, "GET {id}: {}", response.status());
                    let body = response.bytes().await?;
                    latencies.push(at.elapsed());
                    anyhow::ensure!(Id::of_content(&body) == id, "GET {id}: wrong bytes");
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((all, started.elapsed()))
}

fn print_gets(what: &str, latencies: &mut [Duration], elapsed: Duration) {
    latencies.sort_unstable();
    let at = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "  GET 4 KiB c={CLIENTS} {what:<28} {:>8.0} ops/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99),
    );
}

/// Runs a compaction on the blocking pool while 16 clients GET; prints both.
async fn compaction_under_load(
    what: &str,
    store: &BlobStore,
    url: &str,
    live: &Arc<Vec<Id>>,
) -> anyhow::Result<()> {
    let packs = store
        .packs()
        .ok_or_else(|| anyhow::anyhow!("packing is off"))?
        .clone();
    let stop = Arc::new(AtomicBool::new(false));
    let load = get_load(url, live.clone(), stop.clone(), Duration::ZERO);
    let compaction = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let report = packs.compact_now();
            stop.store(true, Ordering::Relaxed);
            (report, started.elapsed())
        })
    };
    let (gets, compacted) = tokio::join!(load, compaction);
    let (mut latencies, elapsed) = gets?;
    let (report, took) = compacted?;
    let report: CompactionReport = report?;
    let secs = took.as_secs_f64();
    println!(
        "  compaction {what:<22} {:>8.0} MB/s read  {:>6.0} MB/s written  ({} packs, {:.0} MB read, {:.0} MB reclaimed, {:.2} s)",
        report.read as f64 / 1e6 / secs,
        report.written as f64 / 1e6 / secs,
        report.packs,
        report.read as f64 / 1e6,
        report.reclaimed as f64 / 1e6,
        secs
    );
    print_gets(
        &format!("during compaction {what}"),
        &mut latencies,
        elapsed,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let base = match std::env::var_os("INVARIANT_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let count = if quick { 16_000 } else { 48_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "{count} unique 4 KiB blobs per server ({:.0} MB), 3/4 deleted",
            (count * BLOB) as f64 / 1e6
        );

        // Server A: batch deletes over HTTP, then unthrottled compaction.
        let (store, server, ids) = prepared(&base.path().join("a"), count, 1, 0).await?;
        let client = StorageClient::new(server.url())?;
        let (doomed, live) = split(&ids);
        let started = Instant::now();
        for batch in doomed.chunks(invariant_spec::storage::MAX_DELETE_BATCH) {
            let report = client.delete_many(batch).await?;
            anyhow::ensure!(report.deleted == batch.len() as u64, "{report:?}");
        }
        let took = started.elapsed().as_secs_f64();
        println!(
            "  POST /storage/delete ({} per request)  {:>8.0} blobs/s ({} blobs in {took:.2} s)",
            invariant_spec::storage::MAX_DELETE_BATCH,
            doomed.len() as f64 / took,
            doomed.len()
        );
        compaction_under_load("unthrottled", &store, server.url(), &live).await?;
        server.stop().await?;
        drop(store);

        // Server B: GETs idle, then during compaction at the default rate.
        let (store, server, ids) = prepared(
            &base.path().join("b"),
            count,
            2,
            DEFAULT_COMPACTION_BYTES_PER_S,
        )
        .await?;
        let (doomed, live) = split(&ids);
        store.delete_many(&doomed)?;
        let (mut idle, elapsed) = get_load(
            server.url(),
            live.clone(),
            Arc::new(AtomicBool::new(true)),
            Duration::from_secs(3),
        )
        .await?;
        print_gets("idle", &mut idle, elapsed);
        compaction_under_load("at 64 MB/s", &store, server.url(), &live).await?;
        server.stop().await?;
        anyhow::Ok(())
    })
}

/// Three quarters of `ids` to delete, the rest kept.
fn split(ids: &[Id]) -> (Vec<Id>, Arc<Vec<Id>>) {
    let mut doomed = Vec::with_capacity(ids.len());
    let mut live = Vec::with_capacity(ids.len() / 4 + 1);
    for (i, id) in ids.iter().enumerate() {
        if i % 4 == 0 {
            live.push(*id);
        } else {
            doomed.push(*id);
        }
    }
    (doomed, Arc::new(live))
}
