//! The names protocol (`/names/`): DNS-syntax names → addresses.
//!
//! - `GET /names/lookup/:name` → [`NameRecord`]; 404 when neither the server nor (when
//!   configured) DNS knows the name.
//! - `PUT /names/register/` [`RegisterRequest`] → 200 `true`; 409 when the name is taken.
//! - `POST /names/update/` [`UpdateRequest`] → 200 `true` when `previous` was the current
//!   address and the record was replaced, `false` when it was not (compare-and-swap);
//!   404 when the name is not registered. The client also reads the reference's `{}`
//!   answer, by looking the name up ([`NamesClient::update`]).
//!
//! Names follow DNS syntax and are compared in their canonical form
//! ([`canonical_name`]): lowercase, a name without a dot means `<name>.local`.
//! `ttl` is in seconds (the reference server stores milliseconds; the number is passed
//! through as it is, see `spec/names.md`). A record with `slot: true` names a slot: its `address` is a
//! slot id whose current value is the content; otherwise `address` is the content
//! address itself.
//!
//! DNS form: a TXT record at the name holding `invariant-slot=<64 hex>` (a slot id) or
//! `invariant-data=<64 hex>` (an address) resolves it; a names server answers such
//! names with `authoritative: false`.

use serde::{Deserialize, Serialize};

use crate::http::{Endpoint, read_bytes};
use crate::{ClientError, ClientResult, Id};

/// The domain appended to a name that has no dot.
pub const LOCAL_DOMAIN: &str = "local";
/// Longest name in characters (without a trailing dot), as in DNS.
pub const MAX_NAME_LEN: usize = 253;
/// Longest label in characters, as in DNS.
pub const MAX_LABEL_LEN: usize = 63;
/// TXT record prefix naming a slot id.
pub const TXT_SLOT_PREFIX: &str = "invariant-slot=";
/// TXT record prefix naming a content address.
pub const TXT_DATA_PREFIX: &str = "invariant-data=";

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty (or just a dot).
    #[error("a name cannot be empty")]
    Empty,
    /// Two dots in a row, or a leading dot.
    #[error("name {0:?} has an empty label")]
    EmptyLabel(String),
    /// A label longer than [`MAX_LABEL_LEN`].
    #[error("label {label:?} is {len} characters; at most {MAX_LABEL_LEN} are allowed")]
    LabelTooLong {
        /// The offending label.
        label: String,
        /// Its length.
        len: usize,
    },
    /// A character other than a letter, digit or hyphen.
    #[error("label {label:?} contains {found:?}; only letters, digits and '-' are allowed")]
    BadCharacter {
        /// The offending label.
        label: String,
        /// The offending character.
        found: char,
    },
    /// A label starting or ending with a hyphen.
    #[error("label {0:?} starts or ends with '-'")]
    HyphenAtEdge(String),
    /// The whole name is longer than [`MAX_NAME_LEN`].
    #[error("name is {0} characters; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
}

/// The canonical form of `name`, under which it is stored and compared.
///
/// Labels are 1–63 ASCII letters, digits or hyphens, not starting or ending with a
/// hyphen; the result is lowercase. A name without a dot gets `.local` appended. One
/// trailing dot (the fully qualified form, `example.com.`) is accepted and removed; it
/// also keeps a single label from getting `.local`. The result is at most 253
/// characters. Internationalized names must be given in their ASCII (punycode) form.
pub fn canonical_name(name: &str) -> Result<String, NameError> {
    let (body, qualified) = match name.strip_suffix('.') {
        Some(body) => (body, true),
        None => (name, false),
    };
    if body.is_empty() {
        return Err(NameError::Empty);
    }
    for label in body.split('.') {
        check_label(label, name)?;
    }
    let mut canonical = body.to_ascii_lowercase();
    if !qualified && !canonical.contains('.') {
        canonical.push('.');
        canonical.push_str(LOCAL_DOMAIN);
    }
    if canonical.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(canonical.len()));
    }
    Ok(canonical)
}

fn check_label(label: &str, name: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel(name.to_string()));
    }
    if let Some(found) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(NameError::BadCharacter {
            label: label.to_string(),
            found,
        });
    }
    // Only ASCII remains, so bytes are characters.
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong {
            label: label.to_string(),
            len: label.len(),
        });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::HyphenAtEdge(label.to_string()));
    }
    Ok(())
}

/// Answer of `GET /names/lookup/:name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// The canonical name.
    pub name: String,
    /// A content address, or a slot id when `slot` is true.
    pub address: Id,
    /// Seconds the answer may be cached.
    pub ttl: u32,
    /// True when the answering server holds the name itself; false for an answer from
    /// DNS. Absent is read as false.
    #[serde(default)]
    pub authoritative: bool,
    /// True when `address` is a slot id. Absent is read as false.
    #[serde(default)]
    pub slot: bool,
}

/// Body of `PUT /names/register/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The name (any case; see [`canonical_name`]).
    pub name: String,
    /// A content address, or a slot id when `slot` is true.
    pub address: Id,
    /// Seconds lookups may cache the answer; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// True when `address` is a slot id; false when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<bool>,
}

impl RegisterRequest {
    /// Registers `name` → `address` with the server's default ttl, not a slot.
    pub fn new(name: impl Into<String>, address: Id) -> RegisterRequest {
        RegisterRequest {
            name: name.into(),
            address,
            ttl: None,
            slot: None,
        }
    }
}

/// Body of `POST /names/update/`: replace the record of `name` if its address is
/// still `previous`. `ttl` and `slot` describe the new record (absent: the server's
/// default ttl, not a slot), as in the reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// The name (any case; see [`canonical_name`]).
    pub name: String,
    /// The address the caller believes is current.
    pub previous: Id,
    /// The new address (or slot id when `slot` is true).
    pub address: Id,
    /// Seconds lookups may cache the answer; the server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// True when `address` is a slot id; false when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<bool>,
}

impl UpdateRequest {
    /// Moves `name` from `previous` to `address`, default ttl, not a slot.
    pub fn new(name: impl Into<String>, previous: Id, address: Id) -> UpdateRequest {
        UpdateRequest {
            name: name.into(),
            previous,
            address,
            ttl: None,
            slot: None,
        }
    }
}

/// Typed client for one names server.
#[derive(Clone, Debug)]
pub struct NamesClient {
    endpoint: Endpoint,
}

impl NamesClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:3006`).
    pub fn new(base_url: &str) -> ClientResult<NamesClient> {
        Ok(NamesClient {
            endpoint: Endpoint::new(base_url)?,
        })
    }

    /// A client sharing an existing endpoint (and its connection pool).
    pub fn from_endpoint(endpoint: Endpoint) -> NamesClient {
        NamesClient { endpoint }
    }

    /// The endpoint (base url and HTTP client).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The server's id.
    pub async fn id(&self) -> ClientResult<Id> {
        self.endpoint.server_id().await
    }

    /// What `name` resolves to, or `None` when the server (and DNS) do not know it.
    /// The name is sent as one percent-encoded path segment; the server validates it.
    pub async fn lookup(&self, name: &str) -> ClientResult<Option<NameRecord>> {
        let base = self.endpoint.url("/names/lookup");
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base.clone(),
            reason: reason.to_string(),
        };
        let mut parsed = reqwest::Url::parse(&base).map_err(|e| invalid(&e.to_string()))?;
        parsed
            .path_segments_mut()
            .map_err(|()| invalid("url cannot have a path"))?
            .push(name);
        let url = parsed.to_string();
        let request = self.endpoint.http().get(parsed);
        self.endpoint
            .call_json_optional(&url, request, "lookup answer is not the expected JSON")
            .await
    }

    /// Registers a new name. A taken name is [`ClientError::Status`] 409.
    pub async fn register(&self, request: &RegisterRequest) -> ClientResult<()> {
        let url = self.endpoint.url("/names/register/");
        let request = self.endpoint.http().put(&url).json(request);
        self.endpoint.call(&url, request).await?;
        Ok(())
    }

    /// Compare-and-swap: `true` when the name moved from `previous` to the new address,
    /// `false` when `previous` was not current. An unknown name is
    /// [`ClientError::Status`] 404.
    ///
    /// A success answer that says nothing — `{}` or an empty body, as the reference
    /// server answers every update — is settled by looking the name up: `true` when it
    /// now holds the requested address and slot flag. A concurrent update of the same
    /// name can make an applied update read as `false` (and a stale one as `true` when
    /// the other writer set the same address).
    pub async fn update(&self, request: &UpdateRequest) -> ClientResult<bool> {
        let url = self.endpoint.url("/names/update/");
        let http = self.endpoint.http().post(&url).json(request);
        let response = self.endpoint.call(&url, http).await?;
        let body = read_bytes(&url, response).await?;
        match update_answer(&body) {
            Ok(Some(applied)) => Ok(applied),
            Ok(None) => self.holds(request).await,
            Err(e) => Err(ClientError::Protocol {
                url,
                reason: format!("update answer is not a JSON boolean: {e}"),
            }),
        }
    }

    /// Whether the name of `request` holds its address and slot flag now.
    async fn holds(&self, request: &UpdateRequest) -> ClientResult<bool> {
        let record = self.lookup(&request.name).await?;
        Ok(record.is_some_and(|record| {
            record.address == request.address && record.slot == request.slot.unwrap_or(false)
        }))
    }
}

/// Reads an update answer: `Some(applied)` for a JSON boolean, `None` for an answer
/// that does not say (`{}` or an empty body).
fn update_answer(body: &[u8]) -> Result<Option<bool>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Bool(applied)) => Ok(Some(applied)),
        Ok(serde_json::Value::Object(map)) if map.is_empty() => Ok(None),
        Ok(other) => Err(format!("got {other}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names_are_lowercase_and_local_by_default() {
        assert_eq!(canonical_name("Home").as_deref(), Ok("home.local"));
        assert_eq!(
            canonical_name("Invariant.Example.COM").as_deref(),
            Ok("invariant.example.com")
        );
        assert_eq!(canonical_name("a-b.c9").as_deref(), Ok("a-b.c9"));
        assert_eq!(canonical_name("example.com.").as_deref(), Ok("example.com"));
        // The fully qualified single label is a top-level name, not `.local`.
        assert_eq!(canonical_name("dev.").as_deref(), Ok("dev"));
        assert_eq!(canonical_name("0").as_deref(), Ok("0.local"));
    }

    #[test]
    fn malformed_names_are_refused_with_a_reason() {
        assert_eq!(canonical_name(""), Err(NameError::Empty));
        assert_eq!(canonical_name("."), Err(NameError::Empty));
        assert!(matches!(
            canonical_name("a..b"),
            Err(NameError::EmptyLabel(_))
        ));
        assert!(matches!(
            canonical_name(".a"),
            Err(NameError::EmptyLabel(_))
        ));
        assert!(matches!(
            canonical_name("a.b.."),
            Err(NameError::EmptyLabel(_))
        ));
        assert!(matches!(
            canonical_name("-a.com"),
            Err(NameError::HyphenAtEdge(_))
        ));
        assert!(matches!(
            canonical_name("a-.com"),
            Err(NameError::HyphenAtEdge(_))
        ));
        assert_eq!(
            canonical_name("a_b.com"),
            Err(NameError::BadCharacter {
                label: "a_b".into(),
                found: '_'
            })
        );
        assert!(matches!(
            canonical_name("é.com"),
            Err(NameError::BadCharacter { found: 'é', .. })
        ));
        assert!(matches!(
            canonical_name("a b"),
            Err(NameError::BadCharacter { found: ' ', .. })
        ));
        let long_label = "a".repeat(64);
        assert!(matches!(
            canonical_name(&format!("{long_label}.com")),
            Err(NameError::LabelTooLong { len: 64, .. })
        ));
        assert!(canonical_name(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn total_length_is_limited_after_adding_local() {
        // 4 labels of 63 + 3 dots = 255 > 253.
        let label = "a".repeat(63);
        let too_long = [label.as_str(); 4].join(".");
        assert_eq!(canonical_name(&too_long), Err(NameError::TooLong(255)));
        // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253: the limit itself is fine.
        let at_limit = format!("{label}.{label}.{label}.{}", "b".repeat(61));
        assert_eq!(canonical_name(&at_limit).map(|n| n.len()), Ok(253));
        // A single label of 63 fits; with ".local" appended it is 69.
        let single = "c".repeat(63);
        assert_eq!(canonical_name(&single).map(|n| n.len()), Ok(69));
        // The trailing dot of the fully qualified form does not count.
        assert_eq!(
            canonical_name(&format!("{at_limit}.")).map(|n| n.len()),
            Ok(253)
        );
    }

    #[test]
    fn update_answers_are_booleans_or_say_nothing() {
        assert_eq!(update_answer(b"true"), Ok(Some(true)));
        assert_eq!(update_answer(b" false\n"), Ok(Some(false)));
        assert_eq!(update_answer(b"{}"), Ok(None));
        assert_eq!(update_answer(b""), Ok(None));
        assert_eq!(update_answer(b" \n"), Ok(None));
        assert!(update_answer(br#"{"ok":true}"#).is_err());
        assert!(update_answer(b"1").is_err());
        assert!(update_answer(b"tru").is_err());
    }

    #[test]
    fn wire_forms_round_trip_and_accept_absent_options() {
        let address = Id::of_content(b"x");
        let record: NameRecord = serde_json::from_str(&format!(
            r#"{{"name":"a.local","address":"{address}","ttl":5}}"#
        ))
        .expect("minimal record");
        assert!(!record.authoritative);
        assert!(!record.slot);
        let json = serde_json::to_value(&record).expect("serialize");
        assert_eq!(json["authoritative"], serde_json::Value::Bool(false));
        assert_eq!(json["slot"], serde_json::Value::Bool(false));

        let register = RegisterRequest::new("a", address);
        let json = serde_json::to_string(&register).expect("serialize");
        assert_eq!(json, format!(r#"{{"name":"a","address":"{address}"}}"#));
        let update: UpdateRequest = serde_json::from_str(&format!(
            r#"{{"name":"a","previous":"{address}","address":"{address}","ttl":60,"slot":true}}"#
        ))
        .expect("update");
        assert_eq!(update.ttl, Some(60));
        assert_eq!(update.slot, Some(true));
        assert!(serde_json::from_str::<RegisterRequest>(r#"{"name":"a","address":"zz"}"#).is_err());
        assert!(
            serde_json::from_str::<RegisterRequest>(&format!(
                r#"{{"name":"a","address":"{address}","ttl":-1}}"#
            ))
            .is_err()
        );
    }
}
