//! The audit log: one append-only, hash-chained, signed log per vault, each entry a FHIR
//! R4 `AuditEvent`, stored encrypted in the network.
//!
//! ## Entry (postcard, format 1)
//! `format`, `seq` (0, 1, 2, …), `prev_hash` (the [`AuditEntry::hash`] of the previous
//! entry; zeros for the first), `prev_address` (storage address of the previous entry's
//! blob, to walk the log backwards), `writer` (ed25519 public key), `event` (the
//! AuditEvent as JSON text) and `signature`: ed25519 by `writer` over
//! `"ehi-audit v1" ‖ seq (u64 LE) ‖ prev_hash ‖ writer ‖ event`. An entry's hash is
//! `BLAKE3("ehi-audit v1 hash" ‖ signed message ‖ signature)`.
//!
//! Each entry is sealed as its own blob (envelope [`crate::seal`], kind `Audit`, epoch =
//! the root key generation, 0 until a device is removed, see `ehi_share::device`) under
//! `BLAKE3-derive_key("invariant ehi-layer v1 audit log", root AEAD key of that
//! generation)`; the
//! vault root's `audit_head` holds the address of the newest one. Servers see one more
//! bucket-sized blob per event, nothing of its content.
//!
//! ## AuditEvent shape
//! `type` DICOM `110110` "Patient Record"; `subtype` the action
//! (`urn:ehi-layer:audit-action`: import, grant, revoke, export, remove, read, search,
//! emergency, device);
//! `action` (C, R, U, D, E); `recorded`; `outcome` `0` (success) or `8` (failure);
//! `purposeOfEvent` (grants: the PurposeOfUse code); `agent` (who: the writer's key
//! as an identifier, `requestor: true`); `source.observer` (the writing device or app);
//! `entity` (what: grant ids, resource references, counts). Who, what, when, why, how
//! (`subtype`/`action`) and result are all present.
//!
//! ## Verification
//! [`verify_chain`] walks the entries oldest first and checks, for each: the format,
//! `seq` is its position, `prev_hash` is the previous entry's hash, the writer is
//! trusted (the patient's key), the signature verifies and the event is an AuditEvent.
//! The first entry that fails is named ([`AuditBreak`]). Storage-level tampering (a
//! changed blob) is caught earlier: addresses are hashes of ciphertext and envelopes
//! authenticate. What the log cannot prove: that nothing was *appended and then cut
//! off* by a rollback of the vault slot (a server can serve an older root; the head
//! moves back, and every remaining entry still verifies).
//!
//! Emergency (break-glass) accesses are logged by the holder in a chain of its own,
//! signed by the holder's key, which the patient's device verifies and copies into this
//! log when the patient acknowledges them (`ehi_share::emergency`); those events carry
//! purpose `ETREAT` and the security label `BTG` ([`is_emergency`]).
//!
//! ## Apps' own chains
//! An app reports its reads as entries of **its own** chain (same entry format, written
//! and signed by the app's key, [`AuditEntry::sign_after`], no `prev_address`) posted through its grant
//! channel (`ehi_share::contribution`). The patient's device checks each batch as the
//! continuation of what it merged before ([`verify_continuation`]: seq, chain hash,
//! the grant's app key, signature, AuditEvent) and appends one entry of its own
//! (`app-read`) to the vault's log naming the app, what was read and the hashes of the
//! app's entries; the grant's "last use" is when the slots server accepted the newest
//! merged report.
//!
//! Read entries of the patient are written by the `ehi` command line, not by
//! [`crate::Vault::read`] itself (a library read stays a pure read).
//!
//! `ehi serve` writes one entry per request it answers, on the requester's behalf
//! ([`Requestor`]: the app of the token's grant is the first agent, the patient's
//! device the second), appended in batches by `Vault::audit_batch` (one commit per
//! batch, still one blob per entry, chained and signed like every other entry).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::error::AuditBreak;
use crate::error::{EhiError, Result};
use crate::time::instant;

/// Audit entry format written by this build.
pub const ENTRY_FORMAT: u32 = 1;
/// Code system of [`AuditAction`] codes in `AuditEvent.subtype`.
pub const ACTION_SYSTEM: &str = "urn:ehi-layer:audit-action";

/// Code system of the break-glass security label `BTG` on emergency AuditEvents.
pub const BTG_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Whether an AuditEvent is flagged as a break-glass emergency access (purpose
/// `ETREAT` and security label `BTG`).
pub fn is_emergency(event: &Value) -> bool {
    let label = event
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|c| c["code"] == "BTG"));
    let purpose = event
        .pointer("/purposeOfEvent/0/coding/0/code")
        .and_then(Value::as_str)
        == Some("ETREAT");
    label && purpose
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    /// Resources imported.
    Import,
    /// A grant given.
    Grant,
    /// A grant revoked (or expired and rotated away).
    Revoke,
    /// An export.
    Export,
    /// The vault removed.
    Remove,
    /// A read by the patient.
    Read,
    /// A search by the patient.
    Search,
    /// Break-glass emergency access (or its policy), see `ehi_share::emergency`: the
    /// AuditEvent carries purpose `ETREAT` and the security label `BTG`.
    Emergency,
    /// A device joined or was removed (`ehi_share::device`).
    Device,
    /// A consent request decided (approved or denied).
    Consent,
    /// A contribution accepted or rejected.
    Contribution,
    /// Reads an app reported in its own signed chain (merged by the patient's device).
    AppRead,
}

impl AuditAction {
    /// The subtype code.
    pub fn code(self) -> &'static str {
        match self {
            AuditAction::Import => "import",
            AuditAction::Grant => "grant",
            AuditAction::Revoke => "revoke",
            AuditAction::Export => "export",
            AuditAction::Remove => "remove",
            AuditAction::Read => "read",
            AuditAction::Search => "search",
            AuditAction::Emergency => "emergency",
            AuditAction::Device => "device",
            AuditAction::Consent => "consent",
            AuditAction::Contribution => "contribution",
            AuditAction::AppRead => "app-read",
        }
    }

    /// The AuditEvent.action code (C R U D E).
    fn fhir_action(self) -> &'static str {
        match self {
            AuditAction::Import
            | AuditAction::Grant
            | AuditAction::Consent
            | AuditAction::Contribution => "C",
            AuditAction::AppRead => "R",
            AuditAction::Revoke => "U",
            AuditAction::Remove => "D",
            AuditAction::Read | AuditAction::Search | AuditAction::Emergency => "R",
            AuditAction::Device => "U",
            AuditAction::Export => "E",
        }
    }
}

impl std::str::FromStr for AuditAction {
    type Err = EhiError;
    fn from_str(s: &str) -> Result<AuditAction> {
        [
            AuditAction::Import,
            AuditAction::Grant,
            AuditAction::Revoke,
            AuditAction::Export,
            AuditAction::Remove,
            AuditAction::Read,
            AuditAction::Search,
            AuditAction::Emergency,
            AuditAction::Device,
            AuditAction::Consent,
            AuditAction::Contribution,
            AuditAction::AppRead,
        ]
        .into_iter()
        .find(|a| a.code().eq_ignore_ascii_case(s))
        .ok_or_else(|| EhiError::InvalidArgument(format!("unknown audit type {s:?}")))
    }
}

/// An event to log.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    /// What happened.
    pub action: AuditAction,
    /// Whether it succeeded.
    pub success: bool,
    /// Purpose of use code (grants).
    pub purpose: Option<String>,
    /// What it concerned: grant ids, `Type/id` references, search queries, counts.
    pub entities: Vec<String>,
    /// Free text.
    pub description: String,
}

impl AuditRecord {
    /// A successful event.
    pub fn new(action: AuditAction, description: impl Into<String>) -> AuditRecord {
        AuditRecord {
            action,
            success: true,
            purpose: None,
            entities: Vec::new(),
            description: description.into(),
        }
    }

    /// With entities.
    pub fn with_entities(mut self, entities: Vec<String>) -> AuditRecord {
        self.entities = entities;
        self
    }

    /// The FHIR R4 AuditEvent of this record, written by `writer` at `ms`.
    pub fn to_fhir(&self, writer: &[u8; 32], observer: &str, ms: u64) -> Value {
        let mut event = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                     "code": "110110", "display": "Patient Record"},
            "subtype": [{"system": ACTION_SYSTEM, "code": self.action.code()}],
            "action": self.action.fhir_action(),
            "recorded": instant(ms),
            "outcome": if self.success { "0" } else { "8" },
            "outcomeDesc": self.description,
            "agent": [{"who": {"identifier": {"system": "urn:ehi-layer:ed25519",
                                               "value": hex::encode(writer)}},
                       "requestor": true}],
            "source": {"observer": {"display": observer}},
            "entity": self.entities.iter().map(|e| json!({"what": {"display": e}})).collect::<Vec<_>>(),
        });
        if let Some(purpose) = &self.purpose {
            event["purposeOfEvent"] = json!([{"coding": [{
                "system": crate::purpose::PURPOSE_SYSTEM, "code": purpose}]}]);
        }
        if self.action == AuditAction::Emergency {
            // Break-glass: flagged by the purpose ETREAT and the security label BTG.
            event["purposeOfEvent"] = json!([{"coding": [{
                "system": crate::purpose::PURPOSE_SYSTEM, "code": "ETREAT"}]}]);
            event["meta"] = json!({"security": [{"system": BTG_SYSTEM, "code": "BTG",
                                                  "display": "break the glass"}]});
        }
        event
    }
}

/// One entry of the log (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// [`ENTRY_FORMAT`].
    pub format: u32,
    /// Position in the log (0 first).
    pub seq: u64,
    /// Hash of the previous entry (zeros for the first).
    pub prev_hash: [u8; 32],
    /// Storage address of the previous entry's blob.
    pub prev_address: Option<[u8; 32]>,
    /// The writer's ed25519 public key.
    pub writer: [u8; 32],
    /// The FHIR AuditEvent, JSON text.
    pub event: String,
    /// ed25519 signature (64 bytes).
    pub signature: Vec<u8>,
}

impl AuditEntry {
    /// Signs a new entry after `prev` (none for the first).
    pub fn sign(
        key: &SigningKey,
        prev: Option<(&AuditEntry, [u8; 32])>,
        event: &Value,
    ) -> Result<AuditEntry> {
        let event = serde_json::to_string(event)
            .map_err(|e| EhiError::Crypto(format!("encoding an audit event: {e}")))?;
        let (seq, prev_hash, prev_address) = match prev {
            Some((entry, address)) => (entry.seq + 1, entry.hash(), Some(address)),
            None => (0, [0; 32], None),
        };
        let writer = key.verifying_key().to_bytes();
        let mut entry = AuditEntry {
            format: ENTRY_FORMAT,
            seq,
            prev_hash,
            prev_address,
            writer,
            event,
            signature: Vec::new(),
        };
        entry.signature = key.sign(&entry.message()).to_bytes().to_vec();
        Ok(entry)
    }

    /// Signs a new entry after an entry known only by its `seq`, chain hash and
    /// address (`None`: the first entry) — what an app that keeps only the tail of its
    /// own chain needs.
    pub fn sign_after(
        key: &SigningKey,
        after: Option<(u64, [u8; 32])>,
        prev_address: Option<[u8; 32]>,
        event: &Value,
    ) -> Result<AuditEntry> {
        let event = serde_json::to_string(event)
            .map_err(|e| EhiError::Crypto(format!("encoding an audit event: {e}")))?;
        let (seq, prev_hash) = match after {
            Some((seq, hash)) => (seq.saturating_add(1), hash),
            None => (0, [0; 32]),
        };
        let mut entry = AuditEntry {
            format: ENTRY_FORMAT,
            seq,
            prev_hash,
            prev_address,
            writer: key.verifying_key().to_bytes(),
            event,
            signature: Vec::new(),
        };
        entry.signature = key.sign(&entry.message()).to_bytes().to_vec();
        Ok(entry)
    }

    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(12 + 8 + 64 + self.event.len());
        m.extend_from_slice(b"ehi-audit v1");
        m.extend_from_slice(&self.seq.to_le_bytes());
        m.extend_from_slice(&self.prev_hash);
        m.extend_from_slice(&self.writer);
        m.extend_from_slice(self.event.as_bytes());
        m
    }

    /// The entry's chain hash.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"ehi-audit v1 hash");
        hasher.update(&self.message());
        hasher.update(&self.signature);
        *hasher.finalize().as_bytes()
    }

    /// The AuditEvent.
    pub fn event(&self) -> Result<Value> {
        serde_json::from_str(&self.event)
            .map_err(|e| EhiError::corrupt("an audit entry", format!("event is not JSON: {e}")))
    }

    /// The subtype (action) code of the event.
    pub fn action(&self) -> Option<String> {
        self.event().ok().and_then(|e| {
            e.pointer("/subtype/0/code")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }

    /// `AuditEvent.recorded`.
    pub fn recorded(&self) -> Option<String> {
        self.event().ok().and_then(|e| {
            e.get("recorded")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }
}

// ---------------------------------------------------------------------------------------
// Entries written for someone else (`ehi serve`)
// ---------------------------------------------------------------------------------------

/// Code system of the grant id in an app requestor's `AuditEvent.agent.who.identifier`.
pub const GRANT_SYSTEM: &str = "urn:ehi-layer:grant";

/// Who asked, when the patient's device writes an entry on someone's behalf (the FHIR
/// facade logging an app's request). The AuditEvent then lists this requestor first
/// (`requestor: true`, named, with the grant id when there is one) and the writing
/// device second (`requestor: false`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requestor {
    /// Display name (the app's name from its grant).
    pub name: String,
    /// The grant the request was made under.
    pub grant: Option<String>,
}

/// An event waiting to be appended: the record, who asked (`None`: the patient) and
/// when it happened (ms since the Unix epoch; the entry's `recorded`).
#[derive(Clone, Debug)]
pub struct PendingAudit {
    /// What happened.
    pub record: AuditRecord,
    /// Who asked (`None`: the patient).
    pub requestor: Option<Requestor>,
    /// When, ms since the Unix epoch.
    pub ms: u64,
}

impl AuditRecord {
    /// [`AuditRecord::to_fhir`] with `requestor` as the first agent (see [`Requestor`]).
    pub fn to_fhir_for(
        &self,
        writer: &[u8; 32],
        observer: &str,
        ms: u64,
        requestor: Option<&Requestor>,
    ) -> Value {
        let mut event = self.to_fhir(writer, observer, ms);
        if let Some(requestor) = requestor {
            let mut who = json!({"display": requestor.name});
            if let Some(grant) = &requestor.grant {
                who["identifier"] = json!({"system": GRANT_SYSTEM, "value": grant});
            }
            let device = event["agent"][0].take();
            let mut device = if device.is_object() {
                device
            } else {
                json!({})
            };
            device["requestor"] = Value::Bool(false);
            event["agent"] = json!([{"who": who, "requestor": true}, device]);
        }
        event
    }
}

/// Verifies `entries` (oldest first) end to end: see the module docs. `trusted` are the
/// writers whose entries are accepted. Returns the number of entries.
pub fn verify_chain(
    entries: &[AuditEntry],
    trusted: &[[u8; 32]],
) -> std::result::Result<usize, AuditBreak> {
    verify_continuation(entries, None, trusted)
}

/// Verifies `entries` (oldest first) as the continuation of a chain whose last verified
/// entry had `after = (seq, hash)` (`None`: the chain's start) — how the patient's
/// device merges an app's chain a few entries at a time. Indexes in the
/// [`AuditBreak`] count from the first entry given.
pub fn verify_continuation(
    entries: &[AuditEntry],
    after: Option<(u64, [u8; 32])>,
    trusted: &[[u8; 32]],
) -> std::result::Result<usize, AuditBreak> {
    let first_seq = after.map_or(0, |(seq, _)| seq.saturating_add(1));
    let mut expected_hash = after.map_or([0; 32], |(_, hash)| hash);
    for (index, entry) in entries.iter().enumerate() {
        let fail = |reason: String| AuditBreak {
            index,
            seq: entry.seq,
            reason,
        };
        if entry.format != ENTRY_FORMAT {
            return Err(fail(format!("format {}", entry.format)));
        }
        let position = first_seq.saturating_add(index as u64);
        if entry.seq != position {
            return Err(fail(format!(
                "out of order: seq {} at position {position}",
                entry.seq
            )));
        }
        if entry.prev_hash != expected_hash {
            return Err(fail("does not chain to the previous entry".into()));
        }
        if !trusted.contains(&entry.writer) {
            return Err(fail("written by an unknown key".into()));
        }
        let key = VerifyingKey::from_bytes(&entry.writer)
            .map_err(|e| fail(format!("writer key: {e}")))?;
        let signature = <[u8; 64]>::try_from(entry.signature.as_slice())
            .map_err(|_| fail("signature length".into()))?;
        key.verify(&entry.message(), &Signature::from_bytes(&signature))
            .map_err(|_| fail("the signature does not verify".into()))?;
        match entry.event() {
            Ok(event) if event["resourceType"] == "AuditEvent" => {}
            _ => return Err(fail("the event is not an AuditEvent".into())),
        }
        expected_hash = entry.hash();
    }
    Ok(entries.len())
}

/// Decodes an entry, checking the format number first.
pub fn decode_entry(bytes: &[u8]) -> Result<AuditEntry> {
    let (format, _) = postcard::take_from_bytes::<u32>(bytes)
        .map_err(|e| EhiError::corrupt("an audit entry", format!("no format number: {e}")))?;
    if format != ENTRY_FORMAT {
        return Err(EhiError::UnsupportedFormat {
            what: "audit entry",
            found: format,
            supported: ENTRY_FORMAT,
        });
    }
    postcard::from_bytes(bytes)
        .map_err(|e| EhiError::corrupt("an audit entry", format!("does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &SigningKey, n: usize) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let record = AuditRecord::new(AuditAction::Import, format!("import {i}"));
            let event = record.to_fhir(&key.verifying_key().to_bytes(), "test", 1000 + i as u64);
            let prev = out.last().map(|e| (e, [i as u8; 32]));
            let entry = AuditEntry::sign(key, prev, &event).expect("sign");
            out.push(entry);
        }
        out
    }

    #[test]
    fn tampering_names_the_first_bad_entry() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let trusted = [key.verifying_key().to_bytes()];
        let entries = chain(&key, 5);
        assert_eq!(verify_chain(&entries, &trusted), Ok(5));

        let mut bad = entries.clone();
        bad[2].signature[0] ^= 1;
        assert_eq!(verify_chain(&bad, &trusted).map_err(|b| b.index), Err(2));

        let mut bad = entries.clone();
        bad[3].event = bad[3].event.replace("import 3", "import 9");
        assert_eq!(verify_chain(&bad, &trusted).map_err(|b| b.index), Err(3));

        let mut bad = entries.clone();
        bad.swap(1, 2);
        assert_eq!(verify_chain(&bad, &trusted).map_err(|b| b.index), Err(1));

        let mut bad = entries.clone();
        bad.remove(1);
        assert_eq!(verify_chain(&bad, &trusted).map_err(|b| b.index), Err(1));

        // A re-signed forgery by another key.
        let other = SigningKey::from_bytes(&[8; 32]);
        let mut bad = entries.clone();
        let event = bad[4].event().expect("event");
        bad[4] = AuditEntry::sign(&other, Some((&entries[3], [3; 32])), &event).expect("sign");
        assert_eq!(verify_chain(&bad, &trusted).map_err(|b| b.index), Err(4));

        // A chain merged in pieces: the continuation after entry 1 verifies, a gap or
        // a wrong link does not.
        let after = Some((entries[1].seq, entries[1].hash()));
        assert_eq!(verify_continuation(&entries[2..], after, &trusted), Ok(3));
        assert!(verify_continuation(&entries[3..], after, &trusted).is_err());
        assert!(verify_continuation(&entries[2..], Some((1, [0; 32])), &trusted).is_err());
        let tail = AuditEntry::sign_after(
            &key,
            Some((entries[4].seq, entries[4].hash())),
            None,
            &entries[4].event().expect("event"),
        )
        .expect("sign");
        assert_eq!(tail.seq, 5);
        assert_eq!(
            verify_continuation(&[tail], Some((4, entries[4].hash())), &trusted),
            Ok(1)
        );

        let bytes = postcard::to_stdvec(&entries[0]).expect("encode");
        assert_eq!(decode_entry(&bytes).expect("decode"), entries[0]);
        assert_eq!(entries[1].action().as_deref(), Some("import"));
    }
}
