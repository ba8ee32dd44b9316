//! The find protocol (`/find/`): which storage servers hold a block.
//!
//! Routes:
//! - `GET /find/:id` → `text/plain`, one [`FindAnswer`] per line: `HAS <container-id>`
//!   (that storage server holds `:id`) or `CLOSER <find-id>` (that find server is nearer
//!   to `:id` by XOR distance and may know more). Plain lines, so a reader can stop early.
//! - `PUT /find/has/` [`HasRequest`] `{container, ids}` (the reference docs say `items`;
//!   both are accepted) → 200: `container` holds every id.
//! - `PUT /find/notify/` [`NotifyRequest`] `{find}` → 200: another find server exists.
//!
//! Client side: [`FindClient`] speaks the routes; [`lookup`] walks `CLOSER` answers
//! Kademlia-style (bounded fan-out and depth) until it finds holders; [`AggregateReader`]
//! reads a blob from whichever holder answers, verifying its hash.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::http::{Endpoint, LineReader};
use crate::{BrokerClient, ClientError, ClientResult, Distance, Id};

/// Body of `PUT /find/has/`: `container` (a storage server id) holds `ids`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HasRequest {
    /// The storage server holding the blocks.
    pub container: Id,
    /// The blocks it holds. Readers also accept the field name `items`.
    #[serde(alias = "items")]
    pub ids: Vec<Id>,
}

/// Body of `PUT /find/notify/`: the find server `find` exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyRequest {
    /// The id of a find server (resolved through a broker).
    pub find: Id,
}

/// One line of a `GET /find/:id` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FindAnswer {
    /// `HAS <container-id>`: that storage server holds the block.
    Has(Id),
    /// `CLOSER <find-id>`: that find server is nearer to the block.
    Closer(Id),
}

/// Why a line of a find answer is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FindLineError {
    /// The line is not `KEYWORD <id>`.
    #[error("a find answer line is `HAS <id>` or `CLOSER <id>`, got {0:?}")]
    Shape(String),
    /// The id after the keyword does not parse.
    #[error("bad id in find answer line: {0}")]
    Id(#[from] crate::IdParseError),
}

impl FindAnswer {
    /// Parses one line. Blank lines and lines with an unknown keyword (a later protocol
    /// version's) give `Ok(None)`; keywords are matched case-insensitively.
    pub fn parse_line(line: &str) -> Result<Option<FindAnswer>, FindLineError> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        let mut parts = line.split_whitespace();
        let (Some(keyword), Some(id), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(FindLineError::Shape(truncated(line)));
        };
        let make = if keyword.eq_ignore_ascii_case("HAS") {
            FindAnswer::Has
        } else if keyword.eq_ignore_ascii_case("CLOSER") {
            FindAnswer::Closer
        } else {
            return Ok(None);
        };
        Ok(Some(make(Id::parse(id)?)))
    }

    /// The id on the line.
    pub fn id(&self) -> Id {
        match self {
            FindAnswer::Has(id) | FindAnswer::Closer(id) => *id,
        }
    }
}

impl fmt::Display for FindAnswer {
    /// The wire form, without the newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FindAnswer::Has(id) => write!(f, "HAS {id}"),
            FindAnswer::Closer(id) => write!(f, "CLOSER {id}"),
        }
    }
}

fn truncated(line: &str) -> String {
    line.chars().take(80).collect()
}

/// Longest answer line a reader accepts (a valid one has 71 characters).
const MAX_LINE: usize = 1024;
/// Most answer lines [`FindClient::find`] reads before it stops reading.
pub const MAX_ANSWERS: usize = 10_000;

/// Typed client for one find server.
#[derive(Clone, Debug)]
pub struct FindClient {
    endpoint: Endpoint,
}

impl FindClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:3003`).
    pub fn new(base_url: &str) -> ClientResult<FindClient> {
        Ok(FindClient {
            endpoint: Endpoint::new(base_url)?,
        })
    }

    /// A client sharing an existing endpoint (and its connection pool).
    pub fn from_endpoint(endpoint: Endpoint) -> FindClient {
        FindClient { endpoint }
    }

    /// The endpoint (base url and HTTP client).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The server's id.
    pub async fn id(&self) -> ClientResult<Id> {
        self.endpoint.server_id().await
    }

    /// `GET /find/:id`: what the server knows about `id`, at most [`MAX_ANSWERS`] lines.
    pub async fn find(&self, id: &Id) -> ClientResult<Vec<FindAnswer>> {
        self.find_limited(id, MAX_ANSWERS).await
    }

    /// `GET /find/:id`, parsing lines as they arrive and dropping the connection after
    /// `max` answers.
    pub async fn find_limited(&self, id: &Id, max: usize) -> ClientResult<Vec<FindAnswer>> {
        let url = self.endpoint.url(&format!("/find/{id}"));
        let response = self
            .endpoint
            .call(&url, self.endpoint.http().get(&url))
            .await?;
        let protocol = |reason: String| ClientError::Protocol {
            url: url.clone(),
            reason,
        };
        let mut answers = Vec::new();
        let mut lines = LineReader::new(&url, response, MAX_LINE);
        while answers.len() < max {
            let Some(line) = lines.next_line().await? else {
                break;
            };
            let text = std::str::from_utf8(&line)
                .map_err(|_| protocol("answer is not UTF-8".to_string()))?;
            if let Some(answer) =
                FindAnswer::parse_line(text).map_err(|e| protocol(e.to_string()))?
            {
                answers.push(answer);
            }
        }
        Ok(answers)
    }

    /// `PUT /find/has/`: storage server `container` holds `ids`.
    pub async fn has(&self, container: &Id, ids: &[Id]) -> ClientResult<()> {
        self.put_records("/find/has/", container, ids).await
    }

    /// `PUT /find/gone/`: storage server `container` no longer holds `ids` (it deleted
    /// them); the find server drops those has-records.
    pub async fn gone(&self, container: &Id, ids: &[Id]) -> ClientResult<()> {
        self.put_records("/find/gone/", container, ids).await
    }

    /// `PUT path` with a [`HasRequest`] body.
    async fn put_records(&self, path: &str, container: &Id, ids: &[Id]) -> ClientResult<()> {
        let url = self.endpoint.url(path);
        let body = HasRequest {
            container: *container,
            ids: ids.to_vec(),
        };
        let request = self.endpoint.http().put(&url).json(&body);
        self.endpoint.call(&url, request).await?;
        Ok(())
    }

    /// `PUT /find/notify/`: find server `find` exists.
    pub async fn notify(&self, find: &Id) -> ClientResult<()> {
        let url = self.endpoint.url("/find/notify/");
        let request = self
            .endpoint
            .http()
            .put(&url)
            .json(&NotifyRequest { find: *find });
        self.endpoint.call(&url, request).await?;
        Ok(())
    }
}

/// Bounds of an iterative [`lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupOptions {
    /// Find servers queried in parallel per round (Kademlia's alpha). Default 3.
    pub alpha: usize,
    /// Rounds after the first query. Default 8.
    pub max_rounds: usize,
    /// The lookup stops after the round in which it has found this many holders.
    /// Default 1.
    pub want: usize,
}

impl Default for LookupOptions {
    fn default() -> LookupOptions {
        LookupOptions {
            alpha: 3,
            max_rounds: 8,
            want: 1,
        }
    }
}

/// Finds storage servers holding `id`, starting at `start` and following `CLOSER`
/// answers (resolved through `broker`), nearest unvisited first, `alpha` at a time,
/// for at most `max_rounds` rounds. Each find server is asked once; one that cannot be
/// resolved or fails is skipped. Returns the holders in the order found, without
/// duplicates (empty when nobody knows). Fails only when `start` itself fails.
pub async fn lookup(
    broker: &BrokerClient,
    start: &FindClient,
    id: &Id,
    options: LookupOptions,
) -> ClientResult<Vec<Id>> {
    let mut walk = Walk {
        target: *id,
        holders: Vec::new(),
        candidates: BTreeMap::new(),
        visited: HashSet::new(),
    };
    if let Ok(own) = start.id().await {
        walk.visited.insert(own);
    }
    walk.absorb(start.find(id).await?);

    let want = options.want.max(1);
    for _ in 0..options.max_rounds {
        if walk.holders.len() >= want {
            break;
        }
        let batch = walk.next_batch(options.alpha.max(1));
        if batch.is_empty() {
            break;
        }
        let queries = batch.iter().map(|find| query_find(broker, find, id));
        for answers in futures_util::future::join_all(queries).await {
            walk.absorb(answers);
        }
    }
    Ok(walk.holders)
}

/// State of one [`lookup`].
struct Walk {
    target: Id,
    /// Holders found, in order, without duplicates.
    holders: Vec<Id>,
    /// Find servers heard of and not yet asked, nearest to `target` first.
    candidates: BTreeMap<Distance, Id>,
    /// Find servers asked (or being asked).
    visited: HashSet<Id>,
}

impl Walk {
    fn absorb(&mut self, answers: Vec<FindAnswer>) {
        for answer in answers {
            match answer {
                FindAnswer::Has(c) if !self.holders.contains(&c) => self.holders.push(c),
                FindAnswer::Closer(f) if !self.visited.contains(&f) => {
                    self.candidates.insert(self.target.distance(&f), f);
                }
                _ => {}
            }
        }
    }

    /// Up to `count` nearest unvisited candidates, marked visited.
    fn next_batch(&mut self, count: usize) -> Vec<Id> {
        let mut batch = Vec::new();
        while batch.len() < count {
            let Some((_, next)) = self.candidates.pop_first() else {
                break;
            };
            if self.visited.insert(next) {
                batch.push(next);
            }
        }
        batch
    }
}

/// Asks find server `find` about `id`; nothing when it cannot be reached.
async fn query_find(broker: &BrokerClient, find: &Id, id: &Id) -> Vec<FindAnswer> {
    let Ok(Some(url)) = broker.resolve(find).await else {
        return Vec::new();
    };
    let Ok(endpoint) = Endpoint::with_client(&url, broker.endpoint().http().clone()) else {
        return Vec::new();
    };
    FindClient::from_endpoint(endpoint)
        .find(id)
        .await
        .unwrap_or_default()
}

/// Reads blobs from whichever storage server holds them: an iterative [`lookup`] from
/// one find server, then each holder in turn (resolved through the broker) until one
/// returns bytes that hash to the address.
#[derive(Clone, Debug)]
pub struct AggregateReader {
    broker: BrokerClient,
    find: FindClient,
    options: LookupOptions,
}

impl AggregateReader {
    /// A reader starting its lookups at `find`, resolving servers through `broker`.
    pub fn new(broker: BrokerClient, find: FindClient) -> AggregateReader {
        AggregateReader {
            broker,
            find,
            options: LookupOptions::default(),
        }
    }

    /// The same reader with other lookup bounds.
    pub fn with_options(mut self, options: LookupOptions) -> AggregateReader {
        self.options = options;
        self
    }

    /// The storage servers said to hold `address`.
    pub async fn holders(&self, address: &Id) -> ClientResult<Vec<Id>> {
        lookup(&self.broker, &self.find, address, self.options).await
    }

    /// The verified bytes of `address`. `Ok(None)` when no holder is known or every
    /// holder says it does not have the blob; otherwise the last failure when no holder
    /// delivered (unreachable, or bytes that do not hash to `address`).
    pub async fn get_bytes(&self, address: &Id) -> ClientResult<Option<Bytes>> {
        let mut failure = None;
        for container in self.holders(address).await? {
            let client = match self.broker.storage(&container).await {
                Ok(Some(client)) => client,
                Ok(None) => continue,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            match client.get_bytes(address).await {
                Ok(Some(bytes)) => return Ok(Some(bytes)),
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seed: &[u8]) -> Id {
        Id::of_content(seed)
    }

    #[test]
    fn has_request_accepts_ids_and_items() {
        let c = id(b"c");
        let a = id(b"a");
        let with_ids: HasRequest =
            serde_json::from_str(&format!(r#"{{"container":"{c}","ids":["{a}"]}}"#))
                .expect("ids form");
        let with_items: HasRequest =
            serde_json::from_str(&format!(r#"{{"container":"{c}","items":["{a}"]}}"#))
                .expect("items form");
        assert_eq!(with_ids, with_items);
        assert_eq!(with_ids.ids, vec![a]);
        // Emitted with `ids`.
        let json = serde_json::to_value(&with_items).expect("serialize");
        assert_eq!(json["ids"][0], a.to_string());
        assert!(json.get("items").is_none());
        // Both, neither, or a bad id: rejected.
        assert!(
            serde_json::from_str::<HasRequest>(&format!(
                r#"{{"container":"{c}","ids":[],"items":[]}}"#
            ))
            .is_err()
        );
        assert!(serde_json::from_str::<HasRequest>(&format!(r#"{{"container":"{c}"}}"#)).is_err());
        assert!(
            serde_json::from_str::<HasRequest>(&format!(r#"{{"container":"{c}","ids":["zz"]}}"#))
                .is_err()
        );
    }

    #[test]
    fn notify_request_wire_form() {
        let f = id(b"f");
        let json = serde_json::to_string(&NotifyRequest { find: f }).expect("serialize");
        assert_eq!(json, format!(r#"{{"find":"{f}"}}"#));
    }

    #[test]
    fn answer_lines_round_trip() {
        let a = id(b"a");
        for answer in [FindAnswer::Has(a), FindAnswer::Closer(a)] {
            let line = answer.to_string();
            assert_eq!(FindAnswer::parse_line(&line), Ok(Some(answer)));
            assert_eq!(answer.id(), a);
        }
        assert_eq!(FindAnswer::Has(a).to_string(), format!("HAS {a}"));
        let upper = format!("has {}\r", a.to_string().to_uppercase());
        assert_eq!(FindAnswer::parse_line(&upper), Ok(Some(FindAnswer::Has(a))));
    }

    #[test]
    fn walk_dedupes_and_visits_nearest_first() {
        let target = Id::from_bytes([0; 32]);
        let near = Id::from_bytes([1; 32]);
        let mid = Id::from_bytes([2; 32]);
        let far = Id::from_bytes([0x80; 32]);
        let holder = id(b"holder");
        let mut walk = Walk {
            target,
            holders: Vec::new(),
            candidates: BTreeMap::new(),
            visited: HashSet::from([mid]),
        };
        walk.absorb(vec![
            FindAnswer::Closer(far),
            FindAnswer::Has(holder),
            FindAnswer::Closer(mid),
            FindAnswer::Closer(near),
            FindAnswer::Has(holder),
        ]);
        assert_eq!(walk.holders, vec![holder]);
        // `mid` was visited already; the rest come nearest first, each once.
        assert_eq!(walk.next_batch(1), vec![near]);
        walk.absorb(vec![FindAnswer::Closer(near)]);
        assert_eq!(walk.next_batch(3), vec![far]);
        assert!(walk.next_batch(3).is_empty());
    }

    #[test]
    fn odd_lines_are_skipped_or_rejected() {
        let a = id(b"a");
        assert_eq!(FindAnswer::parse_line("   "), Ok(None));
        assert_eq!(FindAnswer::parse_line(&format!("MAYBE {a}")), Ok(None));
        assert!(matches!(
            FindAnswer::parse_line("HAS"),
            Err(FindLineError::Shape(_))
        ));
        assert!(matches!(
            FindAnswer::parse_line(&format!("HAS {a} extra")),
            Err(FindLineError::Shape(_))
        ));
        assert!(matches!(
            FindAnswer::parse_line("CLOSER 1234"),
            Err(FindLineError::Id(_))
        ));
    }
}
