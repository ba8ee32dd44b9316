//! The one way a vault changes. [`Vault::commit`] brings the handle's state up to the
//! vault slot (an import instead plans first against the root as last read, see
//! [`Start`]), asks a plan what to write against it, stores and pins what the plan
//! writes, seals a new root (appending the plan's audit entry to the log), and moves
//! the vault slot by compare-and-swap. When another device moved the slot first, what
//! the attempt wrote is unpinned, the handle waits a short random time, re-reads the
//! root and plans again — at most [`VaultOptions::max_attempts`] times, then
//! [`EhiError::Contention`].
//!
//! A plan may also end the vault ([`Plan::Retire`]): the slot then moves to the public
//! tombstone instead of a new root, under the same compare-and-swap and retries.
//!
//! One writer keeps a loop of its own: [`Vault::audit_batch`] (the audit entries of
//! `ehi serve`) signs and stores its entries without holding the state lock, so that
//! reads and searches are not held up by its network writes, and takes the lock only
//! for the swap; `commit` holds the lock for the whole change.
//!
//! A plan sees the state of the attempt it runs in, so a decision it makes (a grant
//! already present, a device already added) is made against the root it replaces.
//! Work that must follow a landed change (moving grant or scope slots) is done by the
//! caller once `commit` returns.

use super::*;

/// What one attempt writes: the new root (its generation, time and audit head are set
/// by the commit), the blobs it needs besides the root, the scope manifests it
/// replaces, and the blocks it makes unneeded.
#[derive(Debug)]
pub struct RootChange {
    /// The root to seal.
    pub root: VaultRoot,
    /// Blobs to store and pin before the swap (unpinned again if the swap loses).
    pub blobs: Vec<Blob>,
    /// Scope manifests the new root points at, each with its search index when the
    /// plan built one (`None` keeps the index the handle holds).
    pub manifests: Vec<(Scope, ScopeManifest, Option<Index>)>,
    /// Blocks unpinned once the swap landed (superseded manifests, versions, ...).
    pub unpin_after: Vec<Id>,
    /// The audit entry of the change, if any.
    pub audit: Option<AuditRecord>,
}

impl RootChange {
    /// A change of the root alone.
    #[doc(hidden)]
    pub fn root(root: VaultRoot) -> RootChange {
        RootChange {
            root,
            blobs: Vec::new(),
            manifests: Vec::new(),
            unpin_after: Vec::new(),
            audit: None,
        }
    }

    /// With the audit entry `record`.
    #[doc(hidden)]
    pub fn audited(mut self, record: AuditRecord) -> RootChange {
        self.audit = Some(record);
        self
    }
}

/// The future of one attempt's plan.
pub type PlanFuture<'s, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Plan<T>>> + Send + 's>>;

impl<T> Plan<T> {
    /// [`Plan::Write`].
    #[doc(hidden)]
    pub fn write(change: RootChange, value: T) -> Plan<T> {
        Plan::Write(Box::new(change), value)
    }
}

/// The future of a plan that decides without waiting for anything.
pub fn decided<'s, T: Send + 's>(plan: Result<Plan<T>>) -> PlanFuture<'s, T> {
    Box::pin(std::future::ready(plan))
}

/// A plan's answer for one attempt.
#[derive(Debug)]
pub enum Plan<T> {
    /// Nothing to write: the commit ends with this value.
    Nothing(T),
    /// Write this change; the commit ends with the value once the swap lands.
    Write(Box<RootChange>, T),
    /// End the vault: point its slot at the public tombstone instead of a new root;
    /// the commit ends with the value once that lands.
    Retire(T),
}

/// Where the first attempt of a commit starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// Re-read the vault slot first (a change decided on the freshest root).
    Reread,
    /// Plan against the root as this handle last read it; a stale handle then loses
    /// the swap and plans again on the new root (an import merges this way).
    AsLastRead,
}

impl Vault {
    /// Commits what `plan` decides against the current root (re-read first), retrying
    /// on conflicts (see the module docs). `state` is the handle's locked state;
    /// `context` is what the plan reads or keeps across attempts (the plan's future may
    /// borrow it and the state, and must be `Send` so that the commit can run in a
    /// server task).
    #[doc(hidden)]
    pub async fn commit<C, T>(
        &self,
        state: &mut State,
        context: &mut C,
        plan: impl for<'s> FnMut(&'s Vault, &'s mut State, &'s mut C) -> PlanFuture<'s, T>,
    ) -> Result<T> {
        self.commit_from(Start::Reread, state, context, plan).await
    }

    /// [`Vault::commit`] with the first attempt starting from `start`.
    pub(super) async fn commit_from<C, T>(
        &self,
        start: Start,
        state: &mut State,
        context: &mut C,
        mut plan: impl for<'s> FnMut(&'s Vault, &'s mut State, &'s mut C) -> PlanFuture<'s, T>,
    ) -> Result<T> {
        let attempts = self.options.max_attempts.max(1);
        for attempt in 1..=attempts {
            if attempt > 1 || start == Start::Reread {
                self.refresh_state(state).await?;
            }
            let (landed, value) = match plan(self, state, context).await? {
                Plan::Nothing(value) => return Ok(value),
                Plan::Write(change, value) => (self.swap_root(state, *change).await?, value),
                Plan::Retire(value) => (self.retire(state).await?, value),
            };
            if landed {
                return Ok(value);
            }
            if attempt < attempts {
                crate::time::backoff(attempt).await;
            }
        }
        Err(EhiError::Contention { attempts })
    }

    /// Stores and pins what `change` writes and the sealed root, and compare-and-swaps
    /// the vault slot. `Ok(false)` when another device committed first (nothing of this
    /// attempt stays pinned). On success `state` takes the new root and manifests, and
    /// the old root blocks and `change.unpin_after` are unpinned.
    async fn swap_root(&self, state: &mut State, change: RootChange) -> Result<bool> {
        let RootChange {
            mut root,
            mut blobs,
            manifests,
            unpin_after,
            audit,
        } = change;
        root.format = ROOT_FORMAT;
        let mut appended = None;
        if let Some(record) = &audit {
            self.ensure_audit_tail(state).await?;
            let (blob, entry) = self.audit_blob(state, record)?;
            root.audit_head = Some(*blob.address.as_bytes());
            appended = Some((blob.address, entry));
            blobs.push(blob);
        }
        root.generation += 1;
        root.updated_ms = now_ms().max(root.updated_ms);
        let sealed = seal_root(&root, &state.root_keys)?;
        let head = sealed.head.address;
        let root_blocks = sealed.addresses();
        blobs.extend(sealed.into_blobs());
        let blocks: Vec<Id> = blobs.iter().map(|b| b.address).collect();
        let stored = async {
            self.put_all(blobs).await?;
            self.net.pin(&blocks).await
        }
        .await;
        if let Err(e) = stored {
            self.net.unpin_quietly(&blocks).await;
            return Err(e);
        }
        match self
            .net
            .slots()
            .update_signed(&self.slot, &self.signer, &state.root_head, &head)
            .await
        {
            Ok(()) => {
                let mut old = std::mem::replace(&mut state.root_blocks, root_blocks);
                old.extend(unpin_after);
                state.root_head = head;
                let prev_head = state.root.audit_head;
                state.root = root;
                if let Some((address, entry)) = appended {
                    state.appended_audit(prev_head, address, entry);
                }
                for (scope, manifest, index) in manifests {
                    let index = index.or_else(|| {
                        state
                            .scopes
                            .get_mut(&scope)
                            .and_then(|loaded| loaded.index.take())
                    });
                    state.scopes.insert(scope, Loaded { manifest, index });
                }
                self.net.unpin_quietly(&old).await;
                Ok(true)
            }
            Err(e) if Rejection::of(&e) == Some(Rejection::Conflict) => {
                self.net.unpin_quietly(&blocks).await;
                Ok(false)
            }
            Err(e) => {
                self.net.unpin_quietly(&blocks).await;
                Err(EhiError::network("moving the vault slot", e))
            }
        }
    }

    /// Points the vault slot at the public tombstone (stored by the caller), retried
    /// like any commit, and returns every block the retired root listed (the audit
    /// log walked to its start), for the caller to unpin.
    pub async fn retire_root(&self, state: &mut State) -> Result<Vec<Id>> {
        self.commit(state, &mut (), |vault, state, ()| {
            Box::pin(async move {
                if let Err(e) = vault.ensure_audit_blocks(state).await {
                    tracing::warn!(error = %e, "walking the audit log");
                }
                Ok(Plan::Retire(state.all_blocks()))
            })
        })
        .await
    }

    /// Commits a change of the root's format 3 extensions with an audit entry (retried
    /// on conflict; `edit` runs on the freshest root and may refuse).
    pub async fn commit_extension(
        &self,
        edit: impl Fn(&mut VaultRoot) -> Result<()>,
        audit: &AuditRecord,
    ) -> Result<()> {
        let mut state = self.state.lock().await;
        self.commit(&mut state, &mut (edit, audit), |_, state, (edit, audit)| {
            let mut root = state.root.clone();
            let change = edit(&mut root).map(|()| RootChange::root(root).audited((*audit).clone()));
            decided(change.map(|change| Plan::write(change, ())))
        })
        .await
    }
}

impl Vault {
    /// Compare-and-swaps the vault slot to the tombstone (stored by the caller).
    /// `Ok(false)` when another device committed first.
    async fn retire(&self, state: &State) -> Result<bool> {
        match self
            .net
            .slots()
            .update_signed(
                &self.slot,
                &self.signer,
                &state.root_head,
                &tombstone_address(),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if Rejection::of(&e) == Some(Rejection::Conflict) => Ok(false),
            Err(e) => Err(EhiError::network(
                "moving the vault slot to the tombstone",
                e,
            )),
        }
    }
}
