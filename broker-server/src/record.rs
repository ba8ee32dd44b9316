//! What the broker keeps per server: its kind, urls and owner, validated from a
//! [`Registration`] and encoded with a format version for storage.
//!
//! Stored form: one version byte, then redb's own encoding of a tuple.
//! - Version 2 (written now): `(kind: &str, urls: Vec<&str>, owner: Option<&str>)`.
//! - Version 1 (read only): `(kind: &str, urls: Vec<&str>)`; such a record has no
//!   owner. It is rewritten as version 2 when the server registers again.

use invariant_spec::broker::{KINDS, Registration};
use redb::Value;

/// Most urls one registration may carry.
pub const MAX_URLS: usize = 16;
/// Longest url accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// Version byte of the first stored format (kind and urls).
const FORMAT_V1: u8 = 1;
/// Version byte of the current stored format (kind, urls and owner).
const FORMAT_V2: u8 = 2;

/// The redb-encoded body of a version-1 record.
type RecordV1 = (&'static str, Vec<&'static str>);
/// The redb-encoded body of a version-2 record.
type RecordV2 = (&'static str, Vec<&'static str>, Option<&'static str>);

/// A registered server: its role, the urls it answers at (first preferred), and the
/// subject that owns the registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// One of [`KINDS`].
    pub kind: String,
    /// Normalized base urls (http or https, no trailing slash), never empty, no duplicates.
    pub urls: Vec<String>,
    /// The token subject whose registration wrote this record; `None` for a record
    /// written in open mode (no token) or by a broker older than ownership. Only the
    /// owner or a `broker:admin` holder may replace an owned record; anyone with
    /// `broker:register` may claim one without an owner.
    pub owner: Option<String>,
}

/// Why a registration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRegistration {
    /// `kind` is not one of [`KINDS`].
    #[error("unknown kind {0:?}; expected one of: {kinds}", kinds = KINDS.join(", "))]
    UnknownKind(String),
    /// Neither `urls` nor `url` holds a url.
    #[error("a registration needs at least one url (`urls` or `url`)")]
    NoUrl,
    /// More urls than [`MAX_URLS`].
    #[error("a registration holds at most {MAX_URLS} urls, got {0}")]
    TooManyUrls(usize),
    /// A url cannot be used as a server's base url.
    #[error("url {url:?} is not usable: {reason}")]
    BadUrl {
        /// The url as sent (truncated when very long).
        url: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The record is empty.
    #[error("empty record")]
    Empty,
    /// The record was written in a format this version does not know.
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
}

impl Record {
    /// Validates a registration: a known kind and 1..=[`MAX_URLS`] http(s) base urls.
    /// The record has no owner; the caller sets one.
    pub fn from_registration(registration: &Registration) -> Result<Record, InvalidRegistration> {
        let kind = registration.kind.as_str();
        if !KINDS.contains(&kind) {
            return Err(InvalidRegistration::UnknownKind(truncate(kind, 64)));
        }
        let given = registration.all_urls();
        if given.is_empty() {
            return Err(InvalidRegistration::NoUrl);
        }
        if given.len() > MAX_URLS {
            return Err(InvalidRegistration::TooManyUrls(given.len()));
        }
        let mut urls: Vec<String> = Vec::with_capacity(given.len());
        for url in &given {
            let normalized = normalize_url(url).map_err(|reason| InvalidRegistration::BadUrl {
                url: truncate(url, 128),
                reason,
            })?;
            if !urls.contains(&normalized) {
                urls.push(normalized);
            }
        }
        Ok(Record {
            kind: kind.to_string(),
            urls,
            owner: None,
        })
    }

    /// The stored form: version byte (always the current one), then its body.
    pub fn encode(&self) -> Vec<u8> {
        let urls: Vec<&str> = self.urls.iter().map(String::as_str).collect();
        let body = RecordV2::as_bytes(&(self.kind.as_str(), urls, self.owner.as_deref()));
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(FORMAT_V2);
        out.extend_from_slice(&body);
        out
    }

    /// Reads a stored record of any known version.
    pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        match version {
            FORMAT_V1 => {
                let (kind, urls) = RecordV1::from_bytes(body);
                Ok(Record {
                    kind: kind.to_string(),
                    urls: urls.into_iter().map(str::to_string).collect(),
                    owner: None,
                })
            }
            FORMAT_V2 => {
                let (kind, urls, owner) = RecordV2::from_bytes(body);
                Ok(Record {
                    kind: kind.to_string(),
                    urls: urls.into_iter().map(str::to_string).collect(),
                    owner: owner.map(str::to_string),
                })
            }
            other => Err(DecodeError::UnknownVersion(other)),
        }
    }
}

/// The base-url form clients use (see `invariant_spec::http::Endpoint`): trimmed, no
/// trailing slash, http or https with a host, no query or fragment.
fn normalize_url(url: &str) -> Result<String, &'static str> {
    if url.len() > MAX_URL_LEN {
        return Err("longer than 2048 bytes");
    }
    let trimmed = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|_| "not an absolute url")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("scheme must be http or https");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("a base url has no query or fragment");
    }
    Ok(trimmed.to_string())
}

fn truncate(text: &str, max: usize) -> String {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use invariant_spec::Id;

    fn registration(urls: &[&str], url: Option<&str>, kind: &str) -> Registration {
        Registration {
            id: Id::of_content(b"server"),
            urls: urls.iter().map(|u| u.to_string()).collect(),
            url: url.map(str::to_string),
            kind: kind.to_string(),
        }
    }

    #[test]
    fn accepts_both_url_forms_and_normalizes() {
        let record = Record::from_registration(&registration(
            &["http://127.0.0.1:3001/", " https://h.example:8443/base "],
            Some("http://127.0.0.1:3001"),
            "storage",
        ))
        .expect("valid");
        assert_eq!(record.kind, "storage");
        assert_eq!(
            record.urls,
            vec!["http://127.0.0.1:3001", "https://h.example:8443/base"]
        );
        let single = Record::from_registration(&registration(&[], Some("http://a:1"), "slots"))
            .expect("single url form");
        assert_eq!(single.urls, vec!["http://a:1"]);
    }

    #[test]
    fn refuses_bad_registrations() {
        let cases = [
            (registration(&["http://a"], None, "bogus"), "unknown kind"),
            (registration(&["http://a"], None, "Storage"), "unknown kind"),
            (registration(&[], None, "storage"), "at least one url"),
            (registration(&["ftp://a"], None, "storage"), "scheme"),
            (registration(&["not a url"], None, "storage"), "absolute"),
            (registration(&["http://a/?q=1"], None, "storage"), "query"),
            (registration(&["http://a/#f"], None, "storage"), "query"),
            (
                registration(&["http://a", "mailto:x@y"], None, "storage"),
                "scheme",
            ),
        ];
        for (reg, expected) in cases {
            let err = Record::from_registration(&reg).expect_err("must be refused");
            assert!(err.to_string().contains(expected), "{reg:?}: {err}");
        }
        let many: Vec<String> = (0..=MAX_URLS).map(|i| format!("http://h{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            Record::from_registration(&registration(&many, None, "storage")),
            Err(InvalidRegistration::TooManyUrls(MAX_URLS + 1))
        );
        let long = format!("http://h/{}", "x".repeat(MAX_URL_LEN));
        assert!(Record::from_registration(&registration(&[&long], None, "storage")).is_err());
    }

    #[test]
    fn every_kind_is_accepted() {
        for kind in KINDS {
            assert!(Record::from_registration(&registration(&["http://a"], None, kind)).is_ok());
        }
    }

    #[test]
    fn encoding_round_trips_and_is_versioned() {
        for owner in [None, Some("storage-1".to_string()), Some(String::new())] {
            let record = Record {
                kind: "find".to_string(),
                urls: vec!["http://a:1".to_string(), "https://b".to_string()],
                owner,
            };
            let bytes = record.encode();
            assert_eq!(bytes[0], FORMAT_V2);
            assert_eq!(Record::decode(&bytes), Ok(record));
        }
        assert_eq!(Record::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            Record::decode(&[3, 0, 0]),
            Err(DecodeError::UnknownVersion(3))
        );
    }

    #[test]
    fn version_1_records_decode_without_an_owner() {
        // Written exactly as the version-1 encoder did.
        let body = RecordV1::as_bytes(&("storage", vec!["http://a:1", "https://b"]));
        let mut bytes = vec![FORMAT_V1];
        bytes.extend_from_slice(&body);
        assert_eq!(
            Record::decode(&bytes),
            Ok(Record {
                kind: "storage".to_string(),
                urls: vec!["http://a:1".to_string(), "https://b".to_string()],
                owner: None,
            })
        );
    }
}
