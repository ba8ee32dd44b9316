//! The machinery every check uses: the run context ([`Ctx`]), a collected HTTP answer
//! ([`Resp`]), verdicts and small assertion helpers.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use invariant_spec::Id;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};

use crate::Role;
use crate::helper::Helper;
use crate::profile::Profile;

pub(crate) use crate::verdict::{Fail, Outcome, Verdict, Warnings, ensure, fail};
pub(crate) use crate::verdict::{body_excerpt, id_list};

/// A boxed check future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A check: reads the context, talks to the server, returns a verdict.
pub(crate) type CheckFn = for<'a> fn(&'a Ctx) -> BoxFuture<'a, Verdict>;

/// One check of the suite.
#[derive(Clone, Copy)]
pub(crate) struct CheckDef {
    /// Unique id (the `--only` key), usually equal to the anchor.
    pub(crate) id: &'static str,
    /// The spec document, relative to `spec/`.
    pub(crate) doc: &'static str,
    /// The anchor of the rule in that document.
    pub(crate) anchor: &'static str,
    /// What it checks.
    pub(crate) title: &'static str,
    /// The smallest profile that holds servers to this rule.
    pub(crate) profile: Profile,
    /// The check itself.
    pub(crate) run: CheckFn,
}

impl std::fmt::Debug for CheckDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckDef").field("id", &self.id).finish()
    }
}

/// A whole HTTP answer.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Resp {
    /// A header's value as text, if present and visible ASCII.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The media type without parameters, lowercase.
    pub(crate) fn media_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }

    /// `"<status> <body excerpt>"`, for messages: short text is quoted, anything
    /// else is shown as its length and a hex excerpt.
    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.status, body_excerpt(&self.body))
    }

    /// The body parsed as JSON.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Fail> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Fail(format!(
                "answer is not the expected JSON ({e}): {}",
                self.describe()
            ))
        })
    }

    /// Fails unless the status is `expected`.
    pub(crate) fn expect(&self, expected: u16, what: &str) -> Result<(), Fail> {
        if self.status == expected {
            Ok(())
        } else {
            Err(Fail(format!(
                "{what}: expected {expected}, got {}",
                self.describe()
            )))
        }
    }
}

/// The verdict on the answer to a request with a malformed id or name in its path
/// (`common-malformed-id`): 400 passes; 404 and other 4xx are tolerated with a warning;
/// anything else fails.
pub(crate) fn malformed_answer(resp: &Resp, what: &str) -> Verdict {
    match resp.status {
        400 => Ok(Outcome::Pass),
        404 => Ok(Outcome::Warn(format!(
            "{what}: 404 for a malformed id (400 is preferred)"
        ))),
        s if (400..500).contains(&s) => Ok(Outcome::Warn(format!(
            "{what}: {s} for malformed input (400 is preferred)"
        ))),
        _ => Err(Fail(format!(
            "{what}: expected 400, got {}",
            resp.describe()
        ))),
    }
}

/// The verdict on the answer to a malformed body: 400 passes; 413 and 422 and other
/// 4xx are tolerated with a warning (404 too, for an id that cannot exist); anything
/// else fails.
pub(crate) fn rejected_answer(resp: &Resp, what: &str) -> Verdict {
    match resp.status {
        400 => Ok(Outcome::Pass),
        s if (400..500).contains(&s) => {
            Ok(Outcome::Warn(format!("{what}: {s} (400 is preferred)")))
        }
        _ => Err(Fail(format!(
            "{what}: expected 400, got {}",
            resp.describe()
        ))),
    }
}

/// Fails unless `text` is exactly 64 lowercase hex characters (after trimming white
/// space); returns the id.
pub(crate) fn lowercase_id(text: &str, what: &str) -> Result<Id, Fail> {
    let trimmed = text.trim();
    let id = Id::parse(trimmed).map_err(|e| Fail(format!("{what}: {e}: {trimmed:?}")))?;
    ensure!(
        trimmed == id.to_string(),
        "{what}: ids are emitted in lowercase, got {trimmed:?}"
    );
    Ok(id)
}

/// Everything a check needs: the server, HTTP clients, the suite's helper server and
/// the run's options.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The role under test.
    pub(crate) role: Role,
    pub(crate) base: String,
    /// Sends the run's token (if any) with every request.
    pub(crate) http: reqwest::Client,
    /// Trusts the same CAs but sends no token (for the authorization checks).
    pub(crate) anon: reqwest::Client,
    /// The run's token: the auth checks run only with one.
    pub(crate) token: Option<String>,
    /// The server requires tokens for reads too (`--auth-reads`).
    pub(crate) auth_reads: bool,
    pub(crate) timeout: Duration,
    pub(crate) helper: Helper,
    pub(crate) max_blob_size: Option<u64>,
}

impl Ctx {
    /// `base + path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request to `path` with the per-request timeout.
    pub(crate) fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .timeout(self.timeout)
    }

    /// Like [`Ctx::req`], but without the run's token.
    pub(crate) fn anon_req(&self, method: Method, path: &str) -> RequestBuilder {
        self.anon
            .request(method, self.url(path))
            .timeout(self.timeout)
    }

    /// Sends `request` and collects the whole answer.
    pub(crate) async fn call(&self, request: RequestBuilder) -> Result<Resp, Fail> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Resp, Fail> {
        self.call(self.req(Method::GET, path)).await
    }

    /// `GET path` right after the server refused a request by closing its connection:
    /// a pooled connection may be the closed one, so a request that meets a closed
    /// connection is sent once more.
    pub(crate) async fn get_after_refusal(&self, path: &str) -> Result<Resp, Fail> {
        match self.get(path).await {
            Err(Fail(text)) if closed_while_sending(&text) => self.get(path).await,
            other => other,
        }
    }

    pub(crate) async fn head(&self, path: &str) -> Result<Resp, Fail> {
        self.call(self.req(Method::HEAD, path)).await
    }

    /// `method path` with a raw body.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<Resp, Fail> {
        self.call(self.req(method, path).body(body)).await
    }

    /// `method path` with a body the server may refuse to read: `None` when the server
    /// closed the connection before answering, which HTTP allows for a request it
    /// will not take (RFC 9110 §15.5.14: it may close the connection to stop the
    /// client from sending the rest). Whether the server answered 413 first or closed
    /// at once is then a race of the two ends, so the check must look at the effect.
    pub(crate) async fn send_refusable(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<Option<Resp>, Fail> {
        match self.send(method, path, body).await {
            Ok(resp) => Ok(Some(resp)),
            Err(Fail(text)) if closed_while_sending(&text) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// `method path` with a JSON body.
    pub(crate) async fn json<T: serde::Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &T,
    ) -> Result<Resp, Fail> {
        let bytes = serde_json::to_vec(body).map_err(|e| Fail(e.to_string()))?;
        self.call(
            self.req(method, path)
                .header("content-type", "application/json")
                .body(bytes),
        )
        .await
    }
}

/// Whether a client error says the server closed the connection while the request was
/// still being sent.
fn closed_while_sending(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "connection closed before message completed",
        "connection reset",
        "broken pipe",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// A random blob of `len` bytes whose address has never been seen.
pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rand::fill(&mut out[..]);
    out
}

/// A fresh random id.
pub(crate) fn random_id() -> Id {
    Id::random()
}

/// `id` in upper case.
pub(crate) fn upper(id: &Id) -> String {
    id.to_string().to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::closed_while_sending;

    #[test]
    fn a_connection_closed_mid_request_is_told_from_other_errors() {
        assert!(closed_while_sending(
            "error sending request: client error (SendRequest): connection closed before message completed"
        ));
        assert!(closed_while_sending(
            "error sending request: Connection reset by peer (os error 104)"
        ));
        assert!(!closed_while_sending(
            "error sending request: operation timed out"
        ));
        assert!(!closed_while_sending(
            "error sending request: Connection refused (os error 111)"
        ));
    }
}
