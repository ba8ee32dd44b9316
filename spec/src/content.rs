//! Content links, their transforms, block lists and directory entries: the wire form
//! of file content shared by the files server, the CLI and the content crate.
//!
//! A [`ContentLink`] names a blob by address and lists [`Transform`]s a reader applies
//! in order to the blob's bytes: `Blocks` (the bytes are a JSON array of [`Block`]s
//! whose contents are concatenated), `Decipher` (`aes-256-cbc`, PKCS#7 padding, `key`
//! and `iv` in hex) and `Decompress` (`inflate` = zlib stream, `brotli`, `unzip` =
//! gzip). `expected` is the SHA-256 of the final bytes.
//!
//! Transforms of unknown kind survive a parse/serialize round trip as
//! [`Transform::Unknown`] so tools can pass links through; readers reject them.
//!
//! A directory blob is a JSON array of [`Entry`]. Entry `mode` is a string. The
//! reference form is letters: `r` = read-only, `x` = executable (absent: `rw`
//! for files, `rwx` for directories), which maps onto POSIX permission bits as
//! 0o644 plus 0o111 for `x` minus 0o222 for `r`. This project also reads and
//! emits octal digits (`"600"`, `"4755"`) for bits the letters cannot express,
//! and emits letters whenever they are exact ([`Entry::mode_for`]).

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Id;

/// Transform kind `Blocks`.
pub const KIND_BLOCKS: &str = "Blocks";
/// Transform kind `Decipher`.
pub const KIND_DECIPHER: &str = "Decipher";
/// Transform kind `Decompress`.
pub const KIND_DECOMPRESS: &str = "Decompress";
/// `Decipher` algorithm: AES-256 in CBC mode with PKCS#7 padding.
pub const AES_256_CBC: &str = "aes-256-cbc";
/// `Decompress` algorithm: a zlib (RFC 1950) stream.
pub const INFLATE: &str = "inflate";
/// `Decompress` algorithm: a brotli stream.
pub const BROTLI: &str = "brotli";
/// `Decompress` algorithm: a gzip stream (one or more members).
pub const UNZIP: &str = "unzip";

/// Permissions of a file entry without `mode`.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Permissions of a directory entry without `mode`.
pub const DEFAULT_DIRECTORY_MODE: u32 = 0o755;
/// Permissions of a symbolic link (POSIX ignores them).
pub const SYMBOLIC_LINK_MODE: u32 = 0o777;

/// A reference to content: a blob address plus how to turn its bytes into the content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentLink {
    /// The blob address (or the slot id when `slot` is true).
    pub address: Id,
    /// `address` is a slot whose current value is the blob address.
    #[serde(default, skip_serializing_if = "is_false")]
    pub slot: bool,
    /// Applied in order when reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<Transform>,
    /// SHA-256 of the content after all transforms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Id>,
    /// A storage server id known to hold the blob (a hint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<Id>,
    /// An opaque version tag for caches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl ContentLink {
    /// A link to a blob whose bytes are the content.
    pub fn new(address: Id) -> ContentLink {
        ContentLink {
            address,
            slot: false,
            transforms: Vec::new(),
            expected: None,
            primary: None,
            etag: None,
        }
    }

    /// The tag caches should key on: `etag`, else `expected`, else the address.
    pub fn etag_or_address(&self) -> String {
        match (&self.etag, &self.expected) {
            (Some(etag), _) => etag.clone(),
            (None, Some(expected)) => expected.to_string(),
            (None, None) => self.address.to_string(),
        }
    }
}

/// One step of turning a blob's bytes into content.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transform {
    /// The bytes are a JSON array of [`Block`]; the content is their concatenation.
    Blocks,
    /// Decrypt the bytes.
    Decipher(Decipher),
    /// Decompress the bytes.
    Decompress(Decompress),
    /// A transform this version does not know, kept verbatim.
    Unknown(serde_json::Value),
}

/// Fields of a `Decipher` transform.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decipher {
    /// Cipher name, e.g. [`AES_256_CBC`].
    pub algorithm: String,
    /// The key in hex.
    pub key: String,
    /// The initialization vector in hex.
    pub iv: String,
}

impl fmt::Debug for Decipher {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decipher")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .field("iv", &self.iv)
            .finish()
    }
}

/// Fields of a `Decompress` transform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decompress {
    /// [`INFLATE`], [`BROTLI`] or [`UNZIP`].
    pub algorithm: String,
}

impl Transform {
    /// An `aes-256-cbc` decipher transform.
    pub fn aes_256_cbc(key: &[u8; 32], iv: &[u8; 16]) -> Transform {
        Transform::Decipher(Decipher {
            algorithm: AES_256_CBC.to_string(),
            key: hex::encode(key),
            iv: hex::encode(iv),
        })
    }

    /// A decompress transform with `algorithm`.
    pub fn decompress(algorithm: &str) -> Transform {
        Transform::Decompress(Decompress {
            algorithm: algorithm.to_string(),
        })
    }

    /// The `kind` field, if there is one.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Transform::Blocks => Some(KIND_BLOCKS),
            Transform::Decipher(_) => Some(KIND_DECIPHER),
            Transform::Decompress(_) => Some(KIND_DECOMPRESS),
            Transform::Unknown(value) => value.get("kind").and_then(|k| k.as_str()),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "kind")]
enum KnownRef<'a> {
    Blocks,
    Decipher(&'a Decipher),
    Decompress(&'a Decompress),
}

impl Serialize for Transform {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Transform::Blocks => KnownRef::Blocks.serialize(serializer),
            Transform::Decipher(d) => KnownRef::Decipher(d).serialize(serializer),
            Transform::Decompress(d) => KnownRef::Decompress(d).serialize(serializer),
            Transform::Unknown(value) => value.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Transform {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Transform, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if !value.is_object() {
            return Err(D::Error::custom("a transform is a JSON object"));
        }
        let kind = value.get("kind").and_then(|k| k.as_str());
        match kind {
            Some(KIND_BLOCKS) => Ok(Transform::Blocks),
            Some(KIND_DECIPHER) => serde_json::from_value(value)
                .map(Transform::Decipher)
                .map_err(|e| D::Error::custom(format!("Decipher transform: {e}"))),
            Some(KIND_DECOMPRESS) => serde_json::from_value(value)
                .map(Transform::Decompress)
                .map_err(|e| D::Error::custom(format!("Decompress transform: {e}"))),
            _ => Ok(Transform::Unknown(value)),
        }
    }
}

/// One entry of a block list: a link to a piece of the content and that piece's size
/// (in bytes, after the link's transforms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The piece.
    pub content: ContentLink,
    /// Length of the piece's content.
    pub size: u64,
}

/// What a directory entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file; `content` and `size` describe it.
    File,
    /// A directory; `content` links to its directory blob.
    Directory,
    /// A symbolic link; `target` is its target.
    SymbolicLink,
}

/// One entry of a directory blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// What the entry is.
    pub kind: EntryKind,
    /// The name within its directory (see [`is_valid_name`]).
    pub name: String,
    /// The content (files and directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentLink>,
    /// Content length in bytes (files: the file; directories: the directory blob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// HTTP content type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Permissions (see the module docs); numbers are read as permission bits.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "mode_from_json"
    )]
    pub mode: Option<String>,
    /// Creation time, ms since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "time_from_json"
    )]
    pub create_time: Option<i64>,
    /// Modification time, ms since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "time_from_json"
    )]
    pub modify_time: Option<i64>,
    /// Symbolic link target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Why an entry's `mode` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mode {0:?} is neither letters from \"rwx\" nor octal permission bits")]
pub struct ModeError(pub String);

impl Entry {
    /// An entry of `kind` named `name` with no other fields.
    pub fn new(kind: EntryKind, name: impl Into<String>) -> Entry {
        Entry {
            kind,
            name: name.into(),
            content: None,
            size: None,
            content_type: None,
            mode: None,
            create_time: None,
            modify_time: None,
            target: None,
        }
    }

    /// The POSIX permission bits `mode` stands for (defaults by kind when absent).
    pub fn permissions(&self) -> Result<u32, ModeError> {
        let Some(mode) = self.mode.as_deref() else {
            return Ok(match self.kind {
                EntryKind::File => DEFAULT_FILE_MODE,
                EntryKind::Directory => DEFAULT_DIRECTORY_MODE,
                EntryKind::SymbolicLink => SYMBOLIC_LINK_MODE,
            });
        };
        let invalid = || ModeError(mode.to_string());
        let digits = mode.strip_prefix("0o").unwrap_or(mode);
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let bits = u32::from_str_radix(digits, 8).map_err(|_| invalid())?;
            return if bits <= 0o7777 {
                Ok(bits)
            } else {
                Err(invalid())
            };
        }
        if !mode.bytes().all(|b| matches!(b, b'r' | b'w' | b'x')) {
            return Err(invalid());
        }
        let mut bits = DEFAULT_FILE_MODE;
        if mode.contains('x') {
            bits |= 0o111;
        }
        if mode.contains('r') {
            bits &= !0o222;
        }
        Ok(bits)
    }

    /// The `mode` to emit for permission `bits`: `None` for the kind's default, letters
    /// when they are exact, else octal digits.
    pub fn mode_for(kind: EntryKind, bits: u32) -> Option<String> {
        let bits = bits & 0o7777;
        let default = match kind {
            EntryKind::File => DEFAULT_FILE_MODE,
            EntryKind::Directory => DEFAULT_DIRECTORY_MODE,
            EntryKind::SymbolicLink => return None,
        };
        if bits == default {
            return None;
        }
        let letters = match bits {
            0o644 => "",
            0o755 => "x",
            0o444 => "r",
            0o555 => "rx",
            _ => return Some(format!("{bits:o}")),
        };
        // An empty mode would read as the default of the kind, not as 0o644.
        if letters.is_empty() {
            Some(format!("{bits:o}"))
        } else {
            Some(letters.to_string())
        }
    }
}

/// Whether `name` may name a directory entry: not empty, not `.` or `..`, and free
/// of `/` and NUL. Readers that write entries to a file system must check this.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn mode_from_json<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(bits) if bits <= 0o7777 => Ok(Some(format!("{bits:o}"))),
            _ => Err(D::Error::custom(format!("mode {n} is not permission bits"))),
        },
        Some(other) => Err(D::Error::custom(format!(
            "mode must be a string, got {other}"
        ))),
    }
}

fn time_from_json<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    match Option::<serde_json::Number>::deserialize(deserializer)? {
        None => Ok(None),
        Some(n) => {
            if let Some(ms) = n.as_i64() {
                Ok(Some(ms))
            } else {
                match n.as_f64() {
                    // Fractional milliseconds (JavaScript `mtimeMs`) are floored.
                    Some(f) if f.is_finite() && f.abs() < 9.0e15 => Ok(Some(f.floor() as i64)),
                    _ => Err(D::Error::custom(format!("time {n} is out of range"))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn link_round_trips_in_wire_form() {
        let address = Id::of_content(b"x");
        let mut link = ContentLink::new(address);
        assert_eq!(
            serde_json::to_value(&link).expect("json"),
            json!({"address": address.to_string()})
        );
        link.transforms = vec![
            Transform::aes_256_cbc(&[1; 32], &[2; 16]),
            Transform::decompress(BROTLI),
            Transform::Blocks,
        ];
        link.expected = Some(address);
        let value = serde_json::to_value(&link).expect("json");
        assert_eq!(value["transforms"][0]["kind"], "Decipher");
        assert_eq!(value["transforms"][0]["algorithm"], "aes-256-cbc");
        assert_eq!(value["transforms"][0]["key"], "01".repeat(32));
        assert_eq!(value["transforms"][0]["iv"], "02".repeat(16));
        assert_eq!(
            value["transforms"][1],
            json!({"kind": "Decompress", "algorithm": "brotli"})
        );
        assert_eq!(value["transforms"][2], json!({"kind": "Blocks"}));
        assert!(value.get("slot").is_none());
        let back: ContentLink = serde_json::from_value(value).expect("parse");
        assert_eq!(back, link);
    }

    #[test]
    fn unknown_transforms_are_kept_and_named() {
        let text = r#"{"address":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "transforms":[{"kind":"Rot13","shift":13}],"slot":false}"#;
        let link: ContentLink = serde_json::from_str(text).expect("parse");
        assert_eq!(link.transforms[0].kind(), Some("Rot13"));
        let value = serde_json::to_value(&link).expect("json");
        assert_eq!(value["transforms"][0], json!({"kind":"Rot13","shift":13}));
        // A known kind with missing fields is malformed, not unknown.
        let bad = r#"{"address":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "transforms":[{"kind":"Decipher","algorithm":"aes-256-cbc"}]}"#;
        let err = serde_json::from_str::<ContentLink>(bad).expect_err("missing key");
        assert!(err.to_string().contains("Decipher"), "{err}");
    }

    #[test]
    fn decipher_debug_hides_the_key() {
        let t = Transform::aes_256_cbc(&[0xab; 32], &[0; 16]);
        assert!(!format!("{t:?}").contains("abab"));
    }

    #[test]
    fn entries_accept_reference_and_numeric_forms() {
        let json = json!([
            {"kind":"File","name":"a","content":{"address": Id::of_content(b"a")},
             "size":1,"mode":"x","createTime":1.5,"modifyTime":1700000000123_i64},
            {"kind":"Directory","name":"d","content":{"address": Id::of_content(b"d")}},
            {"kind":"SymbolicLink","name":"l","target":"a"},
            {"kind":"File","name":"n","content":{"address": Id::of_content(b"n")},"mode":420}
        ]);
        let entries: Vec<Entry> = serde_json::from_value(json).expect("parse");
        assert_eq!(entries[0].permissions(), Ok(0o755));
        assert_eq!(entries[0].create_time, Some(1));
        assert_eq!(entries[0].modify_time, Some(1_700_000_000_123));
        assert_eq!(entries[1].permissions(), Ok(0o755));
        assert_eq!(entries[2].target.as_deref(), Some("a"));
        assert_eq!(entries[3].mode.as_deref(), Some("644"));
        let out = serde_json::to_value(&entries[2]).expect("json");
        assert_eq!(out, json!({"kind":"SymbolicLink","name":"l","target":"a"}));
    }

    #[test]
    fn modes_map_both_ways() {
        let entry = |kind, mode: Option<&str>| Entry {
            mode: mode.map(str::to_string),
            ..Entry::new(kind, "x")
        };
        for (kind, bits) in [
            (EntryKind::File, 0o644),
            (EntryKind::File, 0o755),
            (EntryKind::File, 0o444),
            (EntryKind::File, 0o555),
            (EntryKind::File, 0o600),
            (EntryKind::File, 0o4755),
            (EntryKind::Directory, 0o755),
            (EntryKind::Directory, 0o644),
            (EntryKind::Directory, 0o700),
        ] {
            let mode = Entry::mode_for(kind, bits);
            assert_eq!(
                entry(kind, mode.as_deref()).permissions(),
                Ok(bits),
                "{mode:?}"
            );
        }
        assert_eq!(
            Entry::mode_for(EntryKind::File, 0o755).as_deref(),
            Some("x")
        );
        assert_eq!(Entry::mode_for(EntryKind::File, 0o644), None);
        assert_eq!(
            Entry::mode_for(EntryKind::File, 0o600).as_deref(),
            Some("600")
        );
        assert_eq!(entry(EntryKind::File, Some("r")).permissions(), Ok(0o444));
        assert_eq!(
            entry(EntryKind::File, Some("0o750")).permissions(),
            Ok(0o750)
        );
        assert!(entry(EntryKind::File, Some("rwq")).permissions().is_err());
        assert!(entry(EntryKind::File, Some("99")).permissions().is_err());
        assert!(entry(EntryKind::File, Some("17777")).permissions().is_err());
    }

    #[test]
    fn names_that_escape_are_invalid() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        for good in ["a", "..a", "a..", ".hidden", "spaces ok", "ü"] {
            assert!(is_valid_name(good), "{good:?}");
        }
    }
}
