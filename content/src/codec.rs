//! The byte transforms: incremental AES-256-CBC decryption and decompression for
//! readers, whole-block compression, encryption and key derivation for writers.
//!
//! Decompression runs on tokio's blocking pool and hands output over in 64 KiB
//! chunks through a two-slot channel, so a small compressed block that expands
//! enormously never sits in memory whole. Decryption is cheap and runs inline.

use std::io::{self, Read, Write};

use aes::Aes256;
use async_stream::try_stream;
use bytes::Bytes;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{Array, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use futures_util::{StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use invariant_spec::Id;
use invariant_spec::content::{self as wire, Decipher};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::{ContentError, ContentResult, ContentStream};

/// AES block length.
const AES_BLOCK: usize = 16;
/// Largest chunk a decompressor hands over at once.
const DECOMPRESS_CHUNK: usize = 64 * 1024;

/// A compression algorithm of the `Decompress` transform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// zlib (RFC 1950), wire name `inflate`.
    Inflate,
    /// brotli, wire name `brotli`.
    Brotli,
    /// gzip, wire name `unzip`.
    Gzip,
}

impl Compression {
    /// The algorithm name on the wire.
    pub fn wire_name(self) -> &'static str {
        match self {
            Compression::Inflate => wire::INFLATE,
            Compression::Brotli => wire::BROTLI,
            Compression::Gzip => wire::UNZIP,
        }
    }

    /// The algorithm with wire name `name`.
    pub fn from_wire(name: &str) -> Option<Compression> {
        match name {
            wire::INFLATE => Some(Compression::Inflate),
            wire::BROTLI => Some(Compression::Brotli),
            wire::UNZIP => Some(Compression::Gzip),
            _ => None,
        }
    }

    /// Compresses a whole block (CPU-bound: call from a blocking thread).
    /// Output is deterministic for equal input, so compressed blocks still dedup.
    pub fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        match self {
            Compression::Inflate => {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(out, flate2::Compression::default());
                encoder.write_all(data)?;
                out = encoder.finish()?;
            }
            Compression::Gzip => {
                // flate2 writes mtime 0 and no file name: equal input, equal output.
                let mut encoder =
                    flate2::write::GzEncoder::new(out, flate2::Compression::default());
                encoder.write_all(data)?;
                out = encoder.finish()?;
            }
            Compression::Brotli => {
                // Quality 5 compresses ~100 MB/s; 11 (the library default) is ~1 MB/s.
                let params = brotli::enc::BrotliEncoderParams {
                    quality: 5,
                    lgwin: 22,
                    ..Default::default()
                };
                brotli::BrotliCompress(&mut &data[..], &mut out, &params)?;
            }
        }
        Ok(out)
    }
}

/// Streams the decryption of `data` as `transform` describes.
pub(crate) fn decipher(
    mut data: ContentStream,
    transform: &Decipher,
    address: Id,
) -> ContentResult<ContentStream> {
    if transform.algorithm != wire::AES_256_CBC {
        return Err(ContentError::UnsupportedAlgorithm {
            address,
            kind: wire::KIND_DECIPHER,
            algorithm: transform.algorithm.clone(),
        });
    }
    let key: [u8; 32] = parse_hex(&transform.key, "key", address)?;
    let iv: [u8; 16] = parse_hex(&transform.iv, "iv", address)?;
    let failed = move |reason: &str| ContentError::Decrypt {
        address,
        reason: reason.to_string(),
    };
    Ok(Box::pin(try_stream! {
        let mut decryptor = cbc::Decryptor::<Aes256>::new(&key.into(), &iv.into());
        // Ciphertext not yet decrypted: the final block waits for the end, where
        // its padding is removed.
        let mut held: Vec<u8> = Vec::new();
        while let Some(chunk) = data.next().await {
            held.extend_from_slice(&chunk?);
            if held.len() <= AES_BLOCK {
                continue;
            }
            let ready = (held.len() - 1) / AES_BLOCK * AES_BLOCK;
            let rest = held.split_off(ready);
            let mut out = std::mem::replace(&mut held, rest);
            let (blocks, _) = Array::slice_as_chunks_mut(&mut out);
            decryptor.decrypt_blocks(blocks);
            yield Bytes::from(out);
        }
        if held.len() != AES_BLOCK {
            Err(failed("ciphertext length is not a positive multiple of 16"))?;
        }
        let plain = decryptor
            .decrypt_padded::<Pkcs7>(&mut held)
            .map_err(|_| failed("bad padding (wrong key or corrupt ciphertext)"))?;
        if !plain.is_empty() {
            yield Bytes::copy_from_slice(plain);
        }
    }))
}

/// Encrypts a whole block with AES-256-CBC and PKCS#7 padding.
pub(crate) fn encrypt(key: &[u8; 32], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    cbc::Encryptor::<Aes256>::new(key.into(), iv.into()).encrypt_padded_vec::<Pkcs7>(plaintext)
}

/// HMAC-SHA256 of `label || data` under `key`: the key and IV derivation of writers.
pub(crate) fn derive(key: &[u8], label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(label);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn parse_hex<const N: usize>(text: &str, field: &str, address: Id) -> ContentResult<[u8; N]> {
    let invalid = |reason: String| ContentError::InvalidTransform {
        address,
        kind: wire::KIND_DECIPHER,
        reason,
    };
    let bytes = hex::decode(text).map_err(|e| invalid(format!("{field} is not hex: {e}")))?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| {
        invalid(format!(
            "{field} has {} bytes, aes-256-cbc needs {N}",
            bytes.len()
        ))
    })
}

/// Streams the decompression of `data`. The decoder runs on the blocking pool once
/// the returned stream is first polled.
pub(crate) fn decompress(
    data: ContentStream,
    algorithm: Compression,
    address: Id,
) -> ContentStream {
    Box::pin(try_stream! {
        let (tx, mut rx) = mpsc::channel::<ContentResult<Bytes>>(2);
        let reader = StreamReader::new(data.map_err(io::Error::other));
        let input = SyncIoBridge::new(reader);
        let task = tokio::task::spawn_blocking(move || {
            run_decoder(input, algorithm, address, &tx);
        });
        while let Some(chunk) = rx.recv().await {
            yield chunk?;
        }
        task.await.map_err(ContentError::task)?;
    })
}

fn run_decoder(
    input: impl Read,
    algorithm: Compression,
    address: Id,
    tx: &mpsc::Sender<ContentResult<Bytes>>,
) {
    let mut decoder: Box<dyn Read> = match algorithm {
        Compression::Inflate => Box::new(flate2::read::ZlibDecoder::new(input)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Brotli => Box::new(brotli::Decompressor::new(input, DECOMPRESS_CHUNK)),
    };
    loop {
        let mut buffer = vec![0u8; DECOMPRESS_CHUNK];
        let item = match decoder.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                buffer.truncate(n);
                Ok(Bytes::from(buffer))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(decode_error(e, algorithm, address)),
        };
        let stop = item.is_err();
        // A send fails when the reader went away: stop decoding.
        if tx.blocking_send(item).is_err() || stop {
            return;
        }
    }
}

/// Recovers an upstream [`ContentError`] that travelled through `io::Error`, or
/// describes a decoding failure.
fn decode_error(error: io::Error, algorithm: Compression, address: Id) -> ContentError {
    if error
        .get_ref()
        .is_some_and(|inner| inner.is::<ContentError>())
    {
        if let Some(inner) = error.into_inner() {
            if let Ok(upstream) = inner.downcast::<ContentError>() {
                return *upstream;
            }
        }
        return ContentError::Task("lost an upstream error".into());
    }
    ContentError::Decompress {
        address,
        algorithm: algorithm.wire_name(),
        source: error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn chunked(data: &[u8], size: usize) -> ContentStream {
        let chunks: Vec<ContentResult<Bytes>> = data
            .chunks(size.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(stream::iter(chunks))
    }

    async fn collect(stream: ContentStream) -> ContentResult<Vec<u8>> {
        let chunks: Vec<Bytes> = stream.try_collect().await?;
        Ok(chunks.concat())
    }

    #[tokio::test]
    async fn decipher_handles_any_chunking() {
        let key = [7u8; 32];
        let iv = [9u8; 16];
        let address = Id::of_content(b"test");
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let cipher = encrypt(&key, &iv, &plain);
            assert_eq!(cipher.len(), (len / 16 + 1) * 16);
            for chunk in [1, 5, 16, 17, 4096] {
                let wire::Transform::Decipher(d) = wire::Transform::aes_256_cbc(&key, &iv) else {
                    panic!("aes_256_cbc builds a Decipher transform");
                };
                let out = decipher(chunked(&cipher, chunk), &d, address).expect("valid transform");
                assert_eq!(
                    collect(out).await.expect("decrypts"),
                    plain,
                    "len {len} chunk {chunk}"
                );
            }
        }
    }

    #[tokio::test]
    async fn decipher_reports_bad_input() {
        let address = Id::of_content(b"x");
        let d = |key: &str, iv: &str, algorithm: &str| Decipher {
            algorithm: algorithm.into(),
            key: key.into(),
            iv: iv.into(),
        };
        let good_key = "00".repeat(32);
        let good_iv = "00".repeat(16);
        let empty = || chunked(b"", 1);
        assert!(matches!(
            decipher(empty(), &d(&good_key, &good_iv, "des"), address),
            Err(ContentError::UnsupportedAlgorithm { algorithm, .. }) if algorithm == "des"
        ));
        assert!(matches!(
            decipher(empty(), &d("zz", &good_iv, wire::AES_256_CBC), address),
            Err(ContentError::InvalidTransform { .. })
        ));
        assert!(matches!(
            decipher(empty(), &d(&good_key, "00", wire::AES_256_CBC), address),
            Err(ContentError::InvalidTransform { .. })
        ));
        let transform = d(&good_key, &good_iv, wire::AES_256_CBC);
        for bad in [&b""[..], &[1u8; 15][..], &[1u8; 32][..]] {
            let out = decipher(chunked(bad, 7), &transform, address).expect("valid transform");
            assert!(
                matches!(collect(out).await, Err(ContentError::Decrypt { address: a, .. }) if a == address),
                "{} bytes",
                bad.len()
            );
        }
    }

    #[tokio::test]
    async fn compressions_round_trip_and_detect_garbage() {
        let address = Id::of_content(b"z");
        let plain: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for algorithm in [Compression::Inflate, Compression::Brotli, Compression::Gzip] {
            let packed = algorithm.compress(&plain).expect("compress");
            assert!(packed.len() < plain.len() / 4, "{algorithm:?} compresses");
            assert_eq!(
                packed,
                algorithm.compress(&plain).expect("again"),
                "deterministic"
            );
            let out = decompress(chunked(&packed, 1000), algorithm, address);
            assert_eq!(collect(out).await.expect("inflates"), plain);
            let out = decompress(
                chunked(b"this is not compressed data", 5),
                algorithm,
                address,
            );
            assert!(
                matches!(collect(out).await, Err(ContentError::Decompress { .. })),
                "{algorithm:?} rejects garbage"
            );
        }
        assert_eq!(Compression::from_wire("unzip"), Some(Compression::Gzip));
        assert_eq!(Compression::from_wire("zstd"), None);
    }

    #[tokio::test]
    async fn upstream_errors_pass_through_decompression() {
        let address = Id::of_content(b"up");
        let broken = Id::of_content(b"broken");
        for algorithm in [Compression::Inflate, Compression::Brotli, Compression::Gzip] {
            let packed = algorithm.compress(&[5u8; 100_000]).expect("compress");
            let items: Vec<ContentResult<Bytes>> = vec![
                Ok(Bytes::copy_from_slice(&packed[..10])),
                Err(ContentError::Missing { address: broken }),
            ];
            let out = decompress(Box::pin(stream::iter(items)), algorithm, address);
            let result = collect(out).await;
            assert!(
                matches!(&result, Err(ContentError::Missing { address: a }) if *a == broken),
                "{algorithm:?}: {result:?}"
            );
        }
    }
}
