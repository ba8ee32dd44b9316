//! Profiles (which rules a run holds a server to) and the selection of checks by id
//! (`--only`: exact ids or glob patterns).
//!
//! - [`Profile::Core`]: what every implementation of the invariant protocols must do —
//!   the public reference's own documents, plus the corrections where they contradict
//!   themselves (each cited in the "Divergences" table of the protocol's document).
//! - [`Profile::Full`]: core plus this project's extensions (Range, ETag and 304,
//!   ed25519 slots, upper-case ids, strict body validation, …).
//! - [`Profile::Secure`]: full plus the authorization rules of `spec/security.md`.
//!
//! Profiles nest: a run of a profile runs every check of that profile and of the
//! profiles below it; the others are not run at all.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A set of rules a run holds the server to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The reference's documents (with cited corrections).
    Core,
    /// Core plus this project's extensions.
    Full,
    /// Full plus the authorization rules.
    Secure,
}

impl Profile {
    /// Every profile, smallest first.
    pub const ALL: [Profile; 3] = [Profile::Core, Profile::Full, Profile::Secure];

    /// Lowercase name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Core => "core",
            Profile::Full => "full",
            Profile::Secure => "secure",
        }
    }

    /// Whether a check of profile `check` runs under this profile.
    pub fn includes(self, check: Profile) -> bool {
        check <= self
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A profile name that is not one of `core`, `full`, `secure`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile {0:?} (expected core, full or secure)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Profile, UnknownProfile> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownProfile(s.to_string()))
    }
}

/// Whether check `id` is selected by `selector`: a comma-separated list of exact ids
/// or glob patterns (`*` any run of characters, `?` one character).
pub fn selects(selector: &str, id: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|pattern| glob(pattern.as_bytes(), id.as_bytes()))
}

/// Glob match of `pattern` against all of `text`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it is matched up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_nest() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>(), Ok(p));
        }
        assert!("strict".parse::<Profile>().is_err());
        assert!(Profile::Full.includes(Profile::Core));
        assert!(!Profile::Core.includes(Profile::Full));
        assert!(Profile::Secure.includes(Profile::Full));
    }

    #[test]
    fn selection_is_exact_unless_a_glob() {
        assert!(selects("storage-get", "storage-get"));
        assert!(!selects("storage-get", "storage-get-absent"));
        assert!(selects("storage-get*", "storage-get-absent"));
        assert!(selects("storage-get*", "storage-get"));
        assert!(selects("*-id-case", "slots-id-case"));
        assert!(selects("slots-?et", "slots-get"));
        assert!(selects("a,storage-get", "storage-get"));
        assert!(!selects("storage-*-x", "storage-get"));
        assert!(selects("s*a*e", "storage"));
    }
}
