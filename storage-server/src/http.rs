//! The storage protocol's routes and handlers.
//!
//! | route | answer |
//! |---|---|
//! | `GET /storage/:address` | 200 blob (or 206 with `Range`, 304 with `If-None-Match`), 404 |
//! | `HEAD /storage/:address` | 200 with `Content-Length` and `ETag`, 404 |
//! | `PUT /storage/:address` | 200 when the body hashes to the address, 400 otherwise, 413 too large or over quota |
//! | `POST /storage/` | 200 `text/plain` address, 413 |
//! | `HEAD /storage/fetch` | 200 when a broker is configured, else 404 |
//! | `PUT\|POST /storage/fetch` | JSON `{address, container}`: copy from a peer; 200, 404, 413 over quota |
//! | `DELETE /storage/:address` | 204 deleted, 404 not held, 400 bad address, 403 in open mode without `--allow-open-delete` |
//! | `POST /storage/delete` | JSON array of at most 10,000 addresses: 200 JSON `{deleted, missing, bytes}`, 400, 413 |
//! | `GET /storage/?after=&limit=` | 200 JSON `{blobs: [{address, size}], next}`, ascending by address |
//!
//! Writes carry the caller the runtime verified (with token checks on); each blob a
//! write stores first is charged to the caller's subject ([`crate::usage`]). Fetches
//! reach peers only through [`crate::peer::Peers`]. Deletes are reported to find
//! servers (`PUT /find/gone/`) through [`crate::report`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::RawQuery;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use invariant_runtime::{ApiError, ApiJson, ApiPath, ApiResult, Caller};
use invariant_spec::Id;
use invariant_spec::storage::{DeleteReport, FetchRequest, ListPage, ListedBlob, MAX_DELETE_BATCH};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::AppState;
use crate::range;
use crate::store::{BlobBody, BlobRead, Opened, StoreError};
use crate::usage::Payer;

/// Chunk size when streaming larger blobs from disk.
const STREAM_CHUNK: usize = 256 * 1024;
/// `Cache-Control` for immutable content.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// Every route [`router`] serves, as `(method, path)` (axum path syntax). Listed for
/// tools that compare a server with its OpenAPI description (`spec/openapi/`).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/storage"),
    ("POST", "/storage"),
    ("POST", "/storage/delete"),
    ("HEAD", "/storage/fetch"),
    ("PUT", "/storage/fetch"),
    ("POST", "/storage/fetch"),
    ("GET", "/storage/{address}"),
    ("HEAD", "/storage/{address}"),
    ("PUT", "/storage/{address}"),
    ("DELETE", "/storage/{address}"),
];

/// Blobs per listing page when the request names no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// Most blobs per listing page (a larger `limit` is answered with this many).
pub const MAX_LIST_LIMIT: usize = 10_000;

/// Every storage route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/storage", post(post_blob).get(list_blobs))
        .route("/storage/delete", post(delete_blobs))
        .route(
            "/storage/fetch",
            head(fetch_supported).put(fetch_blob).post(fetch_blob),
        )
        .route(
            "/storage/{address}",
            get(get_blob)
                .head(head_blob)
                .put(put_blob)
                .delete(delete_blob),
        )
        .with_state(state)
}

fn blob_headers(headers: &mut HeaderMap, id: &Id) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(tag) = HeaderValue::from_str(&range::etag(id)) {
        headers.insert(header::ETAG, tag);
    }
}

fn not_found(id: &Id) -> ApiError {
    ApiError::not_found(format!("blob {id} is not held here"))
}

async fn blocking<T, E, F>(context: &'static str, f: F) -> ApiResult<T>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ApiError::internal(context, e)),
        Err(e) => Err(ApiError::internal(context, e)),
    }
}

async fn head_blob(State(state): State<AppState>, ApiPath(id): ApiPath<Id>) -> ApiResult<Response> {
    let store = state.store().clone();
    let size = blocking("reading blob size", move || store.size(&id)).await?;
    let Some(size) = size else {
        return Err(not_found(&id));
    };
    let mut response = Response::new(Body::empty());
    blob_headers(response.headers_mut(), &id);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

async fn get_blob(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Id>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if range::not_modified(&headers, &id) {
        return not_modified(&state, id).await;
    }
    let range = range::requested(&headers, &id);
    let store = state.store().clone();
    match blocking("reading blob", move || store.read(&id, range)).await? {
        None => Err(not_found(&id)),
        Some(Opened::Unsatisfiable { size }) => Ok(range_not_satisfiable(size)),
        Some(Opened::Content(read)) => Ok(blob_response(&id, read)),
    }
}

/// The 304 of a GET whose `If-None-Match` names the blob (404 when it is not held).
async fn not_modified(state: &AppState, id: Id) -> ApiResult<Response> {
    let store = state.store().clone();
    let present = blocking("checking blob", move || store.size(&id)).await?;
    if present.is_none() {
        return Err(not_found(&id));
    }
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    blob_headers(response.headers_mut(), &id);
    response.headers_mut().remove(header::CONTENT_TYPE);
    Ok(response)
}

/// The 416 of a range outside a blob of `size` bytes.
fn range_not_satisfiable(size: u64) -> Response {
    let mut response = ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        format!("range outside the blob's {size} bytes"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    response
}

/// The 200 (whole blob) or 206 (a range of it) carrying what the store read.
fn blob_response(id: &Id, read: BlobRead) -> Response {
    let count = read.body.len();
    let body = match read.body {
        BlobBody::Bytes(data) => Body::from(data),
        BlobBody::File { file, len } => {
            let file = tokio::fs::File::from_std(file).take(len);
            Body::from_stream(ReaderStream::with_capacity(file, STREAM_CHUNK))
        }
    };
    let mut response = Response::new(body);
    blob_headers(response.headers_mut(), id);
    if let Some(range) = read.range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let content_range = format!("bytes {}-{}/{}", range.start(), range.end(), read.size);
        if let Ok(v) = HeaderValue::from_str(&content_range) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    response
}

fn declared_length(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("Content-Length is not a number")),
    }
}

/// Who pays for a write: the verified caller (none in open mode).
fn payer(caller: Option<Extension<Arc<Caller>>>) -> Option<Payer> {
    caller.map(|Extension(caller)| Payer {
        subject: caller.subject.clone(),
        quota: caller.quota,
    })
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::TooLarge { .. }
        | StoreError::DeclaredTooLarge { .. }
        | StoreError::Quota(_) => ApiError::too_large(e.to_string()),
        StoreError::HashMismatch { expected, actual } => ApiError::bad_request(format!(
            "body hashes to {actual}, not to the address {expected}"
        )),
        StoreError::Body(_) | StoreError::Incomplete => ApiError::bad_request(e.to_string()),
        other => ApiError::internal("writing blob", other),
    }
}

/// After a 413, reads and discards at most this much of the rest of the upload ...
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// ... for at most this long.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Passes `result` through; when it is a 413, first drains the unread rest of the body
/// (bounded by [`DRAIN_LIMIT`] and [`DRAIN_TIME`]). An HTTP/1 client still sending its
/// body when the server closes the connection sees a reset, not the 413. A client that
/// sent `Expect: 100-continue` was not told to continue and is not drained.
async fn drain_if_too_large<T>(
    result: ApiResult<T>,
    headers: &HeaderMap,
    body: &mut BodyDataStream,
) -> ApiResult<T> {
    let expects_continue = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if let Err(e) = &result
        && e.status() == StatusCode::PAYLOAD_TOO_LARGE
        && !expects_continue
    {
        let mut drained = 0u64;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while drained <= DRAIN_LIMIT {
                match body.next().await {
                    Some(Ok(chunk)) => drained += chunk.len() as u64,
                    _ => break,
                }
            }
        })
        .await;
    }
    result
}

/// Receives a PUT or POST body into the store (verified against `expected` when
/// given), draining the rest of a refused upload so its client sees the 413.
async fn receive_upload(
    state: &AppState,
    caller: Option<Extension<Arc<Caller>>>,
    headers: &HeaderMap,
    body: Body,
    expected: Option<Id>,
) -> ApiResult<Id> {
    let declared = declared_length(headers)?;
    let payer = payer(caller);
    let mut body = body.into_data_stream();
    let result = state
        .store()
        .receive(&mut body, declared, expected, payer.as_ref())
        .await
        .map_err(store_error);
    let id = drain_if_too_large(result, headers, &mut body).await?;
    state.report_added(id);
    Ok(id)
}

async fn put_blob(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Id>,
    caller: Option<Extension<Arc<Caller>>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    receive_upload(&state, caller, &headers, body, Some(id)).await?;
    Ok(StatusCode::OK.into_response())
}

async fn post_blob(
    State(state): State<AppState>,
    caller: Option<Extension<Arc<Caller>>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let id = receive_upload(&state, caller, &headers, body, None).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        id.to_string(),
    )
        .into_response())
}

async fn fetch_supported(State(state): State<AppState>) -> StatusCode {
    if state.broker().is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

/// Copies a blob from the container the broker knows, through [`crate::peer::Peers`]:
/// only its registered http/https urls, inside `--peer-allow`, after `GET /id`
/// answered the container's id, following no redirect.
async fn fetch_blob(
    State(state): State<AppState>,
    caller: Option<Extension<Arc<Caller>>>,
    ApiJson(request): ApiJson<FetchRequest>,
) -> ApiResult<Response> {
    let payer = payer(caller);
    let Some(broker) = state.broker() else {
        return Err(ApiError::not_found(
            "this server has no broker to fetch through",
        ));
    };
    let FetchRequest { address, container } = request;
    let store = state.store().clone();
    if blocking("checking blob", move || store.size(&address))
        .await?
        .is_some()
    {
        return Ok(StatusCode::OK.into_response());
    }
    let location = broker.location(&container).await.map_err(|e| {
        tracing::warn!(%container, error = %e, "broker lookup failed");
        ApiError::not_found(format!("cannot resolve container {container}: {e}"))
    })?;
    let Some(location) = location else {
        return Err(ApiError::not_found(format!(
            "the broker does not know container {container}"
        )));
    };
    let mut last_problem = format!("container {container} has no urls");
    for url in location.all_urls() {
        let client = match state.peers().storage(&url, &container).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%container, url, error = %e, "not fetching from a url");
                last_problem = e.to_string();
                continue;
            }
        };
        match client.get(&address).await {
            Ok(Some(stream)) => {
                // The store verifies the hash; the client stream verifies it too.
                let received = state
                    .store()
                    .receive(stream, None, Some(address), payer.as_ref())
                    .await
                    .map_err(store_error);
                match received {
                    Ok(_) => {
                        state.report_added(address);
                        return Ok(StatusCode::OK.into_response());
                    }
                    Err(e)
                        if e.status().is_server_error()
                            || e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                    {
                        return Err(e);
                    }
                    Err(e) => last_problem = e.reason().to_string(),
                }
            }
            Ok(None) => last_problem = format!("container {container} does not hold {address}"),
            Err(e) => last_problem = e.to_string(),
        }
    }
    Err(ApiError::not_found(format!(
        "could not fetch {address}: {last_problem}"
    )))
}

/// The 403 of a delete on a server that does not serve them.
fn deletes_refused() -> ApiError {
    ApiError::forbidden(
        "deleting is off: this server checks no tokens (open mode); start it with \
         --auth-root-key (deletes then need a storage:delete token) or with \
         --allow-open-delete",
    )
}

/// `DELETE /storage/:address`: 204 when the blob was deleted, 404 when not held.
async fn delete_blob(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Id>,
) -> ApiResult<Response> {
    if !state.deletes_allowed() {
        return Err(deletes_refused());
    }
    let store = state.store().clone();
    let deleted = blocking("deleting blob", move || store.delete(&id)).await?;
    if deleted.is_none() {
        return Err(not_found(&id));
    }
    state.report_gone(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /storage/delete`: deletes every held blob of a JSON array of addresses, with
/// one index commit; answers a [`DeleteReport`].
async fn delete_blobs(
    State(state): State<AppState>,
    body: Result<ApiJson<Vec<Id>>, ApiError>,
) -> ApiResult<Response> {
    // Refused in open mode whatever the body.
    if !state.deletes_allowed() {
        return Err(deletes_refused());
    }
    let ApiJson(addresses) = body?;
    if addresses.len() > MAX_DELETE_BATCH {
        return Err(ApiError::too_large(format!(
            "{} addresses in one batch; at most {MAX_DELETE_BATCH} are accepted",
            addresses.len()
        )));
    }
    let mut unique = addresses;
    unique.sort_unstable();
    unique.dedup();
    let asked = unique.len() as u64;
    let store = state.store().clone();
    let deleted = blocking("deleting blobs", move || store.delete_many(&unique)).await?;
    for (id, _) in &deleted {
        state.report_gone(*id);
    }
    let report = DeleteReport {
        deleted: deleted.len() as u64,
        missing: asked - deleted.len() as u64,
        bytes: deleted.iter().map(|(_, len)| len).sum(),
    };
    Ok(Json(report).into_response())
}

/// The `after` and `limit` of a listing request.
fn list_query(query: Option<&str>) -> ApiResult<(Option<Id>, usize)> {
    let mut after = None;
    let mut limit = DEFAULT_LIST_LIMIT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" if !value.is_empty() => {
                after =
                    Some(Id::parse(value).map_err(|e| {
                        ApiError::bad_request(format!("after is not an address: {e}"))
                    })?);
            }
            "after" => {}
            "limit" => {
                let n: usize = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("limit {value:?} is not a number"))
                })?;
                if n == 0 {
                    return Err(ApiError::bad_request("limit must be at least 1"));
                }
                limit = n.min(MAX_LIST_LIMIT);
            }
            _ => {}
        }
    }
    Ok((after, limit))
}

/// `GET /storage/?after=<address>&limit=<n>`: held blobs in ascending address order.
async fn list_blobs(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let (after, limit) = list_query(query.as_deref())?;
    let store = state.store().clone();
    let page = blocking("listing blobs", move || store.page(after, limit)).await?;
    let next = if page.len() >= limit {
        page.last().map(|(id, _)| *id)
    } else {
        None
    };
    let page = ListPage {
        blobs: page
            .into_iter()
            .map(|(address, size)| ListedBlob { address, size })
            .collect(),
        next,
    };
    Ok(Json(page).into_response())
}
