//! Garbage collection over `invariant up` (token checks on): on a network already
//! holding a pinned 20 MB tree, a pinned 100 MB tree, unpinned and swept, leaves the
//! storage servers' disks at their size before its upload (within 5%) and the first
//! tree intact; an ehi vault of three Synthea patients, deleted and swept, leaves none
//! of its blobs on any storage server.
//!
//! The distributor runs with a one-second grace period and sweeps only on request
//! (`invariant gc run`); storage compaction looks for sparse packs every second
//! (default: every minute) with its default threshold.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::bin_path;
use integration_tests::up::{CLIENT_ENV, Up, UpMode};
use invariant_spec::http::Endpoint;
use invariant_spec::{DistributorClient, Id, StorageClient};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Server settings for `up`: collect one second after the unpin, sweep on request,
/// look for packs to compact every second.
const GC_ENV: [(&str, &str); 3] = [
    ("INVARIANT_GC_GRACE", "1"),
    ("INVARIANT_GC_INTERVAL", "0"),
    ("INVARIANT_COMPACTION_INTERVAL", "1"),
];

/// `files` files of 1 MiB of random bytes (nothing compresses away) under `dir`.
fn random_tree(dir: &Path, seed: u64, files: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rng = StdRng::seed_from_u64(seed);
    for n in 0..files {
        let mut data = vec![0u8; 1 << 20];
        rng.fill_bytes(&mut data);
        std::fs::write(dir.join(format!("file-{n:03}.bin")), &data)?;
    }
    Ok(())
}

/// Uploads `dir` pinned; returns the file holding its content link.
fn upload_pinned(net: &Up, dir: &Path, link_file: &Path) -> anyhow::Result<PathBuf> {
    let stdout = ok(
        net.invariant(&["upload", dir.to_str().expect("utf-8"), "--pin"])?,
        "upload",
    )?;
    let link = stdout.lines().last().expect("link line").to_string();
    std::fs::write(link_file, &link)?;
    Ok(link_file.to_path_buf())
}

/// Bytes allocated on disk under `dir` (what `du` counts).
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            }
            total += meta.blocks() * 512;
        }
    }
    total
}

fn storage_dirs(net: &Up) -> Vec<PathBuf> {
    (1..=3)
        .map(|n| net.data_dir().join(format!("storage-{n}")))
        .collect()
}

fn storage_du(net: &Up) -> u64 {
    storage_dirs(net).iter().map(|d| du(d)).sum()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(output: Output, what: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        output.status.success(),
        "{what} failed: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    Ok(text(&output.stdout))
}

/// Clients of the distributor and of every storage server, as the operator.
fn clients(net: &Up) -> anyhow::Result<(DistributorClient, Vec<StorageClient>)> {
    let http = net.client_security()?.http_client()?;
    let distributor = DistributorClient::from_endpoint(Endpoint::with_client(
        net.url("distributor")?,
        http.clone(),
    )?);
    let mut storages = Vec::new();
    for n in 1..=3 {
        storages.push(StorageClient::from_endpoint(Endpoint::with_client(
            net.url(&format!("storage-{n}"))?,
            http.clone(),
        )?));
    }
    Ok((distributor, storages))
}

/// Waits until every pinned block has its 3 copies.
async fn replicated(distributor: &DistributorClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = distributor.status().await?;
        if status.pinned > 0
            && status.storages_active == 3
            && status.under_replicated == 0
            && status.copies_in_flight == 0
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not replicated in time: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every address a storage server lists.
async fn listing(storage: &StorageClient) -> anyhow::Result<BTreeSet<Id>> {
    let mut out = BTreeSet::new();
    let mut after = None;
    loop {
        let page = storage.list_page(after.as_ref(), 10_000).await?;
        out.extend(page.blobs.iter().map(|b| b.address));
        match page.next {
            Some(next) if !page.blobs.is_empty() => after = Some(next),
            _ => return Ok(out),
        }
    }
}

#[test]
fn an_unpinned_tree_leaves_the_disks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut net = Up::start_with_env(dir.path(), UpMode::default(), &GC_ENV)?;
    net.wait_registered(3, &["distribute"])?;
    let (distributor, _) = clients(&net)?;
    let runtime = tokio::runtime::Runtime::new()?;
    // The network already holds a pinned tree that must stay.
    let resident = dir.path().join("resident");
    random_tree(&resident, 20, 20)?;
    let resident_link = upload_pinned(&net, &resident, &dir.path().join("resident.json"))?;
    runtime.block_on(replicated(&distributor))?;
    let before = storage_du(&net);

    let source = dir.path().join("tree");
    random_tree(&source, 100, 100)?;
    let link_file = upload_pinned(&net, &source, &dir.path().join("link.json"))?;
    runtime.block_on(replicated(&distributor))?;
    let full = storage_du(&net);
    assert!(
        full > before + 250 * (1 << 20),
        "three copies of 100 MiB on disk: {before} -> {full}"
    );

    ok(
        net.invariant(&["unpin", "--tree", &format!("@{}", link_file.display())])?,
        "unpin",
    )?;
    let status = ok(net.invariant(&["gc", "status"])?, "gc status")?;
    assert!(status.contains("pending: "), "{status}");
    std::thread::sleep(Duration::from_millis(1500));
    let dry = ok(net.invariant(&["gc", "run", "--dry-run"])?, "dry run")?;
    assert!(dry.contains("would be collected"), "{dry}");
    let run = ok(net.invariant(&["gc", "run"])?, "gc run")?;
    assert!(run.contains("collected "), "{run}");
    let status = runtime.block_on(distributor.gc_status())?;
    assert!(status.deleted_blocks >= 100, "{status:?}");
    assert_eq!(status.pending_blocks, 0, "{status:?}");

    // Compaction reclaims the packed bytes in the background.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (low, high) = (before - before / 20, before + before / 20);
    loop {
        let now = storage_du(&net);
        if (low..=high).contains(&now) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "storage disks did not return to their size: {before} before the upload, {full} with it, {now} now (want {low}..={high})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The resident tree is whole.
    let restored = dir.path().join("restored");
    ok(
        net.invariant(&[
            "download",
            &format!("@{}", resident_link.display()),
            restored.to_str().expect("utf-8"),
        ])?,
        "download",
    )?;
    for n in 0..20 {
        let name = format!("file-{n:03}.bin");
        assert_eq!(
            std::fs::read(restored.join(&name))?,
            std::fs::read(resident.join(&name))?,
            "{name}"
        );
    }
    net.stop()?;
    Ok(())
}

#[test]
fn a_deleted_vault_leaves_no_blob_on_any_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(bundles) = invariant_test_support::synthea(3, 42, &dir.path().join("synthea"))? else {
        return Ok(());
    };
    assert!(bundles.len() >= 3, "{bundles:?}");
    let mut net = Up::start_with_env(dir.path(), UpMode::default(), &GC_ENV)?;
    net.wait_registered(3, &["distribute", "slots"])?;
    let (distributor, storages) = clients(&net)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let held = |storages: &[StorageClient]| -> anyhow::Result<BTreeSet<Id>> {
        runtime.block_on(async {
            let mut all = BTreeSet::new();
            for storage in storages {
                all.extend(listing(storage).await?);
            }
            anyhow::Ok(all)
        })
    };
    let before = held(&storages)?;

    let home = dir.path().join("home");
    std::fs::create_dir_all(&home)?;
    let ehi = |args: &[&str]| -> anyhow::Result<Output> {
        let mut command = Command::new(bin_path("ehi")?);
        for var in CLIENT_ENV {
            command.env_remove(var);
        }
        Ok(command
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("EHI_KEYSTORE")
            .env("INVARIANT_BROKER", net.broker()?)
            .env("INVARIANT_TOKEN_FILE", net.operator_token_file())
            .env("EHI_PASSPHRASE", "correct horse battery staple")
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    };
    ok(ehi(&["init"])?, "ehi init")?;
    let mut import = vec!["import", "--allow-other-patients"];
    let paths: Vec<String> = bundles.iter().map(|p| p.display().to_string()).collect();
    import.extend(paths.iter().map(String::as_str));
    ok(ehi(&import)?, "ehi import")?;
    runtime.block_on(replicated(&distributor))?;
    let vault: BTreeSet<Id> = held(&storages)?.difference(&before).copied().collect();
    assert!(vault.len() > 100, "the vault's blobs: {}", vault.len());

    let deleted = ehi(&["delete", "--yes"])?;
    let said = text(&deleted.stderr);
    assert!(deleted.status.success(), "{said}");
    assert!(said.contains("grace period (1 s)"), "{said}");
    std::thread::sleep(Duration::from_millis(1500));
    ok(net.invariant(&["gc", "run"])?, "gc run")?;

    // The delete wrote the public tombstone; nothing else of the vault is left.
    let left: Vec<Id> = held(&storages)?.intersection(&vault).copied().collect();
    assert!(
        left.is_empty(),
        "{} of the vault's {} blobs are still on a server, e.g. {:?}",
        left.len(),
        vault.len(),
        left.first()
    );
    // Each address asked directly too.
    runtime.block_on(async {
        for address in &vault {
            for storage in &storages {
                anyhow::ensure!(
                    storage.has(address).await?.is_none(),
                    "{address} still on a server"
                );
            }
        }
        anyhow::Ok(())
    })?;
    net.stop()?;
    Ok(())
}
