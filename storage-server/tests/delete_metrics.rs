//! The deletion and compaction metrics on `/metrics`. Alone in its test binary: the
//! metrics recorder is one per process, so no other server may change these values
//! while the test reads them.

use bytes::Bytes;
use invariant_runtime::{Role, ServerContext, ServerOptions};
use invariant_spec::{Id, StorageClient};
use storage_server::StorageConfig;
use storage_server::pack::{CompactionConfig, PackConfig};

/// The value of the metric line named `name` (no labels), if exported.
async fn metric(url: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_compaction_are_counted() {
    let dir = tempfile::tempdir().expect("data dir");
    let options = ServerOptions::ephemeral(Role::Storage, dir.path());
    let ctx = ServerContext::prepare(options).expect("prepare");
    let config = StorageConfig {
        allow_open_delete: true,
        pack: PackConfig {
            lanes: 1,
            max_pack: 64 * 1024,
            compaction: CompactionConfig {
                // Compacts the closed packs soon after the deletes.
                interval: std::time::Duration::from_millis(200),
                threshold: 0.5,
                bytes_per_s: 0,
            },
            ..PackConfig::default()
        },
        ..StorageConfig::default()
    };
    let server = storage_server::start(&ctx, config).await.expect("start");
    let url = server.url().to_string();
    let client = StorageClient::new(&url).expect("client");
    let mut stored = Vec::new();
    for i in 0..100u32 {
        let data = format!("blob {i} ").repeat(300).into_bytes();
        stored.push((
            client.post(Bytes::from(data.clone())).await.expect("post"),
            data,
        ));
    }
    let before = metric(&url, "invariant_storage_bytes")
        .await
        .expect("bytes gauge");
    let blobs_before = metric(&url, "invariant_storage_blobs")
        .await
        .expect("blobs gauge");
    let gone: Vec<Id> = stored.iter().take(80).map(|(id, _)| *id).collect();
    let gone_bytes: usize = stored.iter().take(80).map(|(_, d)| d.len()).sum();
    assert!(client.delete(&gone[0]).await.expect("delete"));
    let report = client.delete_many(&gone[1..]).await.expect("delete many");
    assert_eq!(report.deleted, 79);

    assert_eq!(
        metric(&url, "invariant_storage_deleted_blobs_total").await,
        Some(80.0)
    );
    assert_eq!(
        metric(&url, "invariant_storage_deleted_bytes_total").await,
        Some(gone_bytes as f64)
    );
    assert_eq!(
        metric(&url, "invariant_storage_bytes").await,
        Some(before - gone_bytes as f64)
    );
    assert_eq!(
        metric(&url, "invariant_storage_blobs").await,
        Some(blobs_before - 80.0)
    );
    // Dead records (with their 40-byte headers), until background compaction rewrites
    // the closed packs: it counts what it read and lowers the dead bytes.
    let dead_records = (gone_bytes + 80 * 40) as f64;
    let dead = metric(&url, "invariant_storage_dead_bytes")
        .await
        .expect("dead gauge");
    assert!(dead <= dead_records, "{dead} > {dead_records}");
    invariant_test_support::eventually("compaction runs", || async {
        let read = metric(&url, "invariant_storage_compaction_bytes_total").await;
        let dead = metric(&url, "invariant_storage_dead_bytes").await;
        read.is_some_and(|r| r > 0.0) && dead.is_some_and(|d| d < dead_records / 2.0)
    })
    .await;
    for (id, data) in stored.iter().skip(80) {
        assert_eq!(
            client.get_bytes(id).await.expect("get").expect("kept"),
            &data[..]
        );
    }
    for id in &gone {
        assert!(client.get_bytes(id).await.expect("get").is_none());
    }
    server.stop().await.expect("stop");
}
