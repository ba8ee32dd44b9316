//! Conventions shared by every typed client: base urls, error mapping, `GET /id/`, and
//! the [`ClientSecurity`] (trusted CAs, bearer token) every HTTP client is built with.

use std::path::Path;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::{ClientError, ClientResult, Id};

/// The [`read_json`] problem of an answer with nothing more specific to say.
pub(crate) const NOT_JSON: &str = "answer is not the expected JSON";

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
        request.send().await.map_err(transport(url))
    }

    /// Sends `request` to `url`, expecting a success status.
    pub async fn call(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> ClientResult<reqwest::Response> {
        let response = self.send(url, request).await?;
        expect_success(url, response).await
    }

    /// Like [`Endpoint::call`], but a 404 answer is `None`.
    pub async fn call_optional(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> ClientResult<Option<reqwest::Response>> {
        let response = self.send(url, request).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        expect_success(url, response).await.map(Some)
    }

    /// [`Endpoint::call`], then the answer's JSON body as a `T` (see [`read_json`] for
    /// `problem`).
    pub async fn call_json<T: DeserializeOwned>(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
        problem: &str,
    ) -> ClientResult<T> {
        let response = self.call(url, request).await?;
        read_json(url, response, problem).await
    }

    /// [`Endpoint::call_optional`], then the answer's JSON body as a `T`.
    pub async fn call_json_optional<T: DeserializeOwned>(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
        problem: &str,
    ) -> ClientResult<Option<T>> {
        match self.call_optional(url, request).await? {
            Some(response) => read_json(url, response, problem).await.map(Some),
            None => Ok(None),
        }
    }

    /// `GET path`, expecting a success with a JSON body of type `T`; `what` names the
    /// answer in the error when it does not decode.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str, what: &str) -> ClientResult<T> {
        let url = self.url(path);
        let request = self.http().get(&url);
        self.call_json(&url, request, &format!("{what} is not the expected JSON"))
            .await
    }

    /// The server's own id (`GET /id/`).
    pub async fn server_id(&self) -> ClientResult<Id> {
        let url = self.url("/id/");
        let response = self.call(&url, self.http.get(&url)).await?;
        let text = read_text(&url, response).await?;
        Id::parse(text.trim()).map_err(|e| ClientError::Protocol {
            url,
            reason: e.to_string(),
        })
    }
}

/// How a process's HTTP clients reach servers: certificate authorities trusted besides
/// the system roots, the bearer token sent with every request, and (only when asked
/// for by name) skipping certificate verification.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// PEM text of extra trusted CA certificates (each may hold several).
    pub ca_pems: Vec<Vec<u8>>,
    /// The capability token sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Accept any server certificate. Only `--insecure-skip-verify` sets this, and the
    /// programs that offer it print a warning.
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("ca_pems", &self.ca_pems.len())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// Environment variable naming a PEM file of extra trusted CAs.
pub const CA_CERT_ENV: &str = "INVARIANT_CA_CERT";
/// Environment variable holding a capability token.
pub const TOKEN_ENV: &str = "INVARIANT_TOKEN";
/// Environment variable naming a file that holds a capability token.
pub const TOKEN_FILE_ENV: &str = "INVARIANT_TOKEN_FILE";

impl ClientSecurity {
    /// Settings from the environment: `INVARIANT_CA_CERT` (a PEM file),
    /// `INVARIANT_TOKEN` or else `INVARIANT_TOKEN_FILE`.
    pub fn from_env() -> ClientResult<ClientSecurity> {
        let mut security = ClientSecurity::default();
        if let Some(path) = std::env::var_os(CA_CERT_ENV).filter(|p| !p.is_empty()) {
            security.add_ca_file(Path::new(&path))?;
        }
        if let Some(token) = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            security.token = Some(token.trim().to_string());
        } else if let Some(path) = std::env::var_os(TOKEN_FILE_ENV).filter(|p| !p.is_empty()) {
            security.token = Some(read_token_file(Path::new(&path))?);
        }
        Ok(security)
    }

    /// Trusts the CA certificates in the PEM file at `path` (besides the system roots).
    pub fn add_ca_file(&mut self, path: &Path) -> ClientResult<()> {
        let pem = std::fs::read(path).map_err(|e| {
            ClientError::InvalidConfig(format!("reading CA certificate {}: {e}", path.display()))
        })?;
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ClientError::InvalidConfig(format!("CA certificate {}: {e}", path.display()))
        })?;
        self.ca_pems.push(pem);
        Ok(())
    }

    /// An HTTP client with these settings (connect timeout 10 s, pooled).
    pub fn http_client(&self) -> ClientResult<reqwest::Client> {
        self.http_client_builder()?
            .build()
            .map_err(|e| ClientError::InvalidConfig(format!("building the HTTP client: {e}")))
    }

    /// A client builder with these settings (trusted CAs, bearer token, connect timeout
    /// 10 s, pooled), for callers that add their own (timeouts, redirect policy, DNS
    /// resolver) before building.
    pub fn http_client_builder(&self) -> ClientResult<reqwest::ClientBuilder> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(50));
        for pem in &self.ca_pems {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::InvalidConfig(format!("CA certificate: {e}")))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if self.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    ClientError::InvalidConfig("the token is not printable ASCII".into())
                })?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Ok(builder)
    }

    /// Makes these settings the process default used by [`default_http_client`] (and so
    /// by every client built with `XClient::new`). Programs call this once at start,
    /// after reading their options.
    pub fn install(self) {
        let lock = PROCESS_SECURITY.get_or_init(|| RwLock::new(None));
        if let Ok(mut slot) = lock.write() {
            *slot = Some(self);
        }
    }
}

/// Reads a token file (the token is its first non-empty line).
pub fn read_token_file(path: &Path) -> ClientResult<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::InvalidConfig(format!("reading token file {}: {e}", path.display()))
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            ClientError::InvalidConfig(format!("token file {} is empty", path.display()))
        })
}

static PROCESS_SECURITY: OnceLock<RwLock<Option<ClientSecurity>>> = OnceLock::new();

/// The process's client settings: what was [installed](ClientSecurity::install), else
/// the environment ([`ClientSecurity::from_env`]; unreadable settings are reported on
/// stderr once and ignored).
pub fn process_security() -> ClientSecurity {
    let lock = PROCESS_SECURITY.get_or_init(|| {
        let from_env = ClientSecurity::from_env().unwrap_or_else(|e| {
            eprintln!("warning: ignoring client settings from the environment: {e}");
            ClientSecurity::default()
        });
        RwLock::new(Some(from_env))
    });
    lock.read().ok().and_then(|s| s.clone()).unwrap_or_default()
}

/// The HTTP client a client builds when none is given: [`process_security`]'s
/// settings.
pub fn default_http_client() -> reqwest::Client {
    process_security()
        .http_client()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Turns a non-2xx response into [`ClientError::Status`] with the server's reason.
/// Reads a streamed answer line by line: each line ends with `\n` (a last line without
/// one counts too); a line longer than the limit is a protocol error.
pub(crate) struct LineReader {
    url: String,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    pending: bytes::BytesMut,
    ended: bool,
    max_line: usize,
}

impl LineReader {
    /// Lines of `response` (from `url`), each at most `max_line` bytes.
    pub(crate) fn new(url: &str, response: reqwest::Response, max_line: usize) -> LineReader {
        LineReader {
            url: url.to_string(),
            body: Box::pin(response.bytes_stream()),
            pending: bytes::BytesMut::new(),
            ended: false,
            max_line,
        }
    }

    /// The next line, with its `\n` if it had one; `None` at the end of the answer.
    pub(crate) async fn next_line(&mut self) -> ClientResult<Option<bytes::Bytes>> {
        use futures_util::StreamExt;
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                return Ok(Some(self.pending.split_to(at + 1).freeze()));
            }
            if self.ended {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.pending.split().freeze()));
            }
            if self.pending.len() > self.max_line {
                return Err(ClientError::Protocol {
                    url: self.url.clone(),
                    reason: format!("answer line over {} bytes", self.max_line),
                });
            }
            match self.body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|source| ClientError::Transport {
                        url: self.url.clone(),
                        source,
                    })?;
                    self.pending.extend_from_slice(&chunk);
                }
                None => self.ended = true,
            }
        }
    }
}

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

/// Reads a whole JSON body as a `T`. A body that does not arrive is a
/// [`ClientError::Transport`]; one that does not decode is a [`ClientError::Protocol`]
/// whose reason is `"{problem}: {decoding error}"`, e.g. with `problem` "status answer
/// is not the expected JSON".
pub async fn read_json<T: DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
    problem: &str,
) -> ClientResult<T> {
    let body = read_bytes(url, response).await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
        url: url.to_string(),
        reason: format!("{problem}: {e}"),
    })
}

/// Maps a failure to reach `url` or to read its answer.
pub(crate) fn transport(url: &str) -> impl FnOnce(reqwest::Error) -> ClientError + '_ {
    move |source| ClientError::Transport {
        url: url.to_string(),
        source,
    }
}

/// Reads a whole body, mapping failures.
pub async fn read_bytes(url: &str, response: reqwest::Response) -> ClientResult<bytes::Bytes> {
    response.bytes().await.map_err(transport(url))
}

/// Reads a whole text body, mapping failures.
pub async fn read_text(url: &str, response: reqwest::Response) -> ClientResult<String> {
    response.text().await.map_err(transport(url))
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

    /// A one-thread HTTP/1.1 server answering by path: `/json` 200 `[1,2]`, `/text`
    /// 200 `nope`, `/broken` 500 `broken`, anything else 404.
    async fn canned_server() -> Endpoint {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match socket.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/json" => ("200 OK", "[1,2]"),
                    "/text" => ("200 OK", "nope"),
                    "/broken" => ("500 Internal Server Error", "broken"),
                    _ => ("404 Not Found", "absent"),
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        Endpoint::new(&format!("http://{address}")).expect("endpoint")
    }

    fn status_of(error: &ClientError) -> Option<u16> {
        match error {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    #[tokio::test]
    async fn json_calls_map_404_failures_and_bad_bodies() {
        let endpoint = canned_server().await;
        let get = |path: &str| {
            let url = endpoint.url(path);
            (url.clone(), endpoint.http().get(url))
        };

        let (url, request) = get("/json");
        let found: Vec<u8> = endpoint.call_json(&url, request, "p").await.expect("json");
        assert_eq!(found, vec![1, 2]);

        let (url, request) = get("/json");
        let found: Option<Vec<u8>> = endpoint
            .call_json_optional(&url, request, "p")
            .await
            .expect("json");
        assert_eq!(found, Some(vec![1, 2]));

        let (url, request) = get("/missing");
        let absent: Option<Vec<u8>> = endpoint
            .call_json_optional(&url, request, "p")
            .await
            .expect("404 is None");
        assert_eq!(absent, None);

        let (url, request) = get("/missing");
        let error = endpoint
            .call_json::<Vec<u8>>(&url, request, "p")
            .await
            .expect_err("404 is an error without optional");
        assert_eq!(status_of(&error), Some(404));

        let (url, request) = get("/broken");
        let error = endpoint
            .call_optional(&url, request)
            .await
            .expect_err("500");
        assert_eq!(status_of(&error), Some(500));
        assert!(error.to_string().contains("broken"), "{error}");

        let (url, request) = get("/text");
        let error = endpoint
            .call_json_optional::<Vec<u8>>(&url, request, "list answer is not the expected JSON")
            .await
            .expect_err("not JSON");
        match error {
            ClientError::Protocol { reason, .. } => {
                assert!(
                    reason.starts_with("list answer is not the expected JSON: "),
                    "{reason}"
                );
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }

        let error = endpoint
            .get_json::<Vec<u8>>("/text", "list")
            .await
            .expect_err("not JSON");
        assert!(
            error
                .to_string()
                .contains("list is not the expected JSON: "),
            "{error}"
        );
    }
}
