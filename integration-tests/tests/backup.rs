//! The distributor's backup destination over real processes: a pinned tree of more
//! than 200 blocks is copied to a backup storage server outside the placement; after
//! all three placement servers are killed, the backup joins the broker and
//! `invariant download` restores the tree byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::{FAST_BROKER_CHECKS as BROKER_FLAGS, ServerProcess};
use invariant_spec::DistributorClient;

fn invariant(
    config_dir: &Path,
    broker: &str,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    integration_tests::up::invariant_cli(config_dir, broker, args)
}

/// Every file below `root` with its bytes.
fn files(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.insert(
                    path.strip_prefix(root)?.to_path_buf(),
                    std::fs::read(&path)?,
                );
            }
        }
    }
    Ok(out)
}

#[test]
fn a_tree_lost_with_every_placement_server_comes_back_from_the_backup() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config");
    let broker = ServerProcess::start("broker-server", &dir.path().join("broker"), BROKER_FLAGS)?;
    let mut storages = Vec::new();
    for i in 0..3 {
        storages.push(ServerProcess::start(
            "storage-server",
            &dir.path().join(format!("storage{i}")),
            &["--broker", broker.url(), "--register-interval", "1"],
        )?);
    }
    // The backup knows no broker: nothing but the distributor writes to it.
    let backup_dir = dir.path().join("backup");
    let mut backup = ServerProcess::start("storage-server", &backup_dir, &[])?;
    let distributor = ServerProcess::start(
        "distributor",
        &dir.path().join("distributor"),
        &[
            "--broker",
            broker.url(),
            "--health-interval",
            "1",
            "--backup-storage",
            backup.url(),
        ],
    )?;

    // 210 files of distinct content: more than 200 blocks with the directories.
    let source = dir.path().join("source");
    for d in 0..3 {
        std::fs::create_dir_all(source.join(format!("dir{d}")))?;
        for f in 0..70 {
            let text = format!("file {f} of folder {d}\n").repeat(20 + f);
            std::fs::write(source.join(format!("dir{d}/f{f}.txt")), text)?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let upload = loop {
        let upload = invariant(
            &config,
            broker.url(),
            &["upload", source.to_str().unwrap_or_default(), "--pin"],
        )?;
        if upload.status.success() || Instant::now() > deadline {
            break upload;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        upload.status.success(),
        "upload failed: {}",
        String::from_utf8_lossy(&upload.stderr)
    );
    let link = String::from_utf8(upload.stdout)?
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let link_file = dir.path().join("link.json");
    std::fs::write(&link_file, &link)?;

    // Every pinned block reaches the backup.
    let client = DistributorClient::new(distributor.url())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let backed_up = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let status = client.status().await?;
            if let Some(backup) = &status.backup
                && status.pinned >= 200
                && backup.blocks_behind == 0
                && backup.blocks_copied >= status.pinned
            {
                return anyhow::Ok(Some((status.pinned, backup.clone())));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(None)
    })?;
    let Some((pinned, status)) = backed_up else {
        anyhow::bail!(
            "the backup did not catch up: {:?}",
            runtime.block_on(client.status())?
        );
    };
    assert!(
        status.bytes_copied > 0 && status.last_error.is_none(),
        "{status:?}"
    );
    eprintln!("{pinned} pinned blocks on the backup");

    // Lose every placement server; the backup joins the network.
    for storage in &mut storages {
        storage.kill9()?;
    }
    backup.stop()?;
    let _backup = ServerProcess::start(
        "storage-server",
        &backup_dir,
        &["--broker", broker.url(), "--register-interval", "1"],
    )?;
    let target = dir.path().join("restored");
    let link_arg = format!("@{}", link_file.display());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = std::fs::remove_dir_all(&target);
        let download = invariant(
            &config,
            broker.url(),
            &["download", &link_arg, target.to_str().unwrap_or_default()],
        )?;
        if download.status.success() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "download from the backup failed: {}",
            String::from_utf8_lossy(&download.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(files(&target)?, files(&source)?);
    Ok(())
}
