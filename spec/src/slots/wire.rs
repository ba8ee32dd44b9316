//! The slots protocol's wire forms: the request and answer bodies, the states a slot
//! goes through, and the exact bytes each signature scheme signs, with the signature
//! text encoding (lowercase hex out, hex or base64 in).

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Id;

/// The `previous` of a freshly registered slot's first state.
pub const ROOT: &str = "root";

/// Domain separator at the start of every ed25519 update message (24 ASCII bytes and a
/// NUL). The `v1` names the message layout; a later layout gets a new separator.
pub const ED25519_DOMAIN: &[u8; 25] = b"invariant-slot-update-v1\0";

/// Length of an [`ed25519_message`]: domain, slot id, previous tag and value, address.
pub const ED25519_MESSAGE_LEN: usize = ED25519_DOMAIN.len() + 32 + 1 + 32 + 32;

/// Longest signature text accepted (hex of a 16384-bit RSA signature).
pub const MAX_SIGNATURE_TEXT: usize = 4096;

/// What a state replaced: `"root"` for the registration, else the previous address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Previous {
    /// The slot's first state (written as `"root"`).
    Root,
    /// The address the slot held before.
    Address(Id),
}

impl Previous {
    /// The address, unless this is the root.
    pub fn address(&self) -> Option<Id> {
        match self {
            Previous::Root => None,
            Previous::Address(id) => Some(*id),
        }
    }
}

impl From<Id> for Previous {
    fn from(id: Id) -> Previous {
        Previous::Address(id)
    }
}

impl fmt::Display for Previous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Previous::Root => f.write_str(ROOT),
            Previous::Address(id) => id.fmt(f),
        }
    }
}

impl Serialize for Previous {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Previous {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Previous, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Previous;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"root\" or 64 hex characters")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Previous, E> {
                if v == ROOT {
                    Ok(Previous::Root)
                } else {
                    Id::parse(v).map(Previous::Address).map_err(E::custom)
                }
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// How updates of a slot are authorised (`signature` in [`RegisterRequest`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
#[non_exhaustive]
pub enum SignatureConfig {
    /// `{"kind":"none"}`: no signature; knowing the current address is enough.
    #[default]
    #[serde(rename = "none")]
    None,
    /// `{"kind":"sha256:rsa","key":PEM}`: PKCS#1 v1.5 / SHA-256 over [`rsa_message`].
    /// `key` is an SPKI (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`) PEM.
    #[serde(rename = "sha256:rsa")]
    Sha256Rsa {
        /// The PEM public key.
        key: String,
    },
    /// `{"kind":"ed25519"}`: the slot id is the ed25519 public key; signatures cover
    /// [`ed25519_message`].
    #[serde(rename = "ed25519")]
    Ed25519,
}

/// The proof scheme of a slot. Only `none` exists; it is written `"none"` and read from
/// `"none"` or `{"kind":"none"}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofConfig {
    /// No proof is required.
    #[default]
    None,
}

impl Serialize for ProofConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ProofConfig::None => serializer.serialize_str("none"),
        }
    }
}

impl<'de> Deserialize<'de> for ProofConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ProofConfig, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let kind = match &value {
            serde_json::Value::String(s) => Some(s.as_str()),
            serde_json::Value::Object(map) => map.get("kind").and_then(|k| k.as_str()),
            _ => None,
        };
        match kind {
            Some("none") => Ok(ProofConfig::None),
            _ => Err(serde::de::Error::custom(format!(
                "unsupported proof {value}: only \"none\" is supported"
            ))),
        }
    }
}

/// Body of `PUT /slots/register`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The new slot's id (for `ed25519`, the public key).
    pub id: Id,
    /// Its first address.
    pub address: Id,
    /// How updates are authorised; absent means `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureConfig>,
    /// Proof scheme; absent means `none` (the only one supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<ProofConfig>,
    /// For `ed25519` registrations only: the key's signature (hex or base64) of
    /// [`ed25519_message`] with previous `"root"` and `address` — proof that the
    /// registrant holds the slot's key. A claimed registration replaces an unsigned or
    /// `sha256:rsa` slot registered under the same id; absent, registration works as
    /// without it. Build it with [`SlotSigner::claim`](super::SlotSigner::claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

impl RegisterRequest {
    /// A registration of `id` at `address` with no signature.
    pub fn unsigned(id: Id, address: Id) -> RegisterRequest {
        RegisterRequest {
            id,
            address,
            signature: None,
            proof: None,
            claim: None,
        }
    }
}

/// One state of a slot: the answer of `GET /slots/:id` and each line of history/watch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// The address the slot holds.
    pub address: Id,
    /// The address it replaced, or `"root"` for the registration.
    pub previous: Previous,
    /// When the server accepted this state, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// The signature that authorised this state (lowercase hex), for signed slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// A proof, for slots that use one (none do in this implementation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// Body of `PUT /slots/:id`: compare-and-swap from `previous` to `address`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// The new address.
    pub address: Id,
    /// The address the caller believes the slot holds now.
    pub previous: Previous,
    /// Signature (hex or base64) for signed slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Proof (ignored: no proof scheme is supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

impl UpdateRequest {
    /// An unsigned update from `previous` to `address`.
    pub fn unsigned(previous: Id, address: Id) -> UpdateRequest {
        UpdateRequest {
            address,
            previous: Previous::Address(previous),
            signature: None,
            proof: None,
        }
    }
}

/// Answer of `GET /slots/config/:id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotConfig {
    /// How updates are authorised.
    #[serde(default)]
    pub signature: SignatureConfig,
    /// The proof scheme (always `"none"`).
    #[serde(default)]
    pub proof: ProofConfig,
}

// Signed messages and signature encoding.

/// The bytes a `sha256:rsa` signature covers: UTF-8 of `address + "0000" + previous`,
/// both as lowercase hex, with a `"root"` previous written as the empty string.
pub fn rsa_message(address: &Id, previous: &Previous) -> Vec<u8> {
    let previous = match previous {
        Previous::Root => String::new(),
        Previous::Address(id) => id.to_string(),
    };
    format!("{address}0000{previous}").into_bytes()
}

/// The bytes an `ed25519` signature covers ([`ED25519_MESSAGE_LEN`] bytes):
///
/// ```text
/// "invariant-slot-update-v1" 0x00   25 bytes, ED25519_DOMAIN
/// slot id                           32 bytes (the public key)
/// previous tag                       1 byte: 0x00 root, 0x01 address
/// previous                          32 bytes: the address, or 32 zero bytes for root
/// address                           32 bytes: the new address
/// ```
pub fn ed25519_message(slot: &Id, previous: &Previous, address: &Id) -> [u8; ED25519_MESSAGE_LEN] {
    let mut out = [0u8; ED25519_MESSAGE_LEN];
    let (domain, rest) = out.split_at_mut(ED25519_DOMAIN.len());
    domain.copy_from_slice(ED25519_DOMAIN);
    let (slot_part, rest) = rest.split_at_mut(32);
    slot_part.copy_from_slice(slot.as_bytes());
    let (tag, rest) = rest.split_at_mut(1);
    let (previous_part, address_part) = rest.split_at_mut(32);
    if let Previous::Address(id) = previous {
        tag[0] = 1;
        previous_part.copy_from_slice(id.as_bytes());
    }
    address_part.copy_from_slice(address.as_bytes());
    out
}

/// Signature bytes as they are emitted: lowercase hex.
pub fn encode_signature(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Reads a signature written as hex (either case) or base64 (standard or url-safe,
/// padded or not). `None` when it is neither.
pub fn decode_signature(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_SIGNATURE_TEXT {
        return None;
    }
    if let Ok(bytes) = hex::decode(text) {
        return Some(bytes);
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}
