//! The typed client of a slots server ([`SlotsClient`]): registration, reads,
//! compare-and-swap updates, and history and watch streams read as JSON values one after
//! another.

use std::collections::VecDeque;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use super::sign::SlotSigner;
use super::wire::{RegisterRequest, SlotConfig, SlotState, UpdateRequest};
use crate::http::{Endpoint, NOT_JSON, expect_success, read_json};
use crate::{ClientError, ClientResult, Id};

/// A stream of slot states (history or watch).
pub type StateStream = Pin<Box<dyn Stream<Item = ClientResult<SlotState>> + Send>>;

/// How the server refused a slot request, read from a [`ClientError::Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// 409: `previous` is not the slot's current address (or, on register, the id exists).
    Conflict,
    /// 403: the signature is missing or does not verify.
    Forbidden,
    /// 404: the slot is unknown.
    NotFound,
    /// 400: the request is malformed or invalid.
    Invalid,
}

impl Rejection {
    /// The rejection `error` carries, if it is a 400/403/404/409 answer.
    pub fn of(error: &ClientError) -> Option<Rejection> {
        match error.status()? {
            409 => Some(Rejection::Conflict),
            403 => Some(Rejection::Forbidden),
            404 => Some(Rejection::NotFound),
            400 => Some(Rejection::Invalid),
            _ => None,
        }
    }
}

/// Typed client for one slots server.
#[derive(Clone, Debug)]
pub struct SlotsClient {
    endpoint: Endpoint,
}

impl SlotsClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:3002`).
    pub fn new(base_url: &str) -> ClientResult<SlotsClient> {
        Ok(SlotsClient {
            endpoint: Endpoint::new(base_url)?,
        })
    }

    /// A client sharing an existing endpoint (and its connection pool).
    pub fn from_endpoint(endpoint: Endpoint) -> SlotsClient {
        SlotsClient { endpoint }
    }

    /// The endpoint (base url and HTTP client).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The server's id.
    pub async fn id(&self) -> ClientResult<Id> {
        self.endpoint.server_id().await
    }

    /// Registers a slot. `Ok(true)` when created, `Ok(false)` when the id is already
    /// registered (409); an invalid request is a 400 [`ClientError::Status`].
    pub async fn register(&self, request: &RegisterRequest) -> ClientResult<bool> {
        let url = self.endpoint.url("/slots/register");
        let response = self
            .endpoint
            .send(&url, self.endpoint.http().put(&url).json(request))
            .await?;
        if response.status() == reqwest::StatusCode::CONFLICT {
            return Ok(false);
        }
        let response = expect_success(&url, response).await?;
        read_json::<bool>(&url, response, NOT_JSON).await
    }

    /// The current state of slot `id`, or `None` when it is unknown.
    pub async fn get(&self, id: &Id) -> ClientResult<Option<SlotState>> {
        let url = self.endpoint.url(&format!("/slots/{id}"));
        let request = self.endpoint.http().get(&url);
        self.endpoint
            .call_json_optional(&url, request, NOT_JSON)
            .await
    }

    /// Compare-and-swap: sets slot `id` to `request.address` if it holds
    /// `request.previous`. A refusal is a [`ClientError::Status`]; classify it with
    /// [`Rejection::of`] (409 stale, 403 signature, 404 unknown, 400 malformed).
    pub async fn update(&self, id: &Id, request: &UpdateRequest) -> ClientResult<()> {
        let url = self.endpoint.url(&format!("/slots/{id}"));
        let request = self.endpoint.http().put(&url).json(request);
        self.endpoint.call(&url, request).await?;
        Ok(())
    }

    /// [`SlotsClient::update`] with a request signed by `signer`.
    pub async fn update_signed(
        &self,
        id: &Id,
        signer: &SlotSigner,
        previous: &Id,
        address: &Id,
    ) -> ClientResult<()> {
        let request =
            signer
                .update_request(id, previous, address)
                .map_err(|e| ClientError::Protocol {
                    url: self.endpoint.url(&format!("/slots/{id}")),
                    reason: e.to_string(),
                })?;
        self.update(id, &request).await
    }

    /// The configuration of slot `id`, or `None` when it is unknown.
    pub async fn config(&self, id: &Id) -> ClientResult<Option<SlotConfig>> {
        let url = self.endpoint.url(&format!("/slots/config/{id}"));
        let request = self.endpoint.http().get(&url);
        self.endpoint
            .call_json_optional(&url, request, NOT_JSON)
            .await
    }

    /// The states of slot `id`, newest first down to the registration, or `None` when
    /// the slot is unknown.
    pub async fn history(&self, id: &Id) -> ClientResult<Option<StateStream>> {
        self.state_stream(&format!("/slots/history/{id}")).await
    }

    /// The whole history of slot `id` (newest first), or `None` when it is unknown.
    pub async fn history_all(&self, id: &Id) -> ClientResult<Option<Vec<SlotState>>> {
        let Some(mut stream) = self.history(id).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(state) = stream.next().await {
            out.push(state?);
        }
        Ok(Some(out))
    }

    /// The current state of slot `id`, then every state accepted after it, until the
    /// server ends the stream (shutdown) or the stream is dropped. `None` when unknown.
    pub async fn watch(&self, id: &Id) -> ClientResult<Option<StateStream>> {
        self.state_stream(&format!("/slots/watch/{id}")).await
    }

    async fn state_stream(&self, path: &str) -> ClientResult<Option<StateStream>> {
        let url = self.endpoint.url(path);
        let request = self.endpoint.http().get(&url);
        let response = self.endpoint.call_optional(&url, request).await?;
        Ok(response.map(|response| json_values(url, response)))
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Reads a response body of JSON values separated by newlines, other white space, or
/// nothing at all.
fn json_values<T: DeserializeOwned + Send + 'static>(
    url: String,
    response: reqwest::Response,
) -> Pin<Box<dyn Stream<Item = ClientResult<T>> + Send>> {
    let chunks: ChunkStream = Box::pin(response.bytes_stream());
    Box::pin(JsonValues::new(url, chunks).into_stream())
}

/// Incremental splitter of concatenated JSON values.
struct JsonValues {
    url: String,
    chunks: ChunkStream,
    buffer: Vec<u8>,
    ready: VecDeque<Vec<u8>>,
    finished: bool,
}

impl JsonValues {
    fn new(url: String, chunks: ChunkStream) -> JsonValues {
        JsonValues {
            url,
            chunks,
            buffer: Vec::new(),
            ready: VecDeque::new(),
            finished: false,
        }
    }

    fn into_stream<T: DeserializeOwned + Send + 'static>(
        self,
    ) -> impl Stream<Item = ClientResult<T>> + Send {
        futures_util::stream::unfold(self, |mut this| async move {
            let item = this.next_value::<T>().await?;
            if item.is_err() {
                this.finished = true;
                this.buffer.clear();
            }
            Some((item, this))
        })
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            url: self.url.clone(),
            reason,
        }
    }

    async fn next_value<T: DeserializeOwned>(&mut self) -> Option<ClientResult<T>> {
        loop {
            match split_values(&mut self.buffer) {
                Ok(values) => self.ready.extend(values),
                Err(e) => return Some(Err(self.protocol(format!("malformed JSON value: {e}")))),
            }
            if let Some(raw) = self.ready.pop_front() {
                return Some(
                    serde_json::from_slice(&raw)
                        .map_err(|e| self.protocol(format!("unexpected JSON value: {e}"))),
                );
            }
            if self.finished {
                if self.buffer.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
                self.buffer.clear();
                return Some(Err(self.protocol("stream ended inside a JSON value".into())));
            }
            match self.chunks.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(source)) => {
                    self.finished = true;
                    return Some(Err(ClientError::Transport {
                        url: self.url.clone(),
                        source,
                    }));
                }
                None => self.finished = true,
            }
        }
    }
}

/// Removes every complete JSON value from the front of `buffer` and returns their
/// bytes; an incomplete trailing value stays in `buffer`.
pub(super) fn split_values(buffer: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, serde_json::Error> {
    let mut values = Vec::new();
    let mut consumed = 0;
    {
        let mut iter =
            serde_json::Deserializer::from_slice(buffer).into_iter::<serde::de::IgnoredAny>();
        loop {
            let start = consumed;
            match iter.next() {
                Some(Ok(_)) => {
                    consumed = iter.byte_offset();
                    values.push(buffer[start..consumed].to_vec());
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(e),
                None => {
                    consumed = buffer.len();
                    break;
                }
            }
        }
    }
    buffer.drain(..consumed);
    Ok(values)
}
