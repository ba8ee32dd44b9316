//! A real network of processes: broker + 3 find servers + distributor + storage
//! servers. Pinned blocks land on their 3 nearest live storage servers, return to 3
//! copies after a kill -9, survive a distributor restart, and move to a new nearer
//! server; a blob is located from any find server by the iterative lookup, and a dead
//! container's records age out.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::{FAST_BROKER_CHECKS as BROKER_FLAGS, ServerProcess};
use invariant_spec::find::{FindAnswer, LookupOptions, lookup};
use invariant_spec::{BrokerClient, DistributorClient, FindClient, Id, StorageClient};

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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Storage {
    process: ServerProcess,
    client: StorageClient,
    id: Id,
}

async fn start_storage(
    dir: &Path,
    name: &str,
    broker: &str,
    find: &str,
) -> anyhow::Result<Storage> {
    let process = ServerProcess::start(
        "storage-server",
        &dir.join(name),
        &[
            "--broker",
            broker,
            "--register-interval",
            "1",
            "--find",
            find,
        ],
    )?;
    let client = StorageClient::new(process.url())?;
    let id = client.id().await?;
    Ok(Storage {
        process,
        client,
        id,
    })
}

fn nearest(block: &Id, storages: &[Id], n: usize) -> Vec<Id> {
    let mut ids = storages.to_vec();
    block.sort_by_distance(&mut ids);
    ids.truncate(n);
    ids.sort();
    ids
}

/// True when every block is held by each of its `n` nearest live storages.
async fn all_placed(blocks: &[Id], live: &[&Storage], n: usize) -> anyhow::Result<bool> {
    let ids: Vec<Id> = live.iter().map(|s| s.id).collect();
    for block in blocks {
        for target in nearest(block, &ids, n) {
            let Some(storage) = live.iter().find(|s| s.id == target) else {
                continue;
            };
            if storage.client.has(block).await?.is_none() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[tokio::test]
async fn distributor_keeps_three_copies_and_find_locates_blobs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let broker = ServerProcess::start("broker-server", &root.join("broker"), BROKER_FLAGS)?;
    let b = broker.url().to_string();
    let find_flags = |b: &str| -> Vec<String> {
        [
            "--broker",
            b,
            "--register-interval",
            "1",
            "--check-interval",
            "1",
            "--check-failures",
            "1",
            "--peer-refresh",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let flags = find_flags(&b);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let finds: Vec<ServerProcess> = (0..3)
        .map(|i| ServerProcess::start("find-server", &root.join(format!("find-{i}")), &flags))
        .collect::<anyhow::Result<_>>()?;
    let find_url = finds[0].url().to_string();

    let mut storages = Vec::new();
    for i in 0..5 {
        storages.push(start_storage(root, &format!("storage-{i}"), &b, &find_url).await?);
    }
    let broker_client = BrokerClient::new(&b)?;
    wait_until(
        "5 storage registrations",
        Duration::from_secs(15),
        || async { Ok(broker_client.registered("storage").await?.len() == 5) },
    )
    .await?;

    let distributor_flags = [
        "--broker",
        b.as_str(),
        "--register-interval",
        "1",
        "--health-interval",
        "0.3",
        "--repair-interval",
        "1",
    ];
    let mut distributor =
        ServerProcess::start("distributor", &root.join("distributor"), &distributor_flags)?;
    let dist = DistributorClient::new(distributor.url())?;

    // 200 blobs written to one storage server, then pinned.
    let mut blocks = Vec::new();
    for i in 0..200u32 {
        let blob = Bytes::from(format!("network blob {i}").repeat(50));
        blocks.push(storages[0].client.put_bytes(blob).await?);
    }
    dist.pin(&blocks).await?;
    let all_ids: Vec<Id> = storages.iter().map(|s| s.id).collect();
    let live: Vec<&Storage> = storages.iter().collect();
    wait_until(
        "200 blocks on their 3 nearest",
        Duration::from_secs(60),
        || async { all_placed(&blocks, &live, 3).await },
    )
    .await?;
    for placement in dist.blocks(&blocks).await? {
        let mut reported = placement.storages.clone();
        reported.sort();
        assert_eq!(reported, nearest(&placement.block, &all_ids, 3));
    }

    // Find: the blob is located from any of the three find servers.
    let probe = blocks[0];
    for find in &finds {
        let client = FindClient::new(find.url())?;
        let found = Arc::new(Mutex::new(Vec::new()));
        wait_until("lookup to find holders", Duration::from_secs(20), || {
            let (client, broker_client, found) =
                (client.clone(), broker_client.clone(), found.clone());
            async move {
                let holders =
                    lookup(&broker_client, &client, &probe, LookupOptions::default()).await?;
                let any = !holders.is_empty();
                *found.lock().expect("lock") = holders;
                Ok(any)
            }
        })
        .await?;
        let found = found.lock().expect("lock").clone();
        assert!(found.iter().all(|id| all_ids.contains(id)));
    }

    // kill -9 the storage server holding the most placements; copies return to 3.
    let victim_index = (1..5)
        .max_by_key(|i| {
            blocks
                .iter()
                .filter(|blk| nearest(blk, &all_ids, 3).contains(&storages[*i].id))
                .count()
        })
        .expect("a victim");
    let victim_id = storages[victim_index].id;
    let victim_block = *blocks
        .iter()
        .find(|blk| nearest(blk, &all_ids, 3).contains(&victim_id))
        .expect("the victim holds some block");
    let find0 = FindClient::new(&find_url)?;
    wait_until(
        "find to know the victim holds a block",
        Duration::from_secs(20),
        || async {
            Ok(find0
                .find(&victim_block)
                .await?
                .contains(&FindAnswer::Has(victim_id)))
        },
    )
    .await?;
    storages[victim_index].process.kill9()?;
    let live: Vec<&Storage> = storages.iter().filter(|s| s.id != victim_id).collect();
    wait_until(
        "3 live copies after kill -9",
        Duration::from_secs(60),
        || async { all_placed(&blocks, &live, 3).await },
    )
    .await?;

    // The dead container's find records age out.
    let find0 = FindClient::new(&find_url)?;
    wait_until(
        "dead container to age out of find",
        Duration::from_secs(30),
        || async {
            let answers = find0.find(&victim_block).await?;
            Ok(!answers.contains(&FindAnswer::Has(victim_id)))
        },
    )
    .await?;

    // Distributor restart (kill -9): pins and placement intact.
    distributor.kill9()?;
    let distributor =
        ServerProcess::start("distributor", &root.join("distributor"), &distributor_flags)?;
    let dist = DistributorClient::new(distributor.url())?;
    assert_eq!(dist.status().await?.pinned, 200);
    let live_ids: Vec<Id> = live.iter().map(|s| s.id).collect();
    wait_until(
        "placement over live servers after restart",
        Duration::from_secs(30),
        || async {
            let placements = dist.blocks(&blocks).await?;
            Ok(placements.iter().all(|p| {
                let mut reported = p.storages.clone();
                reported.sort();
                reported == nearest(&p.block, &live_ids, 3)
            }))
        },
    )
    .await?;

    // A sixth storage server: blocks whose nearest set now includes it are copied to it.
    let sixth = start_storage(root, "storage-5", &b, &find_url).await?;
    let mut with_sixth = live.clone();
    with_sixth.push(&sixth);
    let ids6: Vec<Id> = with_sixth.iter().map(|s| s.id).collect();
    let moved: Vec<Id> = blocks
        .iter()
        .copied()
        .filter(|blk| nearest(blk, &ids6, 3).contains(&sixth.id))
        .collect();
    assert!(
        !moved.is_empty(),
        "the sixth server should be near some block"
    );
    wait_until(
        "blocks copied to the sixth server",
        Duration::from_secs(60),
        || async {
            for block in &moved {
                if sixth.client.has(block).await?.is_none() {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    Ok(())
}
