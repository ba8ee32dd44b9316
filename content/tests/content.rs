//! Reader and writer against an in-process storage server: round trips over edge
//! sizes and every transform combination, dedup, range reads that fetch only what
//! they need, corruption and unknown transforms, and content built by hand in the
//! reference's format.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use aes::Aes256;
use bytes::Bytes;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
use common::{Counting, TestStorage, collect, data, leaves, small_config};
use futures_util::StreamExt;
use invariant_content::{
    BlockStore, ChunkConfig, Compression, ContentError, KeyPolicy, MemoryStore, Reader, Writer,
    WriterConfig,
};
use invariant_spec::Id;
use invariant_spec::content::{ContentLink, Transform};

fn policies() -> Vec<Option<KeyPolicy>> {
    vec![
        None,
        Some(KeyPolicy::RandomPerFile),
        Some(KeyPolicy::Supplied([0x5a; 32])),
        Some(KeyPolicy::Convergent { secret: None }),
        Some(KeyPolicy::Convergent {
            secret: Some([0x11; 32]),
        }),
    ]
}

fn compressions() -> [Option<Compression>; 4] {
    [
        None,
        Some(Compression::Inflate),
        Some(Compression::Brotli),
        Some(Compression::Gzip),
    ]
}

#[tokio::test]
async fn edge_sizes_round_trip_through_storage() {
    let storage = TestStorage::start().await;
    let store: Arc<dyn BlockStore> = Arc::new(storage.client.clone());
    let reader = Reader::new(store.clone());
    let max = small_config().chunking.max_size;
    // Empty, one byte, around the minimum, exactly one maximal block, one past it,
    // two maximal blocks, and sizes that need two and three levels of lists.
    let sizes = [
        0,
        1,
        255,
        256,
        257,
        max - 1,
        max,
        max + 1,
        2 * max,
        40_000,
        150_000,
    ];
    for (encryption, compression) in [
        (None, None),
        (Some(KeyPolicy::RandomPerFile), Some(Compression::Inflate)),
    ] {
        let config = WriterConfig {
            encryption: encryption.clone(),
            compression,
            ..small_config()
        };
        let writer = Writer::new(store.clone(), config).expect("writer");
        for (i, &size) in sizes.iter().enumerate() {
            let content = data(i as u64, size, compression.is_some());
            let written = writer.write_bytes(&content).await.expect("write");
            assert_eq!(written.size, size as u64);
            let back = collect(reader.read(&written.link))
                .await
                .expect("read back");
            assert_eq!(
                back.len(),
                size,
                "size {size} {encryption:?} {compression:?}"
            );
            assert!(back == content, "content of size {size} differs");
            // Blocks are cut between the minimum and maximum size (the last may be
            // shorter); content up to the minimum is a single blob.
            let blocks = leaves(&reader, &written).await;
            let (min, max) = (256, max as u64);
            for (i, (_, block, _)) in blocks.iter().enumerate() {
                assert!(*block <= max, "size {size}: block of {block}");
                assert!(
                    i + 1 == blocks.len() || *block >= min,
                    "size {size}: block of {block}"
                );
            }
            if size > max as usize {
                assert!(blocks.len() >= 2, "size {size} is a tree");
                assert_eq!(written.link.transforms.last(), Some(&Transform::Blocks));
            }
            if size <= min as usize {
                assert_eq!(blocks.len(), 1, "size {size} is one block");
                if encryption.is_none() && compression.is_none() {
                    assert!(written.link.transforms.is_empty());
                    assert_eq!(written.link.address, Id::of_content(&content));
                }
            }
            if !written.link.transforms.is_empty() {
                assert_eq!(written.link.expected, Some(Id::of_content(&content)));
            }
        }
    }
    // The deepest tree has lists of lists of lists.
    let writer = Writer::new(store.clone(), small_config()).expect("writer");
    let written = writer
        .write_bytes(&data(99, 150_000, false))
        .await
        .expect("write");
    let depth = leaves(&reader, &written)
        .await
        .iter()
        .map(|(_, _, path)| path.len())
        .max()
        .expect("leaves");
    assert!(
        depth >= 4,
        "150 kB in 1 kB blocks with 1 kB lists is deep, got {depth}"
    );
    storage.stop().await;
}

#[tokio::test]
async fn every_transform_combination_round_trips() {
    let store = Arc::new(MemoryStore::new());
    let reader = Reader::new(store.clone());
    for encryption in policies() {
        for compression in compressions() {
            let config = WriterConfig {
                encryption: encryption.clone(),
                compression,
                ..small_config()
            };
            let writer = Writer::new(store.clone(), config).expect("writer");
            for (seed, size) in [(1, 0), (2, 3000), (3, 30_000)] {
                let content = data(seed, size, true);
                let written = writer.write_bytes(&content).await.expect("write");
                let back = collect(reader.read(&written.link))
                    .await
                    .expect("read back");
                assert!(
                    back == content,
                    "{encryption:?} {compression:?} size {size}"
                );
                let kinds: Vec<_> = written
                    .link
                    .transforms
                    .iter()
                    .filter_map(Transform::kind)
                    .collect();
                assert_eq!(
                    kinds.contains(&"Decipher"),
                    encryption.is_some(),
                    "{kinds:?}"
                );
                if size > 0 {
                    assert_eq!(
                        kinds.contains(&"Decompress"),
                        compression.is_some(),
                        "{kinds:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn a_large_file_streams_with_default_settings() {
    let storage = TestStorage::start().await;
    let counting = Counting::new(Arc::new(storage.client.clone()));
    let config = WriterConfig {
        encryption: Some(KeyPolicy::Supplied([3; 32])),
        compression: Some(Compression::Gzip),
        ..WriterConfig::default()
    };
    let writer = Writer::new(counting.clone(), config).expect("writer");
    let content = data(42, 6 * 1024 * 1024 + 123, false);
    let written = writer.write_bytes(&content).await.expect("write");
    let blobs = counting.puts();
    assert!(
        (3..=25).contains(&blobs),
        "1 MiB average blocks, got {blobs} blobs"
    );
    // The block list is JSON and compresses; random data does not, so the blocks
    // are stored uncompressed.
    let compressed = |link: &ContentLink| {
        link.transforms
            .iter()
            .any(|t| matches!(t, Transform::Decompress(_)))
    };
    assert!(compressed(&written.link));
    let blocks = Reader::new(counting.clone())
        .block_list(&written.link)
        .await
        .expect("list")
        .expect("a tree");
    assert!(blocks.iter().all(|b| !compressed(&b.content)));

    // Reading the first chunk fetches the list and a few blocks, not the file.
    counting.reset();
    let reader = Reader::new(counting.clone());
    let mut stream = reader.read(&written.link);
    let first = stream.next().await.expect("a chunk").expect("readable");
    assert!(!first.is_empty());
    assert!(
        counting.gets() <= 6,
        "fetched {} blobs up front",
        counting.gets()
    );
    drop(stream);

    let back = collect(reader.read(&written.link))
        .await
        .expect("read back");
    assert!(back == content);
    storage.stop().await;
}

#[tokio::test]
async fn identical_content_dedups() {
    let storage = TestStorage::start().await;
    let counting = Counting::new(Arc::new(storage.client.clone()));
    let content = data(7, 50_000, true);
    for encryption in policies() {
        let config = WriterConfig {
            encryption: encryption.clone(),
            ..small_config()
        };
        // Two writers share nothing but the store.
        let first = Writer::new(counting.clone(), config.clone()).expect("writer");
        let second = Writer::new(counting.clone(), config).expect("writer");
        counting.reset();
        let a = first.write_bytes(&content).await.expect("write");
        let first_puts = counting.puts();
        assert!(first_puts > 0);
        counting.reset();
        let b = second.write_bytes(&content).await.expect("write again");
        let random = encryption == Some(KeyPolicy::RandomPerFile);
        if random {
            assert_ne!(a.link.address, b.link.address, "fresh key, fresh blobs");
            assert_eq!(counting.puts(), first_puts);
        } else {
            assert_eq!(a.link, b.link, "{encryption:?} is deterministic");
            assert_eq!(counting.puts(), 0, "{encryption:?}: nothing re-sent");
        }
    }
    // Within one file, a repeated region is stored once.
    let unit = data(8, 8192, false);
    let repeated: Vec<u8> = unit.iter().copied().cycle().take(8192 * 20).collect();
    let writer = Writer::new(counting.clone(), small_config()).expect("writer");
    counting.reset();
    let written = writer.write_bytes(&repeated).await.expect("write");
    let reader = Reader::new(counting.clone());
    let blocks = leaves(&reader, &written).await;
    let distinct: HashSet<Id> = blocks.iter().map(|(_, _, p)| p[p.len() - 1]).collect();
    assert!(
        distinct.len() * 3 < blocks.len(),
        "{} of {}",
        distinct.len(),
        blocks.len()
    );
    assert!(counting.puts() < blocks.len());
    storage.stop().await;
}

#[tokio::test]
async fn range_reads_fetch_only_the_blocks_they_overlap() {
    let storage = TestStorage::start().await;
    let counting = Counting::new(Arc::new(storage.client.clone()));
    let content = data(11, 120_000, false);
    let writer = Writer::new(counting.clone(), small_config()).expect("writer");
    let written = writer.write_bytes(&content).await.expect("write");
    let reader = Reader::new(counting.clone());
    let tree = leaves(&reader, &written).await;
    let total_blobs: HashSet<Id> = tree.iter().flat_map(|(_, _, p)| p.clone()).collect();
    let len = content.len() as u64;
    let (mid_offset, mid_size, _) = tree[tree.len() / 2].clone();
    for (offset, length) in [
        (0, 1),
        (mid_offset + 1, 3),
        (mid_offset, mid_size),
        (mid_offset + mid_size - 2, 10),
        (12_345, 40_000),
        (len - 5, 5),
        (len - 5, 100),
        (len, 10),
        (len + 10, 10),
        (0, len),
    ] {
        counting.reset();
        let got = collect(reader.read_range(&written.link, offset, length))
            .await
            .expect("range");
        let start = offset.min(len) as usize;
        let end = offset.saturating_add(length).min(len) as usize;
        assert!(got == content[start..end], "range {offset}+{length}");
        let wanted: HashSet<Id> = tree
            .iter()
            .filter(|(o, s, _)| *o < offset + length && o + s > offset)
            .flat_map(|(_, _, p)| p.clone())
            .collect();
        let fetched: HashSet<Id> = counting.fetched().into_iter().collect();
        if wanted.is_empty() {
            // Past the end: only the lists that show it.
            assert!(
                fetched.len() <= 4,
                "range {offset}+{length} fetched {fetched:?}"
            );
        } else {
            assert_eq!(fetched, wanted, "range {offset}+{length}");
        }
        assert_eq!(counting.gets(), fetched.len(), "each blob fetched once");
        if length < 100 {
            assert!(fetched.len() * 10 < total_blobs.len());
        }
    }
    // Links without a final Blocks are decoded from the start and sliced.
    let packed = Writer::new(
        counting.clone(),
        WriterConfig {
            compression: Some(Compression::Brotli),
            ..WriterConfig::default()
        },
    )
    .expect("writer")
    .write_bytes(&data(12, 50_000, true))
    .await
    .expect("write");
    let expected = data(12, 50_000, true);
    let got = collect(reader.read_range(&packed.link, 1000, 20_000))
        .await
        .expect("range");
    assert!(got == expected[1000..21_000]);
    storage.stop().await;
}

#[tokio::test]
async fn corrupt_and_missing_blocks_are_named() {
    let storage = TestStorage::start().await;
    let store: Arc<dyn BlockStore> = Arc::new(storage.client.clone());
    let writer = Writer::new(store.clone(), small_config()).expect("writer");
    let reader = Reader::new(store.clone());
    let written = writer
        .write_bytes(&data(21, 20_000, false))
        .await
        .expect("write");
    let tree = leaves(&reader, &written).await;
    let victim = tree[tree.len() / 2].2.last().copied().expect("a leaf");
    storage.corrupt(&victim);
    let err = collect(reader.read(&written.link))
        .await
        .expect_err("corruption is detected");
    assert!(
        matches!(err, ContentError::Corrupt { address, .. } if address == victim),
        "{err}"
    );
    assert!(err.to_string().contains(&victim.to_string()), "{err}");

    // A corrupt list is named too.
    storage.corrupt(&written.link.address);
    let err = collect(reader.read(&written.link))
        .await
        .expect_err("corrupt root");
    assert_eq!(err.address(), Some(written.link.address), "{err}");

    let absent = Id::of_content(b"never stored");
    let err = collect(reader.read(&ContentLink::new(absent)))
        .await
        .expect_err("missing");
    assert!(matches!(err, ContentError::Missing { address } if address == absent));
    storage.stop().await;
}

#[tokio::test]
async fn bad_links_fail_clearly() {
    let store = Arc::new(MemoryStore::new());
    let reader = Reader::new(store.clone());
    let blob = Bytes::from_static(b"plain");
    let address = Id::of_content(&blob);
    store.put(address, blob.clone()).await.expect("put");

    let link: ContentLink = serde_json::from_value(serde_json::json!({
        "address": address, "transforms": [{"kind": "Rot13"}]
    }))
    .expect("unknown kinds parse");
    let err = collect(reader.read(&link)).await.expect_err("unknown kind");
    assert!(
        matches!(&err, ContentError::UnsupportedTransform { kind, .. } if kind == "Rot13"),
        "{err}"
    );
    assert!(err.to_string().contains("Rot13"));

    let mut link = ContentLink::new(address);
    link.transforms = vec![Transform::decompress("zstd")];
    let err = collect(reader.read(&link))
        .await
        .expect_err("unknown algorithm");
    assert!(err.to_string().contains("zstd"), "{err}");

    // An unknown transform deep in a tree fails when reached.
    let inner = serde_json::json!([{"content": {"address": address, "transforms": [{"kind": "Xor"}]}, "size": 5}]);
    let list = Bytes::from(serde_json::to_vec(&inner).expect("json"));
    let list_address = Id::of_content(&list);
    store.put(list_address, list).await.expect("put list");
    let mut link = ContentLink::new(list_address);
    link.transforms = vec![Transform::Blocks];
    let err = collect(reader.read(&link))
        .await
        .expect_err("nested unknown");
    assert!(
        matches!(&err, ContentError::UnsupportedTransform { kind, address: a } if kind == "Xor" && *a == address),
        "{err}"
    );

    // Wrong `expected`, wrong block size, slot links, malformed lists.
    let mut link = ContentLink::new(address);
    link.expected = Some(Id::of_content(b"other"));
    assert!(matches!(
        collect(reader.read(&link)).await,
        Err(ContentError::ExpectedMismatch { .. })
    ));
    let lying = serde_json::json!([{"content": {"address": address}, "size": 4}]);
    let lying = Bytes::from(serde_json::to_vec(&lying).expect("json"));
    let lying_address = Id::of_content(&lying);
    store.put(lying_address, lying).await.expect("put");
    let mut link = ContentLink::new(lying_address);
    link.transforms = vec![Transform::Blocks];
    assert!(matches!(
        collect(reader.read(&link)).await,
        Err(ContentError::SizeMismatch { declared: 4, address: a, .. }) if a == address
    ));
    let mut link = ContentLink::new(address);
    link.slot = true;
    assert!(matches!(
        collect(reader.read(&link)).await,
        Err(ContentError::SlotLink { .. })
    ));
    let mut link = ContentLink::new(address);
    link.transforms = vec![Transform::Blocks];
    assert!(matches!(
        collect(reader.read(&link)).await,
        Err(ContentError::Malformed { .. })
    ));
}

#[test]
fn invalid_writer_settings_are_refused() {
    let store: Arc<dyn BlockStore> = Arc::new(MemoryStore::new());
    let with = |chunking: ChunkConfig, list_limit: usize, parallelism: usize| WriterConfig {
        chunking,
        list_limit,
        parallelism,
        ..WriterConfig::default()
    };
    let chunks = |min_size, avg_size, max_size| ChunkConfig {
        min_size,
        avg_size,
        max_size,
    };
    for config in [
        with(chunks(32, 1024, 4096), 1024, 1),
        with(chunks(2048, 1024, 4096), 1024, 1),
        with(chunks(256, 1025, 4096), 1024, 1),
        with(chunks(256, 1024, 4 * 1024 * 1024), 1024, 1),
        with(chunks(256, 1024, 4096), 100, 1),
        with(chunks(256, 1024, 4096), 1024, 0),
    ] {
        assert!(
            matches!(
                Writer::new(store.clone(), config.clone()),
                Err(ContentError::Config(_))
            ),
            "{config:?}"
        );
    }
    assert!(Writer::new(store, WriterConfig::default()).is_ok());
}

/// Content laid out by hand from the brief's definitions, as another implementation
/// (the reference uses Node's zlib and crypto) would write it.
#[tokio::test]
async fn reads_content_in_the_reference_format() {
    let storage = TestStorage::start().await;
    let client = storage.client.clone();
    let reader = Reader::new(Arc::new(client.clone()));
    let put = |bytes: Vec<u8>| {
        let client = client.clone();
        async move { client.put_bytes(Bytes::from(bytes)).await.expect("put") }
    };
    let parse = |json: serde_json::Value| -> ContentLink {
        serde_json::from_value(json).expect("link parses")
    };

    // Blocks: a JSON list of two raw blobs.
    let hello = put(b"hello, ".to_vec()).await;
    let world = put(b"world".to_vec()).await;
    let list = format!(
        r#"[{{"content":{{"address":"{hello}"}},"size":7}},{{"content":{{"address":"{world}"}},"size":5}}]"#
    );
    let list_address = put(list.into_bytes()).await;
    let link = parse(serde_json::json!({
        "address": list_address,
        "transforms": [{"kind": "Blocks"}],
        "expected": Id::of_content(b"hello, world"),
    }));
    assert_eq!(
        collect(reader.read(&link)).await.expect("blocks"),
        b"hello, world"
    );
    assert_eq!(
        collect(reader.read_range(&link, 5, 4))
            .await
            .expect("range"),
        b", wo"
    );

    // Decipher: aes-256-cbc with PKCS#7 padding.
    let key: [u8; 32] = core::array::from_fn(|i| i as u8);
    let iv: [u8; 16] = core::array::from_fn(|i| 0xf0 | i as u8);
    let secret = data(31, 5000, true);
    let cipher =
        cbc::Encryptor::<Aes256>::new(&key.into(), &iv.into()).encrypt_padded_vec::<Pkcs7>(&secret);
    let cipher_address = put(cipher).await;
    let link = parse(serde_json::json!({
        "address": cipher_address,
        "transforms": [{"kind": "Decipher", "algorithm": "aes-256-cbc",
                        "key": hex::encode(key), "iv": hex::encode(iv)}],
    }));
    assert!(collect(reader.read(&link)).await.expect("decipher") == secret);

    // Decompress: inflate is a zlib stream, unzip is gzip (here two members, with a
    // file name in the header), brotli is brotli.
    let text = data(32, 20_000, true);
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zlib.write_all(&text).expect("deflate");
    let zlib = zlib.finish().expect("deflate");
    let mut gzip = Vec::new();
    for half in [&text[..7000], &text[7000..]] {
        let mut member = flate2::GzBuilder::new()
            .filename("part.txt")
            .write(Vec::new(), flate2::Compression::fast());
        member.write_all(half).expect("gzip");
        gzip.extend(member.finish().expect("gzip"));
    }
    let mut brotli_bytes = Vec::new();
    brotli::BrotliCompress(
        &mut &text[..],
        &mut brotli_bytes,
        &brotli::enc::BrotliEncoderParams::default(),
    )
    .expect("brotli");
    for (algorithm, packed) in [("inflate", zlib), ("unzip", gzip), ("brotli", brotli_bytes)] {
        let address = put(packed).await;
        let link = parse(serde_json::json!({
            "address": address,
            "transforms": [{"kind": "Decompress", "algorithm": algorithm}],
            "expected": Id::of_content(&text),
        }));
        assert!(
            collect(reader.read(&link)).await.expect(algorithm) == text,
            "{algorithm}"
        );
    }

    // Transforms compose in order: an encrypted, compressed block list whose
    // entries are themselves encrypted and compressed, and a compressed stream split
    // across raw blocks ([Blocks, Decompress]).
    let mut entries = Vec::new();
    for (i, part) in [&text[..9000], &text[9000..]].into_iter().enumerate() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(part).expect("deflate");
        let block_iv = [i as u8; 16];
        let sealed = cbc::Encryptor::<Aes256>::new(&key.into(), &block_iv.into())
            .encrypt_padded_vec::<Pkcs7>(&z.finish().expect("deflate"));
        let address = put(sealed).await;
        entries.push(serde_json::json!({
            "content": {"address": address, "transforms": [
                {"kind": "Decipher", "algorithm": "aes-256-cbc", "key": hex::encode(key), "iv": hex::encode(block_iv)},
                {"kind": "Decompress", "algorithm": "inflate"}]},
            "size": part.len(),
        }));
    }
    let list = serde_json::to_vec(&entries).expect("json");
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&list).expect("gzip");
    let sealed = cbc::Encryptor::<Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_vec::<Pkcs7>(&z.finish().expect("gzip"));
    let root = put(sealed).await;
    let link = parse(serde_json::json!({
        "address": root,
        "transforms": [
            {"kind": "Decipher", "algorithm": "aes-256-cbc", "key": hex::encode(key), "iv": hex::encode(iv)},
            {"kind": "Decompress", "algorithm": "unzip"},
            {"kind": "Blocks"}],
        "expected": Id::of_content(&text),
    }));
    assert!(collect(reader.read(&link)).await.expect("nested") == text);
    assert!(
        collect(reader.read_range(&link, 8990, 20))
            .await
            .expect("range")
            == text[8990..9010]
    );

    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&text).expect("deflate");
    let stream = z.finish().expect("deflate");
    let (a, b) = stream.split_at(stream.len() / 3);
    let (a_address, b_address) = (put(a.to_vec()).await, put(b.to_vec()).await);
    let list = serde_json::json!([
        {"content": {"address": a_address}, "size": a.len()},
        {"content": {"address": b_address}, "size": b.len()},
    ]);
    let list_address = put(serde_json::to_vec(&list).expect("json")).await;
    let link = parse(serde_json::json!({
        "address": list_address,
        "transforms": [{"kind": "Blocks"}, {"kind": "Decompress", "algorithm": "inflate"}],
    }));
    assert!(collect(reader.read(&link)).await.expect("split stream") == text);
    assert!(
        collect(reader.read_range(&link, 100, 50))
            .await
            .expect("range")
            == text[100..150]
    );
    storage.stop().await;
}
