//! Unit tests of the blob store: both layouts, totals, limits, hashes, listing,
//! paging and deletion, and its entry points [`BlobStore::read`] (whole, ranges,
//! packed and files, small and large) and [`BlobStore::receive`] (each way of
//! receiving a body, and each refusal).

use std::fs;
use std::io;

use std::io::Read as _;

use bytes::Bytes;
use futures_util::{Stream, stream};

use super::*;
use crate::range::ByteRange;
use crate::usage::Payer;

const NO_PACKS: PackConfig = PackConfig {
    max_blob: 0,
    max_pack: 0,
    lanes: 0,
    compaction: crate::pack::CompactionConfig {
        threshold: 0.0,
        bytes_per_s: 0,
        interval: std::time::Duration::ZERO,
    },
};

/// A store writing every blob as a file (the file-layout tests).
fn store(limit: u64) -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open_with(dir.path(), limit, NO_PACKS).expect("open");
    (dir, store)
}

#[test]
fn totals_count_each_stored_blob_once_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let large = PackConfig::default().max_blob + 1;
    {
        let store = BlobStore::open(dir.path(), 4 << 20).expect("open");
        assert_eq!(store.totals(), (0, 0));
        store.put(Bytes::from_static(b"small"), None).expect("put");
        store
            .put(Bytes::from_static(b"small"), None)
            .expect("again");
        store
            .put(Bytes::from(vec![7u8; large]), None)
            .expect("large");
        store
            .put(Bytes::from(vec![7u8; large]), None)
            .expect("large again");
        let mut writer = store.writer().expect("writer");
        writer.write(b"streamed").expect("write");
        writer.commit(None).expect("commit");
        assert_eq!(store.totals(), (3, 5 + large as u64 + 8));
    }
    let store = BlobStore::open(dir.path(), 4 << 20).expect("reopen");
    assert_eq!(store.totals(), (3, 5 + large as u64 + 8), "counted at open");
}

#[test]
fn small_blobs_are_packed_and_large_ones_are_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path(), 4 << 20).expect("open");
    let small = store.put(Bytes::from_static(b"small"), None).expect("put");
    let large_data = vec![7u8; PackConfig::default().max_blob + 1];
    let large = store
        .put(Bytes::from(large_data.clone()), None)
        .expect("put");
    assert!(!store.blob_path(&small).exists());
    assert!(store.blob_path(&large).exists());
    assert_eq!(store.size(&small).expect("size"), Some(5));
    let (mut file, base, len) = store.open_blob(&small).expect("open").expect("held");
    assert!(base > 0);
    let mut read = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(&mut file, len), &mut read).expect("read");
    assert_eq!(read, b"small");

    // The same small content arriving streamed is not stored twice.
    let mut writer = store.writer().expect("writer");
    writer.write(b"small").expect("write");
    assert_eq!(writer.commit(Some(small)).expect("commit"), small);
    assert!(!store.blob_path(&small).exists());

    let mut listed: Vec<_> = store.list().collect::<io::Result<_>>().expect("list");
    listed.sort();
    let mut expected = vec![(small, 5), (large, large_data.len() as u64)];
    expected.sort();
    assert_eq!(listed, expected);

    drop(store);
    let store = BlobStore::open(dir.path(), 4 << 20).expect("reopen");
    assert_eq!(store.size(&small).expect("size"), Some(5));
    assert_eq!(store.list().count(), 2);
}

#[test]
fn put_then_read_back() {
    let (_dir, store) = store(1 << 20);
    let id = store.put(Bytes::from_static(b"hello"), None).expect("put");
    assert_eq!(id, Id::of_content(b"hello"));
    assert_eq!(store.size(&id).expect("size"), Some(5));
    assert_eq!(fs::read(store.blob_path(&id)).expect("read"), b"hello");
    let hex = id.to_string();
    assert!(
        store
            .blob_path(&id)
            .ends_with(format!("{}/{}/{}", &hex[..2], &hex[2..4], &hex[4..]))
    );
    // Idempotent.
    assert_eq!(
        store
            .put(Bytes::from_static(b"hello"), Some(id))
            .expect("again"),
        id
    );
}

#[test]
fn wrong_hash_stores_nothing() {
    let (_dir, store) = store(1 << 20);
    let claimed = Id::of_content(b"other");
    let err = store
        .put(Bytes::from_static(b"hello"), Some(claimed))
        .expect_err("mismatch");
    assert!(matches!(err, StoreError::HashMismatch { .. }));
    assert_eq!(store.size(&claimed).expect("size"), None);
    assert_eq!(store.size(&Id::of_content(b"hello")).expect("size"), None);
    assert_eq!(fs::read_dir(&store.inner.tmp).expect("tmp").count(), 0);
}

#[test]
fn too_large_stores_nothing() {
    let (_dir, store) = store(4);
    assert!(matches!(
        store.put(Bytes::from_static(b"hello"), None),
        Err(StoreError::TooLarge { limit: 4 })
    ));
    let mut writer = store.writer().expect("writer");
    writer.write(b"hel").expect("fits");
    assert!(matches!(
        writer.write(b"lo"),
        Err(StoreError::TooLarge { .. })
    ));
    drop(writer);
    assert_eq!(fs::read_dir(&store.inner.tmp).expect("tmp").count(), 0);
    assert_eq!(store.list().count(), 0);
}

#[test]
fn abandoned_temp_files_are_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open_with(dir.path(), 100, NO_PACKS).expect("open");
    let mut writer = store.writer().expect("writer");
    writer.write(b"partial").expect("write");
    std::mem::forget(writer); // as if the process died mid-write
    assert_eq!(fs::read_dir(&store.inner.tmp).expect("tmp").count(), 1);
    drop(store);
    let reopened = BlobStore::open(dir.path(), 100).expect("reopen");
    assert_eq!(fs::read_dir(&reopened.inner.tmp).expect("tmp").count(), 0);
}

#[test]
fn list_yields_every_blob_once() {
    let (_dir, store) = store(1 << 20);
    let mut expected = Vec::new();
    for i in 0..50u32 {
        let data = format!("blob {i}").repeat(i as usize + 1);
        let id = store
            .put(Bytes::from(data.clone().into_bytes()), None)
            .expect("put");
        expected.push((id, data.len() as u64));
    }
    // Stray files are ignored.
    fs::write(store.inner.root.join("README"), "x").expect("stray");
    let mut listed: Vec<_> = store.list().collect::<io::Result<_>>().expect("list");
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

fn payer(subject: &str) -> Payer {
    Payer {
        subject: subject.to_string(),
        quota: Some(1 << 20),
    }
}

/// Packs for blobs up to 100 bytes, no background compaction.
fn tiny_packs() -> PackConfig {
    PackConfig {
        max_blob: 100,
        lanes: 1,
        compaction: crate::pack::CompactionConfig {
            interval: std::time::Duration::ZERO,
            ..Default::default()
        },
        ..PackConfig::default()
    }
}

#[test]
fn deleting_gives_back_exactly_the_charge_also_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = b"small and packed".to_vec();
    let large = vec![3u8; 500];
    let (small_id, large_id) = {
        let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("open");
        let alice = payer("alice");
        let small_id = store
            .put_as(Bytes::from(small.clone()), None, Some(&alice))
            .expect("small");
        let large_id = store
            .put_as(Bytes::from(large.clone()), None, Some(&alice))
            .expect("large");
        // Bob stores nothing new: he is not charged, and is given nothing back.
        store
            .put_as(Bytes::from(small.clone()), None, Some(&payer("bob")))
            .expect("again");
        assert_eq!(store.usage().used("alice"), 516);
        assert_eq!(store.delete(&small_id).expect("delete"), Some(16));
        assert_eq!(store.usage().used("alice"), 500);
        assert_eq!(store.usage().used("bob"), 0);
        assert_eq!(store.delete(&small_id).expect("again"), None);
        assert_eq!(store.usage().used("alice"), 500, "released twice");
        assert_eq!(store.totals(), (1, 500));
        (small_id, large_id)
    };
    let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("reopen");
    assert_eq!(store.usage().used("alice"), 500);
    assert_eq!(store.size(&small_id).expect("size"), None);
    assert_eq!(store.totals(), (1, 500));
    let deleted = store
        .delete_many(&[large_id, large_id, small_id])
        .expect("delete");
    assert_eq!(deleted, vec![(large_id, 500)]);
    assert!(!store.blob_path(&large_id).exists());
    assert_eq!(store.usage().used("alice"), 0);
    assert_eq!(store.totals(), (0, 0));
    drop(store);
    let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("reopen");
    assert_eq!(store.usage().used("alice"), 0);
}

#[test]
fn a_blob_held_in_both_layouts_is_deleted_from_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("open");
    // Streamed first (a file), then written whole (packed).
    let mut writer = store.writer().expect("writer");
    writer.write(b"twice").expect("write");
    let id = writer.commit(None).expect("commit");
    store
        .packs()
        .expect("packs")
        .put(id, Bytes::from_static(b"twice"), None)
        .expect("pack");
    assert!(store.blob_path(&id).exists());
    assert!(store.packed(&id).expect("packed").is_some());
    assert_eq!(store.delete_many(&[id]).expect("delete"), vec![(id, 5)]);
    assert!(!store.blob_path(&id).exists());
    assert!(store.packed(&id).expect("packed").is_none());
    assert_eq!(store.size(&id).expect("size"), None);
}

#[test]
fn pages_merge_both_layouts_in_address_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("open");
    let mut expected = Vec::new();
    for i in 0..40u32 {
        // Even: packed (short); odd: files (over 100 bytes).
        let data = if i % 2 == 0 {
            format!("packed {i}").into_bytes()
        } else {
            format!("file {i} ").repeat(20).into_bytes()
        };
        let id = store.put(Bytes::from(data.clone()), None).expect("put");
        expected.push((id, data.len() as u64));
    }
    expected.sort();
    assert!(
        store
            .blob_path(&expected.iter().find(|(_, l)| *l > 100).expect("file").0)
            .exists()
    );
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = store.page(after, 7).expect("page");
        assert!(page.len() <= 7);
        listed.extend(page.iter().copied());
        if page.len() < 7 {
            break;
        }
        after = page.last().map(|(id, _)| *id);
    }
    assert_eq!(listed, expected);
    // From the middle.
    let middle = expected[19].0;
    assert_eq!(
        store.page(Some(middle), 100).expect("page"),
        expected[20..].to_vec()
    );
    assert!(
        store
            .page(Some(expected[39].0), 5)
            .expect("page")
            .is_empty()
    );
}

/// The bytes of a read's body, and whether they came back as an open file.
fn body_bytes(body: BlobBody) -> (Vec<u8>, bool) {
    match body {
        BlobBody::Bytes(data) => (data, false),
        BlobBody::File { file, len } => {
            let mut data = Vec::new();
            file.take(len).read_to_end(&mut data).expect("read file");
            (data, true)
        }
    }
}

/// Reads `range` of blob `id`, which must be held and the range satisfiable: the
/// selected range, the bytes, and whether they came back as an open file.
fn read(
    store: &BlobStore,
    id: &Id,
    range: Option<ByteRange>,
) -> (Option<std::ops::RangeInclusive<u64>>, Vec<u8>, bool) {
    match store.read(id, range).expect("read") {
        Some(Opened::Content(read)) => {
            assert_eq!(read.size, store.size(id).expect("size").expect("held"));
            let len = read.body.len();
            let (data, file) = body_bytes(read.body);
            assert_eq!(data.len() as u64, len, "the body's length");
            (read.range, data, file)
        }
        other => panic!("expected content, got {other:?}"),
    }
}

#[test]
fn read_serves_packed_and_file_blobs_whole_and_in_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open_with(dir.path(), 1 << 20, tiny_packs()).expect("open");
    let packed = b"packed: short enough for a pack".to_vec();
    let file = b"a file: ".repeat(20);
    for data in [&packed, &file] {
        let id = store.put(Bytes::from(data.clone()), None).expect("put");
        assert_eq!(
            store.packed(&id).expect("packed").is_some(),
            data.len() <= 100
        );
        let len = data.len() as u64;
        assert_eq!(read(&store, &id, None), (None, data.clone(), false));
        let between = Some(ByteRange::Between { first: 2, last: 5 });
        assert_eq!(
            read(&store, &id, between),
            (Some(2..=5), data[2..=5].to_vec(), false)
        );
        let past_end = Some(ByteRange::Between {
            first: 3,
            last: len + 50,
        });
        assert_eq!(
            read(&store, &id, past_end),
            (Some(3..=len - 1), data[3..].to_vec(), false)
        );
        let last = Some(ByteRange::Last(4));
        assert_eq!(
            read(&store, &id, last),
            (
                Some(len - 4..=len - 1),
                data[data.len() - 4..].to_vec(),
                false
            )
        );
        for outside in [ByteRange::From(len), ByteRange::Last(0)] {
            assert!(matches!(
                store.read(&id, Some(outside)).expect("read"),
                Some(Opened::Unsatisfiable { size }) if size == len
            ));
        }
    }
    let absent = Id::of_content(b"never stored");
    assert!(store.read(&absent, None).expect("read").is_none());
    assert!(
        store
            .read(&absent, Some(ByteRange::From(0)))
            .expect("read")
            .is_none()
    );
}

#[test]
fn large_selections_come_back_as_open_files_from_either_layout() {
    let large = (0..INLINE_READ + 5000)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>();
    let len = large.len() as u64;
    for config in [PackConfig::default(), NO_PACKS] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open_with(dir.path(), 4 << 20, config).expect("open");
        let id = store.put(Bytes::from(large.clone()), None).expect("put");
        assert_eq!(
            store.packed(&id).expect("packed").is_some(),
            config.max_blob > 0
        );
        assert_eq!(read(&store, &id, None), (None, large.clone(), true));
        // One byte over the inline size, from the middle: still a file, positioned.
        let first = 1000;
        let last = first + INLINE_READ;
        assert_eq!(
            read(&store, &id, Some(ByteRange::Between { first, last })),
            (
                Some(first..=last),
                large[first as usize..=last as usize].to_vec(),
                true
            )
        );
        // A small range of a large blob is read at once.
        assert_eq!(
            read(&store, &id, Some(ByteRange::From(len - 10))),
            (
                Some(len - 10..=len - 1),
                large[large.len() - 10..].to_vec(),
                false
            )
        );
    }
}

/// An upload body delivered in chunks of `chunk` bytes.
fn body(data: &[u8], chunk: usize) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin {
    let chunks: Vec<Result<Bytes, String>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    stream::iter(chunks)
}

/// Where blob `id` is held: (packed, as a file).
fn layout(store: &BlobStore, id: &Id) -> (bool, bool) {
    (
        store.packed(id).expect("packed").is_some(),
        store.blob_path(id).exists(),
    )
}

#[tokio::test]
async fn receive_packs_bodies_taken_whole_and_writes_streamed_ones_as_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path(), 8 << 20).expect("open");
    let pack_max = store.pack_max_blob();
    let small = b"small, declared".to_vec();
    let budgeted = vec![5u8; INLINE_WRITE as usize + 1];
    let over_pack = vec![6u8; pack_max + 1];
    let undeclared = b"small, length unknown".to_vec();
    // (body, declared length, expected layout)
    let cases = [
        (&small, Some(small.len() as u64), (true, false)),
        (&budgeted, Some(budgeted.len() as u64), (true, false)),
        (&over_pack, Some(over_pack.len() as u64), (false, true)),
        (&undeclared, None, (false, true)),
    ];
    for (data, declared, expected_layout) in cases {
        let expected = Id::of_content(data);
        let id = store
            .receive(body(data, 7000), declared, Some(expected), None)
            .await
            .expect("receive");
        assert_eq!(id, expected);
        assert_eq!(layout(&store, &id), expected_layout, "{} bytes", data.len());
        assert_eq!(read(&store, &id, None).1, *data);
    }
    assert_eq!(store.totals().0, 4);
}

#[tokio::test]
async fn receive_streams_a_packable_body_when_the_memory_budget_is_spent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path(), 8 << 20).expect("open");
    let budget = Arc::clone(&store.inner.receive_budget);
    let spent = budget
        .clone()
        .try_acquire_many_owned(receive::BUDGET_KIB as u32)
        .expect("the whole budget");
    let data = vec![9u8; INLINE_WRITE as usize + 1];
    let declared = Some(data.len() as u64);
    let streamed = store
        .receive(body(&data, 4096), declared, None, None)
        .await
        .expect("receive");
    assert_eq!(layout(&store, &streamed), (false, true));
    // Small bodies do not draw on the budget.
    let small = store
        .receive(body(b"tiny", 4096), Some(4), None, None)
        .await
        .expect("receive");
    assert_eq!(layout(&store, &small), (true, false));
    drop(spent);
    let other = vec![8u8; INLINE_WRITE as usize + 1];
    let packed = store
        .receive(body(&other, 4096), Some(other.len() as u64), None, None)
        .await
        .expect("receive");
    assert_eq!(layout(&store, &packed), (true, false));
    assert_eq!(
        budget.available_permits(),
        receive::BUDGET_KIB,
        "given back"
    );
}

#[tokio::test]
async fn receive_refuses_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path(), 1000).expect("open");
    let data = b"the right bytes".to_vec();
    let wrong = Id::of_content(b"other bytes");

    let refused = store
        .receive(body(&data, 4), Some(1001), None, None)
        .await
        .expect_err("declared too large");
    assert!(matches!(
        refused,
        StoreError::DeclaredTooLarge {
            declared: 1001,
            limit: 1000
        }
    ));
    // Too long without a declared length (streamed) and with a wrong one (whole).
    let long = vec![1u8; 1001];
    for declared in [None, Some(10)] {
        let refused = store
            .receive(body(&long, 100), declared, None, None)
            .await
            .expect_err("too large");
        assert!(matches!(refused, StoreError::TooLarge { limit: 1000 }));
    }
    for declared in [None, Some(data.len() as u64)] {
        let refused = store
            .receive(body(&data, 4), declared, Some(wrong), None)
            .await
            .expect_err("mismatch");
        assert!(matches!(refused, StoreError::HashMismatch { expected, .. } if expected == wrong));
        let broken = stream::iter(vec![
            Ok(Bytes::from_static(b"the ")),
            Err("connection reset".to_string()),
        ]);
        let refused = store
            .receive(broken, declared, None, None)
            .await
            .expect_err("body error");
        assert!(matches!(&refused, StoreError::Body(reason) if reason == "connection reset"));
        assert_eq!(refused.to_string(), "could not read body: connection reset");
    }
    assert_eq!(store.totals(), (0, 0));
    assert_eq!(fs::read_dir(&store.inner.tmp).expect("tmp").count(), 0);
}

#[tokio::test]
async fn receive_checks_a_declared_length_against_the_quota_unless_already_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path(), 1 << 20).expect("open");
    let tight = Payer {
        subject: "tight".to_string(),
        quota: Some(10),
    };
    let data = b"more than ten bytes".to_vec();
    let id = Id::of_content(&data);
    let declared = Some(data.len() as u64);
    let refused = store
        .receive(body(&data, 4), declared, Some(id), Some(&tight))
        .await
        .expect_err("over quota");
    assert!(matches!(refused, StoreError::Quota(_)));
    assert_eq!(store.size(&id).expect("size"), None);
    store.put(Bytes::from(data.clone()), None).expect("put");
    let held = store
        .receive(body(&data, 4), declared, Some(id), Some(&tight))
        .await
        .expect("already held: free");
    assert_eq!(held, id);
    assert_eq!(store.usage().used("tight"), 0);
}
