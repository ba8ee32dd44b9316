//! The files protocol (`/files/`): file trees stored as content links, presented as a
//! POSIX-like file system addressed by integer node numbers (see `spec/files.md`).
//!
//! | route | body → answer |
//! |---|---|
//! | `POST /files/mount?executable=&writable=` | [`ContentLink`] → root [`Node`]; 400, 404 |
//! | `POST /files/unmount/:node` | → [`ContentLink`] of the synced tree; 404, 409 |
//! | `GET /files/info/:node` | → [`Info`]; 404 |
//! | `GET /files/lookup/:node/:name` | → the child's [`Info`]; 404, 400 |
//! | `GET /files/content/:node` | → [`ContentLink`] of the node's current content |
//! | `GET /files/directory/:node?offset=&length=` | → [`DirectoryEntry`] array in name order |
//! | `GET /files/:node?offset=&length=` | → the file's bytes |
//! | `POST /files/:node?offset=` | bytes → number of bytes written; 403 read-only |
//! | `PUT /files/:node/:name?kind=&content=&target=` | → the new [`Node`]; 409 name exists |
//! | `POST /files/attributes/:node` (also `PUT`) | [`Attributes`] → the updated [`Info`] |
//! | `PUT /files/size/:node?size=` (also `/files/size/:node/:size`) | truncate or extend |
//! | `PUT /files/rename/:node/:name?newParent=&newName=` | move a child |
//! | `PUT /files/link/:node/:name?node=` | another name for a node; 409 name exists |
//! | `POST /files/remove/:node/:name` | remove a child; 409 non-empty directory |
//! | `PUT /files/sync?root=` | write every change (of one mount) out; 409 when a slot moved |
//!
//! Node numbers are meaningful only on the server that handed them out, until it
//! restarts or the tree is unmounted. [`FilesClient`] wraps every route; refusals are
//! [`ClientError::Status`] with the server's reason, and [`ClientError::status`] tells
//! them apart (a lost slot race on sync or unmount is 409).

use bytes::Bytes;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::content::{ContentLink, EntryKind};
use crate::http::{Endpoint, NOT_JSON, read_bytes};
use crate::{ClientError, ClientResult, Id};

/// A node number: a non-negative integer below 2^53, decimal in paths and queries.
pub type Node = u64;

// ---------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------

/// What the server knows about a node (`GET /files/info/:node` and friends).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    /// The node number.
    pub node: Node,
    /// `File`, `Directory` or `SymbolicLink`.
    pub kind: EntryKind,
    /// Last modification, ms since the Unix epoch.
    #[serde(deserialize_with = "time_from_json")]
    pub modify_time: i64,
    /// Creation, ms since the Unix epoch.
    #[serde(deserialize_with = "time_from_json")]
    pub create_time: i64,
    /// Whether the node is executable.
    pub executable: bool,
    /// Whether the node may be changed (its mount is writable and its mode allows it).
    pub writable: bool,
    /// Changes whenever the node's content changes.
    pub etag: String,
    /// Files: the length in bytes; directories: the number of entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Symbolic links: the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The media type, when one is recorded.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// One entry of `GET /files/directory/:node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// The name within the directory.
    pub name: String,
    /// The named node.
    pub info: Info,
}

/// Body of `POST /files/attributes/:node`: each present field is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attributes {
    /// Sets or clears the executable bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<bool>,
    /// Sets or clears the write bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writable: Option<bool>,
    /// Sets the modification time (ms since the Unix epoch).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_time_from_json"
    )]
    pub modify_time: Option<i64>,
    /// Sets the creation time (ms since the Unix epoch).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_time_from_json"
    )]
    pub create_time: Option<i64>,
    /// `Some(Some(t))` sets the media type, `Some(None)` (JSON `null`) removes it.
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub content_type: Option<Option<String>>,
}

/// What `PUT /files/:node/:name` creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Create {
    /// The kind of the new node.
    pub kind: EntryKind,
    /// Existing content for a file or directory (else it starts empty).
    pub content: Option<ContentLink>,
    /// The target of a symbolic link.
    pub target: Option<String>,
}

impl Create {
    /// An empty file.
    pub fn file() -> Create {
        Create {
            kind: EntryKind::File,
            content: None,
            target: None,
        }
    }

    /// An empty directory.
    pub fn directory() -> Create {
        Create {
            kind: EntryKind::Directory,
            ..Create::file()
        }
    }

    /// A symbolic link to `target`.
    pub fn symbolic_link(target: impl Into<String>) -> Create {
        Create {
            kind: EntryKind::SymbolicLink,
            target: Some(target.into()),
            ..Create::file()
        }
    }

    /// This creation with `content` as the initial content.
    pub fn with_content(self, content: ContentLink) -> Create {
        Create {
            content: Some(content),
            ..self
        }
    }
}

/// The query of `POST /files/mount`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Show every file of the tree as executable (`executable=true`).
    pub executable: bool,
    /// `Some(true)` allows changes; `None` leaves the server's default (writable for
    /// slot links, read-only otherwise).
    pub writable: Option<bool>,
}

/// The wire name of an entry kind (`kind=` in queries).
pub fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "File",
        EntryKind::Directory => "Directory",
        EntryKind::SymbolicLink => "SymbolicLink",
    }
}

fn time_from_json<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(deserializer)?;
    if let Some(ms) = n.as_i64() {
        return Ok(ms);
    }
    match n.as_f64() {
        // Fractional milliseconds (JavaScript `mtimeMs`) are floored.
        Some(f) if f.is_finite() && f.abs() < 9.0e15 => Ok(f.floor() as i64),
        _ => Err(D::Error::custom(format!("time {n} is out of range"))),
    }
}

fn optional_time_from_json<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    time_from_json(deserializer).map(Some)
}

/// Reads a present field (including `null`) as `Some`; absence is the serde default.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// Typed client for one files server.
#[derive(Clone, Debug)]
pub struct FilesClient {
    endpoint: Endpoint,
}

impl FilesClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:3004`).
    pub fn new(base_url: &str) -> ClientResult<FilesClient> {
        Ok(FilesClient {
            endpoint: Endpoint::new(base_url)?,
        })
    }

    /// A client sharing an existing endpoint (and its connection pool).
    pub fn from_endpoint(endpoint: Endpoint) -> FilesClient {
        FilesClient { endpoint }
    }

    /// The endpoint (base url and HTTP client).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The server's id.
    pub async fn id(&self) -> ClientResult<Id> {
        self.endpoint.server_id().await
    }

    /// `base/files/<segments...>?<query>`, each segment percent-encoded.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> ClientResult<reqwest::Url> {
        let base = self.endpoint.base_url();
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base.to_string(),
            reason: reason.to_string(),
        };
        let mut url = reqwest::Url::parse(base).map_err(|e| invalid(&e.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| invalid("url cannot have a path"))?
            .pop_if_empty()
            .push("files")
            .extend(segments);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        Ok(url)
    }

    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        url: &reqwest::Url,
    ) -> ClientResult<reqwest::Response> {
        self.endpoint.call(url.as_str(), request).await
    }

    /// [`FilesClient::call`], then the JSON answer.
    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &reqwest::Url,
    ) -> ClientResult<T> {
        self.endpoint
            .call_json(url.as_str(), request, NOT_JSON)
            .await
    }

    /// `GET url` and its JSON answer, but a 404 is `None`.
    async fn optional_json<T: serde::de::DeserializeOwned>(
        &self,
        url: reqwest::Url,
    ) -> ClientResult<Option<T>> {
        let request = self.endpoint.http().get(url.clone());
        self.endpoint
            .call_json_optional(url.as_str(), request, NOT_JSON)
            .await
    }

    /// Mounts the tree `link` points at (a directory); returns its root node.
    pub async fn mount(&self, link: &ContentLink, options: MountOptions) -> ClientResult<Node> {
        let mut query = vec![("executable", options.executable.to_string())];
        if let Some(writable) = options.writable {
            query.push(("writable", writable.to_string()));
        }
        let url = self.url(&["mount"], &query)?;
        let request = self.endpoint.http().post(url.clone()).json(link);
        self.call_json(request, &url).await
    }

    /// Syncs and unmounts the tree mounted at `root`; returns its content link.
    pub async fn unmount(&self, root: Node) -> ClientResult<ContentLink> {
        let url = self.url(&["unmount", &root.to_string()], &[])?;
        self.call_json(self.endpoint.http().post(url.clone()), &url)
            .await
    }

    /// The info of `node`, or `None` when the server does not know it.
    pub async fn info(&self, node: Node) -> ClientResult<Option<Info>> {
        self.optional_json(self.url(&["info", &node.to_string()], &[])?)
            .await
    }

    /// The info of child `name` of directory `node`, or `None` when there is none.
    pub async fn lookup(&self, node: Node, name: &str) -> ClientResult<Option<Info>> {
        self.optional_json(self.url(&["lookup", &node.to_string(), name], &[])?)
            .await
    }

    /// The content link of `node`'s current content (pending changes written out).
    pub async fn content(&self, node: Node) -> ClientResult<ContentLink> {
        let url = self.url(&["content", &node.to_string()], &[])?;
        self.call_json(self.endpoint.http().get(url.clone()), &url)
            .await
    }

    /// Entries of directory `node` in name order, from `offset`, at most `length`.
    pub async fn directory(
        &self,
        node: Node,
        offset: Option<u64>,
        length: Option<u64>,
    ) -> ClientResult<Vec<DirectoryEntry>> {
        let query = offset_length(offset, length);
        let url = self.url(&["directory", &node.to_string()], &query)?;
        self.call_json(self.endpoint.http().get(url.clone()), &url)
            .await
    }

    /// Bytes of file `node` from `offset` (default 0), at most `length` (default all).
    pub async fn read(
        &self,
        node: Node,
        offset: Option<u64>,
        length: Option<u64>,
    ) -> ClientResult<Bytes> {
        let url = self.url(&[&node.to_string()], &offset_length(offset, length))?;
        let response = self
            .call(self.endpoint.http().get(url.clone()), &url)
            .await?;
        read_bytes(url.as_str(), response).await
    }

    /// Writes `data` into file `node` at `offset`; returns the number of bytes written.
    pub async fn write(
        &self,
        node: Node,
        offset: u64,
        data: impl Into<reqwest::Body>,
    ) -> ClientResult<u64> {
        let url = self.url(&[&node.to_string()], &[("offset", offset.to_string())])?;
        let request = self.endpoint.http().post(url.clone()).body(data);
        self.call_json(request, &url).await
    }

    /// Creates child `name` of directory `node`; returns the new node.
    pub async fn create(&self, node: Node, name: &str, create: &Create) -> ClientResult<Node> {
        let mut query = vec![("kind", kind_name(create.kind).to_string())];
        if let Some(content) = &create.content {
            let json = serde_json::to_string(content).map_err(|e| ClientError::Protocol {
                url: self.endpoint.base_url().to_string(),
                reason: format!("cannot encode the content link: {e}"),
            })?;
            query.push(("content", json));
        }
        if let Some(target) = &create.target {
            query.push(("target", target.clone()));
        }
        let url = self.url(&[&node.to_string(), name], &query)?;
        self.call_json(self.endpoint.http().put(url.clone()), &url)
            .await
    }

    /// Sets attributes of `node`; returns its updated info.
    pub async fn set_attributes(&self, node: Node, attributes: &Attributes) -> ClientResult<Info> {
        let url = self.url(&["attributes", &node.to_string()], &[])?;
        let request = self.endpoint.http().post(url.clone()).json(attributes);
        self.call_json(request, &url).await
    }

    /// Truncates or zero-extends file `node` to `size` bytes.
    pub async fn set_size(&self, node: Node, size: u64) -> ClientResult<()> {
        let url = self.url(&["size", &node.to_string()], &[("size", size.to_string())])?;
        self.call(self.endpoint.http().put(url.clone()), &url)
            .await
            .map(drop)
    }

    /// Moves child `name` of `node` to `new_name` in directory `new_parent`.
    pub async fn rename(
        &self,
        node: Node,
        name: &str,
        new_parent: Node,
        new_name: &str,
    ) -> ClientResult<()> {
        let query = [
            ("newParent", new_parent.to_string()),
            ("newName", new_name.to_string()),
        ];
        let url = self.url(&["rename", &node.to_string(), name], &query)?;
        self.call(self.endpoint.http().put(url.clone()), &url)
            .await
            .map(drop)
    }

    /// Adds name `name` in directory `node` for the existing node `target`.
    pub async fn link(&self, node: Node, name: &str, target: Node) -> ClientResult<()> {
        let query = [("node", target.to_string())];
        let url = self.url(&["link", &node.to_string(), name], &query)?;
        self.call(self.endpoint.http().put(url.clone()), &url)
            .await
            .map(drop)
    }

    /// Removes child `name` of directory `node` (a directory must be empty).
    pub async fn remove(&self, node: Node, name: &str) -> ClientResult<()> {
        let url = self.url(&["remove", &node.to_string(), name], &[])?;
        self.call(self.endpoint.http().post(url.clone()), &url)
            .await
            .map(drop)
    }

    /// Writes the pending changes of the mount at `root` out (and into its slot, for
    /// a slot mount), leaving other mounts alone (`PUT /files/sync?root=`). A 409
    /// [`ClientError::Status`] means its slot moved underneath: the mount was
    /// reloaded; 404 means `root` is not a mount root. A server that does not know
    /// the parameter syncs every mount.
    pub async fn sync_root(&self, root: Node) -> ClientResult<()> {
        let url = self.url(&["sync"], &[("root", root.to_string())])?;
        self.call(self.endpoint.http().put(url.clone()), &url)
            .await
            .map(drop)
    }

    /// Writes every pending change out (and into the slots of slot mounts). A 409
    /// [`ClientError::Status`] means a slot moved underneath: that mount was reloaded.
    pub async fn sync(&self) -> ClientResult<()> {
        let url = self.url(&["sync"], &[])?;
        self.call(self.endpoint.http().put(url.clone()), &url)
            .await
            .map(drop)
    }
}

fn offset_length(offset: Option<u64>, length: Option<u64>) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(offset) = offset {
        query.push(("offset", offset.to_string()));
    }
    if let Some(length) = length {
        query.push(("length", length.to_string()));
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn info_wire_form() {
        let info = Info {
            node: 7,
            kind: EntryKind::File,
            modify_time: 5,
            create_time: 4,
            executable: false,
            writable: true,
            etag: "e".into(),
            size: Some(3),
            target: None,
            content_type: Some("text/plain".into()),
        };
        let value = serde_json::to_value(&info).expect("json");
        assert_eq!(
            value,
            json!({"node": 7, "kind": "File", "modifyTime": 5, "createTime": 4,
                   "executable": false, "writable": true, "etag": "e", "size": 3,
                   "type": "text/plain"})
        );
        assert_eq!(serde_json::from_value::<Info>(value).expect("parse"), info);
        // Fractional times (JavaScript) are floored.
        let reference = json!({"node": 1, "kind": "Directory", "modifyTime": 1.9,
                               "createTime": 2, "executable": false, "writable": false,
                               "etag": ""});
        let parsed: Info = serde_json::from_value(reference).expect("parse");
        assert_eq!(parsed.modify_time, 1);
        assert_eq!(parsed.size, None);
    }

    #[test]
    fn attributes_distinguish_null_from_absent() {
        let absent: Attributes = serde_json::from_str("{}").expect("parse");
        assert_eq!(absent.content_type, None);
        let removed: Attributes = serde_json::from_str(r#"{"type":null}"#).expect("parse");
        assert_eq!(removed.content_type, Some(None));
        let set: Attributes =
            serde_json::from_str(r#"{"type":"a/b","modifyTime":3,"executable":true}"#)
                .expect("parse");
        assert_eq!(set.content_type, Some(Some("a/b".into())));
        assert_eq!(set.modify_time, Some(3));
        assert_eq!(set.executable, Some(true));
        assert_eq!(
            serde_json::to_value(&removed).expect("json"),
            json!({"type": null})
        );
        assert_eq!(serde_json::to_value(&absent).expect("json"), json!({}));
    }

    #[test]
    fn urls_encode_names_and_queries() {
        let client = FilesClient::new("http://127.0.0.1:1/").expect("client");
        let url = client
            .url(&["lookup", "3", "a b/c?"], &[("newName", "x&y".into())])
            .expect("url");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/files/lookup/3/a%20b%2Fc%3F?newName=x%26y"
        );
    }
}
