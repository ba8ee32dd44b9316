//! Grants: what a patient gives an app, how it is sealed to the app, and how it maps to
//! SMART App Launch v2 scopes.
//!
//! ## What a grant is
//! A grant names an app (its [`crate::app::AppCard`]), a set of [`Scope`]s, an
//! [`Access`] (read, or contribute), an expiry and a purpose of use (a code of the HL7
//! v3 `PurposeOfUse` value set, [`PURPOSES`]). The patient's device
//! (`ehi_share::grant`):
//! 1. creates a **per-grant slot** (a fresh ed25519 key whose seed stays in the vault
//!    root: the patient owns the slot, the app only reads it);
//! 2. seals a [`GrantPayload`] to the app's HPKE key: for each granted scope its slot
//!    id and the key of **every epoch** of the scope (a grantee reads the scope's whole
//!    history, old epochs included, unless those blobs were re-encrypted), plus the
//!    access, purpose and expiry — signed inside the ciphertext by the patient's
//!    ed25519 key;
//! 3. stores the sealed grant blob, records the grant in the vault root and points the
//!    grant slot at the blob.
//!
//! The patient hands the app a [`GrantTicket`] (public JSON: vault slot, slots server,
//! grant slot, grant id). The app opens the grant with its own keys and follows the
//! scope slots to the scope manifests (`ehi_share::session::AppSession`): **no server
//! checks anything; enforcement is cryptographic**: the app holds no key of any other
//! scope, nor of the root.
//!
//! ## Sealed grant blob (`EHG`, version 1)
//! ```text
//! "EHG" ‖ 1 ‖ HPKE encapsulated key (32) ‖ HPKE ciphertext (with tag)
//! ```
//! HPKE: RFC 9180 base mode, `DHKEM(X25519, HKDF-SHA256)`, HKDF-SHA256,
//! ChaCha20-Poly1305; `info = "invariant ehi-layer v1 grant"`, `aad` = grant slot id.
//! The plaintext is `length (u32 LE) ‖ postcard(SignedGrant) ‖ zeros`, padded to a power
//! of two of at least 2 KiB, so servers learn neither the number of scopes nor of
//! epochs. `SignedGrant` = the postcard bytes of the [`GrantPayload`] (format 1) and an
//! ed25519 signature by the patient over `"ehi-grant v1" ‖ grant slot ‖ app HPKE key ‖
//! payload`. The signature is inside the ciphertext: servers cannot link a grant slot
//! to the vault slot by verifying it.
//!
//! ## Expiry
//! The app library refuses an expired grant ([`crate::EhiError::GrantExpired`]) — a
//! courtesy that an app's own code could skip: the real end of an expired grant is the
//! rotation of its scopes' keys, done at the patient's next write
//! ([`crate::Vault::import`] calls [`crate::Vault::expire_grants`] first).
//!
//! ## Revocation, and what it cannot do
//! `ehi_share::revoke` moves every scope of the grant to a new key epoch, re-seals
//! the manifests under it, re-seals every remaining grant that covers one of those
//! scopes (with the new key), points the revoked grant's slot at the public tombstone,
//! and (`reencrypt`) re-encrypts every stored version of those scopes under the new key
//! and unpins the old blobs. From then on the revoked app cannot open the scope
//! manifests, so it cannot find or decrypt anything written afterwards.
//! **Revocation cannot take back what the app already read**: resources it decrypted,
//! keys it copied while the grant was live (old epoch keys open old blobs until the
//! distributor collects them: after its grace period, at its next sweep), and anything
//! it shared further.
//!
//! ## SMART App Launch v2
//! A grant corresponds to the SMART v2 scopes [`smart_scopes`] returns: for each
//! granted scope, one scope per R4 resource type that scope holds by default (the
//! table in [`crate::scope`], applied to every type of
//! [`ehi_search::resource_types`]) — `patient/<Type>.rs` for read access and
//! `patient/<Type>.crs` for contribute (create plus read/search; the layer never lets
//! an app update or delete the patient's resources). `clinical`, the catch-all, so
//! lists every type no other scope names (Encounter, Observation, … and the rest).
//! `sensitive` has no type of its own: it holds labelled resources of any type, which
//! SMART v2 scopes cannot name, so it maps to `patient/*.rs` (or `.crs`). A type scope
//! says which types an app may ask for, not which resources it sees: `ehi serve`
//! (`ehi_serve`) also confines a grant's tokens to the resources stored in the
//! grant's scopes, so `patient/*.rs` of a `sensitive` grant shows the sensitive
//! resources only, and a `clinical` grant never shows a Condition kept in `sensitive`.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use invariant_spec::Id;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{EhiError, Result};
use crate::format::{EpochKey, GrantRecord};
use crate::keystore::{HpkeSealed, hpke_seal};
use crate::scope::Scope;
use crate::time::instant;

/// The HPKE `info` of a sealed grant.
pub const GRANT_INFO: &[u8] = b"invariant ehi-layer v1 grant";
/// Magic of a sealed grant blob.
pub const GRANT_MAGIC: &[u8; 3] = b"EHG";
/// Sealed grant blob version.
pub const GRANT_BLOB_VERSION: u8 = 1;
/// Grant payload format.
pub const PAYLOAD_FORMAT: u32 = 1;
/// The `format` of a grant ticket.
pub const TICKET_FORMAT: &str = "ehi-grant-ticket";
/// Grant ticket version.
pub const TICKET_VERSION: u32 = 1;
/// Smallest padded plaintext of a sealed grant.
const MIN_PADDED: usize = 2048;
/// Largest sealed grant accepted (1 MiB, a storage blob).
const MAX_SEALED: usize = 1 << 20;

pub use crate::purpose::{PURPOSE_SYSTEM, PURPOSES, check_purpose};

/// What an app may do with the granted scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Read and search.
    Read,
    /// Read, search, and propose new resources (reviewed by the patient).
    Contribute,
}

impl std::str::FromStr for Access {
    type Err = EhiError;
    fn from_str(s: &str) -> Result<Access> {
        match s.to_ascii_lowercase().as_str() {
            "read" => Ok(Access::Read),
            "contribute" => Ok(Access::Contribute),
            _ => Err(EhiError::InvalidArgument(format!(
                "access {s:?}: use read or contribute"
            ))),
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Contribute => "contribute",
        })
    }
}

/// Parses a duration such as `30d`, `12h`, `90m`, `45s` or `2w` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64> {
    let text = text.trim();
    let bad = || EhiError::InvalidArgument(format!("duration {text:?}: use e.g. 30d, 12h, 2w"));
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    if !text.is_char_boundary(split) {
        return Err(bad());
    }
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms == 0 || ms > 10 * 366 * 86_400_000 {
        return Err(EhiError::InvalidArgument(format!(
            "duration {text:?}: must be positive and at most 10 years"
        )));
    }
    Ok(ms)
}

/// What the patient asks for in a grant.
#[derive(Clone, Debug)]
pub struct GrantRequest {
    /// The app (a verified card).
    pub app: crate::app::VerifiedCard,
    /// Scopes to grant (at least one).
    pub scopes: Vec<Scope>,
    /// Read or contribute.
    pub access: Access,
    /// How long the grant lasts, ms.
    pub duration_ms: u64,
    /// A [`PURPOSES`] code.
    pub purpose: String,
}

/// A grant as listed to the patient (and to a server facade): no key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantInfo {
    /// Grant id (32 hex digits).
    pub id: String,
    /// The app's name.
    pub app_name: String,
    /// The app's ed25519 key, hex.
    pub app_signing_key: String,
    /// Scopes granted.
    pub scopes: Vec<Scope>,
    /// Read or contribute.
    pub access: Access,
    /// Purpose of use code.
    pub purpose: String,
    /// Granted at, ms since the Unix epoch.
    pub created_ms: u64,
    /// Expires at, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Whether it has expired (not yet rotated away).
    pub expired: bool,
    /// The grant slot.
    pub slot: Id,
    /// Last use by the app: when the newest audit report of the app reached the slots
    /// server, as merged by `ehi_share::merge_app_audit` (`None` before any).
    pub last_use_ms: Option<u64>,
    /// The SMART App Launch v2 scopes the grant corresponds to.
    pub smart_scopes: Vec<String>,
}

impl GrantInfo {
    pub fn of(record: &GrantRecord, now: u64) -> GrantInfo {
        let access = if record.contribute {
            Access::Contribute
        } else {
            Access::Read
        };
        GrantInfo {
            id: hex::encode(record.id),
            app_name: record.app_name.clone(),
            app_signing_key: hex::encode(record.app_signing),
            scopes: record.scopes.clone(),
            access,
            purpose: record.purpose.clone(),
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
            expired: record.expires_ms <= now,
            slot: Id::from_bytes(record.slot_id),
            last_use_ms: None,
            smart_scopes: smart_scopes(&record.scopes, access),
        }
    }

    /// The ticket to hand to the app.
    pub fn ticket(&self, vault: Id, slots_server: Id) -> GrantTicket {
        GrantTicket {
            format: TICKET_FORMAT.into(),
            version: TICKET_VERSION,
            grant: self.id.clone(),
            vault,
            slots_server,
            grant_slot: self.slot,
        }
    }
}

/// What the patient hands to the app so it can find its grant (public: it only says
/// where to look; the grant itself is sealed to the app's key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTicket {
    /// [`TICKET_FORMAT`].
    pub format: String,
    /// [`TICKET_VERSION`].
    pub version: u32,
    /// Grant id (hex).
    pub grant: String,
    /// The patient's vault slot (= the patient's ed25519 public key, which signed the
    /// grant).
    pub vault: Id,
    /// The slots server holding the vault's slots.
    pub slots_server: Id,
    /// The grant slot.
    pub grant_slot: Id,
}

impl GrantTicket {
    /// Parses and checks a ticket.
    pub fn parse(json: &[u8]) -> Result<GrantTicket> {
        let ticket: GrantTicket = serde_json::from_slice(json)
            .map_err(|e| EhiError::InvalidArgument(format!("not a grant ticket: {e}")))?;
        if ticket.format != TICKET_FORMAT || ticket.version != TICKET_VERSION {
            return Err(EhiError::InvalidArgument(format!(
                "grant ticket format {:?} version {} (this build reads {TICKET_FORMAT:?} {TICKET_VERSION})",
                ticket.format, ticket.version
            )));
        }
        Ok(ticket)
    }
}

/// The SMART App Launch v2 scopes of a grant (see the module docs): for every scope,
/// one `patient/<Type>.<perms>` per R4 resource type ([`ehi_search::resource_types`])
/// whose default scope it is — the catch-all `clinical` included — and
/// `patient/*.<perms>` for `sensitive`.
pub fn smart_scopes(scopes: &[Scope], access: Access) -> Vec<String> {
    let suffix = match access {
        Access::Read => "rs",
        Access::Contribute => "crs",
    };
    let mut out = Vec::new();
    for scope in scopes {
        if *scope == Scope::Sensitive {
            out.push(format!("patient/*.{suffix}"));
            continue;
        }
        for resource_type in ehi_search::resource_types() {
            if crate::scope::default_scope(resource_type) == *scope {
                out.push(format!("patient/{resource_type}.{suffix}"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// One granted scope inside a grant payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrantedScope {
    /// The scope.
    pub scope: Scope,
    /// Its slot (points at its current manifest).
    pub slot_id: [u8; 32],
    /// Its key of every epoch the grant covers.
    pub keys: Vec<EpochKey>,
}

/// What is sealed to the app (postcard, format [`PAYLOAD_FORMAT`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GrantPayload {
    /// [`PAYLOAD_FORMAT`].
    pub format: u32,
    /// The grant id.
    pub grant_id: [u8; 16],
    /// The patient's vault slot (their public key).
    pub vault_slot: [u8; 32],
    /// The scopes and their keys.
    pub scopes: Vec<GrantedScope>,
    /// Whether the app may contribute.
    pub contribute: bool,
    /// Purpose of use.
    pub purpose: String,
    /// When this payload was sealed.
    pub issued_ms: u64,
    /// Expiry, ms since the Unix epoch.
    pub expires_ms: u64,
}

impl GrantPayload {
    /// The grant id as hex.
    pub fn id(&self) -> String {
        hex::encode(self.grant_id)
    }

    /// Refuses an expired grant.
    pub fn check_expiry(&self, now: u64) -> Result<()> {
        if self.expires_ms <= now {
            return Err(EhiError::GrantExpired {
                grant: self.id(),
                expired: instant(self.expires_ms),
            });
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct SignedGrant {
    payload: Vec<u8>,
    signature: Vec<u8>,
}

fn signed_message(grant_slot: &[u8; 32], app_hpke: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + 64 + payload.len());
    m.extend_from_slice(b"ehi-grant v1");
    m.extend_from_slice(grant_slot);
    m.extend_from_slice(app_hpke);
    m.extend_from_slice(payload);
    m
}

/// Seals `payload` to the app of `record`, signed by `patient` (the bytes of a sealed
/// grant blob).
pub(crate) fn seal_grant(
    patient: &SigningKey,
    record: &GrantRecord,
    payload: &GrantPayload,
) -> Result<Vec<u8>> {
    let encoded = Zeroizing::new(crate::format::encode(payload, "grant payload")?);
    let signature = patient
        .sign(&signed_message(&record.slot_id, &record.app_hpke, &encoded))
        .to_bytes()
        .to_vec();
    let signed = Zeroizing::new(crate::format::encode(
        &SignedGrant {
            payload: encoded.to_vec(),
            signature,
        },
        "signed grant",
    )?);
    let mut padded_len = MIN_PADDED;
    while padded_len < signed.len() + 4 {
        padded_len *= 2;
    }
    let mut plaintext = Zeroizing::new(vec![0u8; padded_len]);
    let len = u32::try_from(signed.len())
        .map_err(|_| EhiError::InvalidArgument("grant too large".into()))?;
    plaintext[..4].copy_from_slice(&len.to_le_bytes());
    plaintext[4..4 + signed.len()].copy_from_slice(&signed);
    let sealed = hpke_seal(&record.app_hpke, GRANT_INFO, &record.slot_id, &plaintext)?;
    let mut out = Vec::with_capacity(4 + sealed.encapped.len() + sealed.ciphertext.len());
    out.extend_from_slice(GRANT_MAGIC);
    out.push(GRANT_BLOB_VERSION);
    out.extend_from_slice(&sealed.encapped);
    out.extend_from_slice(&sealed.ciphertext);
    if out.len() > MAX_SEALED {
        return Err(EhiError::InvalidArgument("grant too large".into()));
    }
    Ok(out)
}

/// Opens a sealed grant blob with the app's keys and checks the patient's signature.
pub fn open_grant(
    app: &crate::app::AppKeystore,
    ticket: &GrantTicket,
    blob: &[u8],
) -> Result<GrantPayload> {
    let what = format!("grant {}", ticket.grant);
    if blob.len() < 4 + 32 + 16 || &blob[..3] != GRANT_MAGIC {
        return Err(EhiError::corrupt(&what, "not a sealed grant"));
    }
    if blob[3] != GRANT_BLOB_VERSION {
        return Err(EhiError::UnsupportedFormat {
            what: "sealed grant",
            found: u32::from(blob[3]),
            supported: u32::from(GRANT_BLOB_VERSION),
        });
    }
    let sealed = HpkeSealed {
        encapped: blob[4..36].to_vec(),
        ciphertext: blob[36..].to_vec(),
    };
    let slot = *ticket.grant_slot.as_bytes();
    let plaintext = app
        .hpke_open(&sealed, GRANT_INFO, &slot)
        .map_err(|e| EhiError::corrupt(&what, format!("not sealed to this app: {e}")))?;
    let len = plaintext
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| EhiError::corrupt(&what, "too short"))? as usize;
    let signed_bytes = plaintext
        .get(4..4 + len)
        .ok_or_else(|| EhiError::corrupt(&what, "bad length"))?;
    let signed: SignedGrant = postcard::from_bytes(signed_bytes)
        .map_err(|e| EhiError::corrupt(&what, format!("does not decode: {e}")))?;
    let patient = VerifyingKey::from_bytes(ticket.vault.as_bytes())
        .map_err(|e| EhiError::corrupt(&what, format!("vault key: {e}")))?;
    let signature = <[u8; 64]>::try_from(signed.signature.as_slice())
        .map_err(|_| EhiError::corrupt(&what, "signature length"))?;
    let app_hpke = crate::app::hex32(&app.card().hpke_key)
        .ok_or_else(|| EhiError::Crypto("app HPKE key".into()))?;
    patient
        .verify(
            &signed_message(&slot, &app_hpke, &signed.payload),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| EhiError::corrupt(&what, "the patient's signature does not verify"))?;
    let payload = Zeroizing::new(signed.payload);
    let (format, _) = postcard::take_from_bytes::<u32>(&payload)
        .map_err(|e| EhiError::corrupt(&what, format!("no format number: {e}")))?;
    if format != PAYLOAD_FORMAT {
        return Err(EhiError::UnsupportedFormat {
            what: "grant payload",
            found: format,
            supported: PAYLOAD_FORMAT,
        });
    }
    let decoded: GrantPayload = postcard::from_bytes(&payload)
        .map_err(|e| EhiError::corrupt(&what, format!("payload does not decode: {e}")))?;
    if hex::encode(decoded.grant_id) != ticket.grant.to_ascii_lowercase()
        || decoded.vault_slot != *ticket.vault.as_bytes()
    {
        return Err(EhiError::corrupt(&what, "it is another grant"));
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_durations_access_smart() {
        assert_eq!(check_purpose("treat").expect("treat"), "TREAT");
        assert!(check_purpose("FUN").is_err());
        assert_eq!(parse_duration_ms("30d").expect("30d"), 30 * 86_400_000);
        assert_eq!(parse_duration_ms("2w").expect("2w"), 14 * 86_400_000);
        for bad in ["", "d", "0d", "30x", "-1d", "99999999999999w", "é"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
        assert_eq!("READ".parse::<Access>().expect("read"), Access::Read);
        assert!("write".parse::<Access>().is_err());
        let smart = smart_scopes(&[Scope::Medications], Access::Read);
        assert!(smart.contains(&"patient/MedicationRequest.rs".to_string()));
        assert!(smart.iter().all(|s| s.ends_with(".rs")));
        let smart = smart_scopes(&[Scope::Allergies], Access::Contribute);
        assert_eq!(smart, ["patient/AllergyIntolerance.crs"]);
    }
}
