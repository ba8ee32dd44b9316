//! The broker protocol (`/broker/`): server id → urls.
//!
//! This module holds the wire types and the lookup other roles need to reach a peer
//! by id. `GET /broker/location/:id` answers `{id, urls, url, ttl?, token?}`; readers
//! accept either `urls` or `url`.

use serde::{Deserialize, Serialize};

use crate::http::{Endpoint, expect_success};
use crate::{ClientError, ClientResult, Id};

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
        let mut out = self.urls.clone();
        if let Some(url) = &self.url
            && !out.contains(url)
        {
            out.push(url.clone());
        }
        out
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
        let response = self
            .endpoint
            .send(&url, self.endpoint.http().get(&url))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = expect_success(&url, response).await?;
        let location: Location = response.json().await.map_err(|e| ClientError::Protocol {
            url: url.clone(),
            reason: format!("location is not the expected JSON: {e}"),
        })?;
        Ok(Some(location))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
