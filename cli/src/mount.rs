//! `invariant mount`: a tree of the network as a local folder, through FUSE.
//!
//! The tree (a content link, a slot, or a name) is mounted on a files server
//! (`--files`, else the first one the broker knows) and every call the kernel makes
//! becomes a call of the files protocol ([`invariant_spec::files`]): lookups and
//! attributes, directory listings (read whole at `opendir`), reads of the byte ranges
//! asked for (the files server reads only the blocks holding them; each read fetches
//! [`READ_AHEAD`] bytes at least and keeps them for the next sequential reads),
//! writes, creation of files, folders and symbolic links, hard links, renames,
//! truncation and removal.
//!
//! **Inodes.** The root node of the mount is inode 1 (FUSE's root); every other node
//! `n` of the files server is inode `n + 2`. Entries and attributes are cached by the
//! kernel for [`TTL`] only, because a slot conflict makes the files server forget
//! every node of the mount but its root.
//!
//! **Modes.** The files server tells whether a node is executable and whether it may
//! be changed: files show `r--r--r--` plus `x` bits and the owner's `w` bit
//! accordingly, folders `r-xr-xr-x` plus the owner's `w`, symbolic links `rwxrwxrwx`;
//! owner and group are those of the process that mounted. `chmod` sets the
//! executable and writable flags; ownership changes are ignored.
//!
//! **Syncing.** A mount is read-only unless `--read-write` is given. Changes are held
//! by the files server until a sync: closing a file that was written through that
//! descriptor and `fsync` sync this mount, and so does the unmount. For a plain link
//! that is `PUT /files/sync?root=` (other mounts on the same server keep their changes
//! and their conflicts), and the new tree's link is printed when the command ends.
//!
//! **Who moves a slot.** When this command can move the slot — it holds the slot's
//! ed25519 key in the config dir ([`crate::keys`]), or the slot is unsigned — it does
//! so itself, with its own token ([`SlotMover`]): the files server holds the slot's
//! tree as a plain writable mount, and each sync writes it out
//! (`GET /files/content/:root`) and swaps the slot from the address it was read at. On
//! a network with token checks that is what works, because the slots server lets
//! only an unsigned slot's registrant or an operator move it. Otherwise (a signed slot
//! whose key only the files server holds, `files-server --slot-key`) the slot is
//! mounted as a slot and the files server moves it on each sync. Either way, when
//! someone else moved the slot first, the sync that asked fails with `EIO`, a line on
//! stderr says why (with the link of this mount's tree, when this command moved the
//! slot), and the mount then shows the slot's tree: its unsynced changes are gone
//! from it.
//!
//! **Stopping.** Ctrl-C, SIGTERM or SIGHUP unmounts the folder (`umount`, or
//! `fusermount3 -u` for a user; a lazy unmount when the folder is busy);
//! `fusermount3 -u <dir>` from elsewhere ends the command too. Either way the tree is
//! then synced and unmounted from the files server; for a writable mount the resulting
//! content link is printed on stdout, and a conflict at that last sync makes the
//! command fail (the link printed is then this mount's tree, not the slot's). When the
//! files server's last sync fails otherwise, the tree is still written out and its
//! link printed, so the changes are not lost.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, Session, TimeOrNow,
    WriteFlags,
};
use invariant_spec::content::{ContentLink, EntryKind};
use invariant_spec::files::{Attributes, Create, FilesClient, Info, MountOptions, Node};
use invariant_spec::http::Endpoint;
use invariant_spec::slots::{SignatureConfig, SlotSigner, UpdateRequest};
use invariant_spec::{BrokerClient, ClientError, Id, NamesClient, SlotsClient};

use crate::{network, trees};

/// How long the kernel may keep entries and attributes.
pub const TTL: Duration = Duration::from_secs(1);

/// The least a read asks the files server for; the rest is kept for the next reads.
pub const READ_AHEAD: u64 = 4 << 20;

/// Worker threads answering the kernel.
const THREADS: usize = 4;

/// What `invariant mount` was asked.
#[derive(Debug, Clone)]
pub struct MountArgs {
    /// A content link (JSON or `@file`), a slot id, or a name.
    pub target: String,
    /// The folder to mount on.
    pub dir: PathBuf,
    /// Allow changes.
    pub read_write: bool,
    /// The files server's url (else the broker's first).
    pub files: Option<String>,
    /// Where slot keys are kept ([`crate::keys`]).
    pub config_dir: PathBuf,
}

/// Mounts the tree, serves it until a signal or an outside unmount, then unmounts it
/// from the files server (which syncs it).
pub async fn run(broker: &BrokerClient, args: MountArgs) -> anyhow::Result<()> {
    fuse_available()?;
    let meta = std::fs::metadata(&args.dir)
        .with_context(|| format!("the mount point {}", args.dir.display()))?;
    if !meta.is_dir() {
        bail!("the mount point {} is not a folder", args.dir.display());
    }
    let link = resolve_target(broker, &args.target).await?;
    let files = match &args.files {
        Some(url) => FilesClient::from_endpoint(
            Endpoint::with_client(url, broker.endpoint().http().clone())
                .with_context(|| format!("files url {url}"))?,
        ),
        None => FilesClient::from_endpoint(network::first(broker, "files").await?),
    };
    let mover = match link.slot && args.read_write {
        true => SlotMover::for_link(broker, &args.config_dir, &link).await?,
        false => None,
    };
    // A slot this command moves is mounted as the plain tree it holds now.
    let mounted_link = match &mover {
        Some(mover) => ContentLink::new(mover.current()),
        None => link.clone(),
    };
    let options = MountOptions {
        executable: false,
        writable: Some(args.read_write),
    };
    let root = files.mount(&mounted_link, options).await.with_context(|| {
        format!(
            "mounting {} on the files server at {}",
            link.address,
            files.endpoint().base_url()
        )
    })?;
    let shared = Arc::new(Shared {
        root: AtomicU64::new(root),
        mover,
    });
    let served = serve(&files, shared.clone(), args.read_write, &args.dir).await;
    let unmounted = match &shared.mover {
        Some(mover) => finish_slot(&files, &shared, mover).await,
        None => unmount_tree(&files, shared.root(), args.read_write).await,
    };
    served?;
    unmounted
}

/// Fails with a clear reason when this machine cannot mount FUSE file systems.
fn fuse_available() -> anyhow::Result<()> {
    let helper = on_path("fusermount3").or_else(|| on_path("fusermount"));
    check_fuse(
        Path::new("/dev/fuse"),
        nix::unistd::geteuid().is_root(),
        helper.is_some(),
    )
}

/// [`fuse_available`] for a device path, whether this process is root, and whether a
/// `fusermount` helper was found.
fn check_fuse(device: &Path, root: bool, helper: bool) -> anyhow::Result<()> {
    if !device.exists() {
        bail!(
            "FUSE is not available: {} is missing (load the `fuse` kernel module, or give \
             the container the device)",
            device.display()
        );
    }
    if !root && !helper {
        bail!("FUSE is not available: fusermount3 is not on PATH (Debian: apt-get install fuse3)");
    }
    Ok(())
}

/// The full path of `program` when it is on `PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A content link from what the user gave: JSON, `@file`, a slot id, or a name.
async fn resolve_target(broker: &BrokerClient, target: &str) -> anyhow::Result<ContentLink> {
    let trimmed = target.trim();
    if trimmed.starts_with('{') || trimmed.starts_with('@') {
        return trees::parse_link(trimmed);
    }
    if let Ok(slot) = trimmed.parse::<Id>() {
        return Ok(ContentLink {
            slot: true,
            ..ContentLink::new(slot)
        });
    }
    let names = NamesClient::from_endpoint(network::first(broker, "names").await?);
    let record = names
        .lookup(trimmed)
        .await?
        .with_context(|| format!("{trimmed} is neither a content link, a slot id nor a name"))?;
    Ok(ContentLink {
        slot: record.slot,
        ..ContentLink::new(record.address)
    })
}

/// Mounts the file system on `dir` and answers the kernel until it is unmounted.
async fn serve(
    files: &FilesClient,
    shared: Arc<Shared>,
    writable: bool,
    dir: &Path,
) -> anyhow::Result<()> {
    let fs = MountFs::new(
        tokio::runtime::Handle::current(),
        files.clone(),
        shared,
        writable,
    );
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("invariant".into()),
        MountOption::Subtype("invariant".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        if writable {
            MountOption::RW
        } else {
            MountOption::RO
        },
    ];
    config.n_threads = Some(THREADS);
    let mount_dir = dir.to_path_buf();
    let mut session = tokio::task::spawn_blocking(move || Session::new(fs, &mount_dir, &config))
        .await?
        .with_context(|| {
            format!(
                "mounting FUSE on {} (is FUSE usable here: /dev/fuse readable and writable, \
                 fusermount3 installed, mounting allowed?)",
                dir.display()
            )
        })?;
    let mut unmounter = session.unmount_callable();
    let mut running = tokio::task::spawn_blocking(move || session.run());
    eprintln!(
        "mounted {} ({}) at {}; Ctrl-C unmounts",
        files.endpoint().base_url(),
        if writable { "read-write" } else { "read-only" },
        dir.display()
    );
    let signal = |kind| tokio::signal::unix::signal(kind).context("installing a signal handler");
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    // A closed terminal unmounts too, rather than leaving a dead mount behind.
    let mut hangup = signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::select! {
        ended = &mut running => {
            // Unmounted from outside (`fusermount3 -u`).
            return ended?.context("the FUSE session failed");
        }
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hangup.recv() => {}
    }
    eprintln!("unmounting {}", dir.display());
    let unmounted = tokio::task::spawn_blocking(move || unmounter.unmount()).await?;
    if let Err(e) = unmounted {
        eprintln!(
            "warning: unmounting {} failed ({e}); detaching it lazily: it goes away when \
             the last program using it lets go",
            dir.display()
        );
        lazy_unmount(dir)?;
    }
    running.await?.context("the FUSE session failed")
}

/// `fusermount3 -u -z dir` (or `umount -l` when it is missing).
fn lazy_unmount(dir: &Path) -> anyhow::Result<()> {
    let status = match on_path("fusermount3").or_else(|| on_path("fusermount")) {
        Some(fusermount) => std::process::Command::new(fusermount)
            .args(["-u", "-z"])
            .arg(dir)
            .status(),
        None => std::process::Command::new("umount")
            .arg("-l")
            .arg(dir)
            .status(),
    }
    .context("running the unmount helper")?;
    if !status.success() {
        bail!("could not unmount {} ({status})", dir.display());
    }
    Ok(())
}

/// Unmounts the tree from the files server, which syncs it.
async fn unmount_tree(files: &FilesClient, root: Node, writable: bool) -> anyhow::Result<()> {
    match files.unmount(root).await {
        Ok(link) => {
            if writable {
                println!("{}", serde_json::to_string(&link)?);
            }
            Ok(())
        }
        Err(e) if e.status() == Some(409) => {
            eprintln!(
                "conflict: the slot was changed by someone else; the files server reloaded \
                 the tree from the slot and discarded the changes not yet synced ({e})"
            );
            // The reloaded tree has nothing left to sync: this one lets it go.
            if let Err(again) = files.unmount(root).await {
                eprintln!("warning: the files server keeps the tree mounted: {again}");
            }
            Err(anyhow::Error::new(e).context("the last sync lost a slot conflict"))
        }
        Err(e) if writable && e.status() != Some(404) => {
            // The tree could not be synced (say, the slot refused this files server):
            // write it out without the slot and hand its link over, so the changes
            // are not lost with the mount.
            match files.content(root).await {
                Ok(link) => {
                    println!("{}", serde_json::to_string(&link)?);
                    eprintln!(
                        "the tree as it was left is stored at the link printed above (not in \
                         the slot)"
                    );
                }
                Err(again) => eprintln!("warning: the tree could not be written out: {again}"),
            }
            Err(anyhow::Error::new(e)
                .context("unmounting the tree from the files server (it keeps the tree mounted)"))
        }
        Err(e) => Err(anyhow::Error::new(e).context("unmounting the tree from the files server")),
    }
}

/// The last sync and unmount of a slot this command moves: a conflict fails the
/// command, with the tree's link printed so the changes are not lost.
async fn finish_slot(
    files: &FilesClient,
    shared: &Shared,
    mover: &SlotMover,
) -> anyhow::Result<()> {
    let root = shared.root();
    let moved = mover.sync(files, root).await;
    let link = files.unmount(root).await;
    match moved {
        Ok(()) => {
            let link = link.context("unmounting the tree from the files server")?;
            println!("{}", serde_json::to_string(&link)?);
            Ok(())
        }
        Err(SlotSyncError::Conflict { link, error }) => {
            println!("{}", serde_json::to_string(&link)?);
            eprintln!(
                "conflict: the slot was changed by someone else; it keeps their tree, and \
                 this mount's tree is stored at the link printed above"
            );
            Err(anyhow::Error::new(error).context("the last sync lost a slot conflict"))
        }
        Err(SlotSyncError::Other(error)) => {
            Err(anyhow::Error::new(error).context("the last sync of the slot failed"))
        }
    }
}

/// What the kernel side and the command share: the files-server node of the mount's
/// root (it changes when a slot conflict reloads the tree) and the slot mover.
struct Shared {
    root: AtomicU64,
    mover: Option<SlotMover>,
}

impl Shared {
    fn root(&self) -> Node {
        self.root.load(Ordering::SeqCst)
    }
}

/// A slot this command moves itself, with the operator's token and, for an ed25519
/// slot, the key in the config dir: the files server holds the slot's tree as a plain
/// writable mount and each sync writes it out (`GET /files/content/:root`) and swaps
/// the slot from the address it was read at.
struct SlotMover {
    slots: SlotsClient,
    id: Id,
    signer: Option<SlotSigner>,
    current: Mutex<Id>,
}

/// Why a sync of a moved slot failed.
#[derive(Debug)]
enum SlotSyncError {
    /// Someone else moved the slot; `link` is this mount's tree.
    Conflict {
        link: ContentLink,
        error: ClientError,
    },
    /// Anything else.
    Other(ClientError),
}

impl SlotMover {
    /// A mover for the slot of `link` when this command can move it: it holds the
    /// slot's key, or the slot is unsigned. `None` leaves the slot to the files server
    /// (which may hold the key).
    async fn for_link(
        broker: &BrokerClient,
        config_dir: &Path,
        link: &ContentLink,
    ) -> anyhow::Result<Option<SlotMover>> {
        if !link.transforms.is_empty() {
            return Ok(None);
        }
        let id = link.address;
        let slots = SlotsClient::from_endpoint(network::first(broker, "slots").await?);
        let state = slots
            .get(&id)
            .await?
            .with_context(|| format!("unknown slot {id}"))?;
        let signer = crate::keys::load(config_dir, &id)?;
        let unsigned = slots
            .config(&id)
            .await?
            .is_some_and(|config| config.signature == SignatureConfig::None);
        if signer.is_none() && !unsigned {
            return Ok(None);
        }
        Ok(Some(SlotMover {
            slots,
            id,
            signer,
            current: Mutex::new(state.address),
        }))
    }

    fn current(&self) -> Id {
        *lock(&self.current)
    }

    /// Writes the tree at `root` out and swaps the slot to it.
    async fn sync(&self, files: &FilesClient, root: Node) -> Result<(), SlotSyncError> {
        let link = files.content(root).await.map_err(SlotSyncError::Other)?;
        let current = self.current();
        if link.address == current {
            return Ok(());
        }
        let moved = match &self.signer {
            Some(signer) => {
                self.slots
                    .update_signed(&self.id, signer, &current, &link.address)
                    .await
            }
            None => {
                let request = UpdateRequest::unsigned(current, link.address);
                self.slots.update(&self.id, &request).await
            }
        };
        match moved {
            Ok(()) => {
                *lock(&self.current) = link.address;
                Ok(())
            }
            Err(error) if error.status() == Some(409) => {
                Err(SlotSyncError::Conflict { link, error })
            }
            Err(error) => Err(SlotSyncError::Other(error)),
        }
    }

    /// After a conflict: mounts the slot's current tree in place of the one at `root`
    /// (which is let go); returns the new root.
    async fn reload(&self, files: &FilesClient, root: Node) -> Result<Node, ClientError> {
        let state = self
            .slots
            .get(&self.id)
            .await?
            .ok_or_else(|| ClientError::Protocol {
                url: self.slots.endpoint().base_url().to_string(),
                reason: format!("slot {} is gone", self.id),
            })?;
        let options = MountOptions {
            executable: false,
            writable: Some(true),
        };
        let new_root = files
            .mount(&ContentLink::new(state.address), options)
            .await?;
        *lock(&self.current) = state.address;
        if let Err(e) = files.unmount(root).await {
            eprintln!("invariant mount: letting the old tree go: {e}");
        }
        Ok(new_root)
    }
}

/// An open file or folder.
#[derive(Debug)]
enum Open {
    /// A file; `dirty` once written through this handle and not yet synced.
    File { dirty: bool },
    /// A folder's entries as read at `opendir`: inode, kind, name.
    Dir(Vec<(INodeNo, FileType, String)>),
}

/// Bytes of one file kept from a read: from `start`, and whether they reach its end.
#[derive(Debug)]
struct Cached {
    start: u64,
    data: Bytes,
    to_end: bool,
}

/// The file system the kernel talks to: every call is a files-protocol request, run
/// on the command's tokio runtime.
struct MountFs {
    runtime: tokio::runtime::Handle,
    files: FilesClient,
    shared: Arc<Shared>,
    writable: bool,
    uid: u32,
    gid: u32,
    next_handle: AtomicU64,
    handles: Mutex<HashMap<u64, Open>>,
    cache: Mutex<HashMap<INodeNo, Cached>>,
    /// Bumped after every change of file content, so a read that started before it
    /// does not keep what it fetched.
    changes: AtomicU64,
}

/// Locks `mutex`, also after a panic elsewhere (the maps stay consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MountFs {
    fn new(
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

    fn ino(&self, node: Node) -> INodeNo {
        if node == self.shared.root() {
            INodeNo::ROOT
        } else {
            INodeNo(node.saturating_add(2))
        }
    }

    fn node(&self, ino: INodeNo) -> Node {
        if ino == INodeNo::ROOT {
            self.shared.root()
        } else {
            ino.0.saturating_sub(2)
        }
    }

    /// Runs one request, mapping its failure to an errno (`conflict` for a 409).
    fn call<T>(
        &self,
        what: &str,
        conflict: Errno,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Errno> {
        self.runtime
            .block_on(request)
            .map_err(|e| self.errno(what, conflict, &e))
    }

    fn errno(&self, what: &str, conflict: Errno, e: &ClientError) -> Errno {
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

    fn info(&self, node: Node) -> Result<Info, Errno> {
        self.call("info", Errno::EIO, self.files.info(node))?
            .ok_or(Errno::ENOENT)
    }

    fn attr(&self, info: &Info) -> FileAttr {
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

    fn handle(&self, open: Open) -> FileHandle {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, open);
        FileHandle(fh)
    }

    /// Forgets kept bytes of `ino` after a change of its content.
    fn changed(&self, ino: INodeNo) {
        let mut cache = lock(&self.cache);
        self.changes.fetch_add(1, Ordering::SeqCst);
        cache.remove(&ino);
    }

    fn mark_dirty(&self, fh: FileHandle) {
        if let Some(Open::File { dirty }) = lock(&self.handles).get_mut(&fh.0) {
            *dirty = true;
        }
    }

    /// `PUT /files/sync?root=` (this mount only); a lost slot race is logged and is
    /// `EIO`.
    fn sync(&self) -> Result<(), Errno> {
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
    fn sync_slot(&self, mover: &SlotMover) -> Result<(), Errno> {
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

    fn read_bytes(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Bytes, Errno> {
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

    fn create_child(
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

    fn remove(&self, parent: INodeNo, name: &OsStr) -> Result<(), Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        self.call(
            "remove",
            Errno::ENOTEMPTY,
            self.files.remove(self.node(parent), name),
        )
    }

    fn rename_child(
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

    fn set_attr(
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
const FILE_TYPE_BITS: u32 = 0o170000;
/// The file-type bits of a folder (`S_IFDIR`).
const DIRECTORY_BITS: u32 = 0o040000;

fn range(from: u64, to: u64) -> Result<std::ops::Range<usize>, Errno> {
    let from = usize::try_from(from).map_err(|_| Errno::EOVERFLOW)?;
    let to = usize::try_from(to).map_err(|_| Errno::EOVERFLOW)?;
    Ok(from..to.max(from))
}

/// Milliseconds since the Unix epoch as a time.
fn time_of(ms: i64) -> SystemTime {
    let offset = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(offset).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(offset).unwrap_or(UNIX_EPOCH)
    }
}

/// A time as milliseconds since the Unix epoch.
fn ms_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn kind_of(kind: EntryKind) -> FileType {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_milliseconds() {
        for ms in [0, 1, 1_718_000_000_123, -5_000] {
            assert_eq!(ms_of(time_of(ms)), ms);
        }
    }

    #[test]
    fn the_root_node_is_inode_one() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let files = FilesClient::new("http://127.0.0.1:1").expect("client");
        let shared = Arc::new(Shared {
            root: AtomicU64::new(7),
            mover: None,
        });
        let fs = MountFs::new(runtime.handle().clone(), files, shared, false);
        assert_eq!(fs.ino(7), INodeNo::ROOT);
        assert_eq!(fs.node(INodeNo::ROOT), 7);
        for node in [0, 1, 2, 6, 8, 1 << 52] {
            assert_ne!(fs.ino(node), INodeNo::ROOT);
            assert_eq!(fs.node(fs.ino(node)), node);
        }
    }

    #[test]
    fn missing_fuse_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("fuse");
        let error = check_fuse(&missing, true, true).expect_err("no device");
        assert!(
            error.to_string().contains("FUSE is not available"),
            "{error}"
        );
        assert!(error.to_string().contains("is missing"), "{error}");
        let device = dir.path().join("device");
        std::fs::write(&device, b"").expect("device");
        let error = check_fuse(&device, false, false).expect_err("no helper");
        assert!(error.to_string().contains("fusermount3"), "{error}");
        assert!(
            check_fuse(&device, true, false).is_ok(),
            "root mounts itself"
        );
        assert!(check_fuse(&device, false, true).is_ok());
    }

    #[test]
    fn ranges_stay_ordered() {
        assert_eq!(range(3, 10), Ok(3..10));
        assert_eq!(range(10, 3), Ok(10..10));
    }
}
