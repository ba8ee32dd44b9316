//! The grant channel: how an app sends things back to the patient — **contributions**
//! (new or updated FHIR resources, reviewed by the patient) and its own **audit chain**
//! (the reads it made) — sealed so that only the patient's device reads them.
//!
//! ## The channel slot
//! Every grant has one channel: an **open slot** (signature scheme `none`) whose id is
//! `BLAKE3-derive_key("invariant ehi-layer v1 grant channel", vault slot ‖ grant id)`.
//! Both sides compute it from what the grant gives them; servers, which never see the
//! grant id, cannot link it to the vault or the grant slot. The patient's device
//! registers it ([`crate::publish_channel`]) at a **header** (letter `EHH`,
//! `src/letter.rs`) sealed to the app's HPKE key and signed by the patient, which
//! carries the patient's per-grant HPKE key (derived from the grant slot's seed, so
//! every device of the patient holds it). The app appends messages by
//! compare-and-swap; the slot's history is the list of messages.
//!
//! ## A message (`EHM` 1)
//! ```text
//! "EHM" ‖ 1 ‖ len (u32 LE) ‖ letter to the patient (len bytes) ‖ note to the app itself
//! ```
//! The letter to the patient (HPKE to the per-grant key, `aad` the channel slot, padded
//! to at least 4 KiB) holds a [`ChannelMessage`] signed by the app's ed25519 key over
//! `"ehi-grant-channel v1" ‖ channel slot ‖ payload`: either a contribution (resources
//! as JSON, a note) or one entry of the app's audit chain ([`ehi_vault::audit`]). The note
//! to itself (HPKE to the app's own key, signed by it) carries the tail of its audit
//! chain, so a new session of the app continues its chain without keeping state. Both
//! kinds of message have the same shape and size buckets: servers cannot tell a
//! contribution from an audit report.
//!
//! ## What the patient's device enforces
//! **Nothing enters the vault without the patient accepting it** (`ehi inbox`, `ehi
//! accept`, `ehi reject`; [`crate::contributions`]). A contribution is refused
//! — listed with the reason, never importable — when it does not open, is not signed by
//! the grant's app, names another grant, came through a **read-only** grant, holds a
//! resource without a valid type or id, or a resource of a scope the grant does not
//! cover. Accepting imports the resources with a FHIR R4 `Provenance` (agent: the app
//! as author, the patient as verifier; the app's signature in `Provenance.signature`)
//! targeting them. A revoked grant's channel is no longer read: revocation points it at
//! the public tombstone and unpins its header (an open slot, so the app could still
//! move it; nothing it posts there is read). Vault removal does the same for every
//! grant's channel; the messages the app posted stay pinned by the app.

use invariant_spec::Id;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::letter;
use ehi_vault::app::AppKeystore;
use ehi_vault::audit::{AuditAction, AuditEntry, AuditRecord};
use ehi_vault::error::{EhiError, Result};
use ehi_vault::keys::SecretKey;
use ehi_vault::keystore::hpke_open_with_seed;
use ehi_vault::network::Network;
use ehi_vault::time::now_ms;

/// BLAKE3 context of a channel slot id.
/// BLAKE3 context of the patient's per-grant HPKE seed (from the grant slot seed).
const CONTEXT_CHANNEL_HPKE: &str = "invariant ehi-layer v1 grant channel hpke";
pub(crate) const HEADER_MAGIC: &[u8; 3] = b"EHH";
const HEADER_INFO: &[u8] = b"invariant ehi-layer v1 grant channel header";
const HEADER_DOMAIN: &[u8] = b"ehi-grant-channel-header v1";
const MESSAGE_MAGIC: &[u8; 3] = b"EHM";
const MESSAGE_VERSION: u8 = 1;
const LETTER_MAGIC: &[u8; 3] = b"EHL";
const MESSAGE_INFO: &[u8] = b"invariant ehi-layer v1 grant channel message";
const MESSAGE_DOMAIN: &[u8] = b"ehi-grant-channel v1";
const NOTE_MAGIC: &[u8; 3] = b"EHN";
const NOTE_INFO: &[u8] = b"invariant ehi-layer v1 grant channel note";
const NOTE_DOMAIN: &[u8] = b"ehi-grant-channel-note v1";
/// Format of [`ChannelMessage`] and of the header payload.
pub const CHANNEL_FORMAT: u32 = 1;
/// Smallest padded letter.
const MIN_PADDED: usize = 4096;

pub use ehi_vault::keys::channel_slot;

/// The patient's per-grant HPKE seed.
pub(crate) fn channel_seed(grant_slot_seed: &SecretKey) -> SecretKey {
    grant_slot_seed.derive(CONTEXT_CHANNEL_HPKE)
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    grant_id: [u8; 16],
    patient_hpke: [u8; 32],
}

/// The header blob of a channel (the patient's side).
pub(crate) fn seal_header(
    patient: &ed25519_dalek::SigningKey,
    app_hpke: &[u8; 32],
    slot: &Id,
    grant_id: [u8; 16],
    patient_hpke: [u8; 32],
) -> Result<Vec<u8>> {
    let payload = ehi_vault::format::encode(
        &Header {
            format: CHANNEL_FORMAT,
            grant_id,
            patient_hpke,
        },
        "channel header",
    )?;
    letter::seal(
        &letter::Seal {
            magic: HEADER_MAGIC,
            recipient: app_hpke,
            info: HEADER_INFO,
            aad: slot.as_bytes(),
            domain: HEADER_DOMAIN,
            min_padded: MIN_PADDED,
        },
        patient,
        slot.as_bytes(),
        &payload,
    )
}

/// What an app sends through its channel (postcard, format [`CHANNEL_FORMAT`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChannelMessage {
    /// [`CHANNEL_FORMAT`].
    pub format: u32,
    /// The grant (must be the channel's).
    pub grant_id: [u8; 16],
    /// What it carries.
    pub body: MessageBody,
}

/// The content of a [`ChannelMessage`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MessageBody {
    /// Resources proposed for the patient's vault.
    Contribution {
        /// The resources, a JSON array (text).
        resources: String,
        /// A note for the patient.
        note: String,
        /// When the app made it, ms since the Unix epoch.
        created_ms: u64,
    },
    /// One entry of the app's own audit chain.
    Audit(AuditEntry),
}

#[derive(Serialize, Deserialize)]
struct Note {
    format: u32,
    /// `(seq, chain hash)` of the app's newest audit entry.
    audit_tail: Option<(u64, [u8; 32])>,
}

/// A message opened and checked by the patient's device.
#[derive(Debug)]
pub(crate) struct Opened {
    pub message: ChannelMessage,
    /// The app's signature over the letter (kept in `Provenance.signature`).
    pub signature: Vec<u8>,
}

/// Opens a message of the channel of a grant (the patient's side): the letter to the
/// patient opens with the per-grant key, is signed by `app_signing`, and names the
/// grant.
pub(crate) fn open_message(
    seed: &SecretKey,
    slot: &Id,
    app_signing: &[u8; 32],
    grant_id: &[u8; 16],
    blob: &[u8],
    what: &str,
) -> Result<Opened> {
    let (letter_bytes, _) = split_message(blob, what)?;
    let (payload, signature) = letter::open(LETTER_MAGIC, what, letter_bytes, |sealed| {
        hpke_open_with_seed(seed, sealed, MESSAGE_INFO, slot.as_bytes())
    })?;
    letter::verify(
        what,
        "the app",
        app_signing,
        MESSAGE_DOMAIN,
        slot.as_bytes(),
        &payload,
        &signature,
    )?;
    let message: ChannelMessage =
        letter::decode(what, "grant channel message", CHANNEL_FORMAT, &payload)?;
    if message.grant_id != *grant_id {
        return Err(EhiError::corrupt(what, "it names another grant"));
    }
    Ok(Opened { message, signature })
}

/// A channel message from `app` (see the module docs).
fn build_message(
    app: &AppKeystore,
    slot: &Id,
    patient_hpke: &[u8; 32],
    grant_id: [u8; 16],
    body: MessageBody,
    tail: Option<(u64, [u8; 32])>,
) -> Result<Vec<u8>> {
    let message = ChannelMessage {
        format: CHANNEL_FORMAT,
        grant_id,
        body,
    };
    let payload = ehi_vault::format::encode(&message, "grant channel message")?;
    let signing = app.signing_key();
    let to_patient = letter::seal(
        &letter::Seal {
            magic: LETTER_MAGIC,
            recipient: patient_hpke,
            info: MESSAGE_INFO,
            aad: slot.as_bytes(),
            domain: MESSAGE_DOMAIN,
            min_padded: MIN_PADDED,
        },
        &signing,
        slot.as_bytes(),
        &payload,
    )?;
    let own_hpke = ehi_vault::app::hex32(&app.card().hpke_key)
        .ok_or_else(|| EhiError::Crypto("app HPKE key".into()))?;
    let note = ehi_vault::format::encode(
        &Note {
            format: CHANNEL_FORMAT,
            audit_tail: tail,
        },
        "channel note",
    )?;
    let to_self = letter::seal(
        &letter::Seal {
            magic: NOTE_MAGIC,
            recipient: &own_hpke,
            info: NOTE_INFO,
            aad: slot.as_bytes(),
            domain: NOTE_DOMAIN,
            min_padded: 128,
        },
        &signing,
        slot.as_bytes(),
        &note,
    )?;
    let len = u32::try_from(to_patient.len())
        .map_err(|_| EhiError::InvalidArgument("message too large".into()))?;
    let mut blob = Vec::with_capacity(8 + to_patient.len() + to_self.len());
    blob.extend_from_slice(MESSAGE_MAGIC);
    blob.push(MESSAGE_VERSION);
    blob.extend_from_slice(&len.to_le_bytes());
    blob.extend_from_slice(&to_patient);
    blob.extend_from_slice(&to_self);
    if blob.len() > letter::MAX_LETTER {
        return Err(EhiError::InvalidArgument(format!(
            "the contribution is {} bytes sealed; at most {} fit in one message",
            blob.len(),
            letter::MAX_LETTER
        )));
    }
    Ok(blob)
}

fn split_message<'a>(blob: &'a [u8], what: &str) -> Result<(&'a [u8], &'a [u8])> {
    if blob.len() < 8 || &blob[..3] != MESSAGE_MAGIC {
        return Err(EhiError::corrupt(what, "not a grant channel message"));
    }
    if blob[3] != MESSAGE_VERSION {
        return Err(EhiError::UnsupportedFormat {
            what: "grant channel message",
            found: u32::from(blob[3]),
            supported: u32::from(MESSAGE_VERSION),
        });
    }
    let len = u32::from_le_bytes([blob[4], blob[5], blob[6], blob[7]]) as usize;
    let end = 8usize.saturating_add(len);
    let letter = blob
        .get(8..end)
        .ok_or_else(|| EhiError::corrupt(what, "its length field exceeds the message"))?;
    Ok((letter, &blob[end..]))
}

/// The app's side of a grant channel (used through [`crate::session::AppSession`]).
#[derive(Debug)]
pub(crate) struct AppChannel {
    pub slot: Id,
    pub grant_id: [u8; 16],
    pub patient: Id,
}

impl AppChannel {
    /// The patient's per-grant HPKE key from the channel's header.
    async fn patient_key(&self, net: &Network, app: &AppKeystore) -> Result<[u8; 32]> {
        let what = "the grant channel header";
        let history = net
            .slots()
            .history_all(&self.slot)
            .await
            .map_err(|e| EhiError::network("reading the grant channel", e))?
            .ok_or_else(|| {
                EhiError::NotFound(
                    "the grant channel (the patient's device has not opened it yet: it does \
                     when granting, approving a request, or at `ehi inbox`)"
                        .into(),
                )
            })?;
        let first = history
            .last()
            .ok_or_else(|| EhiError::corrupt(what, "the channel has no history"))?;
        let blob = net.get(&first.address, what).await?;
        let (payload, signature) = letter::open(HEADER_MAGIC, what, &blob, |sealed| {
            app.hpke_open(sealed, HEADER_INFO, self.slot.as_bytes())
        })?;
        letter::verify(
            what,
            "the patient",
            self.patient.as_bytes(),
            HEADER_DOMAIN,
            self.slot.as_bytes(),
            &payload,
            &signature,
        )?;
        let header: Header = letter::decode(what, "channel header", CHANNEL_FORMAT, &payload)?;
        if header.grant_id != self.grant_id {
            return Err(EhiError::corrupt(what, "it names another grant"));
        }
        Ok(header.patient_hpke)
    }

    /// The newest audit tail the app noted to itself in the channel.
    async fn audit_tail(
        &self,
        net: &Network,
        app: &AppKeystore,
    ) -> Result<Option<(u64, [u8; 32])>> {
        let posted = letter::posted(net, self.slot, "the grant channel")
            .await?
            .unwrap_or_default();
        let own = app.card().signing_key;
        let own = ehi_vault::app::hex32(&own).ok_or_else(|| EhiError::Crypto("app key".into()))?;
        for (address, _) in posted.into_iter().rev() {
            let Ok(blob) = net.get(&address, "a grant channel message").await else {
                continue;
            };
            let Ok((_, note)) = split_message(&blob, "message") else {
                continue;
            };
            let opened = letter::open(NOTE_MAGIC, "note", note, |sealed| {
                app.hpke_open(sealed, NOTE_INFO, self.slot.as_bytes())
            })
            .and_then(|(payload, signature)| {
                letter::verify(
                    "note",
                    "the app",
                    &own,
                    NOTE_DOMAIN,
                    self.slot.as_bytes(),
                    &payload,
                    &signature,
                )?;
                letter::decode::<Note>("note", "channel note", CHANNEL_FORMAT, &payload)
            });
            if let Ok(note) = opened {
                return Ok(note.audit_tail);
            }
        }
        Ok(None)
    }

    /// Seals `body` (and a note with the audit tail) and appends it to the channel.
    async fn send(
        &self,
        net: &Network,
        app: &AppKeystore,
        body: MessageBody,
        tail: Option<(u64, [u8; 32])>,
    ) -> Result<Id> {
        let patient_hpke = self.patient_key(net, app).await?;
        let blob = build_message(app, &self.slot, &patient_hpke, self.grant_id, body, tail)?;
        letter::post(net, self.slot, blob, "the grant channel").await
    }

    /// A contribution whose letter is signed by `signer` instead of the app, with one
    /// byte flipped at `flip` — what a thief or a tampering server would produce (for
    /// tests of the patient's device).
    async fn send_forged(
        &self,
        net: &Network,
        app: &AppKeystore,
        signer: &AppKeystore,
        resources: &[Value],
        flip: Option<usize>,
    ) -> Result<Id> {
        let patient_hpke = self.patient_key(net, app).await?;
        let text = serde_json::to_string(resources)
            .map_err(|e| EhiError::InvalidArgument(format!("encoding the resources: {e}")))?;
        let body = MessageBody::Contribution {
            resources: text,
            note: String::new(),
            created_ms: now_ms(),
        };
        let mut blob = build_message(signer, &self.slot, &patient_hpke, self.grant_id, body, None)?;
        if let Some(byte) = flip.and_then(|i| blob.get_mut(i)) {
            *byte ^= 0x01;
        }
        letter::post(net, self.slot, blob, "the grant channel").await
    }

    /// Sends a contribution (unchecked: the caller checked the grant's access).
    pub async fn contribute(
        &self,
        net: &Network,
        app: &AppKeystore,
        resources: &[Value],
        note: &str,
    ) -> Result<Id> {
        let text = serde_json::to_string(resources)
            .map_err(|e| EhiError::InvalidArgument(format!("encoding the resources: {e}")))?;
        let tail = self.audit_tail(net, app).await?;
        self.send(
            net,
            app,
            MessageBody::Contribution {
                resources: text,
                note: note.to_string(),
                created_ms: now_ms(),
            },
            tail,
        )
        .await
    }

    /// Appends one entry to the app's audit chain: `what` was read (references,
    /// queries).
    pub async fn report(
        &self,
        net: &Network,
        app: &AppKeystore,
        action: &str,
        what: &[String],
    ) -> Result<AuditEntry> {
        let tail = self.audit_tail(net, app).await?;
        let signing = app.signing_key();
        let record = AuditRecord::new(AuditAction::AppRead, format!("{action} by {}", app.name()))
            .with_entities(what.to_vec());
        let event = record.to_fhir(&signing.verifying_key().to_bytes(), app.name(), now_ms());
        // App chains link by hash only (no blob per entry, so no `prev_address`).
        let entry = AuditEntry::sign_after(&signing, tail, None, &event)?;
        let new_tail = Some((entry.seq, entry.hash()));
        self.send(net, app, MessageBody::Audit(entry.clone()), new_tail)
            .await?;
        Ok(entry)
    }
}

/// Checks contributed resources for the patient: a JSON array of objects with a valid
/// resource type and id, each in a scope of `scopes` (under `overrides`). Returns
/// `Type/id` of each.
pub(crate) fn check_resources(
    text: &str,
    scopes: &[ehi_vault::scope::Scope],
    overrides: &std::collections::BTreeMap<String, ehi_vault::scope::Scope>,
) -> std::result::Result<(Vec<Value>, Vec<String>), String> {
    let resources: Vec<Value> = serde_json::from_str(text)
        .map_err(|e| format!("the resources are not a JSON array: {e}"))?;
    if resources.is_empty() {
        return Err("it holds no resource".into());
    }
    let mut refs = Vec::with_capacity(resources.len());
    for (i, resource) in resources.iter().enumerate() {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .filter(|t| ehi_vault::fhir::valid_type(t))
            .ok_or_else(|| format!("resource {} has no valid resourceType", i + 1))?;
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| ehi_vault::fhir::valid_id(id))
            .ok_or_else(|| format!("resource {} ({resource_type}) has no valid id", i + 1))?;
        let scope = if ehi_vault::scope::is_labelled_sensitive(resource) {
            ehi_vault::scope::Scope::Sensitive
        } else {
            overrides
                .get(resource_type)
                .copied()
                .unwrap_or_else(|| ehi_vault::scope::default_scope(resource_type))
        };
        if !scopes.contains(&scope) {
            return Err(format!(
                "{resource_type}/{id} belongs to scope {scope}, which the grant does not cover"
            ));
        }
        refs.push(format!("{resource_type}/{id}"));
    }
    Ok((resources, refs))
}

impl crate::session::AppSession {
    fn channel(&self) -> AppChannel {
        let ticket = self.ticket();
        AppChannel {
            slot: channel_slot(&ticket.vault, &self.grant_bytes()),
            grant_id: self.grant_bytes(),
            patient: ticket.vault,
        }
    }

    /// The grant's channel slot (see the module docs).
    pub fn channel_slot(&self) -> Id {
        self.channel().slot
    }

    /// Proposes `resources` (FHIR R4 resources; those without an `id` get a random one)
    /// for the patient's vault, with a note. Refused here for a read-only grant, and
    /// for a resource of a scope the grant does not cover — and, whatever this library
    /// does, refused by the patient's device in both cases. Returns the contribution's
    /// id as `ehi inbox` shows it and the `Type/id` of each resource.
    pub async fn contribute(
        &self,
        app: &AppKeystore,
        resources: Vec<Value>,
        note: &str,
    ) -> Result<(String, Vec<String>)> {
        if !self.can_contribute() {
            return Err(EhiError::NotGranted(format!(
                "grant {} is read-only: it does not allow contributions",
                self.grant_id()
            )));
        }
        self.contribute_unchecked(app, resources, note).await
    }

    /// [`AppSession::contribute`] without the library's own checks of the grant's
    /// access and scopes (for tests of what the patient's device refuses).
    #[doc(hidden)]
    pub async fn contribute_unchecked(
        &self,
        app: &AppKeystore,
        mut resources: Vec<Value>,
        note: &str,
    ) -> Result<(String, Vec<String>)> {
        self.check_expiry()?;
        let mut refs = Vec::with_capacity(resources.len());
        for (i, resource) in resources.iter_mut().enumerate() {
            let object = resource.as_object_mut().ok_or_else(|| {
                EhiError::InvalidArgument(format!(
                    "contributed resource {} is not an object",
                    i + 1
                ))
            })?;
            let resource_type = object
                .get("resourceType")
                .and_then(Value::as_str)
                .filter(|t| ehi_vault::fhir::valid_type(t))
                .ok_or_else(|| {
                    EhiError::InvalidArgument(format!(
                        "contributed resource {} has no valid resourceType",
                        i + 1
                    ))
                })?
                .to_string();
            if !object.contains_key("id") {
                let id: [u8; 16] = ehi_vault::keys::random_bytes()?;
                object.insert("id".into(), Value::String(hex::encode(id)));
            }
            let id = object.get("id").and_then(Value::as_str).unwrap_or_default();
            refs.push(format!("{resource_type}/{id}"));
        }
        let address = self
            .channel()
            .contribute(self.network(), app, &resources, note)
            .await?;
        Ok((crate::consent::request_id(&address), refs))
    }

    /// Posts a forged (signed by `signer`) and/or tampered (byte `flip` flipped)
    /// contribution to this grant's channel: for tests that the patient's device
    /// refuses it. Returns its id.
    #[doc(hidden)]
    pub async fn post_forged_contribution(
        &self,
        app: &AppKeystore,
        signer: &AppKeystore,
        resources: Vec<Value>,
        flip: Option<usize>,
    ) -> Result<String> {
        let address = self
            .channel()
            .send_forged(self.network(), app, signer, &resources, flip)
            .await?;
        Ok(crate::consent::request_id(&address))
    }

    /// Appends one entry to this app's own signed, hash-chained audit log in the grant
    /// channel: `action` (e.g. "read", "search") of `what` (references, queries). The
    /// patient's device merges it into the vault's audit log.
    pub async fn report_use(
        &self,
        app: &AppKeystore,
        action: &str,
        what: &[String],
    ) -> Result<AuditEntry> {
        self.check_expiry()?;
        self.channel()
            .report(self.network(), app, action, what)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehi_vault::scope::Scope;
    use serde_json::json;

    #[test]
    fn resources_are_checked_against_the_grant() {
        let scopes = [Scope::Medications];
        let none = std::collections::BTreeMap::new();
        let ok = json!([{"resourceType": "MedicationRequest", "id": "m1"}]).to_string();
        assert_eq!(
            check_resources(&ok, &scopes, &none).expect("ok").1,
            ["MedicationRequest/m1"]
        );
        for (bad, why) in [
            (
                json!([{"resourceType": "Observation", "id": "o1"}]),
                "does not cover",
            ),
            (
                json!([{"resourceType": "MedicationRequest"}]),
                "no valid id",
            ),
            (
                json!([{"resourceType": "not a type", "id": "x"}]),
                "resourceType",
            ),
            (json!([]), "no resource"),
            (json!({"a": 1}), "not a JSON array"),
        ] {
            let err = check_resources(&bad.to_string(), &scopes, &none).expect_err("refused");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn messages_open_only_for_the_patient_and_the_grant_app() {
        let app = AppKeystore::generate("Writer").expect("app");
        let other = AppKeystore::generate("Thief").expect("app");
        let seed = SecretKey::from_bytes([4; 32]);
        let patient_hpke = ehi_vault::keystore::hpke_public_of(&seed);
        let slot = channel_slot(&Id::from_bytes([1; 32]), &[9; 16]);
        let body = || MessageBody::Contribution {
            resources: "[]".into(),
            note: "n".into(),
            created_ms: 1,
        };
        let app_key = ehi_vault::app::hex32(&app.card().signing_key).expect("key");
        let blob = build_message(&app, &slot, &patient_hpke, [9; 16], body(), None).expect("build");
        let opened = open_message(&seed, &slot, &app_key, &[9; 16], &blob, "m").expect("open");
        assert!(matches!(
            opened.message.body,
            MessageBody::Contribution { .. }
        ));
        // Signed by another app: refused, naming the signature.
        let forged =
            build_message(&other, &slot, &patient_hpke, [9; 16], body(), None).expect("build");
        let err = open_message(&seed, &slot, &app_key, &[9; 16], &forged, "m").expect_err("forged");
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );
        // A flipped byte in the letter: refused.
        let mut bad = blob.clone();
        bad[200] ^= 1;
        let err = open_message(&seed, &slot, &app_key, &[9; 16], &bad, "m").expect_err("tampered");
        assert!(err.to_string().contains("does not open"), "{err}");
        // Another grant id or another channel: refused.
        assert!(open_message(&seed, &slot, &app_key, &[8; 16], &blob, "m").is_err());
        let elsewhere = channel_slot(&Id::from_bytes([2; 32]), &[9; 16]);
        assert!(open_message(&seed, &elsewhere, &app_key, &[9; 16], &blob, "m").is_err());
    }

    #[test]
    fn channel_slots_differ_per_grant_and_vault() {
        let v = Id::from_bytes([1; 32]);
        assert_ne!(channel_slot(&v, &[1; 16]), channel_slot(&v, &[2; 16]));
        assert_ne!(
            channel_slot(&v, &[1; 16]),
            channel_slot(&Id::from_bytes([2; 32]), &[1; 16])
        );
    }
}
