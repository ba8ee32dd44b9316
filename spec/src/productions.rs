//! The productions protocol (`/production/`): a cache of task results.
//!
//! A production records that a task (an id, typically the address of its description)
//! applied to an input (an address) produced an output (an address).
//!
//! - `PUT /production/:task/:input?output=:address` → 200 (recording the same output
//!   again is fine; a different output replaces the earlier one: last write wins, as
//!   in the reference). Malformed ids or a missing `output` → 400.
//! - `GET /production/:task/:input` → 200 `text/plain`, the 64-hex output; 404 unknown.

use crate::http::{Endpoint, read_text};
use crate::{ClientError, ClientResult, Id};

/// Typed client for one productions server.
#[derive(Clone, Debug)]
pub struct ProductionsClient {
    endpoint: Endpoint,
}

impl ProductionsClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:3005`).
    pub fn new(base_url: &str) -> ClientResult<ProductionsClient> {
        Ok(ProductionsClient {
            endpoint: Endpoint::new(base_url)?,
        })
    }

    /// A client sharing an existing endpoint (and its connection pool).
    pub fn from_endpoint(endpoint: Endpoint) -> ProductionsClient {
        ProductionsClient { endpoint }
    }

    /// The endpoint (base url and HTTP client).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The server's id.
    pub async fn id(&self) -> ClientResult<Id> {
        self.endpoint.server_id().await
    }

    fn production_url(&self, task: &Id, input: &Id) -> String {
        self.endpoint.url(&format!("/production/{task}/{input}"))
    }

    /// Records that `task` applied to `input` produced `output`.
    pub async fn put(&self, task: &Id, input: &Id, output: &Id) -> ClientResult<()> {
        let url = format!("{}?output={output}", self.production_url(task, input));
        self.endpoint
            .call(&url, self.endpoint.http().put(&url))
            .await?;
        Ok(())
    }

    /// The recorded output of `task` applied to `input`, or `None` when none is recorded.
    pub async fn get(&self, task: &Id, input: &Id) -> ClientResult<Option<Id>> {
        let url = self.production_url(task, input);
        let request = self.endpoint.http().get(&url);
        let Some(response) = self.endpoint.call_optional(&url, request).await? else {
            return Ok(None);
        };
        let text = read_text(&url, response).await?;
        Id::parse(text.trim())
            .map(Some)
            .map_err(|e| ClientError::Protocol {
                url,
                reason: format!("output is not an id: {e}"),
            })
    }
}
