//! Moving a mounted slot from the command itself (with its own token and key), when
//! the files server holds the tree as a plain writable mount: the sync writes the tree
//! out and compare-and-swaps the slot; a lost race is reported as a conflict.

use super::*;

/// What the kernel side and the command share: the files-server node of the mount's
/// root (it changes when a slot conflict reloads the tree) and the slot mover.
pub(super) struct Shared {
    pub(super) root: AtomicU64,
    pub(super) mover: Option<SlotMover>,
}

impl Shared {
    pub(super) fn root(&self) -> Node {
        self.root.load(Ordering::SeqCst)
    }
}

/// A slot this command moves itself, with the operator's token and, for an ed25519
/// slot, the key in the config dir: the files server holds the slot's tree as a plain
/// writable mount and each sync writes it out (`GET /files/content/:root`) and swaps
/// the slot from the address it was read at.
pub(super) struct SlotMover {
    pub(super) slots: SlotsClient,
    pub(super) id: Id,
    pub(super) signer: Option<SlotSigner>,
    pub(super) current: Mutex<Id>,
}

/// Why a sync of a moved slot failed.
#[derive(Debug)]
pub(super) enum SlotSyncError {
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
    pub(super) async fn for_link(
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

    pub(super) fn current(&self) -> Id {
        *lock(&self.current)
    }

    /// Writes the tree at `root` out and swaps the slot to it.
    pub(super) async fn sync(&self, files: &FilesClient, root: Node) -> Result<(), SlotSyncError> {
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
    pub(super) async fn reload(
        &self,
        files: &FilesClient,
        root: Node,
    ) -> Result<Node, ClientError> {
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
