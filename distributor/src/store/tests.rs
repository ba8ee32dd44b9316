//! Tests of the distributor store: pin counting (per block and per subject),
//! registrations, placement knowledge, paging, and opening older schemas.

use super::*;

/// A distinct id per `n` (shared with the collection tests).
pub(super) fn id(n: u8) -> Id {
    Id::of_content(&[n])
}

/// A fresh store in a temporary directory (shared with the collection tests).
pub(super) fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    (dir, store)
}

#[test]
fn pins_are_reference_counted() {
    let (_dir, store) = open();
    let added = store.pin(ANONYMOUS, &[id(1), id(2), id(1)]).expect("pin");
    let mut want = vec![id(1), id(2)];
    want.sort();
    assert_eq!(added.new, want);
    assert_eq!(added.total, 2);
    assert_eq!(store.pins(&id(1)).expect("count"), 2);
    assert_eq!(store.pin(ANONYMOUS, &[id(2)]).expect("pin").new, vec![]);

    let removed = store
        .unpin(ANONYMOUS, &[id(1)])
        .expect("unpin")
        .expect("allowed");
    assert!(removed.released.is_empty());
    assert_eq!(removed.total, 2);
    let removed = store
        .unpin(ANONYMOUS, &[id(1)])
        .expect("unpin")
        .expect("allowed");
    assert_eq!(removed.released, vec![id(1)]);
    assert_eq!(store.pinned_count().expect("count"), 1);
}

#[test]
fn unpin_below_zero_changes_nothing() {
    let (_dir, store) = open();
    store.pin(ANONYMOUS, &[id(1), id(2)]).expect("pin");
    let refused = store
        .unpin(ANONYMOUS, &[id(1), id(2), id(2)])
        .expect("unpin")
        .expect_err("below zero");
    assert_eq!(
        refused,
        BelowZero {
            id: id(2),
            have: 1,
            asked: 2
        }
    );
    assert_eq!(store.pins(&id(1)).expect("count"), 1);
    assert_eq!(store.pins(&id(2)).expect("count"), 1);
    assert!(store.unpin(ANONYMOUS, &[id(3)]).expect("unpin").is_err());
}

#[test]
fn registrations_and_holders_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        store.register(&[id(9), id(9)]).expect("register");
        store.pin(ANONYMOUS, &[id(1)]).expect("pin");
        store
            .apply_holders(&[
                HolderUpdate::Add {
                    block: id(1),
                    storage: id(9),
                    size: None,
                },
                // Not pinned: skipped.
                HolderUpdate::Add {
                    block: id(2),
                    storage: id(9),
                    size: None,
                },
            ])
            .expect("holders");
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.registered().expect("registered"), vec![(id(9), 2)]);
    assert_eq!(
        store.pinned_block(&id(1)).expect("block"),
        Some(vec![id(9)])
    );
    assert_eq!(store.pinned_block(&id(2)).expect("block"), None);
}

#[test]
fn releasing_a_pin_forgets_its_holders() {
    let (_dir, store) = open();
    store.pin(ANONYMOUS, &[id(1), id(2)]).expect("pin");
    let updates: Vec<HolderUpdate> = [1u8, 2]
        .iter()
        .flat_map(|b| {
            [7u8, 8].map(|s| HolderUpdate::Add {
                block: id(*b),
                storage: id(s),
                size: Some(u64::from(s)),
            })
        })
        .collect();
    store.apply_holders(&updates).expect("holders");
    store
        .unpin(ANONYMOUS, &[id(1)])
        .expect("unpin")
        .expect("allowed");
    store.pin(ANONYMOUS, &[id(1)]).expect("pin again");
    assert_eq!(store.pinned_block(&id(1)).expect("block"), Some(vec![]));
    let mut two = vec![id(7), id(8)];
    two.sort();
    assert_eq!(store.pinned_block(&id(2)).expect("block"), Some(two));
    store
        .apply_holders(&[HolderUpdate::Remove {
            block: id(2),
            storage: id(7),
        }])
        .expect("remove");
    assert_eq!(
        store.pinned_block(&id(2)).expect("block"),
        Some(vec![id(8)])
    );
}

#[test]
fn scan_pages_through_pins_in_order() {
    let (_dir, store) = open();
    let blocks: Vec<Id> = (0..50u8).map(id).collect();
    store.pin(ANONYMOUS, &blocks).expect("pin");
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan(after, 7).expect("scan");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|p| p.block);
        seen.extend(page.into_iter().map(|p| p.block));
    }
    let mut want = blocks;
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn pins_are_counted_per_subject() {
    let (_dir, store) = open();
    let [a, b, c] = [id(1), id(2), id(3)];
    assert_eq!(store.pin("alice", &[a, a, b]).expect("pin").new, {
        let mut new = vec![a, b];
        new.sort();
        new
    });
    assert_eq!(store.pin("bob", &[a, c]).expect("pin").new, vec![c]);
    assert_eq!(store.pins(&a).expect("count"), 3);
    assert_eq!(store.subject_pins("alice", &a).expect("count"), 2);
    assert_eq!(store.subject_pins("bob", &a).expect("count"), 1);

    // Bob cannot release Alice's pins: refused, nothing applied.
    let refused = store
        .unpin("bob", &[c, a, a])
        .expect("unpin")
        .expect_err("more than bob holds");
    assert_eq!(
        refused,
        BelowZero {
            id: a,
            have: 1,
            asked: 2
        }
    );
    assert!(store.unpin("bob", &[b]).expect("unpin").is_err());
    assert!(store.unpin(ANONYMOUS, &[a]).expect("unpin").is_err());
    assert_eq!(store.pins(&a).expect("count"), 3);
    assert_eq!(store.pins(&c).expect("count"), 1);

    // Totals per subject follow every change.
    assert_eq!(
        store_totals(&store),
        vec![
            ("alice".to_string(), SubjectTotals { blocks: 2, pins: 3 }),
            ("bob".to_string(), SubjectTotals { blocks: 2, pins: 2 }),
        ]
    );

    // A block stays pinned while any subject holds a pin.
    let removed = store
        .unpin("bob", &[a, c])
        .expect("unpin")
        .expect("own pins");
    assert_eq!(removed.released, vec![c]);
    assert_eq!(store.pins(&a).expect("count"), 2);
    let removed = store
        .unpin("alice", &[a, b, a])
        .expect("unpin")
        .expect("own");
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(removed.released, both);
    assert_eq!(removed.total, 0);
    assert!(store_totals(&store).is_empty());
}

fn store_totals(store: &Store) -> Vec<(String, SubjectTotals)> {
    store.pins_by_subject().expect("totals")
}

/// Writes a database as the schema-1 code did: counts in `pins`, no per-subject
/// tables.
fn write_schema_1(dir: &Path, pins: &[(Id, u64)], storages: &[(Id, u64)]) {
    let db = Database::create(dir.join(DB_FILE)).expect("create");
    let txn = db.begin_write().expect("txn");
    {
        txn.open_table(META)
            .expect("meta")
            .insert("schema", 1)
            .expect("schema");
        let mut rows = txn.open_table(PINS).expect("pins");
        for (block, count) in pins {
            rows.insert(block.as_bytes(), encode_count(*count).as_slice())
                .expect("pin");
        }
        let mut rows = txn.open_table(STORAGES).expect("storages");
        for (storage, count) in storages {
            rows.insert(storage.as_bytes(), encode_count(*count).as_slice())
                .expect("storage");
        }
        txn.open_table(HOLDERS).expect("holders");
    }
    txn.commit().expect("commit");
}

#[test]
fn schema_1_pins_become_anonymous_pins() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_schema_1(dir.path(), &[(id(1), 2), (id(2), 1)], &[(id(9), 1)]);
    {
        let store = Store::open(dir.path()).expect("open and migrate");
        assert_eq!(store.pinned_count().expect("count"), 2);
        assert_eq!(store.pins(&id(1)).expect("count"), 2);
        assert_eq!(store.subject_pins(ANONYMOUS, &id(1)).expect("count"), 2);
        assert_eq!(store.subject_pins("alice", &id(1)).expect("count"), 0);
        assert_eq!(store.registered().expect("registered"), vec![(id(9), 1)]);
        assert_eq!(
            store_totals(&store),
            vec![(ANONYMOUS.to_string(), SubjectTotals { blocks: 2, pins: 3 })]
        );
        // Only the anonymous subject may release them.
        assert!(store.unpin("alice", &[id(2)]).expect("unpin").is_err());
        store.pin("alice", &[id(2)]).expect("pin");
    }
    // Reopening does not migrate again (the counts would double).
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(store.subject_pins(ANONYMOUS, &id(1)).expect("count"), 2);
    assert_eq!(store.pins(&id(2)).expect("count"), 2);
    let removed = store
        .unpin(ANONYMOUS, &[id(1), id(1), id(2)])
        .expect("unpin")
        .expect("anonymous pins");
    assert_eq!(removed.released, vec![id(1)]);
    assert_eq!(store.pins(&id(2)).expect("count"), 1);
    assert_eq!(
        store_totals(&store),
        vec![("alice".to_string(), SubjectTotals { blocks: 1, pins: 1 })]
    );
    let txn = store.db.begin_read().expect("txn");
    let meta = txn.open_table(META).expect("meta");
    assert_eq!(
        meta.get("schema").expect("get").map(|v| v.value()),
        Some(SCHEMA)
    );
}

#[test]
fn unknown_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Database::create(dir.path().join(DB_FILE)).expect("create");
        let txn = db.begin_write().expect("txn");
        txn.open_table(META)
            .expect("meta")
            .insert("schema", 99)
            .expect("insert");
        txn.commit().expect("commit");
    }
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Schema { found: 99, .. })
    ));
}
