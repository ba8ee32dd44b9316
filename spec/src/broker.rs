//! The broker protocol (`/broker/`): server id → urls.
//!
//! Routes (see the brief / `spec/broker.md`):
//! - `POST /broker/register/` [`Registration`] → [`RegisterResponse`]
//! - `GET /broker/location/:id` → [`Location`] (`urls` and `url`), 404 unknown
//! - `GET /broker/registered/:kind` → JSON array of ids
//! - `GET /broker/servers/:kind` → one id per line (`text/plain`)
//!
//! [`BrokerClient::resolve`] turns a server id into a working base url by trying each
//! registered url until one answers `GET /id/` with that id.

use serde::{Deserialize, Serialize};

use crate::http::Endpoint;
use crate::{ClientResult, Id};

/// Body of `POST /broker/register/`. Readers accept `urls` (array) or `url` (string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The registering server's id.
    pub id: Id,
    /// Urls at which it answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Single-url form (the reference docs' form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Its role: one of `broker distribute files find names productions slots storage`.
    pub kind: String,
}

impl Registration {
    /// Every url, from `urls` then `url`, without duplicates.
    pub fn all_urls(&self) -> Vec<String> {
        merge_urls(&self.urls, self.url.as_ref())
    }
}

/// Answer of `POST /broker/register/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The broker's own id.
    pub id: Id,
    /// Proof-of-work salt, when the broker asks for one (unused by this implementation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Proof-of-work difficulty, when the broker asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minnonce: Option<u64>,
}

/// The role kinds a broker accepts in registrations.
pub const KINDS: &[&str] = &[
    "broker",
    "distribute",
    "files",
    "find",
    "names",
    "productions",
    "slots",
    "storage",
];

fn merge_urls(urls: &[String], url: Option<&String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(urls.len() + 1);
    for u in urls.iter().chain(url) {
        if !out.contains(u) {
            out.push(u.clone());
        }
    }
    out
}

/// Answer of `GET /broker/location/:id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The server id looked up.
    pub id: Id,
    /// Urls at which the server answers (preferred first).
    #[serde(default)]
    pub urls: Vec<String>,
    /// The first url (emitted for readers of the single-url form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Seconds the answer may be cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// Opaque access token, when the broker issues one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Location {
    /// Every url, from `urls` then `url`, without duplicates.
    pub fn all_urls(&self) -> Vec<String> {
        merge_urls(&self.urls, self.url.as_ref())
    }
}

/// Typed client for a broker.
#[derive(Clone, Debug)]
pub struct BrokerClient {
    endpoint: Endpoint,
}

impl BrokerClient {
    /// A client for the broker at `base_url`.
    pub fn new(base_url: &str) -> ClientResult<BrokerClient> {
        Ok(BrokerClient {
            endpoint: Endpoint::new(base_url)?,
        })
    }

    /// A client sharing an endpoint.
    pub fn from_endpoint(endpoint: Endpoint) -> BrokerClient {
        BrokerClient { endpoint }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Where server `id` can be reached; `None` when the broker does not know it.
    pub async fn location(&self, id: &Id) -> ClientResult<Option<Location>> {
        let url = self.endpoint.url(&format!("/broker/location/{id}"));
        let request = self.endpoint.http().get(&url);
        self.endpoint
            .call_json_optional(&url, request, "location is not the expected JSON")
            .await
    }

    /// Registers a server. Returns the broker's answer (its own id).
    pub async fn register(&self, registration: &Registration) -> ClientResult<RegisterResponse> {
        let url = self.endpoint.url("/broker/register/");
        let request = self.endpoint.http().post(&url).json(registration);
        self.endpoint
            .call_json(&url, request, "register answer is not the expected JSON")
            .await
    }

    /// Ids of the servers registered with `kind` (`GET /broker/registered/:kind`).
    pub async fn registered(&self, kind: &str) -> ClientResult<Vec<Id>> {
        let url = self.endpoint.url(&format!("/broker/registered/{kind}"));
        let request = self.endpoint.http().get(&url);
        self.endpoint
            .call_json(
                &url,
                request,
                "registered answer is not a JSON array of ids",
            )
            .await
    }

    /// A base url at which server `id` answers `GET /id/` with its own id, trying each
    /// registered url in order. `None` when the broker does not know `id` or no url
    /// answers correctly.
    pub async fn resolve(&self, id: &Id) -> ClientResult<Option<String>> {
        let Some(location) = self.location(id).await? else {
            return Ok(None);
        };
        for url in location.all_urls() {
            let Ok(endpoint) = Endpoint::with_client(&url, self.endpoint.http().clone()) else {
                continue;
            };
            match endpoint.server_id().await {
                Ok(answered) if answered == *id => {
                    return Ok(Some(endpoint.base_url().to_string()));
                }
                _ => continue,
            }
        }
        Ok(None)
    }

    /// A [`StorageClient`](crate::StorageClient) for storage server `id`, if reachable.
    pub async fn storage(&self, id: &Id) -> ClientResult<Option<crate::StorageClient>> {
        Ok(self.resolve(id).await?.and_then(|url| {
            Endpoint::with_client(&url, self.endpoint.http().clone())
                .ok()
                .map(crate::StorageClient::from_endpoint)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_accepts_both_url_forms() {
        let id = Id::of_content(b"x");
        let single: Registration = serde_json::from_str(&format!(
            r#"{{"id":"{id}","url":"http://a","kind":"storage"}}"#
        ))
        .expect("url form");
        assert_eq!(single.all_urls(), vec!["http://a".to_string()]);
        let both: Registration = serde_json::from_str(&format!(
            r#"{{"id":"{id}","urls":["http://b"],"url":"http://a","kind":"slots"}}"#
        ))
        .expect("both");
        assert_eq!(
            both.all_urls(),
            vec!["http://b".to_string(), "http://a".to_string()]
        );
        assert!(serde_json::from_str::<Registration>(r#"{"id":"zz","kind":"x"}"#).is_err());
    }

    #[test]
    fn location_accepts_both_url_forms() {
        let id = Id::of_content(b"x");
        let single: Location =
            serde_json::from_str(&format!(r#"{{"id":"{id}","url":"http://a"}}"#))
                .expect("url form");
        assert_eq!(single.all_urls(), vec!["http://a".to_string()]);
        let many: Location = serde_json::from_str(&format!(
            r#"{{"id":"{id}","urls":["http://a","http://b"],"url":"http://a"}}"#
        ))
        .expect("urls form");
        assert_eq!(
            many.all_urls(),
            vec!["http://a".to_string(), "http://b".to_string()]
        );
    }
}
