//! The encrypted envelope every vault blob uses, with size-bucket padding and chunking.
//!
//! ## Blob layout (envelope format 1)
//!
//! ```text
//! offset  size  field
//! 0       3     magic "EHI"
//! 3       1     envelope format version (1)
//! 4       4     key epoch, u32 little-endian (for the vault root and audit entries:
//!               the root key generation, 0 until a device is removed)
//! 8       24    XChaCha20-Poly1305 nonce (random, from the OS generator)
//! 32      n     ciphertext of the padded plaintext
//! 32+n    16    Poly1305 tag
//! ```
//!
//! The associated data is the 32-byte header, then one byte naming the object kind
//! ([`Kind`]), then a context string (the scope name for scope data): a blob cannot be
//! moved to another place in the vault, another scope, or another epoch without the
//! tag failing. Only the epoch number and the padded size are visible to servers.
//!
//! ## Padding
//!
//! The plaintext is `flags (1 byte) ‖ payload length (u32 LE) ‖ payload ‖ zeros`, sized
//! so that the whole blob is exactly one of the **buckets** 1, 2, 4, 8, 16, 32, 64, 128,
//! 256, 512 or 1024 KiB ([`BUCKETS`]). A server therefore learns a resource's size only
//! to within a factor of two. Payloads larger than one 1 MiB blob can carry
//! ([`MAX_INLINE`]) are split into chunks of `MAX_INLINE` bytes, each sealed as its own
//! 1 MiB-bucketed blob (the last one padded to its bucket), and the *head* blob carries
//! the list of chunk addresses instead of the payload (flag bit 0 set). No blob is ever
//! larger than 1 MiB, the size every storage server must accept.

use bytes::Bytes;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use invariant_spec::Id;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{EhiError, Result};
use crate::keys::{SecretKey, fill_random};

/// The magic at the start of every blob.
pub const MAGIC: &[u8; 3] = b"EHI";
/// The envelope format this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 32;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes of the plaintext framing (flags + length).
const FRAME_LEN: usize = 5;
/// Overhead of a blob over its payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN + FRAME_LEN;
/// The blob sizes (bytes): every blob the vault writes has exactly one of these sizes.
pub const BUCKETS: [usize; 11] = [
    1 << 10,
    1 << 11,
    1 << 12,
    1 << 13,
    1 << 14,
    1 << 15,
    1 << 16,
    1 << 17,
    1 << 18,
    1 << 19,
    1 << 20,
];
/// The largest payload one blob carries; larger payloads are chunked.
pub const MAX_INLINE: usize = (1 << 20) - OVERHEAD;

/// Flag bit: the payload is a [`ChunkList`], not the object itself.
const FLAG_CHUNKED: u8 = 1;

/// What an encrypted blob holds (bound into the associated data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The vault root.
    Root = 1,
    /// A scope manifest.
    Manifest = 2,
    /// One version of one resource.
    Resource = 3,
    /// A chunk of a larger object of the kind given with it.
    Chunk = 4,
    /// An audit log entry ([`crate::audit`]).
    Audit = 5,
    /// Emergency (break-glass) policy and access log (`ehi_share::emergency`).
    Emergency = 6,
    /// Device pairing messages (`ehi_share::device`).
    Device = 7,
}

/// The chunk list a chunked object's head carries (postcard, format 1).
#[derive(Debug, Serialize, Deserialize)]
struct ChunkList {
    format: u8,
    total_len: u64,
    chunks: Vec<[u8; 32]>,
}

/// One blob ready to store: its address (SHA-256 of the bytes) and the bytes.
#[derive(Clone, Debug)]
pub struct Blob {
    /// SHA-256 of `bytes`.
    pub address: Id,
    /// The sealed bytes.
    pub bytes: Bytes,
}

/// An object sealed into one head blob and zero or more chunk blobs.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// The blob to reference the object by.
    pub head: Blob,
    /// The chunks (empty for objects of at most [`MAX_INLINE`] bytes).
    pub chunks: Vec<Blob>,
}

impl Sealed {
    /// Every address, head first.
    pub fn addresses(&self) -> Vec<Id> {
        std::iter::once(self.head.address)
            .chain(self.chunks.iter().map(|c| c.address))
            .collect()
    }

    /// Every blob, head first.
    pub fn into_blobs(self) -> Vec<Blob> {
        let mut out = Vec::with_capacity(1 + self.chunks.len());
        out.push(self.head);
        out.extend(self.chunks);
        out
    }
}

/// What opening a head blob gave.
#[derive(Debug)]
pub enum Opened {
    /// The object itself.
    Inline(Zeroizing<Vec<u8>>),
    /// The object is chunked: fetch these blobs, open each with [`open_chunk`], and
    /// concatenate; the result must be `total_len` bytes.
    Chunked {
        /// Total payload length.
        total_len: u64,
        /// Chunk addresses in order.
        chunks: Vec<Id>,
    },
}

/// The bucket (blob size) for a payload of `len` bytes (`len <= MAX_INLINE`).
pub fn bucket_for(len: usize) -> usize {
    let needed = len + OVERHEAD;
    BUCKETS
        .iter()
        .copied()
        .find(|b| *b >= needed)
        .unwrap_or(BUCKETS[BUCKETS.len() - 1])
}

/// Seals `payload` as an object of `kind` under `key` (a purpose-derived AEAD key).
pub fn seal_object(
    key: &SecretKey,
    kind: Kind,
    context: &str,
    epoch: u32,
    payload: &[u8],
) -> Result<Sealed> {
    if payload.len() <= MAX_INLINE {
        let head = seal_blob(key, kind, context, epoch, 0, payload)?;
        return Ok(Sealed {
            head,
            chunks: Vec::new(),
        });
    }
    let mut chunks = Vec::with_capacity(payload.len().div_ceil(MAX_INLINE));
    for piece in payload.chunks(MAX_INLINE) {
        chunks.push(seal_blob(key, Kind::Chunk, context, epoch, 0, piece)?);
    }
    let list = ChunkList {
        format: 1,
        total_len: payload.len() as u64,
        chunks: chunks.iter().map(|c| *c.address.as_bytes()).collect(),
    };
    let encoded =
        postcard::to_stdvec(&list).map_err(|e| EhiError::Crypto(format!("chunk list: {e}")))?;
    if encoded.len() > MAX_INLINE {
        return Err(EhiError::InvalidArgument(format!(
            "an object of {} bytes is too large to store",
            payload.len()
        )));
    }
    let head = seal_blob(key, kind, context, epoch, FLAG_CHUNKED, &encoded)?;
    Ok(Sealed { head, chunks })
}

/// The epoch written in a blob's header, or `None` when `blob` is not an envelope.
pub fn epoch_of(blob: &[u8]) -> Option<u32> {
    if blob.len() < HEADER_LEN + TAG_LEN || &blob[..3] != MAGIC {
        return None;
    }
    let mut epoch = [0u8; 4];
    epoch.copy_from_slice(&blob[4..8]);
    Some(u32::from_le_bytes(epoch))
}

/// Opens the head blob of an object. `what` names it in errors.
pub fn open_object(
    key: &SecretKey,
    kind: Kind,
    context: &str,
    blob: &[u8],
    what: &str,
) -> Result<Opened> {
    let (flags, payload) = open_blob(key, kind, context, blob, what)?;
    if flags & FLAG_CHUNKED == 0 {
        return Ok(Opened::Inline(payload));
    }
    let list: ChunkList = postcard::from_bytes(&payload)
        .map_err(|e| EhiError::corrupt(what, format!("chunk list does not decode: {e}")))?;
    if list.format != 1 {
        return Err(EhiError::UnsupportedFormat {
            what: "chunk list",
            found: u32::from(list.format),
            supported: 1,
        });
    }
    Ok(Opened::Chunked {
        total_len: list.total_len,
        chunks: list.chunks.into_iter().map(Id::from_bytes).collect(),
    })
}

/// Opens one chunk of a chunked object and appends its payload to `out`.
pub fn open_chunk(
    key: &SecretKey,
    context: &str,
    blob: &[u8],
    what: &str,
    out: &mut Vec<u8>,
) -> Result<()> {
    let (flags, payload) = open_blob(key, Kind::Chunk, context, blob, what)?;
    if flags != 0 {
        return Err(EhiError::corrupt(what, "a chunk is marked as chunked"));
    }
    out.extend_from_slice(&payload);
    Ok(())
}

fn aad(header: &[u8], kind: Kind, context: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(HEADER_LEN + 1 + context.len());
    aad.extend_from_slice(header);
    aad.push(kind as u8);
    aad.extend_from_slice(context.as_bytes());
    aad
}

fn seal_blob(
    key: &SecretKey,
    kind: Kind,
    context: &str,
    epoch: u32,
    flags: u8,
    payload: &[u8],
) -> Result<Blob> {
    let size = bucket_for(payload.len());
    let mut out = vec![0u8; size];
    out[..3].copy_from_slice(MAGIC);
    out[3] = ENVELOPE_VERSION;
    out[4..8].copy_from_slice(&epoch.to_le_bytes());
    fill_random(&mut out[8..HEADER_LEN]).map_err(|e| EhiError::Crypto(e.to_string()))?;
    let header: [u8; HEADER_LEN] = out[..HEADER_LEN]
        .try_into()
        .map_err(|_| EhiError::Crypto("header length".into()))?;
    let body_end = size - TAG_LEN;
    let len = u32::try_from(payload.len())
        .map_err(|_| EhiError::InvalidArgument("payload too large".into()))?;
    out[HEADER_LEN] = flags;
    out[HEADER_LEN + 1..HEADER_LEN + FRAME_LEN].copy_from_slice(&len.to_le_bytes());
    out[HEADER_LEN + FRAME_LEN..HEADER_LEN + FRAME_LEN + payload.len()].copy_from_slice(payload);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key.expose()));
    let nonce = XNonce::from_slice(&header[8..HEADER_LEN]);
    let tag = cipher
        .encrypt_in_place_detached(
            nonce,
            &aad(&header, kind, context),
            &mut out[HEADER_LEN..body_end],
        )
        .map_err(|_| EhiError::Crypto("encryption failed".into()))?;
    out[body_end..].copy_from_slice(&tag);
    let bytes = Bytes::from(out);
    Ok(Blob {
        address: Id::of_content(&bytes),
        bytes,
    })
}

fn open_blob(
    key: &SecretKey,
    kind: Kind,
    context: &str,
    blob: &[u8],
    what: &str,
) -> Result<(u8, Zeroizing<Vec<u8>>)> {
    if blob.len() < HEADER_LEN + FRAME_LEN + TAG_LEN || &blob[..3] != MAGIC {
        return Err(EhiError::corrupt(what, "not an ehi-layer envelope"));
    }
    if blob[3] != ENVELOPE_VERSION {
        return Err(EhiError::UnsupportedFormat {
            what: "envelope",
            found: u32::from(blob[3]),
            supported: u32::from(ENVELOPE_VERSION),
        });
    }
    let header = &blob[..HEADER_LEN];
    let body_end = blob.len() - TAG_LEN;
    let mut body = Zeroizing::new(blob[HEADER_LEN..body_end].to_vec());
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key.expose()));
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(&header[8..HEADER_LEN]),
            &aad(header, kind, context),
            &mut body,
            Tag::from_slice(&blob[body_end..]),
        )
        .map_err(|_| {
            EhiError::corrupt(
                what,
                "the ciphertext does not authenticate under this vault's key",
            )
        })?;
    let flags = body[0];
    let mut len = [0u8; 4];
    len.copy_from_slice(&body[1..FRAME_LEN]);
    let len = u32::from_le_bytes(len) as usize;
    if len > body.len() - FRAME_LEN {
        return Err(EhiError::corrupt(what, "payload length exceeds the blob"));
    }
    Ok((
        flags,
        Zeroizing::new(body[FRAME_LEN..FRAME_LEN + len].to_vec()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_bytes([7; 32])
    }

    fn inline(opened: Opened) -> Vec<u8> {
        match opened {
            Opened::Inline(p) => p.to_vec(),
            Opened::Chunked { .. } => panic!("expected inline"),
        }
    }

    #[test]
    fn round_trip_and_bucket_sizes() {
        for len in [0usize, 1, 500, 971, 972, 1000, 5000, 70_000, MAX_INLINE] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed =
                seal_object(&key(), Kind::Resource, "clinical", 3, &payload).expect("seal");
            assert!(sealed.chunks.is_empty());
            let size = sealed.head.bytes.len();
            assert!(BUCKETS.contains(&size), "{len} → {size}");
            assert_eq!(size, bucket_for(len));
            assert_eq!(epoch_of(&sealed.head.bytes), Some(3));
            assert_eq!(sealed.head.address, Id::of_content(&sealed.head.bytes));
            let back = open_object(&key(), Kind::Resource, "clinical", &sealed.head.bytes, "t")
                .expect("open");
            assert_eq!(inline(back), payload);
        }
        assert_eq!(bucket_for(0), 1024);
        assert_eq!(bucket_for(1024 - OVERHEAD), 1024);
        assert_eq!(bucket_for(1025 - OVERHEAD), 2048);
    }

    #[test]
    fn same_plaintext_seals_differently() {
        let a = seal_object(&key(), Kind::Resource, "c", 0, b"same").expect("seal");
        let b = seal_object(&key(), Kind::Resource, "c", 0, b"same").expect("seal");
        assert_ne!(a.head.address, b.head.address);
    }

    #[test]
    fn tampering_wrong_key_kind_context_are_detected() {
        let sealed = seal_object(&key(), Kind::Manifest, "clinical", 1, b"secret").expect("seal");
        let bytes = sealed.head.bytes.to_vec();
        let other = SecretKey::from_bytes([8; 32]);
        for (k, kind, ctx) in [
            (&other, Kind::Manifest, "clinical"),
            (&key(), Kind::Resource, "clinical"),
            (&key(), Kind::Manifest, "sensitive"),
        ] {
            let err = open_object(k, kind, ctx, &bytes, "manifest").expect_err("must fail");
            assert!(matches!(err, EhiError::Corrupt { .. }), "{err}");
        }
        for position in [0, 3, 5, 10, 40, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[position] ^= 0x01;
            assert!(open_object(&key(), Kind::Manifest, "clinical", &bad, "m").is_err());
        }
        assert!(open_object(&key(), Kind::Manifest, "clinical", &bytes[..20], "m").is_err());
        assert!(open_object(&key(), Kind::Manifest, "clinical", b"", "m").is_err());
    }

    #[test]
    fn large_objects_are_chunked() {
        let payload: Vec<u8> = (0..(2 * MAX_INLINE + 10)).map(|i| (i % 7) as u8).collect();
        let sealed = seal_object(&key(), Kind::Manifest, "clinical", 0, &payload).expect("seal");
        assert_eq!(sealed.chunks.len(), 3);
        assert!(sealed.chunks.iter().all(|c| c.bytes.len() <= 1 << 20));
        let Opened::Chunked { total_len, chunks } =
            open_object(&key(), Kind::Manifest, "clinical", &sealed.head.bytes, "m")
                .expect("open head")
        else {
            panic!("expected chunks");
        };
        assert_eq!(total_len as usize, payload.len());
        let mut out = Vec::new();
        for (address, blob) in chunks.iter().zip(&sealed.chunks) {
            assert_eq!(*address, blob.address);
            open_chunk(&key(), "clinical", &blob.bytes, "chunk", &mut out).expect("chunk");
        }
        assert_eq!(out, payload);
        // A chunk cannot pass for a head.
        assert!(
            open_object(
                &key(),
                Kind::Manifest,
                "clinical",
                &sealed.chunks[0].bytes,
                "m"
            )
            .is_err()
        );
    }
}
