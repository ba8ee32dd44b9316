//! The on-device keystore: the patient's keys in one passphrase-protected file.
//!
//! ## What it holds
//! - the **signing key** (ed25519 seed): owns the vault slot (the slot id *is* its
//!   public key), and will sign grants and audit entries;
//! - the **HPKE key** (X25519 seed, RFC 9180 `DHKEM(X25519, HKDF-SHA256)`): what other
//!   devices and apps seal keys to ([`hpke_seal`], [`Keystore::hpke_open`]);
//! - the **vault root key**: decrypts the vault root, which holds every scope key;
//! - the id of the slots server the vault slot lives on (not secret, but sealed too).
//!
//! ## Recovery kit
//! Losing the keystore file or its passphrase loses the vault: nothing else can decrypt
//! it. [`Keystore::save_recovery_kit`] writes a second copy of the secrets in the same
//! file format (`"format": "ehi-recovery-kit"`), sealed under a random 160-bit
//! [`RecoveryCode`] shown once; [`Keystore::open_recovery_kit`] restores the keystore
//! from kit and code on a new device (which then saves it under a new passphrase).
//!
//! ## File format (`ehi-keystore`, version 1)
//! A small JSON document:
//!
//! ```json
//! { "format": "ehi-keystore", "version": 1,
//!   "kdf": { "algorithm": "argon2id", "argon2_version": 19, "memory_kib": 65536,
//!            "iterations": 3, "parallelism": 1, "salt": "<32 bytes hex>" },
//!   "cipher": "xchacha20poly1305", "nonce": "<24 bytes hex>", "sealed": "<hex>" }
//! ```
//!
//! The passphrase and salt go through Argon2id (defaults: 64 MiB, 3 passes, 1 lane —
//! RFC 9106's second recommended setting with one lane) to a 32-byte key that seals the
//! secrets (postcard, format 1) with XChaCha20-Poly1305. Every header field is bound as
//! associated data, so weakening the parameters in the file makes it unopenable rather
//! than weaker. A wrong passphrase and a tampered file both give
//! [`KeystoreError::WrongPassphrase`].
//!
//! The file is written to a temporary file, fsynced, then linked into place (never
//! overwriting an existing keystore), with mode 0600 on Unix. Secrets live in
//! [`SecretKey`]s that are wiped on drop; the derived file key and decrypted buffers are
//! wiped too. [`Keystore::destroy`] overwrites the file with random bytes before
//! removing it — on copy-on-write or flash storage the old blocks may survive, and any
//! copy (backup) of the file keeps working: the docs of [`crate`] say what that means.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use invariant_spec::Id;
use invariant_spec::slots::SlotSigner;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::KeystoreError;
use crate::keys::{SecretKey, fill_random, random_bytes};

/// The `format` field of a keystore file.
pub const FORMAT: &str = "ehi-keystore";
/// The `format` field of a recovery kit ([`Keystore::save_recovery_kit`]).
pub const KIT_FORMAT: &str = "ehi-recovery-kit";
/// The keystore file version this build writes and reads.
pub const VERSION: u32 = 1;

type HpkeKem = X25519HkdfSha256;
type HpkeKdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::ChaCha20Poly1305;

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB. Default 65536 (64 MiB).
    pub memory_kib: u32,
    /// Passes. Default 3.
    pub iterations: u32,
    /// Lanes. Default 1.
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> KdfParams {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Cheap parameters for tests only (they protect nothing).
    pub fn insecure_fast() -> KdfParams {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    /// Refuses parameters outside what this build accepts (a file asking for 1 TiB of
    /// memory must not take the device down).
    fn argon2(&self) -> Result<Argon2<'static>, KeystoreError> {
        if self.memory_kib > 4 * 1024 * 1024 || self.iterations > 64 || self.parallelism > 16 {
            return Err(KeystoreError::Params(format!(
                "{self:?} exceeds the limits (4 GiB, 64 passes, 16 lanes)"
            )));
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| KeystoreError::Params(e.to_string()))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// The JSON file.
#[derive(Debug, Serialize, Deserialize)]
struct File {
    format: String,
    version: u32,
    kdf: KdfSection,
    cipher: String,
    nonce: String,
    sealed: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct KdfSection {
    algorithm: String,
    argon2_version: u32,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

impl File {
    /// The associated data: every header field, unambiguously joined.
    fn aad(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.format,
            self.version,
            self.kdf.algorithm,
            self.kdf.argon2_version,
            self.kdf.memory_kib,
            self.kdf.iterations,
            self.kdf.parallelism,
            self.kdf.salt,
            self.cipher,
            self.nonce
        )
        .into_bytes()
    }
}

/// The sealed part (postcard).
#[derive(Clone, Serialize, Deserialize)]
struct Secrets {
    format: u8,
    signing_seed: SecretKey,
    hpke_seed: SecretKey,
    root_key: SecretKey,
    slots_server: [u8; 32],
    created_ms: u64,
}

/// What one device hands another when it joins ([`Keystore::transfer_secrets`]).
#[derive(Serialize, Deserialize)]
struct Transfer {
    format: u8,
    signing_seed: SecretKey,
    root_key: SecretKey,
    slots_server: [u8; 32],
}

/// The patient's keys, decrypted in memory (wiped when dropped).
#[derive(Clone)]
pub struct Keystore {
    secrets: Secrets,
}

impl std::fmt::Debug for Keystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystore")
            .field("vault_slot", &self.vault_slot())
            .field("slots_server", &self.slots_server())
            .finish_non_exhaustive()
    }
}

impl Keystore {
    /// Fresh random keys for a vault whose slot will live on `slots_server`.
    pub fn generate(slots_server: Id) -> Result<Keystore, KeystoreError> {
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Ok(Keystore {
            secrets: Secrets {
                format: 1,
                signing_seed: SecretKey::random()?,
                hpke_seed: SecretKey::random()?,
                root_key: SecretKey::random()?,
                slots_server: *slots_server.as_bytes(),
                created_ms,
            },
        })
    }

    /// The slot id of the vault (the signing key's public half).
    pub fn vault_slot(&self) -> Id {
        let key = ed25519_dalek::SigningKey::from_bytes(self.secrets.signing_seed.expose());
        Id::from_bytes(key.verifying_key().to_bytes())
    }

    /// The slots server the vault slot lives on.
    pub fn slots_server(&self) -> Id {
        Id::from_bytes(self.secrets.slots_server)
    }

    /// A signer for the vault slot.
    pub fn signer(&self) -> SlotSigner {
        SlotSigner::ed25519_from_seed(self.secrets.signing_seed.expose())
    }

    /// The patient's ed25519 signing key (signs grants).
    pub(crate) fn signing_key(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(self.secrets.signing_seed.expose())
    }

    /// This device's HPKE seed (opens keys sealed to [`Keystore::hpke_public`]).
    pub(crate) fn hpke_seed(&self) -> &SecretKey {
        &self.secrets.hpke_seed
    }

    /// The vault root key.
    #[doc(hidden)]
    pub fn root_key(&self) -> &SecretKey {
        &self.secrets.root_key
    }

    /// This device's HPKE public key (32 bytes, X25519).
    pub fn hpke_public(&self) -> [u8; 32] {
        let (_, public) = HpkeKem::derive_keypair(self.secrets.hpke_seed.expose());
        let mut out = [0u8; 32];
        out.copy_from_slice(&public.to_bytes());
        out
    }

    /// Opens a message sealed to [`Keystore::hpke_public`] by [`hpke_seal`].
    pub fn hpke_open(
        &self,
        sealed: &HpkeSealed,
        info: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        let (private, _) = HpkeKem::derive_keypair(self.secrets.hpke_seed.expose());
        let encapped = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(&sealed.encapped)
            .map_err(|e| KeystoreError::Crypto(format!("HPKE encapsulated key: {e}")))?;
        hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
            &OpModeR::Base,
            &private,
            &encapped,
            info,
            &sealed.ciphertext,
            aad,
        )
        .map(Zeroizing::new)
        .map_err(|e| KeystoreError::Crypto(format!("HPKE open failed: {e}")))
    }

    /// Writes the keystore to `path` (which must not exist), protected by `passphrase`.
    /// Runs Argon2id: call it off the async workers.
    pub fn save(
        &self,
        path: &Path,
        passphrase: &str,
        params: KdfParams,
    ) -> Result<(), KeystoreError> {
        let plaintext = Zeroizing::new(
            postcard::to_stdvec(&self.secrets)
                .map_err(|e| KeystoreError::Crypto(format!("encoding the secrets: {e}")))?,
        );
        save_sealed(path, FORMAT, &plaintext, passphrase, params)
    }

    /// Reads and decrypts the keystore at `path`. Runs Argon2id: call it off the async
    /// workers.
    pub fn open(path: &Path, passphrase: &str) -> Result<Keystore, KeystoreError> {
        let plaintext = open_sealed(path, FORMAT, passphrase)?;
        let format = |reason: String| KeystoreError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let secrets: Secrets = postcard::from_bytes(&plaintext)
            .map_err(|e| format(format!("secrets do not decode: {e}")))?;
        if secrets.format != 1 {
            return Err(format(format!("secrets format {}", secrets.format)));
        }
        Ok(Keystore { secrets })
    }

    /// Writes a recovery kit to `path` (which must not exist): a second copy of every
    /// secret of this keystore, sealed like the keystore itself (Argon2id +
    /// XChaCha20-Poly1305) under a new random [`RecoveryCode`] instead of the
    /// passphrase. The code is returned, to be shown once and kept apart from the kit:
    /// together they restore the keystore on a new device
    /// ([`Keystore::open_recovery_kit`]). Runs Argon2id.
    pub fn save_recovery_kit(
        &self,
        path: &Path,
        params: KdfParams,
    ) -> Result<RecoveryCode, KeystoreError> {
        let code = RecoveryCode::generate()?;
        let plaintext = Zeroizing::new(
            postcard::to_stdvec(&self.secrets)
                .map_err(|e| KeystoreError::Crypto(format!("encoding the secrets: {e}")))?,
        );
        save_sealed(path, KIT_FORMAT, &plaintext, code.normalized(), params)?;
        Ok(code)
    }

    /// The keystore a recovery kit holds, opened with its recovery code (dashes, spaces
    /// and letter case do not matter). Runs Argon2id.
    pub fn open_recovery_kit(path: &Path, code: &str) -> Result<Keystore, KeystoreError> {
        let code = RecoveryCode::normalize(code);
        let plaintext = open_sealed(path, KIT_FORMAT, &code).map_err(|e| match e {
            KeystoreError::WrongPassphrase { path } => KeystoreError::WrongRecoveryCode { path },
            other => other,
        })?;
        let secrets: Secrets =
            postcard::from_bytes(&plaintext).map_err(|e| KeystoreError::Format {
                path: path.to_path_buf(),
                reason: format!("secrets do not decode: {e}"),
            })?;
        if secrets.format != 1 {
            return Err(KeystoreError::Format {
                path: path.to_path_buf(),
                reason: format!("secrets format {}", secrets.format),
            });
        }
        Ok(Keystore { secrets })
    }

    /// The secrets another device of the patient needs (signing seed, root key, slots
    /// server), postcard-encoded, for `ehi_share::device` to seal to that device's HPKE
    /// key. This device's own HPKE seed is not included: every device keeps its own.
    pub fn transfer_secrets(&self) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        let transfer = Transfer {
            format: 1,
            signing_seed: self.secrets.signing_seed.clone(),
            root_key: self.secrets.root_key.clone(),
            slots_server: self.secrets.slots_server,
        };
        postcard::to_stdvec(&transfer)
            .map(Zeroizing::new)
            .map_err(|e| KeystoreError::Crypto(format!("encoding the transfer: {e}")))
    }

    /// A keystore for a new device from [`Keystore::transfer_secrets`] of another one,
    /// with the new device's own HPKE seed.
    pub fn from_transfer(bytes: &[u8], hpke_seed: SecretKey) -> Result<Keystore, KeystoreError> {
        let transfer: Transfer = postcard::from_bytes(bytes).map_err(|e| {
            KeystoreError::Crypto(format!("the transferred keys do not decode: {e}"))
        })?;
        if transfer.format != 1 {
            return Err(KeystoreError::Crypto(format!(
                "transferred keys of format {}",
                transfer.format
            )));
        }
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Ok(Keystore {
            secrets: Secrets {
                format: 1,
                signing_seed: transfer.signing_seed,
                hpke_seed,
                root_key: transfer.root_key,
                slots_server: transfer.slots_server,
                created_ms,
            },
        })
    }

    /// Overwrites the keystore file at `path` with random bytes, syncs, and removes it.
    pub fn destroy(path: &Path) -> Result<(), KeystoreError> {
        let io = |source| KeystoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = fs::metadata(path).map_err(io)?.len() as usize;
        let mut noise = vec![0u8; len.max(1)];
        fill_random(&mut noise)?;
        {
            let mut file = fs::OpenOptions::new().write(true).open(path).map_err(io)?;
            file.write_all(&noise).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        fs::remove_file(path).map_err(io)?;
        sync_parent(path).map_err(io)?;
        Ok(())
    }
}

/// A message sealed with HPKE (base mode) to one recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HpkeSealed {
    /// The encapsulated key (32 bytes).
    pub encapped: Vec<u8>,
    /// The ciphertext with its tag.
    pub ciphertext: Vec<u8>,
}

/// Seals `plaintext` to the holder of X25519 public key `recipient` (RFC 9180 base mode,
/// `DHKEM(X25519, HKDF-SHA256)`, `HKDF-SHA256`, `ChaCha20Poly1305`).
pub fn hpke_seal(
    recipient: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<HpkeSealed, KeystoreError> {
    let public = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|e| KeystoreError::Crypto(format!("HPKE public key: {e}")))?;
    let (encapped, ciphertext) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, HpkeKem, _>(
        &OpModeS::Base,
        &public,
        info,
        plaintext,
        aad,
        &mut rand::rng(),
    )
    .map_err(|e| KeystoreError::Crypto(format!("HPKE seal failed: {e}")))?;
    Ok(HpkeSealed {
        encapped: encapped.to_bytes().to_vec(),
        ciphertext,
    })
}

/// The code that opens a recovery kit: 160 random bits, written as eight groups of four
/// base32 characters (`ABCD-EFGH-…`). It is as strong as a random key, so a lost kit
/// without the code reveals nothing; it is wiped from memory when dropped.
pub struct RecoveryCode {
    display: Zeroizing<String>,
    normalized: Zeroizing<String>,
}

impl RecoveryCode {
    fn generate() -> Result<RecoveryCode, KeystoreError> {
        let bytes = Zeroizing::new(random_bytes::<20>()?);
        let plain = Zeroizing::new(data_encoding::BASE32_NOPAD.encode(bytes.as_slice()));
        let groups: Vec<&str> = plain
            .as_bytes()
            .chunks(4)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        Ok(RecoveryCode {
            display: Zeroizing::new(groups.join("-")),
            normalized: RecoveryCode::normalize(&plain),
        })
    }

    /// The code as typed by a person: without dashes and white space, in capitals.
    fn normalize(code: &str) -> Zeroizing<String> {
        Zeroizing::new(
            code.chars()
                .filter(|c| !c.is_whitespace() && *c != '-')
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        )
    }

    fn normalized(&self) -> &str {
        &self.normalized
    }

    /// The code to show the patient (once).
    pub fn as_str(&self) -> &str {
        &self.display
    }
}

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode(..)")
    }
}

/// Writes `plaintext` to a new passphrase-protected file at `path` whose `format`
/// field is `format_name` (the keystore file layout, version [`VERSION`]; also used by
/// the app keystore of [`crate::app`]). Runs Argon2id.
pub(crate) fn save_sealed(
    path: &Path,
    format_name: &str,
    plaintext: &[u8],
    passphrase: &str,
    params: KdfParams,
) -> Result<(), KeystoreError> {
    if path.exists() {
        return Err(KeystoreError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let salt: [u8; 32] = random_bytes()?;
    let nonce: [u8; 24] = random_bytes()?;
    let mut file = File {
        format: format_name.into(),
        version: VERSION,
        kdf: KdfSection {
            algorithm: "argon2id".into(),
            argon2_version: 0x13,
            memory_kib: params.memory_kib,
            iterations: params.iterations,
            parallelism: params.parallelism,
            salt: hex::encode(salt),
        },
        cipher: "xchacha20poly1305".into(),
        nonce: hex::encode(nonce),
        sealed: String::new(),
    };
    let key = derive_file_key(&params, passphrase, &salt)?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key.expose()));
    let aad = file.aad();
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| KeystoreError::Crypto("sealing the keystore failed".into()))?;
    file.sealed = hex::encode(sealed);
    let json = serde_json::to_vec_pretty(&file).map_err(|e| KeystoreError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_new(path, &json)
}

/// Reads and decrypts a file written by [`save_sealed`] with the same `format_name`.
pub(crate) fn open_sealed(
    path: &Path,
    format_name: &str,
    passphrase: &str,
) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let io = |source| KeystoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeystoreError::NotFound {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(io(e)),
    };
    let format = |reason: String| KeystoreError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let file: File =
        serde_json::from_slice(&text).map_err(|e| format(format!("not a keystore file: {e}")))?;
    if file.format != format_name {
        return Err(format(format!(
            "format is {:?}, not {format_name:?}",
            file.format
        )));
    }
    if file.version != VERSION {
        return Err(format(format!(
            "version {} (this build reads version {VERSION})",
            file.version
        )));
    }
    if file.kdf.algorithm != "argon2id" || file.kdf.argon2_version != 0x13 {
        return Err(format("unknown key derivation".into()));
    }
    if file.cipher != "xchacha20poly1305" {
        return Err(format(format!("unknown cipher {:?}", file.cipher)));
    }
    let salt = hex::decode(&file.kdf.salt).map_err(|e| format(format!("salt: {e}")))?;
    let nonce = hex::decode(&file.nonce).map_err(|e| format(format!("nonce: {e}")))?;
    let sealed = hex::decode(&file.sealed).map_err(|e| format(format!("sealed: {e}")))?;
    if salt.len() < 16 || nonce.len() != 24 {
        return Err(format("salt or nonce has the wrong length".into()));
    }
    let params = KdfParams {
        memory_kib: file.kdf.memory_kib,
        iterations: file.kdf.iterations,
        parallelism: file.kdf.parallelism,
    };
    let key = derive_file_key(&params, passphrase, &salt)?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key.expose()));
    let aad = file.aad();
    cipher
        .decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &sealed,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| KeystoreError::WrongPassphrase {
            path: path.to_path_buf(),
        })
}

/// Opens a message sealed by [`hpke_seal`] with the X25519 seed `seed`.
pub fn hpke_open_with_seed(
    seed: &SecretKey,
    sealed: &HpkeSealed,
    info: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let (private, _) = HpkeKem::derive_keypair(seed.expose());
    let encapped = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(&sealed.encapped)
        .map_err(|e| KeystoreError::Crypto(format!("HPKE encapsulated key: {e}")))?;
    hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
        &OpModeR::Base,
        &private,
        &encapped,
        info,
        &sealed.ciphertext,
        aad,
    )
    .map(Zeroizing::new)
    .map_err(|e| KeystoreError::Crypto(format!("HPKE open failed: {e}")))
}

/// The X25519 public key of the HPKE seed `seed`.
pub fn hpke_public_of(seed: &SecretKey) -> [u8; 32] {
    let (_, public) = HpkeKem::derive_keypair(seed.expose());
    let mut out = [0u8; 32];
    out.copy_from_slice(&public.to_bytes());
    out
}

fn derive_file_key(
    params: &KdfParams,
    passphrase: &str,
    salt: &[u8],
) -> Result<SecretKey, KeystoreError> {
    let argon2 = params.argon2()?;
    let mut out = [0u8; 32];
    argon2
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| KeystoreError::Params(e.to_string()))?;
    let key = SecretKey::from_bytes(out);
    out.zeroize();
    Ok(key)
}

/// Writes `bytes` to a new file at `path`: temp file, fsync, hard link into place (fails
/// if `path` exists), remove the temp file, fsync the directory.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), KeystoreError> {
    let io = |source| KeystoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(io)?;
    let suffix: [u8; 8] = random_bytes()?;
    let tmp = dir.join(format!(".keystore-{}.tmp", hex::encode(suffix)));
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(KeystoreError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(io(e)),
    }
    sync_parent(path).map_err(io)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_open_round_trip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("keystore.json");
        let server = Id::of_content(b"slots");
        let keystore = Keystore::generate(server).expect("generate");
        keystore
            .save(&path, "correct horse", KdfParams::insecure_fast())
            .expect("save");
        let again = Keystore::open(&path, "correct horse").expect("open");
        assert_eq!(again.vault_slot(), keystore.vault_slot());
        assert_eq!(again.slots_server(), server);
        assert_eq!(again.root_key(), keystore.root_key());
        assert_eq!(again.hpke_public(), keystore.hpke_public());
        assert_eq!(
            keystore.signer().ed25519_slot(),
            Some(keystore.vault_slot())
        );

        let err = Keystore::open(&path, "wrong horse").expect_err("wrong passphrase");
        assert!(
            matches!(err, KeystoreError::WrongPassphrase { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("wrong passphrase"));

        // Never overwrites.
        let err = keystore
            .save(&path, "x", KdfParams::insecure_fast())
            .expect_err("exists");
        assert!(matches!(err, KeystoreError::AlreadyExists { .. }));

        // The secrets are not in the file.
        let text = fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&hex::encode(keystore.root_key().expose())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        Keystore::destroy(&path).expect("destroy");
        assert!(matches!(
            Keystore::open(&path, "correct horse"),
            Err(KeystoreError::NotFound { .. })
        ));
    }

    #[test]
    fn weakened_or_damaged_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.json");
        Keystore::generate(Id::of_content(b"s"))
            .expect("generate")
            .save(&path, "pw", KdfParams::insecure_fast())
            .expect("save");
        let original = fs::read_to_string(&path).expect("read");
        let mut file: serde_json::Value = serde_json::from_str(&original).expect("json");

        // Changing the parameters (even to other valid ones) breaks the AAD.
        file["kdf"]["iterations"] = 2.into();
        let tampered = dir.path().join("t.json");
        fs::write(&tampered, serde_json::to_vec(&file).expect("json")).expect("write");
        assert!(matches!(
            Keystore::open(&tampered, "pw"),
            Err(KeystoreError::WrongPassphrase { .. })
        ));
        // Absurd parameters are refused before any work.
        file["kdf"]["memory_kib"] = u32::MAX.into();
        fs::write(&tampered, serde_json::to_vec(&file).expect("json")).expect("write");
        assert!(matches!(
            Keystore::open(&tampered, "pw"),
            Err(KeystoreError::Params(_))
        ));
        // Garbage.
        fs::write(&tampered, b"not json").expect("write");
        assert!(matches!(
            Keystore::open(&tampered, "pw"),
            Err(KeystoreError::Format { .. })
        ));
        let mut other: serde_json::Value = serde_json::from_str(&original).expect("json");
        other["version"] = 99.into();
        fs::write(&tampered, serde_json::to_vec(&other).expect("json")).expect("write");
        let err = Keystore::open(&tampered, "pw").expect_err("version");
        assert!(err.to_string().contains("version 99"), "{err}");
    }

    #[test]
    fn default_parameters_work() {
        // One save/open with the real cost, so the defaults are known to be accepted.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.json");
        let k = Keystore::generate(Id::of_content(b"s")).expect("generate");
        k.save(&path, "pw", KdfParams::default()).expect("save");
        assert_eq!(
            Keystore::open(&path, "pw").expect("open").vault_slot(),
            k.vault_slot()
        );
    }

    #[test]
    fn hpke_seal_open() {
        let k = Keystore::generate(Id::of_content(b"s")).expect("generate");
        let sealed = hpke_seal(&k.hpke_public(), b"grant", b"aad", b"scope key").expect("seal");
        assert_eq!(sealed.encapped.len(), 32);
        let opened = k.hpke_open(&sealed, b"grant", b"aad").expect("open");
        assert_eq!(opened.as_slice(), b"scope key");
        assert!(k.hpke_open(&sealed, b"other", b"aad").is_err());
        let other = Keystore::generate(Id::of_content(b"s")).expect("generate");
        assert!(other.hpke_open(&sealed, b"grant", b"aad").is_err());
    }

    #[test]
    fn recovery_kit_restores_every_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kit = dir.path().join("kit.json");
        let k = Keystore::generate(Id::of_content(b"s")).expect("generate");
        let code = k
            .save_recovery_kit(&kit, KdfParams::insecure_fast())
            .expect("kit");
        let shown = code.as_str().to_string();
        assert_eq!(shown.len(), 39, "{shown}");
        assert_eq!(shown.split('-').count(), 8);
        assert!(
            shown
                .chars()
                .all(|c| c == '-' || c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
        assert!(
            !format!("{code:?}").contains(&shown[..4]),
            "Debug hides the code"
        );
        let text = fs::read_to_string(&kit).expect("read");
        assert!(text.contains(KIT_FORMAT));

        // Typed back in lower case, without dashes: the same keys.
        let typed = shown.replace('-', " ").to_lowercase();
        let back = Keystore::open_recovery_kit(&kit, &typed).expect("recover");
        assert_eq!(back.vault_slot(), k.vault_slot());
        assert_eq!(back.slots_server(), k.slots_server());
        assert_eq!(back.hpke_public(), k.hpke_public());
        assert_eq!(back.secrets.root_key.expose(), k.secrets.root_key.expose());

        let mut wrong = shown.clone().into_bytes();
        wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
        let wrong = String::from_utf8(wrong).expect("ascii");
        let err = Keystore::open_recovery_kit(&kit, &wrong).expect_err("wrong code");
        assert!(
            matches!(err, KeystoreError::WrongRecoveryCode { .. }),
            "{err}"
        );
        // A kit is not a keystore, and the other way round.
        assert!(matches!(
            Keystore::open(&kit, &shown),
            Err(KeystoreError::Format { .. })
        ));
        assert!(matches!(
            k.save_recovery_kit(&kit, KdfParams::insecure_fast()),
            Err(KeystoreError::AlreadyExists { .. })
        ));
        let other = k
            .save_recovery_kit(&dir.path().join("kit2.json"), KdfParams::insecure_fast())
            .expect("second kit");
        assert_ne!(other.as_str(), shown, "every kit has its own code");
    }
}
