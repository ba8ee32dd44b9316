//! File contents. A file is either **clean** — exactly the content behind a link in
//! storage — or **local**: changed since it was last written out, its whole content
//! held in memory (files up to `FilesConfig::spill_threshold` bytes, within the
//! server-wide `FilesConfig::memory_budget`) or in a temporary file under
//! `<data-dir>/dirty/` (everything else). Memory use is therefore bounded by the
//! budget plus one write batch per request, whatever the file sizes.
//!
//! The first change to a clean file copies its content locally (only the prefix that
//! survives, for a truncation); blocks of zeros are not written to the temporary file,
//! so a sparse file stays sparse (the copy still reads every block from storage, so
//! its cost follows the file's size, which `FilesConfig::max_file_size` bounds).
//! `FileContent::flush` writes a local file out through the content
//! [`invariant_content::Writer`] (content-defined blocks, so unchanged regions produce
//! blocks storage already holds; temporary files through
//! [`invariant_content::Writer::write_sparse_file`], which neither reads nor hashes
//! holes) and makes it clean again — unless it changed while being written, in which
//! case it stays local and the next sync writes it again. Each change bumps a version,
//! which is what that check and the etag use.
//!
//! No change makes a file larger than `FilesConfig::max_file_size`: writes and size
//! changes past it fail with [`FilesError::TooLarge`] before touching anything.
//!
//! Each file has its own async read-write lock: reads and flushes share it, writes
//! take it exclusively. Disk work runs on the blocking pool.

use std::fmt;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::StreamExt;
use invariant_content::{ContentError, Reader, Writer, Written};
use invariant_spec::content::ContentLink;
use tempfile::NamedTempFile;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::RwLock;

use crate::error::{FilesError, FilesResult};

/// What every file operation needs: where content comes from and goes to, where
/// large local files live, and the limits.
#[derive(Debug)]
pub(crate) struct FileEnv {
    /// Reads links from storage.
    pub reader: Reader,
    /// Writes blocks and directory blobs to storage.
    pub writer: Writer,
    /// `<data-dir>/dirty`: temporary files of large local files.
    pub spill_dir: PathBuf,
    /// Bytes of local content held in memory, server-wide.
    pub budget: Arc<Budget>,
    /// Largest file kept in memory.
    pub spill_threshold: u64,
    /// Largest file accepted.
    pub max_file_size: u64,
}

/// A server-wide limit on bytes of local file content held in memory.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicU64,
    limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            used: AtomicU64::new(0),
            limit,
        }
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        // Every release matches an earlier reservation, so this never wraps.
        self.used.fetch_sub(bytes, Ordering::SeqCst);
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }
}

/// Local content in memory; its reservation returns to the budget when dropped.
struct MemBuf {
    data: Vec<u8>,
    reserved: u64,
    budget: Arc<Budget>,
}

impl MemBuf {
    fn new(budget: Arc<Budget>) -> MemBuf {
        MemBuf {
            data: Vec::new(),
            reserved: 0,
            budget,
        }
    }

    /// Sizes the reservation for `len` bytes; false when the budget cannot grant it.
    fn reserve(&mut self, len: u64) -> bool {
        if len > self.reserved {
            if !self.budget.try_reserve(len - self.reserved) {
                return false;
            }
        } else {
            self.budget.release(self.reserved - len);
        }
        self.reserved = len;
        true
    }
}

impl Drop for MemBuf {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
    }
}

enum Local {
    Memory(MemBuf),
    Disk(Arc<NamedTempFile>),
}

enum State {
    /// The content is exactly this link's.
    Clean(Written),
    /// Changed since last written out; `size` is the content length (for `Memory`,
    /// the buffer's length; for `Disk`, the file's).
    Local { data: Local, size: u64 },
}

struct Data {
    state: State,
    version: u64,
}

impl Data {
    fn size(&self) -> u64 {
        match &self.state {
            State::Clean(written) => written.size,
            State::Local { size, .. } => *size,
        }
    }
}

/// What `info` needs without taking the file's lock.
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    /// Content length.
    pub size: u64,
    /// Bumped by every change.
    pub version: u64,
    /// The link when the file is clean.
    pub clean: Option<ContentLink>,
}

/// One step of reading a file.
pub(crate) enum Chunk {
    /// Bytes at the position asked for.
    Bytes(Bytes),
    /// The file is clean: read the rest from this link.
    Stored(ContentLink),
    /// The position is at or past the end.
    End,
}

/// The content of one file node (shared by all its names).
pub(crate) struct FileContent {
    data: RwLock<Data>,
    summary: Mutex<Summary>,
}

impl fmt::Debug for FileContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileContent")
            .field("summary", &self.summary())
            .finish()
    }
}

fn to_usize(value: u64) -> FilesResult<usize> {
    usize::try_from(value).map_err(|_| FilesError::Internal(format!("{value} exceeds usize")))
}

impl FileContent {
    fn from_data(data: Data) -> Arc<FileContent> {
        let summary = Mutex::new(summarize(&data));
        Arc::new(FileContent {
            data: RwLock::new(data),
            summary,
        })
    }

    /// A file whose content is `written`.
    pub fn clean(written: Written) -> Arc<FileContent> {
        FileContent::from_data(Data {
            state: State::Clean(written),
            version: 0,
        })
    }

    /// A new, empty, local file.
    pub fn empty(env: &FileEnv) -> Arc<FileContent> {
        FileContent::from_data(Data {
            state: State::Local {
                data: Local::Memory(MemBuf::new(env.budget.clone())),
                size: 0,
            },
            version: 0,
        })
    }

    /// Size, version and clean link, as of the last completed change.
    pub fn summary(&self) -> Summary {
        self.summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, data: &Data) {
        *self.summary.lock().unwrap_or_else(PoisonError::into_inner) = summarize(data);
    }

    /// Up to `max` bytes from `position`, or where to read them from.
    pub async fn read_chunk(&self, position: u64, max: u64) -> FilesResult<Chunk> {
        let guard = self.data.read().await;
        match &guard.state {
            State::Clean(written) if position < written.size => {
                Ok(Chunk::Stored(written.link.clone()))
            }
            State::Clean(_) => Ok(Chunk::End),
            State::Local { data, size } => {
                if position >= *size || max == 0 {
                    return Ok(Chunk::End);
                }
                let len = max.min(size - position);
                match data {
                    Local::Memory(buf) => {
                        let from = to_usize(position)?;
                        let to = to_usize(position + len)?;
                        let slice = buf.data.get(from..to).ok_or_else(|| {
                            FilesError::Internal("memory file shorter than its size".into())
                        })?;
                        Ok(Chunk::Bytes(Bytes::copy_from_slice(slice)))
                    }
                    Local::Disk(file) => {
                        let file = file.clone();
                        let len = to_usize(len)?;
                        let bytes = tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0; len];
                            read_exact_at(file.as_file(), &mut buf, position)?;
                            Ok::<_, std::io::Error>(buf)
                        })
                        .await
                        .map_err(FilesError::task)?
                        .map_err(FilesError::io("reading a local file"))?;
                        Ok(Chunk::Bytes(Bytes::from(bytes)))
                    }
                }
            }
        }
    }

    /// Writes `bytes` at `offset`, zero-filling any gap past the end.
    pub async fn write(&self, env: &FileEnv, offset: u64, bytes: Bytes) -> FilesResult<()> {
        let len = bytes.len() as u64;
        let end = check_size(env, offset.saturating_add(len))?;
        if len == 0 {
            return Ok(());
        }
        let mut guard = self.data.write().await;
        let current = guard.size();
        materialize(env, &mut guard, current).await?;
        let new_size = current.max(end);
        let State::Local { data, size } = &mut guard.state else {
            return Err(FilesError::Internal("file not local after copying".into()));
        };
        if let Local::Memory(buf) = data {
            if new_size <= env.spill_threshold && buf.reserve(new_size) {
                let (from, to) = (to_usize(offset)?, to_usize(end)?);
                if buf.data.len() < to {
                    buf.data.resize(to, 0);
                }
                buf.data[from..to].copy_from_slice(&bytes);
            } else {
                *data = Local::Disk(spill(env, &buf.data).await?);
            }
        }
        if let Local::Disk(file) = data {
            let file = file.clone();
            tokio::task::spawn_blocking(move || write_all_at(file.as_file(), &bytes, offset))
                .await
                .map_err(FilesError::task)?
                .map_err(FilesError::io("writing a local file"))?;
        }
        *size = new_size;
        guard.version += 1;
        self.publish(&guard);
        Ok(())
    }

    /// Truncates or zero-extends to `new_size` bytes.
    pub async fn set_size(&self, env: &FileEnv, new_size: u64) -> FilesResult<()> {
        check_size(env, new_size)?;
        let mut guard = self.data.write().await;
        if guard.size() == new_size {
            return Ok(());
        }
        materialize(env, &mut guard, new_size).await?;
        let State::Local { data, size } = &mut guard.state else {
            return Err(FilesError::Internal("file not local after copying".into()));
        };
        if let Local::Memory(buf) = data {
            if new_size <= env.spill_threshold && buf.reserve(new_size) {
                buf.data.resize(to_usize(new_size)?, 0);
                buf.data.shrink_to_fit();
            } else {
                *data = Local::Disk(spill(env, &buf.data).await?);
            }
        }
        if let Local::Disk(file) = data {
            let file = file.clone();
            tokio::task::spawn_blocking(move || file.as_file().set_len(new_size))
                .await
                .map_err(FilesError::task)?
                .map_err(FilesError::io("resizing a local file"))?;
        }
        *size = new_size;
        guard.version += 1;
        self.publish(&guard);
        Ok(())
    }

    /// Writes the content out (when local) and returns its link. A file that did not
    /// change meanwhile becomes clean, releasing its memory or temporary file.
    pub async fn flush(&self, env: &FileEnv) -> FilesResult<Written> {
        let guard = self.data.read().await;
        let version = guard.version;
        let written = match &guard.state {
            State::Clean(written) => return Ok(written.clone()),
            State::Local {
                data: Local::Memory(buf),
                ..
            } => env.writer.write_bytes(&buf.data).await,
            // Holes (writes past the end, zero-extensions) are not read or hashed.
            State::Local {
                data: Local::Disk(file),
                ..
            } => env.writer.write_sparse_file(file.path()).await,
        }
        .map_err(FilesError::Content)?;
        drop(guard);
        let mut guard = self.data.write().await;
        if guard.version == version {
            guard.state = State::Clean(written.clone());
            self.publish(&guard);
        }
        Ok(written)
    }
}

/// `size` when it is within the file size limit, else [`FilesError::TooLarge`].
pub(crate) fn check_size(env: &FileEnv, size: u64) -> FilesResult<u64> {
    if size > env.max_file_size {
        Err(FilesError::TooLarge {
            size,
            limit: env.max_file_size,
        })
    } else {
        Ok(size)
    }
}

fn summarize(data: &Data) -> Summary {
    Summary {
        size: data.size(),
        version: data.version,
        clean: match &data.state {
            State::Clean(written) => Some(written.link.clone()),
            State::Local { .. } => None,
        },
    }
}

/// Makes a clean file local, keeping its first `keep` bytes (at most all of them).
async fn materialize(env: &FileEnv, data: &mut Data, keep: u64) -> FilesResult<()> {
    let State::Clean(written) = &data.state else {
        return Ok(());
    };
    let keep = keep.min(written.size);
    let link = written.link.clone();
    let whole = keep == written.size;
    let mut content = if keep == 0 {
        Box::pin(futures_util::stream::empty())
    } else if whole {
        env.reader.read(&link)
    } else {
        env.reader.read_range(&link, 0, keep)
    };
    let mut buf = MemBuf::new(env.budget.clone());
    let local = if keep <= env.spill_threshold && buf.reserve(keep) {
        while let Some(chunk) = content.next().await {
            let chunk = chunk.map_err(FilesError::Content)?;
            if (buf.data.len() + chunk.len()) as u64 > keep {
                return Err(too_long(&link, keep));
            }
            buf.data.extend_from_slice(&chunk);
        }
        if buf.data.len() as u64 != keep {
            return Err(too_short(&link, keep, buf.data.len() as u64));
        }
        Local::Memory(buf)
    } else {
        let temp = new_temp(env).await?;
        let std_file = temp
            .reopen()
            .map_err(FilesError::io("opening a local file"))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut copied = 0u64;
        while let Some(chunk) = content.next().await {
            let chunk = chunk.map_err(FilesError::Content)?;
            copied += chunk.len() as u64;
            if copied > keep {
                return Err(too_long(&link, keep));
            }
            // Zeros are skipped, not written, so holes stay holes and the next sync
            // need not read them.
            if chunk.iter().all(|byte| *byte == 0) {
                file.seek(std::io::SeekFrom::Start(copied))
                    .await
                    .map_err(FilesError::io("copying content to a local file"))?;
            } else {
                file.write_all(&chunk)
                    .await
                    .map_err(FilesError::io("copying content to a local file"))?;
            }
        }
        if copied != keep {
            return Err(too_short(&link, keep, copied));
        }
        file.flush()
            .await
            .map_err(FilesError::io("copying content to a local file"))?;
        file.set_len(keep)
            .await
            .map_err(FilesError::io("copying content to a local file"))?;
        Local::Disk(Arc::new(temp))
    };
    data.state = State::Local {
        data: local,
        size: keep,
    };
    Ok(())
}

fn too_long(link: &ContentLink, size: u64) -> FilesError {
    FilesError::Content(ContentError::Malformed {
        address: link.address,
        what: "file",
        reason: format!("content is longer than its recorded size {size}"),
    })
}

fn too_short(link: &ContentLink, size: u64, actual: u64) -> FilesError {
    FilesError::Content(ContentError::Malformed {
        address: link.address,
        what: "file",
        reason: format!("content has {actual} bytes, its recorded size is {size}"),
    })
}

async fn new_temp(env: &FileEnv) -> FilesResult<NamedTempFile> {
    let dir = env.spill_dir.clone();
    tokio::task::spawn_blocking(move || NamedTempFile::with_prefix_in("file-", dir))
        .await
        .map_err(FilesError::task)?
        .map_err(FilesError::io("creating a local file"))
}

/// Moves in-memory content to a new temporary file.
async fn spill(env: &FileEnv, data: &[u8]) -> FilesResult<Arc<NamedTempFile>> {
    let temp = new_temp(env).await?;
    let bytes = data.to_vec();
    let temp = tokio::task::spawn_blocking(move || {
        write_all_at(temp.as_file(), &bytes, 0)?;
        Ok::<_, std::io::Error>(temp)
    })
    .await
    .map_err(FilesError::task)?
    .map_err(FilesError::io("writing a local file"))?;
    Ok(Arc::new(temp))
}

#[cfg(unix)]
fn write_all_at(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, data, offset)
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn write_all_at(file: &File, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !data.is_empty() {
        let n = file.seek_write(data, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_read(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use invariant_content::{MemoryStore, WriterConfig};

    fn env(dir: &std::path::Path, budget: u64, threshold: u64) -> FileEnv {
        let store = Arc::new(MemoryStore::new());
        FileEnv {
            reader: Reader::new(store.clone()),
            writer: Writer::new(store, WriterConfig::default()).expect("writer"),
            spill_dir: dir.to_path_buf(),
            budget: Arc::new(Budget::new(budget)),
            spill_threshold: threshold,
            max_file_size: 1 << 30,
        }
    }

    async fn read_all(file: &FileContent, env: &FileEnv) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            match file.read_chunk(out.len() as u64, 7).await.expect("read") {
                Chunk::Bytes(bytes) => out.extend_from_slice(&bytes),
                Chunk::Stored(link) => {
                    let rest = env.reader.read_range(&link, out.len() as u64, u64::MAX);
                    let rest: Vec<Bytes> =
                        rest.map(|c| c.expect("chunk")).collect::<Vec<_>>().await;
                    rest.iter().for_each(|c| out.extend_from_slice(c));
                    return out;
                }
                Chunk::End => return out,
            }
        }
    }

    #[tokio::test]
    async fn writes_spill_and_flush_within_the_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = env(dir.path(), 100, 64);
        let file = FileContent::empty(&env);
        file.write(&env, 0, Bytes::from_static(b"hello"))
            .await
            .expect("write");
        file.write(&env, 10, Bytes::from_static(b"world"))
            .await
            .expect("write past end");
        assert_eq!(env.budget.used(), 15);
        assert_eq!(read_all(&file, &env).await, b"hello\0\0\0\0\0world");
        // Beyond the threshold the file moves to disk and the memory is returned.
        file.write(&env, 60, Bytes::from(vec![7u8; 10]))
            .await
            .expect("spill");
        assert_eq!(env.budget.used(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
        let mut expected = b"hello\0\0\0\0\0world".to_vec();
        expected.resize(60, 0);
        expected.extend_from_slice(&[7; 10]);
        assert_eq!(read_all(&file, &env).await, expected);
        // Flushing makes it clean and deletes the temporary file.
        let written = file.flush(&env).await.expect("flush");
        assert_eq!(written.size, 70);
        assert_eq!(file.summary().clean, Some(written.link.clone()));
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
        assert_eq!(read_all(&file, &env).await, expected);
        // Truncating a clean file copies only the surviving prefix.
        file.set_size(&env, 3).await.expect("truncate");
        assert_eq!(read_all(&file, &env).await, b"hel");
        assert_eq!(env.budget.used(), 3);
        let version = file.summary().version;
        file.set_size(&env, 5).await.expect("extend");
        assert_eq!(read_all(&file, &env).await, b"hel\0\0");
        assert!(file.summary().version > version);
    }

    #[tokio::test]
    async fn a_spent_budget_sends_small_files_to_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = env(dir.path(), 8, 1024);
        let a = FileContent::empty(&env);
        let b = FileContent::empty(&env);
        a.write(&env, 0, Bytes::from_static(b"12345678"))
            .await
            .expect("a");
        b.write(&env, 0, Bytes::from_static(b"x")).await.expect("b");
        assert_eq!(env.budget.used(), 8);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
        assert_eq!(read_all(&b, &env).await, b"x");
        drop(a);
        assert_eq!(env.budget.used(), 0);
        assert!(matches!(
            b.write(&env, env.max_file_size, Bytes::from_static(b"y"))
                .await,
            Err(FilesError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_change_during_flush_keeps_the_file_local() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = env(dir.path(), 1 << 20, 1 << 20);
        let file = FileContent::empty(&env);
        file.write(&env, 0, Bytes::from_static(b"one"))
            .await
            .expect("write");
        let (flushed, ()) = tokio::join!(file.flush(&env), async {
            file.write(&env, 3, Bytes::from_static(b"two"))
                .await
                .expect("write");
        });
        let flushed = flushed.expect("flush");
        // Whichever came first, the file's content is "onetwo" and it is clean only
        // if the flush saw both writes.
        assert_eq!(read_all(&file, &env).await, b"onetwo");
        let summary = file.summary();
        assert_eq!(summary.clean.is_some(), flushed.size == 6);
        assert_eq!(file.flush(&env).await.expect("flush").size, 6);
        assert!(file.summary().clean.is_some());
    }
}
