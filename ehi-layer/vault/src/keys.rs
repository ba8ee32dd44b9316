//! Key material: a 32-byte secret that wipes itself ([`SecretKey`]), fresh randomness
//! from the operating system, and the BLAKE3 key-derivation contexts of the vault.
//!
//! Every key of the vault is random (from the OS generator), never derived from content.
//! Sub-keys are separated by purpose with `blake3::derive_key` under the context strings
//! below, so one random key never encrypts two kinds of object.

use std::fmt;

use rand::TryRngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::KeystoreError;

/// BLAKE3 context: the AEAD key of the vault root, from the root key.
pub const CONTEXT_ROOT: &str = "invariant ehi-layer v1 vault root";
/// BLAKE3 context: the AEAD key of a scope manifest, from a scope epoch key.
pub const CONTEXT_MANIFEST: &str = "invariant ehi-layer v1 scope manifest";
/// BLAKE3 context: the AEAD key of resource version blobs, from a scope epoch key.
pub const CONTEXT_RESOURCE: &str = "invariant ehi-layer v1 resource version";

/// BLAKE3 context: the AEAD key of audit log entries, from the vault root's AEAD key.
pub const CONTEXT_AUDIT: &str = "invariant ehi-layer v1 audit log";

/// BLAKE3 context: the policy slot's ed25519 seed, from the keystore's root key (or a later root key generation).
pub const CONTEXT_POLICY_SLOT: &str = "invariant ehi-layer v1 emergency policy slot";
/// BLAKE3 context: the AEAD key of the policy blob, from the keystore's root key (or a later root key generation).
pub const CONTEXT_POLICY: &str = "invariant ehi-layer v1 emergency policy";
/// BLAKE3 context: the device keyring slot's seed, from the generation-0 root AEAD key
/// (see `vault/keyring.rs`).
pub const CONTEXT_KEYRING_SLOT: &str = "invariant ehi-layer v1 device keyring slot";
/// BLAKE3 context: a grant's channel slot id, from the vault slot and the grant id
/// ([`channel_slot`]).
pub const CONTEXT_CHANNEL: &str = "invariant ehi-layer v1 grant channel";

/// The channel slot of grant `grant_id` of the vault `vault` (see
/// `ehi_share::contribution`).
pub fn channel_slot(vault: &invariant_spec::Id, grant_id: &[u8; 16]) -> invariant_spec::Id {
    let mut material = Vec::with_capacity(48);
    material.extend_from_slice(vault.as_bytes());
    material.extend_from_slice(grant_id);
    invariant_spec::Id::from_bytes(blake3::derive_key(CONTEXT_CHANNEL, &material))
}

/// A 32-byte secret key. Wiped from memory when dropped; never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Wraps key bytes (the caller should wipe its own copy).
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(bytes)
    }

    /// A fresh key from the operating system's random generator.
    pub fn random() -> Result<SecretKey, KeystoreError> {
        let mut key = SecretKey([0; 32]);
        fill_random(&mut key.0)?;
        Ok(key)
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// A sub-key for `context` (BLAKE3 `derive_key`).
    pub fn derive(&self, context: &str) -> SecretKey {
        SecretKey(blake3::derive_key(context, &self.0))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl Serialize for SecretKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SecretKey, D::Error> {
        <[u8; 32]>::deserialize(deserializer).map(SecretKey)
    }
}

/// Fills `buf` from the operating system's random generator.
pub fn fill_random(buf: &mut [u8]) -> Result<(), KeystoreError> {
    OsRng
        .try_fill_bytes(buf)
        .map_err(|e| KeystoreError::Random(e.to_string()))
}

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeystoreError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_differ_and_derivations_separate_purposes() {
        let a = SecretKey::random().expect("random");
        let b = SecretKey::random().expect("random");
        assert_ne!(a, b);
        assert_ne!(a.derive(CONTEXT_MANIFEST), a.derive(CONTEXT_RESOURCE));
        assert_ne!(a.derive(CONTEXT_ROOT), a.derive(CONTEXT_MANIFEST));
        assert_eq!(a.derive(CONTEXT_ROOT), a.derive(CONTEXT_ROOT));
        assert_eq!(format!("{a:?}"), "SecretKey(..)");
    }

    #[test]
    fn serde_round_trip() {
        let a = SecretKey::random().expect("random");
        let bytes = postcard::to_stdvec(&a).expect("encode");
        assert_eq!(bytes.len(), 32);
        let back: SecretKey = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(a, back);
    }
}

/// The policy slot's seed and the policy blob's key of one **root key generation**:
/// generation 0 derives them from the keystore's root key (every device that ever
/// joined has it), a later generation from that generation's root AEAD key, which
/// only the devices in the device keyring receive (see `vault/keyring.rs`); the emergency module turns them into the policy slot and blob.
#[derive(Clone, Debug)]
pub struct PolicyKeys {
    pub seed: SecretKey,
    pub key: SecretKey,
}

impl PolicyKeys {
    /// Generation 0, from the keystore's root key.
    #[doc(hidden)]
    pub fn of_keystore_root(root_key: &SecretKey) -> PolicyKeys {
        PolicyKeys {
            seed: root_key.derive(CONTEXT_POLICY_SLOT),
            key: root_key.derive(CONTEXT_POLICY),
        }
    }

    /// A generation above 0, from its root AEAD key.
    pub fn of_generation(root_aead_key: &SecretKey) -> PolicyKeys {
        PolicyKeys::of_keystore_root(root_aead_key)
    }

    /// The policy slot's ed25519 seed.
    pub fn seed(&self) -> &SecretKey {
        &self.seed
    }

    /// The policy blob's AEAD key.
    pub fn key(&self) -> &SecretKey {
        &self.key
    }
}
