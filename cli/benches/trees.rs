//! File-tree throughput on a local network (a figure, not a test).
//!
//! Starts `invariant up` from the release build (three storage servers, broker,
//! distributor, ...), generates a tree of about 1 GiB (1,000 small files plus a few
//! large ones; seeded), then measures:
//! - upload MB/s (content crate writer → one storage server, 1 MiB CDC blocks),
//! - download MB/s (reader over every storage server),
//! - the dedup ratio after changing 1% of the bytes: bytes re-sent / tree size,
//! - read MB/s through `invariant mount` (FUSE over the files server): the whole tree
//!   read file by file, and its largest file alone (skipped without `/dev/fuse`).
//!
//! Run: `cargo build --release --workspace && cargo bench -p invariant-cli --bench trees`
//! (`INVARIANT_BENCH_MIB=256` for a smaller tree; `INVARIANT_BENCH_DIR` picks the disk).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use invariant_content::store::StoreError;
use invariant_content::{
    BlockStore, Reader, StorageSet, Writer, WriterConfig, download_directory, upload_directory,
};
use invariant_spec::{BrokerClient, Id, StorageClient};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const MIB: u64 = 1024 * 1024;

/// Counts the bytes actually sent to storage.
#[derive(Debug)]
struct Counting {
    inner: StorageClient,
    sent: Arc<AtomicU64>,
}

impl BlockStore for Counting {
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        BlockStore::get(&self.inner, address)
    }
    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
        BlockStore::has(&self.inner, address)
    }
    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        self.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
        BlockStore::put(&self.inner, address, data)
    }
}

fn generate_tree(root: &Path, total: u64, rng: &mut StdRng) -> anyhow::Result<u64> {
    let mut written = 0u64;
    for i in 0..1000u32 {
        let dir = root.join(format!("d{:02}", i % 50));
        std::fs::create_dir_all(&dir)?;
        let mut data = vec![0u8; rng.random_range(1024..64 * 1024)];
        rng.fill_bytes(&mut data);
        std::fs::write(dir.join(format!("f{i}.bin")), &data)?;
        written += data.len() as u64;
    }
    let large = 4u64;
    let each = total.saturating_sub(written) / large;
    for i in 0..large {
        let mut file = std::fs::File::create(root.join(format!("large{i}.bin")))?;
        let mut left = each;
        let mut buf = vec![0u8; MIB as usize];
        while left > 0 {
            let n = left.min(MIB) as usize;
            rng.fill_bytes(&mut buf[..n]);
            std::io::Write::write_all(&mut file, &buf[..n])?;
            left -= n as u64;
        }
        written += each;
    }
    Ok(written)
}

/// Overwrites 1% of the tree's bytes in place: every hundredth small file entirely, and
/// the rest as runs of `run_len` bytes at random offsets of the large files (4 KiB runs
/// touch nearly every 1 MiB block: the worst case; long runs are a clustered edit).
fn modify_one_percent(
    root: &Path,
    total: u64,
    run_len: usize,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut budget = total / 100;
    for i in (0..1000u32).step_by(100) {
        let path = root
            .join(format!("d{:02}", i % 50))
            .join(format!("f{i}.bin"));
        let len = std::fs::metadata(&path)?.len();
        let mut data = vec![0u8; len as usize];
        rng.fill_bytes(&mut data);
        std::fs::write(&path, &data)?;
        budget = budget.saturating_sub(len);
    }
    let mut run = vec![0u8; run_len];
    while budget > 0 {
        let path = root.join(format!("large{}.bin", rng.random_range(0..4)));
        let len = std::fs::metadata(&path)?.len();
        if len < run_len as u64 {
            break;
        }
        let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
        file.seek(SeekFrom::Start(rng.random_range(0..len - run_len as u64)))?;
        rng.fill_bytes(&mut run);
        file.write_all(&run)?;
        budget = budget.saturating_sub(run_len as u64);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::var("INVARIANT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let base = match std::env::var_os("INVARIANT_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let release = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release");
    let invariant = release.join("invariant");
    if !release.join("storage-server").is_file() {
        bail!("build the servers first: cargo build --release --workspace");
    }
    let config = base.path().join("network.toml");
    std::fs::write(
        &config,
        "[broker]\nport = 0\n[storage]\ncount = 3\nports = [0, 0, 0]\n[find]\nport = 0\n\
         [slots]\nport = 0\n[names]\nport = 0\n[productions]\nport = 0\n[files]\nport = 0\n\
         [distributor]\nenabled = false\n",
    )?;
    let mut up = Command::new(&invariant)
        .arg("up")
        .arg("--data-dir")
        .arg(base.path().join("net"))
        .arg("--config")
        .arg(&config)
        // Throughput of the tree code itself, comparable with earlier runs: no tokens.
        .arg("--open")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting invariant up")?;
    let mut broker = None;
    let mut lines = BufReader::new(up.stdout.take().context("stdout")?).lines();
    for line in lines.by_ref() {
        let line = line?;
        if line.starts_with("network up") {
            break;
        }
        if let Some(url) = line.strip_prefix("broker") {
            broker = Some(url.trim().to_string());
        }
    }
    let broker = broker.context("no broker line")?;

    let mut rng = StdRng::seed_from_u64(11);
    let tree = base.path().join("tree");
    println!("generating a {mib} MiB tree ...");
    let total = generate_tree(&tree, mib * MIB, &mut rng)?;

    let broker_url = broker.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(async {
        let broker = BrokerClient::new(&broker)?;
        let mut storages = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while storages.len() < 3 && Instant::now() < deadline {
            storages.clear();
            for id in broker.registered("storage").await? {
                if let Some(client) = broker.storage(&id).await? {
                    storages.push(client);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let first = storages.first().context("no storage server")?.clone();
        let sent = Arc::new(AtomicU64::new(0));
        let store = Arc::new(Counting {
            inner: first,
            sent: sent.clone(),
        });
        let writer = Writer::new(store.clone(), WriterConfig::default())?;

        let started = Instant::now();
        let written = upload_directory(&writer, &tree).await?;
        let up_secs = started.elapsed().as_secs_f64();

        let set: Vec<Arc<dyn BlockStore>> = storages
            .iter()
            .map(|c| Arc::new(c.clone()) as Arc<dyn BlockStore>)
            .collect();
        let reader = Reader::new(Arc::new(StorageSet::new(set)));
        let started = Instant::now();
        download_directory(&reader, &written.link, &base.path().join("restored")).await?;
        let down_secs = started.elapsed().as_secs_f64();
        let link = serde_json::to_string(&written.link)?;
        let mounted = tokio::task::block_in_place(|| {
            mount_read(&invariant, &broker_url, &link, base.path(), total)
        })?;

        // A fresh writer each time: dedup comes from the storage server's `has`.
        let mut resent = Vec::new();
        for (seed, run_len) in [(12u64, 4096usize), (13, (total / 100 / 16) as usize)] {
            modify_one_percent(&tree, total, run_len.max(4096), &mut StdRng::seed_from_u64(seed))?;
            let before = sent.load(Ordering::Relaxed);
            let writer = Writer::new(store.clone(), WriterConfig::default())?;
            writer_upload(&writer, &tree).await?;
            resent.push((run_len, sent.load(Ordering::Relaxed) - before));
        }

        let mb = total as f64 / 1e6;
        println!("tree: {:.0} MB in 1,004 files", mb);
        println!("upload    {:>8.1} MB/s ({up_secs:.2} s)", mb / up_secs);
        println!("download  {:>8.1} MB/s ({down_secs:.2} s)", mb / down_secs);
        match mounted {
            Some(figures) => {
                println!(
                    "mount: tree read {:>8.1} MB/s ({:.2} s)",
                    mb / figures.tree_secs,
                    figures.tree_secs
                );
                println!(
                    "mount: largest file ({:.0} MB) read {:>8.1} MB/s",
                    figures.largest as f64 / 1e6,
                    figures.largest as f64 / 1e6 / figures.largest_secs
                );
            }
            None => println!("mount: skipped (no /dev/fuse)"),
        }
        for (run_len, bytes) in resent {
            println!(
                "after changing 1% of the bytes in runs of {} KiB, re-upload sent {:.1} MB = {:.2}% of the tree",
                run_len / 1024,
                bytes as f64 / 1e6,
                100.0 * bytes as f64 / total as f64
            );
        }
        anyhow::Ok(())
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(up.id().to_string())
        .status();
    let _ = up.wait();
    result
}

/// Seconds to read through a mount: the whole tree, and its largest file.
struct MountFigures {
    tree_secs: f64,
    largest: u64,
    largest_secs: f64,
}

/// Mounts `link` read-only with `invariant mount`, reads every file of it (1 MiB
/// reads), then its largest file again, and unmounts. `None` without FUSE.
fn mount_read(
    invariant: &Path,
    broker: &str,
    link: &str,
    base: &Path,
    total: u64,
) -> anyhow::Result<Option<MountFigures>> {
    if !Path::new("/dev/fuse").exists() {
        return Ok(None);
    }
    let dir = base.join("mnt");
    std::fs::create_dir_all(&dir)?;
    let mut mount = Command::new(invariant)
        .env("INVARIANT_CONFIG_DIR", base.join("config"))
        .arg("--broker")
        .arg(broker)
        .arg("mount")
        .arg(link)
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting invariant mount")?;
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    let wanted = dir.canonicalize()?.to_string_lossy().to_string();
    while !std::fs::read_to_string("/proc/self/mounts")?
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(wanted.as_str()))
    {
        if Instant::now() > deadline {
            let _ = mount.kill();
            bail!("invariant mount did not mount in time");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let read = (|| {
        let mut buf = vec![0u8; MIB as usize];
        let mut read_file = |path: &Path| -> anyhow::Result<u64> {
            let mut file = std::fs::File::open(path)?;
            let mut bytes = 0;
            loop {
                let n = std::io::Read::read(&mut file, &mut buf)?;
                if n == 0 {
                    return Ok(bytes);
                }
                bytes += n as u64;
            }
        };
        let started = Instant::now();
        let (mut bytes, mut largest) = (0u64, (0u64, dir.clone()));
        let mut pending = vec![dir.clone()];
        while let Some(folder) = pending.pop() {
            for entry in std::fs::read_dir(&folder)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    pending.push(entry.path());
                } else {
                    let n = read_file(&entry.path())?;
                    if n > largest.0 {
                        largest = (n, entry.path());
                    }
                    bytes += n;
                }
            }
        }
        let tree_secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(bytes == total, "read {bytes} bytes of {total}");
        let started = Instant::now();
        read_file(&largest.1)?;
        anyhow::Ok(MountFigures {
            tree_secs,
            largest: largest.0,
            largest_secs: started.elapsed().as_secs_f64(),
        })
    })();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(mount.id().to_string())
        .status();
    let _ = mount.wait();
    read.map(Some)
}

async fn writer_upload(writer: &Writer, tree: &Path) -> anyhow::Result<()> {
    upload_directory(writer, tree).await?;
    Ok(())
}
