//! The storage protocol (`/storage/`): content-addressed, immutable blobs.
//!
//! Routes (see `spec/storage.md`): `GET|HEAD|PUT|DELETE /storage/:address`,
//! `POST /storage/`, `GET /storage/` (listing), `POST /storage/delete` (batch delete),
//! `HEAD|PUT|POST /storage/fetch`. An address is the SHA-256 of the blob's bytes.
//! [`StorageClient`] verifies every byte it returns against the address it asked for.

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::http::{Endpoint, read_bytes, read_text, status_error};
use crate::{ClientError, ClientResult, Id};

/// Body of `PUT /storage/fetch`: copy `address` from the storage server `container`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The blob to copy.
    pub address: Id,
    /// The id of a storage server that holds it (resolved through the broker).
    pub container: Id,
}

/// One page of `GET /storage/?after=<address>&limit=<n>`: held blobs in ascending
/// address order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    /// The blobs of this page, ascending by address, all after the `after` asked for.
    pub blobs: Vec<ListedBlob>,
    /// Where the next page starts (pass it as `after`); `None` on the last page.
    pub next: Option<Id>,
}

/// One blob of a [`ListPage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedBlob {
    /// The blob's address.
    pub address: Id,
    /// Its size in bytes.
    pub size: u64,
}

/// Most addresses one `POST /storage/delete` may name.
pub const MAX_DELETE_BATCH: usize = 10_000;

/// The answer to `POST /storage/delete`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReport {
    /// Blobs the server held and deleted.
    pub deleted: u64,
    /// Addresses the server did not hold.
    pub missing: u64,
    /// Bytes of the deleted blobs.
    pub bytes: u64,
}

/// A blob arriving in chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = ClientResult<Bytes>> + Send>>;

/// Typed client for one storage server.
#[derive(Clone, Debug)]
pub struct StorageClient {
    endpoint: Endpoint,
}

impl StorageClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:3001`).
    pub fn new(base_url: &str) -> ClientResult<StorageClient> {
        Ok(StorageClient {
            endpoint: Endpoint::new(base_url)?,
        })
    }

    /// A client sharing an existing endpoint (and its connection pool).
    pub fn from_endpoint(endpoint: Endpoint) -> StorageClient {
        StorageClient { endpoint }
    }

    /// The endpoint (base url and HTTP client).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The server's id.
    pub async fn id(&self) -> ClientResult<Id> {
        self.endpoint.server_id().await
    }

    fn blob_url(&self, address: &Id) -> String {
        self.endpoint.url(&format!("/storage/{address}"))
    }

    /// The size of a held blob, or `None` when the server does not have it.
    pub async fn has(&self, address: &Id) -> ClientResult<Option<u64>> {
        let url = self.blob_url(address);
        let request = self.endpoint.http().head(&url);
        let Some(response) = self.endpoint.call_optional(&url, request).await? else {
            return Ok(None);
        };
        let length = response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| ClientError::Protocol {
                url: url.clone(),
                reason: "HEAD answer has no Content-Length".into(),
            })?;
        Ok(Some(length))
    }

    /// Streams a blob, or `None` when absent. The stream's last item is an error if the
    /// bytes do not hash to `address`, so a consumer that reads to the end never
    /// accepts corrupted content.
    pub async fn get(&self, address: &Id) -> ClientResult<Option<ByteStream>> {
        let url = self.blob_url(address);
        let request = self.endpoint.http().get(&url);
        let Some(response) = self.endpoint.call_optional(&url, request).await? else {
            return Ok(None);
        };
        let inner = response.bytes_stream().map(move |chunk| {
            chunk.map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })
        });
        Ok(Some(Box::pin(VerifyingStream {
            inner: Box::pin(inner),
            hasher: Some(Sha256::new()),
            expected: *address,
        })))
    }

    /// Reads a whole blob into memory, verified, or `None` when absent.
    pub async fn get_bytes(&self, address: &Id) -> ClientResult<Option<Bytes>> {
        let Some(mut stream) = self.get(address).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Some(Bytes::from(out)))
    }

    /// Reads `range` of a blob (cannot be verified against the address; use it for
    /// content whose integrity is checked another way). `None` when absent.
    pub async fn get_range(&self, address: &Id, range: Range<u64>) -> ClientResult<Option<Bytes>> {
        let url = self.blob_url(address);
        if range.is_empty() {
            return Ok(self.has(address).await?.map(|_| Bytes::new()));
        }
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let request = self
            .endpoint
            .http()
            .get(&url)
            .header(reqwest::header::RANGE, header);
        let response = self.endpoint.send(&url, request).await?;
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            reqwest::StatusCode::PARTIAL_CONTENT => read_bytes(&url, response).await.map(Some),
            _ => Err(status_error(&url, response).await),
        }
    }

    /// Stores `data` under its address (computed here) and returns the address.
    pub async fn put_bytes(&self, data: Bytes) -> ClientResult<Id> {
        let address = Id::of_content(&data);
        self.put(&address, data).await?;
        Ok(address)
    }

    /// `PUT /storage/:address` with `body` (bytes or a stream); succeeds only when the
    /// server confirms it holds content hashing to `address`.
    pub async fn put(&self, address: &Id, body: impl Into<reqwest::Body>) -> ClientResult<()> {
        let url = self.blob_url(address);
        let request = self.endpoint.http().put(&url).body(body);
        self.endpoint.call(&url, request).await?;
        Ok(())
    }

    /// `PUT` from a stream of chunks.
    pub async fn put_stream<S, E>(&self, address: &Id, stream: S) -> ClientResult<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.put(address, reqwest::Body::wrap_stream(stream)).await
    }

    /// `POST /storage/`: the server computes the address. Checks it against the
    /// address of `data`.
    pub async fn post(&self, data: Bytes) -> ClientResult<Id> {
        let expected = Id::of_content(&data);
        let actual = self.post_body(data).await?;
        if actual != expected {
            return Err(ClientError::HashMismatch { expected, actual });
        }
        Ok(actual)
    }

    /// `POST /storage/` with any body; returns the address the server computed.
    pub async fn post_body(&self, body: impl Into<reqwest::Body>) -> ClientResult<Id> {
        let url = self.endpoint.url("/storage/");
        let request = self.endpoint.http().post(&url).body(body);
        let response = self.endpoint.call(&url, request).await?;
        let text = read_text(&url, response).await?;
        Id::parse(text.trim()).map_err(|e| ClientError::Protocol {
            url,
            reason: format!("POST answer is not an address: {e}"),
        })
    }

    /// `DELETE /storage/:address` (needs a token with `storage:delete`). `Ok(true)` when
    /// the blob was deleted, `Ok(false)` when the server did not hold it (404).
    pub async fn delete(&self, address: &Id) -> ClientResult<bool> {
        let url = self.blob_url(address);
        let request = self.endpoint.http().delete(&url);
        let deleted = self.endpoint.call_optional(&url, request).await?;
        Ok(deleted.is_some())
    }

    /// `POST /storage/delete` with a JSON array of at most [`MAX_DELETE_BATCH`]
    /// addresses (needs a token with `storage:delete`): deletes every one the server
    /// holds, in one commit.
    pub async fn delete_many(&self, addresses: &[Id]) -> ClientResult<DeleteReport> {
        let url = self.endpoint.url("/storage/delete");
        let request = self.endpoint.http().post(&url).json(addresses);
        self.endpoint
            .call_json(&url, request, "not a delete report")
            .await
    }

    /// One page of the server's blobs (`GET /storage/?after=..&limit=..`; needs a token
    /// with `storage:list`): those after `after` (from the start when `None`), ascending,
    /// at most `limit` (the server may answer fewer).
    pub async fn list_page(&self, after: Option<&Id>, limit: usize) -> ClientResult<ListPage> {
        let mut url = self.endpoint.url(&format!("/storage/?limit={limit}"));
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        let request = self.endpoint.http().get(&url);
        self.endpoint
            .call_json(&url, request, "listing is not a page of blobs")
            .await
    }

    /// Whether the server can copy blobs from peers (`HEAD /storage/fetch`).
    pub async fn fetch_supported(&self) -> ClientResult<bool> {
        let url = self.endpoint.url("/storage/fetch");
        let response = self
            .endpoint
            .send(&url, self.endpoint.http().head(&url))
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(&url, response).await),
        }
    }

    /// Asks the server to copy `address` from storage server `container`. `Ok(false)`
    /// when it could not (404: unknown container, blob absent there, or no broker).
    pub async fn fetch(&self, address: &Id, container: &Id) -> ClientResult<bool> {
        let url = self.endpoint.url("/storage/fetch");
        let body = FetchRequest {
            address: *address,
            container: *container,
        };
        let request = self.endpoint.http().put(&url).json(&body);
        let response = self.endpoint.send(&url, request).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(&url, response).await),
        }
    }
}

/// Passes chunks through while hashing them; fails at the end on a mismatch.
struct VerifyingStream {
    inner: ByteStream,
    hasher: Option<Sha256>,
    expected: Id,
}

impl Stream for VerifyingStream {
    type Item = ClientResult<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(hasher) = this.hasher.as_mut() else {
            return Poll::Ready(None);
        };
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                hasher.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let actual = this
                    .hasher
                    .take()
                    .map(|h| Id::from_bytes(h.finalize().into()));
                match actual {
                    Some(actual) if actual != this.expected => {
                        Poll::Ready(Some(Err(ClientError::HashMismatch {
                            expected: this.expected,
                            actual,
                        })))
                    }
                    _ => Poll::Ready(None),
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifying_stream_rejects_wrong_content() {
        let expected = Id::of_content(b"right");
        let chunks: Vec<ClientResult<Bytes>> = vec![
            Ok(Bytes::from_static(b"wro")),
            Ok(Bytes::from_static(b"ng")),
        ];
        let mut stream = VerifyingStream {
            inner: Box::pin(futures_util::stream::iter(chunks)),
            hasher: Some(Sha256::new()),
            expected,
        };
        assert!(stream.next().await.is_some_and(|c| c.is_ok()));
        assert!(stream.next().await.is_some_and(|c| c.is_ok()));
        assert!(matches!(
            stream.next().await,
            Some(Err(ClientError::HashMismatch { .. }))
        ));
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn verifying_stream_accepts_right_content() {
        let expected = Id::of_content(b"right");
        let chunks: Vec<ClientResult<Bytes>> = vec![
            Ok(Bytes::from_static(b"ri")),
            Ok(Bytes::from_static(b"ght")),
        ];
        let stream = VerifyingStream {
            inner: Box::pin(futures_util::stream::iter(chunks)),
            hasher: Some(Sha256::new()),
            expected,
        };
        let all: Vec<_> = stream.collect().await;
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|c| c.is_ok()));
    }

    #[test]
    fn fetch_request_wire_form() {
        let a = Id::of_content(b"a");
        let c = Id::of_content(b"c");
        let json = serde_json::to_value(FetchRequest {
            address: a,
            container: c,
        })
        .expect("json");
        assert_eq!(json["address"], a.to_string());
        assert_eq!(json["container"], c.to_string());
    }
}
