//! The slots protocol (`/slots/`): mutable, optionally signed pointers to addresses.
//!
//! A slot is identified by a 32-byte [`Id`] and holds an address. Routes (see the brief
//! and `spec/slots-ed25519.md`):
//!
//! | route | body → answer |
//! |---|---|
//! | `PUT /slots/register` | [`RegisterRequest`] → `true`; 409 id taken, 403 bad claim, 400 invalid |
//! | `GET /slots/:id` | → [`SlotState`]; 404 unknown |
//! | `PUT /slots/:id` | [`UpdateRequest`] → `true`; 409 stale `previous`, 403 bad or missing signature, 404 unknown, 400 malformed |
//! | `GET /slots/config/:id` | → [`SlotConfig`] (also served as `/slots/configuration/:id`) |
//! | `GET /slots/history/:id` | → states, newest first, down to the registration |
//! | `GET /slots/watch/:id` | → the current state at once, then every accepted state |
//!
//! History and watch answers are newline-delimited JSON (`application/x-ndjson`), one
//! [`SlotState`] per line; readers here also accept JSON values written back to back
//! (the reference implementation's form).
//!
//! Updates are authorised by the slot's [`SignatureConfig`]:
//! - `none`: anyone who knows the current address may update.
//! - `sha256:rsa`: RSASSA-PKCS1-v1_5 with SHA-256 over [`rsa_message`], with the PEM
//!   public key given at registration (the reference implementation's scheme).
//! - `ed25519`: the slot id is the ed25519 public key; the signature covers
//!   [`ed25519_message`], which binds slot id, previous and new address.
//!
//! An `ed25519` registration may carry a **claim** ([`RegisterRequest::claim`]): the
//! key's signature of the registration state itself (previous `"root"`, the first
//! address). It proves the registrant holds the key, so a claimed registration
//! replaces an unsigned or `sha256:rsa` slot that someone else registered under the
//! key first (`spec/slots.md`, "Claiming an ed25519 id"). [`SlotSigner::register_request`]
//! always adds one for its own key.
//!
//! Signatures travel as lowercase hex (as the reference emits); base64 is accepted too.
//! [`SlotSigner`] signs updates so callers never build messages by hand, and
//! [`SlotVerifier`] checks them (the server uses it; a client can re-check a history).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;

use base64::Engine as _;
use bytes::Bytes;
use ed25519_dalek::Signer as _;
use futures_util::{Stream, StreamExt};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use rsa::signature::{SignatureEncoding as _, Verifier as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

use crate::http::{Endpoint, NOT_JSON, expect_success, read_json};
use crate::{ClientError, ClientResult, Id};

/// The `previous` of a freshly registered slot's first state.
pub const ROOT: &str = "root";

/// Domain separator at the start of every ed25519 update message (24 ASCII bytes and a
/// NUL). The `v1` names the message layout; a later layout gets a new separator.
pub const ED25519_DOMAIN: &[u8; 25] = b"invariant-slot-update-v1\0";

/// Length of an [`ed25519_message`]: domain, slot id, previous tag and value, address.
pub const ED25519_MESSAGE_LEN: usize = ED25519_DOMAIN.len() + 32 + 1 + 32 + 32;

/// Longest signature text accepted (hex of a 16384-bit RSA signature).
pub const MAX_SIGNATURE_TEXT: usize = 4096;

// ---------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------

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
    /// without it. Build it with [`SlotSigner::claim`].
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

// ---------------------------------------------------------------------------------------
// Signed messages and signature encoding
// ---------------------------------------------------------------------------------------

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

/// Why a signature configuration cannot be used for a slot (a registration error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureConfigError {
    /// The `sha256:rsa` key is not an RSA public key in SPKI or PKCS#1 PEM.
    #[error("the sha256:rsa key is not a usable RSA public key PEM: {0}")]
    InvalidRsaKey(String),
    /// An `ed25519` slot's id must be a valid, non-weak ed25519 public key.
    #[error("slot id {0} is not a valid ed25519 public key")]
    NotEd25519Key(Id),
}

/// Why an update's signature was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The slot requires a signature and none was given.
    #[error("this slot requires a signature")]
    Missing,
    /// The signature text is neither hex nor base64, or has the wrong length.
    #[error("the signature is not hex or base64 of the right length")]
    Encoding,
    /// The signature does not verify for this slot, previous and address.
    #[error("the signature does not verify")]
    Invalid,
    /// A registration claim was given for a slot that is not `ed25519`.
    #[error("only ed25519 registrations carry a claim")]
    ClaimUnsupported,
    /// Signing failed (an RSA key operation error).
    #[error("signing failed: {0}")]
    Signing(String),
}

fn parse_rsa_public_key(pem: &str) -> Result<rsa::RsaPublicKey, SignatureConfigError> {
    let pem = pem.trim();
    if pem.contains("BEGIN RSA PUBLIC KEY") {
        rsa::RsaPublicKey::from_pkcs1_pem(pem)
            .map_err(|e| SignatureConfigError::InvalidRsaKey(e.to_string()))
    } else {
        rsa::RsaPublicKey::from_public_key_pem(pem)
            .map_err(|e| SignatureConfigError::InvalidRsaKey(e.to_string()))
    }
}

fn ed25519_key(slot: &Id) -> Result<ed25519_dalek::VerifyingKey, SignatureConfigError> {
    match ed25519_dalek::VerifyingKey::from_bytes(slot.as_bytes()) {
        Ok(key) if !key.is_weak() => Ok(key),
        _ => Err(SignatureConfigError::NotEd25519Key(*slot)),
    }
}

/// Checks update signatures for one slot.
pub struct SlotVerifier {
    slot: Id,
    scheme: VerifyScheme,
}

enum VerifyScheme {
    None,
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl fmt::Debug for SlotVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.scheme {
            VerifyScheme::None => "none",
            VerifyScheme::Rsa(_) => "sha256:rsa",
            VerifyScheme::Ed25519(_) => "ed25519",
        };
        f.debug_struct("SlotVerifier")
            .field("slot", &self.slot)
            .field("kind", &kind)
            .finish()
    }
}

impl SlotVerifier {
    /// A verifier for slot `slot` under `config`; fails when the configuration cannot be
    /// used (an unparsable RSA key, or an ed25519 slot id that is not a public key).
    pub fn new(slot: Id, config: &SignatureConfig) -> Result<SlotVerifier, SignatureConfigError> {
        let scheme = match config {
            SignatureConfig::None => VerifyScheme::None,
            SignatureConfig::Sha256Rsa { key } => {
                VerifyScheme::Rsa(rsa::pkcs1v15::VerifyingKey::new(parse_rsa_public_key(key)?))
            }
            SignatureConfig::Ed25519 => VerifyScheme::Ed25519(ed25519_key(&slot)?),
        };
        Ok(SlotVerifier { slot, scheme })
    }

    /// Whether updates need a signature.
    pub fn requires_signature(&self) -> bool {
        !matches!(self.scheme, VerifyScheme::None)
    }

    /// Checks `signature` for the change `previous → address`. Returns the decoded
    /// signature bytes for signed slots and `None` for `none` slots (whose signature
    /// field, if any, is ignored).
    pub fn verify(
        &self,
        previous: &Previous,
        address: &Id,
        signature: Option<&str>,
    ) -> Result<Option<Vec<u8>>, SignatureError> {
        if matches!(self.scheme, VerifyScheme::None) {
            return Ok(None);
        }
        let text = signature.ok_or(SignatureError::Missing)?;
        let bytes = decode_signature(text).ok_or(SignatureError::Encoding)?;
        match &self.scheme {
            VerifyScheme::None => {}
            VerifyScheme::Rsa(key) => {
                let signature = rsa::pkcs1v15::Signature::try_from(bytes.as_slice())
                    .map_err(|_| SignatureError::Encoding)?;
                key.verify(&rsa_message(address, previous), &signature)
                    .map_err(|_| SignatureError::Invalid)?;
            }
            VerifyScheme::Ed25519(key) => {
                let signature = ed25519_dalek::Signature::from_slice(&bytes)
                    .map_err(|_| SignatureError::Encoding)?;
                key.verify_strict(&ed25519_message(&self.slot, previous, address), &signature)
                    .map_err(|_| SignatureError::Invalid)?;
            }
        }
        Ok(Some(bytes))
    }

    /// Checks a registration claim ([`RegisterRequest::claim`]): for an `ed25519` slot,
    /// the key's signature of the registration state (previous `"root"`, first address
    /// `address`). Returns the decoded signature bytes.
    pub fn verify_claim(&self, address: &Id, claim: &str) -> Result<Vec<u8>, SignatureError> {
        if !matches!(self.scheme, VerifyScheme::Ed25519(_)) {
            return Err(SignatureError::ClaimUnsupported);
        }
        self.verify(&Previous::Root, address, Some(claim))?
            .ok_or(SignatureError::Invalid)
    }
}

/// Holds a private key and signs slot updates with it.
pub struct SlotSigner {
    scheme: SignScheme,
}

enum SignScheme {
    Ed25519(ed25519_dalek::SigningKey),
    Rsa {
        key: Box<rsa::pkcs1v15::SigningKey<Sha256>>,
        public_pem: String,
    },
}

impl fmt::Debug for SlotSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scheme {
            SignScheme::Ed25519(key) => f
                .debug_struct("SlotSigner")
                .field("kind", &"ed25519")
                .field("slot", &Id::from_bytes(key.verifying_key().to_bytes()))
                .finish(),
            SignScheme::Rsa { .. } => f
                .debug_struct("SlotSigner")
                .field("kind", &"sha256:rsa")
                .finish_non_exhaustive(),
        }
    }
}

impl SlotSigner {
    /// An ed25519 signer; its slot id is the key's public half ([`SlotSigner::ed25519_slot`]).
    pub fn ed25519(key: ed25519_dalek::SigningKey) -> SlotSigner {
        SlotSigner {
            scheme: SignScheme::Ed25519(key),
        }
    }

    /// An ed25519 signer from a 32-byte secret seed.
    pub fn ed25519_from_seed(seed: &[u8; 32]) -> SlotSigner {
        SlotSigner::ed25519(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// A `sha256:rsa` signer. Fails only if the public key cannot be written as PEM.
    pub fn rsa(key: rsa::RsaPrivateKey) -> Result<SlotSigner, SignatureConfigError> {
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| SignatureConfigError::InvalidRsaKey(e.to_string()))?;
        Ok(SlotSigner {
            scheme: SignScheme::Rsa {
                key: Box::new(rsa::pkcs1v15::SigningKey::new(key)),
                public_pem,
            },
        })
    }

    /// A `sha256:rsa` signer from a private key PEM: PKCS#1 (`RSA PRIVATE KEY`) or
    /// unencrypted PKCS#8 (`PRIVATE KEY`).
    pub fn rsa_from_pem(pem: &str) -> Result<SlotSigner, SignatureConfigError> {
        let pem = pem.trim();
        let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
            rsa::RsaPrivateKey::from_pkcs1_pem(pem)
                .map_err(|e| SignatureConfigError::InvalidRsaKey(e.to_string()))?
        } else {
            rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                .map_err(|e| SignatureConfigError::InvalidRsaKey(e.to_string()))?
        };
        SlotSigner::rsa(key)
    }

    /// For ed25519: the slot id this key controls (its public key).
    pub fn ed25519_slot(&self) -> Option<Id> {
        match &self.scheme {
            SignScheme::Ed25519(key) => Some(Id::from_bytes(key.verifying_key().to_bytes())),
            SignScheme::Rsa { .. } => None,
        }
    }

    /// The `signature` to register a slot with (RSA: the public key as SPKI PEM).
    pub fn signature_config(&self) -> SignatureConfig {
        match &self.scheme {
            SignScheme::Ed25519(_) => SignatureConfig::Ed25519,
            SignScheme::Rsa { public_pem, .. } => SignatureConfig::Sha256Rsa {
                key: public_pem.clone(),
            },
        }
    }

    /// The registration of slot `id` at `address` signed by this key. For ed25519 the id
    /// must be [`SlotSigner::ed25519_slot`]; the request then carries the key's claim
    /// ([`SlotSigner::claim`]), so it succeeds even if someone registered the id as an
    /// unsigned or `sha256:rsa` slot first.
    pub fn register_request(&self, id: Id, address: Id) -> RegisterRequest {
        let claim = match self.ed25519_slot() {
            Some(slot) if slot == id => self.claim(&address),
            _ => None,
        };
        RegisterRequest {
            id,
            address,
            signature: Some(self.signature_config()),
            proof: None,
            claim,
        }
    }

    /// For ed25519: the registration claim of this key's slot at first address
    /// `address` — the signature (lowercase hex) of [`ed25519_message`] with previous
    /// `"root"`. `None` for RSA keys, which cannot claim.
    pub fn claim(&self, address: &Id) -> Option<String> {
        match &self.scheme {
            SignScheme::Ed25519(key) => {
                let slot = Id::from_bytes(key.verifying_key().to_bytes());
                let signature = key.sign(&ed25519_message(&slot, &Previous::Root, address));
                Some(encode_signature(&signature.to_bytes()))
            }
            SignScheme::Rsa { .. } => None,
        }
    }

    /// The signature (lowercase hex) of slot `slot` moving from `previous` to `address`.
    pub fn sign(
        &self,
        slot: &Id,
        previous: &Previous,
        address: &Id,
    ) -> Result<String, SignatureError> {
        match &self.scheme {
            SignScheme::Ed25519(key) => {
                let signature = key.sign(&ed25519_message(slot, previous, address));
                Ok(encode_signature(&signature.to_bytes()))
            }
            SignScheme::Rsa { key, .. } => {
                let signature = key
                    .try_sign(&rsa_message(address, previous))
                    .map_err(|e| SignatureError::Signing(e.to_string()))?;
                Ok(encode_signature(&signature.to_bytes()))
            }
        }
    }

    /// A signed [`UpdateRequest`] for slot `slot` from `previous` to `address`.
    pub fn update_request(
        &self,
        slot: &Id,
        previous: &Id,
        address: &Id,
    ) -> Result<UpdateRequest, SignatureError> {
        let previous = Previous::Address(*previous);
        Ok(UpdateRequest {
            address: *address,
            previous,
            signature: Some(self.sign(slot, &previous, address)?),
            proof: None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// A stream of slot states (history or watch).
pub type StateStream = Pin<Box<dyn Stream<Item = ClientResult<SlotState>> + Send>>;

/// How the server refused a slot request, read from a [`ClientError::Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// 409: `previous` is not the slot's current address (or, on register, the id exists).
    Conflict,
    /// 403: the signature is missing or does not verify.
    Forbidden,
    /// 404: the slot is unknown.
    NotFound,
    /// 400: the request is malformed or invalid.
    Invalid,
}

impl Rejection {
    /// The rejection `error` carries, if it is a 400/403/404/409 answer.
    pub fn of(error: &ClientError) -> Option<Rejection> {
        match error.status()? {
            409 => Some(Rejection::Conflict),
            403 => Some(Rejection::Forbidden),
            404 => Some(Rejection::NotFound),
            400 => Some(Rejection::Invalid),
            _ => None,
        }
    }
}

/// Typed client for one slots server.
#[derive(Clone, Debug)]
pub struct SlotsClient {
    endpoint: Endpoint,
}

impl SlotsClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:3002`).
    pub fn new(base_url: &str) -> ClientResult<SlotsClient> {
        Ok(SlotsClient {
            endpoint: Endpoint::new(base_url)?,
        })
    }

    /// A client sharing an existing endpoint (and its connection pool).
    pub fn from_endpoint(endpoint: Endpoint) -> SlotsClient {
        SlotsClient { endpoint }
    }

    /// The endpoint (base url and HTTP client).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The server's id.
    pub async fn id(&self) -> ClientResult<Id> {
        self.endpoint.server_id().await
    }

    /// Registers a slot. `Ok(true)` when created, `Ok(false)` when the id is already
    /// registered (409); an invalid request is a 400 [`ClientError::Status`].
    pub async fn register(&self, request: &RegisterRequest) -> ClientResult<bool> {
        let url = self.endpoint.url("/slots/register");
        let response = self
            .endpoint
            .send(&url, self.endpoint.http().put(&url).json(request))
            .await?;
        if response.status() == reqwest::StatusCode::CONFLICT {
            return Ok(false);
        }
        let response = expect_success(&url, response).await?;
        read_json::<bool>(&url, response, NOT_JSON).await
    }

    /// The current state of slot `id`, or `None` when it is unknown.
    pub async fn get(&self, id: &Id) -> ClientResult<Option<SlotState>> {
        let url = self.endpoint.url(&format!("/slots/{id}"));
        let request = self.endpoint.http().get(&url);
        self.endpoint
            .call_json_optional(&url, request, NOT_JSON)
            .await
    }

    /// Compare-and-swap: sets slot `id` to `request.address` if it holds
    /// `request.previous`. A refusal is a [`ClientError::Status`]; classify it with
    /// [`Rejection::of`] (409 stale, 403 signature, 404 unknown, 400 malformed).
    pub async fn update(&self, id: &Id, request: &UpdateRequest) -> ClientResult<()> {
        let url = self.endpoint.url(&format!("/slots/{id}"));
        let request = self.endpoint.http().put(&url).json(request);
        self.endpoint.call(&url, request).await?;
        Ok(())
    }

    /// [`SlotsClient::update`] with a request signed by `signer`.
    pub async fn update_signed(
        &self,
        id: &Id,
        signer: &SlotSigner,
        previous: &Id,
        address: &Id,
    ) -> ClientResult<()> {
        let request =
            signer
                .update_request(id, previous, address)
                .map_err(|e| ClientError::Protocol {
                    url: self.endpoint.url(&format!("/slots/{id}")),
                    reason: e.to_string(),
                })?;
        self.update(id, &request).await
    }

    /// The configuration of slot `id`, or `None` when it is unknown.
    pub async fn config(&self, id: &Id) -> ClientResult<Option<SlotConfig>> {
        let url = self.endpoint.url(&format!("/slots/config/{id}"));
        let request = self.endpoint.http().get(&url);
        self.endpoint
            .call_json_optional(&url, request, NOT_JSON)
            .await
    }

    /// The states of slot `id`, newest first down to the registration, or `None` when
    /// the slot is unknown.
    pub async fn history(&self, id: &Id) -> ClientResult<Option<StateStream>> {
        self.state_stream(&format!("/slots/history/{id}")).await
    }

    /// The whole history of slot `id` (newest first), or `None` when it is unknown.
    pub async fn history_all(&self, id: &Id) -> ClientResult<Option<Vec<SlotState>>> {
        let Some(mut stream) = self.history(id).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(state) = stream.next().await {
            out.push(state?);
        }
        Ok(Some(out))
    }

    /// The current state of slot `id`, then every state accepted after it, until the
    /// server ends the stream (shutdown) or the stream is dropped. `None` when unknown.
    pub async fn watch(&self, id: &Id) -> ClientResult<Option<StateStream>> {
        self.state_stream(&format!("/slots/watch/{id}")).await
    }

    async fn state_stream(&self, path: &str) -> ClientResult<Option<StateStream>> {
        let url = self.endpoint.url(path);
        let request = self.endpoint.http().get(&url);
        let response = self.endpoint.call_optional(&url, request).await?;
        Ok(response.map(|response| json_values(url, response)))
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Reads a response body of JSON values separated by newlines, other white space, or
/// nothing at all.
fn json_values<T: DeserializeOwned + Send + 'static>(
    url: String,
    response: reqwest::Response,
) -> Pin<Box<dyn Stream<Item = ClientResult<T>> + Send>> {
    let chunks: ChunkStream = Box::pin(response.bytes_stream());
    Box::pin(JsonValues::new(url, chunks).into_stream())
}

/// Incremental splitter of concatenated JSON values.
struct JsonValues {
    url: String,
    chunks: ChunkStream,
    buffer: Vec<u8>,
    ready: VecDeque<Vec<u8>>,
    finished: bool,
}

impl JsonValues {
    fn new(url: String, chunks: ChunkStream) -> JsonValues {
        JsonValues {
            url,
            chunks,
            buffer: Vec::new(),
            ready: VecDeque::new(),
            finished: false,
        }
    }

    fn into_stream<T: DeserializeOwned + Send + 'static>(
        self,
    ) -> impl Stream<Item = ClientResult<T>> + Send {
        futures_util::stream::unfold(self, |mut this| async move {
            let item = this.next_value::<T>().await?;
            if item.is_err() {
                this.finished = true;
                this.buffer.clear();
            }
            Some((item, this))
        })
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            url: self.url.clone(),
            reason,
        }
    }

    async fn next_value<T: DeserializeOwned>(&mut self) -> Option<ClientResult<T>> {
        loop {
            match split_values(&mut self.buffer) {
                Ok(values) => self.ready.extend(values),
                Err(e) => return Some(Err(self.protocol(format!("malformed JSON value: {e}")))),
            }
            if let Some(raw) = self.ready.pop_front() {
                return Some(
                    serde_json::from_slice(&raw)
                        .map_err(|e| self.protocol(format!("unexpected JSON value: {e}"))),
                );
            }
            if self.finished {
                if self.buffer.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
                self.buffer.clear();
                return Some(Err(self.protocol("stream ended inside a JSON value".into())));
            }
            match self.chunks.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(source)) => {
                    self.finished = true;
                    return Some(Err(ClientError::Transport {
                        url: self.url.clone(),
                        source,
                    }));
                }
                None => self.finished = true,
            }
        }
    }
}

/// Removes every complete JSON value from the front of `buffer` and returns their
/// bytes; an incomplete trailing value stays in `buffer`.
fn split_values(buffer: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, serde_json::Error> {
    let mut values = Vec::new();
    let mut consumed = 0;
    {
        let mut iter =
            serde_json::Deserializer::from_slice(buffer).into_iter::<serde::de::IgnoredAny>();
        loop {
            let start = consumed;
            match iter.next() {
                Some(Ok(_)) => {
                    consumed = iter.byte_offset();
                    values.push(buffer[start..consumed].to_vec());
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(e),
                None => {
                    consumed = buffer.len();
                    break;
                }
            }
        }
    }
    buffer.drain(..consumed);
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The published ed25519 test vector (spec/slots-ed25519.md).
    const VECTOR_SEED: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const VECTOR_SLOT: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
    /// SHA-256 of `invariant slot test vector: previous`.
    const VECTOR_PREVIOUS: &str =
        "cbac9ff9e8d2725e8b5d9c5f41f1be5dbcef5c77ea304e664c1a466a13172a93";
    /// SHA-256 of `invariant slot test vector: address`.
    const VECTOR_ADDRESS: &str = "1129d47f4dad17768f57b5c14309beb99059d4a216b1a58945e0681624b86635";
    const VECTOR_MESSAGE: &str = concat!(
        "696e76617269616e742d736c6f742d7570646174652d763100",
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
        "01",
        "cbac9ff9e8d2725e8b5d9c5f41f1be5dbcef5c77ea304e664c1a466a13172a93",
        "1129d47f4dad17768f57b5c14309beb99059d4a216b1a58945e0681624b86635",
    );
    const VECTOR_SIGNATURE: &str = concat!(
        "861217d7b032018306de074ce87c165c5451f06a848109610b8b57ade28614be",
        "43fa49842bda2cc92164c1291339b9ccd0b95dcfe16f7e33d7adaae566a2650e",
    );
    const VECTOR_ROOT_MESSAGE: &str = concat!(
        "696e76617269616e742d736c6f742d7570646174652d763100",
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
        "00",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "1129d47f4dad17768f57b5c14309beb99059d4a216b1a58945e0681624b86635",
    );
    const VECTOR_ROOT_SIGNATURE: &str = concat!(
        "984b753b5b48214d307375c0d1623f9d43cfb310a25f8eadd8579d8905127976",
        "9a6bae7098e2f3dc312057c0ac8b08bcecc2e51f61672bd312a5895dd4cf350f",
    );

    fn id(hex: &str) -> Id {
        Id::parse(hex).expect("test id")
    }

    fn seed() -> [u8; 32] {
        let bytes = hex::decode(VECTOR_SEED).expect("seed hex");
        bytes.try_into().expect("32-byte seed")
    }

    #[test]
    fn ed25519_test_vector() {
        let signer = SlotSigner::ed25519_from_seed(&seed());
        let slot = signer.ed25519_slot().expect("ed25519 slot");
        assert_eq!(slot, id(VECTOR_SLOT));
        assert_eq!(
            Id::of_content(b"invariant slot test vector: previous"),
            id(VECTOR_PREVIOUS)
        );
        assert_eq!(
            Id::of_content(b"invariant slot test vector: address"),
            id(VECTOR_ADDRESS)
        );
        let previous = Previous::Address(id(VECTOR_PREVIOUS));
        let address = id(VECTOR_ADDRESS);
        let message = ed25519_message(&slot, &previous, &address);
        assert_eq!(hex::encode(message), VECTOR_MESSAGE);
        let signature = signer.sign(&slot, &previous, &address).expect("sign");
        assert_eq!(signature, VECTOR_SIGNATURE);
        let root_message = ed25519_message(&slot, &Previous::Root, &address);
        assert_eq!(hex::encode(root_message), VECTOR_ROOT_MESSAGE);
        let root_signature = signer.sign(&slot, &Previous::Root, &address).expect("sign");
        assert_eq!(root_signature, VECTOR_ROOT_SIGNATURE);

        let verifier = SlotVerifier::new(slot, &SignatureConfig::Ed25519).expect("verifier");
        let bytes = verifier
            .verify(&previous, &address, Some(VECTOR_SIGNATURE))
            .expect("vector verifies");
        assert_eq!(bytes.map(hex::encode).as_deref(), Some(VECTOR_SIGNATURE));
    }

    #[test]
    fn claims_sign_the_registration_state_and_only_ed25519_has_them() {
        let signer = SlotSigner::ed25519_from_seed(&seed());
        let slot = signer.ed25519_slot().expect("ed25519 slot");
        let address = id(VECTOR_ADDRESS);
        // The claim is the vector's root signature: the registration state's signature.
        assert_eq!(
            signer.claim(&address).as_deref(),
            Some(VECTOR_ROOT_SIGNATURE)
        );
        let request = signer.register_request(slot, address);
        assert_eq!(request.claim.as_deref(), Some(VECTOR_ROOT_SIGNATURE));
        let json = serde_json::to_value(&request).expect("serialize");
        assert_eq!(json["claim"], VECTOR_ROOT_SIGNATURE);
        assert_eq!(json["signature"]["kind"], "ed25519");

        let verifier = SlotVerifier::new(slot, &SignatureConfig::Ed25519).expect("verifier");
        let bytes = verifier
            .verify_claim(&address, VECTOR_ROOT_SIGNATURE)
            .expect("claim verifies");
        assert_eq!(hex::encode(bytes), VECTOR_ROOT_SIGNATURE);
        // A claim is for one first address; an update signature is not a claim.
        assert!(matches!(
            verifier.verify_claim(&id(VECTOR_PREVIOUS), VECTOR_ROOT_SIGNATURE),
            Err(SignatureError::Invalid)
        ));
        assert!(matches!(
            verifier.verify_claim(&address, VECTOR_SIGNATURE),
            Err(SignatureError::Invalid)
        ));
        let stranger = SlotSigner::ed25519_from_seed(&[9; 32]);
        let foreign = stranger.claim(&address).expect("ed25519 claim");
        assert!(matches!(
            verifier.verify_claim(&address, &foreign),
            Err(SignatureError::Invalid)
        ));
        // Registering another id with this key sends no claim (it could not verify).
        let other = Id::random();
        assert_eq!(signer.register_request(other, address).claim, None);
        // Unsigned and RSA slots have no claims.
        let none = SlotVerifier::new(slot, &SignatureConfig::None).expect("none");
        assert!(matches!(
            none.verify_claim(&address, VECTOR_ROOT_SIGNATURE),
            Err(SignatureError::ClaimUnsupported)
        ));
        let rsa = SlotSigner::rsa_from_pem(TEST_RSA_PRIVATE).expect("rsa signer");
        assert_eq!(rsa.claim(&address), None);
        assert_eq!(rsa.register_request(other, address).claim, None);
        // A request without a claim serializes as before.
        let plain =
            serde_json::to_value(RegisterRequest::unsigned(other, address)).expect("serialize");
        assert!(plain.get("claim").is_none(), "{plain}");
    }

    /// A 1024-bit RSA key made for these tests only (small, so tests stay fast).
    const TEST_RSA_PRIVATE: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIICXQIBAAKBgQDmQ3UW3DfPERbaftVQO+jDsWb10QEwBYABt9KzdzocdyUTSwbr\n5jKwcLAs0X3cBe/UqyhKA1K5UIhLbafz+tEduunmdcBPM8ArPEuV5PWE64WBiBb3\nTAZjJBA0Oh1v+Fjq/OegKPbW0uOaUW6UEW1pFIvGEn1fw5jH6pdPuiZ6+QIDAQAB\nAoGAGxeuzCzHCD8LgFPSB2m1HmleIugfiqXrBMi7KtCJbtX578YxH0prhmUL5YoU\nk/HC4TPuPp8beaBnGPDjBQrq1ap2oQWSEIXnT0NfQa9l+iKVGdaaOe4yeldz304y\nXQia8fAe5WXZwvGT8uxm8NmeOW0jOtY1Dt6wYLs3dXd0/LECQQD/T1TZMTvGnanR\nSk2sV6ErTX88nfCB7osxNA5Z6S61Fp1tdRDXA3892Tv8v8AuHU4QfSxQR/8afbvl\nN2p6O+u9AkEA5uLLXyukCytMPkSswpq3z0AP+5fRW48cX/IiSbj6apnU4OyVVm1b\nQYw6Q8F6MrClz2oQzAF8BnQ01iApzx+B7QJBAPNgopew0TTS0zFJzaV+m4r2A1a7\nkKurxFCROSUInpfOCSBwui7djIxe60pTWFYdZW9eg8G8ADk2psko/H2tZVkCQB9K\niWmCjp785T5jLE7LjTHHauMcNkGEacIPHNqE+VtNMe6x4aNu+rktehAIvrjz++Ta\naSBc6yQsx6Rlg4UQrhkCQQCHdFjOyNVFvUNPpv+nbVD99AfsLz10ykZT5oBdKEtv\nkAhVsVM2oW+TLTDLJ4/TElA2LCK4DK+67Lw4djyuVspY\n-----END RSA PRIVATE KEY-----";
    const TEST_RSA_PUBLIC_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----\nMIGJAoGBAOZDdRbcN88RFtp+1VA76MOxZvXRATAFgAG30rN3Ohx3JRNLBuvmMrBw\nsCzRfdwF79SrKEoDUrlQiEttp/P60R266eZ1wE8zwCs8S5Xk9YTrhYGIFvdMBmMk\nEDQ6HW/4WOr856Ao9tbS45pRbpQRbWkUi8YSfV/DmMfql0+6Jnr5AgMBAAE=\n-----END RSA PUBLIC KEY-----";
    const TEST_RSA_PUBLIC_SPKI: &str = "-----BEGIN PUBLIC KEY-----\nMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDmQ3UW3DfPERbaftVQO+jDsWb1\n0QEwBYABt9KzdzocdyUTSwbr5jKwcLAs0X3cBe/UqyhKA1K5UIhLbafz+tEduunm\ndcBPM8ArPEuV5PWE64WBiBb3TAZjJBA0Oh1v+Fjq/OegKPbW0uOaUW6UEW1pFIvG\nEn1fw5jH6pdPuiZ6+QIDAQAB\n-----END PUBLIC KEY-----";
    /// PKCS#1 v1.5 / SHA-256 signatures by `TEST_RSA_PRIVATE` of `rsa_message` for the
    /// vector's address, with the vector's previous and with root, made with an
    /// independent implementation (Python `cryptography`).
    const RSA_VECTOR_SIGNATURE: &str = concat!(
        "a7ac21e7160c09f44fbade10153c895b5393f85a1cea212c666d2e5ef2fcb1ad",
        "e297b2c55cfe6b0ad184a0da653abe8d76fb686a5862e5f0cad8ef840c55e857",
        "5b78c3f65c41a5c064278cd65d485a9fc8f307931b7d5ecfdfb8a528309da69d",
        "a2d7f959ed7bbaa602d68510142379044b97ff586d2f6341b2517b2ffeaf02bc",
    );
    const RSA_VECTOR_ROOT_SIGNATURE: &str = concat!(
        "7122a878af9ef6ae9b52d9320c98484e5d4b7ec3b05f68ab65da220865545cdc",
        "e8f9e9b191f7b6ec29626545646aad38cb59bac3771ede7c8111f0f074d1862b",
        "85f58807325db533cb239bb0d65019d5767246df428193e28e0edda3f87f239f",
        "7e984b6b88e6dab69431c054d37357ee45ba7332cf229366118526beb39d2b36",
    );

    #[test]
    fn ed25519_message_layout() {
        let slot = Id::of_content(b"slot");
        let previous = Id::of_content(b"previous");
        let address = Id::of_content(b"address");
        let message = ed25519_message(&slot, &Previous::Address(previous), &address);
        assert_eq!(message.len(), 122);
        assert_eq!(&message[..25], ED25519_DOMAIN);
        assert_eq!(&message[25..57], slot.as_bytes());
        assert_eq!(message[57], 1);
        assert_eq!(&message[58..90], previous.as_bytes());
        assert_eq!(&message[90..], address.as_bytes());
        let root = ed25519_message(&slot, &Previous::Root, &address);
        assert_eq!(root[57], 0);
        assert!(root[58..90].iter().all(|b| *b == 0));
        // The all-zero address is distinguishable from root by the tag.
        let zero = ed25519_message(&slot, &Previous::Address(Id::from_bytes([0; 32])), &address);
        assert_ne!(zero, root);
    }

    #[test]
    fn rsa_message_is_the_reference_form() {
        let address = id(VECTOR_ADDRESS);
        let previous = id(VECTOR_PREVIOUS);
        assert_eq!(
            rsa_message(&address, &Previous::Address(previous)),
            format!("{VECTOR_ADDRESS}0000{VECTOR_PREVIOUS}").into_bytes()
        );
        assert_eq!(
            rsa_message(&address, &Previous::Root),
            format!("{VECTOR_ADDRESS}0000").into_bytes()
        );
    }

    #[test]
    fn rsa_signatures_match_an_independent_implementation() {
        let signer = SlotSigner::rsa_from_pem(TEST_RSA_PRIVATE).expect("test key");
        let address = id(VECTOR_ADDRESS);
        let previous = Previous::Address(id(VECTOR_PREVIOUS));
        // PKCS#1 v1.5 signatures are deterministic: ours equal the independent ones.
        assert_eq!(
            signer
                .sign(&id(VECTOR_SLOT), &previous, &address)
                .expect("sign"),
            RSA_VECTOR_SIGNATURE
        );
        assert_eq!(
            signer
                .sign(&id(VECTOR_SLOT), &Previous::Root, &address)
                .expect("sign"),
            RSA_VECTOR_ROOT_SIGNATURE
        );
        for key in [TEST_RSA_PUBLIC_PKCS1, TEST_RSA_PUBLIC_SPKI] {
            let config = SignatureConfig::Sha256Rsa { key: key.into() };
            let verifier = SlotVerifier::new(Id::random(), &config).expect("public key parses");
            assert!(verifier.requires_signature());
            let bytes = verifier
                .verify(&previous, &address, Some(RSA_VECTOR_SIGNATURE))
                .expect("verifies")
                .expect("signed slot returns the signature");
            // The same signature in base64 is accepted too.
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            verifier
                .verify(&previous, &address, Some(&b64))
                .expect("base64 form verifies");
            // Wrong previous, wrong address, missing signature: refused.
            assert!(matches!(
                verifier.verify(&Previous::Root, &address, Some(RSA_VECTOR_SIGNATURE)),
                Err(SignatureError::Invalid)
            ));
            assert!(matches!(
                verifier.verify(&previous, &Id::of_content(b"x"), Some(RSA_VECTOR_SIGNATURE)),
                Err(SignatureError::Invalid)
            ));
            assert!(matches!(
                verifier.verify(&previous, &address, None),
                Err(SignatureError::Missing)
            ));
        }
        // The signer registers with its SPKI public key, which verifies its signatures.
        let config = signer.signature_config();
        let verifier = SlotVerifier::new(Id::random(), &config).expect("own key parses");
        verifier
            .verify(&previous, &address, Some(RSA_VECTOR_SIGNATURE))
            .expect("verifies with the exported key");
    }

    #[test]
    fn every_altered_ed25519_byte_is_refused() {
        let signer = SlotSigner::ed25519_from_seed(&seed());
        let slot = signer.ed25519_slot().expect("slot");
        let verifier = SlotVerifier::new(slot, &signer.signature_config()).expect("verifier");
        let previous = Id::of_content(b"p");
        let address = Id::of_content(b"a");
        let request = signer
            .update_request(&slot, &previous, &address)
            .expect("sign");
        let signature = request.signature.clone().expect("signed");
        verifier
            .verify(&request.previous, &address, Some(&signature))
            .expect("genuine signature verifies");
        let sig_bytes = hex::decode(&signature).expect("hex");
        for i in 0..sig_bytes.len() {
            let mut altered = sig_bytes.clone();
            altered[i] ^= 0x01;
            assert!(
                verifier
                    .verify(&request.previous, &address, Some(&hex::encode(&altered)))
                    .is_err(),
                "altered signature byte {i} accepted"
            );
        }
        for i in 0..32 {
            let mut bytes = *address.as_bytes();
            bytes[i] ^= 0x80;
            assert!(
                verifier
                    .verify(&request.previous, &Id::from_bytes(bytes), Some(&signature))
                    .is_err()
            );
            let mut bytes = *previous.as_bytes();
            bytes[i] ^= 0x80;
            assert!(
                verifier
                    .verify(
                        &Previous::Address(Id::from_bytes(bytes)),
                        &address,
                        Some(&signature)
                    )
                    .is_err()
            );
        }
        // Another slot's key cannot sign for this slot.
        let other = SlotSigner::ed25519_from_seed(&[9; 32]);
        let forged = other
            .sign(&slot, &request.previous, &address)
            .expect("sign");
        assert!(matches!(
            verifier.verify(&request.previous, &address, Some(&forged)),
            Err(SignatureError::Invalid)
        ));
        assert!(matches!(
            verifier.verify(&request.previous, &address, Some("zz")),
            Err(SignatureError::Encoding)
        ));
        assert!(matches!(
            verifier.verify(&request.previous, &address, Some("abcd")),
            Err(SignatureError::Encoding)
        ));
    }

    #[test]
    fn invalid_configurations_are_refused() {
        // Not a point on the curve (y = 2 has no x), and a small-order (weak) point.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        let weak = Id::from_bytes({
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        });
        for slot in [Id::from_bytes(not_a_point), weak] {
            assert!(matches!(
                SlotVerifier::new(slot, &SignatureConfig::Ed25519),
                Err(SignatureConfigError::NotEd25519Key(_))
            ));
        }
        let bad_key = SignatureConfig::Sha256Rsa {
            key: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
        };
        assert!(matches!(
            SlotVerifier::new(Id::random(), &bad_key),
            Err(SignatureConfigError::InvalidRsaKey(_))
        ));
        let none = SlotVerifier::new(Id::random(), &SignatureConfig::None).expect("none");
        assert!(!none.requires_signature());
        assert_eq!(
            none.verify(&Previous::Root, &Id::random(), Some("ignored"))
                .expect("none accepts"),
            None
        );
    }

    #[test]
    fn wire_forms() {
        let a = Id::of_content(b"a");
        let state = SlotState {
            address: a,
            previous: Previous::Root,
            time: Some(5),
            signature: None,
            proof: None,
        };
        let json = serde_json::to_string(&state).expect("serialize");
        assert_eq!(
            json,
            format!(r#"{{"address":"{a}","previous":"root","time":5}}"#)
        );
        assert_eq!(
            serde_json::from_str::<SlotState>(&json).expect("parse"),
            state
        );
        // The reference's registration state has no time.
        let bare: SlotState =
            serde_json::from_str(&format!(r#"{{"address":"{a}","previous":"{a}"}}"#))
                .expect("no time");
        assert_eq!(bare.previous, Previous::Address(a));
        assert!(serde_json::from_str::<SlotState>(r#"{"address":"x","previous":"root"}"#).is_err());

        let config = SlotConfig::default();
        assert_eq!(
            serde_json::to_string(&config).expect("serialize"),
            r#"{"signature":{"kind":"none"},"proof":"none"}"#
        );
        let rsa: SignatureConfig =
            serde_json::from_str(r#"{"kind":"sha256:rsa","key":"PEM"}"#).expect("rsa");
        assert_eq!(rsa, SignatureConfig::Sha256Rsa { key: "PEM".into() });
        assert_eq!(
            serde_json::from_str::<SignatureConfig>(r#"{"kind":"ed25519"}"#).expect("ed"),
            SignatureConfig::Ed25519
        );
        assert!(serde_json::from_str::<SignatureConfig>(r#"{"kind":"dsa"}"#).is_err());

        let register: RegisterRequest = serde_json::from_str(&format!(
            r#"{{"id":"{a}","address":"{a}","proof":{{"kind":"none"}},"time":1}}"#
        ))
        .expect("register");
        assert_eq!(register.signature, None);
        assert_eq!(register.proof, Some(ProofConfig::None));
        assert!(
            serde_json::from_str::<RegisterRequest>(&format!(
                r#"{{"id":"{a}","address":"{a}","proof":"proof-of-work:4"}}"#
            ))
            .is_err()
        );
        assert_eq!(
            serde_json::to_string(&RegisterRequest::unsigned(a, a)).expect("serialize"),
            format!(r#"{{"id":"{a}","address":"{a}"}}"#)
        );
    }

    #[test]
    fn signatures_decode_from_hex_and_base64() {
        let bytes: Vec<u8> = (0u8..64).collect();
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        for text in [
            hex::encode(&bytes),
            hex::encode_upper(&bytes),
            STANDARD.encode(&bytes),
            URL_SAFE_NO_PAD.encode(&bytes),
        ] {
            assert_eq!(
                decode_signature(&text).as_deref(),
                Some(bytes.as_slice()),
                "{text}"
            );
        }
        assert_eq!(decode_signature(""), None);
        assert_eq!(decode_signature("not a signature!"), None);
        assert_eq!(decode_signature(&"a".repeat(MAX_SIGNATURE_TEXT + 2)), None);
    }

    #[test]
    fn value_splitter_accepts_ndjson_and_back_to_back_values() {
        let mut buffer = b"{\"a\":1}\n{\"a\":2}{\"a\":3} \n {\"a\":".to_vec();
        let values = split_values(&mut buffer).expect("split");
        assert_eq!(values.len(), 3);
        assert_eq!(values[2], b"{\"a\":3}".to_vec());
        assert_eq!(buffer, b" \n {\"a\":".to_vec());
        buffer.extend_from_slice(b"4}\n");
        let values = split_values(&mut buffer).expect("split");
        assert_eq!(values.len(), 1);
        assert!(buffer.iter().all(u8::is_ascii_whitespace));
        let mut bad = b"{\"a\":1} ]".to_vec();
        assert!(split_values(&mut bad).is_err());
    }

    #[test]
    fn rejections_are_classified() {
        let status = |status| ClientError::Status {
            url: "u".into(),
            status,
            reason: String::new(),
        };
        assert_eq!(Rejection::of(&status(409)), Some(Rejection::Conflict));
        assert_eq!(Rejection::of(&status(403)), Some(Rejection::Forbidden));
        assert_eq!(Rejection::of(&status(404)), Some(Rejection::NotFound));
        assert_eq!(Rejection::of(&status(400)), Some(Rejection::Invalid));
        assert_eq!(Rejection::of(&status(500)), None);
    }
}
