//! 32-byte identifiers: content addresses, server ids and slot ids.
//!
//! On the wire an [`Id`] is 64 hexadecimal characters. Parsing accepts either case;
//! display and serialization always emit lowercase. Closeness between ids is the
//! Kademlia XOR metric ([`Id::distance`]).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A 32-byte identifier (SHA-256 content address, server id or slot id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id([u8; Id::LEN]);

/// Why a string is not an [`Id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdParseError {
    /// The string does not have exactly 64 characters.
    #[error("an id is 64 hex characters, got {0} characters")]
    WrongLength(usize),
    /// A character is not a hexadecimal digit.
    #[error("an id is 64 hex characters, found {found:?} at position {position}")]
    NotHex {
        /// Zero-based character position of the offending character.
        position: usize,
        /// The offending character.
        found: char,
    },
}

impl Id {
    /// Length of an id in bytes.
    pub const LEN: usize = 32;
    /// Length of an id written as hex.
    pub const HEX_LEN: usize = 64;

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; Id::LEN]) -> Id {
        Id(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; Id::LEN] {
        &self.0
    }

    /// The content address of `data`: its SHA-256 digest.
    pub fn of_content(data: &[u8]) -> Id {
        Id(Sha256::digest(data).into())
    }

    /// A fresh random id (for server ids and `none`-signed slots).
    pub fn random() -> Id {
        Id(rand::random())
    }

    /// Parses 64 hex characters of either case.
    pub fn parse(text: &str) -> Result<Id, IdParseError> {
        let chars = text.chars().count();
        if text.len() != Id::HEX_LEN || chars != Id::HEX_LEN {
            return Err(IdParseError::WrongLength(chars));
        }
        let mut out = [0u8; Id::LEN];
        let bytes = text.as_bytes();
        for (i, slot) in out.iter_mut().enumerate() {
            let hi = hex_value(bytes, 2 * i)?;
            let lo = hex_value(bytes, 2 * i + 1)?;
            *slot = (hi << 4) | lo;
        }
        Ok(Id(out))
    }

    /// The Kademlia distance to `other` (bitwise XOR).
    pub fn distance(&self, other: &Id) -> Distance {
        let mut out = [0u8; Id::LEN];
        for (o, (a, b)) in out.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            *o = a ^ b;
        }
        Distance(out)
    }

    /// Orders `a` and `b` by their distance to `self` (nearest first).
    pub fn cmp_distance(&self, a: &Id, b: &Id) -> Ordering {
        self.distance(a).cmp(&self.distance(b))
    }

    /// Sorts `ids` so the ids nearest to `self` come first.
    pub fn sort_by_distance(&self, ids: &mut [Id]) {
        ids.sort_by_key(|id| self.distance(id));
    }
}

fn hex_value(bytes: &[u8], position: usize) -> Result<u8, IdParseError> {
    let c = bytes[position];
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(IdParseError::NotHex {
            position,
            found: char::from(c),
        }),
    }
}

/// The XOR distance between two ids, ordered as a 256-bit big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance([u8; Id::LEN]);

impl Distance {
    /// The raw distance bytes (big-endian).
    pub const fn as_bytes(&self) -> &[u8; Id::LEN] {
        &self.0
    }

    /// Number of leading zero bits: the length of the common prefix of the two ids.
    /// 256 when the ids are equal.
    pub fn leading_zeros(&self) -> u32 {
        let mut total = 0;
        for byte in self.0 {
            if byte == 0 {
                total += 8;
            } else {
                return total + byte.leading_zeros();
            }
        }
        total
    }

    /// The k-bucket index of the other id: `255 - leading_zeros`, or `None` for self.
    pub fn bucket(&self) -> Option<usize> {
        let zeros = self.leading_zeros();
        (zeros < 256).then(|| 255 - zeros as usize)
    }
}

impl FromStr for Id {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Id, IdParseError> {
        Id::parse(s)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; Id::HEX_LEN];
        // Encoding into a buffer of exactly twice the input length cannot fail.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        let text = std::str::from_utf8(&buf).map_err(|_| fmt::Error)?;
        f.write_str(text)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({self})")
    }
}

impl From<[u8; Id::LEN]> for Id {
    fn from(bytes: [u8; Id::LEN]) -> Id {
        Id(bytes)
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Id, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 hex characters")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                Id::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn content_address_is_sha256() {
        assert_eq!(Id::of_content(b"hello").to_string(), HELLO);
    }

    #[test]
    fn parses_any_case_and_displays_lowercase() {
        let upper = HELLO.to_uppercase();
        let id: Id = upper.parse().expect("valid hex");
        assert_eq!(id.to_string(), HELLO);
        assert_eq!(id, Id::of_content(b"hello"));
    }

    #[test]
    fn rejects_bad_input_with_reason() {
        assert_eq!(Id::parse("abc"), Err(IdParseError::WrongLength(3)));
        let mut bad = HELLO.to_string();
        bad.replace_range(10..11, "g");
        assert_eq!(
            Id::parse(&bad),
            Err(IdParseError::NotHex {
                position: 10,
                found: 'g'
            })
        );
        // 64 bytes but not 64 characters (multi-byte UTF-8).
        let tricky = format!("{}é", &HELLO[..62]);
        assert!(matches!(
            Id::parse(&tricky),
            Err(IdParseError::WrongLength(63))
        ));
        assert!(Id::parse(&format!("{HELLO}0")).is_err());
    }

    #[test]
    fn serde_is_a_hex_string() {
        let id = Id::of_content(b"hello");
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{HELLO}\""));
        let back: Id = serde_json::from_str(&json.to_uppercase()).expect("deserialize");
        assert_eq!(back, id);
        assert!(serde_json::from_str::<Id>("\"zz\"").is_err());
        assert!(serde_json::from_str::<Id>("12").is_err());
    }

    #[test]
    fn xor_distance_orders_like_kademlia() {
        let zero = Id::from_bytes([0; 32]);
        let mut one = [0u8; 32];
        one[31] = 1;
        let one = Id::from_bytes(one);
        let mut high = [0u8; 32];
        high[0] = 0x80;
        let high = Id::from_bytes(high);

        assert_eq!(zero.distance(&zero).leading_zeros(), 256);
        assert_eq!(zero.distance(&zero).bucket(), None);
        assert_eq!(zero.distance(&one).bucket(), Some(0));
        assert_eq!(zero.distance(&high).bucket(), Some(255));
        assert_eq!(zero.cmp_distance(&one, &high), Ordering::Less);
        assert_eq!(high.cmp_distance(&one, &zero), Ordering::Greater);
        // Symmetric.
        assert_eq!(one.distance(&high), high.distance(&one));

        let mut ids = vec![high, one, zero];
        zero.sort_by_distance(&mut ids);
        assert_eq!(ids, vec![zero, one, high]);
    }
}
