//! Verdicts of single checks: how a check ended ([`Outcome`]), why it failed
//! ([`Fail`]), warnings gathered on the way ([`Warnings`]) and the `fail!`/`ensure!`
//! macros. This module depends on nothing else of the crate, so both the check
//! machinery and the helper server can use it.

/// How a check that did not fail ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    Warn(String),
    Skip(String),
}

/// Why a check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fail(pub(crate) String);

impl From<reqwest::Error> for Fail {
    fn from(e: reqwest::Error) -> Fail {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        Fail(text)
    }
}

impl From<invariant_spec::ClientError> for Fail {
    fn from(e: invariant_spec::ClientError) -> Fail {
        Fail(e.to_string())
    }
}

/// What a check returns.
pub(crate) type Verdict = Result<Outcome, Fail>;

/// Returns early with a failure.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::verdict::Fail(format!($($arg)*)))
    };
}

/// Fails unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::verdict::Fail(format!($($arg)*)));
        }
    };
}

pub(crate) use {ensure, fail};

/// Warnings gathered while a check runs; the check passes when there are none.
#[derive(Debug, Default)]
pub(crate) struct Warnings(Vec<String>);

impl Warnings {
    pub(crate) fn add(&mut self, note: impl Into<String>) {
        self.0.push(note.into());
    }
    pub(crate) fn merge(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Pass => {}
            Outcome::Warn(note) | Outcome::Skip(note) => self.0.push(note),
        }
    }
    pub(crate) fn outcome(self) -> Verdict {
        if self.0.is_empty() {
            Ok(Outcome::Pass)
        } else {
            Ok(Outcome::Warn(self.0.join("; ")))
        }
    }
}

/// `ids` as a bracketed list of lowercase hex, for messages (never `Id(…)`).
pub(crate) fn id_list<'a>(ids: impl IntoIterator<Item = &'a invariant_spec::Id>) -> String {
    let items: Vec<String> = ids.into_iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// A body for a message: its text, quoted and escaped, when it is short printable
/// text; otherwise its length and a hex excerpt. Never raw binary.
pub(crate) fn body_excerpt(body: &[u8]) -> String {
    const LIMIT: usize = 160;
    let printable = |c: char| !c.is_control() || matches!(c, '\n' | '\r' | '\t');
    match std::str::from_utf8(body) {
        Ok(text) if text.chars().all(printable) => {
            let trimmed = text.trim();
            let excerpt: String = trimmed.chars().take(LIMIT).collect();
            if excerpt.len() < trimmed.len() {
                format!("{excerpt:?}… ({} bytes)", body.len())
            } else {
                format!("{excerpt:?}")
            }
        }
        _ => {
            let shown = &body[..body.len().min(32)];
            let more = if body.len() > shown.len() { "…" } else { "" };
            format!("<{} bytes of binary: {}{more}>", body.len(), hex(shown))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_bodies_are_shown_as_a_hex_excerpt_with_their_length() {
        assert_eq!(body_excerpt(b"not found\n"), "\"not found\"");
        let binary = [0u8, 159, 146, 150, 1, 2];
        assert_eq!(body_excerpt(&binary), "<6 bytes of binary: 009f92960102>");
        let long = vec![0xffu8; 100];
        let shown = body_excerpt(&long);
        assert!(shown.starts_with("<100 bytes of binary: ffff"), "{shown}");
        assert!(shown.ends_with("…>"), "{shown}");
        let text = "x".repeat(500);
        assert!(body_excerpt(text.as_bytes()).ends_with("(500 bytes)"));
    }

    #[test]
    fn id_lists_are_hex() {
        let id = invariant_spec::Id::of_content(b"x");
        assert_eq!(id_list([&id]), format!("[{id}]"));
    }
}
