//! The real `storage-server` binary deleting blobs and compacting its packs, killed
//! with SIGKILL at random moments of compaction: after every restart each live blob
//! is still served and hashes to its address, and no deleted blob comes back.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use integration_tests::ServerProcess;
use invariant_spec::{Id, StorageClient};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};

/// Value of the unlabelled metric `name` on the server at `url`.
async fn metric(url: &str, name: &str) -> anyhow::Result<Option<f64>> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok()))
}

/// Every live blob is served with bytes hashing to its address; no deleted one is.
async fn check(url: &str, live: &BTreeSet<Id>, deleted: &BTreeSet<Id>) -> anyhow::Result<()> {
    let client = StorageClient::new(url)?;
    for id in live {
        let data = client.get_bytes(id).await?;
        let data = data.ok_or_else(|| anyhow::anyhow!("live blob {id} lost"))?;
        anyhow::ensure!(Id::of_content(&data) == *id, "blob {id} has wrong bytes");
    }
    for id in deleted {
        anyhow::ensure!(
            client.get_bytes(id).await?.is_none(),
            "deleted blob {id} came back"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_compaction_keeps_live_blobs_and_deleted_ones_gone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("storage");
    let no_compaction = ["--allow-open-delete", "--compaction-interval", "0"];
    let mut rng = StdRng::seed_from_u64(7);

    // Fill four packs (one per lane) with about 12 MB, then delete most of it.
    let mut server = ServerProcess::start("storage-server", &data, &no_compaction)?;
    let mut uploads = Vec::new();
    for worker in 0..8u64 {
        let client = StorageClient::new(server.url())?;
        let mut rng = StdRng::seed_from_u64(100 + worker);
        uploads.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..375 {
                let mut blob = vec![0u8; rng.random_range(1000..7000)];
                rng.fill_bytes(&mut blob);
                ids.push(client.put_bytes(Bytes::from(blob)).await?);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut live = BTreeSet::new();
    for upload in uploads {
        live.extend(upload.await??);
    }
    let client = StorageClient::new(server.url())?;
    let doomed: Vec<Id> = live
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.7))
        .collect();
    for batch in doomed.chunks(500) {
        let report = client.delete_many(batch).await?;
        anyhow::ensure!(report.deleted == batch.len() as u64, "{report:?}");
    }
    let mut deleted: BTreeSet<Id> = doomed.into_iter().collect();
    live.retain(|id| !deleted.contains(id));
    server.stop()?;

    // Five restarts with slow compaction, each killed at a random moment after
    // compaction began reading; deletes go on meanwhile.
    let compacting = [
        "--allow-open-delete",
        "--compaction-interval",
        "1",
        "--compaction-threshold",
        "0.9",
        "--compaction-mb-per-s",
        "3",
    ];
    let mut uncertain = BTreeSet::new();
    for round in 0..5 {
        let mut server = ServerProcess::start("storage-server", &data, &compacting)?;
        let url = server.url().to_string();
        let started = tokio::time::Instant::now();
        while metric(&url, "invariant_storage_compaction_bytes_total")
            .await?
            .unwrap_or(0.0)
            == 0.0
        {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(20),
                "round {round}: compaction never started; log:\n{}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Delete live blobs one by one while compaction runs, until the kill: some
        // after compaction copied them, before it committed.
        let candidates: Vec<Id> = {
            let mut all: Vec<Id> = live.iter().copied().collect();
            all.shuffle(&mut rng);
            all.truncate(40);
            all
        };
        let progress: Arc<Mutex<(Vec<Id>, Option<Id>)>> = Arc::default();
        let deleter = {
            let (client, progress, candidates) = (
                StorageClient::new(&url)?,
                progress.clone(),
                candidates.clone(),
            );
            tokio::spawn(async move {
                for id in candidates {
                    progress.lock().expect("lock").1 = Some(id);
                    match client.delete(&id).await {
                        Ok(true) => {
                            let mut p = progress.lock().expect("lock");
                            p.0.push(id);
                            p.1 = None;
                        }
                        Ok(false) => panic!("live blob {id} was not held"),
                        Err(_) => break, // killed
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        };
        let wait = rng.random_range(0..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill9()?;
        deleter.await?;
        let (acked, in_flight) = progress.lock().expect("lock").clone();
        for id in acked {
            live.remove(&id);
            deleted.insert(id);
        }
        if let Some(id) = in_flight {
            live.remove(&id);
            uncertain.insert(id);
        }

        let mut server = ServerProcess::start("storage-server", &data, &no_compaction)?;
        check(server.url(), &live, &deleted)
            .await
            .map_err(|e| anyhow::anyhow!("round {round} (killed {wait} ms in): {e}"))?;
        server.stop()?;
    }

    // Finally compaction runs to the end: every dead record is gone from disk.
    let all_dead = [
        "--allow-open-delete",
        "--compaction-interval",
        "1",
        "--compaction-threshold",
        "1",
        "--compaction-mb-per-s",
        "0",
    ];
    let mut server = ServerProcess::start("storage-server", &data, &all_dead)?;
    let started = tokio::time::Instant::now();
    while metric(server.url(), "invariant_storage_dead_bytes")
        .await?
        .unwrap_or(1.0)
        > 0.0
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "dead bytes left; log:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check(server.url(), &live, &deleted).await?;
    server.stop()?;
    let on_disk: BTreeSet<Id> = storage_server::pack::verify_packs(&data)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    anyhow::ensure!(
        on_disk
            .iter()
            .all(|id| live.contains(id) || uncertain.contains(id)),
        "a deleted blob's record survived compaction"
    );
    anyhow::ensure!(live.iter().all(|id| on_disk.contains(id)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_right_after_deletes_of_fresh_blobs_keeps_them_deleted() -> anyhow::Result<()> {
    // Blobs indexed less than a second ago are indexed by commits not yet durable; a
    // delete's durable commit must make their pack's covered length durable too, or
    // the recovery scan at the next open would index the deleted records again.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("storage");
    let args = ["--allow-open-delete", "--compaction-interval", "0"];
    let mut rng = StdRng::seed_from_u64(11);
    let mut live = BTreeSet::new();
    let mut deleted = BTreeSet::new();
    for round in 0..3 {
        let mut server = ServerProcess::start("storage-server", &data, &args)?;
        let client = StorageClient::new(server.url())?;
        let mut fresh = Vec::new();
        for _ in 0..200 {
            let mut blob = vec![0u8; rng.random_range(100..5000)];
            rng.fill_bytes(&mut blob);
            fresh.push(client.put_bytes(Bytes::from(blob)).await?);
        }
        let (doomed, kept) = fresh.split_at(150);
        let report = client.delete_many(doomed).await?;
        anyhow::ensure!(report.deleted == 150, "{report:?}");
        // The last blobs, deleted one by one right before the kill.
        let mut kept = kept.to_vec();
        for id in kept.split_off(40) {
            anyhow::ensure!(client.delete(&id).await?, "{id} was not held");
            deleted.insert(id);
        }
        server.kill9()?;
        deleted.extend(doomed.iter().copied());
        live.extend(kept);
        let mut server = ServerProcess::start("storage-server", &data, &args)?;
        check(server.url(), &live, &deleted)
            .await
            .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        server.stop()?;
    }
    Ok(())
}
