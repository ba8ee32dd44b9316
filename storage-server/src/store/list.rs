//! Listing held blobs: lazily in no order ([`BlobStore::list`]), or in address-ordered
//! pages merging both layouts ([`BlobStore::page`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use invariant_spec::Id;

use super::BlobStore;
use crate::pack::Packs;

impl BlobStore {
    /// Every held blob with its size, read lazily from the directory tree (in no
    /// particular order). Files whose names are not blob addresses are skipped.
    pub fn list(&self) -> impl Iterator<Item = io::Result<(Id, u64)>> + Send + 'static {
        BlobList::new(self.inner.root.clone()).chain(PackList {
            packs: self.inner.packs.clone(),
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        })
    }

    /// Up to `limit` held blobs with addresses after `after` (from the start when
    /// `None`), ascending by address, from both layouts (a blob held in both is listed
    /// once).
    pub fn page(&self, after: Option<Id>, limit: usize) -> io::Result<Vec<(Id, u64)>> {
        let files = files_page(&self.inner.root, after, limit)?;
        let packed = match &self.inner.packs {
            Some(packs) => packs.page(after, limit)?,
            None => Vec::new(),
        };
        let mut merged = Vec::with_capacity(limit.min(files.len() + packed.len()));
        let (mut a, mut b) = (files.into_iter().peekable(), packed.into_iter().peekable());
        while merged.len() < limit {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    b.next();
                    a.next()
                }
                (Some(x), Some(y)) if x.0 < y.0 => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => None,
            };
            match next {
                Some(item) => merged.push(item),
                None => break,
            }
        }
        Ok(merged)
    }
}

/// Whether `name` is `len` lowercase hex digits (how blob paths are written).
fn is_lower_hex(name: &str, len: usize) -> bool {
    name.len() == len && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The names in `dir` that are `len` lowercase hex digits, sorted (none when `dir` is
/// absent).
fn hex_names(dir: &Path, len: usize) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(name) = name.to_str()
            && is_lower_hex(name, len)
        {
            names.push(name.to_string());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Up to `limit` blob files after `after`, ascending: walks the shard directories in
/// order, skipping those entirely before `after`.
fn files_page(root: &Path, after: Option<Id>, limit: usize) -> io::Result<Vec<(Id, u64)>> {
    let after_hex = after.map(|a| a.to_string());
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    for first in hex_names(root, 2)? {
        if let Some(a) = &after_hex
            && first.as_str() < &a[..2]
        {
            continue;
        }
        let first_dir = root.join(&first);
        for second in hex_names(&first_dir, 2)? {
            let prefix = format!("{first}{second}");
            if let Some(a) = &after_hex
                && prefix.as_str() < &a[..4]
            {
                continue;
            }
            let leaf = first_dir.join(&second);
            for rest in hex_names(&leaf, 60)? {
                let Ok(id) = Id::parse(&format!("{prefix}{rest}")) else {
                    continue;
                };
                if after.is_some_and(|a| id <= a) {
                    continue;
                }
                match fs::metadata(leaf.join(&rest)) {
                    Ok(meta) if meta.is_file() => out.push((id, meta.len())),
                    Ok(_) => continue,
                    // Deleted since the directory was read.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// Pages through the packed blobs lazily.
struct PackList {
    packs: Option<Arc<Packs>>,
    after: Option<Id>,
    page: std::vec::IntoIter<(Id, u64)>,
    done: bool,
}

impl Iterator for PackList {
    type Item = io::Result<(Id, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.page.next() {
            return Some(Ok(item));
        }
        if self.done {
            return None;
        }
        let packs = self.packs.as_ref()?;
        match packs.page(self.after, 1000) {
            Ok(page) => {
                self.done = page.len() < 1000;
                self.after = page.last().map(|(id, _)| *id);
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Walks `blobs/ab/cd/*` lazily.
struct BlobList {
    stack: Vec<(fs::ReadDir, String)>,
    pending_error: Option<io::Error>,
}

impl BlobList {
    fn new(root: PathBuf) -> BlobList {
        match fs::read_dir(&root) {
            Ok(rd) => BlobList {
                stack: vec![(rd, String::new())],
                pending_error: None,
            },
            Err(e) => BlobList {
                stack: Vec::new(),
                pending_error: Some(e),
            },
        }
    }
}

impl Iterator for BlobList {
    type Item = io::Result<(Id, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        loop {
            let depth = self.stack.len();
            let (dir, prefix) = self.stack.last_mut()?;
            let entry = match dir.next() {
                None => {
                    self.stack.pop();
                    continue;
                }
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(entry)) => entry,
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            };
            if depth < 3 {
                let is_shard = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
                if file_type.is_dir() && is_shard {
                    let child_prefix = format!("{prefix}{name}");
                    match fs::read_dir(entry.path()) {
                        Ok(rd) => self.stack.push((rd, child_prefix)),
                        Err(e) => return Some(Err(e)),
                    }
                }
                continue;
            }
            if !file_type.is_file() {
                continue;
            }
            let Ok(id) = Id::parse(&format!("{prefix}{name}")) else {
                continue;
            };
            return Some(entry.metadata().map(|m| (id, m.len())));
        }
    }
}
