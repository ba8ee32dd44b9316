//! Conventions shared by every typed client: base urls, error mapping, `GET /id/`.

use std::time::Duration;

use crate::{ClientError, ClientResult, Id};

/// Longest server reason kept in a [`ClientError::Status`].
const MAX_REASON: usize = 512;

/// A server's base url plus the HTTP client used to reach it.
///
/// Cloning is cheap: the connection pool is shared.
#[derive(Clone, Debug)]
pub struct Endpoint {
    base: String,
    http: reqwest::Client,
}

impl Endpoint {
    /// An endpoint with a default HTTP client (connect timeout 10 s, pooled).
    pub fn new(base_url: &str) -> ClientResult<Endpoint> {
        Endpoint::with_client(base_url, default_http_client())
    }

    /// An endpoint using `http` (share one client between endpoints to share its pool).
    pub fn with_client(base_url: &str, http: reqwest::Client) -> ClientResult<Endpoint> {
        let trimmed = base_url.trim().trim_end_matches('/');
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = reqwest::Url::parse(trimmed).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("scheme must be http or https"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("a base url has no query or fragment"));
        }
        Ok(Endpoint {
            base: trimmed.to_string(),
            http,
        })
    }

    /// The base url without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `base + path`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request, mapping transport failures.
    pub async fn send(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> ClientResult<reqwest::Response> {
        request
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.to_string(),
                source,
            })
    }

    /// The server's own id (`GET /id/`).
    pub async fn server_id(&self) -> ClientResult<Id> {
        let url = self.url("/id/");
        let response = self.send(&url, self.http.get(&url)).await?;
        let response = expect_success(&url, response).await?;
        let text = read_text(&url, response).await?;
        Id::parse(text.trim()).map_err(|e| ClientError::Protocol {
            url,
            reason: e.to_string(),
        })
    }
}

/// The HTTP client a client builds when none is given.
pub fn default_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Turns a non-2xx response into [`ClientError::Status`] with the server's reason.
pub async fn expect_success(
    url: &str,
    response: reqwest::Response,
) -> ClientResult<reqwest::Response> {
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(status_error(url, response).await)
    }
}

/// Builds a [`ClientError::Status`] from a response, reading (a bounded prefix of) its reason.
pub async fn status_error(url: &str, response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    let mut reason = response.text().await.unwrap_or_default();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    ClientError::Status {
        url: url.to_string(),
        status,
        reason: reason.trim().to_string(),
    }
}

/// Reads a whole text body, mapping failures.
pub async fn read_text(url: &str, response: reqwest::Response) -> ClientResult<String> {
    response
        .text()
        .await
        .map_err(|source| ClientError::Transport {
            url: url.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalized_and_checked() {
        let e = Endpoint::new("http://127.0.0.1:3001/").expect("valid");
        assert_eq!(e.base_url(), "http://127.0.0.1:3001");
        assert_eq!(e.url("/id/"), "http://127.0.0.1:3001/id/");
        assert!(Endpoint::new("ftp://x").is_err());
        assert!(Endpoint::new("not a url").is_err());
        assert!(Endpoint::new("http://h/?q=1").is_err());
    }
}
