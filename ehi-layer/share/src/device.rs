//! The patient's devices: pairing a new device with a one-time invite code, listing and
//! removing devices ([`crate::devices()`], [`crate::remove_device`]), and
//! keeping devices in sync ([`ehi_vault::Vault::watch`]).
//!
//! ## Pairing (`ehi device invite` / `ehi device join <code>`)
//! The inviting device makes a **code**: `ehi1-<expiry ‖ secret>-<slots server>`, where
//! the secret is 128 random bits, the expiry a Unix time in seconds (default 10 minutes
//! ahead) and the slots server the vault's (hex). Everything else is derived from the
//! whole code `m` with BLAKE3 `derive_key`:
//! - the **invite slot**'s ed25519 seed (`"invariant ehi-layer v1 device invite slot"`),
//! - an AEAD key (`"invariant ehi-layer v1 device invite"`) sealing the three messages
//!   below (envelope kind `Device`, one context string per message, so one cannot pass
//!   for another), which therefore also authenticates them: only a holder of the code
//!   can write a message the other side accepts.
//!
//! Protocol, all through the invite slot (no server sees the secret, which never leaves
//! the two devices):
//! 1. The inviter registers the invite slot pointing at a sealed **offer** (its expiry).
//! 2. The joiner refuses an expired code locally, reads the slot (unknown → wrong code;
//!    tombstone, request or response → already used or expired), makes a fresh HPKE
//!    (X25519) key for itself, and compare-and-swaps the slot from the offer to a sealed
//!    **request** carrying its HPKE public key. Only one joiner can win the swap.
//! 3. The inviter (polling the slot until the expiry) opens the request and
//!    compare-and-swaps the slot to a sealed **response**: the patient's signing seed,
//!    root key and slots server, HPKE-sealed to the joiner's key (info
//!    `"invariant ehi-layer v1 device join"`, aad = invite slot ‖ joiner key), then adds
//!    the joiner's HPKE key to the root's `devices` (with an audit entry).
//! 4. The joiner opens the response, builds its keystore (the patient's keys plus its
//!    own HPKE key) and points the slot at the public tombstone: the code is spent. An
//!    inviter whose code expires unanswered tombstones the slot too.
//!
//! Both sides print the new device's id (BLAKE3 of its HPKE key, 8 bytes hex) so the
//! patient can compare them.
//!
//! ## Limits
//! - The code is a **bearer secret** for its lifetime: whoever reads it first (over the
//!   patient's shoulder, from a screenshot) can join in the patient's place. Keep the
//!   lifetime short; compare the device ids both sides print. There is no PAKE: a short,
//!   typeable code would need one; this code is long (copy and paste) instead.
//! - Servers see: a new slot, three bucket-sized opaque blobs and a tombstone, and the
//!   timing; not the secret, the joiner's key (inside the AEAD), nor the keys.
//!
//! ## Removing a device, and its limits
//! [`crate::remove_device`] drops the device from the root, creates a new **root
//! key generation** (a random key; the root envelope's epoch field carries the
//! generation) that only the remaining devices receive, HPKE-sealed to each of their
//! keys in the **device keyring** slot, and rotates **every scope** to a new key epoch
//! (manifests and every grant re-sealed), like a revocation. Every later root, manifest,
//! resource version and audit entry is sealed under keys the removed device never
//! had: it gets [`EhiError::NotADevice`] when it opens the vault, and the stored bytes
//! do not open with its keys (tests/devices.rs checks the stored root). What it cannot
//! do:
//! - take back what the removed device already read (the data of earlier epochs, whose
//!   blobs stay on storage unless re-encrypted by a revocation with `reencrypt`);
//! - take away the **signing key**: the vault slot's id is its public key, so a removed
//!   device that kept its keystore can still move the vault slot, the scope and grant
//!   slots whose seeds it saw, and the keyring slot (vandalism: roll back or replace,
//!   which the remaining devices notice as an unopenable or older vault), but not write
//!   a root they accept with the new data in it. Ending that needs a new vault slot
//!   (export, new vault, import);
//! - hide the emergency access log: the emergency **policy** is re-published under the
//!   new root key generation (its old slot tombstoned, [`crate::emergency`]), so the
//!   removed device cannot read it nor a policy set later; but the holder's **log** of
//!   uses keeps its slot and key (the holder has them in its ticket and is not there
//!   to take new ones), so a removed device that kept the old policy can still read
//!   that log (who, when, why; no health data) until the patient sets a new policy.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use zeroize::{Zeroize, Zeroizing};

use invariant_spec::Id;

use ehi_vault::error::{EhiError, Result};
use ehi_vault::format::DeviceRecord;
use ehi_vault::keys::{SecretKey, random_bytes};
use ehi_vault::keystore::{HpkeSealed, Keystore, hpke_open_with_seed, hpke_public_of, hpke_seal};
use ehi_vault::network::Network;
use ehi_vault::seal::{self, Blob, Kind, Opened};
use ehi_vault::slotmove;
use ehi_vault::slotmove::{TOMBSTONE, tombstone_address};
use ehi_vault::time::{instant, now_ms};
use ehi_vault::vault::Vault;

/// BLAKE3 context: the invite slot's ed25519 seed, from the code.
pub const CONTEXT_INVITE_SLOT: &str = "invariant ehi-layer v1 device invite slot";
/// BLAKE3 context: the AEAD key of the invite messages, from the code.
pub const CONTEXT_INVITE: &str = "invariant ehi-layer v1 device invite";
/// HPKE `info` of the keys sealed to the joining device.
pub const JOIN_INFO: &[u8] = b"invariant ehi-layer v1 device join";
pub use ehi_vault::keys::CONTEXT_KEYRING_SLOT;
/// Prefix of a code.
const CODE_PREFIX: &str = "ehi1";
/// Default lifetime of a code.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// How often the waiting side looks at the invite slot.
const POLL: Duration = Duration::from_millis(100);

const OFFER: &str = "invite offer";
const REQUEST: &str = "invite request";
const RESPONSE: &str = "invite response";

/// A device as listed (no key material).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// Short id: BLAKE3 of the HPKE key, 8 bytes hex.
    pub id: String,
    /// The device's HPKE (X25519) public key, hex.
    pub hpke_public: String,
    /// When it joined, ms since the Unix epoch.
    pub added_ms: u64,
}

impl DeviceInfo {
    pub(crate) fn of(record: &DeviceRecord) -> DeviceInfo {
        DeviceInfo {
            id: device_id(&record.hpke_public),
            hpke_public: hex::encode(record.hpke_public),
            added_ms: record.added_ms,
        }
    }
}

/// The short id of the device with HPKE key `hpke_public`.
pub fn device_id(hpke_public: &[u8; 32]) -> String {
    hex::encode(&blake3::hash(hpke_public).as_bytes()[..8])
}

/// The id of this device (from its keystore).
pub fn this_device(keystore: &Keystore) -> String {
    device_id(&keystore.hpke_public())
}

/// The device keyring slot of the vault of `keystore` (for tests and diagnostics).
pub fn keyring_slot(keystore: &Keystore) -> Result<Id> {
    let seed = keystore
        .root_key()
        .derive(ehi_vault::keys::CONTEXT_ROOT)
        .derive(CONTEXT_KEYRING_SLOT);
    Ok(slotmove::slot_of(seed.expose())?.1)
}

/// Whether the root key this keystore holds itself (generation 0) opens the vault root
/// blob `blob`. For tests and diagnostics: after [`crate::remove_device`] the
/// roots are sealed under a later generation that only the remaining devices receive,
/// so this is false for every new root, whoever asks (devices open them through the
/// keyring, see `vault/keyring.rs`).
pub fn opens_root(keystore: &Keystore, blob: &[u8]) -> bool {
    let key = keystore.root_key().derive(ehi_vault::keys::CONTEXT_ROOT);
    seal::open_object(&key, Kind::Root, "vault", blob, "a vault root").is_ok()
}

/// A parsed invite code.
pub struct InviteCode {
    expires_s: u32,
    secret: [u8; 16],
    slots_server: Id,
}

impl Drop for InviteCode {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl std::fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteCode")
            .field("expires", &instant(self.expires_ms()))
            .finish_non_exhaustive()
    }
}

impl InviteCode {
    /// Parses `ehi1-<40 hex>-<64 hex>`.
    pub fn parse(code: &str) -> Result<InviteCode> {
        let bad = || EhiError::Invite("this is not an invite code (ehi1-…-…)".into());
        let mut parts = code.trim().split('-');
        let (Some(prefix), Some(body), Some(server), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if prefix != CODE_PREFIX {
            return Err(bad());
        }
        let body = Zeroizing::new(hex::decode(body).map_err(|_| bad())?);
        if body.len() != 20 {
            return Err(bad());
        }
        let server: [u8; 32] = hex::decode(server)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        let mut expires = [0u8; 4];
        expires.copy_from_slice(&body[..4]);
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&body[4..]);
        Ok(InviteCode {
            expires_s: u32::from_be_bytes(expires),
            secret,
            slots_server: Id::from_bytes(server),
        })
    }

    /// The code as text.
    pub fn text(&self) -> String {
        let mut body = Zeroizing::new(Vec::with_capacity(20));
        body.extend_from_slice(&self.expires_s.to_be_bytes());
        body.extend_from_slice(&self.secret);
        format!(
            "{CODE_PREFIX}-{}-{}",
            hex::encode(&*body),
            hex::encode(self.slots_server.as_bytes())
        )
    }

    /// The slots server of the vault (connect the joining device's network to it).
    pub fn slots_server(&self) -> Id {
        self.slots_server
    }

    /// When the code expires, ms since the Unix epoch.
    pub fn expires_ms(&self) -> u64 {
        u64::from(self.expires_s) * 1000
    }

    fn material(&self) -> Zeroizing<Vec<u8>> {
        let mut m = Zeroizing::new(Vec::with_capacity(64));
        m.extend_from_slice(b"ehi-invite v1");
        m.extend_from_slice(&self.expires_s.to_be_bytes());
        m.extend_from_slice(&self.secret);
        m.extend_from_slice(self.slots_server.as_bytes());
        m
    }

    fn slot(&self) -> Result<(invariant_spec::slots::SlotSigner, Id)> {
        let seed = Zeroizing::new(blake3::derive_key(CONTEXT_INVITE_SLOT, &self.material()));
        slotmove::slot_of(&seed)
    }

    fn key(&self) -> SecretKey {
        SecretKey::from_bytes(blake3::derive_key(CONTEXT_INVITE, &self.material()))
    }
}

#[derive(Serialize, Deserialize)]
struct Offer {
    format: u32,
    expires_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Request {
    format: u32,
    joiner_hpke: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Response {
    format: u32,
    sealed: HpkeSealed,
}

fn seal_message<T: Serialize>(key: &SecretKey, context: &str, message: &T) -> Result<Blob> {
    let bytes = Zeroizing::new(ehi_vault::format::encode(message, "invite message")?);
    let sealed = seal::seal_object(key, Kind::Device, context, 0, &bytes)?;
    if !sealed.chunks.is_empty() {
        return Err(EhiError::InvalidArgument("invite message too large".into()));
    }
    Ok(sealed.head)
}

/// Opens `blob` as the message of `context`; `None` when it is not one (another message,
/// or not sealed with this code's key).
fn open_message<T: for<'de> Deserialize<'de>>(
    key: &SecretKey,
    context: &str,
    blob: &[u8],
) -> Option<T> {
    match seal::open_object(key, Kind::Device, context, blob, "an invite message") {
        Ok(Opened::Inline(bytes)) => postcard::from_bytes(&bytes).ok(),
        _ => None,
    }
}

fn join_aad(slot: &Id, joiner: &[u8; 32]) -> Vec<u8> {
    let mut aad = slot.as_bytes().to_vec();
    aad.extend_from_slice(joiner);
    aad
}

async fn tombstone(net: &Network, signer: &invariant_spec::slots::SlotSigner, slot: Id, from: Id) {
    let blob = Blob {
        address: tombstone_address(),
        bytes: bytes::Bytes::from_static(TOMBSTONE),
    };
    if let Err(e) = net.put(&blob).await {
        tracing::warn!(error = %e, "storing the tombstone");
        return;
    }
    if let Err(e) = slotmove::swap(net, signer, slot, from, blob.address, "invite").await {
        tracing::warn!(error = %e, "spending the invite slot");
    }
}

/// An open invitation on the inviting device.
#[derive(Debug)]
pub struct Invite {
    code: InviteCode,
    offer: Id,
}

impl Invite {
    /// Publishes an invitation valid for `ttl` (at most one hour) and returns it; show
    /// [`Invite::code`] to the patient, then call [`Invite::complete`].
    pub async fn create(vault: &Vault, ttl: Duration) -> Result<Invite> {
        if ttl.is_zero() || ttl > Duration::from_secs(3600) {
            return Err(EhiError::InvalidArgument(
                "an invite lives between 1 second and 1 hour".into(),
            ));
        }
        let expires_ms = now_ms().saturating_add(ttl.as_millis() as u64);
        let expires_s = u32::try_from(expires_ms.div_ceil(1000))
            .map_err(|_| EhiError::InvalidArgument("the clock is beyond 2106".into()))?;
        let code = InviteCode {
            expires_s,
            secret: random_bytes()?,
            slots_server: vault.network().slots_server(),
        };
        let net = vault.network();
        let offer = seal_message(
            &code.key(),
            OFFER,
            &Offer {
                format: 1,
                expires_ms: code.expires_ms(),
            },
        )?;
        net.put(&offer).await?;
        let (signer, slot) = code.slot()?;
        let registered = net
            .slots()
            .register(&signer.register_request(slot, offer.address))
            .await
            .map_err(|e| EhiError::network("registering the invite slot", e))?;
        if !registered {
            return Err(EhiError::Invite("the invite slot exists already".into()));
        }
        Ok(Invite {
            code,
            offer: offer.address,
        })
    }

    /// The code to type or paste on the new device.
    pub fn code(&self) -> String {
        self.code.text()
    }

    /// When the code expires, ms since the Unix epoch.
    pub fn expires_ms(&self) -> u64 {
        self.code.expires_ms()
    }

    /// Waits (until the code expires) for a device to join with the code, sends it the
    /// patient's keys sealed to its HPKE key, and adds it to the vault's devices.
    pub async fn complete(self, vault: &Vault, keystore: &Keystore) -> Result<DeviceInfo> {
        let net = vault.network();
        let (signer, slot) = self.code.slot()?;
        let key = self.code.key();
        loop {
            let current = slotmove::read(net, slot, "invite").await?;
            match current {
                Some(address) if address == self.offer => {}
                Some(address) if address == tombstone_address() => {
                    return Err(EhiError::Invite("the code was spent".into()));
                }
                Some(address) => {
                    let blob = net.get(&address, "a join request").await?;
                    let Some(request) = open_message::<Request>(&key, REQUEST, &blob) else {
                        tombstone(net, &signer, slot, address).await;
                        return Err(EhiError::Invite(
                            "the invite slot holds something that is not a join request \
                             sealed with this code; the code is spent"
                                .into(),
                        ));
                    };
                    let transfer = keystore.transfer_secrets()?;
                    let sealed = hpke_seal(
                        &request.joiner_hpke,
                        JOIN_INFO,
                        &join_aad(&slot, &request.joiner_hpke),
                        &transfer,
                    )?;
                    let response = seal_message(&key, RESPONSE, &Response { format: 1, sealed })?;
                    net.put(&response).await?;
                    if !slotmove::swap(net, &signer, slot, address, response.address, "invite")
                        .await?
                    {
                        return Err(EhiError::Invite(
                            "the invite slot moved while answering".into(),
                        ));
                    }
                    return crate::add_device(vault, request.joiner_hpke).await;
                }
                None => return Err(EhiError::Invite("the invite slot disappeared".into())),
            }
            if now_ms() >= self.code.expires_ms() {
                tombstone(net, &signer, slot, self.offer).await;
                return Err(EhiError::Invite(format!(
                    "the code expired at {} before a device joined",
                    instant(self.code.expires_ms())
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Joins the vault of an invite `code` from a new device: returns the keystore for this
/// device (the patient's keys and a fresh HPKE key of its own), for the caller to save.
/// `net` must use the code's slots server ([`InviteCode::slots_server`]). Refuses an
/// expired, spent, unknown or tampered code.
pub async fn join(net: &Network, code: &str) -> Result<Keystore> {
    let code = InviteCode::parse(code)?;
    if now_ms() >= code.expires_ms() {
        return Err(EhiError::Invite(format!(
            "the code expired at {}; ask for a new one",
            instant(code.expires_ms())
        )));
    }
    if net.slots_server() != code.slots_server() {
        return Err(EhiError::InvalidArgument(format!(
            "connect to the code's slots server {}",
            code.slots_server()
        )));
    }
    let (signer, slot) = code.slot()?;
    let key = code.key();
    let used = || EhiError::Invite("the code was already used (or expired unanswered)".into());
    let offer = match slotmove::read(net, slot, "invite").await? {
        None => {
            return Err(EhiError::Invite(
                "no invitation matches this code (check it, or ask for a new one)".into(),
            ));
        }
        Some(address) if address == tombstone_address() => return Err(used()),
        Some(address) => address,
    };
    let blob = net.get(&offer, "the invitation").await?;
    let Some(offered) = open_message::<Offer>(&key, OFFER, &blob) else {
        return Err(used());
    };
    if now_ms() >= offered.expires_ms {
        return Err(EhiError::Invite("the invitation expired".into()));
    }
    let hpke_seed = SecretKey::random()?;
    let joiner_hpke = hpke_public_of(&hpke_seed);
    let request = seal_message(
        &key,
        REQUEST,
        &Request {
            format: 1,
            joiner_hpke,
        },
    )?;
    net.put(&request).await?;
    if !slotmove::swap(net, &signer, slot, offer, request.address, "invite").await? {
        return Err(used());
    }
    // Wait for the inviter's answer (it answers only before the expiry).
    let deadline = offered.expires_ms.saturating_add(10_000);
    loop {
        match slotmove::read(net, slot, "invite").await? {
            Some(address) if address == request.address => {}
            Some(address) if address == tombstone_address() => {
                return Err(EhiError::Invite(
                    "the inviting device gave up (the code expired)".into(),
                ));
            }
            Some(address) => {
                let blob = net.get(&address, "the invitation's answer").await?;
                let Some(response) = open_message::<Response>(&key, RESPONSE, &blob) else {
                    return Err(EhiError::Invite(
                        "the answer is not sealed with this code; refusing it".into(),
                    ));
                };
                let transfer = hpke_open_with_seed(
                    &hpke_seed,
                    &response.sealed,
                    JOIN_INFO,
                    &join_aad(&slot, &joiner_hpke),
                )?;
                let keystore = Keystore::from_transfer(&transfer, hpke_seed)?;
                tombstone(net, &signer, slot, address).await;
                return Ok(keystore);
            }
            None => return Err(EhiError::Invite("the invite slot disappeared".into())),
        }
        if now_ms() >= deadline {
            return Err(EhiError::Invite(
                "the inviting device did not answer before the code expired".into(),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_bad_codes_are_refused() {
        let code = InviteCode {
            expires_s: 1_900_000_000,
            secret: [7; 16],
            slots_server: Id::of_content(b"slots"),
        };
        let text = code.text();
        let back = InviteCode::parse(&text).expect("parse");
        assert_eq!(back.text(), text);
        assert_eq!(back.expires_ms(), 1_900_000_000_000);
        assert_eq!(back.slot().expect("slot").1, code.slot().expect("slot").1);
        for bad in [
            "",
            "ehi1",
            "ehi2-00-00",
            &text[..text.len() - 2],
            &text.replace("ehi1", "ehi0"),
        ] {
            assert!(
                matches!(InviteCode::parse(bad), Err(EhiError::Invite(_))),
                "{bad}"
            );
        }
        // Changing the expiry changes the slot and key (it is bound in).
        let other = InviteCode {
            expires_s: 1_900_000_001,
            secret: [7; 16],
            slots_server: Id::of_content(b"slots"),
        };
        assert_ne!(other.slot().expect("slot").1, code.slot().expect("slot").1);
        assert_ne!(other.key(), code.key());
        assert!(!format!("{code:?}").contains("0707"));
    }
}
