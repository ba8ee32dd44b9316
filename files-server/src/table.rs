//! The node table: every node handed out by this server run, the mounts they belong
//! to, and the bookkeeping that tells a sync what changed.
//!
//! **Node lifetime.** Numbers start at 1 and are never reused within a run. A mount
//! allocates its root; loading a directory (on first lookup, listing or info)
//! allocates numbers for all its children. A node lives until it is removed from
//! every directory naming it, its mount is unmounted, or its slot mount is reloaded
//! after a lost compare-and-swap (then only the root keeps its number). Nothing is
//! persisted: after a restart every number is unknown (404) and trees must be mounted
//! again. This is the reference implementation's model.
//!
//! **Change tracking.** A directory carries `clean`, the written form of its blob,
//! only while nothing below it changed; any change clears it on the directory and
//! every ancestor and stamps them with a new sequence number. A sync rewrites exactly
//! the directories without `clean` and marks one clean again only if its stamp did
//! not move meanwhile. A directory not yet loaded is always clean.
//!
//! The table lives behind a `std::sync::Mutex` held only for in-memory work, never
//! across an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use invariant_content::Written;
use invariant_spec::Id;
use invariant_spec::content::{
    ContentLink, DEFAULT_DIRECTORY_MODE, DEFAULT_FILE_MODE, Entry, EntryKind, SYMBOLIC_LINK_MODE,
    Transform,
};
use invariant_spec::files::{Info, Node};
use invariant_spec::slots::SlotSigner;

use crate::error::{FilesError, FilesResult};
use crate::file::FileContent;

/// Metadata of a node, kept in its parent's directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Creation time, ms since the epoch (absent in the entry: shown as mount time).
    pub create_time: Option<i64>,
    /// Modification time.
    pub modify_time: Option<i64>,
    /// POSIX permission bits.
    pub mode: u32,
    /// Media type.
    pub content_type: Option<String>,
}

impl Meta {
    /// Metadata of a node created now.
    pub fn new(kind: EntryKind, now: i64) -> Meta {
        Meta {
            create_time: Some(now),
            modify_time: Some(now),
            mode: default_mode(kind),
            content_type: None,
        }
    }

    fn of_entry(entry: &Entry) -> Meta {
        Meta {
            create_time: entry.create_time,
            modify_time: entry.modify_time,
            mode: entry
                .permissions()
                .unwrap_or_else(|_| default_mode(entry.kind)),
            content_type: entry.content_type.clone(),
        }
    }
}

fn default_mode(kind: EntryKind) -> u32 {
    match kind {
        EntryKind::File => DEFAULT_FILE_MODE,
        EntryKind::Directory => DEFAULT_DIRECTORY_MODE,
        EntryKind::SymbolicLink => SYMBOLIC_LINK_MODE,
    }
}

/// A directory's state.
#[derive(Debug)]
pub(crate) struct Dir {
    /// Name → node, once loaded.
    pub children: Option<BTreeMap<String, Node>>,
    /// The blob as last read or written, while it is current.
    pub clean: Option<Written>,
    /// Sequence number of the last change at or below this directory.
    pub changed: u64,
}

impl Dir {
    /// A directory read from `written`, children not loaded yet.
    pub fn stored(written: Written) -> Dir {
        Dir {
            children: None,
            clean: Some(written),
            changed: 0,
        }
    }

    /// A new, empty directory.
    pub fn empty() -> Dir {
        Dir {
            children: Some(BTreeMap::new()),
            clean: None,
            changed: 0,
        }
    }
}

/// What a node is.
#[derive(Debug)]
pub(crate) enum Body {
    /// A regular file.
    File(Arc<FileContent>),
    /// A directory.
    Directory(Dir),
    /// A symbolic link and its target.
    Symlink(String),
}

/// One node.
#[derive(Debug)]
pub(crate) struct NodeEntry {
    /// The root node of its mount.
    pub mount: Node,
    /// The directories naming it, once per name (the root has none).
    pub parents: Vec<Node>,
    /// Its metadata.
    pub meta: Meta,
    /// Its content.
    pub body: Body,
}

impl NodeEntry {
    pub fn kind(&self) -> EntryKind {
        match self.body {
            Body::File(_) => EntryKind::File,
            Body::Directory(_) => EntryKind::Directory,
            Body::Symlink(_) => EntryKind::SymbolicLink,
        }
    }
}

/// How a slot mount writes back.
#[derive(Clone, Debug)]
pub(crate) struct SlotMount {
    /// The slot.
    pub id: Id,
    /// What the slot held when last read or written by this server.
    pub current: Id,
    /// The mount link's transforms (`[]` or `[Blocks]`), applied to the slot's value.
    pub transforms: Vec<Transform>,
    /// Signs updates of ed25519 slots.
    pub signer: Option<Arc<SlotSigner>>,
}

/// One mounted tree.
#[derive(Debug)]
pub(crate) struct Mount {
    /// Changes are allowed.
    pub writable: bool,
    /// Files are shown executable.
    pub executable: bool,
    /// When it was mounted (shown for absent times).
    pub mounted_at: i64,
    /// The root's link as mounted or last synced.
    pub link: ContentLink,
    /// Set for slot mounts.
    pub slot: Option<SlotMount>,
}

/// A directory entry read from storage, with the file size resolved.
#[derive(Debug)]
pub(crate) struct LoadedEntry {
    /// The entry.
    pub entry: Entry,
    /// Files: the content length; directories: the blob length (if recorded).
    pub size: u64,
}

/// Every node and mount of this server run.
#[derive(Debug)]
pub(crate) struct Table {
    next: Node,
    seq: u64,
    nodes: HashMap<Node, NodeEntry>,
    mounts: HashMap<Node, Mount>,
}

impl Table {
    pub fn new() -> Table {
        Table {
            next: 1,
            seq: 0,
            nodes: HashMap::new(),
            mounts: HashMap::new(),
        }
    }

    /// Adds a node; returns its number.
    pub fn alloc(&mut self, entry: NodeEntry) -> Node {
        let node = self.next;
        self.next += 1;
        self.nodes.insert(node, entry);
        node
    }

    /// Adds a mount whose root is a new node reading `written`; returns the root.
    pub fn add_mount(&mut self, mount: Mount, written: Written, now: i64) -> Node {
        let root = self.alloc(NodeEntry {
            mount: 0,
            parents: Vec::new(),
            meta: Meta::new(EntryKind::Directory, now),
            body: Body::Directory(Dir::stored(written)),
        });
        if let Some(entry) = self.nodes.get_mut(&root) {
            entry.mount = root;
        }
        self.mounts.insert(root, mount);
        root
    }

    pub fn node(&self, node: Node) -> FilesResult<&NodeEntry> {
        self.nodes.get(&node).ok_or(FilesError::UnknownNode(node))
    }

    pub fn node_mut(&mut self, node: Node) -> FilesResult<&mut NodeEntry> {
        self.nodes
            .get_mut(&node)
            .ok_or(FilesError::UnknownNode(node))
    }

    pub fn mount(&self, root: Node) -> FilesResult<&Mount> {
        match self.mounts.get(&root) {
            Some(mount) => Ok(mount),
            None if self.nodes.contains_key(&root) => Err(FilesError::NotMount(root)),
            None => Err(FilesError::UnknownNode(root)),
        }
    }

    pub fn mount_mut(&mut self, root: Node) -> FilesResult<&mut Mount> {
        self.mounts.get_mut(&root).ok_or(FilesError::NotMount(root))
    }

    /// Roots of the writable mounts, in number order.
    pub fn writable_mounts(&self) -> Vec<Node> {
        let mut roots: Vec<Node> = self
            .mounts
            .iter()
            .filter(|(_, m)| m.writable)
            .map(|(root, _)| *root)
            .collect();
        roots.sort_unstable();
        roots
    }

    /// Fails with 403 unless `node`'s mount is writable.
    pub fn check_writable(&self, node: Node) -> FilesResult<()> {
        let mount = self.node(node)?.mount;
        match self.mounts.get(&mount) {
            Some(m) if m.writable => Ok(()),
            _ => Err(FilesError::ReadOnly(node)),
        }
    }

    pub fn directory(&self, node: Node) -> FilesResult<&Dir> {
        match &self.node(node)?.body {
            Body::Directory(dir) => Ok(dir),
            _ => Err(FilesError::NotDirectory(node)),
        }
    }

    pub fn directory_mut(&mut self, node: Node) -> FilesResult<&mut Dir> {
        match &mut self.node_mut(node)?.body {
            Body::Directory(dir) => Ok(dir),
            _ => Err(FilesError::NotDirectory(node)),
        }
    }

    /// The children of a loaded directory.
    pub fn children(&self, node: Node) -> FilesResult<&BTreeMap<String, Node>> {
        self.directory(node)?
            .children
            .as_ref()
            .ok_or_else(|| FilesError::Internal(format!("directory {node} is not loaded")))
    }

    fn children_mut(&mut self, node: Node) -> FilesResult<&mut BTreeMap<String, Node>> {
        self.directory_mut(node)?
            .children
            .as_mut()
            .ok_or_else(|| FilesError::Internal(format!("directory {node} is not loaded")))
    }

    /// The child `name` of loaded directory `parent`.
    pub fn child(&self, parent: Node, name: &str) -> FilesResult<Node> {
        self.children(parent)?
            .get(name)
            .copied()
            .ok_or_else(|| FilesError::NoEntry {
                parent,
                name: name.to_string(),
            })
    }

    pub fn file(&self, node: Node) -> FilesResult<&Arc<FileContent>> {
        match &self.node(node)?.body {
            Body::File(content) => Ok(content),
            _ => Err(FilesError::NotFile(node)),
        }
    }

    /// Whether `node` is a directory whose children are not loaded yet.
    pub fn is_unloaded_directory(&self, node: Node) -> bool {
        matches!(
            self.nodes.get(&node).map(|n| &n.body),
            Some(Body::Directory(Dir { children: None, .. }))
        )
    }

    /// Gives an unloaded directory its children (a no-op when already loaded).
    pub fn install(&mut self, dir: Node, entries: Vec<LoadedEntry>) -> FilesResult<()> {
        let mount = self.node(dir)?.mount;
        if self.directory(dir)?.children.is_some() {
            return Ok(());
        }
        let mut children = BTreeMap::new();
        for LoadedEntry { entry, size } in entries {
            let meta = Meta::of_entry(&entry);
            let body = match (entry.kind, entry.content, entry.target) {
                (EntryKind::File, Some(link), _) => {
                    Body::File(FileContent::clean(Written { link, size }))
                }
                (EntryKind::Directory, Some(link), _) => {
                    Body::Directory(Dir::stored(Written { link, size }))
                }
                (EntryKind::SymbolicLink, _, Some(target)) => Body::Symlink(target),
                // The directory decoder refuses entries without these.
                _ => continue,
            };
            let child = self.alloc(NodeEntry {
                mount,
                parents: vec![dir],
                meta,
                body,
            });
            children.insert(entry.name, child);
        }
        self.directory_mut(dir)?.children = Some(children);
        Ok(())
    }

    /// Records that the content of `node` changed: it (when a directory) and every
    /// ancestor must be written again.
    pub fn touch(&mut self, node: Node) {
        self.seq += 1;
        let seq = self.seq;
        let mut stack = vec![node];
        let mut seen = HashSet::new();
        while let Some(current) = stack.pop() {
            if !seen.insert(current) {
                continue;
            }
            let Some(entry) = self.nodes.get_mut(&current) else {
                continue;
            };
            if let Body::Directory(dir) = &mut entry.body
                && dir.children.is_some()
            {
                dir.clean = None;
                dir.changed = seq;
            }
            stack.extend(entry.parents.iter().copied());
        }
    }

    /// Records that the metadata of `node` changed: the directories naming it must be
    /// written again.
    pub fn touch_parents(&mut self, node: Node) {
        let parents = self
            .nodes
            .get(&node)
            .map(|n| n.parents.clone())
            .unwrap_or_default();
        for parent in parents {
            self.touch(parent);
        }
    }

    /// Sets the modification time of `node` to `now`.
    pub fn stamp(&mut self, node: Node, now: i64) {
        if let Some(entry) = self.nodes.get_mut(&node) {
            entry.meta.modify_time = Some(now);
        }
    }

    /// Adds `name → child` to loaded directory `parent`.
    pub fn attach(&mut self, parent: Node, name: &str, child: Node) -> FilesResult<()> {
        let children = self.children_mut(parent)?;
        if children.contains_key(name) {
            return Err(FilesError::Exists {
                parent,
                name: name.to_string(),
            });
        }
        children.insert(name.to_string(), child);
        self.node_mut(child)?.parents.push(parent);
        Ok(())
    }

    /// Removes `name` from loaded directory `parent`; forgets the child when no
    /// directory names it any more. Returns the child.
    pub fn detach(&mut self, parent: Node, name: &str) -> FilesResult<Node> {
        let child = self
            .children_mut(parent)?
            .remove(name)
            .ok_or_else(|| FilesError::NoEntry {
                parent,
                name: name.to_string(),
            })?;
        let orphan = match self.nodes.get_mut(&child) {
            Some(entry) => {
                if let Some(i) = entry.parents.iter().position(|p| *p == parent) {
                    entry.parents.swap_remove(i);
                }
                entry.parents.is_empty()
            }
            None => false,
        };
        if orphan {
            self.forget_subtree(child);
        }
        Ok(child)
    }

    /// Forgets `node` and every node below it.
    fn forget_subtree(&mut self, node: Node) {
        let mut stack = vec![node];
        while let Some(current) = stack.pop() {
            if let Some(entry) = self.nodes.remove(&current)
                && let Body::Directory(Dir {
                    children: Some(children),
                    ..
                }) = entry.body
            {
                for child in children.into_values() {
                    let orphan = match self.nodes.get_mut(&child) {
                        Some(c) => {
                            if let Some(i) = c.parents.iter().position(|p| *p == current) {
                                c.parents.swap_remove(i);
                            }
                            c.parents.is_empty()
                        }
                        None => false,
                    };
                    if orphan {
                        stack.push(child);
                    }
                }
            }
        }
    }

    /// Moves `name` of `parent` to `new_name` of `new_parent` (both loaded), replacing
    /// a file or symbolic link there, or an empty directory when moving a directory.
    pub fn rename(
        &mut self,
        parent: Node,
        name: &str,
        new_parent: Node,
        new_name: &str,
    ) -> FilesResult<()> {
        let node = self.child(parent, name)?;
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        let moving_directory = self.node(node)?.kind() == EntryKind::Directory;
        if moving_directory {
            // A directory cannot move into itself or below itself.
            let mut current = Some(new_parent);
            while let Some(at) = current {
                if at == node {
                    return Err(FilesError::Invalid(format!(
                        "cannot move directory {name:?} into itself"
                    )));
                }
                current = self.node(at)?.parents.first().copied();
            }
        }
        if let Some(existing) = self.children(new_parent)?.get(new_name).copied() {
            if existing == node {
                // Two names of one file: POSIX leaves both in place.
                return Ok(());
            }
            let taken = || FilesError::Exists {
                parent: new_parent,
                name: new_name.to_string(),
            };
            match (&self.node(existing)?.body, moving_directory) {
                (Body::Directory(dir), true) => {
                    let empty = dir.children.as_ref().is_some_and(BTreeMap::is_empty);
                    if !empty {
                        return Err(FilesError::NotEmpty {
                            parent: new_parent,
                            name: new_name.to_string(),
                        });
                    }
                }
                (Body::Directory(_), false) | (_, true) => return Err(taken()),
                _ => {}
            }
            self.detach(new_parent, new_name)?;
        }
        self.children_mut(parent)?.remove(name);
        self.children_mut(new_parent)?
            .insert(new_name.to_string(), node);
        let entry = self.node_mut(node)?;
        if let Some(slot) = entry.parents.iter_mut().find(|p| **p == parent) {
            *slot = new_parent;
        }
        Ok(())
    }

    /// Forgets every node of mount `root` but the root itself, which becomes an
    /// unloaded directory reading `written`.
    pub fn reset_mount(&mut self, root: Node, written: Written) -> FilesResult<()> {
        self.nodes.retain(|id, n| n.mount != root || *id == root);
        self.node_mut(root)?.body = Body::Directory(Dir::stored(written));
        Ok(())
    }

    /// Forgets mount `root` and all its nodes.
    pub fn remove_mount(&mut self, root: Node) {
        self.nodes.retain(|_, n| n.mount != root);
        self.mounts.remove(&root);
    }

    /// The info object of `node`. Directories show their number of entries once loaded.
    pub fn info(&self, node: Node) -> FilesResult<Info> {
        let entry = self.node(node)?;
        let mount = self.mounts.get(&entry.mount);
        let mount_writable = mount.is_some_and(|m| m.writable);
        let executable_files = mount.is_some_and(|m| m.executable);
        let absent_time = mount.map_or(0, |m| m.mounted_at);
        let kind = entry.kind();
        let (size, target, etag) = match &entry.body {
            Body::File(content) => {
                let summary = content.summary();
                let etag = match &summary.clean {
                    Some(link) => link.etag_or_address(),
                    None => format!("local-{node}-{}", summary.version),
                };
                (Some(summary.size), None, etag)
            }
            Body::Directory(dir) => {
                let size = dir.children.as_ref().map(|c| c.len() as u64);
                let etag = match &dir.clean {
                    Some(written) => written.link.etag_or_address(),
                    None => format!("local-{node}-{}", dir.changed),
                };
                (size, None, etag)
            }
            Body::Symlink(target) => (
                None,
                Some(target.clone()),
                Id::of_content(target.as_bytes()).to_string(),
            ),
        };
        let meta = &entry.meta;
        Ok(Info {
            node,
            kind,
            modify_time: meta.modify_time.unwrap_or(absent_time),
            create_time: meta.create_time.unwrap_or(absent_time),
            executable: meta.mode & 0o100 != 0 || (executable_files && kind == EntryKind::File),
            writable: mount_writable && meta.mode & 0o200 != 0,
            etag,
            size,
            target,
            content_type: meta.content_type.clone(),
        })
    }

    /// The directory entry for child `name` → `node`, whose content is `written`
    /// (files and directories). `None` when the node is gone.
    pub fn entry(&self, name: &str, node: Node, written: Option<Written>) -> Option<Entry> {
        let child = self.nodes.get(&node)?;
        let kind = child.kind();
        let mut entry = Entry::new(kind, name);
        entry.mode = Entry::mode_for(kind, child.meta.mode);
        entry.create_time = child.meta.create_time;
        entry.modify_time = child.meta.modify_time;
        entry.content_type = child.meta.content_type.clone();
        match &child.body {
            Body::Symlink(target) => entry.target = Some(target.clone()),
            Body::File(_) | Body::Directory(_) => {
                let written = written?;
                entry.content = Some(written.link);
                entry.size = Some(written.size);
            }
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(name: &str) -> Written {
        Written {
            link: ContentLink::new(Id::of_content(name.as_bytes())),
            size: 1,
        }
    }

    fn table_with_root() -> (Table, Node) {
        let mut table = Table::new();
        let mount = Mount {
            writable: true,
            executable: false,
            mounted_at: 5,
            link: written("root").link,
            slot: None,
        };
        let root = table.add_mount(mount, written("root"), 5);
        table.install(root, Vec::new()).expect("install");
        (table, root)
    }

    fn add_dir(table: &mut Table, parent: Node, name: &str) -> Node {
        let mount = table.node(parent).expect("parent").mount;
        let node = table.alloc(NodeEntry {
            mount,
            parents: Vec::new(),
            meta: Meta::new(EntryKind::Directory, 1),
            body: Body::Directory(Dir::empty()),
        });
        table.attach(parent, name, node).expect("attach");
        table.touch(parent);
        node
    }

    #[test]
    fn touch_dirties_every_ancestor_and_only_them() {
        let (mut table, root) = table_with_root();
        let a = add_dir(&mut table, root, "a");
        let b = add_dir(&mut table, a, "b");
        let c = add_dir(&mut table, root, "c");
        for node in [root, a, b, c] {
            table.directory_mut(node).expect("dir").clean = Some(written("x"));
        }
        table.touch(b);
        for (node, clean) in [(root, false), (a, false), (b, false), (c, true)] {
            assert_eq!(
                table.directory(node).expect("dir").clean.is_some(),
                clean,
                "node {node}"
            );
        }
        let stamp = table.directory(root).expect("dir").changed;
        assert_eq!(table.directory(b).expect("dir").changed, stamp);
    }

    #[test]
    fn rename_refuses_cycles_and_non_empty_targets() {
        let (mut table, root) = table_with_root();
        let a = add_dir(&mut table, root, "a");
        let b = add_dir(&mut table, a, "b");
        assert!(matches!(
            table.rename(root, "a", b, "a2"),
            Err(FilesError::Invalid(_))
        ));
        let c = add_dir(&mut table, root, "c");
        add_dir(&mut table, c, "inner");
        assert!(matches!(
            table.rename(a, "b", root, "c"),
            Err(FilesError::NotEmpty { .. })
        ));
        // Onto an empty directory: replaced and forgotten.
        let d = add_dir(&mut table, root, "d");
        table.rename(a, "b", root, "d").expect("replace empty dir");
        assert!(table.node(d).is_err());
        assert_eq!(table.child(root, "d").expect("moved"), b);
        assert_eq!(table.node(b).expect("b").parents, vec![root]);
    }

    #[test]
    fn detach_forgets_only_orphans_and_unmount_forgets_all() {
        let (mut table, root) = table_with_root();
        let a = add_dir(&mut table, root, "a");
        let file = table.alloc(NodeEntry {
            mount: root,
            parents: Vec::new(),
            meta: Meta::new(EntryKind::File, 1),
            body: Body::Symlink("t".into()),
        });
        table.attach(root, "one", file).expect("attach");
        table.attach(a, "two", file).expect("link");
        assert!(matches!(
            table.attach(a, "two", file),
            Err(FilesError::Exists { .. })
        ));
        table.detach(root, "one").expect("detach");
        assert!(table.node(file).is_ok(), "still named by a");
        table.detach(a, "two").expect("detach");
        assert!(table.node(file).is_err());
        table.remove_mount(root);
        assert!(matches!(table.node(a), Err(FilesError::UnknownNode(_))));
        assert!(matches!(table.mount(root), Err(FilesError::UnknownNode(_))));
    }

    #[test]
    fn info_combines_mount_and_mode() {
        let (mut table, root) = table_with_root();
        let info = table.info(root).expect("info");
        assert_eq!(info.kind, EntryKind::Directory);
        assert_eq!(info.size, Some(0));
        assert!(info.writable && info.executable);
        table.node_mut(root).expect("root").meta.mode = 0o555;
        assert!(!table.info(root).expect("info").writable);
        table.mount_mut(root).expect("mount").writable = false;
        table.node_mut(root).expect("root").meta.mode = 0o755;
        assert!(!table.info(root).expect("info").writable);
    }
}
