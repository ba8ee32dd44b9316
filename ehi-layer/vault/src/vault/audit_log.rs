//! The vault's audit log (design in [`crate::audit`]): entries are appended in the same
//! commit as the change they record (imports, grants, revocations), or in a commit of
//! their own ([`Vault::audit`]: exports, reads, searches reported by the command line).
//! Appending needs only the newest entry (fetched when the root's `audit_head` moved).
//! The address of every entry — so that the vault's block list, pins and removal cover
//! the log — is walked backwards from the head on demand ([`Vault::blocks`],
//! [`Vault::status`], `ehi_share::remove`, [`Vault::audit_entries`]), incrementally
//! from the entries already known; opening a vault does not walk the log.

use std::collections::HashSet;

use super::*;
use crate::audit::{self, AuditBreak};
use crate::keys::CONTEXT_AUDIT;

/// Context string of audit entries in the envelope's associated data.
const AUDIT_CONTEXT: &str = "audit";

impl Vault {
    /// The audit AEAD key of root key generation `epoch` (entries carry the generation
    /// of the root key current when they were written in their envelope's epoch).
    fn audit_keys(state: &State) -> impl Fn(u32) -> Option<SecretKey> + Clone + use<> {
        let keys = state.root_keys.clone();
        move |epoch| keys.get(epoch).map(|k| k.derive(CONTEXT_AUDIT))
    }

    /// Signs and seals the entry for `record` after the newest entry of `state`.
    pub(super) fn audit_blob(
        &self,
        state: &State,
        record: &AuditRecord,
    ) -> Result<(Blob, AuditEntry)> {
        let writer = self.signing.verifying_key().to_bytes();
        let event = record.to_fhir(&writer, "ehi-layer patient device", now_ms());
        let prev = state
            .audit_tail
            .as_ref()
            .map(|(address, entry)| (entry, *address.as_bytes()));
        let entry = AuditEntry::sign(&self.signing, prev, &event)?;
        let bytes = Zeroizing::new(format::encode(&entry, "audit entry")?);
        let (generation, root_key) = state.root_keys.current();
        let sealed = seal::seal_object(
            &root_key.derive(CONTEXT_AUDIT),
            Kind::Audit,
            AUDIT_CONTEXT,
            generation,
            &bytes,
        )?;
        if !sealed.chunks.is_empty() {
            return Err(EhiError::InvalidArgument("audit event too large".into()));
        }
        Ok((sealed.head, entry))
    }

    /// Appends `record` to the audit log (one commit of its own).
    pub async fn audit(&self, record: AuditRecord) -> Result<()> {
        let mut state = self.state.lock().await;
        self.commit(&mut state, &mut &record, |_, state, record| {
            let change = RootChange::root(state.root.clone()).audited((*record).clone());
            commit::decided(Ok(Plan::write(change, ())))
        })
        .await
    }

    /// Every audit entry, oldest first (as of the last refresh).
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>> {
        let mut state = self.state.lock().await;
        self.refresh_state(&mut state).await?;
        self.ensure_audit_blocks(&mut state).await?;
        let blocks = state.audit_blocks.clone();
        let key = Self::audit_keys(&state);
        drop(state);
        let fetched: Vec<Result<AuditEntry>> = stream::iter(blocks)
            .map(|address| {
                let key = key.clone();
                async move { self.fetch_audit_entry(address, key).await }
            })
            .buffered(self.options.concurrency.max(1))
            .collect()
            .await;
        fetched.into_iter().collect()
    }

    /// Verifies the audit log end to end (signatures by the patient's key, hash chain,
    /// order). Returns the number of entries, or [`EhiError::AuditBroken`] naming the
    /// first bad entry.
    pub async fn audit_verify(&self) -> Result<usize> {
        let entries = self.audit_entries().await?;
        let trusted = [self.signing.verifying_key().to_bytes()];
        audit::verify_chain(&entries, &trusted).map_err(|b: AuditBreak| EhiError::AuditBroken(b))
    }

    async fn fetch_audit_entry(
        &self,
        address: Id,
        key: impl Fn(u32) -> Option<SecretKey>,
    ) -> Result<AuditEntry> {
        let what = format!("audit entry {address}");
        let (bytes, _) = self
            .fetch_object(address, Kind::Audit, AUDIT_CONTEXT, &what, key)
            .await?;
        audit::decode_entry(&bytes)
    }

    /// Loads the newest audit entry (what the next entry chains to) if the root's
    /// `audit_head` moved.
    pub(super) async fn ensure_audit_tail(&self, state: &mut State) -> Result<()> {
        let Some(head) = state.root.audit_head.map(Id::from_bytes) else {
            state.audit_tail = None;
            return Ok(());
        };
        if state.audit_tail.as_ref().is_some_and(|(a, _)| *a == head) {
            return Ok(());
        }
        let entry = self
            .fetch_audit_entry(head, Self::audit_keys(state))
            .await?;
        state.audit_tail = Some((head, entry));
        Ok(())
    }

    /// Completes `state.audit_blocks` for the root's `audit_head` (walking back from it
    /// until an entry already known).
    pub(super) async fn ensure_audit_blocks(&self, state: &mut State) -> Result<()> {
        let head = state.root.audit_head;
        if state.audit_for == Some(head) {
            return Ok(());
        }
        self.follow_audit(state, head).await?;
        state.audit_for = Some(head);
        Ok(())
    }

    /// Brings `state.audit_blocks`/`audit_tail` to `head`, walking back from it until
    /// an entry this handle already knows.
    async fn follow_audit(&self, state: &mut State, head: Option<[u8; 32]>) -> Result<()> {
        let Some(head) = head.map(Id::from_bytes) else {
            state.audit_blocks.clear();
            state.audit_tail = None;
            return Ok(());
        };
        let known: HashSet<Id> = state.audit_blocks.iter().copied().collect();
        let key = Self::audit_keys(state);
        let mut newer: Vec<Id> = Vec::new();
        let mut tail: Option<AuditEntry> = None;
        let mut next = Some(head);
        let mut last_seq = u64::MAX;
        while let Some(address) = next {
            if known.contains(&address) {
                break;
            }
            let entry = self.fetch_audit_entry(address, key.clone()).await?;
            if entry.seq >= last_seq {
                return Err(EhiError::corrupt(
                    "the audit log",
                    format!("entry {address} does not precede the next one"),
                ));
            }
            last_seq = entry.seq;
            next = entry.prev_address.map(Id::from_bytes);
            if tail.is_none() {
                tail = Some(entry);
            }
            newer.push(address);
        }
        let mut blocks = match next {
            // Reached a known entry: keep the history up to it.
            Some(stop) => {
                let keep = state
                    .audit_blocks
                    .iter()
                    .position(|a| *a == stop)
                    .map_or(0, |i| i + 1);
                state.audit_blocks[..keep].to_vec()
            }
            None => Vec::new(),
        };
        newer.reverse();
        blocks.extend(newer);
        state.audit_blocks = blocks;
        state.audit_tail = match tail {
            Some(entry) => Some((head, entry)),
            None => {
                // The head is an entry already known (a rollback): reload it.
                let entry = self.fetch_audit_entry(head, key).await?;
                Some((head, entry))
            }
        };
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Batches (`ehi serve` logs every request)
// ---------------------------------------------------------------------------------------

impl Vault {
    /// Appends `pending` to the audit log, chained in order, in **one** commit (one
    /// blob per entry, one root swap): how [`Vault::flush_audit`] appends what the
    /// front ends queued, instead of one network commit per read. Entries record who asked
    /// ([`crate::audit::Requestor`]) and their own time. Does nothing for an empty
    /// batch.
    ///
    /// The vault's state lock is held only to take a snapshot (root and newest entry)
    /// and for the final compare-and-swap: signing, sealing and storing the entries
    /// run without it, so reads and searches are not held up by the network writes.
    /// If the vault moved meanwhile, the batch is rebuilt on the new root.
    pub async fn audit_batch(&self, pending: &[crate::audit::PendingAudit]) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let writer = self.signing.verifying_key().to_bytes();
        for attempt in 1..=self.options.max_attempts {
            // Snapshot.
            let (base_head, mut root, mut tail, root_keys) = {
                let mut state = self.state.lock().await;
                self.refresh_state(&mut state).await?;
                self.ensure_audit_tail(&mut state).await?;
                (
                    state.root_head,
                    state.root.clone(),
                    state.audit_tail.clone(),
                    state.root_keys.clone(),
                )
            };
            // Entries are sealed under the current root key generation (see
            // [`Vault::audit_blob`]).
            let (generation, root_key) = root_keys.current();
            let key = root_key.derive(CONTEXT_AUDIT);
            let prev_head = root.audit_head;
            // Entries and root, without the lock.
            let mut blobs: Vec<Blob> = Vec::with_capacity(pending.len() + 1);
            let mut appended: Vec<(Id, AuditEntry)> = Vec::with_capacity(pending.len());
            for p in pending {
                let event = p.record.to_fhir_for(
                    &writer,
                    "ehi-layer patient device",
                    p.ms,
                    p.requestor.as_ref(),
                );
                let prev = tail.as_ref().map(|(a, e)| (e, *a.as_bytes()));
                let entry = AuditEntry::sign(&self.signing, prev, &event)?;
                let bytes = Zeroizing::new(format::encode(&entry, "audit entry")?);
                let sealed =
                    seal::seal_object(&key, Kind::Audit, AUDIT_CONTEXT, generation, &bytes)?;
                if !sealed.chunks.is_empty() {
                    return Err(EhiError::InvalidArgument("audit event too large".into()));
                }
                tail = Some((sealed.head.address, entry.clone()));
                appended.push((sealed.head.address, entry));
                blobs.push(sealed.head);
            }
            root.format = ROOT_FORMAT;
            root.audit_head = tail.as_ref().map(|(a, _)| *a.as_bytes());
            root.generation += 1;
            root.updated_ms = now_ms().max(root.updated_ms);
            let sealed = seal_root(&root, &root_keys)?;
            let head = sealed.head.address;
            let root_blocks = sealed.addresses();
            blobs.extend(sealed.into_blobs());
            let blocks: Vec<Id> = blobs.iter().map(|b| b.address).collect();
            self.put_all(blobs).await?;
            self.net.pin(&blocks).await?;
            // Compare-and-swap, under the lock, only if nothing moved meanwhile.
            let mut state = self.state.lock().await;
            if state.root_head != base_head {
                drop(state);
                self.net.unpin_quietly(&blocks).await;
                crate::time::backoff(attempt).await;
                continue;
            }
            match self
                .net
                .slots()
                .update_signed(&self.slot, &self.signer, &base_head, &head)
                .await
            {
                Ok(()) => {
                    let old = std::mem::replace(&mut state.root_blocks, root_blocks);
                    state.root_head = head;
                    state.root = root;
                    let mut prev = prev_head;
                    for (address, entry) in appended {
                        state.appended_audit(prev, address, entry);
                        prev = Some(*address.as_bytes());
                    }
                    drop(state);
                    self.net.unpin_quietly(&old).await;
                    return Ok(());
                }
                Err(e) if Rejection::of(&e) == Some(Rejection::Conflict) => {
                    drop(state);
                    self.net.unpin_quietly(&blocks).await;
                    if attempt == self.options.max_attempts {
                        break;
                    }
                    crate::time::backoff(attempt).await;
                }
                Err(e) => {
                    drop(state);
                    self.net.unpin_quietly(&blocks).await;
                    return Err(EhiError::network("moving the vault slot", e));
                }
            }
        }
        Err(EhiError::Contention {
            attempts: self.options.max_attempts,
        })
    }
}
