//! Consent requests: an app asks, the patient decides on their device, the app learns
//! the decision — all through the network, sealed end to end.
//!
//! ## The inbox
//! The patient shares an **inbox card** (`ehi-inbox-card` v1, public JSON, printed by
//! `ehi requests card`, [`crate::inbox_card`]):
//!
//! ```json
//! { "format": "ehi-inbox-card", "version": 1,
//!   "patient": "<ed25519 public key = vault slot, hex>", "slots_server": "<id>",
//!   "inbox": "<slot id>", "hpke_key": "<X25519 public key, hex>",
//!   "signature": "<ed25519 by the patient over the other fields>" }
//! ```
//!
//! The inbox is an **open slot** (signature scheme `none`, random id) registered at a
//! random blob: anyone holding the card appends a request by compare-and-swap, and the
//! slot's **history** is the list of requests (a request cannot be taken out of it by
//! a later writer). The inbox HPKE key is random and kept in the vault root (format 3,
//! [`ehi_vault::format::InboxRecord`]), so every device of the patient reads the inbox.
//!
//! ## A request (letter `EHQ`: `magic ‖ 1 ‖ HPKE encapsulated key ‖ ciphertext`, `src/letter.rs`)
//! HPKE-sealed to the inbox key (`info` "invariant ehi-layer v1 consent request",
//! `aad` the inbox slot), padded to at least 4 KiB, holding a [`RequestPayload`]
//! (format 1: the app's signed card, scopes, access, purpose — a v3 PurposeOfUse
//! code —, the requested period, a note, and the app's **reply slot**) signed by the
//! app's ed25519 key (the card's) over `"ehi-consent-request v1" ‖ inbox slot ‖
//! payload`. The patient's device refuses a request that does not open, whose card
//! does not verify, or whose signature is not the card's key — and names why.
//!
//! ## The decision (letter `EHD`)
//! `ehi approve <id>` creates the grant (the ordinary [`ehi_vault::grant`]), `ehi
//! deny <id>` refuses; either way the device keeps the decision as a FHIR R4
//! `Consent` resource in the vault (scope `documents`: an app granted `documents`
//! reads the patient's decisions, other apps' names included), records it in the root, logs
//! it in the audit log, and posts a [`DecisionPayload`] (approved with the grant
//! ticket, or denied) sealed to the app's HPKE key and signed by the patient over
//! `"ehi-consent-decision v1" ‖ reply slot ‖ payload` to the app's reply slot (an open
//! slot the app registered). The app polls it ([`poll`]) and checks the patient's
//! signature against the card's `patient` key: a decision nobody else can forge.
//!
//! ## Finding the inbox by name
//! Instead of handing out the card, the patient may register a **name** for it on the
//! names server (`ehi requests card --name <name>`, [`crate::publish_inbox_name`]):
//! the card is stored as a public blob and the name points at it; an app looks it up
//! with [`find_inbox`] and still verifies the card's signature. A name is a
//! convenience, not an authentication: the card itself is public (it links the name to
//! the patient's key and inbox), the patient should pick a name that does not identify
//! them, and an app that must be sure it reaches the right patient compares the card's
//! `patient` key with one obtained out of band. A name already taken is refused.
//!
//! ## What servers see
//! Two slots with random ids (inbox, reply) and a few blobs of padded, bucketed size;
//! no name, scope, purpose, key or signature in the clear.

use invariant_spec::Id;
use serde::{Deserialize, Serialize};

use crate::letter;
use ehi_vault::app::{AppCard, AppKeystore, VerifiedCard, hex32};
use ehi_vault::error::{EhiError, Result};
use ehi_vault::grant::{self, Access, GrantTicket};
use ehi_vault::keystore::hpke_open_with_seed;
use ehi_vault::network::Network;
use ehi_vault::scope::Scope;
use ehi_vault::time::now_ms;

/// `format` of an inbox card.
pub const INBOX_CARD_FORMAT: &str = "ehi-inbox-card";
/// Inbox card version.
pub const INBOX_CARD_VERSION: u32 = 1;
/// `format` of a pending request file the app keeps.
pub const PENDING_FORMAT: &str = "ehi-pending-request";
/// Format of [`RequestPayload`].
pub const REQUEST_FORMAT: u32 = 1;
/// Format of [`DecisionPayload`].
pub const DECISION_FORMAT: u32 = 1;

pub(crate) const REQUEST_MAGIC: &[u8; 3] = b"EHQ";
pub(crate) const REQUEST_INFO: &[u8] = b"invariant ehi-layer v1 consent request";
pub(crate) const REQUEST_DOMAIN: &[u8] = b"ehi-consent-request v1";
pub(crate) const DECISION_MAGIC: &[u8; 3] = b"EHD";
pub(crate) const DECISION_INFO: &[u8] = b"invariant ehi-layer v1 consent decision";
pub(crate) const DECISION_DOMAIN: &[u8] = b"ehi-consent-decision v1";
/// Smallest padded request / decision.
pub(crate) const MIN_PADDED: usize = 4096;
/// Longest note in a request or decision (characters).
const MAX_NOTE: usize = 1000;

/// The patient's public inbox card (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxCard {
    /// [`INBOX_CARD_FORMAT`].
    pub format: String,
    /// [`INBOX_CARD_VERSION`].
    pub version: u32,
    /// The patient's ed25519 key (the vault slot), which signs decisions and grants.
    pub patient: Id,
    /// The slots server holding the inbox (and the vault).
    pub slots_server: Id,
    /// The inbox slot.
    pub inbox: Id,
    /// The inbox HPKE (X25519) public key, hex.
    pub hpke_key: String,
    /// ed25519 signature by `patient` over the other fields, hex.
    pub signature: String,
}

impl InboxCard {
    pub(crate) fn message(patient: &Id, slots_server: &Id, inbox: &Id, hpke: &str) -> Vec<u8> {
        format!("ehi-inbox-card v1\n{patient}\n{slots_server}\n{inbox}\n{hpke}").into_bytes()
    }

    /// Parses and verifies a card (format, keys, the patient's signature).
    pub fn parse(json: &[u8]) -> Result<InboxCard> {
        let card: InboxCard = serde_json::from_slice(json)
            .map_err(|e| EhiError::InvalidArgument(format!("not an inbox card: {e}")))?;
        card.verify()?;
        Ok(card)
    }

    /// Checks format, version and signature.
    pub fn verify(&self) -> Result<()> {
        let bad = |reason: String| EhiError::InvalidArgument(format!("inbox card: {reason}"));
        if self.format != INBOX_CARD_FORMAT || self.version != INBOX_CARD_VERSION {
            return Err(bad(format!(
                "format {:?} version {} (this build reads {INBOX_CARD_FORMAT:?} {INBOX_CARD_VERSION})",
                self.format, self.version
            )));
        }
        hex32(&self.hpke_key).ok_or_else(|| bad("hpke_key is not 32 bytes of hex".into()))?;
        let signature =
            hex::decode(&self.signature).map_err(|_| bad("signature is not hex".into()))?;
        let message = InboxCard::message(
            &self.patient,
            &self.slots_server,
            &self.inbox,
            &self.hpke_key,
        );
        letter::verify(
            "inbox card",
            "the patient",
            self.patient.as_bytes(),
            b"",
            b"",
            &message,
            &signature,
        )
        .map_err(|e| bad(e.to_string()))
    }

    /// The card as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| EhiError::InvalidArgument(format!("encoding the inbox card: {e}")))
    }

    fn hpke(&self) -> Result<[u8; 32]> {
        hex32(&self.hpke_key)
            .ok_or_else(|| EhiError::InvalidArgument("inbox card: hpke_key".into()))
    }
}

/// What an app asks for.
#[derive(Clone, Debug)]
pub struct ConsentAsk {
    /// Scopes (at least one).
    pub scopes: Vec<Scope>,
    /// Read or contribute.
    pub access: Access,
    /// A v3 PurposeOfUse code ([`ehi_vault::grant::PURPOSES`]).
    pub purpose: String,
    /// How long access is asked for, ms from now.
    pub duration_ms: u64,
    /// A note for the patient (at most 1000 characters).
    pub note: String,
}

/// The signed content of a request (postcard, format [`REQUEST_FORMAT`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RequestPayload {
    /// [`REQUEST_FORMAT`].
    pub format: u32,
    /// Random request nonce (echoed in the decision).
    pub nonce: [u8; 16],
    /// The app's signed card.
    pub card: AppCard,
    /// Scopes asked for.
    pub scopes: Vec<Scope>,
    /// Read or contribute.
    pub access: Access,
    /// Purpose of use code.
    pub purpose: String,
    /// Start of the requested period, ms since the Unix epoch.
    pub start_ms: u64,
    /// End of the requested period, ms since the Unix epoch.
    pub end_ms: u64,
    /// A note for the patient.
    pub note: String,
    /// The app's reply slot (open slot) where the decision is posted.
    pub reply_slot: [u8; 32],
    /// When the request was made, ms since the Unix epoch.
    pub created_ms: u64,
}

impl RequestPayload {
    /// A request from `app` for `ask`, answered through `reply_slot`.
    pub fn new(app: &AppKeystore, ask: &ConsentAsk, reply_slot: Id) -> Result<RequestPayload> {
        let now = now_ms();
        Ok(RequestPayload {
            format: REQUEST_FORMAT,
            nonce: ehi_vault::keys::random_bytes()?,
            card: app.card(),
            scopes: ask.scopes.clone(),
            access: ask.access,
            purpose: grant::check_purpose(&ask.purpose)?,
            start_ms: now,
            end_ms: now.saturating_add(ask.duration_ms),
            note: ask.note.clone(),
            reply_slot: *reply_slot.as_bytes(),
            created_ms: now,
        })
    }

    /// Checks what the patient's device checks besides the signature: the card, the
    /// scopes, the purpose, the period and the note. Returns the verified card.
    pub fn check(&self) -> Result<VerifiedCard> {
        let card = self.card.verify()?;
        if self.scopes.is_empty() {
            return Err(EhiError::InvalidArgument(
                "the request names no scope".into(),
            ));
        }
        grant::check_purpose(&self.purpose)?;
        if self.end_ms <= self.start_ms {
            return Err(EhiError::InvalidArgument(
                "the requested period ends before it starts".into(),
            ));
        }
        if self.end_ms - self.start_ms > 10 * 366 * 86_400_000 {
            return Err(EhiError::InvalidArgument(
                "the requested period is longer than 10 years".into(),
            ));
        }
        if self.note.chars().count() > MAX_NOTE {
            return Err(EhiError::InvalidArgument(format!(
                "the note is longer than {MAX_NOTE} characters"
            )));
        }
        Ok(card)
    }
}

/// Seals `payload` for `inbox`, signed by `signer` (normally the app whose card the
/// payload carries; the patient's device refuses any other signer).
pub fn seal_request(
    signer: &AppKeystore,
    inbox: &InboxCard,
    payload: &RequestPayload,
) -> Result<Vec<u8>> {
    let bytes = ehi_vault::format::encode(payload, "consent request")?;
    letter::seal(
        &letter::Seal {
            magic: REQUEST_MAGIC,
            recipient: &inbox.hpke()?,
            info: REQUEST_INFO,
            aad: inbox.inbox.as_bytes(),
            domain: REQUEST_DOMAIN,
            min_padded: MIN_PADDED,
        },
        &signer.signing_key(),
        inbox.inbox.as_bytes(),
        &bytes,
    )
}

/// Opens and fully checks a sealed request with the inbox key (the patient's side).
pub(crate) fn open_request(
    inbox_seed: &ehi_vault::keys::SecretKey,
    inbox_slot: &Id,
    blob: &[u8],
    what: &str,
) -> Result<(RequestPayload, VerifiedCard)> {
    let (payload, signature) = letter::open(REQUEST_MAGIC, what, blob, |sealed| {
        hpke_open_with_seed(inbox_seed, sealed, REQUEST_INFO, inbox_slot.as_bytes())
    })?;
    let request: RequestPayload =
        letter::decode(what, "consent request", REQUEST_FORMAT, &payload)?;
    let card = request
        .check()
        .map_err(|e| EhiError::corrupt(what, e.to_string()))?;
    letter::verify(
        what,
        "the app",
        &card.signing_key,
        REQUEST_DOMAIN,
        inbox_slot.as_bytes(),
        &payload,
        &signature,
    )?;
    Ok((request, card))
}

/// What the patient decided (postcard, format [`DECISION_FORMAT`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecisionPayload {
    /// [`DECISION_FORMAT`].
    pub format: u32,
    /// The request's nonce.
    pub nonce: [u8; 16],
    /// Whether it was approved.
    pub approved: bool,
    /// The grant ticket (JSON) when approved.
    pub ticket: Option<String>,
    /// The `Consent` resource id in the patient's vault.
    pub consent_id: String,
    /// When it was decided, ms since the Unix epoch.
    pub decided_ms: u64,
    /// The patient's note.
    pub note: String,
}

/// Seals a decision to the app (the patient's side).
pub(crate) fn seal_decision(
    patient: &ed25519_dalek::SigningKey,
    app_hpke: &[u8; 32],
    reply_slot: &Id,
    decision: &DecisionPayload,
) -> Result<Vec<u8>> {
    let bytes = ehi_vault::format::encode(decision, "consent decision")?;
    letter::seal(
        &letter::Seal {
            magic: DECISION_MAGIC,
            recipient: app_hpke,
            info: DECISION_INFO,
            aad: reply_slot.as_bytes(),
            domain: DECISION_DOMAIN,
            min_padded: MIN_PADDED,
        },
        patient,
        reply_slot.as_bytes(),
        &bytes,
    )
}

/// What the app keeps while it waits (public JSON: it says where to look).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRequest {
    /// [`PENDING_FORMAT`].
    pub format: String,
    /// The inbox the request went to.
    pub inbox: InboxCard,
    /// The request's id at the patient (`ehi requests` shows it): the first 16 bytes of
    /// its address, hex.
    pub id: String,
    /// The request's nonce, hex.
    pub nonce: String,
    /// The app's reply slot.
    pub reply_slot: Id,
    /// When it was sent, ms since the Unix epoch.
    pub sent_ms: u64,
}

/// The names server of the network of `net` (the first registered one that answers).
async fn names_client(net: &Network) -> Result<invariant_spec::NamesClient> {
    let broker = invariant_spec::BrokerClient::new(net.broker_url())
        .map_err(|e| EhiError::network("the broker", e))?;
    let ids = broker
        .registered("names")
        .await
        .map_err(|e| EhiError::network("asking the broker for names servers", e))?;
    for id in ids {
        if let Ok(Some(url)) = broker.resolve(&id).await {
            return invariant_spec::NamesClient::new(&url)
                .map_err(|e| EhiError::network(format!("names server {url}"), e));
        }
    }
    Err(EhiError::MissingServer {
        broker: net.broker_url().to_string(),
        kind: "names",
        hint: String::new(),
    })
}

fn canonical(name: &str) -> Result<String> {
    invariant_spec::names::canonical_name(name)
        .map_err(|e| EhiError::InvalidArgument(format!("inbox name {name:?}: {e}")))
}

/// Registers `name` for `card` on the names server (the card stored as a public blob).
/// Returns the canonical name. Refuses a name that points elsewhere.
pub(crate) async fn publish_name(net: &Network, card: &InboxCard, name: &str) -> Result<String> {
    let name = canonical(name)?;
    let bytes = card.to_json()?.into_bytes();
    let blob = ehi_vault::seal::Blob {
        address: Id::of_content(&bytes),
        bytes: bytes::Bytes::from(bytes),
    };
    net.put(&blob).await?;
    net.pin(&[blob.address]).await?;
    let names = names_client(net).await?;
    let existing = names
        .lookup(&name)
        .await
        .map_err(|e| EhiError::network(format!("looking up {name}"), e))?;
    match existing {
        Some(record) if record.address == blob.address => Ok(name),
        Some(_) => Err(EhiError::InvalidArgument(format!(
            "the name {name} is taken (it points at something else); choose another"
        ))),
        None => {
            names
                .register(&invariant_spec::names::RegisterRequest::new(
                    name.clone(),
                    blob.address,
                ))
                .await
                .map_err(|e| EhiError::network(format!("registering the name {name}"), e))?;
            Ok(name)
        }
    }
}

/// Finds the inbox card registered under `name` (the app's side) and verifies it.
pub async fn find_inbox(net: &Network, name: &str) -> Result<InboxCard> {
    let name = canonical(name)?;
    let record = names_client(net)
        .await?
        .lookup(&name)
        .await
        .map_err(|e| EhiError::network(format!("looking up {name}"), e))?
        .ok_or_else(|| EhiError::NotFound(format!("the inbox name {name}")))?;
    if record.slot {
        return Err(EhiError::InvalidArgument(format!(
            "the name {name} names a slot, not an inbox card"
        )));
    }
    let bytes = net
        .get(&record.address, &format!("the inbox card of {name}"))
        .await?;
    InboxCard::parse(&bytes)
}

/// The state of a request as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not decided yet.
    Pending,
    /// Approved: open the grant with this ticket ([`crate::session::AppSession::open`]).
    Approved {
        /// The grant ticket.
        ticket: GrantTicket,
        /// The `Consent` id in the patient's vault.
        consent_id: String,
    },
    /// Denied.
    Denied {
        /// The `Consent` id in the patient's vault.
        consent_id: String,
        /// The patient's note.
        note: String,
    },
}

/// The id `ehi requests` shows for a request stored at `address`.
pub fn request_id(address: &Id) -> String {
    hex::encode(&address.as_bytes()[..16])
}

/// Sends a consent request from `app` to the patient of `inbox`: registers a reply
/// slot, seals and signs the request, appends it to the inbox. `net` must use the
/// inbox's slots server ([`InboxCard::slots_server`]).
pub async fn send_request(
    net: &Network,
    app: &AppKeystore,
    inbox: &InboxCard,
    ask: &ConsentAsk,
) -> Result<PendingRequest> {
    inbox.verify()?;
    let (reply_slot, _) = letter::new_open_slot(net).await?;
    let payload = RequestPayload::new(app, ask, reply_slot)?;
    payload.check()?;
    let bytes = seal_request(app, inbox, &payload)?;
    let address = post_sealed_request(net, inbox, bytes).await?;
    Ok(PendingRequest {
        format: PENDING_FORMAT.into(),
        inbox: inbox.clone(),
        id: request_id(&address),
        nonce: hex::encode(payload.nonce),
        reply_slot,
        sent_ms: payload.created_ms,
    })
}

/// Appends already sealed request bytes to the inbox (what [`send_request`] does after
/// sealing; public so that tests and tools can post a crafted request). Returns the
/// blob's address.
pub async fn post_sealed_request(net: &Network, inbox: &InboxCard, bytes: Vec<u8>) -> Result<Id> {
    letter::post(net, inbox.inbox, bytes, "the patient's inbox").await
}

/// Looks for the patient's decision on `pending` in its reply slot: the newest message
/// that opens with the app's key, is signed by the patient of the inbox card and
/// answers this request. Messages that fail those checks (anyone may write to an open
/// slot) are skipped.
pub async fn poll(net: &Network, app: &AppKeystore, pending: &PendingRequest) -> Result<Decision> {
    let Some(posted) = letter::posted(net, pending.reply_slot, "the reply slot").await? else {
        return Err(EhiError::NotFound(format!(
            "the reply slot {} of request {}",
            pending.reply_slot, pending.id
        )));
    };
    let nonce = hex::decode(&pending.nonce)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| EhiError::InvalidArgument("pending request: nonce".into()))?;
    for (address, _) in posted.into_iter().rev() {
        let what = format!("the decision on request {}", pending.id);
        let blob = match net.get(&address, &what).await {
            Ok(blob) => blob,
            Err(e) => {
                tracing::warn!(error = %e, "skipping a message in the reply slot");
                continue;
            }
        };
        let opened = letter::open(DECISION_MAGIC, &what, &blob, |sealed| {
            app.hpke_open(sealed, DECISION_INFO, pending.reply_slot.as_bytes())
        })
        .and_then(|(payload, signature)| {
            letter::verify(
                &what,
                "the patient",
                pending.inbox.patient.as_bytes(),
                DECISION_DOMAIN,
                pending.reply_slot.as_bytes(),
                &payload,
                &signature,
            )?;
            letter::decode::<DecisionPayload>(&what, "consent decision", DECISION_FORMAT, &payload)
        });
        let decision = match opened {
            Ok(d) if d.nonce == nonce => d,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "skipping a message in the reply slot");
                continue;
            }
        };
        if !decision.approved {
            return Ok(Decision::Denied {
                consent_id: decision.consent_id,
                note: decision.note,
            });
        }
        let ticket = decision
            .ticket
            .as_deref()
            .ok_or_else(|| EhiError::corrupt(&what, "approved without a grant ticket"))
            .and_then(|t| GrantTicket::parse(t.as_bytes()))?;
        if ticket.vault != pending.inbox.patient {
            return Err(EhiError::corrupt(&what, "the ticket is for another vault"));
        }
        return Ok(Decision::Approved {
            ticket,
            consent_id: decision.consent_id,
        });
    }
    Ok(Decision::Pending)
}

/// What the patient decided, for [`consent_resource`].
#[derive(Debug)]
pub(crate) struct Decided<'a> {
    /// The `Consent` id.
    pub consent_id: &'a str,
    /// The request id.
    pub request_id: &'a str,
    /// Approved or denied.
    pub approved: bool,
    /// The grant made (approved).
    pub grant_id: Option<&'a str>,
    /// The `Consent.patient` reference object.
    pub patient: &'a serde_json::Value,
    /// When, ms since the Unix epoch.
    pub decided_ms: u64,
}

/// The FHIR R4 `Consent` recording a decision on `request` (kept in the vault).
pub(crate) fn consent_resource(
    request: &RequestPayload,
    card: &VerifiedCard,
    decided: &Decided<'_>,
) -> serde_json::Value {
    let Decided {
        consent_id,
        request_id,
        approved,
        grant_id,
        patient,
        decided_ms,
    } = *decided;
    use ehi_vault::time::instant;
    use serde_json::json;
    let classes: Vec<serde_json::Value> = ehi_vault::scope::DEFAULT_TABLE
        .iter()
        .filter(|(_, scope)| request.scopes.contains(scope))
        .map(|(t, _)| json!({"system": "http://hl7.org/fhir/resource-types", "code": t}))
        .collect();
    let mut actions = vec![json!({"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]})];
    if request.access == Access::Contribute {
        actions.push(json!({"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "correct"}]}));
    }
    let display = ehi_vault::grant::PURPOSES
        .iter()
        .find(|(c, _)| *c == request.purpose)
        .map(|(_, d)| *d)
        .unwrap_or("");
    let mut identifiers =
        vec![json!({"system": "urn:ehi-layer:consent-request", "value": request_id})];
    if let Some(grant) = grant_id {
        identifiers.push(json!({"system": "urn:ehi-layer:grant", "value": grant}));
    }
    let scopes: Vec<&str> = request.scopes.iter().map(|s| s.name()).collect();
    let mut consent = json!({
        "resourceType": "Consent",
        "id": consent_id,
        "identifier": identifiers,
        "status": if approved { "active" } else { "rejected" },
        "scope": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy", "display": "Privacy Consent"}]},
        "category": [{"coding": [{
            "system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": patient,
        "dateTime": instant(decided_ms),
        "performer": [patient],
        "policyRule": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": if approved { "OPTIN" } else { "OPTOUT" }}]},
        "provision": {
            "type": if approved { "permit" } else { "deny" },
            "period": {"start": instant(request.start_ms), "end": instant(request.end_ms)},
            "actor": [{
                "role": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "IRCP", "display": "information recipient"}]},
                "reference": {
                    "identifier": {"system": "urn:ehi-layer:ed25519",
                                   "value": hex::encode(card.signing_key)},
                    "display": card.name}
            }],
            "action": actions,
            "purpose": [{"system": ehi_vault::grant::PURPOSE_SYSTEM,
                         "code": request.purpose, "display": display}],
        },
        "text": {"status": "generated",
                 "div": format!(
                     "<div xmlns=\"http://www.w3.org/1999/xhtml\">{} {} access to {} for {}</div>",
                     if approved { "Approved" } else { "Denied" },
                     request.access,
                     scopes.join(", "),
                     xml_escape(&card.name))},
    });
    // FHIR has no empty arrays: a scope without types of its own names no class.
    if !classes.is_empty() {
        consent["provision"]["class"] = serde_json::Value::Array(classes);
    }
    consent
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
