//! The patient's side of consent requests (design in [`crate::consent`]): the inbox
//! (created on first use, kept in the root), listing pending requests, and approving or
//! denying one — a grant through [`ehi_vault::grant`], a FHIR `Consent` in the vault, a
//! record in the root, an audit entry, and the signed decision posted to the app.
//!
//! The inbox's start blob and the posted decisions count among the vault's blocks
//! ([`Vault::blocks`]; unpinned at removal). Removal also moves the inbox slot and the
//! reply slots to the tombstone and unpins a published inbox card (see
//! `removal.rs`: these are open slots, which anyone may move on again, and the
//! requests stay pinned by the apps that posted them).
//!
//! ## Approving is idempotent
//! Approving is three commits (the grant, the `Consent` import, the decision record
//! with its audit entry) and a post to the app's reply slot ([`ApproveStep`]). A crash
//! between them must not make a second grant, so every step finds what an earlier
//! attempt left:
//! - the grant's id is derived from the request: the first 16 bytes of BLAKE3 keyed by
//!   `derive_key("invariant ehi-layer v1 consent grant id", inbox HPKE seed)` over the
//!   request's address. Keyed with a secret of the vault, so servers (which see request
//!   addresses in the inbox's history) cannot compute the grant id and from it the
//!   grant channel's slot. Approving again finds the grant in the root and reuses it;
//! - the channel is opened only if it does not exist;
//! - the `Consent` is imported only if the vault does not hold it with the same status;
//! - the sealed decision is stored (and pinned) **before** the record is committed, so
//!   a request already decided whose decision is missing from the reply slot gets it
//!   appended again when the patient tries to decide it again (which is then refused as
//!   already decided, as before).
//!
//! Denying a request whose approval was interrupted after its grant revokes that grant
//! first. Approving one whose interrupted approval's grant was revoked (or expired)
//! since is refused: the derived id and its channel are spent; deny it and let the app
//! ask again.

use ed25519_dalek::Signer;
use serde_json::json;

use crate::consent::{self, DecisionPayload, InboxCard, RequestPayload};
use crate::letter;
use ehi_vault::fhir::Input;
use ehi_vault::format::{InboxRecord, RequestRecord};
use ehi_vault::grant::{Access, GrantInfo, GrantRequest, GrantTicket, smart_scopes};
use ehi_vault::slotmove;
use ehi_vault::vault::prelude::*;

/// A pending consent request as shown to the patient.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConsentRequestInfo {
    /// The id to approve or deny it with (32 hex digits).
    pub id: String,
    /// The app's name (its own claim, from its signed card).
    pub app_name: String,
    /// The app's ed25519 key, hex.
    pub app_signing_key: String,
    /// Scopes asked for.
    pub scopes: Vec<Scope>,
    /// Read or contribute.
    pub access: Access,
    /// Purpose of use code.
    pub purpose: String,
    /// Requested period, ms since the Unix epoch.
    pub start_ms: u64,
    /// End of the requested period.
    pub end_ms: u64,
    /// The app's note.
    pub note: String,
    /// When the inbox received it (the slots server's clock).
    pub received_ms: u64,
    /// The SMART v2 scopes the grant would correspond to.
    pub smart_scopes: Vec<String>,
}

/// A message in the inbox that is not a valid request.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnreadableRequest {
    /// Its id.
    pub id: String,
    /// Why it was refused.
    pub reason: String,
}

/// The inbox.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RequestList {
    /// Valid requests not decided yet, oldest first.
    pub pending: Vec<ConsentRequestInfo>,
    /// Messages refused (tampered, forged, malformed).
    pub unreadable: Vec<UnreadableRequest>,
}

/// What approving or denying did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConsentOutcome {
    /// The request id.
    pub request: String,
    /// The app's name.
    pub app_name: String,
    /// The `Consent` resource id in the vault.
    pub consent_id: String,
    /// The grant and its ticket (approved requests).
    pub grant: Option<(GrantInfo, GrantTicket)>,
}

/// The patient's inbox card, creating the inbox on first use (an open slot and a
/// random HPKE key kept in the root).
pub async fn inbox_card(vault: &Vault) -> Result<InboxCard> {
    let mut state = vault.state.lock().await;
    vault.refresh_state(&mut state).await?;
    if state.root.ext.inbox.is_none() {
        let (slot, start) = letter::new_open_slot(&vault.net).await?;
        let record = InboxRecord {
            slot_id: *slot.as_bytes(),
            start: *start.as_bytes(),
            hpke_seed: SecretKey::random()?,
            created_ms: now_ms(),
        };
        vault
            .commit(&mut state, &mut (), move |_, state, ()| {
                let plan = if state.root.ext.inbox.is_some() {
                    Plan::Nothing(())
                } else {
                    let mut root = state.root.clone();
                    root.ext.inbox = Some(record.clone());
                    Plan::write(RootChange::root(root), ())
                };
                decided(Ok(plan))
            })
            .await?;
    }
    let inbox = state
        .root
        .ext
        .inbox
        .as_ref()
        .ok_or_else(|| EhiError::corrupt("vault root", "the inbox vanished"))?;
    Ok(card_of(vault, inbox))
}

/// The (deterministic) inbox card of `inbox`: the same bytes each time, so removal
/// finds the blob a published name points at.
pub(crate) fn card_of(vault: &Vault, inbox: &InboxRecord) -> InboxCard {
    let inbox_slot = Id::from_bytes(inbox.slot_id);
    let hpke_key = hex::encode(ehi_vault::keystore::hpke_public_of(&inbox.hpke_seed));
    let slots_server = vault.net.slots_server();
    let message = InboxCard::message(&vault.slot, &slots_server, &inbox_slot, &hpke_key);
    InboxCard {
        format: consent::INBOX_CARD_FORMAT.into(),
        version: consent::INBOX_CARD_VERSION,
        patient: vault.slot,
        slots_server,
        inbox: inbox_slot,
        hpke_key,
        signature: hex::encode(vault.signing.sign(&message).to_bytes()),
    }
}

/// Registers `name` for the inbox card on the names server (see
/// [`crate::consent`]: the card becomes public under that name). Returns the card
/// and the canonical name.
pub async fn publish_inbox_name(vault: &Vault, name: &str) -> Result<(InboxCard, String)> {
    let card = inbox_card(vault).await?;
    let name = consent::publish_name(&vault.net, &card, name).await?;
    Ok((card, name))
}

/// The inbox: pending requests (opened and checked on this device) and refused
/// messages. Empty when no inbox was created.
pub async fn requests(vault: &Vault) -> Result<RequestList> {
    let (inbox, decided) = {
        let mut state = vault.state.lock().await;
        vault.refresh_state(&mut state).await?;
        let decided: Vec<[u8; 32]> = state.root.ext.requests.iter().map(|r| r.address).collect();
        (state.root.ext.inbox.clone(), decided)
    };
    let Some(inbox) = inbox else {
        return Ok(RequestList::default());
    };
    let slot = Id::from_bytes(inbox.slot_id);
    let posted = letter::posted(&vault.net, slot, "the inbox")
        .await?
        .unwrap_or_default();
    let mut list = RequestList::default();
    for (address, received_ms) in posted {
        if decided.contains(address.as_bytes()) || *address.as_bytes() == inbox.start {
            continue;
        }
        let id = consent::request_id(&address);
        match open_request_at(vault, &inbox, address).await {
            Ok((request, card)) => list.pending.push(ConsentRequestInfo {
                id,
                app_name: card.name.clone(),
                app_signing_key: hex::encode(card.signing_key),
                smart_scopes: smart_scopes(&request.scopes, request.access),
                scopes: request.scopes,
                access: request.access,
                purpose: request.purpose,
                start_ms: request.start_ms,
                end_ms: request.end_ms,
                note: request.note,
                received_ms,
            }),
            Err(e) => list.unreadable.push(UnreadableRequest {
                id,
                reason: e.to_string(),
            }),
        }
    }
    Ok(list)
}

pub(crate) async fn open_request_at(
    vault: &Vault,
    inbox: &InboxRecord,
    address: Id,
) -> Result<(RequestPayload, ehi_vault::app::VerifiedCard)> {
    let what = format!("consent request {}", consent::request_id(&address));
    let blob = vault.net.get(&address, &what).await?;
    consent::open_request(
        &inbox.hpke_seed,
        &Id::from_bytes(inbox.slot_id),
        &blob,
        &what,
    )
}

/// Finds request `id` (its 32 hex digits, or a unique prefix of at least 8) in the
/// inbox, refusing one already decided.
async fn find_request(
    vault: &Vault,
    id: &str,
) -> Result<(
    Id,
    RequestPayload,
    ehi_vault::app::VerifiedCard,
    InboxRecord,
)> {
    let wanted = id.trim().to_ascii_lowercase();
    if wanted.len() < 8 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(EhiError::InvalidArgument(format!(
            "request id {id:?}: give the hex id `ehi requests` shows (at least 8 digits)"
        )));
    }
    let (inbox, decided) = {
        let mut state = vault.state.lock().await;
        vault.refresh_state(&mut state).await?;
        (
            state.root.ext.inbox.clone(),
            state.root.ext.requests.clone(),
        )
    };
    let inbox = inbox.ok_or_else(|| {
        EhiError::NotFound(format!(
            "request {id} (this vault has no inbox yet: `ehi requests card` creates it)"
        ))
    })?;
    if let Some(done) = decided
        .iter()
        .find(|r| hex::encode(r.address).starts_with(&wanted))
    {
        // A crash may have come between the record and the post: deliver again.
        if let Err(e) = redeliver(vault, done).await {
            tracing::warn!(error = %e, "posting a decision again");
        }
        return Err(EhiError::InvalidArgument(format!(
            "request {id} of {} was already {}",
            done.app_name,
            if done.approved { "approved" } else { "denied" }
        )));
    }
    let posted = letter::posted(&vault.net, Id::from_bytes(inbox.slot_id), "the inbox")
        .await?
        .unwrap_or_default();
    let matches: Vec<Id> = posted
        .into_iter()
        .map(|(a, _)| a)
        .filter(|a| hex::encode(a.as_bytes()).starts_with(&wanted))
        .collect();
    let address = match matches.as_slice() {
        [one] => *one,
        [] => return Err(EhiError::NotFound(format!("request {id} in the inbox"))),
        _ => {
            return Err(EhiError::InvalidArgument(format!(
                "request id {id} is ambiguous; give more digits"
            )));
        }
    };
    let (request, card) = open_request_at(vault, &inbox, address).await?;
    Ok((address, request, card, inbox))
}

/// Appends the decision of `done` to its reply slot if it is not there (it was
/// stored before the record was committed).
async fn redeliver(vault: &Vault, done: &RequestRecord) -> Result<()> {
    let reply = Id::from_bytes(done.reply_slot);
    let decision = Id::from_bytes(done.decision);
    let posted = letter::posted(&vault.net, reply, "the app's reply slot")
        .await?
        .unwrap_or_default();
    if posted.iter().any(|(a, _)| *a == decision) {
        return Ok(());
    }
    letter::append(&vault.net, reply, decision, "the app's reply slot").await?;
    Ok(())
}

/// Approves request `id`: grants what it asks (until the end of its period), keeps
/// a `Consent` (status `active`, provision `permit`), logs the decision and posts
/// the signed decision with the grant ticket to the app. Idempotent after a crash
/// (see the module docs): approving again reuses the grant already made.
pub async fn approve_request(vault: &Vault, id: &str) -> Result<ConsentOutcome> {
    approve_request_until(vault, id, ApproveStep::Post).await
}

/// [`crate::approve_request`] stopping after step `last`, as a crash would: for
/// tests of the recovery.
#[doc(hidden)]
pub async fn approve_request_until(
    vault: &Vault,
    id: &str,
    last: ApproveStep,
) -> Result<ConsentOutcome> {
    let (address, request, card, inbox) = find_request(vault, id).await?;
    let now = now_ms();
    let grant_id = consent_grant_id(&inbox, &address);
    let existing = {
        let state = vault.state.lock().await;
        state.root.grants.iter().any(|g| g.id == grant_id)
    };
    if !existing {
        // A channel without the grant: an earlier, interrupted approval made the
        // grant and it was revoked (or expired) since. Its id (and channel) cannot
        // serve a new grant.
        let channel = crate::contribution::channel_slot(&vault.slot, &grant_id);
        if slotmove::read(&vault.net, channel, "grant channel")
            .await?
            .is_some()
        {
            return Err(EhiError::InvalidArgument(format!(
                "request {id}: an interrupted approval made grant {}, which was revoked \
                 or expired since; deny this request and ask the app for a new one",
                hex::encode(grant_id)
            )));
        }
    }
    if request.end_ms <= now && !existing {
        return Err(EhiError::InvalidArgument(format!(
            "request {id}: the period it asks for ended at {}",
            instant(request.end_ms)
        )));
    }
    let (info, ticket) = crate::grant_with_id(
        vault,
        GrantRequest {
            app: card.clone(),
            scopes: request.scopes.clone(),
            access: request.access,
            duration_ms: request.end_ms.saturating_sub(now).max(1),
            purpose: request.purpose.clone(),
        },
        grant_id,
    )
    .await?;
    let outcome = ConsentOutcome {
        request: consent::request_id(&address),
        app_name: card.name.clone(),
        consent_id: consent_id(&address),
        grant: Some((info.clone(), ticket.clone())),
    };
    if last == ApproveStep::Grant {
        return Ok(outcome);
    }
    // Every grant gets its channel: contributions (contribute grants) and the app's
    // audit reports (all grants).
    crate::publish_channel(vault, &info.id).await?;
    if last == ApproveStep::Channel {
        return Ok(outcome);
    }
    let ticket_json = serde_json::to_string(&ticket)
        .map_err(|e| EhiError::Crypto(format!("encoding the ticket: {e}")))?;
    decide(
        vault,
        address,
        &request,
        &card,
        Some((&info.id, ticket_json)),
        "",
        last,
    )
    .await?;
    Ok(outcome)
}

/// Denies request `id`: keeps a `Consent` (status `rejected`, provision `deny`),
/// logs the decision and posts the signed refusal (with `note`) to the app. A grant
/// left by an interrupted approval of the same request is revoked first.
pub async fn deny_request(vault: &Vault, id: &str, note: &str) -> Result<ConsentOutcome> {
    let (address, request, card, inbox) = find_request(vault, id).await?;
    let grant_id = hex::encode(consent_grant_id(&inbox, &address));
    match crate::revoke(vault, &grant_id, false).await {
        Ok(_) | Err(EhiError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    decide(
        vault,
        address,
        &request,
        &card,
        None,
        note,
        ApproveStep::Post,
    )
    .await?;
    Ok(ConsentOutcome {
        request: consent::request_id(&address),
        app_name: card.name,
        consent_id: consent_id(&address),
        grant: None,
    })
}

async fn decide(
    vault: &Vault,
    address: Id,
    request: &RequestPayload,
    card: &ehi_vault::app::VerifiedCard,
    grant: Option<(&str, String)>,
    note: &str,
    last: ApproveStep,
) -> Result<()> {
    let approved = grant.is_some();
    let request_id = consent::request_id(&address);
    let consent_id = consent_id(&address);
    let now = now_ms();
    let patient = consent_patient(vault).await;
    let resource = consent::consent_resource(
        request,
        card,
        &consent::Decided {
            consent_id: &consent_id,
            request_id: &request_id,
            approved,
            grant_id: grant.as_ref().map(|(g, _)| *g),
            patient: &patient,
            decided_ms: now,
        },
    );
    let bundle = json!({"resourceType": "Bundle", "type": "collection",
                        "entry": [{"resource": resource}]});
    let bytes = serde_json::to_vec(&bundle)
        .map_err(|e| EhiError::Crypto(format!("encoding the Consent: {e}")))?;
    // Imported once: an attempt interrupted after the import left it there.
    let status = if approved { "active" } else { "rejected" };
    let present = match vault.read("Consent", &consent_id).await {
        Ok(existing) => existing["status"] == status,
        Err(EhiError::NotFound(_)) => false,
        Err(e) => return Err(e),
    };
    if !present {
        vault
            .import(vec![Input::from_bytes("consent decision", bytes)])
            .await?;
    }
    if last == ApproveStep::Consent {
        return Ok(());
    }

    let reply_slot = Id::from_bytes(request.reply_slot);
    let decision = DecisionPayload {
        format: consent::DECISION_FORMAT,
        nonce: request.nonce,
        approved,
        ticket: grant.as_ref().map(|(_, t)| t.clone()),
        consent_id: consent_id.clone(),
        decided_ms: now,
        note: note.chars().take(1000).collect(),
    };
    let sealed = consent::seal_decision(&vault.signing, &card.hpke_key, &reply_slot, &decision)?;
    // Stored before the record names it, so it can be posted again after a crash.
    let decision_address = letter::store(&vault.net, sealed).await?;
    let record = RequestRecord {
        address: *address.as_bytes(),
        app_name: card.name.clone(),
        app_signing: card.signing_key,
        approved,
        grant: grant
            .as_ref()
            .and_then(|(g, _)| hex::decode(g).ok())
            .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok()),
        consent_id: consent_id.clone(),
        decided_ms: now,
        reply_slot: request.reply_slot,
        decision: *decision_address.as_bytes(),
    };
    let mut entities = vec![
        format!("request/{request_id}"),
        format!("Consent/{consent_id}"),
    ];
    if let Some((g, _)) = &grant {
        entities.push(format!("grant/{g}"));
    }
    let mut audit = AuditRecord::new(
        AuditAction::Consent,
        format!(
            "{} the request of {} for {} access to {}",
            if approved { "approved" } else { "denied" },
            card.name,
            request.access,
            request
                .scopes
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .with_entities(entities);
    audit.purpose = Some(request.purpose.clone());
    let committed = vault
        .commit_extension(
            move |root| {
                if root
                    .ext
                    .requests
                    .iter()
                    .any(|r| r.address == record.address)
                {
                    return Err(EhiError::InvalidArgument(format!(
                        "request {} was decided on another device meanwhile",
                        consent::request_id(&Id::from_bytes(record.address))
                    )));
                }
                root.ext.requests.push(record.clone());
                Ok(())
            },
            &audit,
        )
        .await;
    if let Err(e) = committed {
        vault.net.unpin_quietly(&[decision_address]).await;
        return Err(e);
    }
    if last == ApproveStep::Record {
        return Ok(());
    }
    letter::append(
        &vault.net,
        reply_slot,
        decision_address,
        "the app's reply slot",
    )
    .await?;
    Ok(())
}

/// `Consent.patient`: the vault's Patient when it holds exactly one, else the vault
/// itself as an identifier.
async fn consent_patient(vault: &Vault) -> Value {
    let patients: Vec<String> = vault
        .list()
        .await
        .into_iter()
        .filter(|r| r.starts_with("Patient/"))
        .collect();
    match patients.as_slice() {
        [one] => json!({"reference": one}),
        _ => json!({"identifier": {"system": "urn:ehi-layer:vault",
                                    "value": vault.slot.to_string()}}),
    }
}

/// The steps of approving a request, in order ([`crate::approve_request_until`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApproveStep {
    /// The grant is committed.
    Grant,
    /// Its channel is opened.
    Channel,
    /// The `Consent` is imported.
    Consent,
    /// The decision is recorded in the root (and logged).
    Record,
    /// The decision is posted to the app (everything).
    Post,
}

/// BLAKE3 context of the key deriving a consent grant's id (see the module docs).
const CONTEXT_CONSENT_GRANT: &str = "invariant ehi-layer v1 consent grant id";

/// The id of the grant that approving the request at `address` makes.
fn consent_grant_id(inbox: &InboxRecord, address: &Id) -> [u8; 16] {
    let key = inbox.hpke_seed.derive(CONTEXT_CONSENT_GRANT);
    let hash = blake3::keyed_hash(key.expose(), address.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash.as_bytes()[..16]);
    id
}

/// The `Consent` id of the request stored at `address`.
fn consent_id(address: &Id) -> String {
    format!("consent-{}", consent::request_id(address))
}
