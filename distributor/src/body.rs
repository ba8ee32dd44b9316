//! Request bodies: lists of 64-hex ids, parsed incrementally as the bytes arrive.
//!
//! Accepted forms (decided by the first non-blank byte):
//! - a JSON array of strings: `["ab..", "CD.."]` (white space allowed between tokens;
//!   escape sequences are refused, no id needs one);
//! - ids separated by any run of white space and/or commas, each optionally in double
//!   quotes (`ab.. cd..`, `ab..,cd..`, one per line, `"ab.." "cd.."`).
//!
//! An empty body is an empty list. Only the parsed 32-byte ids are kept, never the body
//! text, so a body of millions of ids costs 32 bytes per id.

use axum::body::Body;
use futures_util::StreamExt;
use invariant_runtime::ApiError;
use invariant_spec::{Id, IdParseError};

/// Why a body is not a list of ids.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// A token is not a 64-hex id.
    #[error("id #{index} (at byte {offset}) is invalid: {reason}")]
    BadId {
        /// Zero-based position of the id in the list.
        index: usize,
        /// Byte offset where the token starts.
        offset: u64,
        /// What is wrong with it.
        reason: IdParseError,
    },
    /// A byte that cannot appear here.
    #[error("unexpected {found} at byte {offset}: expected {expected}")]
    Unexpected {
        /// Byte offset of the offending byte.
        offset: u64,
        /// The offending byte, described.
        found: String,
        /// What the parser expected.
        expected: &'static str,
    },
    /// The body ended inside a JSON array or a quoted id.
    #[error("body ends early: {0}")]
    Truncated(&'static str),
    /// More ids than one request may carry.
    #[error("more than {0} ids in one request")]
    TooMany(usize),
    /// The body could not be read.
    #[error("could not read body: {0}")]
    Read(String),
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        match e {
            BodyError::TooMany(_) => ApiError::too_large(e.to_string()),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first non-blank byte.
    Start,
    /// After `[` (a string or `]` may follow).
    ArrayOpen,
    /// After `,` in an array (a string must follow).
    ArrayNeedValue,
    /// Inside a string in an array.
    ArrayString,
    /// After a string in an array (`,` or `]` must follow).
    ArrayAfterValue,
    /// After the closing `]` (only white space may follow).
    ArrayDone,
    /// Between ids of the separated form.
    ListGap,
    /// Inside an unquoted id.
    ListBare,
    /// Inside a quoted id.
    ListQuoted,
    /// After a quoted id (a separator must follow).
    ListAfterQuoted,
}

/// Incremental parser: [`feed`](IdListParser::feed) chunks, then
/// [`finish`](IdListParser::finish).
#[derive(Debug)]
pub struct IdListParser {
    state: State,
    token: [u8; Id::HEX_LEN],
    token_len: usize,
    /// Set when a token exceeded 64 bytes (its length is still counted).
    token_overflow: usize,
    token_start: u64,
    offset: u64,
    ids: Vec<Id>,
    max: usize,
}

fn is_blank(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn describe(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("{:?}", char::from(byte))
    } else {
        format!("byte 0x{byte:02x}")
    }
}

impl IdListParser {
    /// A parser accepting at most `max` ids.
    pub fn new(max: usize) -> IdListParser {
        IdListParser {
            state: State::Start,
            token: [0; Id::HEX_LEN],
            token_len: 0,
            token_overflow: 0,
            token_start: 0,
            offset: 0,
            ids: Vec::new(),
            max,
        }
    }

    /// Parses the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), BodyError> {
        for &byte in chunk {
            self.step(byte)?;
            self.offset += 1;
        }
        Ok(())
    }

    /// The ids, once the whole body has been fed.
    pub fn finish(mut self) -> Result<Vec<Id>, BodyError> {
        match self.state {
            State::Start | State::ListGap | State::ListAfterQuoted | State::ArrayDone => {}
            State::ListBare => self.end_token()?,
            State::ListQuoted => return Err(BodyError::Truncated("a quoted id is not closed")),
            State::ArrayOpen
            | State::ArrayNeedValue
            | State::ArrayString
            | State::ArrayAfterValue => {
                return Err(BodyError::Truncated("the JSON array is not closed"));
            }
        }
        Ok(self.ids)
    }

    fn unexpected(&self, byte: u8, expected: &'static str) -> BodyError {
        BodyError::Unexpected {
            offset: self.offset,
            found: describe(byte),
            expected,
        }
    }

    fn begin_token(&mut self, start: u64) {
        self.token_len = 0;
        self.token_overflow = 0;
        self.token_start = start;
    }

    fn push_token(&mut self, byte: u8) {
        if self.token_len < Id::HEX_LEN {
            self.token[self.token_len] = byte;
            self.token_len += 1;
        } else {
            self.token_overflow += 1;
        }
    }

    fn end_token(&mut self) -> Result<(), BodyError> {
        let bad = |reason| BodyError::BadId {
            index: self.ids.len(),
            offset: self.token_start,
            reason,
        };
        if self.token_overflow > 0 || self.token_len != Id::HEX_LEN {
            return Err(bad(IdParseError::WrongLength(
                self.token_len + self.token_overflow,
            )));
        }
        let id = match std::str::from_utf8(&self.token) {
            Ok(text) => Id::parse(text).map_err(bad)?,
            Err(e) => {
                let position = e.valid_up_to();
                return Err(bad(IdParseError::NotHex {
                    position,
                    found: char::REPLACEMENT_CHARACTER,
                }));
            }
        };
        if self.ids.len() >= self.max {
            return Err(BodyError::TooMany(self.max));
        }
        self.ids.push(id);
        Ok(())
    }

    fn step(&mut self, byte: u8) -> Result<(), BodyError> {
        match self.state {
            State::Start => match byte {
                b if is_blank(b) => {}
                b'[' => self.state = State::ArrayOpen,
                b',' => self.state = State::ListGap,
                b'"' => {
                    self.begin_token(self.offset + 1);
                    self.state = State::ListQuoted;
                }
                _ => {
                    self.begin_token(self.offset);
                    self.push_token(byte);
                    self.state = State::ListBare;
                }
            },
            State::ArrayOpen | State::ArrayNeedValue => match byte {
                b if is_blank(b) => {}
                b'"' => {
                    self.begin_token(self.offset + 1);
                    self.state = State::ArrayString;
                }
                b']' if self.state == State::ArrayOpen => self.state = State::ArrayDone,
                _ => return Err(self.unexpected(byte, "a quoted id")),
            },
            State::ArrayString => match byte {
                b'"' => {
                    self.end_token()?;
                    self.state = State::ArrayAfterValue;
                }
                b'\\' => return Err(self.unexpected(byte, "hex digits (no escapes in ids)")),
                _ => self.push_token(byte),
            },
            State::ArrayAfterValue => match byte {
                b if is_blank(b) => {}
                b',' => self.state = State::ArrayNeedValue,
                b']' => self.state = State::ArrayDone,
                _ => return Err(self.unexpected(byte, "',' or ']'")),
            },
            State::ArrayDone => {
                if !is_blank(byte) {
                    return Err(self.unexpected(byte, "nothing after the JSON array"));
                }
            }
            State::ListGap => match byte {
                b if is_blank(b) || b == b',' => {}
                b'"' => {
                    self.begin_token(self.offset + 1);
                    self.state = State::ListQuoted;
                }
                _ => {
                    self.begin_token(self.offset);
                    self.push_token(byte);
                    self.state = State::ListBare;
                }
            },
            State::ListBare => match byte {
                b if is_blank(b) || b == b',' => {
                    self.end_token()?;
                    self.state = State::ListGap;
                }
                b'"' | b'[' | b']' => {
                    return Err(self.unexpected(byte, "hex digits, white space or ','"));
                }
                _ => self.push_token(byte),
            },
            State::ListQuoted => match byte {
                b'"' => {
                    self.end_token()?;
                    self.state = State::ListAfterQuoted;
                }
                _ => self.push_token(byte),
            },
            State::ListAfterQuoted => match byte {
                b if is_blank(b) || b == b',' => self.state = State::ListGap,
                _ => return Err(self.unexpected(byte, "white space or ',' after a quoted id")),
            },
        }
        Ok(())
    }
}

/// Reads a whole id-list body, parsing each chunk as it arrives. After a parse error
/// the rest of the body (up to [`DRAIN_LIMIT`] bytes) is read and dropped so the client
/// gets to read the 4xx answer instead of a reset connection.
pub async fn read_ids(body: Body, max: usize) -> Result<Vec<Id>, BodyError> {
    let mut stream = body.into_data_stream();
    let mut parser = IdListParser::new(max);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Err(e) = parser.feed(&chunk) {
            drain(stream).await;
            return Err(e);
        }
    }
    parser.finish()
}

/// Most bytes read and dropped after a malformed body.
pub const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

async fn drain(mut stream: axum::body::BodyDataStream) {
    let limit = async {
        let mut seen: u64 = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), limit).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn ids(n: u8) -> Vec<Id> {
        (0..n).map(|i| Id::of_content(&[i])).collect()
    }

    fn parse(text: &str) -> Result<Vec<Id>, BodyError> {
        let mut parser = IdListParser::new(usize::MAX);
        parser.feed(text.as_bytes())?;
        parser.finish()
    }

    #[test]
    fn every_form_parses_to_the_same_ids() {
        let want = ids(3);
        let [a, b, c] = [want[0], want[1], want[2]].map(|id| id.to_string());
        let forms = [
            format!("[\"{a}\",\"{b}\",\"{c}\"]"),
            format!(" [ \"{a}\" ,\n\"{b}\",\t\"{}\" ]\n", c.to_uppercase()),
            format!("{a} {b}\n{c}"),
            format!("{a},{b},{c},"),
            format!(",{a}, ,{b}\r\n,{c}\n"),
            format!("\"{a}\" \"{b}\",\"{c}\""),
        ];
        for form in forms {
            assert_eq!(parse(&form), Ok(want.clone()), "{form:?}");
        }
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse(" \n"), Ok(vec![]));
        assert_eq!(parse("[]"), Ok(vec![]));
        assert_eq!(parse(" [ ] "), Ok(vec![]));
    }

    #[test]
    fn malformed_bodies_name_the_problem() {
        let a = ids(1)[0].to_string();
        let cases: Vec<(String, &str)> = vec![
            (format!("[\"{a}\""), "not closed"),
            (format!("[\"{a}\","), "not closed"),
            ("[".to_string(), "not closed"),
            (format!("[\"{}", &a[..10]), "not closed"),
            (format!("[\"{a}\",]"), "expected a quoted id"),
            (format!("[\"{a}\"] x"), "nothing after"),
            (format!("[\"{a}\" \"{a}\"]"), "expected ',' or ']'"),
            (format!("[{a}]"), "expected a quoted id"),
            ("[\"\\u0030\"]".to_string(), "no escapes"),
            (a[..63].to_string(), "got 63 characters"),
            (format!("{a}0"), "got 65 characters"),
            (format!("{}g", &a[..63]), "found 'g' at position 63"),
            (format!("\"{a}"), "quoted id is not closed"),
            (format!("\"{a}\"x"), "after a quoted id"),
            (format!("{a}]"), "hex digits"),
        ];
        for (body, expect) in cases {
            let err = parse(&body).expect_err(&body);
            assert!(
                err.to_string().contains(expect),
                "{body:?}: {err} (wanted {expect:?})"
            );
        }
        // Non-UTF-8 and non-ASCII bytes are refused, not mangled.
        let mut parser = IdListParser::new(10);
        let mut bytes = a.as_bytes()[..63].to_vec();
        bytes.push(0xff);
        parser.feed(&bytes).expect("no separator yet");
        assert!(matches!(parser.finish(), Err(BodyError::BadId { .. })));
        assert!(parse(&format!("{}é", &a[..62])).is_err());
    }

    #[test]
    fn bad_ids_report_index_and_offset() {
        let a = ids(1)[0].to_string();
        let body = format!("{a} {a} zz");
        match parse(&body) {
            Err(BodyError::BadId { index, offset, .. }) => {
                assert_eq!(index, 2);
                assert_eq!(offset, 130);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn too_many_ids_is_its_own_error() {
        let body: String = ids(3).iter().map(|id| format!("{id}\n")).collect();
        let mut parser = IdListParser::new(2);
        assert_eq!(parser.feed(body.as_bytes()), Err(BodyError::TooMany(2)));
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let want: Vec<Id> = (0..200u32)
            .map(|i| Id::of_content(&i.to_le_bytes()))
            .collect();
        let array = serde_json::to_string(&want).expect("json");
        let list: String = want.iter().map(|id| format!("{id},\n")).collect();
        let mut rng = StdRng::seed_from_u64(7);
        for body in [array, list] {
            for _ in 0..20 {
                let mut parser = IdListParser::new(usize::MAX);
                let mut rest = body.as_bytes();
                while !rest.is_empty() {
                    let take = rng.random_range(1..=rest.len().min(150));
                    let (chunk, tail) = rest.split_at(take);
                    parser.feed(chunk).expect("feed");
                    rest = tail;
                }
                assert_eq!(parser.finish().expect("finish"), want);
            }
        }
    }

    #[test]
    fn errors_map_to_400_and_413() {
        let e: ApiError = BodyError::Truncated("x").into();
        assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        let e: ApiError = BodyError::TooMany(1).into();
        assert_eq!(e.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }
}
