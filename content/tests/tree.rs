//! Uploading a local directory to a storage server and downloading it back: names,
//! sizes, contents, modes, modification times and symbolic links survive; blocks go
//! up in parallel within the writer's bound and dedup; unsafe directory blobs are
//! refused without writing outside the destination.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{TestStorage, data, small_config};
use futures_util::future::BoxFuture;
use invariant_content::tree::{read_directory, write_directory};
use invariant_content::{
    BlockStore, Compression, ContentError, KeyPolicy, MemoryStore, Reader, StoreError, Writer,
    WriterConfig, download_directory, upload_directory,
};
use invariant_spec::Id;
use invariant_spec::content::{ContentLink, Entry, EntryKind};

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn set_mtime(path: &Path, ms: u64) {
    std::fs::File::open(path)
        .expect("open to set time")
        .set_modified(at(ms))
        .expect("set mtime");
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Builds a tree with every kind of entry and distinctive metadata.
fn build_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
    std::fs::create_dir(root.join("empty-dir")).expect("mkdir");
    std::fs::create_dir(root.join("locked")).expect("mkdir");
    std::fs::write(root.join("hello.txt"), b"hello\n").expect("write");
    std::fs::write(root.join("empty"), b"").expect("write");
    std::fs::write(root.join("big.bin"), data(1, 60_000, false)).expect("write");
    std::fs::write(root.join("copy.bin"), data(1, 60_000, false)).expect("write");
    std::fs::write(root.join("sub/deeper/notes.md"), data(2, 9_000, true)).expect("write");
    std::fs::write(root.join("locked/inside"), b"kept").expect("write");
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").expect("write");
    std::fs::write(root.join("private"), b"secret").expect("write");
    std::os::unix::fs::symlink("hello.txt", root.join("link")).expect("symlink");
    std::os::unix::fs::symlink("../outside/nowhere", root.join("dangling")).expect("symlink");
    set_mode(&root.join("run.sh"), 0o755);
    set_mode(&root.join("private"), 0o600);
    set_mode(&root.join("hello.txt"), 0o444);
    for (i, file) in [
        "hello.txt",
        "empty",
        "big.bin",
        "copy.bin",
        "sub/deeper/notes.md",
        "locked/inside",
        "run.sh",
        "private",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&root.join(file), 1_600_000_000_000 + i as u64 * 1_234);
    }
    // Directories last: creating entries changes their times.
    for (i, dir) in ["sub/deeper", "sub", "empty-dir", "locked"]
        .iter()
        .enumerate()
    {
        set_mtime(&root.join(dir), 1_500_000_000_000 + i as u64 * 7_777);
    }
    set_mode(&root.join("sub"), 0o750);
    set_mode(&root.join("locked"), 0o555);
}

/// Lets tempdir cleanup remove read-only directories.
fn unlock(root: &Path) {
    for entry in walk(root) {
        let meta = std::fs::symlink_metadata(&entry).expect("stat");
        if meta.is_dir() {
            set_mode(&entry, 0o755);
        }
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        for path in names {
            if std::fs::symlink_metadata(&path).expect("stat").is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Asserts `copy` matches `original` in everything a download promises.
fn assert_same_tree(original: &Path, copy: &Path) {
    let left: Vec<PathBuf> = walk(original)
        .iter()
        .map(|p| p.strip_prefix(original).expect("prefix").to_path_buf())
        .collect();
    let right: Vec<PathBuf> = walk(copy)
        .iter()
        .map(|p| p.strip_prefix(copy).expect("prefix").to_path_buf())
        .collect();
    assert_eq!(left, right, "same names");
    for relative in left {
        let (a, b) = (original.join(&relative), copy.join(&relative));
        let (ma, mb) = (
            std::fs::symlink_metadata(&a).expect("stat"),
            std::fs::symlink_metadata(&b).expect("stat"),
        );
        let what = relative.display();
        assert_eq!(ma.file_type(), mb.file_type(), "{what}: kind");
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&a).expect("target"),
                std::fs::read_link(&b).expect("target"),
                "{what}: target"
            );
            continue;
        }
        assert_eq!(
            ma.permissions().mode() & 0o777,
            mb.permissions().mode() & 0o777,
            "{what}: mode"
        );
        let millis = |m: &std::fs::Metadata| {
            m.modified()
                .expect("mtime")
                .duration_since(UNIX_EPOCH)
                .expect("after epoch")
                .as_millis()
        };
        assert_eq!(millis(&ma), millis(&mb), "{what}: mtime");
        if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "{what}: size");
            assert!(
                std::fs::read(&a).expect("read") == std::fs::read(&b).expect("read"),
                "{what}: content"
            );
        }
    }
}

/// Counts puts in flight (each delayed a little so they overlap).
#[derive(Debug)]
struct Gauge {
    inner: Arc<dyn BlockStore>,
    now: AtomicUsize,
    peak: AtomicUsize,
    puts: AtomicUsize,
}

impl BlockStore for Gauge {
    fn get(&self, address: Id) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        self.inner.get(address)
    }
    fn has(&self, address: Id) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.has(address)
    }
    fn put(&self, address: Id, data: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            self.puts.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            let result = self.inner.put(address, data).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }
}

#[tokio::test]
async fn directories_round_trip_through_storage() {
    let storage = TestStorage::start().await;
    let gauge = Arc::new(Gauge {
        inner: Arc::new(storage.client.clone()),
        now: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        puts: AtomicUsize::new(0),
    });
    let work = tempfile::tempdir().expect("tempdir");
    let source = work.path().join("source");
    build_tree(&source);

    let config = WriterConfig {
        compression: Some(Compression::Inflate),
        encryption: Some(KeyPolicy::Convergent { secret: None }),
        parallelism: 8,
        ..small_config()
    };
    let writer = Writer::new(gauge.clone(), config).expect("writer");
    let root = upload_directory(&writer, &source).await.expect("upload");
    let peak = gauge.peak.load(Ordering::SeqCst);
    assert!((2..=8).contains(&peak), "puts in flight peaked at {peak}");

    // The root blob lists the entries, sorted, with their metadata.
    let reader = Reader::new(Arc::new(storage.client.clone()));
    let entries = read_directory(&reader, &root.link).await.expect("root dir");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "big.bin",
            "copy.bin",
            "dangling",
            "empty",
            "empty-dir",
            "hello.txt",
            "link",
            "locked",
            "private",
            "run.sh",
            "sub"
        ]
    );
    let entry = |name: &str| entries.iter().find(|e| e.name == name).expect(name);
    assert_eq!(entry("run.sh").mode.as_deref(), Some("x"));
    assert_eq!(entry("hello.txt").mode.as_deref(), Some("r"));
    assert_eq!(entry("private").mode.as_deref(), Some("600"));
    assert_eq!(entry("locked").mode.as_deref(), Some("rx"));
    assert_eq!(entry("big.bin").size, Some(60_000));
    assert_eq!(entry("big.bin").content, entry("copy.bin").content, "dedup");
    assert_eq!(entry("link").target.as_deref(), Some("hello.txt"));
    assert_eq!(entry("empty").modify_time, Some(1_600_000_000_000 + 1_234));

    let copy = work.path().join("copy");
    download_directory(&reader, &root.link, &copy)
        .await
        .expect("download");
    assert_same_tree(&source, &copy);

    // Uploading the same tree again sends nothing new (convergent keys).
    let before = gauge.puts.load(Ordering::SeqCst);
    let again = Writer::new(gauge.clone(), writer.config().clone()).expect("writer");
    let second = upload_directory(&again, &source)
        .await
        .expect("upload again");
    assert_eq!(second.link, root.link);
    assert_eq!(gauge.puts.load(Ordering::SeqCst), before);

    // A destination that is not empty is refused.
    let err = download_directory(&reader, &root.link, &copy)
        .await
        .expect_err("not empty");
    assert!(matches!(err, ContentError::Io { .. }), "{err}");

    unlock(work.path());
    storage.stop().await;
}

#[tokio::test]
async fn unsafe_directory_blobs_write_nothing_outside() {
    let store = Arc::new(MemoryStore::new());
    let writer = Writer::new(store.clone(), small_config()).expect("writer");
    let reader = Reader::new(store.clone());
    let file = writer.write_bytes(b"payload").await.expect("write");
    let work = tempfile::tempdir().expect("tempdir");

    let entry = |kind, name: &str| Entry {
        content: Some(file.link.clone()),
        size: Some(file.size),
        target: Some("/etc".into()),
        ..Entry::new(kind, name)
    };
    let hostile: Vec<Vec<Entry>> = vec![
        vec![entry(EntryKind::File, "../escaped")],
        vec![entry(EntryKind::File, "a/b")],
        vec![entry(EntryKind::File, "..")],
        vec![entry(EntryKind::File, "")],
        vec![entry(EntryKind::File, "nul\0")],
        // A link and a file of one name: the file would be written through the link.
        vec![
            entry(EntryKind::SymbolicLink, "x"),
            entry(EntryKind::File, "x"),
        ],
    ];
    for (i, entries) in hostile.into_iter().enumerate() {
        // Encoded by hand: `write_directory` refuses these too.
        let bytes = serde_json::to_vec(&entries).expect("json");
        let blob = writer.write_bytes(&bytes).await.expect("write blob");
        let dest = work.path().join(format!("dest{i}"));
        let err = download_directory(&reader, &blob.link, &dest)
            .await
            .expect_err("hostile directory");
        assert!(
            matches!(&err, ContentError::InvalidEntry { address, .. } if *address == blob.link.address),
            "{err}"
        );
        assert!(write_directory(&writer, entries).await.is_err());
        assert_eq!(std::fs::read_dir(&dest).expect("dest").count(), 0);
    }
    assert!(!work.path().join("escaped").exists());

    // A file whose content is shorter than its entry says is refused and removed.
    let lying = vec![Entry {
        size: Some(file.size + 1),
        ..entry(EntryKind::File, "short")
    }];
    let blob = write_directory(&writer, lying).await.expect("write");
    let dest = work.path().join("lying");
    let err = download_directory(&reader, &blob.link, &dest)
        .await
        .expect_err("size mismatch");
    assert!(matches!(err, ContentError::InvalidEntry { .. }), "{err}");
    assert!(!dest.join("short").exists());

    // Reference-style modes apply: "x" makes an executable.
    let tool = vec![Entry {
        mode: Some("x".into()),
        ..entry(EntryKind::File, "tool")
    }];
    let blob = write_directory(&writer, tool).await.expect("write");
    let dest = work.path().join("tool");
    download_directory(&reader, &blob.link, &dest)
        .await
        .expect("download");
    let mode = std::fs::metadata(dest.join("tool"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(std::fs::read(dest.join("tool")).expect("read"), b"payload");

    // Directory links must be directories: a file link is malformed JSON here.
    let bad = ContentLink::new(file.link.address);
    let err = download_directory(&reader, &bad, &work.path().join("bad"))
        .await
        .expect_err("not a directory");
    assert!(matches!(err, ContentError::Malformed { .. }), "{err}");
}
