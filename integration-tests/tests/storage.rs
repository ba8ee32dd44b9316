//! The real `storage-server` binary: round trip, restart, graceful shutdown, and
//! durability under kill -9 with concurrent uploads.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use integration_tests::ServerProcess;
use invariant_spec::{Id, StorageClient};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};

fn random_bytes(rng: &mut StdRng, len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    Bytes::from(data)
}

#[tokio::test]
async fn round_trip_through_the_typed_client() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start("storage-server", &dir.path().join("storage"), &[])?;
    let client = StorageClient::new(server.url())?;
    let mut rng = StdRng::seed_from_u64(1);

    let small = random_bytes(&mut rng, 1000);
    let big = random_bytes(&mut rng, 3 * 1024 * 1024 + 17);
    let small_id = client.put_bytes(small.clone()).await?;
    let big_id = client.post(big.clone()).await?;
    assert_eq!(big_id, Id::of_content(&big));

    assert_eq!(client.has(&small_id).await?, Some(1000));
    assert_eq!(client.get_bytes(&small_id).await?, Some(small));
    let mut stream = client.get(&big_id).await?.expect("big blob present");
    let mut received = Vec::new();
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk?);
    }
    assert_eq!(Bytes::from(received), big);
    assert_eq!(
        client.get_range(&big_id, 10..20).await?,
        Some(big.slice(10..20))
    );
    let absent = Id::of_content(b"never stored");
    assert_eq!(client.has(&absent).await?, None);
    assert!(client.get_bytes(&absent).await?.is_none());
    assert!(!client.fetch_supported().await?);
    Ok(())
}

#[tokio::test]
async fn restart_keeps_blobs_and_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("storage");
    let mut rng = StdRng::seed_from_u64(2);
    let blobs: Vec<Bytes> = (0..20)
        .map(|i| random_bytes(&mut rng, 100 + i * 40_000))
        .collect();

    let mut first = ServerProcess::start("storage-server", &data, &[])?;
    let client = StorageClient::new(first.url())?;
    let id_before = client.id().await?;
    for blob in &blobs {
        client.put_bytes(blob.clone()).await?;
    }
    let status = first.stop()?;
    assert!(status.success(), "graceful stop exits 0, got {status}");

    let second = ServerProcess::start("storage-server", &data, &[])?;
    let client = StorageClient::new(second.url())?;
    assert_eq!(client.id().await?, id_before);
    for blob in &blobs {
        let id = Id::of_content(blob);
        assert_eq!(client.get_bytes(&id).await?.as_ref(), Some(blob));
    }
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_upload_finish() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = ServerProcess::start("storage-server", &dir.path().join("storage"), &[])?;
    let client = StorageClient::new(server.url())?;
    let mut rng = StdRng::seed_from_u64(3);
    let chunks: Vec<Bytes> = (0..10).map(|_| random_bytes(&mut rng, 64 * 1024)).collect();
    let mut hasher = Sha256::new();
    for c in &chunks {
        hasher.update(c);
    }
    let id = Id::from_bytes(hasher.finalize().into());

    // A slow upload: one chunk every 100 ms.
    let body = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(c)
    });
    let upload = {
        let client = client.clone();
        tokio::spawn(async move { client.put_stream(&id, body).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.terminate()?;
    upload.await??;
    let status =
        tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(20))).await??;
    assert!(status.success(), "exit after draining: {status}");
    Ok(())
}

/// Every file under `blobs/ab/cd/` must hash to its own name, and every pack record
/// to its address; returns how many blobs there are.
fn check_every_blob_hashes_to_its_name(data_dir: &Path) -> anyhow::Result<usize> {
    let mut count = 0;
    let root = data_dir.join("blobs");
    for shard in std::fs::read_dir(&root)? {
        let shard = shard?;
        if shard.file_name() == "tmp" {
            let leftovers = std::fs::read_dir(shard.path())?.count();
            assert_eq!(leftovers, 0, "temp files survive a restart");
            continue;
        }
        for sub in std::fs::read_dir(shard.path())? {
            let sub = sub?;
            for file in std::fs::read_dir(sub.path())? {
                let file = file?;
                let name = format!(
                    "{}{}{}",
                    shard.file_name().to_string_lossy(),
                    sub.file_name().to_string_lossy(),
                    file.file_name().to_string_lossy()
                );
                let bytes = std::fs::read(file.path())?;
                assert_eq!(
                    Id::of_content(&bytes).to_string(),
                    name,
                    "blob file {} does not hash to its name",
                    file.path().display()
                );
                count += 1;
            }
        }
    }
    Ok(count + storage_server::pack::verify_packs(data_dir)?.len())
}

#[tokio::test]
async fn kill_9_during_uploads_loses_nothing_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("storage");
    let mut server = ServerProcess::start("storage-server", &data, &[])?;
    let url = server.url().to_string();
    let acked: Arc<Mutex<Vec<Id>>> = Arc::default();

    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let client = StorageClient::new(&url)?;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(100 + worker);
            // Bounded: at most 400 uploads per worker; the kill ends it much sooner.
            for _ in 0..400 {
                let len = if rng.random_bool(0.2) {
                    rng.random_range(300_000..1_500_000)
                } else {
                    rng.random_range(1..20_000)
                };
                let blob = random_bytes(&mut rng, len);
                let id = Id::of_content(&blob);
                match client.put(&id, blob).await {
                    Ok(()) => acked.lock().expect("lock").push(id),
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    // Let uploads run, then kill the server mid-flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9()?;
    for task in tasks {
        task.await?;
    }
    let acked: Vec<Id> = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 8,
        "uploads should have been acknowledged before the kill (got {})",
        acked.len()
    );

    let restarted = ServerProcess::start("storage-server", &data, &[])?;
    let on_disk = check_every_blob_hashes_to_its_name(&data)?;
    assert!(on_disk >= HashSet::<Id>::from_iter(acked.iter().copied()).len());
    let client = StorageClient::new(restarted.url())?;
    for id in &acked {
        let blob = client.get_bytes(id).await?;
        assert!(blob.is_some(), "acknowledged blob {id} lost after kill -9");
    }
    Ok(())
}
