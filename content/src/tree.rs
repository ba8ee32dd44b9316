//! File trees: directory blobs (JSON arrays of [`Entry`]), uploading a local
//! directory to a root content link, and downloading a link back to a directory.
//!
//! Uploads keep names, sizes, permission bits, modification and (where the file
//! system reports it) creation times, and symbolic links (their targets verbatim);
//! other file types (sockets, devices, FIFOs) are skipped with a warning. Up to
//! [`FILES_IN_FLIGHT`] files are read at once; their blocks share the writer's
//! limit on blocks in flight and its dedup.
//!
//! Downloads only ever create: the destination must be absent or an empty
//! directory, every entry is made with create-new semantics, and directory blobs
//! whose names are empty, `.`, `..`, contain `/` or NUL, or repeat are refused, so
//! no entry can land outside the destination or follow a link planted by another
//! entry. Symbolic link targets are written as given (they are not followed).
//! Permissions are applied without setuid, setgid and sticky bits; modification
//! times are applied to files and directories but not to symbolic links.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt, stream};
use invariant_spec::Id;
use invariant_spec::content::{ContentLink, Entry, EntryKind, is_valid_name};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::reader::Reader;
use crate::writer::{Writer, Written};
use crate::{ContentError, ContentResult};

/// Files uploaded or downloaded at once.
pub const FILES_IN_FLIGHT: usize = 4;
/// Largest directory blob read into memory: 64 MiB.
pub const MAX_DIRECTORY_SIZE: u64 = 64 * 1024 * 1024;
/// Permission bits applied on download (no setuid, setgid or sticky).
const APPLIED_MODE_BITS: u32 = 0o777;

/// Sorts `entries` by name and encodes them as a directory blob. Fails on invalid or
/// repeated names (`address` is only used to name the directory in errors).
pub fn encode_directory(entries: &mut [Entry], address: Id) -> ContentResult<Vec<u8>> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    check_entries(entries, address)?;
    serde_json::to_vec(entries).map_err(|e| ContentError::Task(e.to_string()))
}

/// Decodes and checks a directory blob read from `address`.
pub fn decode_directory(bytes: &[u8], address: Id) -> ContentResult<Vec<Entry>> {
    let entries: Vec<Entry> =
        serde_json::from_slice(bytes).map_err(|e| ContentError::Malformed {
            address,
            what: "directory",
            reason: e.to_string(),
        })?;
    check_entries(&entries, address)?;
    Ok(entries)
}

fn check_entries(entries: &[Entry], address: Id) -> ContentResult<()> {
    let mut names = HashSet::new();
    for entry in entries {
        let invalid = |reason: &str| ContentError::InvalidEntry {
            address,
            name: entry.name.clone(),
            reason: reason.to_string(),
        };
        if !is_valid_name(&entry.name) {
            return Err(invalid("not a valid name"));
        }
        if !names.insert(entry.name.as_str()) {
            return Err(invalid("name appears more than once"));
        }
        match entry.kind {
            EntryKind::File | EntryKind::Directory if entry.content.is_none() => {
                return Err(invalid("no content link"));
            }
            EntryKind::SymbolicLink if entry.target.is_none() => {
                return Err(invalid("symbolic link without target"));
            }
            _ => {}
        }
        entry.permissions().map_err(|e| invalid(&e.to_string()))?;
    }
    Ok(())
}

/// Reads and checks the directory blob at `link`.
pub async fn read_directory(reader: &Reader, link: &ContentLink) -> ContentResult<Vec<Entry>> {
    let bytes = reader.read_to_vec(link, MAX_DIRECTORY_SIZE).await?;
    decode_directory(&bytes, link.address)
}

/// Writes `entries` as a directory blob (sorted by name); `size` is the blob length.
pub async fn write_directory(writer: &Writer, mut entries: Vec<Entry>) -> ContentResult<Written> {
    // The address is not known yet; errors name the empty directory's instead.
    let bytes = encode_directory(&mut entries, Id::of_content(b""))?;
    writer.write_bytes(&bytes).await
}

/// Uploads the directory at `path` and everything below it; returns the link to its
/// directory blob.
pub async fn upload_directory(writer: &Writer, path: &Path) -> ContentResult<Written> {
    let files = Arc::new(Semaphore::new(FILES_IN_FLIGHT));
    upload_dir(writer.clone(), path.to_path_buf(), files).await
}

fn upload_dir(
    writer: Writer,
    path: PathBuf,
    files: Arc<Semaphore>,
) -> BoxFuture<'static, ContentResult<Written>> {
    async move {
        let mut listing = tokio::fs::read_dir(&path)
            .await
            .map_err(ContentError::io(&path))?;
        let mut children = Vec::new();
        while let Some(child) = listing
            .next_entry()
            .await
            .map_err(ContentError::io(&path))?
        {
            let name =
                child
                    .file_name()
                    .into_string()
                    .map_err(|_| ContentError::Unrepresentable {
                        path: child.path(),
                        reason: "name is not UTF-8".into(),
                    })?;
            children.push((name, child.path()));
        }
        let entries: Vec<Entry> = stream::iter(children)
            .map(|(name, child)| upload_entry(writer.clone(), name, child, files.clone()))
            .buffer_unordered(FILES_IN_FLIGHT)
            .try_filter_map(|entry| async move { Ok(entry) })
            .try_collect()
            .await?;
        write_directory(&writer, entries).await
    }
    .boxed()
}

async fn upload_entry(
    writer: Writer,
    name: String,
    path: PathBuf,
    files: Arc<Semaphore>,
) -> ContentResult<Option<Entry>> {
    let meta = tokio::fs::symlink_metadata(&path)
        .await
        .map_err(ContentError::io(&path))?;
    let kind = meta.file_type();
    let mut entry = if kind.is_symlink() {
        let target = tokio::fs::read_link(&path)
            .await
            .map_err(ContentError::io(&path))?;
        let target =
            target
                .into_os_string()
                .into_string()
                .map_err(|_| ContentError::Unrepresentable {
                    path: path.clone(),
                    reason: "symbolic link target is not UTF-8".into(),
                })?;
        Entry {
            target: Some(target),
            ..Entry::new(EntryKind::SymbolicLink, name)
        }
    } else if kind.is_dir() {
        let written = upload_dir(writer, path.clone(), files).await?;
        Entry {
            content: Some(written.link),
            size: Some(written.size),
            mode: Entry::mode_for(EntryKind::Directory, permission_bits(&meta)),
            ..Entry::new(EntryKind::Directory, name)
        }
    } else if kind.is_file() {
        let _permit = files
            .acquire()
            .await
            .map_err(|_| ContentError::Task("upload permits closed".into()))?;
        let written = writer.write_file(&path).await?;
        Entry {
            content: Some(written.link),
            size: Some(written.size),
            mode: Entry::mode_for(EntryKind::File, permission_bits(&meta)),
            ..Entry::new(EntryKind::File, name)
        }
    } else {
        tracing::warn!(path = %path.display(), "skipping: not a file, directory or symbolic link");
        return Ok(None);
    };
    entry.modify_time = meta.modified().ok().map(to_millis);
    entry.create_time = meta.created().ok().map(to_millis);
    Ok(Some(entry))
}

#[cfg(unix)]
fn permission_bits(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn permission_bits(meta: &std::fs::Metadata) -> u32 {
    if meta.permissions().readonly() {
        0o555
    } else {
        0o755
    }
}

fn to_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn from_millis(ms: i64) -> Option<SystemTime> {
    let offset = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
}

/// Downloads the tree at `link` (a directory blob) into `dest`, which must not exist
/// or be an empty directory.
pub async fn download_directory(
    reader: &Reader,
    link: &ContentLink,
    dest: &Path,
) -> ContentResult<()> {
    match tokio::fs::symlink_metadata(dest).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => tokio::fs::create_dir(dest)
            .await
            .map_err(ContentError::io(dest))?,
        Err(e) => return Err(ContentError::io(dest)(e)),
        Ok(meta) if meta.is_dir() => {
            let mut listing = tokio::fs::read_dir(dest)
                .await
                .map_err(ContentError::io(dest))?;
            if listing
                .next_entry()
                .await
                .map_err(ContentError::io(dest))?
                .is_some()
            {
                return Err(ContentError::io(dest)(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "destination directory is not empty",
                )));
            }
        }
        Ok(_) => {
            return Err(ContentError::io(dest)(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "destination exists and is not a directory",
            )));
        }
    }
    download_into(reader.clone(), link.clone(), dest.to_path_buf()).await
}

fn download_into(
    reader: Reader,
    link: ContentLink,
    dir: PathBuf,
) -> BoxFuture<'static, ContentResult<()>> {
    async move {
        let entries = read_directory(&reader, &link).await?;
        let (directories, others): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .partition(|e| e.kind == EntryKind::Directory);
        stream::iter(others)
            .map(|entry| download_entry(&reader, link.address, &dir, entry))
            .buffer_unordered(FILES_IN_FLIGHT)
            .try_collect::<()>()
            .await?;
        for entry in directories {
            let path = dir.join(&entry.name);
            tokio::fs::create_dir(&path)
                .await
                .map_err(ContentError::io(&path))?;
            if let Some(content) = &entry.content {
                download_into(reader.clone(), content.clone(), path.clone()).await?;
            }
            // After the children, which would change the time and may need write access.
            apply_metadata(&path, &entry).await?;
        }
        Ok(())
    }
    .boxed()
}

async fn download_entry(
    reader: &Reader,
    directory: Id,
    dir: &Path,
    entry: Entry,
) -> ContentResult<()> {
    let path = dir.join(&entry.name);
    match (entry.kind, &entry.content, &entry.target) {
        (EntryKind::SymbolicLink, _, Some(target)) => symlink(target, &path).await,
        (EntryKind::File, Some(content), _) => {
            let result = download_file(reader, directory, content, &path, &entry).await;
            if result.is_err() {
                // Best effort: leave no partial file behind.
                let _ = tokio::fs::remove_file(&path).await;
            }
            result
        }
        // `check_entries` guarantees content for files and targets for links.
        _ => Ok(()),
    }
}

async fn download_file(
    reader: &Reader,
    directory: Id,
    content: &ContentLink,
    path: &Path,
    entry: &Entry,
) -> ContentResult<()> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(ContentError::io(path))?;
    let mut data = reader.read(content);
    let mut written = 0u64;
    while let Some(chunk) = data.next().await {
        let chunk = chunk?;
        file.write_all(&chunk)
            .await
            .map_err(ContentError::io(path))?;
        written += chunk.len() as u64;
    }
    file.flush().await.map_err(ContentError::io(path))?;
    drop(file);
    if let Some(size) = entry.size
        && size != written
    {
        return Err(ContentError::InvalidEntry {
            address: directory,
            name: entry.name.clone(),
            reason: format!("content has {written} bytes, the entry says {size}"),
        });
    }
    apply_metadata(path, entry).await
}

/// Sets the modification time, then the permissions, of a downloaded file or directory.
async fn apply_metadata(path: &Path, entry: &Entry) -> ContentResult<()> {
    let modified = entry.modify_time.and_then(from_millis);
    let mode = entry.permissions().unwrap_or(match entry.kind {
        EntryKind::Directory => invariant_spec::content::DEFAULT_DIRECTORY_MODE,
        _ => invariant_spec::content::DEFAULT_FILE_MODE,
    }) & APPLIED_MODE_BITS;
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if let Some(time) = modified {
            // Opening read-only suffices for futimens, for directories too.
            std::fs::File::open(&owned)?.set_modified(time)?;
        }
        set_mode(&owned, mode)
    })
    .await
    .map_err(ContentError::task)?
    .map_err(ContentError::io(path))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    let mut permissions = std::fs::metadata(path)?.permissions();
    permissions.set_readonly(mode & 0o200 == 0);
    std::fs::set_permissions(path, permissions)
}

#[cfg(unix)]
async fn symlink(target: &str, path: &Path) -> ContentResult<()> {
    tokio::fs::symlink(target, path)
        .await
        .map_err(ContentError::io(path))
}

#[cfg(not(unix))]
async fn symlink(_target: &str, path: &Path) -> ContentResult<()> {
    Err(ContentError::Unrepresentable {
        path: path.to_path_buf(),
        reason: "symbolic links are only created on Unix".into(),
    })
}

/// Every blob address a file's content depends on: the link's own address and, for
/// block trees, every list and block below it (depth first, duplicates kept out).
pub async fn content_addresses(reader: &Reader, link: &ContentLink) -> ContentResult<Vec<Id>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    collect_content(reader, link, &mut out, &mut seen).await?;
    Ok(out)
}

/// Every blob address a whole tree depends on: directory blobs, and each file's
/// [`content_addresses`]. Pinning these keeps the tree readable.
pub async fn tree_addresses(reader: &Reader, root: &ContentLink) -> ContentResult<Vec<Id>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut directories = vec![root.clone()];
    while let Some(directory) = directories.pop() {
        collect_content(reader, &directory, &mut out, &mut seen).await?;
        for entry in read_directory(reader, &directory).await? {
            match (entry.kind, entry.content) {
                (EntryKind::Directory, Some(link)) => directories.push(link),
                (EntryKind::File, Some(link)) => {
                    collect_content(reader, &link, &mut out, &mut seen).await?
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

async fn collect_content(
    reader: &Reader,
    link: &ContentLink,
    out: &mut Vec<Id>,
    seen: &mut HashSet<Id>,
) -> ContentResult<()> {
    let mut pending = vec![link.clone()];
    while let Some(link) = pending.pop() {
        if !seen.insert(link.address) {
            continue;
        }
        out.push(link.address);
        if let Some(blocks) = reader.block_list(&link).await? {
            pending.extend(blocks.into_iter().map(|b| b.content));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> Entry {
        Entry {
            content: Some(ContentLink::new(Id::of_content(name.as_bytes()))),
            size: Some(0),
            ..Entry::new(EntryKind::File, name)
        }
    }

    #[test]
    fn directories_sort_and_round_trip() {
        let address = Id::of_content(b"dir");
        let mut entries = vec![file("b"), file("a")];
        let bytes = encode_directory(&mut entries, address).expect("encode");
        let back = decode_directory(&bytes, address).expect("decode");
        assert_eq!(back[0].name, "a");
        assert_eq!(back, entries);
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let address = Id::of_content(b"dir");
        for name in ["", ".", "..", "../etc", "a/b", "nul\0"] {
            let bytes = serde_json::to_vec(&[file(name)]).expect("json");
            let err = decode_directory(&bytes, address).expect_err(name);
            assert!(
                matches!(&err, ContentError::InvalidEntry { name: n, address: a, .. }
                    if n == name && *a == address),
                "{err}"
            );
        }
        let twice = serde_json::to_vec(&[file("a"), file("a")]).expect("json");
        assert!(decode_directory(&twice, address).is_err());
        let no_content = serde_json::to_vec(&[Entry::new(EntryKind::File, "f")]).expect("json");
        assert!(decode_directory(&no_content, address).is_err());
        let no_target =
            serde_json::to_vec(&[Entry::new(EntryKind::SymbolicLink, "l")]).expect("json");
        assert!(decode_directory(&no_target, address).is_err());
        assert!(matches!(
            decode_directory(b"{}", address),
            Err(ContentError::Malformed { .. })
        ));
    }

    #[test]
    fn millisecond_times_convert_both_ways() {
        for ms in [0i64, 1, 1_700_000_000_123, -1_000] {
            let time = from_millis(ms).expect("in range");
            assert_eq!(to_millis(time), ms);
        }
    }

    #[tokio::test]
    async fn tree_addresses_cover_every_stored_blob() {
        use crate::store::MemoryStore;
        use crate::writer::{ChunkConfig, WriterConfig};

        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("sub/deeper")).expect("dirs");
        std::fs::write(root.join("a.txt"), b"alpha").expect("write");
        let big: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(root.join("sub/big.bin"), &big).expect("write");
        std::fs::write(root.join("sub/deeper/empty"), b"").expect("write");

        let store = Arc::new(MemoryStore::new());
        let config = WriterConfig {
            chunking: ChunkConfig {
                min_size: 256,
                avg_size: 1024,
                max_size: 4096,
            },
            list_limit: 1024,
            ..WriterConfig::default()
        };
        let writer = Writer::new(store.clone(), config).expect("writer");
        let written = upload_directory(&writer, &root).await.expect("upload");
        let reader = Reader::new(store.clone());
        let mut walked = tree_addresses(&reader, &written.link).await.expect("walk");
        walked.sort();
        let mut stored = store.addresses();
        stored.sort();
        assert_eq!(walked, stored, "every blob of the upload, and only those");
        assert!(walked.len() > 10, "a multi-level tree: {}", walked.len());
    }
}
