//! App identities: an app's own keys in a passphrase-protected file, and its public
//! **card** that a patient's device grants access to.
//!
//! An app holds an **ed25519 signing key** (its identity; it will sign audit entries
//! and contributions) and an **HPKE key** (X25519, RFC 9180 `DHKEM(X25519,
//! HKDF-SHA256)`) that grants are sealed to. Both are random.
//!
//! ## App keystore file (`ehi-app-keystore`, version 1)
//! The same layout and protection as the patient's keystore ([`crate::keystore`]:
//! Argon2id + XChaCha20-Poly1305, every header field bound as associated data, mode
//! 0600, never overwritten) with `format: "ehi-app-keystore"`. The sealed secrets are
//! postcard (format 1): name, signing seed, HPKE seed, creation time.
//!
//! ## App card (`ehi-app-card`, version 1)
//! Public JSON the app hands to the patient:
//!
//! ```json
//! { "format": "ehi-app-card", "version": 1, "name": "MedTracker",
//!   "signing_key": "<ed25519 public, 32 bytes hex>",
//!   "hpke_key": "<X25519 public, 32 bytes hex>",
//!   "signature": "<ed25519 signature, 64 bytes hex>" }
//! ```
//!
//! The signature (by `signing_key`) covers `"ehi-app-card v1\n" ‖ name ‖ "\n" ‖
//! signing_key hex ‖ "\n" ‖ hpke_key hex`: a card whose HPKE key was swapped is refused.
//! A card proves possession of the keys, not who the app is: the patient must get the
//! card from the app through a channel they trust (the name is the app's claim).

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{EhiError, KeystoreError, Result};
use crate::keys::SecretKey;
use crate::keystore::{self, HpkeSealed, KdfParams};

/// The `format` field of an app keystore file.
pub const KEYSTORE_FORMAT: &str = "ehi-app-keystore";
/// The `format` field of an app card.
pub const CARD_FORMAT: &str = "ehi-app-card";
/// The app card version this build writes and reads.
pub const CARD_VERSION: u32 = 1;

/// The sealed part of the app keystore (postcard).
#[derive(Clone, Serialize, Deserialize)]
struct AppSecrets {
    format: u8,
    name: String,
    signing_seed: SecretKey,
    hpke_seed: SecretKey,
    created_ms: u64,
}

/// An app's keys, decrypted in memory (wiped when dropped).
#[derive(Clone)]
pub struct AppKeystore {
    secrets: AppSecrets,
}

impl std::fmt::Debug for AppKeystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeystore")
            .field("name", &self.secrets.name)
            .finish_non_exhaustive()
    }
}

impl AppKeystore {
    /// Fresh random keys for an app called `name` (1 to 128 printable characters).
    pub fn generate(name: &str) -> Result<AppKeystore> {
        check_name(name)?;
        Ok(AppKeystore {
            secrets: AppSecrets {
                format: 1,
                name: name.to_string(),
                signing_seed: SecretKey::random()?,
                hpke_seed: SecretKey::random()?,
                created_ms: crate::time::now_ms(),
            },
        })
    }

    /// The app's name.
    pub fn name(&self) -> &str {
        &self.secrets.name
    }

    /// The app's ed25519 signing key.
    #[doc(hidden)]
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(self.secrets.signing_seed.expose())
    }

    /// The app's public card, signed.
    pub fn card(&self) -> AppCard {
        let signing = self.signing_key();
        let signing_key = signing.verifying_key().to_bytes();
        let hpke_key = keystore::hpke_public_of(&self.secrets.hpke_seed);
        let message = card_message(&self.secrets.name, &signing_key, &hpke_key);
        AppCard {
            format: CARD_FORMAT.into(),
            version: CARD_VERSION,
            name: self.secrets.name.clone(),
            signing_key: hex::encode(signing_key),
            hpke_key: hex::encode(hpke_key),
            signature: hex::encode(signing.sign(&message).to_bytes()),
        }
    }

    /// Opens a message sealed to this app's HPKE key.
    pub fn hpke_open(
        &self,
        sealed: &HpkeSealed,
        info: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        keystore::hpke_open_with_seed(&self.secrets.hpke_seed, sealed, info, aad)
    }

    /// Writes the app keystore to `path` (which must not exist). Runs Argon2id.
    pub fn save(&self, path: &Path, passphrase: &str, params: KdfParams) -> Result<()> {
        let plaintext = Zeroizing::new(
            postcard::to_stdvec(&self.secrets)
                .map_err(|e| KeystoreError::Crypto(format!("encoding the app secrets: {e}")))?,
        );
        keystore::save_sealed(path, KEYSTORE_FORMAT, &plaintext, passphrase, params)?;
        Ok(())
    }

    /// Reads and decrypts the app keystore at `path`. Runs Argon2id.
    pub fn open(path: &Path, passphrase: &str) -> Result<AppKeystore> {
        let plaintext = keystore::open_sealed(path, KEYSTORE_FORMAT, passphrase)?;
        let secrets: AppSecrets =
            postcard::from_bytes(&plaintext).map_err(|e| KeystoreError::Format {
                path: path.to_path_buf(),
                reason: format!("app secrets do not decode: {e}"),
            })?;
        if secrets.format != 1 {
            return Err(KeystoreError::Format {
                path: path.to_path_buf(),
                reason: format!("app secrets format {}", secrets.format),
            }
            .into());
        }
        Ok(AppKeystore { secrets })
    }
}

/// An app's public card (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCard {
    /// [`CARD_FORMAT`].
    pub format: String,
    /// [`CARD_VERSION`].
    pub version: u32,
    /// The app's name (its own claim).
    pub name: String,
    /// ed25519 public key, hex.
    pub signing_key: String,
    /// X25519 HPKE public key, hex.
    pub hpke_key: String,
    /// ed25519 signature over the other fields, hex.
    pub signature: String,
}

/// A card whose format, keys and signature were checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCard {
    /// The app's name.
    pub name: String,
    /// ed25519 public key.
    pub signing_key: [u8; 32],
    /// X25519 public key.
    pub hpke_key: [u8; 32],
}

impl AppCard {
    /// The card as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| EhiError::InvalidArgument(format!("encoding the app card: {e}")))
    }

    /// Parses and verifies a card.
    pub fn parse(json: &[u8]) -> Result<VerifiedCard> {
        let card: AppCard = serde_json::from_slice(json)
            .map_err(|e| EhiError::InvalidArgument(format!("not an app card: {e}")))?;
        card.verify()
    }

    /// Checks format, version, key encodings and the signature.
    pub fn verify(&self) -> Result<VerifiedCard> {
        let bad = |reason: String| EhiError::InvalidArgument(format!("app card: {reason}"));
        if self.format != CARD_FORMAT {
            return Err(bad(format!(
                "format is {:?}, not {CARD_FORMAT:?}",
                self.format
            )));
        }
        if self.version != CARD_VERSION {
            return Err(bad(format!(
                "version {} (this build reads version {CARD_VERSION})",
                self.version
            )));
        }
        check_name(&self.name)?;
        let signing_key = hex32(&self.signing_key).ok_or_else(|| bad("signing_key".into()))?;
        let hpke_key = hex32(&self.hpke_key).ok_or_else(|| bad("hpke_key".into()))?;
        let signature = hex::decode(&self.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| bad("signature is not 64 bytes of hex".into()))?;
        let verifying =
            VerifyingKey::from_bytes(&signing_key).map_err(|e| bad(format!("signing_key: {e}")))?;
        verifying
            .verify(
                &card_message(&self.name, &signing_key, &hpke_key),
                &Signature::from_bytes(&signature),
            )
            .map_err(|_| bad("the signature does not verify".into()))?;
        Ok(VerifiedCard {
            name: self.name.clone(),
            signing_key,
            hpke_key,
        })
    }
}

fn card_message(name: &str, signing: &[u8; 32], hpke: &[u8; 32]) -> Vec<u8> {
    format!(
        "ehi-app-card v1\n{name}\n{}\n{}",
        hex::encode(signing),
        hex::encode(hpke)
    )
    .into_bytes()
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().count() <= 128
        && !name.chars().any(char::is_control)
        && name.trim() == name;
    if ok {
        Ok(())
    } else {
        Err(EhiError::InvalidArgument(format!(
            "app name {name:?}: use 1 to 128 printable characters, no leading/trailing space"
        )))
    }
}

/// 32 bytes from 64 hex digits.
pub fn hex32(text: &str) -> Option<[u8; 32]> {
    hex::decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_round_trip_and_tamper() {
        let app = AppKeystore::generate("MedTracker").expect("generate");
        let card = app.card();
        let json = card.to_json().expect("json");
        let verified = AppCard::parse(json.as_bytes()).expect("verify");
        assert_eq!(verified.name, "MedTracker");
        let mut swapped = card.clone();
        swapped.hpke_key = hex::encode([7u8; 32]);
        assert!(swapped.verify().is_err());
        let mut renamed = card;
        renamed.name = "Other".into();
        assert!(renamed.verify().is_err());
        assert!(AppKeystore::generate("").is_err());
        assert!(AppKeystore::generate("a\nb").is_err());
    }

    #[test]
    fn app_keystore_save_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.json");
        let app = AppKeystore::generate("Scheduler").expect("generate");
        app.save(&path, "pw", KdfParams::insecure_fast())
            .expect("save");
        let again = AppKeystore::open(&path, "pw").expect("open");
        assert_eq!(again.card(), app.card());
        assert!(AppKeystore::open(&path, "nope").is_err());
        // A patient keystore file is not an app keystore.
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(KEYSTORE_FORMAT));
        assert!(crate::keystore::Keystore::open(&path, "pw").is_err());
    }
}
