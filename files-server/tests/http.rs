//! In-process HTTP tests of the files server: every route and error path, a whole
//! tree edited through HTTP and read back by a second server and by the content
//! crate, read-only and signed slots, compare-and-swap conflicts between two servers,
//! spilling large files to disk, the periodic sync and restarts.
//!
//! Each test starts its own storage, slots and files servers on `127.0.0.1:0` over
//! fresh temporary data directories. Success paths go through the typed
//! [`FilesClient`]; error statuses are checked with raw `reqwest`. Random content is
//! seeded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use files_server::{FilesConfig, SlotKeys};
use invariant_content::tree::write_directory;
use invariant_content::{
    ChunkConfig, Reader, StorageSet, Writer, WriterConfig, download_directory, upload_directory,
};
use invariant_runtime::{Role, Server, ServerContext, ServerOptions};
use invariant_spec::content::{Block, ContentLink, EntryKind, Transform};
use invariant_spec::files::{Attributes, Create, FilesClient, Info, MountOptions, Node};
use invariant_spec::http::Endpoint;
use invariant_spec::slots::{RegisterRequest, SlotSigner};
use invariant_spec::{BrokerClient, Id, SlotsClient, StorageClient};
use invariant_test_support::TestAuth;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use reqwest::StatusCode;
use tempfile::TempDir;

/// Small blocks so modest files span many of them.
const CHUNKS: ChunkConfig = ChunkConfig {
    min_size: 1024,
    avg_size: 4096,
    max_size: 16384,
};

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A storage server and a slots server.
struct Network {
    _storage_dir: TempDir,
    storage_server: Server,
    _slots_dir: TempDir,
    slots_server: Server,
    storage: StorageClient,
    slots: SlotsClient,
}

impl Network {
    async fn start() -> Network {
        let storage_dir = tempfile::tempdir().expect("storage dir");
        let ctx =
            ServerContext::prepare(ServerOptions::ephemeral(Role::Storage, storage_dir.path()))
                .expect("storage context");
        let storage_server = storage_server::start(&ctx, storage_server::StorageConfig::default())
            .await
            .expect("start storage");
        let slots_dir = tempfile::tempdir().expect("slots dir");
        let ctx = ServerContext::prepare(ServerOptions::ephemeral(Role::Slots, slots_dir.path()))
            .expect("slots context");
        let slots_server = slots_server::start(&ctx, slots_server::SlotsConfig::default())
            .await
            .expect("start slots");
        Network {
            storage: StorageClient::new(storage_server.url()).expect("storage client"),
            slots: SlotsClient::new(slots_server.url()).expect("slots client"),
            _storage_dir: storage_dir,
            storage_server,
            _slots_dir: slots_dir,
            slots_server,
        }
    }

    fn config(&self) -> FilesConfig {
        FilesConfig {
            storage: vec![self.storage_server.url().to_string()],
            slots: Some(self.slots_server.url().to_string()),
            sync_interval: Duration::ZERO,
            chunking: CHUNKS,
            spill_threshold: 16 * 1024,
            memory_budget: 256 * 1024,
            max_file_size: 16 * 1024 * 1024,
            ..FilesConfig::default()
        }
    }

    fn writer(&self) -> Writer {
        let config = WriterConfig {
            chunking: CHUNKS,
            ..WriterConfig::default()
        };
        Writer::new(Arc::new(self.storage.clone()), config).expect("writer")
    }

    fn reader(&self) -> Reader {
        Reader::new(Arc::new(StorageSet::new(vec![Arc::new(
            self.storage.clone(),
        )])))
    }

    /// Uploads the local directory `path`; returns its link.
    async fn upload(&self, path: &Path) -> ContentLink {
        upload_directory(&self.writer(), path)
            .await
            .expect("upload")
            .link
    }

    /// Registers an unsigned slot holding `address`; returns the slot link.
    async fn slot(&self, address: Id) -> ContentLink {
        let id = Id::random();
        assert!(
            self.slots
                .register(&RegisterRequest::unsigned(id, address))
                .await
                .expect("register")
        );
        slot_link(id)
    }

    async fn slot_value(&self, link: &ContentLink) -> Id {
        self.slots
            .get(&link.address)
            .await
            .expect("get slot")
            .expect("slot exists")
            .address
    }

    async fn empty_directory(&self) -> ContentLink {
        write_directory(&self.writer(), Vec::new())
            .await
            .expect("empty directory")
            .link
    }
}

fn slot_link(id: Id) -> ContentLink {
    ContentLink {
        slot: true,
        ..ContentLink::new(id)
    }
}

/// A running files server.
struct Files {
    dir: TempDir,
    server: Server,
    client: FilesClient,
    http: reqwest::Client,
}

impl Files {
    async fn start(config: FilesConfig) -> Files {
        let dir = tempfile::tempdir().expect("files dir");
        Files::start_in(dir, config).await
    }

    async fn start_in(dir: TempDir, config: FilesConfig) -> Files {
        let ctx = ServerContext::prepare(ServerOptions::ephemeral(Role::Files, dir.path()))
            .expect("files context");
        let server = files_server::start(&ctx, config)
            .await
            .expect("start files server");
        Files {
            client: FilesClient::new(server.url()).expect("files client"),
            http: reqwest::Client::new(),
            dir,
            server,
        }
    }

    /// A files server checking tokens against `auth`; its client sends `token`.
    async fn start_with_auth(config: FilesConfig, auth: &TestAuth, token: &str) -> Files {
        let dir = tempfile::tempdir().expect("files dir");
        let mut options = ServerOptions::ephemeral(Role::Files, dir.path());
        options.auth.root = Some(auth.public());
        let ctx = ServerContext::prepare(options).expect("files context");
        let server = files_server::start(&ctx, config)
            .await
            .expect("start files server");
        let http = TestAuth::client(token);
        let endpoint = Endpoint::with_client(server.url(), http.clone()).expect("endpoint");
        Files {
            client: FilesClient::from_endpoint(endpoint),
            http,
            dir,
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &str) -> (StatusCode, String) {
        let response = self
            .http
            .request(method, self.url(path))
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.text().await.expect("body"))
    }

    async fn expect(&self, method: reqwest::Method, path: &str, body: &str, status: StatusCode) {
        let (got, reason) = self.send(method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path}: {reason}");
        if !status.is_success() {
            assert!(
                !reason.trim().is_empty(),
                "{method} {path}: no reason given"
            );
        }
    }

    async fn mount(&self, link: &ContentLink, writable: Option<bool>) -> Node {
        self.client
            .mount(
                link,
                MountOptions {
                    executable: false,
                    writable,
                },
            )
            .await
            .expect("mount")
    }

    async fn info(&self, node: Node) -> Info {
        self.client
            .info(node)
            .await
            .expect("info")
            .expect("node exists")
    }

    /// The node at `path` (slash-separated) below `root`.
    async fn walk_to(&self, root: Node, path: &str) -> Node {
        let mut node = root;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            node = self
                .client
                .lookup(node, name)
                .await
                .expect("lookup")
                .unwrap_or_else(|| panic!("{path}: no {name}"))
                .node;
        }
        node
    }

    async fn create(&self, parent: Node, name: &str, create: Create) -> Node {
        self.client
            .create(parent, name, &create)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"))
    }

    async fn write(&self, node: Node, offset: u64, data: &[u8]) {
        let written = self
            .client
            .write(node, offset, data.to_vec())
            .await
            .expect("write");
        assert_eq!(written, data.len() as u64);
    }

    async fn read(&self, node: Node) -> Vec<u8> {
        self.client
            .read(node, None, None)
            .await
            .expect("read")
            .to_vec()
    }

    fn dirty_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join(files_server::SPILL_DIR))
            .expect("dirty dir exists")
            .count()
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// What a tree holds, path → item, for comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    File { data: Vec<u8>, executable: bool },
    Directory,
    Symlink(String),
}

type Model = BTreeMap<String, Item>;

fn file(data: &[u8]) -> Item {
    Item::File {
        data: data.to_vec(),
        executable: false,
    }
}

fn executable(data: &[u8]) -> Item {
    Item::File {
        data: data.to_vec(),
        executable: true,
    }
}

/// Reads the whole tree below `root` through HTTP.
async fn walk_http(files: &Files, root: Node) -> Model {
    let mut model = Model::new();
    let mut stack = vec![(root, String::new())];
    while let Some((node, prefix)) = stack.pop() {
        for entry in files
            .client
            .directory(node, None, None)
            .await
            .expect("list")
        {
            let path = format!("{prefix}{}", entry.name);
            let item = match entry.info.kind {
                EntryKind::File => Item::File {
                    data: files.read(entry.info.node).await,
                    executable: entry.info.executable,
                },
                EntryKind::Directory => {
                    stack.push((entry.info.node, format!("{path}/")));
                    Item::Directory
                }
                EntryKind::SymbolicLink => Item::Symlink(entry.info.target.expect("target")),
            };
            model.insert(path, item);
        }
    }
    model
}

/// Reads a local directory tree (on the blocking pool).
async fn walk_local(root: PathBuf) -> Model {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::PermissionsExt;
        let mut model = Model::new();
        let mut stack = vec![(root, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read dir") {
                let entry = entry.expect("entry");
                let name = entry.file_name().into_string().expect("utf-8 name");
                let path = format!("{prefix}{name}");
                let meta = std::fs::symlink_metadata(entry.path()).expect("metadata");
                let item = if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(entry.path()).expect("read link");
                    Item::Symlink(target.to_string_lossy().into_owned())
                } else if meta.is_dir() {
                    stack.push((entry.path(), format!("{path}/")));
                    Item::Directory
                } else {
                    Item::File {
                        data: std::fs::read(entry.path()).expect("read"),
                        executable: meta.permissions().mode() & 0o100 != 0,
                    }
                };
                model.insert(path, item);
            }
        }
        model
    })
    .await
    .expect("walk task")
}

/// Writes `model` as a local directory under `root`.
fn write_local(root: &Path, model: &Model) {
    use std::os::unix::fs::PermissionsExt;
    for (path, item) in model {
        let full = root.join(path);
        match item {
            Item::Directory => std::fs::create_dir_all(&full).expect("mkdir"),
            Item::File { data, executable } => {
                std::fs::write(&full, data).expect("write");
                let mode = if *executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))
                    .expect("chmod");
            }
            Item::Symlink(target) => std::os::unix::fs::symlink(target, &full).expect("symlink"),
        }
    }
}

/// A small tree: two files (one of several blocks), an executable in a folder, a
/// file to move, and a symbolic link.
fn initial_model() -> Model {
    Model::from([
        ("data.bin".into(), file(&random_bytes(40_000, 1))),
        ("keep.txt".into(), file(b"unchanged content\n")),
        ("link".into(), Item::Symlink("keep.txt".into())),
        ("tools".into(), Item::Directory),
        ("tools/old.txt".into(), file(b"old")),
        ("tools/run.sh".into(), executable(b"#!/bin/sh\necho hi\n")),
    ])
}

async fn upload_model(network: &Network, model: &Model) -> ContentLink {
    let local = tempfile::tempdir().expect("local dir");
    write_local(local.path(), model);
    network.upload(local.path()).await
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_read_only_mount_answers_every_read_route_and_refuses_changes() {
    let network = Network::start().await;
    let model = initial_model();
    let link = upload_model(&network, &model).await;
    let files = Files::start(network.config()).await;
    let root = files.mount(&link, None).await;

    let info = files.info(root).await;
    assert_eq!(info.kind, EntryKind::Directory);
    assert_eq!(info.size, Some(4), "data.bin keep.txt link tools");
    assert!(!info.writable);
    assert_eq!(info.etag, link.address.to_string());
    assert_eq!(walk_http(&files, root).await, model);

    // Lookup, info and content of each kind of node.
    let keep = files.client.lookup(root, "keep.txt").await.expect("lookup");
    let keep = keep.expect("keep.txt exists");
    assert_eq!(keep.kind, EntryKind::File);
    assert_eq!(keep.size, Some(18));
    assert_eq!(files.info(keep.node).await, keep);
    let keep_link = files.client.content(keep.node).await.expect("content");
    assert_eq!(keep.etag, keep_link.etag_or_address());
    let read_back = network
        .reader()
        .read_to_vec(&keep_link, 1 << 20)
        .await
        .expect("read link");
    assert_eq!(read_back, b"unchanged content\n");
    assert_eq!(files.client.content(root).await.expect("root link"), link);
    let symlink = files.client.lookup(root, "link").await.expect("lookup");
    let symlink = symlink.expect("link exists");
    assert_eq!(symlink.kind, EntryKind::SymbolicLink);
    assert_eq!(symlink.target.as_deref(), Some("keep.txt"));
    assert_eq!(symlink.size, None);
    let run = files.walk_to(root, "tools/run.sh").await;
    assert!(files.info(run).await.executable);
    assert!(!keep.executable);
    assert_eq!(
        files.client.lookup(root, "nope").await.expect("lookup"),
        None
    );

    // Range reads.
    let data = files.walk_to(root, "data.bin").await;
    let Some(Item::File { data: bytes, .. }) = model.get("data.bin") else {
        panic!("model has data.bin");
    };
    for (offset, length) in [
        (0, Some(10)),
        (5, Some(10)),
        (4000, Some(9000)),
        (39_990, Some(100)),
        (12_345, None),
        (40_000, Some(5)),
        (50_000, None),
        (7, Some(0)),
    ] {
        let got = files
            .client
            .read(data, Some(offset), length)
            .await
            .expect("range read");
        let start = (offset as usize).min(bytes.len());
        let end = length.map_or(bytes.len(), |l| (start + l as usize).min(bytes.len()));
        assert_eq!(
            got.as_ref(),
            &bytes[start..end],
            "offset {offset} length {length:?}"
        );
    }

    // Every change is 403 on a read-only mount.
    use reqwest::Method;
    let forbidden = StatusCode::FORBIDDEN;
    files
        .expect(
            Method::POST,
            &format!("/files/{data}?offset=0"),
            "x",
            forbidden,
        )
        .await;
    files
        .expect(
            Method::PUT,
            &format!("/files/{root}/new?kind=File"),
            "",
            forbidden,
        )
        .await;
    files
        .expect(
            Method::POST,
            &format!("/files/attributes/{data}"),
            r#"{"executable":true}"#,
            forbidden,
        )
        .await;
    files
        .expect(
            Method::PUT,
            &format!("/files/size/{data}?size=1"),
            "",
            forbidden,
        )
        .await;
    files
        .expect(
            Method::PUT,
            &format!("/files/rename/{root}/keep.txt?newParent={root}&newName=k"),
            "",
            forbidden,
        )
        .await;
    files
        .expect(
            Method::PUT,
            &format!("/files/link/{root}/k2?node={data}"),
            "",
            forbidden,
        )
        .await;
    files
        .expect(
            Method::POST,
            &format!("/files/remove/{root}/keep.txt"),
            "",
            forbidden,
        )
        .await;
    assert_eq!(walk_http(&files, root).await, model, "nothing changed");
    // Sync has nothing to do for read-only mounts.
    files.client.sync().await.expect("sync");

    // Unmount answers the mounted link and forgets every node.
    assert_eq!(files.client.unmount(root).await.expect("unmount"), link);
    assert_eq!(files.client.info(root).await.expect("info"), None);
    assert_eq!(files.client.info(data).await.expect("info"), None);
}

#[tokio::test]
async fn directories_page_in_name_order() {
    let network = Network::start().await;
    let files = Files::start(network.config()).await;
    let root = files
        .mount(&network.empty_directory().await, Some(true))
        .await;
    let mut names: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
    // Created out of order; listed sorted.
    names.reverse();
    for name in &names {
        files.create(root, name, Create::file()).await;
    }
    names.sort();
    let mut listed = Vec::new();
    for page in 0..3 {
        let entries = files
            .client
            .directory(root, Some(page * 10), Some(10))
            .await
            .expect("page");
        assert!(entries.len() <= 10);
        listed.extend(entries.into_iter().map(|e| e.name));
    }
    assert_eq!(listed, names);
    let tail = files
        .client
        .directory(root, Some(20), None)
        .await
        .expect("tail");
    assert_eq!(tail.len(), 5);
    assert_eq!(tail[0].name, "f20");
    assert_eq!(tail[0].info.size, Some(0));
    for (offset, length) in [(25, None), (100, Some(3)), (0, Some(0))] {
        let entries = files
            .client
            .directory(root, Some(offset), length)
            .await
            .expect("empty page");
        assert!(entries.is_empty(), "offset {offset} length {length:?}");
    }
    assert_eq!(files.info(root).await.size, Some(25));
}

// ---------------------------------------------------------------------------------------
// Error paths
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn every_error_path_has_its_status_and_a_reason() {
    use reqwest::Method;
    let network = Network::start().await;
    let files = Files::start(network.config()).await;
    let root = files
        .mount(&network.empty_directory().await, Some(true))
        .await;
    let file = files.create(root, "f", Create::file()).await;
    files.write(file, 0, b"abc").await;
    let dir = files.create(root, "d", Create::directory()).await;
    files.create(dir, "inner", Create::file()).await;
    let symlink = files.create(root, "s", Create::symbolic_link("f")).await;

    // Unknown nodes: 404 on every route.
    let unknown = 9_007_199_254_740_000u64;
    let not_found = StatusCode::NOT_FOUND;
    for (method, path) in [
        (Method::GET, format!("/files/info/{unknown}")),
        (Method::GET, format!("/files/{unknown}")),
        (Method::POST, format!("/files/{unknown}")),
        (Method::GET, format!("/files/directory/{unknown}")),
        (Method::GET, format!("/files/lookup/{unknown}/name")),
        (Method::GET, format!("/files/content/{unknown}")),
        (Method::POST, format!("/files/unmount/{unknown}")),
        (Method::PUT, format!("/files/{unknown}/name")),
        (Method::PUT, format!("/files/size/{unknown}?size=1")),
        (Method::PUT, format!("/files/size/{unknown}/1")),
        (
            Method::PUT,
            format!("/files/rename/{unknown}/a?newParent={root}&newName=b"),
        ),
        (
            Method::PUT,
            format!("/files/rename/{root}/f?newParent={unknown}&newName=b"),
        ),
        (Method::PUT, format!("/files/link/{unknown}/a?node={file}")),
        (Method::PUT, format!("/files/link/{root}/a?node={unknown}")),
        (Method::POST, format!("/files/remove/{unknown}/a")),
    ] {
        files.expect(method, &path, "", not_found).await;
    }
    files
        .expect(
            Method::POST,
            &format!("/files/attributes/{unknown}"),
            "{}",
            not_found,
        )
        .await;
    // Missing children and non-root unmounts are 404 too.
    files
        .expect(
            Method::GET,
            &format!("/files/lookup/{root}/none"),
            "",
            not_found,
        )
        .await;
    files
        .expect(
            Method::POST,
            &format!("/files/remove/{root}/none"),
            "",
            not_found,
        )
        .await;
    files
        .expect(
            Method::PUT,
            &format!("/files/rename/{root}/none?newParent={root}&newName=x"),
            "",
            not_found,
        )
        .await;
    files
        .expect(
            Method::POST,
            &format!("/files/unmount/{file}"),
            "",
            not_found,
        )
        .await;

    // Malformed node numbers and parameters: 400.
    let bad = StatusCode::BAD_REQUEST;
    for path in [
        "/files/info/xyz".to_string(),
        "/files/info/-1".to_string(),
        "/files/directory/1.5".to_string(),
        format!("/files/{file}?offset=abc"),
        format!("/files/{file}?length=-3"),
        format!("/files/directory/{root}?offset=x"),
        format!("/files/lookup/{file}/x"),
        format!("/files/{dir}"),
        format!("/files/{symlink}"),
        format!("/files/content/{symlink}"),
        format!("/files/lookup/{root}/a%2Fb"),
    ] {
        files.expect(Method::GET, &path, "", bad).await;
    }
    for (method, path, body) in [
        (Method::POST, format!("/files/{dir}"), "x"),
        (Method::POST, format!("/files/{file}?offset=1e3"), "x"),
        (Method::PUT, format!("/files/{root}/x?kind=Weird"), ""),
        (Method::PUT, format!("/files/{root}/x?content=notjson"), ""),
        (
            Method::PUT,
            format!("/files/{root}/x?kind=SymbolicLink"),
            "",
        ),
        (
            Method::PUT,
            format!("/files/{root}/x?kind=File&target=f"),
            "",
        ),
        (Method::PUT, format!("/files/{root}/a%00b?kind=File"), ""),
        (Method::PUT, format!("/files/{file}/x?kind=File"), ""),
        (Method::PUT, format!("/files/size/{file}"), ""),
        (Method::PUT, format!("/files/size/{file}?size=big"), ""),
        (Method::PUT, format!("/files/size/{dir}?size=1"), ""),
        (Method::PUT, format!("/files/rename/{root}/f?newName=g"), ""),
        (
            Method::PUT,
            format!("/files/rename/{root}/f?newParent={root}"),
            "",
        ),
        (
            Method::PUT,
            format!("/files/rename/{root}/d?newParent={dir}&newName=d2"),
            "",
        ),
        (Method::PUT, format!("/files/link/{root}/x"), ""),
        (Method::PUT, format!("/files/link/{root}/x?node={dir}"), ""),
        (
            Method::POST,
            format!("/files/attributes/{file}"),
            "{not json",
        ),
        (
            Method::POST,
            format!("/files/attributes/{file}"),
            r#"{"executable":"yes"}"#,
        ),
        (Method::POST, "/files/mount".into(), "{\"address\""),
        (Method::POST, "/files/mount".into(), "{}"),
        (Method::POST, "/files/mount".into(), r#"{"address":"xyz"}"#),
        (Method::POST, "/files/mount?writable=maybe".into(), "{}"),
    ] {
        files.expect(method, &path, body, bad).await;
    }
    // A link whose content is missing is 404; one that is not a directory, or has a
    // transform nobody knows, is 400.
    let missing = format!(r#"{{"address":"{}"}}"#, Id::of_content(b"never stored"));
    files
        .expect(Method::POST, "/files/mount", &missing, not_found)
        .await;
    let blob = network
        .storage
        .put_bytes(bytes::Bytes::from_static(b"not json"))
        .await
        .expect("put");
    let not_directory = format!(r#"{{"address":"{blob}"}}"#);
    files
        .expect(Method::POST, "/files/mount", &not_directory, bad)
        .await;
    let unknown_transform = format!(r#"{{"address":"{blob}","transforms":[{{"kind":"Rot13"}}]}}"#);
    files
        .expect(Method::POST, "/files/mount", &unknown_transform, bad)
        .await;
    files
        .expect(
            Method::PUT,
            &format!("/files/{root}/x?content={}", urlencode(&missing)),
            "",
            not_found,
        )
        .await;

    // Conflicts: 409.
    let conflict = StatusCode::CONFLICT;
    files
        .expect(
            Method::PUT,
            &format!("/files/{root}/f?kind=Directory"),
            "",
            conflict,
        )
        .await;
    files
        .expect(
            Method::POST,
            &format!("/files/remove/{root}/d"),
            "",
            conflict,
        )
        .await;
    files
        .expect(
            Method::PUT,
            &format!("/files/link/{root}/d?node={file}"),
            "",
            conflict,
        )
        .await;
    files
        .expect(
            Method::PUT,
            &format!("/files/rename/{root}/f?newParent={root}&newName=d"),
            "",
            conflict,
        )
        .await;

    // Files beyond the configured limit: 413.
    files
        .expect(
            Method::POST,
            &format!("/files/{file}?offset={}", 16 * 1024 * 1024),
            "x",
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;
    files
        .expect(
            Method::PUT,
            &format!("/files/size/{file}/{}", 17 * 1024 * 1024),
            "",
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;

    // A slot that does not exist is 404.
    let slot = format!(r#"{{"address":"{}","slot":true}}"#, Id::random());
    files
        .expect(Method::POST, "/files/mount", &slot, not_found)
        .await;

    // None of it changed the tree.
    assert_eq!(files.read(file).await, b"abc");
    assert_eq!(files.info(root).await.size, Some(3));
}

fn urlencode(text: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("url");
    url.query_pairs_mut().append_pair("v", text);
    url.query()
        .and_then(|q| q.strip_prefix("v="))
        .expect("query")
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Changing a tree end to end
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_slot_tree_edited_over_http_reads_back_byte_for_byte() {
    let network = Network::start().await;
    let mut model = initial_model();
    let initial = upload_model(&network, &model).await;
    let slot = network.slot(initial.address).await;
    let files = Files::start(network.config()).await;
    let root = files.mount(&slot, None).await;
    assert!(files.info(root).await.writable, "slot mounts are writable");
    assert_eq!(walk_http(&files, root).await, model);
    let keep = files.walk_to(root, "keep.txt").await;
    let keep_link = files.client.content(keep).await.expect("keep link");

    // New directories, a file written at offsets (overwrite, then past the end).
    let docs = files.create(root, "docs", Create::directory()).await;
    let deep = files.create(docs, "deep", Create::directory()).await;
    let notes = files.create(deep, "notes.txt", Create::file()).await;
    files.write(notes, 0, b"hello world").await;
    files.write(notes, 0, b"HELLO").await;
    files.write(notes, 20, b"!!").await;
    let mut notes_bytes = b"HELLO world".to_vec();
    notes_bytes.resize(20, 0);
    notes_bytes.extend_from_slice(b"!!");
    assert_eq!(files.read(notes).await, notes_bytes);
    model.insert("docs".into(), Item::Directory);
    model.insert("docs/deep".into(), Item::Directory);

    // The multi-block file: overwrite across block boundaries, append, truncate.
    let data = files.walk_to(root, "data.bin").await;
    let before = files.info(data).await.etag;
    let Some(Item::File {
        data: mut bytes, ..
    }) = model.get("data.bin").cloned()
    else {
        panic!("model has data.bin");
    };
    let patch = random_bytes(9_000, 2);
    files.write(data, 10_000, &patch).await;
    bytes[10_000..19_000].copy_from_slice(&patch);
    let tail = random_bytes(5_000, 3);
    files.write(data, 40_000, &tail).await;
    bytes.extend_from_slice(&tail);
    assert_ne!(files.info(data).await.etag, before, "etag follows content");
    files.client.set_size(data, 42_000).await.expect("truncate");
    bytes.truncate(42_000);
    assert_eq!(files.read(data).await, bytes);
    assert_eq!(files.info(data).await.size, Some(42_000));

    // A symbolic link, a move across directories, a replacing rename.
    files
        .create(docs, "latest", Create::symbolic_link("deep/notes.txt"))
        .await;
    let tools = files.walk_to(root, "tools").await;
    files
        .client
        .rename(tools, "old.txt", docs, "old-renamed.txt")
        .await
        .expect("move");
    let replace = files.create(docs, "replace-me.txt", Create::file()).await;
    files.write(replace, 0, b"to be replaced").await;
    files
        .client
        .rename(docs, "old-renamed.txt", docs, "replace-me.txt")
        .await
        .expect("replacing rename");
    model.remove("tools/old.txt");
    model.insert("docs/replace-me.txt".into(), file(b"old"));
    model.insert("docs/latest".into(), Item::Symlink("deep/notes.txt".into()));

    // A second name for a file: a write through it shows under both.
    let run = files.walk_to(root, "tools/run.sh").await;
    files
        .client
        .link(root, "run-again.sh", run)
        .await
        .expect("link");
    let again = files.walk_to(root, "run-again.sh").await;
    assert_eq!(again, run);
    files.write(again, 0, b"#!/bin/sh\necho bye\n").await;
    model.insert("tools/run.sh".into(), executable(b"#!/bin/sh\necho bye\n"));
    model.insert("run-again.sh".into(), executable(b"#!/bin/sh\necho bye\n"));

    // Removals: a file, an emptied directory, a symbolic link (replaced).
    let scratch = files.create(root, "scratch", Create::directory()).await;
    files.create(scratch, "tmp.txt", Create::file()).await;
    files
        .client
        .remove(scratch, "tmp.txt")
        .await
        .expect("rm file");
    files.client.remove(root, "scratch").await.expect("rm dir");
    files.client.remove(root, "link").await.expect("rm symlink");
    files
        .create(root, "link2", Create::symbolic_link("keep.txt"))
        .await;
    model.remove("link");
    model.insert("link2".into(), Item::Symlink("keep.txt".into()));

    // Attributes.
    let attributes = Attributes {
        executable: Some(true),
        ..Attributes::default()
    };
    let info = files
        .client
        .set_attributes(data, &attributes)
        .await
        .expect("chmod");
    assert!(info.executable);
    let attributes = Attributes {
        modify_time: Some(1_700_000_000_000),
        content_type: Some(Some("text/plain".into())),
        ..Attributes::default()
    };
    let info = files
        .client
        .set_attributes(notes, &attributes)
        .await
        .expect("set type");
    assert_eq!(info.content_type.as_deref(), Some("text/plain"));
    assert_eq!(info.modify_time, 1_700_000_000_000);
    model.insert(
        "data.bin".into(),
        Item::File {
            data: bytes.clone(),
            executable: true,
        },
    );
    model.insert("docs/deep/notes.txt".into(), file(&notes_bytes));

    assert_eq!(walk_http(&files, root).await, model, "before sync");
    files.client.sync().await.expect("sync");
    let first = network.slot_value(&slot).await;
    assert_ne!(first, initial.address, "the slot moved");
    files.client.sync().await.expect("idle sync");
    assert_eq!(network.slot_value(&slot).await, first, "nothing to write");
    // A lone change two levels down is written out by the next sync.
    let replaced = files.walk_to(root, "docs/replace-me.txt").await;
    files.write(replaced, 0, b"OLD").await;
    model.insert("docs/replace-me.txt".into(), file(b"OLD"));
    files.client.sync().await.expect("second sync");
    let committed = network.slot_value(&slot).await;
    assert_ne!(committed, first, "the slot moved again");
    assert_eq!(
        files.client.content(root).await.expect("root").address,
        committed
    );
    // Unchanged files keep their links; changed ones are stored under new ones.
    assert_eq!(files.client.content(keep).await.expect("keep"), keep_link);
    assert_eq!(
        files.info(data).await.etag,
        files
            .client
            .content(data)
            .await
            .expect("data")
            .etag_or_address()
    );
    let unmounted = files.client.unmount(root).await.expect("unmount");
    assert_eq!(unmounted, ContentLink::new(committed));
    assert_eq!(files.client.info(root).await.expect("info"), None);

    // A new server reads the slot's tree back identically, times and types too.
    let second = Files::start(network.config()).await;
    let root = second.mount(&slot, None).await;
    assert_eq!(walk_http(&second, root).await, model, "after remount");
    let notes = second.walk_to(root, "docs/deep/notes.txt").await;
    let info = second.info(notes).await;
    assert_eq!(info.content_type.as_deref(), Some("text/plain"));
    assert_eq!(info.modify_time, 1_700_000_000_000);
    let keep = second.walk_to(root, "keep.txt").await;
    assert_eq!(second.client.content(keep).await.expect("keep"), keep_link);

    // So does the content crate, into a local directory.
    let local = tempfile::tempdir().expect("download dir");
    let dest = local.path().join("tree");
    download_directory(&network.reader(), &unmounted, &dest)
        .await
        .expect("download");
    assert_eq!(walk_local(dest).await, model, "downloaded");
}

#[tokio::test]
async fn a_large_file_spills_to_disk_and_is_stored_in_default_blocks() {
    let network = Network::start().await;
    let config = FilesConfig {
        chunking: ChunkConfig::default(),
        max_file_size: FilesConfig::default().max_file_size,
        ..network.config()
    };
    let files = Files::start(config).await;
    let root = files
        .mount(&network.empty_directory().await, Some(true))
        .await;
    let big = files.create(root, "big.bin", Create::file()).await;
    let content = random_bytes(5 * 1024 * 1024 / 2, 9);
    files.write(big, 0, &content).await;
    assert_eq!(files.dirty_files(), 1, "held in a temporary file");
    for (offset, length) in [
        (0u64, 10u64),
        (1_048_570, 20),
        (2_097_000, 3_000),
        (2_621_000, 1_000),
    ] {
        let got = files
            .client
            .read(big, Some(offset), Some(length))
            .await
            .expect("range");
        let start = offset as usize;
        let end = (start + length as usize).min(content.len());
        assert_eq!(got.as_ref(), &content[start..end], "offset {offset}");
    }
    files.client.sync().await.expect("sync");
    assert_eq!(
        files.dirty_files(),
        0,
        "synced files leave no temporary file"
    );
    let link = files.client.content(big).await.expect("link");
    assert_eq!(link.transforms, vec![Transform::Blocks]);
    let blocks = network
        .reader()
        .block_list(&link)
        .await
        .expect("list")
        .expect("a block list");
    assert!(blocks.len() >= 2, "{} blocks", blocks.len());
    assert!(blocks.iter().all(|b| b.size <= 2 * 1024 * 1024));
    assert_eq!(files.read(big).await, content);
    // A small change in the middle stores few new blocks: the others are shared.
    files.write(big, 1_500_000, b"changed").await;
    files.client.sync().await.expect("sync");
    let changed = files.client.content(big).await.expect("link");
    let new_blocks = network
        .reader()
        .block_list(&changed)
        .await
        .expect("list")
        .expect("a block list");
    let shared = new_blocks.iter().filter(|b| blocks.contains(b)).count();
    assert!(
        shared >= 1,
        "{shared} of {} blocks shared",
        new_blocks.len()
    );
}

#[tokio::test]
async fn content_and_unmount_write_out_plain_writable_mounts() {
    let network = Network::start().await;
    let files = Files::start(network.config()).await;
    let empty = network.empty_directory().await;
    let root = files.mount(&empty, Some(true)).await;
    let notes = files.create(root, "notes", Create::file()).await;
    files.write(notes, 0, b"pending").await;
    // The file's content link is written out on demand.
    let link = files.client.content(notes).await.expect("content");
    let stored = network
        .reader()
        .read_to_vec(&link, 1 << 20)
        .await
        .expect("read");
    assert_eq!(stored, b"pending");
    assert_eq!(files.info(notes).await.etag, link.etag_or_address());
    // Create with content links the existing content (no copy).
    let copy = files
        .create(root, "copy", Create::file().with_content(link.clone()))
        .await;
    assert_eq!(files.read(copy).await, b"pending");
    let sub = files
        .create(root, "sub", Create::directory().with_content(empty.clone()))
        .await;
    assert_eq!(files.info(sub).await.size, Some(0));
    let unmounted = files.client.unmount(root).await.expect("unmount");
    assert_ne!(unmounted, empty);
    let again = files
        .client
        .mount(
            &unmounted,
            MountOptions {
                executable: true,
                writable: None,
            },
        )
        .await
        .expect("mount executable");
    let notes = files.walk_to(again, "notes").await;
    let info = files.info(notes).await;
    assert!(info.executable && !info.writable, "{info:?}");
    let expected = Model::from([
        ("copy".into(), executable(b"pending")),
        ("notes".into(), executable(b"pending")),
        ("sub".into(), Item::Directory),
    ]);
    assert_eq!(walk_http(&files, again).await, expected);
    let copy = files.walk_to(again, "copy").await;
    assert_eq!(files.client.content(copy).await.expect("link"), link);
}

// ---------------------------------------------------------------------------------------
// Slots
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_loser_of_a_slot_race_reports_conflict_and_reloads() {
    let network = Network::start().await;
    let slot = network.slot(network.empty_directory().await.address).await;
    let a = Files::start(network.config()).await;
    let b = Files::start(network.config()).await;
    let root_a = a.mount(&slot, None).await;
    let root_b = b.mount(&slot, None).await;
    let file_a = a.create(root_a, "a.txt", Create::file()).await;
    a.write(file_a, 0, b"from a").await;
    let file_b = b.create(root_b, "b.txt", Create::file()).await;
    b.write(file_b, 0, b"from b").await;

    a.client.sync().await.expect("first sync wins");
    let after_a = network.slot_value(&slot).await;
    let lost = b.client.sync().await.expect_err("second sync loses");
    assert_eq!(lost.status(), Some(409), "{lost}");
    assert!(
        lost.to_string().contains(&slot.address.to_string()),
        "{lost}"
    );
    assert_eq!(
        network.slot_value(&slot).await,
        after_a,
        "the loser wrote nothing"
    );

    // B now shows A's tree under the same root; its own change and nodes are gone.
    let expected = Model::from([("a.txt".into(), file(b"from a"))]);
    assert_eq!(walk_http(&b, root_b).await, expected);
    assert_eq!(b.client.info(file_b).await.expect("info"), None);
    // Working on the reloaded tree succeeds.
    let file_b = b.create(root_b, "b.txt", Create::file()).await;
    b.write(file_b, 0, b"from b, again").await;
    b.client.sync().await.expect("sync after reload");
    // Now A is behind: its next change loses, and unmount reports it too.
    a.write(file_a, 0, b"FROM A").await;
    let lost = a.client.unmount(root_a).await.expect_err("stale unmount");
    assert_eq!(lost.status(), Some(409), "{lost}");
    let expected = Model::from([
        ("a.txt".into(), file(b"from a")),
        ("b.txt".into(), file(b"from b, again")),
    ]);
    assert_eq!(walk_http(&a, root_a).await, expected, "A reloaded B's tree");
    let link = a.client.unmount(root_a).await.expect("clean unmount");
    assert_eq!(link.address, network.slot_value(&slot).await);
}

#[tokio::test]
async fn a_sync_of_one_root_leaves_the_other_mounts_alone() {
    let network = Network::start().await;
    let empty = network.empty_directory().await.address;
    let slot = network.slot(empty).await;
    let other_slot = network.slot(empty).await;
    let files = Files::start(network.config()).await;
    // Two mounts of one slot on one server, and a mount of another slot.
    let root_a = files.mount(&slot, None).await;
    let root_b = files.mount(&slot, None).await;
    let root_c = files.mount(&other_slot, None).await;
    for (root, name) in [(root_a, "a.txt"), (root_b, "b.txt"), (root_c, "c.txt")] {
        let node = files.create(root, name, Create::file()).await;
        files.write(node, 0, name.as_bytes()).await;
    }

    files.client.sync_root(root_a).await.expect("a syncs alone");
    assert_ne!(network.slot_value(&slot).await, empty);
    assert_eq!(
        network.slot_value(&other_slot).await,
        empty,
        "the other slot's mount was left for its own sync"
    );
    let lost = files
        .client
        .sync_root(root_b)
        .await
        .expect_err("b is behind");
    assert_eq!(lost.status(), Some(409), "{lost}");
    let expected = Model::from([("a.txt".into(), file(b"a.txt"))]);
    assert_eq!(walk_http(&files, root_b).await, expected, "b reloaded");
    files.client.sync_root(root_c).await.expect("c syncs");
    assert_ne!(network.slot_value(&other_slot).await, empty);

    // A node that is not a mount root, and a malformed one.
    let not_root = files
        .client
        .sync_root(root_a + 1_000)
        .await
        .expect_err("404");
    assert_eq!(not_root.status(), Some(404), "{not_root}");
    files
        .expect(
            reqwest::Method::PUT,
            "/files/sync?root=x",
            "",
            StatusCode::BAD_REQUEST,
        )
        .await;
    // An empty root names no mount: refused, not read as "every mount".
    files
        .expect(
            reqwest::Method::PUT,
            "/files/sync?root=",
            "",
            StatusCode::BAD_REQUEST,
        )
        .await;
}

#[tokio::test]
async fn signed_slots_need_their_key() {
    let network = Network::start().await;
    let seed = [7u8; 32];
    let signer = SlotSigner::ed25519_from_seed(&seed);
    let id = signer.ed25519_slot().expect("ed25519 slot");
    let empty = network.empty_directory().await;
    assert!(
        network
            .slots
            .register(&signer.register_request(id, empty.address))
            .await
            .expect("register")
    );
    let slot = slot_link(id);

    // Without the key: read-only by default, 403 when asked to write.
    let keyless = Files::start(network.config()).await;
    let root = keyless.mount(&slot, None).await;
    assert!(!keyless.info(root).await.writable);
    keyless
        .expect(
            reqwest::Method::PUT,
            &format!("/files/{root}/x"),
            "",
            StatusCode::FORBIDDEN,
        )
        .await;
    let refused = keyless
        .client
        .mount(
            &slot,
            MountOptions {
                executable: false,
                writable: Some(true),
            },
        )
        .await
        .expect_err("writable without key");
    assert_eq!(refused.status(), Some(403), "{refused}");

    // A server holding keys refuses to run in open mode: it would sign for anyone.
    let config = FilesConfig {
        slot_keys: SlotKeys(vec![seed]),
        ..network.config()
    };
    let dir = tempfile::tempdir().expect("files dir");
    let ctx = ServerContext::prepare(ServerOptions::ephemeral(Role::Files, dir.path()))
        .expect("files context");
    let refused = files_server::start(&ctx, config.clone())
        .await
        .expect_err("slot keys without --auth-root-key");
    assert!(
        refused.to_string().contains("--auth-root-key"),
        "the reason names the missing option: {refused}"
    );

    // With the key and token checks: writable for files:write holders only, and the
    // slots server accepts the signed update.
    let auth = TestAuth::new();
    let keyed = Files::start_with_auth(config, &auth, &auth.token("editor", "files:write")).await;
    for (token, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (
            Some(auth.token("reader", "files:read")),
            StatusCode::FORBIDDEN,
        ),
        (
            Some(auth.token("storer", "storage:write,slots:write")),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let http = token
            .as_deref()
            .map_or_else(reqwest::Client::new, TestAuth::client);
        for (method, path, body) in [
            (
                reqwest::Method::POST,
                "/files/mount?writable=true".to_string(),
                serde_json::to_string(&slot).expect("json"),
            ),
            (
                reqwest::Method::PUT,
                "/files/sync".to_string(),
                String::new(),
            ),
        ] {
            let response = http
                .request(method.clone(), keyed.url(&path))
                .body(body)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), status, "{method} {path} with {token:?}");
        }
    }
    assert_eq!(
        network.slot_value(&slot).await,
        empty.address,
        "nothing signed"
    );
    let root = keyed.mount(&slot, None).await;
    assert!(keyed.info(root).await.writable);
    let note = keyed.create(root, "signed.txt", Create::file()).await;
    keyed.write(note, 0, b"signed").await;
    keyed.client.sync().await.expect("signed sync");
    let state = network
        .slots
        .get(&id)
        .await
        .expect("get")
        .expect("slot exists");
    assert_ne!(state.address, empty.address);
    assert!(state.signature.is_some());
}

#[tokio::test]
async fn a_blocks_slot_link_is_written_back_as_a_block_list() {
    let network = Network::start().await;
    let empty = network.empty_directory().await;
    // The slot holds a block list whose one block is the directory blob.
    let list = serde_json::to_vec(&vec![Block {
        content: empty.clone(),
        size: 2,
    }])
    .expect("json");
    let list_address = network
        .storage
        .put_bytes(bytes::Bytes::from(list))
        .await
        .expect("put list");
    let mut slot = network.slot(list_address).await;
    slot.transforms = vec![Transform::Blocks];
    let files = Files::start(network.config()).await;
    let root = files.mount(&slot, None).await;
    let node = files.create(root, "x", Create::file()).await;
    files.write(node, 0, b"in a list").await;
    let link = files.client.unmount(root).await.expect("unmount");
    assert_eq!(link.transforms, vec![Transform::Blocks]);
    assert_eq!(link.address, network.slot_value(&slot).await);
    let root = files.mount(&slot, None).await;
    let expected = Model::from([("x".into(), file(b"in a list"))]);
    assert_eq!(walk_http(&files, root).await, expected);
    // Slot links with other transforms are refused.
    let mut odd = slot.clone();
    odd.transforms = vec![Transform::decompress("brotli")];
    let refused = files
        .client
        .mount(&odd, MountOptions::default())
        .await
        .expect_err("unsupported slot transforms");
    assert_eq!(refused.status(), Some(400));
}

// ---------------------------------------------------------------------------------------
// Lifecycle
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_periodic_sync_commits_without_being_asked() {
    let network = Network::start().await;
    let empty = network.empty_directory().await;
    let slot = network.slot(empty.address).await;
    let config = FilesConfig {
        sync_interval: Duration::from_millis(200),
        ..network.config()
    };
    let files = Files::start(config).await;
    let root = files.mount(&slot, None).await;
    let node = files.create(root, "auto.txt", Create::file()).await;
    files.write(node, 0, b"auto").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while network.slot_value(&slot).await == empty.address {
        assert!(tokio::time::Instant::now() < deadline, "no periodic sync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = Files::start(network.config()).await;
    let root = second.mount(&slot, None).await;
    let expected = Model::from([("auto.txt".into(), file(b"auto"))]);
    assert_eq!(walk_http(&second, root).await, expected);
}

#[tokio::test]
async fn a_restart_forgets_nodes_and_a_graceful_stop_syncs() {
    let network = Network::start().await;
    let empty = network.empty_directory().await;
    let slot = network.slot(empty.address).await;
    let files = Files::start(network.config()).await;
    let root = files.mount(&slot, None).await;
    let node = files.create(root, "late.bin", Create::file()).await;
    // Large enough to live in a temporary file.
    let content = random_bytes(100_000, 5);
    files.write(node, 0, &content).await;
    assert_eq!(files.dirty_files(), 1);
    let Files { dir, server, .. } = files;
    server.stop().await.expect("graceful stop");
    // The last sync at shutdown committed the change.
    assert_ne!(network.slot_value(&slot).await, empty.address);

    // Left-over temporary files are cleared at start; old node numbers are unknown.
    let junk = dir.path().join(files_server::SPILL_DIR).join("junk");
    std::fs::write(&junk, b"stale").expect("junk file");
    let restarted = Files::start_in(dir, network.config()).await;
    assert!(!junk.exists());
    assert_eq!(restarted.client.info(root).await.expect("info"), None);
    assert_eq!(restarted.client.info(node).await.expect("info"), None);
    let root = restarted.mount(&slot, None).await;
    let late = restarted.walk_to(root, "late.bin").await;
    assert_eq!(restarted.read(late).await, content);
}

#[tokio::test]
async fn storage_and_slots_are_found_through_the_broker() {
    let start = |role: Role, broker: Option<String>| {
        let dir = tempfile::tempdir().expect("data dir");
        let mut options = ServerOptions::ephemeral(role, dir.path());
        options.broker = broker;
        let ctx = ServerContext::prepare(options).expect("context");
        (dir, ctx)
    };
    let (_broker_dir, ctx) = start(Role::Broker, None);
    let broker = broker_server::start(&ctx, broker_server::BrokerConfig::default())
        .await
        .expect("start broker");
    let broker_url = Some(broker.url().to_string());
    let (_storage_dir, ctx) = start(Role::Storage, broker_url.clone());
    let storage = storage_server::start(&ctx, storage_server::StorageConfig::default())
        .await
        .expect("start storage");
    let (_slots_dir, ctx) = start(Role::Slots, broker_url.clone());
    let slots = slots_server::start(&ctx, slots_server::SlotsConfig::default())
        .await
        .expect("start slots");
    let client = BrokerClient::new(broker.url()).expect("broker client");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (kind, id) in [("storage", storage.id()), ("slots", slots.id())] {
        while !client
            .registered(kind)
            .await
            .expect("registered")
            .contains(&id)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{kind} never registered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let storage_client = StorageClient::new(storage.url()).expect("storage client");
    let writer =
        Writer::new(Arc::new(storage_client.clone()), WriterConfig::default()).expect("writer");
    let empty = write_directory(&writer, Vec::new()).await.expect("empty");
    let slot_id = Id::random();
    let slots_client = SlotsClient::new(slots.url()).expect("slots client");
    assert!(
        slots_client
            .register(&RegisterRequest::unsigned(slot_id, empty.link.address))
            .await
            .expect("register")
    );

    // No --storage and no --slots: everything comes from the broker.
    let (files_dir, ctx) = start(Role::Files, broker_url);
    let config = FilesConfig {
        sync_interval: Duration::ZERO,
        ..FilesConfig::default()
    };
    let server = files_server::start(&ctx, config)
        .await
        .expect("start files");
    let files = Files {
        client: FilesClient::new(server.url()).expect("files client"),
        http: reqwest::Client::new(),
        dir: files_dir,
        server,
    };
    let root = files.mount(&slot_link(slot_id), None).await;
    let node = files.create(root, "brokered.txt", Create::file()).await;
    files.write(node, 0, b"found via the broker").await;
    files.client.sync().await.expect("sync");
    let committed = slots_client
        .get(&slot_id)
        .await
        .expect("get")
        .expect("slot")
        .address;
    assert_ne!(committed, empty.link.address);
    let link = files.client.content(node).await.expect("content");
    let stored = Reader::new(Arc::new(storage_client))
        .read_to_vec(&link, 1 << 20)
        .await
        .expect("stored on the brokered storage server");
    assert_eq!(stored, b"found via the broker");
}

#[tokio::test]
async fn a_failed_sync_keeps_the_changes() {
    let network = Network::start().await;
    let files = Files::start(network.config()).await;
    let root = files
        .mount(&network.empty_directory().await, Some(true))
        .await;
    let node = files.create(root, "kept.txt", Create::file()).await;
    files.write(node, 0, b"not lost").await;
    let etag = files.info(node).await.etag;
    let Network { storage_server, .. } = network;
    storage_server.stop().await.expect("stop storage");
    let failed = files.client.sync().await.expect_err("storage is down");
    assert_eq!(failed.status(), Some(503), "{failed}");
    assert_eq!(files.read(node).await, b"not lost");
    assert_eq!(files.info(node).await.etag, etag, "still local");
}

// ---------------------------------------------------------------------------------------
// Size limit and sparse files
// ---------------------------------------------------------------------------------------

/// The write of the issue report: 5 bytes just below 64 GiB.
const FAR_OFFSET: u64 = 68_719_476_000;
const GIB: u64 = 1024 * 1024 * 1024;

#[tokio::test]
async fn writes_past_the_size_limit_are_413_and_change_nothing() {
    let network = Network::start().await;
    let limit = 100_000;
    let config = FilesConfig {
        max_file_size: limit,
        ..network.config()
    };
    let files = Files::start(config).await;
    let root = files
        .mount(&network.empty_directory().await, Some(true))
        .await;
    let node = files.create(root, "capped.bin", Create::file()).await;
    let head = random_bytes(1000, 77);
    files.write(node, 0, &head).await;

    // Ending exactly at the limit is allowed; one byte more is not.
    files.write(node, limit - 10, b"0123456789").await;
    let mut expected = head.clone();
    expected.resize(limit as usize - 10, 0);
    expected.extend_from_slice(b"0123456789");
    let etag = files.info(node).await.etag;
    let too_large = |what: &str, error: invariant_spec::ClientError| {
        assert_eq!(error.status(), Some(413), "{what}: {error}");
        assert!(error.to_string().contains("limit"), "{what}: {error}");
    };
    for (what, offset, len) in [
        ("one byte past the limit", limit - 10, 11),
        ("the issue's far write", FAR_OFFSET, 5),
        ("a write straddling the limit from 0", 0, limit as usize + 1),
        ("an offset at u64::MAX", u64::MAX, 1),
    ] {
        let error = files
            .client
            .write(node, offset, vec![b'x'; len])
            .await
            .expect_err(what);
        too_large(what, error);
    }
    // A body without a declared length is refused too when its first part crosses.
    let stream =
        futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(vec![
            b'y';
            64
        ]))]);
    let error = files
        .client
        .write(node, limit - 10, reqwest::Body::wrap_stream(stream))
        .await
        .expect_err("chunked write past the limit");
    too_large("a chunked write", error);
    // Growing through the size route is refused the same way.
    let error = files
        .client
        .set_size(node, limit + 1)
        .await
        .expect_err("size past the limit");
    too_large("a size change", error);
    files
        .expect(
            reqwest::Method::PUT,
            &format!("/files/size/{node}/{FAR_OFFSET}"),
            "",
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;
    assert_eq!(files.info(node).await.etag, etag, "nothing changed");
    assert_eq!(files.info(node).await.size, Some(limit));
    assert_eq!(files.read(node).await, expected);
    files
        .client
        .set_size(node, limit)
        .await
        .expect("at the limit");
    files.client.sync().await.expect("sync");
    assert_eq!(files.read(node).await, expected);
}

/// Reads `length` bytes at `offset` through the server.
async fn read_range(files: &Files, node: Node, offset: u64, length: u64) -> Vec<u8> {
    files
        .client
        .read(node, Some(offset), Some(length))
        .await
        .expect("read range")
        .to_vec()
}

#[tokio::test]
async fn a_sparse_file_syncs_without_reading_its_hole() {
    let network = Network::start().await;
    let config = FilesConfig {
        chunking: ChunkConfig::default(),
        max_file_size: FilesConfig::default().max_file_size,
        ..network.config()
    };
    let files = Files::start(config).await;
    let root = files
        .mount(&network.empty_directory().await, Some(true))
        .await;
    let node = files.create(root, "sparse.bin", Create::file()).await;
    let tail = b"the end of a sparse file";
    files.write(node, 0, b"head").await;
    files.write(node, GIB, tail).await;
    let size = GIB + tail.len() as u64;

    let started = std::time::Instant::now();
    files.client.sync().await.expect("sync");
    let took = started.elapsed();
    // Reading and hashing the hole took about 9 s in a debug build; skipping it, 0.2 s.
    assert!(
        took < Duration::from_secs(3),
        "syncing a 1 GiB hole took {took:?}: the hole was read or hashed"
    );
    let link = files.client.content(node).await.expect("link");
    assert_eq!(files.info(node).await.size, Some(size));
    // The zero block is stored once, however many times the list names it.
    let blocks = network
        .reader()
        .block_list(&link)
        .await
        .expect("list")
        .expect("a block list");
    let mut distinct: Vec<Id> = blocks.iter().map(|b| b.content.address).collect();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() < 8, "{} distinct blocks", distinct.len());

    // Downloaded through the content crate, the file is byte for byte what was written:
    // "head", zeros up to 1 GiB, then the tail.
    let mut stream = network.reader().read(&link);
    let mut at = 0u64;
    let mut last = Vec::new();
    let zeros = vec![0u8; 4 * 1024 * 1024];
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let chunk = chunk.expect("content");
        let end = at + chunk.len() as u64;
        if at >= 4 && end <= GIB && chunk.len() <= zeros.len() {
            // Inside the hole (compared in one go: a byte loop is slow in debug builds).
            assert!(
                chunk[..] == zeros[..chunk.len()],
                "bytes {at}..{end} are not zeros"
            );
            at = end;
            continue;
        }
        for (i, byte) in chunk.iter().enumerate() {
            let position = at + i as u64;
            let want = match position {
                0..4 => b"head"[position as usize],
                p if p < GIB => 0,
                p => tail[(p - GIB) as usize],
            };
            if *byte != want {
                panic!("byte {position} is {byte}, expected {want}");
            }
        }
        at += chunk.len() as u64;
        last = chunk.to_vec();
    }
    assert_eq!(at, size, "downloaded length");
    assert!(last.ends_with(tail));
    // Through the files server too: the tail and a piece of the hole.
    assert_eq!(read_range(&files, node, GIB, 100).await, tail);
    assert_eq!(read_range(&files, node, GIB / 2, 4096).await, vec![0; 4096]);
}

#[tokio::test]
async fn the_reported_far_write_fits_the_default_limit_and_syncs_cheaply() {
    let network = Network::start().await;
    let config = FilesConfig {
        chunking: ChunkConfig::default(),
        max_file_size: FilesConfig::default().max_file_size,
        ..network.config()
    };
    assert_eq!(config.max_file_size, 64 * GIB);
    let files = Files::start(config).await;
    let root = files
        .mount(&network.empty_directory().await, Some(true))
        .await;
    let node = files.create(root, "far.bin", Create::file()).await;
    // The report's write ends 731 bytes below 64 GiB, so the default limit allows it;
    // what it must not do any more is make every sync hash 64 GiB of zeros.
    files.write(node, FAR_OFFSET, b"12345").await;
    let past = files
        .client
        .write(
            node,
            FAR_OFFSET,
            vec![b'x'; (64 * GIB - FAR_OFFSET) as usize + 1],
        )
        .await
        .expect_err("one byte past 64 GiB");
    assert_eq!(past.status(), Some(413), "{past}");
    let started = std::time::Instant::now();
    files.client.sync().await.expect("sync");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "syncing a 64 GiB sparse file took {took:?}"
    );
    assert_eq!(files.info(node).await.size, Some(FAR_OFFSET + 5));
    assert_eq!(read_range(&files, node, FAR_OFFSET, 10).await, b"12345");
    assert_eq!(read_range(&files, node, 40 * GIB, 64).await, vec![0; 64]);
}

#[tokio::test]
async fn changing_a_synced_sparse_file_keeps_its_content() {
    let network = Network::start().await;
    let files = Files::start(network.config()).await;
    let root = files
        .mount(&network.empty_directory().await, Some(true))
        .await;
    let node = files.create(root, "holes.bin", Create::file()).await;
    // Data, a hole of many blocks, data, and a hole to the end (a zero extension).
    let size = 3 * 1024 * 1024;
    files.write(node, 0, b"first").await;
    files.write(node, 2 * 1024 * 1024, b"middle").await;
    files.client.set_size(node, size).await.expect("extend");
    files.client.sync().await.expect("first sync");
    let mut expected = vec![0u8; size as usize];
    expected[..5].copy_from_slice(b"first");
    expected[2 * 1024 * 1024..2 * 1024 * 1024 + 6].copy_from_slice(b"middle");
    assert!(files.read(node).await == expected, "after the first sync");
    // The next change copies the synced file locally (keeping its holes) and syncs it.
    files.write(node, 1024 * 1024, b"inside the hole").await;
    expected[1024 * 1024..1024 * 1024 + 15].copy_from_slice(b"inside the hole");
    assert!(files.read(node).await == expected, "local copy");
    files.client.sync().await.expect("second sync");
    let link = files.client.content(node).await.expect("link");
    let stored = network
        .reader()
        .read_to_vec(&link, u64::MAX)
        .await
        .expect("stored");
    assert!(stored == expected, "stored content");
}
