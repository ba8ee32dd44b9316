//! Signed, padded HPKE "letters": the envelope shared by consent requests and decisions
//! ([`crate::consent`]) and by grant channel messages ([`crate::contribution`]).
//!
//! ```text
//! blob = magic (3) ‖ version 1 ‖ HPKE encapsulated key (32) ‖ HPKE ciphertext (+16 tag)
//! plaintext = length (u32 LE) ‖ postcard(Signed { payload, signature }) ‖ zeros
//! ```
//! HPKE is RFC 9180 base mode (`DHKEM(X25519, HKDF-SHA256)`, HKDF-SHA256,
//! ChaCha20-Poly1305, [`ehi_vault::keystore::hpke_seal`]); `info` names the letter kind and
//! `aad` binds the slot it is posted to, so a letter cannot be replayed into another
//! slot. The plaintext is padded to a power of two of at least `min` bytes, so servers
//! learn only a size bucket. The ed25519 signature is **inside** the ciphertext:
//! servers cannot link a letter to its signer by trying keys.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use invariant_spec::Id;
use invariant_spec::slots::{Previous, RegisterRequest};

use ehi_vault::error::{EhiError, KeystoreError, Result};
use ehi_vault::keystore::{HpkeSealed, hpke_seal};
use ehi_vault::network::Network;
use ehi_vault::seal::Blob;
use ehi_vault::slotmove;

/// Letter envelope version.
const VERSION: u8 = 1;
/// Largest letter accepted (one storage blob).
pub(crate) const MAX_LETTER: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
struct Signed {
    payload: Vec<u8>,
    signature: Vec<u8>,
}

/// The message a letter's signature covers: `domain ‖ context ‖ payload`.
fn message(domain: &[u8], context: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + context.len() + payload.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(context);
    m.extend_from_slice(payload);
    m
}

/// What is needed to seal a letter.
pub(crate) struct Seal<'a> {
    pub magic: &'a [u8; 3],
    pub recipient: &'a [u8; 32],
    pub info: &'a [u8],
    pub aad: &'a [u8],
    pub domain: &'a [u8],
    pub min_padded: usize,
}

/// Signs `payload` with `signer` (over `domain ‖ context ‖ payload`) and seals it.
pub(crate) fn seal(
    how: &Seal<'_>,
    signer: &SigningKey,
    context: &[u8],
    payload: &[u8],
) -> Result<Vec<u8>> {
    let signature = signer
        .sign(&message(how.domain, context, payload))
        .to_bytes()
        .to_vec();
    let signed = Zeroizing::new(ehi_vault::format::encode(
        &Signed {
            payload: payload.to_vec(),
            signature,
        },
        "signed letter",
    )?);
    let mut padded_len = how.min_padded.max(64);
    while padded_len < signed.len() + 4 {
        padded_len *= 2;
    }
    let mut plaintext = Zeroizing::new(vec![0u8; padded_len]);
    let len = u32::try_from(signed.len())
        .map_err(|_| EhiError::InvalidArgument("letter too large".into()))?;
    plaintext[..4].copy_from_slice(&len.to_le_bytes());
    plaintext[4..4 + signed.len()].copy_from_slice(&signed);
    let sealed = hpke_seal(how.recipient, how.info, how.aad, &plaintext)?;
    let mut out = Vec::with_capacity(4 + sealed.encapped.len() + sealed.ciphertext.len());
    out.extend_from_slice(how.magic);
    out.push(VERSION);
    out.extend_from_slice(&sealed.encapped);
    out.extend_from_slice(&sealed.ciphertext);
    if out.len() > MAX_LETTER {
        return Err(EhiError::InvalidArgument(format!(
            "the message is {} bytes sealed; at most {MAX_LETTER} fit in one blob",
            out.len()
        )));
    }
    Ok(out)
}

/// Opens a letter with `open` (the recipient's HPKE key) and returns the signed payload
/// and its signature, unverified: call [`verify`] once the signer is known. `what`
/// names the letter in errors.
pub(crate) fn open(
    magic: &[u8; 3],
    what: &str,
    blob: &[u8],
    open: impl FnOnce(&HpkeSealed) -> std::result::Result<Zeroizing<Vec<u8>>, KeystoreError>,
) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>)> {
    if blob.len() < 4 + 32 + 16 || &blob[..3] != magic {
        return Err(EhiError::corrupt(
            what,
            format!(
                "not a sealed {} message",
                String::from_utf8_lossy(magic).to_ascii_lowercase()
            ),
        ));
    }
    if blob[3] != VERSION {
        return Err(EhiError::UnsupportedFormat {
            what: "sealed message",
            found: u32::from(blob[3]),
            supported: u32::from(VERSION),
        });
    }
    let sealed = HpkeSealed {
        encapped: blob[4..36].to_vec(),
        ciphertext: blob[36..].to_vec(),
    };
    let plaintext = open(&sealed).map_err(|_| {
        EhiError::corrupt(
            what,
            "it does not open with the recipient's key (altered in transit, or sealed to \
             someone else)",
        )
    })?;
    let len = plaintext
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| EhiError::corrupt(what, "too short"))? as usize;
    let signed_bytes = plaintext
        .get(4..4usize.saturating_add(len))
        .ok_or_else(|| EhiError::corrupt(what, "its length field exceeds the message"))?;
    let signed: Signed = postcard::from_bytes(signed_bytes)
        .map_err(|e| EhiError::corrupt(what, format!("does not decode: {e}")))?;
    Ok((Zeroizing::new(signed.payload), signed.signature))
}

/// Checks a letter's signature by `signer` (ed25519 public key).
pub(crate) fn verify(
    what: &str,
    who: &str,
    signer: &[u8; 32],
    domain: &[u8],
    context: &[u8],
    payload: &[u8],
    signature: &[u8],
) -> Result<()> {
    let key = VerifyingKey::from_bytes(signer)
        .map_err(|e| EhiError::corrupt(what, format!("{who}'s key: {e}")))?;
    let signature = <[u8; 64]>::try_from(signature)
        .map_err(|_| EhiError::corrupt(what, "the signature is not 64 bytes"))?;
    key.verify(
        &message(domain, context, payload),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| {
        EhiError::corrupt(
            what,
            format!("{who}'s signature does not verify (forged, or signed by another key)"),
        )
    })
}

/// Decodes a postcard payload whose first field is a `u32` format number.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    kind: &'static str,
    supported: u32,
    bytes: &[u8],
) -> Result<T> {
    let (format, _) = postcard::take_from_bytes::<u32>(bytes)
        .map_err(|e| EhiError::corrupt(what, format!("no format number: {e}")))?;
    if format != supported {
        return Err(EhiError::UnsupportedFormat {
            what: kind,
            found: format,
            supported,
        });
    }
    postcard::from_bytes(bytes)
        .map_err(|e| EhiError::corrupt(what, format!("payload does not decode: {e}")))
}

/// Registers a fresh **open** slot (signature scheme `none`, random id) at a random
/// 1 KiB start blob, so that anyone who knows the id may append to it. Returns the slot
/// and the start address. Used for the consent inbox and an app's reply slot.
pub(crate) async fn new_open_slot(net: &Network) -> Result<(Id, Id)> {
    let mut start = vec![0u8; 1024];
    ehi_vault::keys::fill_random(&mut start)?;
    let blob = Blob {
        address: Id::of_content(&start),
        bytes: bytes::Bytes::from(start),
    };
    net.put(&blob).await?;
    net.pin(&[blob.address]).await?;
    let slot = Id::from_bytes(ehi_vault::keys::random_bytes()?);
    let registered = net
        .slots()
        .register(&RegisterRequest::unsigned(slot, blob.address))
        .await
        .map_err(|e| EhiError::network("registering an open slot", e))?;
    if !registered {
        return Err(EhiError::Crypto("a random slot id was taken".into()));
    }
    Ok((slot, blob.address))
}

/// Stores `bytes` and appends its address to the open slot `slot` (compare-and-swap
/// from whatever it holds; retried on conflict). `what` names the slot in errors; a
/// slot that does not exist is [`EhiError::NotFound`].
pub(crate) async fn post(net: &Network, slot: Id, bytes: Vec<u8>, what: &str) -> Result<Id> {
    let address = store(net, bytes).await?;
    append(net, slot, address, what).await
}

/// Stores and pins `bytes` (a letter to post later with [`append`]).
pub(crate) async fn store(net: &Network, bytes: Vec<u8>) -> Result<Id> {
    let blob = Blob {
        address: Id::of_content(&bytes),
        bytes: bytes::Bytes::from(bytes),
    };
    net.put(&blob).await?;
    net.pin(&[blob.address]).await?;
    Ok(blob.address)
}

/// Appends the stored blob `address` to the open slot `slot` (compare-and-swap from
/// whatever it holds; retried on conflict).
pub(crate) async fn append(net: &Network, slot: Id, address: Id, what: &str) -> Result<Id> {
    slotmove::append(net, slot, address, what).await?;
    Ok(address)
}

/// Every address an open slot held after its registration, oldest first, with when the
/// server accepted it (`None`: the slot does not exist).
pub(crate) async fn posted(net: &Network, slot: Id, what: &str) -> Result<Option<Vec<(Id, u64)>>> {
    let Some(history) = net
        .slots()
        .history_all(&slot)
        .await
        .map_err(|e| EhiError::network(format!("reading the history of {what}"), e))?
    else {
        return Ok(None);
    };
    let mut out: Vec<(Id, u64)> = Vec::new();
    for state in history.into_iter().rev() {
        if state.previous == Previous::Root {
            continue;
        }
        if !out.iter().any(|(a, _)| *a == state.address) {
            out.push((state.address, state.time.unwrap_or(0)));
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehi_vault::keys::SecretKey;
    use ehi_vault::keystore::{hpke_open_with_seed, hpke_public_of};

    #[test]
    fn seal_open_verify_and_tamper() {
        let seed = SecretKey::from_bytes([5; 32]);
        let public = hpke_public_of(&seed);
        let signer = SigningKey::from_bytes(&[6; 32]);
        let how = Seal {
            magic: b"EHT",
            recipient: &public,
            info: b"test info",
            aad: b"slot",
            domain: b"test v1",
            min_padded: 1024,
        };
        let blob = seal(&how, &signer, b"ctx", b"hello").expect("seal");
        assert_eq!(blob.len(), 4 + 32 + 1024 + 16);
        let open_with = |b: &[u8], aad: &'static [u8]| {
            open(b"EHT", "letter", b, |s| {
                hpke_open_with_seed(&seed, s, b"test info", aad)
            })
        };
        let (payload, signature) = open_with(&blob, b"slot").expect("open");
        assert_eq!(payload.as_slice(), b"hello");
        let key = signer.verifying_key().to_bytes();
        verify(
            "letter", "the app", &key, b"test v1", b"ctx", &payload, &signature,
        )
        .expect("verify");
        assert!(verify("l", "a", &key, b"test v1", b"other", &payload, &signature).is_err());
        let other = SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes();
        let err = verify(
            "l", "the app", &other, b"test v1", b"ctx", &payload, &signature,
        )
        .expect_err("wrong signer");
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );
        // Another slot (aad), a flipped byte, a wrong magic: refused.
        assert!(open_with(&blob, b"other slot").is_err());
        let mut bad = blob.clone();
        bad[100] ^= 1;
        let err = open_with(&bad, b"slot").expect_err("tampered");
        assert!(err.to_string().contains("does not open"), "{err}");
        let mut bad = blob;
        bad[0] = b'X';
        assert!(open_with(&bad, b"slot").is_err());
    }
}
