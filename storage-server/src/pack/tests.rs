//! Unit tests of the packs: appends and group commits, recovery at open, deletion,
//! and compaction (also interrupted, racing readers, and damaged packs).

use std::io::{Read, Write};
use std::time::Instant;

use redb::Durability;

use super::index::{COMPACTING, RETIRED};
use super::record::MAGIC;
use super::*;

/// One lane: records land in pack 0, in order.
fn one_lane() -> PackConfig {
    PackConfig {
        lanes: 1,
        ..PackConfig::default()
    }
}

fn put(packs: &Packs, data: &[u8]) -> Id {
    let id = Id::of_content(data);
    packs
        .put(id, Bytes::copy_from_slice(data), None)
        .expect("put");
    id
}

fn read(packs: &Packs, id: &Id) -> Option<Vec<u8>> {
    let location = packs.locate(id).expect("locate")?;
    let mut out = Vec::new();
    packs
        .open_at(&location)
        .expect("open")
        .take(u64::from(location.len))
        .read_to_end(&mut out)
        .expect("read");
    Some(out)
}

#[test]
fn put_locate_read_and_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let packs = Packs::open(dir.path(), PackConfig::default()).expect("open");
    let mut ids = Vec::new();
    for i in 0..100u32 {
        ids.push(put(&packs, format!("blob number {i}").as_bytes()));
    }
    assert_eq!(read(&packs, &ids[7]).expect("held"), b"blob number 7");
    assert!(
        packs
            .locate(&Id::of_content(b"absent"))
            .expect("locate")
            .is_none()
    );
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = packs.page(after, 30).expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        listed.extend(page);
    }
    assert_eq!(listed.len(), 100);
    assert!(listed.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let packs = Arc::new(Packs::open(dir.path(), PackConfig::default()).expect("open"));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let packs = packs.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let data = format!("thread {t} blob {i}").into_bytes();
                        (put(&packs, &data), data)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for thread in threads {
        all.extend(thread.join().expect("thread"));
    }
    for (id, data) in &all {
        assert_eq!(&read(&packs, id).expect("held"), data);
    }
    assert_eq!(packs.stats().blobs.load(Ordering::Relaxed), 800);
    assert!(
        packs.stats().commits.load(Ordering::Relaxed) < 800,
        "16 concurrent writers never shared a commit"
    );
}

#[test]
fn reopen_indexes_unindexed_records_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = {
        let packs = Packs::open(dir.path(), one_lane()).expect("open");
        (put(&packs, b"first"), put(&packs, b"second"))
    };
    // As a crash after the pack's sync but before the index's would leave it:
    // the index forgets both blobs, and a torn record follows them.
    let index_path = dir.path().join("packs").join("index.redb");
    fs::remove_file(&index_path).expect("drop index");
    let pack = pack_path(&dir.path().join("packs"), 0);
    let intact = fs::metadata(&pack).expect("pack").len();
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&pack)
        .expect("pack");
    file.write_all(MAGIC).expect("torn");
    file.write_all(&100u32.to_le_bytes()).expect("torn");
    file.write_all(&[9u8; 50]).expect("torn");
    drop(file);

    let packs = Packs::open(dir.path(), one_lane()).expect("reopen");
    assert_eq!(read(&packs, &a).expect("a"), b"first");
    assert_eq!(read(&packs, &b).expect("b"), b"second");
    assert_eq!(fs::metadata(&pack).expect("pack").len(), intact);
    // Appends continue after the cut.
    let c = put(&packs, b"third");
    assert_eq!(read(&packs, &c).expect("c"), b"third");
}

#[test]
fn a_record_that_does_not_hash_to_its_address_ends_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let packs_dir = dir.path().join("packs");
    fs::create_dir_all(&packs_dir).expect("mkdir");
    let mut bytes = Vec::new();
    let good = Id::of_content(b"good");
    for (id, data) in [(good, &b"good"[..]), (Id::of_content(b"x"), &b"bad"[..])] {
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
        bytes.extend_from_slice(id.as_bytes());
        bytes.extend_from_slice(data);
    }
    fs::write(pack_path(&packs_dir, 0), &bytes).expect("write");
    let packs = Packs::open(dir.path(), one_lane()).expect("open");
    assert_eq!(read(&packs, &good).expect("good"), b"good");
    assert!(read(&packs, &Id::of_content(b"x")).is_none());
    assert!(read(&packs, &Id::of_content(b"bad")).is_none());
}

#[test]
fn full_packs_roll_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = PackConfig {
        max_blob: 4096,
        max_pack: 10_000,
        lanes: 1,
        ..PackConfig::default()
    };
    let mut ids = Vec::new();
    {
        let packs = Packs::open(dir.path(), config).expect("open");
        for i in 0..50u32 {
            ids.push(put(&packs, &vec![(i % 200) as u8 + 1; 1000 + i as usize]));
        }
    }
    let count = fs::read_dir(dir.path().join("packs"))
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .map(|e| e.file_name().to_string_lossy().ends_with(".dat"))
                .unwrap_or(false)
        })
        .count();
    assert!(count >= 4, "only {count} packs");
    let packs = Packs::open(dir.path(), config).expect("reopen");
    for id in &ids {
        assert!(read(&packs, id).is_some());
    }
}

fn tombstone(packs: &Packs, index: &Database, ids: &[Id]) -> Vec<(Id, Location)> {
    let mut txn = index.begin_write().expect("txn");
    txn.set_durability(Durability::Immediate)
        .expect("durability");
    let removed = packs.tombstone(&txn, ids).expect("tombstone");
    txn.commit().expect("commit");
    packs.tombstoned(&removed);
    removed
}

/// Small packs, one lane, no background compaction.
fn small_packs() -> PackConfig {
    PackConfig {
        max_blob: 4096,
        max_pack: 20_000,
        lanes: 1,
        compaction: CompactionConfig {
            threshold: 0.5,
            bytes_per_s: 0,
            interval: Duration::ZERO,
        },
    }
}

fn blob(i: u32) -> Vec<u8> {
    format!("blob {i} ")
        .repeat(100 + i as usize % 50)
        .into_bytes()
}

#[test]
fn deleted_blobs_stay_deleted_after_reopen_and_are_counted_dead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, c) = {
        let index = open_index(dir.path()).expect("index");
        let packs = Packs::open_with_index(dir.path(), one_lane(), index.clone()).expect("open");
        let (a, b, c) = (
            put(&packs, b"first"),
            put(&packs, b"second"),
            put(&packs, b"third"),
        );
        let removed = tombstone(&packs, &index, &[b, Id::of_content(b"never stored")]);
        assert_eq!(removed.len(), 1, "only the held blob is removed");
        assert_eq!(packs.dead_bytes(), HEADER + 6);
        assert!(packs.locate(&b).expect("locate").is_none());
        // Appends after the delete extend the pack past the dead record.
        put(&packs, b"fourth");
        (a, b, c)
    };
    let packs = Packs::open(dir.path(), one_lane()).expect("reopen");
    assert!(read(&packs, &b).is_none(), "a deleted blob came back");
    assert_eq!(read(&packs, &a).expect("a"), b"first");
    assert_eq!(read(&packs, &c).expect("c"), b"third");
    assert_eq!(packs.dead_bytes(), HEADER + 6, "dead bytes persisted");
    // The record is still in the pack (until compaction), just not indexed.
    assert!(
        verify_packs(dir.path())
            .expect("verify")
            .iter()
            .any(|(id, _)| *id == b)
    );
}

#[test]
fn a_mostly_dead_active_pack_is_closed_and_then_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_index(dir.path()).expect("index");
    // Room for every blob in one pack; 12.5 KB of dead bytes are worth closing it.
    let config = PackConfig {
        max_pack: 200_000,
        ..small_packs()
    };
    let packs = Packs::open_with_index(dir.path(), config, index.clone()).expect("open");
    let ids: Vec<Id> = (0..40).map(|i| put(&packs, &blob(i))).collect();
    let first = packs.core.active[0].load(Ordering::Relaxed);
    tombstone(&packs, &index, &ids[1..]);
    // The first pass finds only the active pack sparse: it asks the lane to close it.
    assert_eq!(packs.compact_now().expect("compact").packs, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while packs.core.active[0].load(Ordering::Relaxed) == first {
        assert!(Instant::now() < deadline, "the lane never closed its pack");
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = packs.compact_now().expect("compact again");
    assert_eq!(report.packs, 1, "{report:?}");
    assert_eq!(packs.dead_bytes(), 0);
    assert_eq!(read(&packs, &ids[0]).expect("the live blob"), blob(0));
    assert!(read(&packs, &ids[1]).is_none());
    assert!(
        !packs
            .pack_usage()
            .expect("usage")
            .iter()
            .any(|(n, _, _)| *n == first),
        "the old active pack is gone"
    );
    // A lane whose pack holds too few dead bytes keeps it.
    let before = packs.core.active[0].load(Ordering::Relaxed);
    let more: Vec<Id> = (100..104).map(|i| put(&packs, &blob(i))).collect();
    tombstone(&packs, &index, &more[..1]);
    packs.compact_now().expect("third pass");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(packs.core.active[0].load(Ordering::Relaxed), before);
}

#[test]
fn compaction_keeps_live_blobs_drops_dead_ones_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_index(dir.path()).expect("index");
    let packs = Packs::open_with_index(dir.path(), small_packs(), index.clone()).expect("open");
    let ids: Vec<Id> = (0..60).map(|i| put(&packs, &blob(i))).collect();
    let (dead, live): (Vec<_>, Vec<_>) = ids.iter().enumerate().partition(|(i, _)| i % 4 != 0);
    let dead: Vec<Id> = dead.into_iter().map(|(_, id)| *id).collect();
    let live: Vec<Id> = live.into_iter().map(|(_, id)| *id).collect();
    tombstone(&packs, &index, &dead);
    let dead_before = packs.dead_bytes();
    let records_before = verify_packs(dir.path()).expect("verify").len();

    let report = packs.compact_now().expect("compact");
    assert!(report.packs >= 2, "{report:?}");
    assert!(report.written < report.read);
    assert!(packs.dead_bytes() < dead_before);
    let records_after = verify_packs(dir.path()).expect("verify");
    assert!(records_after.len() < records_before);
    for (i, id) in ids.iter().enumerate() {
        let held = packs.read_blob(id).expect("read");
        if i % 4 == 0 {
            assert_eq!(held.expect("live blob lost"), blob(i as u32));
        } else {
            assert!(held.is_none(), "deleted blob {i} came back");
        }
    }
    // Only the active pack may still hold dead records.
    let active = packs.core.active[0].load(Ordering::Relaxed);
    for (n, covered, dead) in packs.pack_usage().expect("usage") {
        assert!(n == active || (covered - dead) as f64 >= 0.5 * covered as f64);
    }
    // A second pass finds nothing to do.
    assert_eq!(packs.compact_now().expect("again").packs, 0);
    drop(packs);
    drop(index);

    let packs = Packs::open(dir.path(), small_packs()).expect("reopen");
    for id in &live {
        let data = packs
            .read_blob(id)
            .expect("read")
            .expect("live after reopen");
        assert_eq!(Id::of_content(&data), *id);
    }
    for id in &dead {
        assert!(packs.locate(id).expect("locate").is_none(), "resurrected");
    }
}

#[test]
fn interrupted_compactions_are_finished_at_open_without_resurrecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let packs_dir = dir.path().join("packs");
    let (live, dead, old_pack, old_copy) = {
        let index = open_index(dir.path()).expect("index");
        let packs = Packs::open_with_index(dir.path(), small_packs(), index.clone()).expect("open");
        let ids: Vec<Id> = (0..40).map(|i| put(&packs, &blob(i))).collect();
        let old_pack = packs.locate(&ids[0]).expect("locate").expect("held").pack;
        let old_copy = fs::read(pack_path(&packs_dir, old_pack)).expect("pack");
        let (dead, live): (Vec<Id>, Vec<Id>) = ids.iter().partition(|id| {
            packs.locate(id).expect("locate").expect("held").pack == old_pack
                && id.as_bytes()[0] % 3 != 0
        });
        tombstone(&packs, &index, &dead);
        packs.compact_with_threshold(1.0).expect("compact");
        assert!(!pack_path(&packs_dir, old_pack).exists(), "old pack kept");
        (live, dead, old_pack, old_copy)
    };
    // As if killed after the commit but before the old pack was removed: the old
    // file is back, marked retired.
    fs::write(pack_path(&packs_dir, old_pack), &old_copy).expect("restore");
    {
        let index = open_index(dir.path()).expect("index");
        let txn = index.begin_write().expect("txn");
        txn.open_table(RETIRED)
            .expect("retired")
            .insert(old_pack, 0)
            .expect("mark");
        txn.commit().expect("commit");
    }
    // And as if killed while a second compaction wrote its target (a copy of the
    // old pack, deleted records included), before its commit.
    let target = 9_000;
    fs::write(pack_path(&packs_dir, target), &old_copy).expect("target");
    {
        let index = open_index(dir.path()).expect("index");
        let txn = index.begin_write().expect("txn");
        txn.open_table(COMPACTING)
            .expect("compacting")
            .insert(target, old_pack)
            .expect("mark");
        txn.commit().expect("commit");
    }
    let packs = Packs::open(dir.path(), small_packs()).expect("reopen");
    assert!(!pack_path(&packs_dir, old_pack).exists());
    assert!(!pack_path(&packs_dir, target).exists());
    for id in &dead {
        assert!(packs.locate(id).expect("locate").is_none(), "resurrected");
    }
    for id in &live {
        let data = packs.read_blob(id).expect("read").expect("live");
        assert_eq!(Id::of_content(&data), *id);
    }
    // New packs are numbered past every pack the index knows.
    let active = packs.core.active[0].load(Ordering::Relaxed);
    for (n, _, _) in packs.pack_usage().expect("usage") {
        assert!(n < active, "pack {n} not below the active {active}");
    }
}

#[test]
fn reads_racing_compaction_get_the_right_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_index(dir.path()).expect("index");
    let packs =
        Arc::new(Packs::open_with_index(dir.path(), small_packs(), index.clone()).expect("open"));
    let ids: Vec<Id> = (0..200).map(|i| put(&packs, &blob(i))).collect();
    let (dead, live): (Vec<Id>, Vec<Id>) = ids.iter().partition(|id| id.as_bytes()[1] % 4 != 0);
    tombstone(&packs, &index, &dead);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (packs, live, stop) = (packs.clone(), live.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for id in &live {
                        let data = packs.read_blob(id).expect("read").expect("live");
                        assert_eq!(Id::of_content(&data), *id, "wrong bytes");
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let report = packs.compact_now().expect("compact");
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().expect("reader") > 0);
    }
    assert!(report.packs > 0);
}

#[test]
fn a_damaged_pack_is_left_alone_and_the_others_are_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = open_index(dir.path()).expect("index");
    let packs = Packs::open_with_index(dir.path(), small_packs(), index.clone()).expect("open");
    let ids: Vec<Id> = (0..60).map(|i| put(&packs, &blob(i))).collect();
    let first_pack = packs.locate(&ids[0]).expect("locate").expect("held").pack;
    let dead: Vec<Id> = ids.iter().skip(1).copied().collect();
    tombstone(&packs, &index, &dead);
    // Damage the last record of the first pack (a dead one).
    let path = pack_path(&dir.path().join("packs"), first_pack);
    let mut bytes = fs::read(&path).expect("pack");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).expect("damage");

    let report = packs.compact_now().expect("compact");
    assert_eq!(report.failed, 1, "{report:?}");
    assert!(
        report.packs >= 1,
        "the other packs were not compacted: {report:?}"
    );
    assert!(path.exists(), "the damaged pack was removed");
    let data = packs.read_blob(&ids[0]).expect("read").expect("live");
    assert_eq!(Id::of_content(&data), ids[0]);
}
