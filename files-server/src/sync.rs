//! Writing changes out: files as content-defined blocks, directories as directory
//! blobs (bottom-up, only the ones that changed), and, for slot mounts, the new root
//! address into the slot with compare-and-swap.
//!
//! A sync (`PUT /files/sync`, the periodic sync, unmount, and the last sync at
//! graceful shutdown) handles every writable mount in turn (`PUT /files/sync?root=`
//! only the one mounted at that root); syncs, unmounts and
//! `GET /files/content` never overlap. Unchanged files and directories keep their
//! links and are not uploaded again. Changes made while a sync runs may or may not
//! be part of it; whatever it missed stays marked and goes out with the next one.
//!
//! **Slot conflicts.** The update names, as `previous`, the address this server last
//! read from or wrote to the slot. When the slots server answers 409 (someone else
//! moved the slot), the mount is reloaded from the slot's current value: the root
//! keeps its node number, every other node of the mount is forgotten (404), and the
//! mount's unsynced changes are discarded (the blocks already written stay in
//! storage, unreferenced). The sync (or unmount) answers 409 naming the slot.
//!
//! **Slot shapes.** A slot holds one address, read with the transforms of the link
//! the slot was mounted with (`[]` or `[Blocks]`). With `[Blocks]` a new root is
//! wrapped in a one-entry block list when it is a single blob; with `[]` a root too
//! large for one blob cannot be stored and the sync fails with 422. Directory blobs
//! are therefore stored whole, without transforms, up to the block limit (just under
//! 2 MiB, some ten thousand entries); only larger ones are cut into blocks.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt, stream};
use invariant_content::tree::encode_directory;
use invariant_content::writer::MAX_BLOCK_SIZE;
use invariant_content::{ContentError, Written};
use invariant_spec::Id;
use invariant_spec::content::{Block, ContentLink, Entry, Transform};
use invariant_spec::files::Node;
use invariant_spec::slots::{Rejection, UpdateRequest};

use crate::error::{FilesError, FilesResult, SlotConflict};
use crate::fs::FileSystem;
use crate::table::{Body, SlotMount};

/// Children written out at once per directory.
const FLUSH_PARALLELISM: usize = 4;

enum Target {
    File(std::sync::Arc<crate::file::FileContent>),
    Directory,
    Symlink,
}

impl FileSystem {
    /// Writes every change of every writable mount out. Every mount is attempted; a
    /// lost slot race is reported as [`FilesError::Conflict`] (all of them), else the
    /// first other failure.
    pub async fn sync(&self) -> FilesResult<()> {
        let _guard = self.sync_lock.lock().await;
        let roots = self.table().writable_mounts();
        let mut conflicts = Vec::new();
        let mut failure = None;
        for root in roots {
            match self.sync_mount(root).await {
                Ok(_) => {}
                Err(FilesError::Conflict(mut lost)) => conflicts.append(&mut lost),
                Err(e) => {
                    tracing::warn!(root, error = %e, "sync of a mount failed");
                    failure.get_or_insert(e);
                }
            }
        }
        if !conflicts.is_empty() {
            for conflict in &conflicts {
                tracing::warn!(%conflict, "slot conflict");
            }
            return Err(FilesError::Conflict(conflicts));
        }
        failure.map_or(Ok(()), Err)
    }

    /// Writes every change of the mount at `root` out (nothing for a read-only
    /// mount); a lost slot race is [`FilesError::Conflict`] and reloads that mount.
    /// The other mounts are left for their own syncs.
    pub async fn sync_root(&self, root: Node) -> FilesResult<()> {
        let _guard = self.sync_lock.lock().await;
        if !self.table().mount(root)?.writable {
            return Ok(());
        }
        match self.sync_mount(root).await {
            Ok(_) => Ok(()),
            Err(FilesError::Conflict(lost)) => {
                for conflict in &lost {
                    tracing::warn!(%conflict, "slot conflict");
                }
                Err(FilesError::Conflict(lost))
            }
            Err(e) => Err(e),
        }
    }

    /// Syncs the mount at `root` and forgets it; returns the link of its tree.
    pub async fn unmount(&self, root: Node) -> FilesResult<ContentLink> {
        let _guard = self.sync_lock.lock().await;
        let (writable, link) = {
            let table = self.table();
            let mount = table.mount(root)?;
            (mount.writable, mount.link.clone())
        };
        let link = if writable {
            self.sync_mount(root).await?
        } else {
            link
        };
        self.table().remove_mount(root);
        tracing::info!(root, address = %link.address, "unmounted");
        Ok(link)
    }

    /// The link of `node`'s current content, its pending changes written out (the
    /// slot of a slot mount is not updated: that is what sync does).
    pub async fn content(&self, node: Node) -> FilesResult<ContentLink> {
        let _guard = self.sync_lock.lock().await;
        match self.flush_node(node).await? {
            Some(written) => Ok(written.link),
            None => Err(FilesError::NoContent(node)),
        }
    }

    /// Writes mount `root` out and, for a slot mount, commits it to the slot.
    async fn sync_mount(&self, root: Node) -> FilesResult<ContentLink> {
        let written = self.flush_directory(root).await?;
        let slot = self.table().mount(root)?.slot.clone();
        let Some(slot) = slot else {
            self.table().mount_mut(root)?.link = written.link.clone();
            return Ok(written.link);
        };
        let (address, link) = self.slot_form(&slot, written).await?;
        if address != slot.current {
            let slots = self.peers.slots().await?;
            let result = match &slot.signer {
                Some(signer) => {
                    slots
                        .update_signed(&slot.id, signer, &slot.current, &address)
                        .await
                }
                None => {
                    let request = UpdateRequest::unsigned(slot.current, address);
                    slots.update(&slot.id, &request).await
                }
            };
            if let Err(e) = result {
                return Err(match Rejection::of(&e) {
                    Some(Rejection::Conflict) => {
                        let current = self.reload(root, &slot).await?;
                        FilesError::Conflict(vec![SlotConflict {
                            root,
                            slot: slot.id,
                            current,
                        }])
                    }
                    Some(Rejection::Forbidden) => FilesError::SlotRefused {
                        slot: slot.id,
                        reason: e.to_string(),
                    },
                    Some(Rejection::NotFound) => FilesError::SlotNotFound(slot.id),
                    _ => FilesError::Slots(e),
                });
            }
            tracing::info!(root, slot = %slot.id, %address, "slot updated");
        }
        let mut table = self.table();
        let mount = table.mount_mut(root)?;
        if let Some(mounted) = &mut mount.slot {
            mounted.current = address;
        }
        mount.link = link.clone();
        Ok(link)
    }

    /// The address to store in the slot for root `written`, and the link reading it.
    async fn slot_form(
        &self,
        slot: &SlotMount,
        written: Written,
    ) -> FilesResult<(Id, ContentLink)> {
        let plain = written.link.transforms.is_empty();
        let blocks = written.link.transforms == [Transform::Blocks];
        match slot.transforms.as_slice() {
            [] if plain => Ok((written.link.address, ContentLink::new(written.link.address))),
            [Transform::Blocks] if blocks => {
                let address = written.link.address;
                Ok((address, block_link(address)))
            }
            [Transform::Blocks] if plain => {
                let list = vec![Block {
                    content: written.link,
                    size: written.size,
                }];
                let bytes = serde_json::to_vec(&list)
                    .map_err(|e| FilesError::Internal(format!("encoding a block list: {e}")))?;
                let address = Id::of_content(&bytes);
                self.store_blob(address, Bytes::from(bytes)).await?;
                Ok((address, block_link(address)))
            }
            _ => Err(FilesError::Unrepresentable(format!(
                "the new root of slot {} needs transforms the slot's mount link does not \
                 have (the root directory is too large for one blob); mount the slot with \
                 transforms [{{\"kind\":\"Blocks\"}}]",
                slot.id
            ))),
        }
    }

    /// Reloads mount `root` from its slot after a lost race; returns the slot's value.
    async fn reload(&self, root: Node, slot: &SlotMount) -> FilesResult<Id> {
        let slots = self.peers.slots().await?;
        let state = slots
            .get(&slot.id)
            .await
            .map_err(FilesError::Slots)?
            .ok_or(FilesError::SlotNotFound(slot.id))?;
        let link = ContentLink {
            transforms: slot.transforms.clone(),
            ..ContentLink::new(state.address)
        };
        let (entries, size) = self
            .load_directory(&link)
            .await
            .map_err(FilesError::Content)?;
        let mut table = self.table();
        table.reset_mount(
            root,
            Written {
                link: link.clone(),
                size,
            },
        )?;
        table.install(root, entries)?;
        let mount = table.mount_mut(root)?;
        if let Some(mounted) = &mut mount.slot {
            mounted.current = state.address;
        }
        mount.link = link;
        tracing::warn!(root, slot = %slot.id, address = %state.address, "mount reloaded from its slot");
        Ok(state.address)
    }

    /// Writes `node` out; `None` for symbolic links.
    fn flush_node(&self, node: Node) -> BoxFuture<'_, FilesResult<Option<Written>>> {
        Box::pin(async move {
            let target = match &self.table().node(node)?.body {
                Body::File(content) => Target::File(content.clone()),
                Body::Directory(_) => Target::Directory,
                Body::Symlink(_) => Target::Symlink,
            };
            match target {
                Target::File(content) => content.flush(&self.env).await.map(Some),
                Target::Directory => self.flush_directory(node).await.map(Some),
                Target::Symlink => Ok(None),
            }
        })
    }

    /// Writes directory `dir` out: its changed children first, then its blob.
    async fn flush_directory(&self, dir: Node) -> FilesResult<Written> {
        let (children, version) = {
            let table = self.table();
            let directory = table.directory(dir)?;
            if let Some(written) = &directory.clean {
                return Ok(written.clone());
            }
            let children: Vec<(String, Node)> = table
                .children(dir)?
                .iter()
                .map(|(name, child)| (name.clone(), *child))
                .collect();
            (children, directory.changed)
        };
        let flushed: Vec<(String, Node, Option<Written>)> = stream::iter(children)
            .map(|(name, child)| async move {
                match self.flush_node(child).await {
                    Ok(written) => Ok(Some((name, child, written))),
                    // Removed meanwhile: this directory changed too and stays dirty.
                    Err(FilesError::UnknownNode(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffered(FLUSH_PARALLELISM)
            .try_filter_map(|item| async move { Ok(item) })
            .try_collect()
            .await?;
        let entries = {
            let table = self.table();
            flushed
                .into_iter()
                .filter_map(|(name, child, written)| table.entry(&name, child, written))
                .collect()
        };
        let written = self.write_directory(entries).await?;
        let mut table = self.table();
        if let Ok(directory) = table.directory_mut(dir)
            && directory.changed == version
            && directory.children.is_some()
        {
            directory.clean = Some(written.clone());
        }
        Ok(written)
    }
}

impl FileSystem {
    /// Stores a directory blob: as one blob (no transforms) whenever it fits in one,
    /// so slot roots stay plain addresses; larger ones go through the chunking writer.
    async fn write_directory(&self, mut entries: Vec<Entry>) -> FilesResult<Written> {
        let encoded = tokio::task::spawn_blocking(move || {
            // The address is not known yet; errors name the empty directory's instead.
            let bytes = encode_directory(&mut entries, Id::of_content(b""))?;
            let address = Id::of_content(&bytes);
            Ok::<_, ContentError>((address, bytes))
        })
        .await
        .map_err(FilesError::task)?
        .map_err(FilesError::Content)?;
        let (address, bytes) = encoded;
        if bytes.len() > MAX_BLOCK_SIZE {
            return self
                .env
                .writer
                .write_bytes(&bytes)
                .await
                .map_err(FilesError::Content);
        }
        let size = bytes.len() as u64;
        self.store_blob(address, Bytes::from(bytes)).await?;
        Ok(Written {
            link: ContentLink::new(address),
            size,
        })
    }

    /// Stores one blob on the write set unless it is there already.
    async fn store_blob(&self, address: Id, bytes: Bytes) -> FilesResult<()> {
        let store = self.env.writer.store();
        let failed = |source| FilesError::Content(ContentError::Store { address, source });
        if !store.has(address).await.map_err(failed)? {
            store.put(address, bytes).await.map_err(failed)?;
        }
        Ok(())
    }
}

fn block_link(address: Id) -> ContentLink {
    ContentLink {
        transforms: vec![Transform::Blocks],
        ..ContentLink::new(address)
    }
}
