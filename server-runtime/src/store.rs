//! What the roles' redb databases share: the one [`StoreError`] shape, opening a
//! database ([`DatabaseOpener`]: its directory, the wait for a handle still held, the
//! tables every read expects) and the stored schema version ([`upgrade_schema`]).
//!
//! Each role keeps its own tables and record formats; a role with failures of its own
//! wraps [`StoreError`] in its error and gains the redb conversions with
//! [`redb_error_conversions!`](crate::redb_error_conversions).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use redb;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

/// How long [`DatabaseOpener::open`] waits, by default, for a database another handle
/// holds (typically a server of this process still stopping) to be released.
pub const OPEN_WAIT: Duration = Duration::from_secs(5);
/// Pause between attempts while waiting for a held database.
const OPEN_RETRY: Duration = Duration::from_millis(20);
/// The key of the schema version in a role's metadata table.
pub const SCHEMA_KEY: &str = "schema";

/// A store failure (never caused by client input).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory cannot be created.
    #[error("cannot create the data directory: {0}")]
    Io(#[from] std::io::Error),
    /// Another open handle (this or another process) still held the database after
    /// the wait.
    #[error("{} is already open", .0.display())]
    AlreadyOpen(PathBuf),
    /// redb failed (I/O, corruption detected by redb, ...).
    #[error("database error: {0}")]
    Database(#[from] redb::Error),
    /// A stored value does not decode.
    #[error("stored {record} is corrupt: {reason}")]
    Corrupt {
        /// What the value is, e.g. `record` or `record of "name"`.
        record: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database was written by a newer, unknown layout.
    #[error("database schema {found} is not supported (this build reads {supported})")]
    Schema {
        /// The schema found on disk.
        found: u64,
        /// The schema this build writes.
        supported: u64,
    },
}

impl StoreError {
    /// A [`StoreError::Corrupt`] of the stored `record`.
    pub fn corrupt(record: impl Into<String>, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            record: record.into(),
            reason: reason.into(),
        }
    }
}

/// The `N` bytes of a stored value laid out as `format ‖ N bytes`: the format marker
/// first, then a fixed-size payload. Anything else is [`StoreError::Corrupt`] of
/// `record`.
pub fn fixed_value<const N: usize>(
    value: &[u8],
    format: u8,
    record: &str,
) -> Result<[u8; N], StoreError> {
    match value.split_first() {
        Some((&marker, rest)) if marker == format => rest.try_into().map_err(|_| {
            StoreError::corrupt(
                record,
                format!(
                    "format {format} value has {} bytes, not {}",
                    value.len(),
                    N + 1
                ),
            )
        }),
        Some((marker, _)) => Err(StoreError::corrupt(
            record,
            format!("unknown format marker {marker}"),
        )),
        None => Err(StoreError::corrupt(record, "empty value")),
    }
}

/// Implements `From` each of redb's error types for an error that is `From<StoreError>`,
/// so `?` works on redb calls in code returning that error.
#[macro_export]
macro_rules! redb_error_conversions {
    ($error:ty) => {
        $crate::redb_error_conversions!(
            @each $error;
            DatabaseError,
            TransactionError,
            TableError,
            StorageError,
            CommitError,
            SetDurabilityError
        );
    };
    (@each $error:ty; $($redb:ident),*) => {$(
        impl From<$crate::store::redb::$redb> for $error {
            fn from(e: $crate::store::redb::$redb) -> $error {
                <$error>::from($crate::store::StoreError::Database(e.into()))
            }
        }
    )*};
}

redb_error_conversions!(StoreError);

/// Opens (creating if needed) one redb database file.
#[derive(Debug, Clone)]
pub struct DatabaseOpener {
    path: PathBuf,
    cache_size: Option<usize>,
    wait: Duration,
}

impl DatabaseOpener {
    /// Opens `path` with redb's default cache, waiting up to [`OPEN_WAIT`] for a held file.
    pub fn new(path: impl Into<PathBuf>) -> DatabaseOpener {
        DatabaseOpener {
            path: path.into(),
            cache_size: None,
            wait: OPEN_WAIT,
        }
    }

    /// Uses a page cache of `bytes`.
    pub fn cache_size(mut self, bytes: usize) -> DatabaseOpener {
        self.cache_size = Some(bytes);
        self
    }

    /// Waits up to `wait` for a database another handle holds.
    pub fn wait(mut self, wait: Duration) -> DatabaseOpener {
        self.wait = wait;
        self
    }

    /// Creates the file's directory, opens (creating if needed) the database — waiting
    /// while another handle holds it, then failing with [`StoreError::AlreadyOpen`] —
    /// and runs `init` in one committed write transaction: creating the tables that
    /// reads expect to find, checking or upgrading the schema.
    pub fn open<E>(
        &self,
        init: impl FnOnce(&WriteTransaction) -> Result<(), E>,
    ) -> Result<Database, E>
    where
        E: From<StoreError>,
    {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::from)?;
        }
        let db = self.open_file().map_err(E::from)?;
        let txn = db.begin_write().map_err(StoreError::from)?;
        init(&txn)?;
        txn.commit().map_err(StoreError::from)?;
        Ok(db)
    }

    fn open_file(&self) -> Result<Database, StoreError> {
        let started = Instant::now();
        loop {
            let mut builder = Database::builder();
            if let Some(bytes) = self.cache_size {
                builder.set_cache_size(bytes);
            }
            match builder.create(&self.path) {
                Ok(db) => return Ok(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < self.wait => {
                    tracing::debug!(path = %self.path.display(), "database still held; waiting");
                    std::thread::sleep(OPEN_RETRY);
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::AlreadyOpen(self.path.clone()));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Opens (creating if needed) `<data_dir>/<file>` as [`DatabaseOpener::open`] does.
pub fn open_in<E>(
    data_dir: &Path,
    file: &str,
    init: impl FnOnce(&WriteTransaction) -> Result<(), E>,
) -> Result<Database, E>
where
    E: From<StoreError>,
{
    DatabaseOpener::new(data_dir.join(file)).open(init)
}

/// Brings the schema version stored under [`SCHEMA_KEY`] in `meta` to `current`.
///
/// A new database (no version) simply gets `current`. An older version is handed to
/// `upgrade`, which migrates it in `txn` (or refuses it); a newer one is refused with
/// [`StoreError::Schema`]. The version is written in `txn`, so it changes only with a
/// committed upgrade.
pub fn upgrade_schema<E>(
    txn: &WriteTransaction,
    meta: TableDefinition<&str, u64>,
    current: u64,
    upgrade: impl FnOnce(u64) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<StoreError>,
{
    let found = {
        let table = txn.open_table(meta).map_err(StoreError::from)?;
        table
            .get(SCHEMA_KEY)
            .map_err(StoreError::from)?
            .map(|v| v.value())
    };
    match found {
        None => {}
        Some(found) if found == current => {}
        Some(found) if found > current => {
            return Err(StoreError::Schema {
                found,
                supported: current,
            }
            .into());
        }
        Some(older) => upgrade(older)?,
    }
    let mut table = txn.open_table(meta).map_err(StoreError::from)?;
    table
        .insert(SCHEMA_KEY, current)
        .map_err(StoreError::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    const THINGS: TableDefinition<&str, u64> = TableDefinition::new("things");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

    fn create_things(txn: &WriteTransaction) -> Result<(), StoreError> {
        txn.open_table(THINGS)?;
        Ok(())
    }

    fn schema_of(db: &Database) -> Option<u64> {
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        meta.get(SCHEMA_KEY).expect("get").map(|v| v.value())
    }

    #[test]
    fn open_creates_the_directory_and_the_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_in(&dir.path().join("a/b"), "x.redb", create_things).expect("open");
        let txn = db.begin_read().expect("read");
        let things = txn.open_table(THINGS).expect("table exists");
        assert_eq!(things.len().expect("len"), 0);
        assert!(dir.path().join("a/b/x.redb").is_file());
    }

    /// A database at `<temp dir>/x.redb` held open by the returned handle.
    fn held_database() -> (tempfile::TempDir, PathBuf, Database) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.redb");
        let db = DatabaseOpener::new(&path)
            .open(create_things)
            .expect("open");
        (dir, path, db)
    }

    #[test]
    fn open_waits_for_a_held_database() {
        let (_dir, path, first) = held_database();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(first);
        });
        let second = DatabaseOpener::new(&path).open(create_things);
        releaser.join().expect("releaser thread");
        assert!(second.is_ok(), "{second:?}");
    }

    #[test]
    fn a_database_still_held_after_the_wait_is_already_open() {
        let (_dir, path, _first) = held_database();
        let second = DatabaseOpener::new(&path)
            .wait(Duration::from_millis(50))
            .open(create_things);
        match second {
            Err(StoreError::AlreadyOpen(held)) => assert_eq!(held, path),
            other => panic!("expected AlreadyOpen, got {other:?}"),
        }
    }

    #[test]
    fn init_failure_commits_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.redb");
        let failed = DatabaseOpener::new(&path).open(|txn| {
            txn.open_table(THINGS)?;
            Err(StoreError::corrupt("record", "refused"))
        });
        assert!(matches!(failed, Err(StoreError::Corrupt { .. })));
        let db = DatabaseOpener::new(&path)
            .cache_size(1 << 20)
            .open(|_| Ok::<_, StoreError>(()))
            .expect("reopen");
        let txn = db.begin_read().expect("read");
        assert!(
            txn.open_table(THINGS).is_err(),
            "the table was not committed"
        );
    }

    #[test]
    fn schema_is_written_upgraded_and_refused_when_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.redb");
        let open = |current: u64, seen: &mut Vec<u64>| {
            DatabaseOpener::new(&path).open(|txn| {
                upgrade_schema(txn, META, current, |older| {
                    seen.push(older);
                    Ok::<_, StoreError>(())
                })
            })
        };
        let mut seen = Vec::new();
        let db = open(1, &mut seen).expect("new database");
        assert_eq!(schema_of(&db), Some(1));
        drop(db);
        let db = open(1, &mut seen).expect("same schema");
        drop(db);
        assert!(seen.is_empty(), "nothing to upgrade: {seen:?}");
        let db = open(3, &mut seen).expect("upgrade");
        assert_eq!(seen, vec![1]);
        assert_eq!(schema_of(&db), Some(3));
        drop(db);
        match open(2, &mut seen) {
            Err(StoreError::Schema {
                found: 3,
                supported: 2,
            }) => {}
            other => panic!("expected a schema error, got {other:?}"),
        }
    }

    #[test]
    fn refused_upgrade_keeps_the_old_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.redb");
        let opener = DatabaseOpener::new(&path);
        drop(
            opener
                .open(|txn| upgrade_schema(txn, META, 1, |_| Ok::<_, StoreError>(())))
                .expect("v1"),
        );
        let refused = opener.open(|txn| {
            upgrade_schema(txn, META, 2, |found| {
                Err(StoreError::Schema {
                    found,
                    supported: 2,
                })
            })
        });
        assert!(matches!(refused, Err(StoreError::Schema { found: 1, .. })));
        let db = opener.open(|_| Ok::<_, StoreError>(())).expect("reopen");
        assert_eq!(schema_of(&db), Some(1));
    }

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(
            StoreError::corrupt("record of \"a\"", "empty value").to_string(),
            "stored record of \"a\" is corrupt: empty value"
        );
        assert_eq!(
            StoreError::Schema {
                found: 9,
                supported: 3
            }
            .to_string(),
            "database schema 9 is not supported (this build reads 3)"
        );
        assert_eq!(
            StoreError::AlreadyOpen(PathBuf::from("/d/x.redb")).to_string(),
            "/d/x.redb is already open"
        );
    }

    #[test]
    fn fixed_values_check_marker_and_length() {
        assert_eq!(fixed_value::<2>(&[1, 7, 8], 1, "record").ok(), Some([7, 8]));
        let message = |value: &[u8]| match fixed_value::<2>(value, 1, "count") {
            Err(e) => e.to_string(),
            Ok(bytes) => panic!("decoded {bytes:?}"),
        };
        assert_eq!(message(&[]), "stored count is corrupt: empty value");
        assert_eq!(
            message(&[2, 7, 8]),
            "stored count is corrupt: unknown format marker 2"
        );
        assert_eq!(
            message(&[1, 7]),
            "stored count is corrupt: format 1 value has 2 bytes, not 3"
        );
    }

    #[derive(Debug, thiserror::Error)]
    enum Wrapper {
        #[error(transparent)]
        Store(#[from] StoreError),
    }
    redb_error_conversions!(Wrapper);

    #[test]
    fn conversions_reach_a_wrapping_error() {
        let wrapped = Wrapper::from(redb::StorageError::Corrupted("bad page".into()));
        let Wrapper::Store(inner) = wrapped;
        assert!(matches!(inner, StoreError::Database(_)), "{inner:?}");
    }
}
