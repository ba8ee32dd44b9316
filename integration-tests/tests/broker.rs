//! The real `broker-server` with real storage servers registering themselves:
//! liveness drops a killed server, a broker restart keeps the rest, and
//! `/storage/fetch` copies between storage servers resolved through the broker.

use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::ServerProcess;
use invariant_spec::{BrokerClient, Id, StorageClient};

/// Fast liveness so the test finishes quickly: a check every ~100 ms, drop after 3.
const LIVENESS: &[&str] = &[
    "--check-interval-ms",
    "100",
    "--check-jitter-ms",
    "20",
    "--check-failures",
    "3",
    "--check-timeout-ms",
    "500",
];

async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > end {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn storage_ids(broker: &BrokerClient) -> anyhow::Result<Vec<Id>> {
    let mut ids = broker.registered("storage").await?;
    ids.sort();
    Ok(ids)
}

#[tokio::test]
async fn killed_server_is_dropped_and_broker_restart_keeps_the_rest() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker_dir = dir.path().join("broker");
    let mut broker = ServerProcess::start("broker-server", &broker_dir, LIVENESS)?;
    let broker_url = broker.url().to_string();
    let with_broker = ["--broker", broker_url.as_str(), "--register-interval", "1"];

    let mut storages = Vec::new();
    for i in 0..3 {
        storages.push(ServerProcess::start(
            "storage-server",
            &dir.path().join(format!("storage-{i}")),
            &with_broker,
        )?);
    }
    let client = BrokerClient::new(&broker_url)?;
    let mut expected = Vec::new();
    for s in &storages {
        expected.push(StorageClient::new(s.url())?.id().await?);
    }
    expected.sort();
    wait_until(
        "3 storage registrations",
        Duration::from_secs(10),
        || async { Ok(storage_ids(&client).await? == expected) },
    )
    .await?;

    // kill -9 one storage server: liveness drops it, the others stay.
    let victim = StorageClient::new(storages[0].url())?.id().await?;
    storages[0].kill9()?;
    wait_until(
        "the killed server to be dropped",
        Duration::from_secs(10),
        || async { Ok(!storage_ids(&client).await?.contains(&victim)) },
    )
    .await?;
    let survivors: Vec<Id> = expected
        .iter()
        .copied()
        .filter(|id| *id != victim)
        .collect();
    assert_eq!(storage_ids(&client).await?, survivors);
    assert!(client.location(&victim).await?.is_none());

    // Restart the broker (kill -9: registrations were acknowledged, so they persist).
    broker.kill9()?;
    let broker = ServerProcess::start("broker-server", &broker_dir, LIVENESS)?;
    let restarted = BrokerClient::new(broker.url())?;
    assert_eq!(storage_ids(&restarted).await?, survivors);
    for id in &survivors {
        let location = restarted.location(id).await?.expect("survivor still known");
        assert!(!location.all_urls().is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn storage_fetch_goes_through_the_real_broker() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = ServerProcess::start("broker-server", &dir.path().join("broker"), LIVENESS)?;
    let with_broker = ["--broker", broker.url(), "--register-interval", "1"];
    let a = ServerProcess::start("storage-server", &dir.path().join("a"), &with_broker)?;
    let b = ServerProcess::start("storage-server", &dir.path().join("b"), &with_broker)?;
    let (a, b) = (StorageClient::new(a.url())?, StorageClient::new(b.url())?);
    let a_id = a.id().await?;
    let client = BrokerClient::new(broker.url())?;
    wait_until("a registered", Duration::from_secs(10), || async {
        Ok(client.registered("storage").await?.contains(&a_id))
    })
    .await?;

    assert!(b.fetch_supported().await?);
    let blob = Bytes::from(vec![7u8; 700_000]);
    let address = a.put_bytes(blob.clone()).await?;
    assert!(b.fetch(&address, &a_id).await?);
    assert_eq!(b.get_bytes(&address).await?, Some(blob));
    // Absent at the container, and unknown container: 404 → false.
    assert!(!b.fetch(&Id::of_content(b"absent"), &a_id).await?);
    let only_on_a = a.put_bytes(Bytes::from_static(b"only on a")).await?;
    assert!(!b.fetch(&only_on_a, &Id::of_content(b"nobody")).await?);
    assert_eq!(b.has(&only_on_a).await?, None);
    Ok(())
}
