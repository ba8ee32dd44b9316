//! Signing and checking slot updates: [`SlotVerifier`] for one slot's
//! [`SignatureConfig`] (what the server runs, and a client re-checking a history), and
//! [`SlotSigner`], which holds an ed25519 or RSA private key and builds signed
//! registrations and updates.

use std::fmt;

use ed25519_dalek::Signer as _;
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use rsa::signature::{SignatureEncoding as _, Verifier as _};
use sha2::Sha256;

use super::wire::{
    Previous, RegisterRequest, SignatureConfig, UpdateRequest, decode_signature, ed25519_message,
    encode_signature, rsa_message,
};
use crate::Id;

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
