//! `invariant upload` / `download`: file trees through the content crate, with
//! progress on stderr.
//!
//! Upload writes every block to one storage server (the first the broker lists that
//! answers); `--pin` then asks the distributor to keep the whole tree on N servers.
//! Download reads each block from whichever reachable storage server holds it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use indicatif::{ProgressBar, ProgressStyle};
use invariant_content::store::StoreError;
use invariant_content::tree::tree_addresses;
use invariant_content::{
    BlockStore, Compression, KeyPolicy, Reader, StorageSet, Writer, WriterConfig,
    download_directory, upload_directory,
};
use invariant_spec::content::ContentLink;
use invariant_spec::{BrokerClient, DistributorClient, Id, StorageClient};

use crate::network;

/// Counts bytes moved through a store, for progress bars.
#[derive(Debug)]
struct Counting<S> {
    inner: S,
    bytes: Arc<AtomicU64>,
    bar: ProgressBar,
}

impl<S: BlockStore> BlockStore for Counting<S> {
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            let got = self.inner.get(address).await?;
            if let Some(data) = &got {
                self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                self.bar.inc(data.len() as u64);
            }
            Ok(got)
        })
    }
    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.has(address)
    }
    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let len = data.len() as u64;
            self.inner.put(address, data).await?;
            self.bytes.fetch_add(len, Ordering::Relaxed);
            self.bar.inc(len);
            Ok(())
        })
    }
}

fn bar(total: Option<u64>, message: &'static str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

fn directory_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Options of `invariant upload`.
#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    /// Encrypt every block with a random key per file.
    pub encrypt: bool,
    /// Compress every block.
    pub compress: Option<Compression>,
    /// Ask the distributor to keep the tree's blocks on N servers.
    pub pin: bool,
}

/// Uploads `dir`; returns the root link.
pub async fn upload(
    broker: &BrokerClient,
    dir: &Path,
    options: UploadOptions,
) -> anyhow::Result<ContentLink> {
    let (id, endpoint) = network::servers(broker, "storage")
        .await?
        .into_iter()
        .next()
        .context("the broker knows no reachable storage server")?;
    eprintln!("uploading to storage {id} at {}", endpoint.base_url());
    let progress = bar(Some(directory_size(dir)), "upload");
    let store = Arc::new(Counting {
        inner: StorageClient::from_endpoint(endpoint),
        bytes: Arc::default(),
        bar: progress.clone(),
    });
    let config = WriterConfig {
        compression: options.compress,
        encryption: options.encrypt.then_some(KeyPolicy::RandomPerFile),
        ..WriterConfig::default()
    };
    let writer = Writer::new(store.clone(), config)?;
    let written = upload_directory(&writer, dir)
        .await
        .with_context(|| format!("uploading {}", dir.display()))?;
    progress.finish_with_message("uploaded");
    if options.pin {
        pin_tree(broker, &written.link, true).await?;
    }
    Ok(written.link)
}

async fn reader(broker: &BrokerClient, progress: &ProgressBar) -> anyhow::Result<Reader> {
    let stores: Vec<Arc<dyn BlockStore>> = network::servers(broker, "storage")
        .await?
        .into_iter()
        .map(|(_, endpoint)| {
            Arc::new(StorageClient::from_endpoint(endpoint)) as Arc<dyn BlockStore>
        })
        .collect();
    anyhow::ensure!(
        !stores.is_empty(),
        "the broker knows no reachable storage server"
    );
    Ok(Reader::new(Arc::new(Counting {
        inner: StorageSet::new(stores),
        bytes: Arc::default(),
        bar: progress.clone(),
    })))
}

/// Downloads the tree at `link` into `dest` (missing or empty).
pub async fn download(
    broker: &BrokerClient,
    link: &ContentLink,
    dest: &Path,
) -> anyhow::Result<()> {
    let progress = bar(None, "download");
    let reader = reader(broker, &progress).await?;
    let before = Before::of(dest).await;
    if let Err(e) = download_directory(&reader, link, dest).await {
        progress.finish_and_clear();
        // Take back what this download wrote: the folder it created, or what it put
        // into the empty folder it was given.
        if let Err(cleanup) = remove_partial(dest, before).await {
            eprintln!(
                "warning: could not remove the partial download in {}: {cleanup}",
                dest.display()
            );
        }
        return Err(anyhow::Error::from(e).context(format!("downloading into {}", dest.display())));
    }
    progress.finish_with_message("downloaded");
    Ok(())
}

/// What was at a download's destination before it started.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Before {
    /// Nothing: the download creates the folder.
    Missing,
    /// An empty folder.
    Empty,
    /// Anything else (the download refuses it and writes nothing).
    Other,
}

impl Before {
    async fn of(dest: &Path) -> Before {
        match tokio::fs::read_dir(dest).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Before::Missing,
            Ok(mut entries) => match entries.next_entry().await {
                Ok(None) => Before::Empty,
                _ => Before::Other,
            },
            Err(_) => Before::Other,
        }
    }
}

/// Removes what a failed download wrote: `dest` itself when the download created it,
/// everything in it when it was an empty folder, nothing otherwise.
async fn remove_partial(dest: &Path, before: Before) -> std::io::Result<()> {
    match before {
        Before::Missing => match tokio::fs::remove_dir_all(dest).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        Before::Empty => {
            let mut entries = tokio::fs::read_dir(dest).await?;
            while let Some(entry) = entries.next_entry().await? {
                let path = entry.path();
                if entry.file_type().await?.is_dir() {
                    tokio::fs::remove_dir_all(&path).await?;
                } else {
                    tokio::fs::remove_file(&path).await?;
                }
            }
            Ok(())
        }
        Before::Other => Ok(()),
    }
}

/// Pins (or unpins) every blob of the tree at `link` with the distributor.
pub async fn pin_tree(
    broker: &BrokerClient,
    link: &ContentLink,
    pin: bool,
) -> anyhow::Result<usize> {
    let progress = bar(None, "walking tree");
    let addresses = tree_addresses(&reader(broker, &progress).await?, link).await?;
    progress.finish_and_clear();
    let distributor = DistributorClient::from_endpoint(network::first(broker, "distribute").await?);
    if pin {
        distributor.pin(&addresses).await?;
    } else {
        distributor.unpin(&addresses).await?;
    }
    eprintln!(
        "{} {} blobs",
        if pin { "pinned" } else { "unpinned" },
        addresses.len()
    );
    Ok(addresses.len())
}

/// Parses a content link given as JSON, or `@file` holding JSON.
pub fn parse_link(text: &str) -> anyhow::Result<ContentLink> {
    let json = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => text.to_string(),
    };
    serde_json::from_str(json.trim()).context("not a content link (JSON with an address)")
}
