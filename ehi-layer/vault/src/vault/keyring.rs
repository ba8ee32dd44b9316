//! The root key generations and the device keyring that carries them to the patient's
//! devices, reading a root of any generation, and keeping a handle in sync by watching
//! the vault slot. Listing, adding and removing devices is in `ehi_share::devices`.
//!
//! ## Root key generations and the device keyring
//! Generation 0 of the root's AEAD key is derived from the keystore's root key (every
//! device that ever joined has it). Removing a device creates generation `g + 1`: a
//! random key that seals every later root and audit entry (the envelope's epoch field
//! carries the generation). The keys of generations 1..=g+1 reach the remaining devices
//! through the **device keyring**: a slot (ed25519 seed `BLAKE3-derive_key("invariant
//! ehi-layer v1 device keyring slot", generation-0 root AEAD key)`) pointing at a blob
//! holding, for each device listed in the root, the keys HPKE-sealed to that device's
//! key (info `"invariant ehi-layer v1 device keyring"`, aad = keyring slot ‖
//! generation). A device meeting a root of a generation it lacks reads the keyring; the
//! removed device finds no entry sealed to it and gets [`EhiError::NotADevice`]. A
//! device joining later is added to the keyring by the device that lets it in.
//! The keyring blob is not an envelope: servers see how many devices there are (the
//! number of entries) and when the keyring changes, nothing else.
//!
//! After a removal commits, the emergency policy is re-published under the new
//! generation (`ehi_share::emergency`, [`DeviceRemoval::emergency_rekeyed`]). Vault
//! removal tombstones the keyring slot and unpins every keyring blob it ever held.

use super::*;
use crate::keystore::{HpkeSealed, hpke_open_with_seed, hpke_seal};
use crate::slotmove;
use serde::{Deserialize, Serialize};

use crate::keys::CONTEXT_KEYRING_SLOT;
/// HPKE `info` of keyring entries.
const KEYRING_INFO: &[u8] = b"invariant ehi-layer v1 device keyring";

/// The root's AEAD keys by generation, and the generation of the current root.
#[derive(Clone, Debug)]
pub(super) struct RootKeys {
    /// Generation 0 (derived from the keystore's root key).
    first: SecretKey,
    /// Generations 1.. (from the device keyring).
    later: BTreeMap<u32, SecretKey>,
    /// The generation of the current root (always one of the above).
    current: u32,
}

impl RootKeys {
    /// Generation 0 only.
    pub(super) fn new(generation0: SecretKey) -> RootKeys {
        RootKeys {
            first: generation0,
            later: BTreeMap::new(),
            current: 0,
        }
    }

    /// The key of `generation`.
    pub(super) fn get(&self, generation: u32) -> Option<SecretKey> {
        match generation {
            0 => Some(self.first.clone()),
            g => self.later.get(&g).cloned(),
        }
    }

    /// The generation new roots are sealed under, and its key.
    pub(super) fn current(&self) -> (u32, SecretKey) {
        match self.later.get(&self.current) {
            Some(key) => (self.current, key.clone()),
            None => (0, self.first.clone()),
        }
    }

    /// Makes `generation` (which must be held) current.
    fn set_current(&mut self, generation: u32) {
        if generation == 0 || self.later.contains_key(&generation) {
            self.current = generation;
        }
    }

    fn insert(&mut self, generation: u32, key: SecretKey) {
        if generation > 0 {
            self.later.entry(generation).or_insert(key);
        }
    }

    fn newest(&self) -> u32 {
        self.later.keys().next_back().copied().unwrap_or(0)
    }

    /// Every generation held, the current one first, then the others newest first.
    pub(super) fn generations(&self) -> Vec<u32> {
        let mut out = vec![self.current];
        out.extend(
            self.later
                .keys()
                .rev()
                .copied()
                .chain(std::iter::once(0))
                .filter(|g| *g != self.current),
        );
        out
    }

    /// Generations 1.. (what the keyring carries).
    fn later(&self) -> Vec<(u32, SecretKey)> {
        self.later.iter().map(|(g, k)| (*g, k.clone())).collect()
    }
}

/// The keyring blob (postcard, format 1).
#[derive(Serialize, Deserialize)]
struct Keyring {
    format: u32,
    generation: u32,
    entries: Vec<HpkeSealed>,
}

/// What one keyring entry seals: the root keys of generations 1..=generation.
#[derive(Serialize, Deserialize)]
struct KeyringKeys {
    format: u32,
    keys: Vec<(u32, SecretKey)>,
}

fn keyring_aad(slot: &Id, generation: u32) -> Vec<u8> {
    let mut aad = slot.as_bytes().to_vec();
    aad.extend_from_slice(&generation.to_le_bytes());
    aad
}

/// A change seen by [`Vault::watch`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WatchEvent {
    /// The new root's commit counter.
    pub generation: u64,
    /// The new root's address.
    pub root: Id,
}

impl Vault {
    /// Gives the keys of every later root key generation to `devices` too (after a
    /// device joined); nothing to do while the vault is at generation 0.
    pub async fn extend_keyring(&self, state: &State, devices: &[DeviceRecord]) -> Result<()> {
        if state.root_keys.newest() == 0 {
            return Ok(());
        }
        self.publish_keyring(&state.root_keys, devices).await
    }

    /// Starts a new root key generation, given to `devices` only (after a device was
    /// removed): publishes the keyring, makes the generation current in `state` and
    /// returns it.
    pub async fn new_root_generation(
        &self,
        state: &mut State,
        devices: &[DeviceRecord],
    ) -> Result<u32> {
        let generation = state
            .root_keys
            .newest()
            .checked_add(1)
            .ok_or_else(|| EhiError::Crypto("root key generations exhausted".into()))?;
        let mut keys = state.root_keys.clone();
        keys.insert(generation, SecretKey::random()?);
        keys.set_current(generation);
        self.publish_keyring(&keys, devices).await?;
        state.root_keys = keys;
        Ok(generation)
    }

    #[doc(hidden)]
    pub fn keyring_slot(&self) -> Result<(SlotSigner, Id)> {
        slotmove::slot_of(self.root_key.derive(CONTEXT_KEYRING_SLOT).expose())
    }

    /// Fetches and opens the root at `head`, reading the device keyring first when the
    /// root is sealed under a generation this device does not hold yet. Sets the
    /// current generation to the root's.
    pub(super) async fn fetch_root(
        &self,
        state: &mut State,
        head: Id,
    ) -> Result<(Zeroizing<Vec<u8>>, Vec<Id>)> {
        let bytes = self.net.get(&head, "the vault root").await?;
        let generation = seal::epoch_of(&bytes)
            .ok_or_else(|| EhiError::corrupt("the vault root", "not an ehi-layer envelope"))?;
        if state.root_keys.get(generation).is_none() {
            self.load_keyring(state, generation).await?;
        }
        let keys = state.root_keys.clone();
        let opened = self
            .fetch_object(head, Kind::Root, "vault", "the vault root", move |g| {
                keys.get(g)
            })
            .await?;
        state.root_keys.set_current(generation);
        Ok(opened)
    }

    /// Reads the keyring and takes the root keys sealed to this device.
    async fn load_keyring(&self, state: &mut State, wanted: u32) -> Result<()> {
        let (_, slot) = self.keyring_slot()?;
        let not_device = || {
            EhiError::NotADevice(format!(
                "the vault root is sealed under root key generation {wanted}, which was not                  given to this device (it was removed, or not yet added by the device that                  let it in)"
            ))
        };
        let Some(address) = slotmove::read(&self.net, slot, "device keyring").await? else {
            return Err(not_device());
        };
        let blob = self.net.get(&address, "the device keyring").await?;
        let keyring: Keyring = postcard::from_bytes(&blob)
            .map_err(|e| EhiError::corrupt("the device keyring", format!("{e}")))?;
        if keyring.format != 1 {
            return Err(EhiError::UnsupportedFormat {
                what: "device keyring",
                found: keyring.format,
                supported: 1,
            });
        }
        let aad = keyring_aad(&slot, keyring.generation);
        for entry in &keyring.entries {
            let Ok(plain) = hpke_open_with_seed(&self.hpke_seed, entry, KEYRING_INFO, &aad) else {
                continue;
            };
            let keys: KeyringKeys = postcard::from_bytes(&plain)
                .map_err(|e| EhiError::corrupt("the device keyring", format!("{e}")))?;
            for (generation, key) in keys.keys {
                state.root_keys.insert(generation, key);
            }
            break;
        }
        if state.root_keys.get(wanted).is_none() {
            return Err(not_device());
        }
        Ok(())
    }

    /// Writes the keyring for `devices` with every root key generation above 0 in
    /// `keys`, and points the keyring slot at it (before the root that needs it).
    async fn publish_keyring(&self, keys: &RootKeys, devices: &[DeviceRecord]) -> Result<()> {
        let (signer, slot) = self.keyring_slot()?;
        let generation = keys.newest();
        let payload = Zeroizing::new(format::encode(
            &KeyringKeys {
                format: 1,
                keys: keys.later(),
            },
            "device keyring",
        )?);
        let aad = keyring_aad(&slot, generation);
        let mut entries = Vec::with_capacity(devices.len());
        for device in devices {
            entries.push(hpke_seal(
                &device.hpke_public,
                KEYRING_INFO,
                &aad,
                &payload,
            )?);
        }
        let bytes = format::encode(
            &Keyring {
                format: 1,
                generation,
                entries,
            },
            "device keyring",
        )?;
        let blob = Blob {
            address: Id::of_content(&bytes),
            bytes: bytes::Bytes::from(bytes),
        };
        self.net.put(&blob).await?;
        self.net.pin(&[blob.address]).await?;
        slotmove::point(&self.net, &signer, slot, blob.address, "device keyring").await
    }

    /// The emergency policy's keys of every root key generation this device holds, the
    /// current generation first, then the older ones newest first (see
    /// `ehi_share::emergency`).
    pub async fn policy_keys(&self) -> Vec<crate::keys::PolicyKeys> {
        let state = self.state.lock().await;
        self.policy_keys_of(&state)
    }

    /// [`Vault::policy_keys`] with the state already locked.
    pub fn policy_keys_of(&self, state: &State) -> Vec<crate::keys::PolicyKeys> {
        state
            .root_keys
            .generations()
            .into_iter()
            .filter_map(|g| match g {
                0 => Some(self.policy0.clone()),
                g => state
                    .root_keys
                    .get(g)
                    .map(|k| crate::keys::PolicyKeys::of_generation(&k)),
            })
            .collect()
    }

    /// Keeps this handle in sync with the other devices: follows the vault slot through
    /// the slots server's watch stream and re-reads the vault (only changed manifests)
    /// each time the slot moves, calling `on_change` after each refresh. Reconnects when
    /// the stream ends; returns only on an error reading the vault.
    pub async fn watch<F>(&self, mut on_change: F) -> Result<()>
    where
        F: FnMut(WatchEvent) + Send,
    {
        loop {
            let stream = match self.net.slots().watch(&self.slot).await {
                Ok(Some(stream)) => Some(stream),
                Ok(None) => return Err(EhiError::NoVault { slot: self.slot }),
                Err(e) => {
                    tracing::warn!(error = %e, "watching the vault slot; retrying");
                    None
                }
            };
            if let Some(mut stream) = stream {
                while let Some(item) = stream.next().await {
                    let Ok(slot_state) = item else { break };
                    let mut state = self.state.lock().await;
                    if slot_state.address == state.root_head {
                        continue;
                    }
                    self.refresh_state(&mut state).await?;
                    let event = WatchEvent {
                        generation: state.root.generation,
                        root: state.root_head,
                    };
                    drop(state);
                    on_change(event);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
