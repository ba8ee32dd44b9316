//! The persistent server id: created once in the data directory, never changed.
//!
//! Stored as `<data-dir>/server-id`: 64 lowercase hex characters and a newline,
//! written atomically (temp file, fsync, rename, fsync directory).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use invariant_spec::Id;

/// File name of the id inside the data directory.
pub const ID_FILE: &str = "server-id";

/// Reads the server id from `data_dir`, creating it (and the folder) on first start.
pub fn load_or_create(data_dir: &Path) -> io::Result<Id> {
    fs::create_dir_all(data_dir)?;
    let path = data_dir.join(ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Id::parse(text.trim()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is corrupt: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = Id::random();
            write_atomically(data_dir, ID_FILE, format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Writes `name` in `dir` so that after a crash it holds either nothing or `bytes`.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(dir.path()).expect("create");
        let second = load_or_create(dir.path()).expect("reload");
        assert_eq!(first, second);
        let on_disk = fs::read_to_string(dir.path().join(ID_FILE)).expect("read");
        assert_eq!(on_disk, format!("{first}\n"));
    }

    #[test]
    fn corrupt_id_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(ID_FILE), "garbage").expect("write");
        let err = load_or_create(dir.path()).expect_err("corrupt");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
