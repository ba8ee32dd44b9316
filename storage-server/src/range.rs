//! `Range`, `If-Range` and `If-None-Match` for immutable blobs (RFC 9110 §13–14).
//!
//! Only single byte ranges are honoured; a multi-range or malformed `Range` is ignored
//! (the whole blob is served, as the RFC allows).

use axum::http::HeaderMap;
use axum::http::header::{IF_NONE_MATCH, IF_RANGE, RANGE};
use invariant_spec::Id;

/// What to send for a GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The whole blob (200).
    Full,
    /// Bytes `start..=end` (206).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// The range lies outside the blob (416).
    Unsatisfiable,
}

/// The strong ETag of a blob: its quoted address.
pub fn etag(id: &Id) -> String {
    format!("\"{id}\"")
}

/// True when `If-None-Match` names this blob's ETag (or `*`), weak or strong.
pub fn not_modified(headers: &HeaderMap, id: &Id) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',').any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag_names(tag, id)
            })
        })
    })
}

fn tag_names(tag: &str, id: &Id) -> bool {
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    let inner = tag.trim_matches('"');
    Id::parse(inner).is_ok_and(|t| t == *id)
}

/// One byte range a request asks for, before it is matched against a blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=A-B`: bytes `first..=last` (`last` may lie past the end).
    Between {
        /// First byte.
        first: u64,
        /// Last byte, inclusive.
        last: u64,
    },
    /// `bytes=A-`: from byte `A` to the end.
    From(u64),
    /// `bytes=-N`: the last `N` bytes.
    Last(u64),
}

impl ByteRange {
    /// Parses one `Range` header value; `None` for a value not honoured (malformed,
    /// multi-range, another unit), which means the whole blob is sent.
    pub fn parse(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.trim().split_once('-')?;
        let (first, last) = (first.trim(), last.trim());
        let number = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        match (first.is_empty(), last.is_empty()) {
            (true, false) => number(last).map(ByteRange::Last),
            (false, true) => number(first).map(ByteRange::From),
            (false, false) => match (number(first), number(last)) {
                (Some(first), Some(last)) if first <= last => {
                    Some(ByteRange::Between { first, last })
                }
                _ => None,
            },
            (true, true) => None,
        }
    }

    /// The part of a blob of `len` bytes this range selects.
    pub fn select(self, len: u64) -> Selection {
        match self {
            ByteRange::Last(0) => Selection::Unsatisfiable,
            ByteRange::Last(_) if len == 0 => Selection::Unsatisfiable,
            ByteRange::Last(n) => Selection::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            ByteRange::From(first) | ByteRange::Between { first, .. } if first >= len => {
                Selection::Unsatisfiable
            }
            ByteRange::From(first) => Selection::Partial {
                start: first,
                end: len - 1,
            },
            ByteRange::Between { first, last } => Selection::Partial {
                start: first,
                end: last.min(len - 1),
            },
        }
    }
}

/// The byte range a GET asks for: `None` without a `Range` header, with one not
/// honoured, or with an `If-Range` other than this blob's strong ETag.
pub fn requested(headers: &HeaderMap, id: &Id) -> Option<ByteRange> {
    let range = headers.get(RANGE).and_then(|v| v.to_str().ok())?;
    if let Some(if_range) = headers.get(IF_RANGE) {
        // Only our strong ETag validates; a date or another tag means "send it all".
        let matches = if_range
            .to_str()
            .is_ok_and(|t| !t.trim().starts_with("W/") && tag_names(t.trim(), id));
        if !matches {
            return None;
        }
    }
    ByteRange::parse(range)
}

/// Chooses what part of a blob of `len` bytes to send.
pub fn select(headers: &HeaderMap, id: &Id, len: u64) -> Selection {
    requested(headers, id).map_or(Selection::Full, |range| range.select(len))
}

/// Interprets one `Range` header value against a blob of `len` bytes.
pub fn parse_range(value: &str, len: u64) -> Selection {
    ByteRange::parse(value).map_or(Selection::Full, |range| range.select(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn byte_ranges() {
        use Selection::*;
        assert_eq!(parse_range("bytes=0-0", 10), Partial { start: 0, end: 0 });
        assert_eq!(parse_range("bytes=2-5", 10), Partial { start: 2, end: 5 });
        assert_eq!(parse_range("bytes=2-500", 10), Partial { start: 2, end: 9 });
        assert_eq!(parse_range("bytes=9-", 10), Partial { start: 9, end: 9 });
        assert_eq!(parse_range("bytes=-3", 10), Partial { start: 7, end: 9 });
        assert_eq!(parse_range("bytes=-30", 10), Partial { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-1", 0), Unsatisfiable);
        // Ignored: malformed, reversed, multi-range, other units.
        assert_eq!(parse_range("bytes=5-2", 10), Full);
        assert_eq!(parse_range("bytes=a-b", 10), Full);
        assert_eq!(parse_range("bytes=-", 10), Full);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Full);
        assert_eq!(parse_range("items=0-1", 10), Full);
        assert_eq!(parse_range("bytes=+1-2", 10), Full);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 10), Full);
    }

    #[test]
    fn if_none_match_forms() {
        let id = Id::of_content(b"x");
        let other = Id::of_content(b"y");
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, &id));
        h.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(&etag(&id)).expect("hv"),
        );
        assert!(not_modified(&h, &id));
        assert!(!not_modified(&h, &other));
        let list = format!("{}, W/{}", etag(&other), etag(&id).to_uppercase());
        h.insert(IF_NONE_MATCH, HeaderValue::from_str(&list).expect("hv"));
        assert!(not_modified(&h, &id));
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, &other));
    }

    #[test]
    fn if_range_with_another_tag_sends_everything() {
        let id = Id::of_content(b"x");
        let mut h = HeaderMap::new();
        h.insert(RANGE, HeaderValue::from_static("bytes=0-1"));
        assert_eq!(select(&h, &id, 10), Selection::Partial { start: 0, end: 1 });
        h.insert(IF_RANGE, HeaderValue::from_str(&etag(&id)).expect("hv"));
        assert_eq!(select(&h, &id, 10), Selection::Partial { start: 0, end: 1 });
        h.insert(IF_RANGE, HeaderValue::from_static("\"other\""));
        assert_eq!(select(&h, &id, 10), Selection::Full);
    }
}
