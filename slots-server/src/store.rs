//! The slot database: one redb file, `<data-dir>/slots.redb`.
//!
//! Tables (every value starts with the record format version, [`FORMAT`]):
//! - `configs`: slot id → (format, signature kind, RSA public key PEM or `""`).
//! - `states`: (slot id, sequence) → (format, address, previous address or none for the
//!   root, time in ms, signature bytes or none).
//! - `owners`: slot id → (format, subject): the token subject that registered the slot
//!   (auth mode only). Slots registered in open mode, and every slot of a database
//!   written before owners existed, have no entry: they are *unowned*. The table is
//!   created on open, so older databases open unchanged.
//!
//! The registration is the first entry of the slot's key range (sequence 0, unless the
//! slot was claimed, below) and each accepted update appends the next sequence, so the
//! current state is the last entry and the history is the range read backwards.
//!
//! **Entries are never changed or removed, with one exception: a claim.** A claimed
//! `ed25519` registration ([`Op::Register`] with a claim) of an id held by an unsigned
//! or `sha256:rsa` slot replaces that slot: its states are deleted, its owner and
//! configuration replaced, and the new registration state is written at the *next*
//! sequence (so sequences stay increasing and a watcher simply sees it as the next
//! state). The sequence of a slot's registration state, its *base*, identifies the
//! registration: an [`Op::Update`] carries the base its signature and owner were
//! checked against, and one checked against a replaced registration is refused
//! ([`Outcome::Reregistered`]).
//!
//! Reads use their own read transaction; all writes go through [`Store::apply`], called
//! only by the writer thread ([`crate::writer`]), which commits each batch in one
//! durable transaction.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use invariant_runtime::store::DatabaseOpener;
use invariant_spec::Id;
use invariant_spec::slots::{Previous, SignatureConfig, SlotState, encode_signature};
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable, TableDefinition};

/// Version of the record layouts below; stored in every record.
pub const FORMAT: u8 = 1;

/// Signature kind codes in `configs`.
const KIND_NONE: u8 = 0;
const KIND_RSA: u8 = 1;
const KIND_ED25519: u8 = 2;

type ConfigValue = (u8, u8, &'static str);
/// (format, subject).
type OwnerValue = (u8, &'static str);
type StateKey = ([u8; 32], u64);
/// (format, address, previous address or `None` for root, time ms, signature bytes).
type StateRecord<'a> = (u8, [u8; 32], Option<[u8; 32]>, u64, Option<&'a [u8]>);
type StateValue = StateRecord<'static>;

const CONFIGS: TableDefinition<[u8; 32], ConfigValue> = TableDefinition::new("configs");
const STATES: TableDefinition<StateKey, StateValue> = TableDefinition::new("states");
const OWNERS: TableDefinition<[u8; 32], OwnerValue> = TableDefinition::new("owners");

pub use invariant_runtime::store::StoreError;

/// A [`StoreError::Corrupt`] of slot `slot`'s record.
fn corrupt(slot: &Id, reason: impl Into<String>) -> StoreError {
    StoreError::corrupt(format!("record of slot {slot}"), reason)
}

/// A change for the writer to apply.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create slot `id` at `address`, authorised by `signature`.
    Register {
        /// The new slot.
        id: Id,
        /// Its first address.
        address: Id,
        /// Its (validated) signature configuration.
        signature: SignatureConfig,
        /// The subject registering it (auth mode), recorded as its owner.
        owner: Option<String>,
        /// A verified ed25519 claim: the signature of the registration state. With it,
        /// an unsigned or `sha256:rsa` slot holding the id is replaced.
        claim: Option<Vec<u8>>,
    },
    /// Compare-and-swap slot `id` from `previous` to `address`.
    Update {
        /// The slot.
        id: Id,
        /// The base (registration sequence) of the registration the request was
        /// checked against.
        base: u64,
        /// Expected current address.
        previous: Previous,
        /// New address.
        address: Id,
        /// The verified signature, for signed slots.
        signature: Option<Vec<u8>>,
    },
}

/// What a slot's updates are checked against: its configuration, owner and base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// How updates are authorised.
    pub config: SignatureConfig,
    /// The subject that registered the slot, when it was registered in auth mode.
    pub owner: Option<String>,
    /// The sequence of the registration state (0 unless the slot was claimed).
    pub base: u64,
}

/// What applying one [`Op`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The op was applied; `state` is the slot's new state with sequence `seq`.
    Accepted {
        /// The slot.
        id: Id,
        /// The new state's sequence number (0 = registration).
        seq: u64,
        /// The new state.
        state: SlotState,
    },
    /// Register: a claim replaced the unsigned or `sha256:rsa` slot that held the id;
    /// `state` is the new registration state with sequence `seq` (the new base).
    Claimed {
        /// The slot.
        id: Id,
        /// The registration state's sequence number.
        seq: u64,
        /// The registration state.
        state: SlotState,
    },
    /// Register: the id is already registered (and not replaceable by this request).
    Taken,
    /// Register: this store cannot record the signature kind.
    Unsupported,
    /// Update: the slot is unknown.
    Unknown,
    /// Update: `previous` is not the current address, which is `current`.
    Stale {
        /// The slot's current address.
        current: Id,
    },
    /// Update: the slot was re-registered (claimed) since the request was checked;
    /// nothing was changed.
    Reregistered,
}

/// The slot database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database at `path` and its tables. Waits up to 5 s when
    /// the file is still held by a server in this process that is shutting down.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = DatabaseOpener::new(path).open(|txn| {
            txn.open_table(CONFIGS)?;
            txn.open_table(STATES)?;
            txn.open_table(OWNERS)?;
            Ok::<_, StoreError>(())
        })?;
        Ok(Store { db })
    }

    /// The signature configuration of slot `id`, or `None` when it is unknown.
    pub fn config(&self, id: &Id) -> Result<Option<SignatureConfig>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONFIGS)?;
        let Some(guard) = table.get(id.as_bytes())? else {
            return Ok(None);
        };
        decode_config(id, guard.value()).map(Some)
    }

    /// The configuration, owner and base of slot `id`, or `None` when it is unknown.
    pub fn registration(&self, id: &Id) -> Result<Option<Registration>, StoreError> {
        let txn = self.db.begin_read()?;
        let configs = txn.open_table(CONFIGS)?;
        let Some(guard) = configs.get(id.as_bytes())? else {
            return Ok(None);
        };
        let config = decode_config(id, guard.value())?;
        let owners = txn.open_table(OWNERS)?;
        let owner = match owners.get(id.as_bytes())? {
            Some(guard) => Some(decode_owner(id, guard.value())?),
            None => None,
        };
        let states = txn.open_table(STATES)?;
        let mut range = states.range((*id.as_bytes(), 0)..=(*id.as_bytes(), u64::MAX))?;
        let base = match range.next() {
            Some(entry) => entry?.0.value().1,
            None => {
                return Err(corrupt(id, "configured but has no states"));
            }
        };
        Ok(Some(Registration {
            config,
            owner,
            base,
        }))
    }

    /// The current state of slot `id` and its sequence, or `None` when it is unknown.
    pub fn current(&self, id: &Id) -> Result<Option<(u64, SlotState)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATES)?;
        let mut range = table.range((*id.as_bytes(), 0)..=(*id.as_bytes(), u64::MAX))?;
        match range.next_back() {
            Some(entry) => {
                let (key, value) = entry?;
                Ok(Some((key.value().1, decode_state(id, value.value())?)))
            }
            None => Ok(None),
        }
    }

    /// Up to `limit` states of slot `id` with sequence at most `upto`, newest first.
    pub fn history(
        &self,
        id: &Id,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SlotState)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATES)?;
        let range = table.range((*id.as_bytes(), 0)..=(*id.as_bytes(), upto))?;
        range
            .rev()
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                Ok((key.value().1, decode_state(id, value.value())?))
            })
            .collect()
    }

    /// Up to `limit` states of slot `id` with sequence greater than `after`, oldest first.
    pub fn after(
        &self,
        id: &Id,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, SlotState)>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATES)?;
        let range = table.range((*id.as_bytes(), first)..=(*id.as_bytes(), u64::MAX))?;
        range
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                Ok((key.value().1, decode_state(id, value.value())?))
            })
            .collect()
    }

    /// Applies `ops` in order in one write transaction and commits it durably (fsync)
    /// before returning. Each op sees the effects of the ones before it. On error nothing
    /// is committed.
    pub fn apply<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a Op>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut txn = self.db.begin_write()?;
        // Durable is redb's default; stated so that it cannot silently change.
        txn.set_durability(Durability::Immediate)?;
        let mut outcomes = Vec::new();
        {
            let mut configs = txn.open_table(CONFIGS)?;
            let mut states = txn.open_table(STATES)?;
            let mut owners = txn.open_table(OWNERS)?;
            let now = now_ms();
            for op in ops {
                let outcome = match op {
                    Op::Register {
                        id,
                        address,
                        signature,
                        owner,
                        claim,
                    } => {
                        let Some((kind, key)) = encode_config(signature) else {
                            outcomes.push(Outcome::Unsupported);
                            continue;
                        };
                        let existing = configs.get(id.as_bytes())?.map(|guard| guard.value().1);
                        // A claim replaces only slots whose holder cannot be the key's
                        // owner by construction: unsigned and sha256:rsa ones.
                        let replaceable = claim.is_some()
                            && kind == KIND_ED25519
                            && matches!(existing, Some(KIND_NONE | KIND_RSA));
                        if existing.is_some() && !replaceable {
                            Outcome::Taken
                        } else {
                            let range = (*id.as_bytes(), 0)..=(*id.as_bytes(), u64::MAX);
                            let last = match states.range(range.clone())?.next_back() {
                                Some(entry) => Some(entry?.0.value().1),
                                None => None,
                            };
                            let seq = match (existing, last) {
                                (None, _) => 0,
                                (Some(_), Some(last)) => last
                                    .checked_add(1)
                                    .ok_or_else(|| corrupt(id, "sequence numbers exhausted"))?,
                                (Some(_), None) => {
                                    return Err(corrupt(id, "configured but has no states"));
                                }
                            };
                            if existing.is_some() {
                                states.retain_in(range, |_, _| false)?;
                            }
                            configs.insert(id.as_bytes(), (FORMAT, kind, key))?;
                            match owner {
                                Some(owner) => {
                                    owners.insert(id.as_bytes(), (FORMAT, owner.as_str()))?;
                                }
                                None => {
                                    owners.remove(id.as_bytes())?;
                                }
                            }
                            states.insert(
                                (*id.as_bytes(), seq),
                                (FORMAT, *address.as_bytes(), None, now, claim.as_deref()),
                            )?;
                            let state = SlotState {
                                address: *address,
                                previous: Previous::Root,
                                time: Some(now),
                                signature: claim.as_deref().map(encode_signature),
                                proof: None,
                            };
                            if existing.is_some() {
                                Outcome::Claimed {
                                    id: *id,
                                    seq,
                                    state,
                                }
                            } else {
                                Outcome::Accepted {
                                    id: *id,
                                    seq,
                                    state,
                                }
                            }
                        }
                    }
                    Op::Update {
                        id,
                        base,
                        previous,
                        address,
                        signature,
                    } => {
                        let (first, current) = {
                            let mut range =
                                states.range((*id.as_bytes(), 0)..=(*id.as_bytes(), u64::MAX))?;
                            let first = match range.next() {
                                Some(entry) => {
                                    let (key, value) = entry?;
                                    Some((key.value().1, value))
                                }
                                None => None,
                            };
                            let base_seq = first.as_ref().map(|(seq, _)| *seq);
                            // The last entry, or the first when it is the only one.
                            let last = match range.next_back() {
                                Some(entry) => {
                                    let (key, value) = entry?;
                                    Some((key.value().1, value))
                                }
                                None => first,
                            };
                            let current = match last {
                                Some((seq, value)) => Some((seq, decode_state(id, value.value())?)),
                                None => None,
                            };
                            (base_seq, current)
                        };
                        match current {
                            None => Outcome::Unknown,
                            Some(_) if first != Some(*base) => Outcome::Reregistered,
                            Some((_, state)) if Previous::Address(state.address) != *previous => {
                                Outcome::Stale {
                                    current: state.address,
                                }
                            }
                            Some((seq, state)) => {
                                let seq = seq + 1;
                                // Times never go backwards within a slot.
                                let time = now.max(state.time.unwrap_or(0));
                                states.insert(
                                    (*id.as_bytes(), seq),
                                    (
                                        FORMAT,
                                        *address.as_bytes(),
                                        Some(*state.address.as_bytes()),
                                        time,
                                        signature.as_deref(),
                                    ),
                                )?;
                                Outcome::Accepted {
                                    id: *id,
                                    seq,
                                    state: SlotState {
                                        address: *address,
                                        previous: Previous::Address(state.address),
                                        time: Some(time),
                                        signature: signature.as_deref().map(encode_signature),
                                        proof: None,
                                    },
                                }
                            }
                        }
                    }
                };
                outcomes.push(outcome);
            }
        }
        txn.commit()?;
        Ok(outcomes)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whether this store can record `config` (a kind added to the wire type later needs a
/// storage code here first).
pub fn supports(config: &SignatureConfig) -> bool {
    encode_config(config).is_some()
}

fn encode_config(config: &SignatureConfig) -> Option<(u8, &str)> {
    match config {
        SignatureConfig::None => Some((KIND_NONE, "")),
        SignatureConfig::Sha256Rsa { key } => Some((KIND_RSA, key.as_str())),
        SignatureConfig::Ed25519 => Some((KIND_ED25519, "")),
        // Never store an unknown kind as something weaker.
        _ => None,
    }
}

fn decode_config(
    id: &Id,
    (format, kind, key): (u8, u8, &str),
) -> Result<SignatureConfig, StoreError> {
    check_format(id, format)?;
    match kind {
        KIND_NONE => Ok(SignatureConfig::None),
        KIND_RSA => Ok(SignatureConfig::Sha256Rsa {
            key: key.to_string(),
        }),
        KIND_ED25519 => Ok(SignatureConfig::Ed25519),
        other => Err(corrupt(id, format!("unknown signature kind {other}"))),
    }
}

fn decode_state(
    id: &Id,
    (format, address, previous, time, signature): StateRecord<'_>,
) -> Result<SlotState, StoreError> {
    check_format(id, format)?;
    Ok(SlotState {
        address: Id::from_bytes(address),
        previous: match previous {
            None => Previous::Root,
            Some(bytes) => Previous::Address(Id::from_bytes(bytes)),
        },
        time: Some(time),
        signature: signature.map(encode_signature),
        proof: None,
    })
}

fn decode_owner(id: &Id, (format, subject): (u8, &str)) -> Result<String, StoreError> {
    check_format(id, format)?;
    Ok(subject.to_string())
}

fn check_format(id: &Id, format: u8) -> Result<(), StoreError> {
    if format == FORMAT {
        Ok(())
    } else {
        Err(corrupt(
            id,
            format!("unknown record format {format} (this server reads {FORMAT})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("slots.redb")).expect("open store");
        (dir, store)
    }

    fn register(id: Id, address: Id) -> Op {
        Op::Register {
            id,
            address,
            signature: SignatureConfig::None,
            owner: None,
            claim: None,
        }
    }

    fn update(id: Id, previous: Id, address: Id) -> Op {
        Op::Update {
            id,
            base: 0,
            previous: Previous::Address(previous),
            address,
            signature: None,
        }
    }

    fn accepted_seq(outcome: &Outcome) -> u64 {
        match outcome {
            Outcome::Accepted { seq, .. } => *seq,
            other => panic!("expected acceptance, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_sees_its_own_earlier_ops() {
        let (_dir, store) = open();
        let (slot, a, b, c) = (Id::random(), Id::random(), Id::random(), Id::random());
        let outcomes = store
            .apply(&[
                update(slot, a, b),
                register(slot, a),
                register(slot, b),
                update(slot, a, b),
                update(slot, a, c),
                update(slot, b, c),
            ])
            .expect("apply");
        assert_eq!(outcomes[0], Outcome::Unknown);
        assert_eq!(accepted_seq(&outcomes[1]), 0);
        assert_eq!(outcomes[2], Outcome::Taken);
        assert_eq!(accepted_seq(&outcomes[3]), 1);
        assert_eq!(outcomes[4], Outcome::Stale { current: b });
        assert_eq!(accepted_seq(&outcomes[5]), 2);

        let (seq, current) = store.current(&slot).expect("read").expect("present");
        assert_eq!(
            (seq, current.address, current.previous),
            (2, c, Previous::Address(b))
        );
        let history: Vec<Id> = store
            .history(&slot, u64::MAX, 10)
            .expect("history")
            .into_iter()
            .map(|(_, s)| s.address)
            .collect();
        assert_eq!(history, vec![c, b, a]);
        assert_eq!(store.history(&slot, 1, 1).expect("page")[0].0, 1);
        let after: Vec<u64> = store
            .after(&slot, 0, 10)
            .expect("after")
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(after, vec![1, 2]);
        assert!(
            store
                .after(&slot, u64::MAX, 10)
                .expect("after max")
                .is_empty()
        );
        assert_eq!(
            store.config(&slot).expect("config"),
            Some(SignatureConfig::None)
        );
        assert_eq!(store.config(&Id::random()).expect("config"), None);
        assert_eq!(store.current(&Id::random()).expect("current"), None);
    }

    #[test]
    fn configs_and_signatures_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("slots.redb");
        let (rsa, ed) = (Id::random(), Id::random());
        let a = Id::random();
        {
            let store = Store::open(&path).expect("open");
            let key = SignatureConfig::Sha256Rsa { key: "PEM".into() };
            store
                .apply(&[
                    Op::Register {
                        id: rsa,
                        address: a,
                        signature: key,
                        owner: Some("alice".into()),
                        claim: None,
                    },
                    Op::Register {
                        id: ed,
                        address: a,
                        signature: SignatureConfig::Ed25519,
                        owner: None,
                        claim: None,
                    },
                    Op::Update {
                        id: ed,
                        base: 0,
                        previous: Previous::Address(a),
                        address: a,
                        signature: Some(vec![0xab, 0xcd]),
                    },
                ])
                .expect("apply");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.config(&rsa).expect("config"),
            Some(SignatureConfig::Sha256Rsa { key: "PEM".into() })
        );
        assert_eq!(
            store.config(&ed).expect("config"),
            Some(SignatureConfig::Ed25519)
        );
        let (seq, state) = store.current(&ed).expect("current").expect("present");
        assert_eq!(seq, 1);
        assert_eq!(state.signature.as_deref(), Some("abcd"));
        assert!(state.time.is_some());
        let owned = store.registration(&rsa).expect("read").expect("present");
        assert_eq!(owned.owner.as_deref(), Some("alice"));
        assert_eq!(owned.base, 0);
        let unowned = store.registration(&ed).expect("read").expect("present");
        assert_eq!((unowned.owner, unowned.base), (None, 0));
        assert_eq!(unowned.config, SignatureConfig::Ed25519);
        assert_eq!(store.registration(&Id::random()).expect("read"), None);
    }

    fn claim(id: Id, address: Id, owner: &str, claim: &[u8]) -> Op {
        Op::Register {
            id,
            address,
            signature: SignatureConfig::Ed25519,
            owner: Some(owner.into()),
            claim: Some(claim.to_vec()),
        }
    }

    #[test]
    fn a_claim_replaces_only_unsigned_and_rsa_slots() {
        let (_dir, store) = open();
        let (squatted, rsa, signed, fresh) =
            (Id::random(), Id::random(), Id::random(), Id::random());
        let (a, b, c) = (Id::random(), Id::random(), Id::random());
        let rsa_config = SignatureConfig::Sha256Rsa { key: "PEM".into() };
        let outcomes = store
            .apply(&[
                Op::Register {
                    id: squatted,
                    address: a,
                    signature: SignatureConfig::None,
                    owner: Some("mallory".into()),
                    claim: None,
                },
                update(squatted, a, b),
                Op::Register {
                    id: rsa,
                    address: a,
                    signature: rsa_config,
                    owner: None,
                    claim: None,
                },
                Op::Register {
                    id: signed,
                    address: a,
                    signature: SignatureConfig::Ed25519,
                    owner: None,
                    claim: None,
                },
            ])
            .expect("setup");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, Outcome::Accepted { .. }))
        );

        let outcomes = store
            .apply(&[
                // Without a claim an ed25519 registration is still refused.
                Op::Register {
                    id: squatted,
                    address: c,
                    signature: SignatureConfig::Ed25519,
                    owner: Some("alice".into()),
                    claim: None,
                },
                claim(squatted, c, "alice", &[1, 2]),
                // The squatter's update, checked against the old registration, loses.
                update(squatted, c, a),
                claim(rsa, c, "alice", &[3]),
                claim(signed, c, "alice", &[4]),
                claim(fresh, c, "alice", &[5]),
                // A claimed slot is never replaced again.
                claim(squatted, a, "mallory", &[6]),
            ])
            .expect("claims");
        assert_eq!(outcomes[0], Outcome::Taken);
        match &outcomes[1] {
            Outcome::Claimed { seq, state, .. } => {
                assert_eq!(*seq, 2, "after the squatter's two states");
                assert_eq!(state.previous, Previous::Root);
                assert_eq!(state.signature.as_deref(), Some("0102"));
            }
            other => panic!("expected a claim, got {other:?}"),
        }
        assert_eq!(outcomes[2], Outcome::Reregistered);
        assert!(matches!(outcomes[3], Outcome::Claimed { seq: 1, .. }));
        assert_eq!(outcomes[4], Outcome::Taken);
        assert!(matches!(outcomes[5], Outcome::Accepted { seq: 0, .. }));
        assert_eq!(outcomes[6], Outcome::Taken);

        // The squatter's history is gone; the claimed registration is the base.
        let history = store.history(&squatted, u64::MAX, 10).expect("history");
        assert_eq!(history.len(), 1);
        assert_eq!((history[0].0, history[0].1.address), (2, c));
        let registration = store
            .registration(&squatted)
            .expect("read")
            .expect("present");
        assert_eq!(registration.config, SignatureConfig::Ed25519);
        assert_eq!(registration.owner.as_deref(), Some("alice"));
        assert_eq!(registration.base, 2);
        let outcomes = store
            .apply(&[
                Op::Update {
                    id: squatted,
                    base: 2,
                    previous: Previous::Address(c),
                    address: a,
                    signature: Some(vec![9]),
                },
                update(squatted, a, b),
            ])
            .expect("update the claimed slot");
        assert!(matches!(outcomes[0], Outcome::Accepted { seq: 3, .. }));
        assert_eq!(outcomes[1], Outcome::Reregistered);
        let after: Vec<u64> = store
            .after(&squatted, 0, 10)
            .expect("after")
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(after, vec![2, 3]);
    }

    #[test]
    fn every_current_signature_kind_is_stored_as_itself() {
        let id = Id::random();
        for config in [
            SignatureConfig::None,
            SignatureConfig::Ed25519,
            SignatureConfig::Sha256Rsa { key: "K".into() },
        ] {
            assert!(supports(&config));
            let (kind, key) = encode_config(&config).expect("supported");
            assert_eq!(
                decode_config(&id, (FORMAT, kind, key)).expect("decode"),
                config
            );
        }
    }

    #[test]
    fn unknown_formats_are_reported_not_misread() {
        let id = Id::random();
        assert!(matches!(
            decode_state(&id, (FORMAT + 1, [0; 32], None, 0, None)),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_config(&id, (FORMAT, 9, "")),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
