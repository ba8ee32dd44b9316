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

mod fs;
mod slot;

use fs::*;
use slot::*;

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
