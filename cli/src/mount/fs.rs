//! The FUSE file system of a mount: inodes over the files server's nodes, attribute
//! and entry caching, reads with read-ahead, writes, and syncs on close and `fsync`.

use super::*;

/// An open file or folder.
#[derive(Debug)]
pub(super) enum Open {
    /// A file; `dirty` once written through this handle and not yet synced.
    File { dirty: bool },
    /// A folder's entries as read at `opendir`: inode, kind, name.
    Dir(Vec<(INodeNo, FileType, String)>),
}

/// Bytes of one file kept from a read: from `start`, and whether they reach its end.
#[derive(Debug)]
pub(super) struct Cached {
    pub(super) start: u64,
    pub(super) data: Bytes,
    pub(super) to_end: bool,
}

/// The file system the kernel talks to: every call is a files-protocol request, run
/// on the command's tokio runtime.
pub(super) struct MountFs {
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) files: FilesClient,
    pub(super) shared: Arc<Shared>,
    pub(super) writable: bool,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) next_handle: AtomicU64,
    pub(super) handles: Mutex<HashMap<u64, Open>>,
    pub(super) cache: Mutex<HashMap<INodeNo, Cached>>,
    /// Bumped after every change of file content, so a read that started before it
    /// does not keep what it fetched.
    pub(super) changes: AtomicU64,
}

/// Locks `mutex`, also after a panic elsewhere (the maps stay consistent).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MountFs {
    pub(super) fn new(
        runtime: tokio::runtime::Handle,
        files: FilesClient,
        shared: Arc<Shared>,
        writable: bool,
    ) -> MountFs {
        MountFs {
            runtime,
            files,
            shared,
            writable,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            next_handle: AtomicU64::new(1),
            handles: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
        }
    }

    pub(super) fn ino(&self, node: Node) -> INodeNo {
        if node == self.shared.root() {
            INodeNo::ROOT
        } else {
            INodeNo(node.saturating_add(2))
        }
    }

    pub(super) fn node(&self, ino: INodeNo) -> Node {
        if ino == INodeNo::ROOT {
            self.shared.root()
        } else {
            ino.0.saturating_sub(2)
        }
    }

    /// Runs one request, mapping its failure to an errno (`conflict` for a 409).
    pub(super) fn call<T>(
        &self,
        what: &str,
        conflict: Errno,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Errno> {
        self.runtime
            .block_on(request)
            .map_err(|e| self.errno(what, conflict, &e))
    }

    pub(super) fn errno(&self, what: &str, conflict: Errno, e: &ClientError) -> Errno {
        match e.status() {
            Some(404) => Errno::ENOENT,
            Some(400) => Errno::EINVAL,
            Some(409) => conflict,
            Some(413) => Errno::EFBIG,
            Some(403) if !self.writable => Errno::EROFS,
            Some(403) => Errno::EACCES,
            _ => {
                eprintln!("invariant mount: {what}: {e}");
                Errno::EIO
            }
        }
    }

    pub(super) fn info(&self, node: Node) -> Result<Info, Errno> {
        self.call("info", Errno::EIO, self.files.info(node))?
            .ok_or(Errno::ENOENT)
    }

    pub(super) fn attr(&self, info: &Info) -> FileAttr {
        let owner_write = if info.writable { 0o200 } else { 0 };
        let (kind, perm, size) = match info.kind {
            EntryKind::File => {
                let exec = if info.executable { 0o111 } else { 0 };
                (
                    FileType::RegularFile,
                    0o444 | exec | owner_write,
                    info.size.unwrap_or(0),
                )
            }
            EntryKind::Directory => (
                FileType::Directory,
                0o555 | owner_write,
                info.size.unwrap_or(0),
            ),
            EntryKind::SymbolicLink => (
                FileType::Symlink,
                0o777,
                info.target.as_ref().map_or(0, |t| t.len() as u64),
            ),
        };
        let mtime = time_of(info.modify_time);
        FileAttr {
            ino: self.ino(info.node),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: time_of(info.create_time),
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(super) fn handle(&self, open: Open) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, open);
        FileHandle(fh)
    }

    /// Forgets kept bytes of `ino` after a change of its content.
    pub(super) fn changed(&self, ino: INodeNo) {
        let mut cache = lock(&self.cache);
        self.changes.fetch_add(1, Ordering::SeqCst);
        cache.remove(&ino);
    }

    pub(super) fn mark_dirty(&self, fh: FileHandle) {
        if let Some(Open::File { dirty }) = lock(&self.handles).get_mut(&fh.0) {
            *dirty = true;
        }
    }

    /// `PUT /files/sync?root=` (this mount only); a lost slot race is logged and is
    /// `EIO`.
    pub(super) fn sync(&self) -> Result<(), Errno> {
        if let Some(mover) = &self.shared.mover {
            return self.sync_slot(mover);
        }
        match self
            .runtime
            .block_on(self.files.sync_root(self.shared.root()))
        {
            Ok(()) => Ok(()),
            Err(e) if e.status() == Some(409) => {
                eprintln!(
                    "invariant mount: conflict: the slot was changed by someone else; the \
                     tree was reloaded from the slot and the changes not yet synced were \
                     discarded ({e})"
                );
                let mut cache = lock(&self.cache);
                self.changes.fetch_add(1, Ordering::SeqCst);
                cache.clear();
                Err(Errno::EIO)
            }
            Err(e) => {
                // Whatever the errno, say why: the changes are not in the slot.
                eprintln!("invariant mount: sync failed, the changes stay unsynced: {e}");
                Err(self.errno("sync", Errno::EIO, &e))
            }
        }
    }

    /// [`MountFs::sync`] of a slot this command moves: after a conflict the slot's
    /// tree replaces this one (its unsynced changes stay under the logged link).
    pub(super) fn sync_slot(&self, mover: &SlotMover) -> Result<(), Errno> {
        let root = self.shared.root();
        match self.runtime.block_on(mover.sync(&self.files, root)) {
            Ok(()) => Ok(()),
            Err(SlotSyncError::Conflict { link, error }) => {
                let link = serde_json::to_string(&link).unwrap_or_default();
                eprintln!(
                    "invariant mount: conflict: the slot was changed by someone else ({error}); \
                     the mount now shows the slot's tree, and this mount's changes are \
                     stored at {link}"
                );
                match self.runtime.block_on(mover.reload(&self.files, root)) {
                    Ok(new_root) => self.shared.root.store(new_root, Ordering::SeqCst),
                    Err(e) => eprintln!("invariant mount: reloading the slot failed: {e}"),
                }
                let mut cache = lock(&self.cache);
                self.changes.fetch_add(1, Ordering::SeqCst);
                cache.clear();
                Err(Errno::EIO)
            }
            Err(SlotSyncError::Other(e)) => {
                eprintln!("invariant mount: sync failed, the changes stay unsynced: {e}");
                Err(self.errno("sync", Errno::EIO, &e))
            }
        }
    }

    pub(super) fn read_bytes(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Bytes, Errno> {
        let size = u64::from(size);
        let end = offset.saturating_add(size);
        if let Some(cached) = lock(&self.cache).get(&ino) {
            let len = cached.data.len() as u64;
            let cached_end = cached.start + len;
            if offset >= cached.start && (end <= cached_end || cached.to_end) {
                let from = (offset - cached.start).min(len);
                let to = (end - cached.start).min(len);
                return Ok(cached.data.slice(range(from, to)?));
            }
        }
        let before = self.changes.load(Ordering::SeqCst);
        let want = size.max(READ_AHEAD);
        let node = self.node(ino);
        let data = self.call(
            "read",
            Errno::EIO,
            self.files.read(node, Some(offset), Some(want)),
        )?;
        let len = data.len() as u64;
        let answer = data.slice(range(0, size.min(len))?);
        let mut cache = lock(&self.cache);
        if self.changes.load(Ordering::SeqCst) == before {
            cache.insert(
                ino,
                Cached {
                    start: offset,
                    data,
                    to_end: len < want,
                },
            );
        }
        Ok(answer)
    }

    pub(super) fn create_child(
        &self,
        parent: INodeNo,
        name: &OsStr,
        create: &Create,
        mode: Option<u32>,
    ) -> Result<Info, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        let node = self.call(
            "create",
            Errno::EEXIST,
            self.files.create(self.node(parent), name, create),
        )?;
        match mode {
            Some(mode) if create.kind == EntryKind::File => {
                let attributes = Attributes {
                    executable: Some(mode & 0o100 != 0),
                    writable: Some(mode & 0o200 != 0),
                    ..Attributes::default()
                };
                self.call(
                    "set attributes",
                    Errno::EIO,
                    self.files.set_attributes(node, &attributes),
                )
            }
            _ => self.info(node),
        }
    }

    pub(super) fn remove(&self, parent: INodeNo, name: &OsStr) -> Result<(), Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        self.call(
            "remove",
            Errno::ENOTEMPTY,
            self.files.remove(self.node(parent), name),
        )
    }

    pub(super) fn rename_child(
        &self,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return Err(Errno::EINVAL);
        }
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let new_name = new_name.to_str().ok_or(Errno::EINVAL)?;
        let (from, to) = (self.node(parent), self.node(new_parent));
        let existing = self.call("lookup", Errno::EIO, self.files.lookup(to, new_name))?;
        if let Some(existing) = existing {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            if existing.kind == EntryKind::Directory {
                // POSIX replaces an empty folder; the files server replaces files only.
                self.call("remove", Errno::ENOTEMPTY, self.files.remove(to, new_name))?;
            }
        }
        self.call(
            "rename",
            Errno::EEXIST,
            self.files.rename(from, name, to, new_name),
        )
    }

    pub(super) fn set_attr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        size: Option<u64>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<Info, Errno> {
        let node = self.node(ino);
        if let Some(size) = size {
            self.call("truncate", Errno::EIO, self.files.set_size(node, size))?;
            self.changed(ino);
            if let Some(fh) = fh {
                self.mark_dirty(fh);
            }
        }
        let mut attributes = Attributes::default();
        if let Some(mode) = mode {
            attributes.writable = Some(mode & 0o200 != 0);
            if mode & FILE_TYPE_BITS != DIRECTORY_BITS {
                attributes.executable = Some(mode & 0o100 != 0);
            }
        }
        if let Some(mtime) = mtime {
            attributes.modify_time = Some(match mtime {
                TimeOrNow::SpecificTime(time) => ms_of(time),
                TimeOrNow::Now => ms_of(SystemTime::now()),
            });
        }
        if attributes == Attributes::default() {
            return self.info(node);
        }
        self.call(
            "set attributes",
            Errno::EIO,
            self.files.set_attributes(node, &attributes),
        )
    }
}

/// The file-type bits of a mode (`S_IFMT`).
pub(super) const FILE_TYPE_BITS: u32 = 0o170000;
/// The file-type bits of a folder (`S_IFDIR`).
pub(super) const DIRECTORY_BITS: u32 = 0o040000;

pub(super) fn range(from: u64, to: u64) -> Result<std::ops::Range<usize>, Errno> {
    let from = usize::try_from(from).map_err(|_| Errno::EOVERFLOW)?;
    let to = usize::try_from(to).map_err(|_| Errno::EOVERFLOW)?;
    Ok(from..to.max(from))
}

/// Milliseconds since the Unix epoch as a time.
pub(super) fn time_of(ms: i64) -> SystemTime {
    let offset = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(offset).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(offset).unwrap_or(UNIX_EPOCH)
    }
}

/// A time as milliseconds since the Unix epoch.
pub(super) fn ms_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

pub(super) fn kind_of(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Directory => FileType::Directory,
        EntryKind::SymbolicLink => FileType::Symlink,
    }
}

impl Filesystem for MountFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.call(
            "lookup",
            Errno::EIO,
            self.files.lookup(self.node(parent), name),
        ) {
            Ok(Some(info)) => reply.entry(&TTL, &self.attr(&info), Generation(0)),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.info(self.node(ino)) {
            Ok(info) => reply.attr(&TTL, &self.attr(&info)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.set_attr(ino, mode, size, mtime, fh) {
            Ok(info) => reply.attr(&TTL, &self.attr(&info)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.info(self.node(ino)) {
            Ok(Info {
                target: Some(target),
                ..
            }) => reply.data(target.as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.create_child(parent, name, &Create::directory(), None) {
            Ok(info) => reply.entry(&TTL, &self.attr(&info), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let Some(target) = target.to_str() else {
            return reply.error(Errno::EINVAL);
        };
        let create = Create::symbolic_link(target);
        match self.create_child(parent, link_name, &create, None) {
            Ok(info) => reply.entry(&TTL, &self.attr(&info), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.rename_child(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let Some(newname) = newname.to_str() else {
            return reply.error(Errno::EINVAL);
        };
        let node = self.node(ino);
        let linked = self
            .call(
                "link",
                Errno::EEXIST,
                self.files.link(self.node(newparent), newname, node),
            )
            .and_then(|()| self.info(node));
        match linked {
            Ok(info) => reply.entry(&TTL, &self.attr(&info), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.changed(ino);
        reply.opened(
            self.handle(Open::File { dirty: false }),
            FopenFlags::empty(),
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_bytes(ino, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let node = self.node(ino);
        let written = self.call(
            "write",
            Errno::EIO,
            self.files.write(node, offset, Bytes::copy_from_slice(data)),
        );
        self.changed(ino);
        match written {
            Ok(count) => {
                self.mark_dirty(fh);
                reply.written(u32::try_from(count).unwrap_or(u32::MAX));
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let dirty = match lock(&self.handles).get_mut(&fh.0) {
            Some(Open::File { dirty }) => std::mem::take(dirty),
            _ => false,
        };
        if !dirty {
            return reply.ok();
        }
        match self.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        lock(&self.cache).remove(&ino);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(Open::File { dirty }) = lock(&self.handles).get_mut(&fh.0) {
            *dirty = false;
        }
        match self.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listed = self.call(
            "list",
            Errno::EIO,
            self.files.directory(self.node(ino), None, None),
        );
        match listed {
            Ok(entries) => {
                let mut list = vec![
                    (ino, FileType::Directory, ".".to_string()),
                    (ino, FileType::Directory, "..".to_string()),
                ];
                list.extend(
                    entries
                        .into_iter()
                        .map(|e| (self.ino(e.info.node), kind_of(e.info.kind), e.name)),
                );
                reply.opened(self.handle(Open::Dir(list)), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let handles = lock(&self.handles);
        let Some(Open::Dir(list)) = handles.get(&fh.0) else {
            drop(handles);
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (ino, kind, name)) in list.iter().enumerate().skip(skip) {
            if reply.add(*ino, index as u64 + 1, *kind, name) {
                break;
            }
        }
        drop(handles);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.create_child(parent, name, &Create::file(), Some(mode & !umask)) {
            Ok(info) => {
                let fh = self.handle(Open::File { dirty: true });
                reply.created(
                    &TTL,
                    &self.attr(&info),
                    Generation(0),
                    fh,
                    FopenFlags::empty(),
                );
            }
            Err(e) => reply.error(e),
        }
    }
}
