//! The slot database: one redb file, `<data-dir>/slots.redb`.
//!
//! Tables (every value starts with the record format version, [`FORMAT`]):
//! - `configs`: slot id → (format, signature kind, RSA public key PEM or `""`).
//! - `states`: (slot id, sequence) → (format, address, previous address or none for the
//!   root, time in ms, signature bytes or none).
//!
//! Sequence 0 is the registration and each accepted update appends the next one, so the
//! current state is the last entry of the slot's key range and its history is that range
//! read backwards. Entries are never changed or removed. Reads use their own read
//! transaction; all writes go through [`Store::apply`], called only by the writer thread
//! ([`crate::writer`]), which commits each batch in one durable transaction.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
type StateKey = ([u8; 32], u64);
/// (format, address, previous address or `None` for root, time ms, signature bytes).
type StateRecord<'a> = (u8, [u8; 32], Option<[u8; 32]>, u64, Option<&'a [u8]>);
type StateValue = StateRecord<'static>;

const CONFIGS: TableDefinition<[u8; 32], ConfigValue> = TableDefinition::new("configs");
const STATES: TableDefinition<StateKey, StateValue> = TableDefinition::new("states");

/// How long [`Store::open`] waits for a previous server in this process to close the file.
const OPEN_WAIT: Duration = Duration::from_secs(5);

/// A database failure. Rejections (stale, unknown, taken) are [`Outcome`]s, not errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed (I/O, corruption, ...).
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    /// A record has an unknown format version or impossible contents.
    #[error("record of slot {slot}: {reason}")]
    Corrupt {
        /// The slot whose record is unreadable.
        slot: Id,
        /// What is wrong with it.
        reason: String,
    },
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError::Database(e.into())
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

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
    },
    /// Compare-and-swap slot `id` from `previous` to `address`.
    Update {
        /// The slot.
        id: Id,
        /// Expected current address.
        previous: Previous,
        /// New address.
        address: Id,
        /// The verified signature, for signed slots.
        signature: Option<Vec<u8>>,
    },
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
    /// Register: the id is already registered.
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
        let started = Instant::now();
        let db = loop {
            match Database::create(path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < OPEN_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let txn = db.begin_write()?;
        txn.open_table(CONFIGS)?;
        txn.open_table(STATES)?;
        txn.commit()?;
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
            let now = now_ms();
            for op in ops {
                let outcome = match op {
                    Op::Register {
                        id,
                        address,
                        signature,
                    } => {
                        let encoded = encode_config(signature);
                        if configs.get(id.as_bytes())?.is_some() {
                            Outcome::Taken
                        } else if let Some((kind, key)) = encoded {
                            configs.insert(id.as_bytes(), (FORMAT, kind, key))?;
                            states.insert(
                                (*id.as_bytes(), 0),
                                (FORMAT, *address.as_bytes(), None, now, None),
                            )?;
                            Outcome::Accepted {
                                id: *id,
                                seq: 0,
                                state: SlotState {
                                    address: *address,
                                    previous: Previous::Root,
                                    time: Some(now),
                                    signature: None,
                                    proof: None,
                                },
                            }
                        } else {
                            Outcome::Unsupported
                        }
                    }
                    Op::Update {
                        id,
                        previous,
                        address,
                        signature,
                    } => {
                        let current = {
                            let mut range =
                                states.range((*id.as_bytes(), 0)..=(*id.as_bytes(), u64::MAX))?;
                            match range.next_back() {
                                Some(entry) => {
                                    let (key, value) = entry?;
                                    Some((key.value().1, decode_state(id, value.value())?))
                                }
                                None => None,
                            }
                        };
                        match current {
                            None => Outcome::Unknown,
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
        other => Err(StoreError::Corrupt {
            slot: *id,
            reason: format!("unknown signature kind {other}"),
        }),
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

fn check_format(id: &Id, format: u8) -> Result<(), StoreError> {
    if format == FORMAT {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            slot: *id,
            reason: format!("unknown record format {format} (this server reads {FORMAT})"),
        })
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
        }
    }

    fn update(id: Id, previous: Id, address: Id) -> Op {
        Op::Update {
            id,
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
                    },
                    Op::Register {
                        id: ed,
                        address: a,
                        signature: SignatureConfig::Ed25519,
                    },
                    Op::Update {
                        id: ed,
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
