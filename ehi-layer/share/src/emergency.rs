//! Break-glass emergency access: the patient names, in advance, an app or organisation
//! (the **holder**, identified by its app card) that may read an emergency set of scopes
//! without the patient being there; every use is logged by the holder where the
//! patient's devices read it, and surfaced until the patient acknowledges it.
//!
//! ## How the emergency scope is formed
//! Keys are per scope ([`ehi_vault::scope`]), so the policy is an ordinary grant
//! ([`ehi_vault::grant`]) of whole scopes with purpose `ETREAT`, read access and the
//! longest lifetime a grant may have (10 years), sealed with HPKE to the holder's key.
//! The default scopes are [`DEFAULT_SCOPES`]: `allergies`, `medications`,
//! `immunizations` and `clinical` — **Condition lives in `clinical`, so the holder can
//! decrypt the whole clinical scope** (encounters, observations, procedures, …), not only
//! the problem list. No per-type copy is made: a narrower emergency scope would need a
//! scope of its own (an override moving Condition there, [`ehi_vault::Vault::set_scope_override`],
//! while none is stored). [`crate::session::AppSession::list`] on the holder side shows
//! what it can read. The patient may pass other scopes.
//!
//! ## Where the policy lives (no change to the vault root format)
//! - The grant is in the root like any grant (`ehi grants` lists it, purpose `ETREAT`).
//! - The **policy slot** (ed25519 seed `BLAKE3-derive_key("invariant ehi-layer v1
//!   emergency policy slot", K)`, so every device of the patient finds it) points at a
//!   blob sealed under `derive_key("invariant ehi-layer v1 emergency policy", K)`
//!   (envelope kind `Emergency`): holder name and keys, grant id, the access log slot's
//!   seed and key, and how many uses were acknowledged.
//! - `K` depends on the **root key generation** of the vault (see `vault/keyring.rs`):
//!   generation 0 uses the keystore's root key; a later generation uses that
//!   generation's root AEAD key, which only the devices in the device keyring receive.
//!   Readers look at the current generation's slot first, then at older generations'
//!   slots, newest first (the first slot that exists decides; a tombstone there means
//!   no policy). Every write goes to the current generation's slot and moves an older
//!   generation's slot to the tombstone; the blob it replaces is unpinned.
//! - **Re-keying on device removal**: [`crate::remove_device`] re-publishes the
//!   policy under the new generation and tombstones the old slot, so the removed device
//!   can neither find nor open the new policy blob (tests/devices.rs
//!   `removing_a_device_re_keys_the_emergency_policy`). The holder notices nothing: its
//!   ticket names the grant slot (re-sealed with the new scope keys by the removal) and
//!   the log slot, neither of which moves. Should the re-keying fail after the removal
//!   committed, reads still find the policy under the old generation and the next write
//!   of the policy moves it.
//! - The **emergency ticket** (JSON, `ehi-emergency-ticket` v1) is handed to the holder:
//!   the grant ticket, plus, HPKE-sealed to the holder (info `"invariant ehi-layer v1
//!   emergency"`, aad = grant slot id), the access log slot's seed and the log key.
//!
//! ## Using it ([`EmergencyAccess::open`]; no live patient)
//! The holder's library first **appends an entry to the access log**, then opens the
//! grant as an [`AppSession`]. The log is a chain of [`AuditEntry`]s (the same format as
//! the vault's audit log) **signed by the holder's ed25519 key**, each sealed under the
//! log key (kind `Emergency`) as its own blob; the log slot points at the newest. Each
//! entry is a FHIR AuditEvent with `purposeOfEvent` `ETREAT` and the security label
//! `BTG` (break the glass) — [`ehi_vault::audit::is_emergency`].
//!
//! ## The patient's side
//! [`pending`] reads the policy and the log, verifies the chain (signatures by the
//! holder's key named in the policy, hash links, order) and returns the uses not yet
//! acknowledged; `ehi status` prints `"emergency access on <date> by <who>"` for each.
//! [`acknowledge`] copies each pending use into the vault's own audit log (action
//! `emergency`, flagged the same way, written by the patient's key) and records how many
//! were acknowledged in the policy blob.
//!
//! ## Limits (said plainly)
//! - **Logging is done by the holder's software.** Cryptography cannot force a holder
//!   who has the keys to log before reading; a dishonest holder can read silently, or
//!   roll its log slot back. The policy trusts the holder as much as the patient chose
//!   to; what the log gives is non-repudiation of what it does record (signed entries).
//! - Like every grant: the holder can keep what it read; revoking the policy
//!   ([`clear_policy`], or revoking the grant) rotates the scope keys for the future.
//!   Replacing or clearing the policy also points its access log slot at the tombstone
//!   (the holder then gets its grant's refusal, or [`EhiError::NotGranted`], and logs
//!   nothing more there).
//! - **The access log is not re-keyed on device removal.** Its slot seed and AEAD key
//!   are in the holder's ticket (HPKE-sealed to the holder), and the holder is not
//!   there to receive new ones: handing it a new log key means a message the holder's
//!   library reads and trusts, signed by the patient — but the removed device keeps the
//!   patient's signing key (see [`crate::device`]), so it could forge such a message
//!   as well, and it also keeps the old log slot's seed (it could move that slot). So a
//!   removed device that kept the old policy can still read the holder's log of uses
//!   (dates, reasons; no health data) and interfere with it; it cannot read the policy
//!   as it stands after the removal nor anything the grant gives. Ending that needs a
//!   new policy ([`set_policy`] again: a new log slot and key in a new ticket for the
//!   holder).
//! - Servers see a grant slot, a policy slot (a new one after each device removal) and
//!   a log slot (ids unlinkable to the patient except by timing), bucket-sized
//!   ciphertext blobs, and when they move.
//! - Vault removal ([`crate::remove`]) tombstones the policy slots and the log
//!   slot and unpins the policy blobs; the log entries stay pinned by the holder.

use invariant_spec::Id;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::session::AppSession;
use ehi_vault::app::{AppKeystore, VerifiedCard};
use ehi_vault::audit::{self, AuditAction, AuditEntry, AuditRecord};
use ehi_vault::error::{EhiError, Result};
use ehi_vault::grant::{Access, GrantRequest, GrantTicket};
use ehi_vault::keys::{PolicyKeys, SecretKey};
use ehi_vault::keystore::{HpkeSealed, Keystore, hpke_seal};
use ehi_vault::network::Network;
use ehi_vault::scope::Scope;
use ehi_vault::seal::{self, Kind, Opened};
use ehi_vault::slotmove;
use ehi_vault::slotmove::tombstone_address;
use ehi_vault::time::{instant, now_ms};
use ehi_vault::vault::Vault;

pub use ehi_vault::keys::{CONTEXT_POLICY, CONTEXT_POLICY_SLOT};
/// HPKE `info` of the holder's part of an emergency ticket.
pub const HPKE_INFO: &[u8] = b"invariant ehi-layer v1 emergency";
/// The `format` of an emergency ticket.
pub const TICKET_FORMAT: &str = "ehi-emergency-ticket";
/// Emergency ticket version.
pub const TICKET_VERSION: u32 = 1;
/// The purpose of use of the emergency grant.
pub const PURPOSE: &str = "ETREAT";
/// Scopes of the emergency policy unless the patient names others.
pub const DEFAULT_SCOPES: [Scope; 4] = [
    Scope::Allergies,
    Scope::Medications,
    Scope::Clinical,
    Scope::Immunizations,
];
/// Lifetime of the emergency grant (the longest a grant may have).
const LIFETIME_MS: u64 = 10 * 365 * 86_400_000;
/// Envelope context of the policy blob.
const POLICY_CONTEXT: &str = "emergency policy";
/// Envelope context of access log entries.
const LOG_CONTEXT: &str = "emergency log";
/// Policy format.
const POLICY_FORMAT: u32 = 1;

/// The policy as stored (sealed) behind the policy slot.
#[derive(Clone, Serialize, Deserialize)]
struct Policy {
    format: u32,
    grant: String,
    holder_name: String,
    holder_signing: [u8; 32],
    holder_hpke: [u8; 32],
    scopes: Vec<Scope>,
    created_ms: u64,
    log_seed: SecretKey,
    log_key: SecretKey,
    /// Number of log entries acknowledged (the first `acknowledged` entries).
    acknowledged: u64,
}

/// What the holder alone can open (HPKE).
#[derive(Serialize, Deserialize)]
struct HolderPart {
    format: u32,
    log_seed: SecretKey,
    log_key: SecretKey,
}

/// What the patient hands to the emergency holder (JSON; the secret part is sealed to
/// the holder's HPKE key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyTicket {
    /// [`TICKET_FORMAT`].
    pub format: String,
    /// [`TICKET_VERSION`].
    pub version: u32,
    /// The holder's name (from its card).
    pub holder: String,
    /// The grant behind the policy.
    pub grant: GrantTicket,
    /// The access log slot.
    pub log_slot: Id,
    /// HPKE encapsulated key, hex.
    pub sealed_encapped: String,
    /// HPKE ciphertext of the log slot seed and log key, hex.
    pub sealed: String,
}

impl EmergencyTicket {
    /// Parses and checks a ticket.
    pub fn parse(json: &[u8]) -> Result<EmergencyTicket> {
        let ticket: EmergencyTicket = serde_json::from_slice(json)
            .map_err(|e| EhiError::InvalidArgument(format!("not an emergency ticket: {e}")))?;
        if ticket.format != TICKET_FORMAT || ticket.version != TICKET_VERSION {
            return Err(EhiError::InvalidArgument(format!(
                "emergency ticket format {:?} version {} (this build reads {TICKET_FORMAT:?} {TICKET_VERSION})",
                ticket.format, ticket.version
            )));
        }
        Ok(ticket)
    }
}

/// The patient's emergency policy as listed (no key material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyInfo {
    /// The holder's name.
    pub holder: String,
    /// The holder's ed25519 key, hex.
    pub holder_signing_key: String,
    /// The grant id.
    pub grant: String,
    /// Scopes the holder can read.
    pub scopes: Vec<Scope>,
    /// When it was set, ms since the Unix epoch.
    pub created_ms: u64,
    /// Uses acknowledged so far.
    pub acknowledged: u64,
}

/// One use of the emergency access, as logged by the holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EmergencyUse {
    /// Position in the holder's log (0 first).
    pub seq: u64,
    /// `AuditEvent.recorded`.
    pub recorded: String,
    /// Who (the holder's name from the policy).
    pub who: String,
    /// The reason the holder gave.
    pub reason: String,
    /// The AuditEvent (flagged `ETREAT` + `BTG`).
    pub event: Value,
}

impl EmergencyUse {
    /// `"emergency access on <date> by <who>"`.
    pub fn notice(&self) -> String {
        format!(
            "emergency access on {} by {}: {}",
            self.recorded, self.who, self.reason
        )
    }
}

/// The policy slot's signer and id under one generation's keys.
fn policy_slot(keys: &PolicyKeys) -> Result<(invariant_spec::slots::SlotSigner, Id)> {
    slotmove::slot_of(keys.seed().expose())
}

fn check_keystore(vault: &Vault, keystore: &Keystore) -> Result<()> {
    if keystore.vault_slot() != vault.slot() {
        return Err(EhiError::InvalidArgument(
            "the keystore given is not the vault's".into(),
        ));
    }
    Ok(())
}

fn open_inline(
    key: &SecretKey,
    context: &str,
    blob: &[u8],
    what: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    match seal::open_object(key, Kind::Emergency, context, blob, what)? {
        Opened::Inline(bytes) => Ok(bytes),
        Opened::Chunked { .. } => Err(EhiError::corrupt(what, "unexpectedly chunked")),
    }
}

async fn store_sealed(net: &Network, key: &SecretKey, context: &str, bytes: &[u8]) -> Result<Id> {
    let sealed = seal::seal_object(key, Kind::Emergency, context, 0, bytes)?;
    if !sealed.chunks.is_empty() {
        return Err(EhiError::InvalidArgument(
            "emergency record too large".into(),
        ));
    }
    net.put(&sealed.head).await?;
    net.pin(&[sealed.head.address]).await?;
    Ok(sealed.head.address)
}

/// The policy as found: where, and under which generation's keys.
struct Found {
    address: Id,
    policy: Policy,
    /// Whether it is under the current root key generation.
    current: bool,
    keys: PolicyKeys,
}

fn decode_policy(keys: &PolicyKeys, blob: &[u8]) -> Result<Policy> {
    let bytes = open_inline(keys.key(), POLICY_CONTEXT, blob, "the emergency policy")?;
    let policy: Policy = postcard::from_bytes(&bytes)
        .map_err(|e| EhiError::corrupt("the emergency policy", format!("does not decode: {e}")))?;
    if policy.format != POLICY_FORMAT {
        return Err(EhiError::UnsupportedFormat {
            what: "emergency policy",
            found: policy.format,
            supported: POLICY_FORMAT,
        });
    }
    Ok(policy)
}

/// The policy: the slot of the current root key generation if it exists, else the
/// newest older generation's slot that exists (a policy not re-keyed yet after a device
/// removal). A tombstone there means no policy.
async fn load_policy(vault: &Vault) -> Result<Option<Found>> {
    load_policy_with(vault.network(), vault.policy_keys().await).await
}

async fn load_policy_with(net: &Network, generations: Vec<PolicyKeys>) -> Result<Option<Found>> {
    for (index, keys) in generations.into_iter().enumerate() {
        let (_, slot) = policy_slot(&keys)?;
        let Some(address) = slotmove::read(net, slot, "emergency policy").await? else {
            continue;
        };
        if address == tombstone_address() {
            return Ok(None);
        }
        let blob = net.get(&address, "the emergency policy").await?;
        let policy = decode_policy(&keys, &blob)?;
        return Ok(Some(Found {
            address,
            policy,
            current: index == 0,
            keys,
        }));
    }
    Ok(None)
}

/// Stores `policy` under the current root key generation (after a refresh) and points
/// its slot at it; the blob it replaces is unpinned and, when `previous` was under
/// another generation, that generation's slot is moved to the tombstone (re-keying).
async fn save_policy(vault: &Vault, policy: &Policy, previous: Option<&Found>) -> Result<Id> {
    let net = vault.network();
    // Write under the newest generation (another device may have removed one).
    vault.refresh().await?;
    let keys = vault
        .policy_keys()
        .await
        .into_iter()
        .next()
        .ok_or_else(|| EhiError::Crypto("no root key generation".into()))?;
    let bytes = Zeroizing::new(ehi_vault::format::encode(policy, "emergency policy")?);
    let address = store_sealed(net, keys.key(), POLICY_CONTEXT, &bytes).await?;
    let (signer, slot) = policy_slot(&keys)?;
    slotmove::point(net, &signer, slot, address, "emergency policy").await?;
    if let Some(previous) = previous {
        let (old_signer, old_slot) = policy_slot(&previous.keys)?;
        if old_slot != slot {
            slotmove::store_tombstone(net).await?;
            slotmove::tombstone(net, old_slot, Some(&old_signer), "emergency policy").await?;
        }
        if previous.address != address {
            net.unpin_quietly(&[previous.address]).await;
        }
    }
    Ok(address)
}

/// Points the access log slot of a policy that is replaced or cleared at the tombstone
/// (best effort: the holder, who has the slot's key too, could move it again; its
/// entries stay pinned by the holder).
async fn close_log(net: &Network, policy: &Policy) {
    let result = async {
        let (signer, slot) = slotmove::slot_of(policy.log_seed.expose())?;
        slotmove::store_tombstone(net).await?;
        slotmove::tombstone(net, slot, Some(&signer), "emergency log").await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "tombstoning an old emergency access log");
    }
}

/// Re-publishes the policy under the current root key generation's keys if it is
/// still under an older one (after [`crate::remove_device`]: the removed device,
/// which lacks the new generation, can neither find nor open the new policy blob).
/// Returns whether it did. The holder's ticket stays valid: its grant slot was
/// re-sealed by the device removal and its log slot does not change.
pub(crate) async fn rekey(vault: &Vault) -> Result<bool> {
    match load_policy(vault).await? {
        Some(found) if !found.current => {
            save_policy(vault, &found.policy, Some(&found)).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// What vault removal must reach of the emergency policy: every policy slot (of every
/// root key generation this device holds) and the access log slot, with their
/// signers, and the policy blobs the patient's devices pinned. The log entries are
/// pinned by the holder and left to it.
pub(crate) async fn removal_targets(
    net: &Network,
    generations: Vec<PolicyKeys>,
) -> Result<(
    Vec<(String, Id, invariant_spec::slots::SlotSigner)>,
    Vec<Id>,
)> {
    let mut slots = Vec::new();
    let mut blocks = Vec::new();
    if let Some(found) = load_policy_with(net, generations.clone()).await? {
        let (signer, slot) = slotmove::slot_of(found.policy.log_seed.expose())?;
        slots.push(("emergency access log".to_string(), slot, signer));
    }
    for keys in generations {
        let (signer, slot) = policy_slot(&keys)?;
        let held = slotmove::held(net, slot, "emergency policy").await?;
        if held.is_empty() {
            continue;
        }
        blocks.extend(held);
        slots.push(("emergency policy".to_string(), slot, signer));
    }
    Ok((slots, blocks))
}

/// Whether the emergency policy blob `blob` opens with the generation-0 keys of
/// `keystore` (what any device that ever held the keystore has). For tests and
/// diagnostics: after a device removal the policy is re-keyed under a later
/// generation, and this is false for the new policy blob.
pub fn opens_policy(keystore: &Keystore, blob: &[u8]) -> bool {
    decode_policy(&PolicyKeys::of_keystore_root(keystore.root_key()), blob).is_ok()
}

/// Where the current policy is: its slot and the policy blob's address (`None`
/// without a policy). For tests and diagnostics (the slot changes with the root key
/// generation).
pub async fn policy_location(vault: &Vault, keystore: &Keystore) -> Result<Option<(Id, Id)>> {
    check_keystore(vault, keystore)?;
    match load_policy(vault).await? {
        Some(found) => Ok(Some((policy_slot(&found.keys)?.1, found.address))),
        None => Ok(None),
    }
}

impl Policy {
    fn info(&self) -> PolicyInfo {
        PolicyInfo {
            holder: self.holder_name.clone(),
            holder_signing_key: hex::encode(self.holder_signing),
            grant: self.grant.clone(),
            scopes: self.scopes.clone(),
            created_ms: self.created_ms,
            acknowledged: self.acknowledged,
        }
    }
}

/// Sets the emergency policy: grants `scopes` ([`DEFAULT_SCOPES`] when empty) to the
/// holder with purpose `ETREAT`, creates its access log, stores the policy and returns
/// the ticket for the holder. An existing policy is replaced (its grant revoked, which
/// rotates the keys of its scopes).
pub async fn set_policy(
    vault: &Vault,
    keystore: &Keystore,
    holder: VerifiedCard,
    scopes: Vec<Scope>,
) -> Result<EmergencyTicket> {
    let scopes = if scopes.is_empty() {
        DEFAULT_SCOPES.to_vec()
    } else {
        scopes
    };
    check_keystore(vault, keystore)?;
    let previous = load_policy(vault).await?;
    if let Some(old) = &previous {
        match crate::revoke(vault, &old.policy.grant, false).await {
            Ok(_) | Err(EhiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let (info, grant_ticket) = crate::grant(
        vault,
        GrantRequest {
            app: holder.clone(),
            scopes: scopes.clone(),
            access: Access::Read,
            duration_ms: LIFETIME_MS,
            purpose: PURPOSE.into(),
        },
    )
    .await?;
    let log_seed = SecretKey::random()?;
    let log_key = SecretKey::random()?;
    let (_, log_slot) = slotmove::slot_of(log_seed.expose())?;
    let policy = Policy {
        format: POLICY_FORMAT,
        grant: info.id.clone(),
        holder_name: holder.name.clone(),
        holder_signing: holder.signing_key,
        holder_hpke: holder.hpke_key,
        scopes: info.scopes.clone(),
        created_ms: now_ms(),
        log_seed: log_seed.clone(),
        log_key: log_key.clone(),
        acknowledged: 0,
    };
    save_policy(vault, &policy, previous.as_ref()).await?;
    if let Some(old) = &previous {
        close_log(vault.network(), &old.policy).await;
    }
    let part = Zeroizing::new(ehi_vault::format::encode(
        &HolderPart {
            format: 1,
            log_seed,
            log_key,
        },
        "emergency ticket",
    )?);
    let sealed = hpke_seal(
        &holder.hpke_key,
        HPKE_INFO,
        grant_ticket.grant_slot.as_bytes(),
        &part,
    )?;
    vault
        .audit(
            AuditRecord::new(
                AuditAction::Grant,
                format!(
                    "emergency policy: {} may read {} without the patient (break-glass)",
                    holder.name,
                    scopes
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            )
            .with_entities(vec![format!("grant/{}", info.id)]),
        )
        .await?;
    Ok(EmergencyTicket {
        format: TICKET_FORMAT.into(),
        version: TICKET_VERSION,
        holder: holder.name,
        grant: grant_ticket,
        log_slot,
        sealed_encapped: hex::encode(&sealed.encapped),
        sealed: hex::encode(&sealed.ciphertext),
    })
}

/// The current policy, if any.
pub async fn policy(vault: &Vault, keystore: &Keystore) -> Result<Option<PolicyInfo>> {
    check_keystore(vault, keystore)?;
    Ok(load_policy(vault).await?.map(|f| f.policy.info()))
}

/// Removes the policy: revokes its grant (rotating those scopes' keys) and points the
/// policy slot at the tombstone. Returns whether there was one.
pub async fn clear_policy(vault: &Vault, keystore: &Keystore) -> Result<bool> {
    check_keystore(vault, keystore)?;
    let Some(found) = load_policy(vault).await? else {
        return Ok(false);
    };
    match crate::revoke(vault, &found.policy.grant, false).await {
        Ok(_) | Err(EhiError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let net = vault.network();
    let tombstone = slotmove::store_tombstone(net).await?;
    let (signer, slot) = policy_slot(&found.keys)?;
    slotmove::point(net, &signer, slot, tombstone, "emergency policy").await?;
    net.unpin_quietly(&[found.address]).await;
    close_log(net, &found.policy).await;
    Ok(true)
}

/// Reads the whole access log behind `log_slot` (oldest first).
async fn read_log(
    net: &Network,
    log_slot: Id,
    log_key: &SecretKey,
) -> Result<Vec<(Id, AuditEntry)>> {
    let mut out = Vec::new();
    let mut next = slotmove::read(net, log_slot, "emergency log").await?;
    while let Some(address) = next {
        if out.len() > 1_000_000 {
            return Err(EhiError::corrupt("the emergency log", "it does not end"));
        }
        let blob = net.get(&address, "an emergency log entry").await?;
        let bytes = open_inline(log_key, LOG_CONTEXT, &blob, "an emergency log entry")?;
        let entry = audit::decode_entry(&bytes)?;
        next = entry.prev_address.map(Id::from_bytes);
        out.push((address, entry));
    }
    out.reverse();
    Ok(out)
}

fn uses_of(policy: &Policy, entries: &[(Id, AuditEntry)]) -> Result<Vec<EmergencyUse>> {
    let list: Vec<AuditEntry> = entries.iter().map(|(_, e)| e.clone()).collect();
    audit::verify_chain(&list, &[policy.holder_signing]).map_err(EhiError::AuditBroken)?;
    let mut out = Vec::new();
    for entry in list {
        let event = entry.event()?;
        if !audit::is_emergency(&event) {
            return Err(EhiError::corrupt(
                "the emergency log",
                format!("entry {} is not flagged as an emergency access", entry.seq),
            ));
        }
        out.push(EmergencyUse {
            seq: entry.seq,
            recorded: entry.recorded().unwrap_or_default(),
            who: policy.holder_name.clone(),
            reason: event["outcomeDesc"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            event,
        });
    }
    Ok(out)
}

/// Every use of the emergency access logged by the holder, oldest first, verified
/// against the holder's key (empty without a policy).
pub async fn uses(vault: &Vault, keystore: &Keystore) -> Result<Vec<EmergencyUse>> {
    check_keystore(vault, keystore)?;
    let Some(Found { policy, .. }) = load_policy(vault).await? else {
        return Ok(Vec::new());
    };
    let (_, log_slot) = slotmove::slot_of(policy.log_seed.expose())?;
    let entries = read_log(vault.network(), log_slot, &policy.log_key).await?;
    uses_of(&policy, &entries)
}

/// The uses not yet acknowledged (what `ehi status` shows).
pub async fn pending(vault: &Vault, keystore: &Keystore) -> Result<Vec<EmergencyUse>> {
    check_keystore(vault, keystore)?;
    let acknowledged = match load_policy(vault).await? {
        Some(f) => f.policy.acknowledged,
        None => return Ok(Vec::new()),
    };
    Ok(uses(vault, keystore)
        .await?
        .into_iter()
        .filter(|u| u.seq >= acknowledged)
        .collect())
}

/// Acknowledges every pending use: each is copied into the vault's audit log (action
/// `emergency`, purpose `ETREAT`, label `BTG`, written by the patient's key) and the
/// policy records them as seen. Returns them.
pub async fn acknowledge(vault: &Vault, keystore: &Keystore) -> Result<Vec<EmergencyUse>> {
    check_keystore(vault, keystore)?;
    let Some(found) = load_policy(vault).await? else {
        return Ok(Vec::new());
    };
    let mut policy = found.policy.clone();
    let pending = pending(vault, keystore).await?;
    for u in &pending {
        let mut record = AuditRecord::new(
            AuditAction::Emergency,
            format!(
                "emergency access on {} by {} (logged by the holder, entry {}): {}",
                u.recorded, u.who, u.seq, u.reason
            ),
        )
        .with_entities(vec![
            format!("grant/{}", policy.grant),
            format!("emergency-log/{}", u.seq),
        ]);
        record.purpose = Some(PURPOSE.into());
        vault.audit(record).await?;
    }
    if let Some(last) = pending.last() {
        policy.acknowledged = last.seq + 1;
        save_policy(vault, &policy, Some(&found)).await?;
    }
    Ok(pending)
}

/// The holder's side of break-glass access.
#[derive(Debug)]
pub struct EmergencyAccess;

impl EmergencyAccess {
    /// Uses the emergency access: appends a signed entry (purpose `ETREAT`, label
    /// `BTG`, the holder's `reason`) to the access log the patient reads, then opens the
    /// grant. Needs no live patient. Returns the session and the logged use.
    pub async fn open(
        net: Network,
        holder: &AppKeystore,
        ticket: &EmergencyTicket,
        reason: &str,
    ) -> Result<(AppSession, EmergencyUse)> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(EhiError::InvalidArgument(
                "give the reason for the emergency access".into(),
            ));
        }
        let unhex = |text: &str, what: &str| {
            hex::decode(text)
                .map_err(|e| EhiError::InvalidArgument(format!("emergency ticket {what}: {e}")))
        };
        let sealed = HpkeSealed {
            encapped: unhex(&ticket.sealed_encapped, "sealed_encapped")?,
            ciphertext: unhex(&ticket.sealed, "sealed")?,
        };
        let part = holder
            .hpke_open(&sealed, HPKE_INFO, ticket.grant.grant_slot.as_bytes())
            .map_err(|_| {
                EhiError::InvalidArgument(
                    "this emergency ticket was not sealed to this holder's key".into(),
                )
            })?;
        let part: HolderPart = postcard::from_bytes(&part)
            .map_err(|e| EhiError::corrupt("the emergency ticket", format!("{e}")))?;
        let (signer, log_slot) = slotmove::slot_of(part.log_seed.expose())?;
        if log_slot != ticket.log_slot {
            return Err(EhiError::corrupt(
                "the emergency ticket",
                "the log slot does not match its key",
            ));
        }
        let signing = holder.signing_key();
        let writer = signing.verifying_key().to_bytes();
        let mut logged = None;
        for _ in 0..8 {
            let current = slotmove::read(&net, log_slot, "emergency log").await?;
            if current == Some(tombstone_address()) {
                // Say why the grant refuses (revoked with the policy) if it does.
                AppSession::open(net.clone(), holder, &ticket.grant).await?;
                return Err(EhiError::NotGranted(
                    "this emergency policy was withdrawn (replaced, cleared, or the vault \
                     removed): its access log is closed"
                        .into(),
                ));
            }
            let prev = match current {
                Some(address) => {
                    let blob = net.get(&address, "an emergency log entry").await?;
                    let bytes =
                        open_inline(&part.log_key, LOG_CONTEXT, &blob, "an emergency log entry")?;
                    Some((address, audit::decode_entry(&bytes)?))
                }
                None => None,
            };
            let mut record = AuditRecord::new(AuditAction::Emergency, reason.to_string())
                .with_entities(vec![format!("grant/{}", ticket.grant.grant)]);
            record.purpose = Some(PURPOSE.into());
            let now = now_ms();
            let event =
                record.to_fhir(&writer, &format!("emergency holder {}", holder.name()), now);
            let entry = AuditEntry::sign(
                &signing,
                prev.as_ref().map(|(a, e)| (e, *a.as_bytes())),
                &event,
            )?;
            let bytes = Zeroizing::new(ehi_vault::format::encode(&entry, "emergency log entry")?);
            let address = store_sealed(&net, &part.log_key, LOG_CONTEXT, &bytes).await?;
            let moved = match current {
                None => net
                    .slots()
                    .register(&signer.register_request(log_slot, address))
                    .await
                    .map_err(|e| EhiError::network("registering the emergency log slot", e))?,
                Some(from) => {
                    slotmove::swap(&net, &signer, log_slot, from, address, "emergency log").await?
                }
            };
            if moved {
                logged = Some(EmergencyUse {
                    seq: entry.seq,
                    recorded: instant(now),
                    who: holder.name().to_string(),
                    reason: reason.to_string(),
                    event,
                });
                break;
            }
        }
        let logged = logged.ok_or(EhiError::Contention { attempts: 8 })?;
        let session = AppSession::open(net, holder, &ticket.grant).await?;
        Ok((session, logged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn policy(holder: &SigningKey) -> Policy {
        Policy {
            format: POLICY_FORMAT,
            grant: "00".into(),
            holder_name: "ER".into(),
            holder_signing: holder.verifying_key().to_bytes(),
            holder_hpke: [0; 32],
            scopes: DEFAULT_SCOPES.to_vec(),
            created_ms: 0,
            log_seed: SecretKey::from_bytes([1; 32]),
            log_key: SecretKey::from_bytes([2; 32]),
            acknowledged: 0,
        }
    }

    fn entry(key: &SigningKey, prev: Option<&AuditEntry>, action: AuditAction) -> AuditEntry {
        let mut record = AuditRecord::new(action, "reason");
        record.purpose = Some(PURPOSE.into());
        let event = record.to_fhir(&key.verifying_key().to_bytes(), "holder", 1_000);
        AuditEntry::sign(key, prev.map(|p| (p, [9; 32])), &event).expect("sign")
    }

    #[test]
    fn the_log_must_be_the_holders_and_flagged() {
        let holder = SigningKey::from_bytes(&[3; 32]);
        let intruder = SigningKey::from_bytes(&[4; 32]);
        let p = policy(&holder);
        let id = Id::of_content(b"x");

        let first = entry(&holder, None, AuditAction::Emergency);
        let second = entry(&holder, Some(&first), AuditAction::Emergency);
        let uses = uses_of(&p, &[(id, first.clone()), (id, second)]).expect("valid log");
        assert_eq!(uses.len(), 2);
        assert!(uses[1].notice().contains("by ER"));

        // An entry signed by another key is refused, naming it.
        let forged = entry(&intruder, Some(&first), AuditAction::Emergency);
        let err = uses_of(&p, &[(id, first.clone()), (id, forged)]).expect_err("forged");
        assert!(err.to_string().contains("entry 1"), "{err}");
        // An entry of the holder that is not flagged as an emergency is refused.
        let plain = entry(&holder, Some(&first), AuditAction::Read);
        let err = uses_of(&p, &[(id, first.clone()), (id, plain)]).expect_err("unflagged");
        assert!(matches!(err, EhiError::Corrupt { .. }), "{err}");
        // A dropped entry breaks the chain.
        let second = entry(&holder, Some(&first), AuditAction::Emergency);
        assert!(uses_of(&p, &[(id, second)]).is_err());
    }
}
