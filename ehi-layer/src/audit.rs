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
//! Each entry is sealed as its own blob (envelope [`crate::seal`], kind `Audit`, epoch
//! 0) under `BLAKE3-derive_key("invariant ehi-layer v1 audit log", root AEAD key)`; the
//! vault root's `audit_head` holds the address of the newest one. Servers see one more
//! bucket-sized blob per event, nothing of its content.
//!
//! ## AuditEvent shape
//! `type` DICOM `110110` "Patient Record"; `subtype` the action
//! (`urn:ehi-layer:audit-action`: import, grant, revoke, export, remove, read, search);
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
//! Not done yet: apps appending their own signed chains (merged by the patient's
//! device), and read entries are written by the `ehi` command line, not by
//! [`crate::Vault::read`] itself (a library read stays a pure read).
//!
//! `ehi serve` writes one entry per request it answers, on the requester's behalf
//! ([`Requestor`]: the app of the token's grant is the first agent, the patient's
//! device the second), appended in batches by `Vault::audit_batch` (one commit per
//! batch, still one blob per entry, chained and signed like every other entry).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{EhiError, Result};
use crate::time::instant;

/// Audit entry format written by this build.
pub const ENTRY_FORMAT: u32 = 1;
/// Code system of [`AuditAction`] codes in `AuditEvent.subtype`.
pub const ACTION_SYSTEM: &str = "urn:ehi-layer:audit-action";

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
        }
    }

    /// The AuditEvent.action code (C R U D E).
    fn fhir_action(self) -> &'static str {
        match self {
            AuditAction::Import | AuditAction::Grant => "C",
            AuditAction::Revoke => "U",
            AuditAction::Remove => "D",
            AuditAction::Read | AuditAction::Search => "R",
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
                "system": crate::grant::PURPOSE_SYSTEM, "code": purpose}]}]);
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
// Entries written for someone else (`ehi serve`, issue 10)
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

/// The first entry of a log that fails verification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit log entry {index} (seq {seq}) fails verification: {reason}")]
pub struct AuditBreak {
    /// Position in the log, oldest first.
    pub index: usize,
    /// The entry's own `seq`.
    pub seq: u64,
    /// What failed.
    pub reason: String,
}

/// Verifies `entries` (oldest first) end to end: see the module docs. `trusted` are the
/// writers whose entries are accepted. Returns the number of entries.
pub fn verify_chain(
    entries: &[AuditEntry],
    trusted: &[[u8; 32]],
) -> std::result::Result<usize, AuditBreak> {
    let mut prev: Option<&AuditEntry> = None;
    for (index, entry) in entries.iter().enumerate() {
        let fail = |reason: String| AuditBreak {
            index,
            seq: entry.seq,
            reason,
        };
        if entry.format != ENTRY_FORMAT {
            return Err(fail(format!("format {}", entry.format)));
        }
        if entry.seq != index as u64 {
            return Err(fail(format!(
                "out of order: seq {} at position {index}",
                entry.seq
            )));
        }
        let expected = prev.map(AuditEntry::hash).unwrap_or([0; 32]);
        if entry.prev_hash != expected {
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
        prev = Some(entry);
    }
    Ok(entries.len())
}

/// Decodes an entry, checking the format number first.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<AuditEntry> {
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

        let bytes = postcard::to_stdvec(&entries[0]).expect("encode");
        assert_eq!(decode_entry(&bytes).expect("decode"), entries[0]);
        assert_eq!(entries[1].action().as_deref(), Some("import"));
    }
}
