//! The file system: mounts, lookups, reads and changes, over the node table
//! ([`crate::table`]) and per-file contents ([`crate::file`](mod@crate::file)). Syncing lives in
//! [`crate::sync`].
//!
//! Every operation takes the table lock only for in-memory work; storage and slots
//! requests (loading a directory, reading a link, copying a file before its first
//! change) happen between two short critical sections, and the second re-checks what
//! the first saw. Directories are loaded on first use: mount loads the root, and
//! lookup, listing, info and changes load the directories they touch.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use invariant_content::tree::{MAX_DIRECTORY_SIZE, decode_directory};
use invariant_content::{ContentResult, ContentStream, Written};
use invariant_spec::Id;
use invariant_spec::content::{ContentLink, EntryKind, Transform, is_valid_name};
use invariant_spec::files::{Attributes, DirectoryEntry, Info, Node};
use invariant_spec::slots::{SignatureConfig, SlotSigner};

use crate::error::{FilesError, FilesResult};
use crate::file::{self, Chunk, FileContent, FileEnv};
use crate::peers::Peers;
use crate::table::{Body, Dir, LoadedEntry, Meta, Mount, NodeEntry, SlotMount, Table};

/// Bytes read from a local file per response chunk.
const READ_CHUNK: u64 = 256 * 1024;
/// Bytes of a write request collected before they are applied to the file.
const WRITE_BATCH: usize = 1024 * 1024;
/// Directories loaded at once when listing.
const LOAD_PARALLELISM: usize = 8;
/// Times a directory load is retried when the directory changed underneath it.
const LOAD_ATTEMPTS: usize = 3;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A byte stream of file content.
pub type ReadStream = std::pin::Pin<Box<dyn Stream<Item = FilesResult<Bytes>> + Send>>;

/// The state of the files role: the node table, storage access and slot keys.
pub struct FileSystem {
    table: Mutex<Table>,
    pub(crate) env: Arc<FileEnv>,
    pub(crate) peers: Arc<Peers>,
    signers: HashMap<Id, Arc<SlotSigner>>,
    /// Serializes syncs, unmounts and content flushes.
    pub(crate) sync_lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for FileSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSystem")
            .field("env", &self.env)
            .field("slot_keys", &self.signers.len())
            .finish_non_exhaustive()
    }
}

/// What `PUT /files/:node/:name` creates.
#[derive(Debug, Clone)]
pub struct NewNode {
    /// Its kind.
    pub kind: EntryKind,
    /// Initial content (files and directories).
    pub content: Option<ContentLink>,
    /// Target (symbolic links).
    pub target: Option<String>,
}

fn check_name(name: &str) -> FilesResult<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(FilesError::Invalid(format!(
            "{name:?} is not a valid name (empty, \".\", \"..\", or contains '/' or NUL)"
        )))
    }
}

impl FileSystem {
    pub(crate) fn new(
        env: Arc<FileEnv>,
        peers: Arc<Peers>,
        signers: HashMap<Id, Arc<SlotSigner>>,
    ) -> FileSystem {
        FileSystem {
            table: Mutex::new(Table::new()),
            env,
            peers,
            signers,
            sync_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes of changed file content held in memory now.
    pub fn memory_in_use(&self) -> u64 {
        self.env.budget.used()
    }

    // -----------------------------------------------------------------------------
    // Loading
    // -----------------------------------------------------------------------------

    /// Reads the directory blob at `link`: its entries (file sizes resolved) and the
    /// blob length.
    pub(crate) async fn load_directory(
        &self,
        link: &ContentLink,
    ) -> ContentResult<(Vec<LoadedEntry>, u64)> {
        let bytes = self
            .env
            .reader
            .read_to_vec(link, MAX_DIRECTORY_SIZE)
            .await?;
        let entries = decode_directory(&bytes, link.address)?;
        let mut loaded = Vec::with_capacity(entries.len());
        for entry in entries {
            let size = match (entry.kind, entry.size, &entry.content) {
                (_, Some(size), _) => size,
                (EntryKind::File, None, Some(content)) => self.content_length(content).await?,
                _ => 0,
            };
            loaded.push(LoadedEntry { entry, size });
        }
        Ok((loaded, bytes.len() as u64))
    }

    /// The length of the content at `link` (read through when no block list says it).
    async fn content_length(&self, link: &ContentLink) -> ContentResult<u64> {
        if let Some(size) = self.env.reader.size(link).await? {
            return Ok(size);
        }
        let mut content = self.env.reader.read(link);
        let mut size = 0u64;
        while let Some(chunk) = content.next().await {
            size += chunk?.len() as u64;
        }
        Ok(size)
    }

    /// Loads the children of directory `dir` unless they are loaded.
    pub(crate) async fn ensure_loaded(&self, dir: Node) -> FilesResult<()> {
        for _ in 0..LOAD_ATTEMPTS {
            let link = {
                let table = self.table();
                let directory = table.directory(dir)?;
                if directory.children.is_some() {
                    return Ok(());
                }
                match &directory.clean {
                    Some(written) => written.link.clone(),
                    None => {
                        return Err(FilesError::Internal(format!(
                            "directory {dir} is neither loaded nor stored"
                        )));
                    }
                }
            };
            let (entries, length) = self
                .load_directory(&link)
                .await
                .map_err(FilesError::Content)?;
            let mut table = self.table();
            let directory = table.directory_mut(dir)?;
            if directory.children.is_some() {
                return Ok(());
            }
            match &mut directory.clean {
                Some(written) if written.link == link => written.size = length,
                // Replaced while loading (a slot mount reloaded): try again.
                _ => continue,
            }
            return table.install(dir, entries);
        }
        Err(FilesError::Internal(format!(
            "directory {dir} kept changing while it was loaded"
        )))
    }

    // -----------------------------------------------------------------------------
    // Mounts
    // -----------------------------------------------------------------------------

    /// Mounts the directory tree at `link`; returns the root node.
    pub async fn mount(
        &self,
        link: ContentLink,
        executable: bool,
        writable: Option<bool>,
    ) -> FilesResult<Node> {
        let now = now_ms();
        let (root_link, slot, writable) = if link.slot {
            self.prepare_slot_mount(&link, writable).await?
        } else {
            (link, None, writable.unwrap_or(false))
        };
        let (entries, length) = self
            .load_directory(&root_link)
            .await
            .map_err(FilesError::Link)?;
        let mount = Mount {
            writable,
            executable,
            mounted_at: now,
            link: root_link.clone(),
            slot,
        };
        let written = Written {
            link: root_link,
            size: length,
        };
        let mut table = self.table();
        let root = table.add_mount(mount, written, now);
        table.install(root, entries)?;
        tracing::info!(root, writable, "mounted");
        Ok(root)
    }

    /// Resolves a slot link: the link to the slot's current tree, how to write it
    /// back, and whether the mount is writable.
    async fn prepare_slot_mount(
        &self,
        link: &ContentLink,
        writable: Option<bool>,
    ) -> FilesResult<(ContentLink, Option<SlotMount>, bool)> {
        let id = link.address;
        if !matches!(link.transforms.as_slice(), [] | [Transform::Blocks]) {
            return Err(FilesError::Invalid(
                "a slot link can only be mounted with no transforms or with [{\"kind\":\"Blocks\"}]"
                    .into(),
            ));
        }
        let slots = self.peers.slots().await?;
        let state = slots
            .get(&id)
            .await
            .map_err(FilesError::Slots)?
            .ok_or(FilesError::SlotNotFound(id))?;
        let config = slots
            .config(&id)
            .await
            .map_err(FilesError::Slots)?
            .unwrap_or_default();
        let signer = self.signers.get(&id).cloned();
        let can_write = match config.signature {
            SignatureConfig::None => true,
            SignatureConfig::Ed25519 => signer.is_some(),
            _ => false,
        };
        let writable = match writable {
            Some(true) if !can_write => {
                return Err(FilesError::SlotRefused {
                    slot: id,
                    reason: "updates need a signature and this server holds no key for \
                             this slot (--slot-key); mount it with writable=false"
                        .into(),
                });
            }
            Some(wanted) => wanted,
            None => can_write,
        };
        let root_link = ContentLink {
            transforms: link.transforms.clone(),
            ..ContentLink::new(state.address)
        };
        let slot = SlotMount {
            id,
            current: state.address,
            transforms: link.transforms.clone(),
            signer: signer.filter(|_| writable),
        };
        Ok((root_link, Some(slot), writable))
    }

    // -----------------------------------------------------------------------------
    // Reading
    // -----------------------------------------------------------------------------

    /// The info of `node` (loading a directory to count its entries).
    pub async fn info(&self, node: Node) -> FilesResult<Info> {
        if self.table().is_unloaded_directory(node) {
            self.ensure_loaded(node).await?;
        }
        self.table().info(node)
    }

    /// The info of child `name` of directory `node`.
    pub async fn lookup(&self, node: Node, name: &str) -> FilesResult<Info> {
        check_name(name)?;
        self.ensure_loaded(node).await?;
        let child = self.table().child(node, name)?;
        self.info(child).await
    }

    /// Entries of directory `node` in name order, from `offset`, at most `length`.
    pub async fn directory(
        &self,
        node: Node,
        offset: u64,
        length: Option<u64>,
    ) -> FilesResult<Vec<DirectoryEntry>> {
        self.ensure_loaded(node).await?;
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let take = length.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let (page, unloaded): (Vec<(String, Node)>, Vec<Node>) = {
            let table = self.table();
            let page: Vec<(String, Node)> = table
                .children(node)?
                .iter()
                .skip(skip)
                .take(take)
                .map(|(name, child)| (name.clone(), *child))
                .collect();
            let unloaded = page
                .iter()
                .map(|(_, child)| *child)
                .filter(|child| table.is_unloaded_directory(*child))
                .collect();
            (page, unloaded)
        };
        // Subdirectories are loaded to count their entries; one that cannot be read
        // is listed without a size rather than failing the whole listing.
        stream::iter(unloaded)
            .for_each_concurrent(LOAD_PARALLELISM, |child| async move {
                if let Err(e) = self.ensure_loaded(child).await {
                    tracing::debug!(child, error = %e, "cannot load directory for listing");
                }
            })
            .await;
        let table = self.table();
        Ok(page
            .into_iter()
            .filter_map(|(name, child)| {
                let info = table.info(child).ok()?;
                Some(DirectoryEntry { name, info })
            })
            .collect())
    }

    /// The bytes of file `node` from `offset`, at most `length` (to the end when
    /// absent). The stream reads local content under the file's lock one chunk at a
    /// time and switches to storage when the file is (or becomes) clean.
    pub fn read(&self, node: Node, offset: u64, length: Option<u64>) -> FilesResult<ReadStream> {
        let content = self.table().file(node)?.clone();
        let size = content.summary().size;
        let end = offset.saturating_add(length.unwrap_or(u64::MAX)).min(size);
        Ok(read_stream(content, self.env.clone(), offset, end))
    }

    // -----------------------------------------------------------------------------
    // Changing
    // -----------------------------------------------------------------------------

    fn writable_file(&self, node: Node) -> FilesResult<Arc<FileContent>> {
        let table = self.table();
        let content = table.file(node)?.clone();
        table.check_writable(node)?;
        Ok(content)
    }

    /// Records a content change of file `node`.
    fn changed(&self, node: Node) {
        let mut table = self.table();
        table.stamp(node, now_ms());
        table.touch(node);
    }

    /// Writes `body` into file `node` at `offset`; returns the number of bytes written.
    ///
    /// A write that would make the file larger than the limit is refused
    /// ([`FilesError::TooLarge`]): before anything is written when the body's length is
    /// declared (`declared`, from `Content-Length`) or its first batch already crosses
    /// the limit; otherwise at the batch that crosses it, the batches before it
    /// staying written.
    pub async fn write<S, E>(
        &self,
        node: Node,
        offset: u64,
        declared: Option<u64>,
        mut body: S,
    ) -> FilesResult<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: fmt::Display,
    {
        let content = self.writable_file(node)?;
        if let Some(len) = declared.filter(|len| *len > 0) {
            file::check_size(&self.env, offset.saturating_add(len))?;
        }
        let mut position = offset;
        let mut batch = BytesMut::new();
        let mut done = false;
        while !done {
            match body.next().await {
                Some(Ok(chunk)) => batch.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(FilesError::Invalid(format!("could not read the body: {e}")));
                }
                None => done = true,
            }
            if batch.len() >= WRITE_BATCH || (done && !batch.is_empty()) {
                let bytes = batch.split().freeze();
                let len = bytes.len() as u64;
                file::check_size(&self.env, position.saturating_add(len))?;
                content.write(&self.env, position, bytes).await?;
                position += len;
                self.changed(node);
            }
        }
        Ok(position - offset)
    }

    /// Truncates or zero-extends file `node`.
    pub async fn set_size(&self, node: Node, size: u64) -> FilesResult<()> {
        let content = self.writable_file(node)?;
        content.set_size(&self.env, size).await?;
        self.changed(node);
        Ok(())
    }

    /// Creates child `name` of directory `parent`; returns the new node.
    pub async fn create(&self, parent: Node, name: &str, new: NewNode) -> FilesResult<Node> {
        check_name(name)?;
        {
            let table = self.table();
            table.directory(parent)?;
            table.check_writable(parent)?;
        }
        if new.content.as_ref().is_some_and(|link| link.slot) {
            return Err(FilesError::Invalid(
                "content cannot be a slot link (mount slots instead)".into(),
            ));
        }
        let (body, entries) = match (new.kind, new.content, new.target) {
            (EntryKind::SymbolicLink, None, Some(target)) => {
                if target.is_empty() || target.contains('\0') {
                    return Err(FilesError::Invalid(
                        "a symbolic link target must be non-empty and free of NUL".into(),
                    ));
                }
                (Body::Symlink(target), None)
            }
            (EntryKind::SymbolicLink, Some(_), _) => {
                return Err(FilesError::Invalid(
                    "a symbolic link takes a target, not content".into(),
                ));
            }
            (EntryKind::SymbolicLink, None, None) => {
                return Err(FilesError::Invalid("a symbolic link needs target=".into()));
            }
            (_, _, Some(_)) => {
                return Err(FilesError::Invalid(
                    "target= is only for kind=SymbolicLink".into(),
                ));
            }
            (EntryKind::File, None, None) => (Body::File(FileContent::empty(&self.env)), None),
            (EntryKind::File, Some(link), None) => {
                let size = self.content_length(&link).await.map_err(FilesError::Link)?;
                (Body::File(FileContent::clean(Written { link, size })), None)
            }
            (EntryKind::Directory, None, None) => (Body::Directory(Dir::empty()), None),
            (EntryKind::Directory, Some(link), None) => {
                let (entries, size) = self.load_directory(&link).await.map_err(FilesError::Link)?;
                (
                    Body::Directory(Dir::stored(Written { link, size })),
                    Some(entries),
                )
            }
        };
        self.ensure_loaded(parent).await?;
        let now = now_ms();
        let mut table = self.table();
        let mount = table.node(parent)?.mount;
        if table.children(parent)?.contains_key(name) {
            return Err(FilesError::Exists {
                parent,
                name: name.to_string(),
            });
        }
        let kind = match &body {
            Body::File(_) => EntryKind::File,
            Body::Directory(_) => EntryKind::Directory,
            Body::Symlink(_) => EntryKind::SymbolicLink,
        };
        let node = table.alloc(NodeEntry {
            mount,
            parents: Vec::new(),
            meta: Meta::new(kind, now),
            body,
        });
        table.attach(parent, name, node)?;
        if let Some(entries) = entries {
            table.install(node, entries)?;
        }
        table.stamp(parent, now);
        table.touch(parent);
        Ok(node)
    }

    /// Applies `attributes` to `node`; returns its new info.
    pub async fn set_attributes(&self, node: Node, attributes: Attributes) -> FilesResult<Info> {
        {
            let mut table = self.table();
            table.check_writable(node)?;
            let meta = &mut table.node_mut(node)?.meta;
            if let Some(executable) = attributes.executable {
                if executable {
                    meta.mode |= 0o111;
                } else {
                    meta.mode &= !0o111;
                }
            }
            if let Some(writable) = attributes.writable {
                if writable {
                    meta.mode |= 0o200;
                } else {
                    meta.mode &= !0o222;
                }
            }
            if let Some(time) = attributes.modify_time {
                meta.modify_time = Some(time);
            }
            if let Some(time) = attributes.create_time {
                meta.create_time = Some(time);
            }
            if let Some(content_type) = attributes.content_type {
                meta.content_type = content_type;
            }
            table.touch_parents(node);
        }
        self.info(node).await
    }

    /// Moves child `name` of `parent` to `new_name` in `new_parent`.
    pub async fn rename(
        &self,
        parent: Node,
        name: &str,
        new_parent: Node,
        new_name: &str,
    ) -> FilesResult<()> {
        check_name(name)?;
        check_name(new_name)?;
        {
            let table = self.table();
            table.directory(parent)?;
            table.directory(new_parent)?;
            table.check_writable(parent)?;
            if table.node(parent)?.mount != table.node(new_parent)?.mount {
                return Err(FilesError::Invalid(
                    "cannot move a node to another mount".into(),
                ));
            }
        }
        self.ensure_loaded(parent).await?;
        self.ensure_loaded(new_parent).await?;
        // A directory being replaced must be loaded to know it is empty.
        let existing = self.table().children(new_parent)?.get(new_name).copied();
        if let Some(existing) = existing
            && self.table().is_unloaded_directory(existing)
        {
            self.ensure_loaded(existing).await?;
        }
        let now = now_ms();
        let mut table = self.table();
        table.rename(parent, name, new_parent, new_name)?;
        for dir in [parent, new_parent] {
            table.stamp(dir, now);
            table.touch(dir);
        }
        Ok(())
    }

    /// Adds name `name` in directory `parent` for existing node `target`.
    pub async fn link(&self, parent: Node, name: &str, target: Node) -> FilesResult<()> {
        check_name(name)?;
        {
            let table = self.table();
            table.directory(parent)?;
            table.check_writable(parent)?;
            let target_entry = table.node(target)?;
            if target_entry.kind() == EntryKind::Directory {
                return Err(FilesError::Invalid(
                    "directories cannot have a second name".into(),
                ));
            }
            if target_entry.mount != table.node(parent)?.mount {
                return Err(FilesError::Invalid(
                    "cannot link a node of another mount".into(),
                ));
            }
        }
        self.ensure_loaded(parent).await?;
        let now = now_ms();
        let mut table = self.table();
        table.node(target)?;
        table.attach(parent, name, target)?;
        table.stamp(parent, now);
        table.touch(parent);
        Ok(())
    }

    /// Removes child `name` of `parent` (a directory must be empty).
    pub async fn remove(&self, parent: Node, name: &str) -> FilesResult<()> {
        check_name(name)?;
        {
            let table = self.table();
            table.directory(parent)?;
            table.check_writable(parent)?;
        }
        self.ensure_loaded(parent).await?;
        for _ in 0..LOAD_ATTEMPTS {
            let child = self.table().child(parent, name)?;
            if self.table().is_unloaded_directory(child) {
                self.ensure_loaded(child).await?;
            }
            let now = now_ms();
            let mut table = self.table();
            if table.child(parent, name)? != child || table.is_unloaded_directory(child) {
                continue;
            }
            if let Body::Directory(dir) = &table.node(child)?.body
                && dir.children.as_ref().is_some_and(|c| !c.is_empty())
            {
                return Err(FilesError::NotEmpty {
                    parent,
                    name: name.to_string(),
                });
            }
            table.detach(parent, name)?;
            table.stamp(parent, now);
            table.touch(parent);
            return Ok(());
        }
        Err(FilesError::Internal(format!(
            "entry {name:?} of {parent} kept changing"
        )))
    }
}

enum ReadState {
    Local(u64),
    Stored(ContentStream),
    Done,
}

fn read_stream(content: Arc<FileContent>, env: Arc<FileEnv>, offset: u64, end: u64) -> ReadStream {
    let start = (content, env, ReadState::Local(offset));
    Box::pin(stream::try_unfold(
        start,
        move |(content, env, mut state)| async move {
            loop {
                match state {
                    ReadState::Done => return Ok(None),
                    ReadState::Stored(mut data) => {
                        return match data.next().await {
                            Some(Ok(bytes)) => {
                                Ok(Some((bytes, (content, env, ReadState::Stored(data)))))
                            }
                            Some(Err(e)) => Err(FilesError::Content(e)),
                            None => Ok(None),
                        };
                    }
                    ReadState::Local(position) => {
                        if position >= end {
                            return Ok(None);
                        }
                        let max = READ_CHUNK.min(end - position);
                        match content.read_chunk(position, max).await? {
                            Chunk::Bytes(bytes) => {
                                let next = position + bytes.len() as u64;
                                return Ok(Some((bytes, (content, env, ReadState::Local(next)))));
                            }
                            Chunk::Stored(link) => {
                                let data = env.reader.read_range(&link, position, end - position);
                                state = ReadState::Stored(data);
                            }
                            Chunk::End => state = ReadState::Done,
                        }
                    }
                }
            }
        },
    ))
}
