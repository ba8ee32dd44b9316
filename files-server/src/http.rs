//! The files protocol's routes and handlers (`spec/files.md`), and the one mapping
//! from [`FilesError`] to HTTP statuses.
//!
//! Node path segments and the numeric query parameters (`offset`, `length`, `size`,
//! `newParent`, `node`) must be decimal non-negative integers, else 400. A name is one
//! percent-decoded path segment, checked by the file system (400 when invalid).

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::{StreamExt, stream};
use invariant_content::ContentError;
use invariant_runtime::{ApiError, ApiJson, ApiPath, ApiResult};
use invariant_spec::content::{ContentLink, EntryKind};
use invariant_spec::files::{Attributes, DirectoryEntry, Info, Node};

use crate::AppState;
use crate::error::FilesError;
use crate::fs::NewNode;

/// Every route [`router`] serves, as `(method, path)` (axum path syntax). Listed for
/// tools that compare a server with its OpenAPI description (`spec/openapi/`).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/files/mount"),
    ("POST", "/files/unmount/{node}"),
    ("GET", "/files/info/{node}"),
    ("GET", "/files/lookup/{node}/{name}"),
    ("GET", "/files/content/{node}"),
    ("GET", "/files/directory/{node}"),
    ("POST", "/files/attributes/{node}"),
    ("PUT", "/files/attributes/{node}"),
    ("PUT", "/files/size/{node}"),
    ("PUT", "/files/size/{node}/{size}"),
    ("PUT", "/files/rename/{node}/{name}"),
    ("PUT", "/files/link/{node}/{name}"),
    ("POST", "/files/remove/{node}/{name}"),
    ("PUT", "/files/sync"),
    ("GET", "/files/{node}"),
    ("POST", "/files/{node}"),
    ("PUT", "/files/{node}/{name}"),
];

/// Every files route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/files/mount", post(mount))
        .route("/files/unmount/{node}", post(unmount))
        .route("/files/info/{node}", get(info))
        .route("/files/lookup/{node}/{name}", get(lookup))
        .route("/files/content/{node}", get(content))
        .route("/files/directory/{node}", get(directory))
        .route("/files/attributes/{node}", post(attributes).put(attributes))
        .route("/files/size/{node}", put(size_query))
        .route("/files/size/{node}/{size}", put(size_path))
        .route("/files/rename/{node}/{name}", put(rename))
        .route("/files/link/{node}/{name}", put(link))
        .route("/files/remove/{node}/{name}", post(remove))
        .route("/files/sync", put(sync))
        .route("/files/{node}", get(read).post(write))
        .route("/files/{node}/{name}", put(create))
        .with_state(state)
}

/// The HTTP answer for `error`.
pub fn to_api_error(error: FilesError) -> ApiError {
    let reason = error.to_string();
    match &error {
        FilesError::UnknownNode(_)
        | FilesError::NotMount(_)
        | FilesError::NoEntry { .. }
        | FilesError::SlotNotFound(_) => ApiError::not_found(reason),
        FilesError::NotDirectory(_)
        | FilesError::NotFile(_)
        | FilesError::NoContent(_)
        | FilesError::Invalid(_) => ApiError::bad_request(reason),
        FilesError::Exists { .. } | FilesError::NotEmpty { .. } | FilesError::Conflict(_) => {
            ApiError::conflict(reason)
        }
        FilesError::ReadOnly(_) | FilesError::SlotRefused { .. } => ApiError::forbidden(reason),
        FilesError::TooLarge { .. } => ApiError::too_large(reason),
        FilesError::Link(source) => match source {
            ContentError::Missing { .. } => ApiError::not_found(reason),
            ContentError::Store { .. } => ApiError::unavailable(reason),
            ContentError::Io { .. } | ContentError::Task(_) => {
                ApiError::internal("reading a mounted link", &error)
            }
            _ => ApiError::bad_request(reason),
        },
        FilesError::Content(source) => match source {
            ContentError::Missing { .. }
            | ContentError::Store { .. }
            | ContentError::Corrupt { .. } => ApiError::unavailable(reason),
            ContentError::Io { .. }
            | ContentError::Input(_)
            | ContentError::Task(_)
            | ContentError::Config(_) => ApiError::internal("reading or writing content", &error),
            // The tree in storage is not what it should be.
            _ => ApiError::new(StatusCode::BAD_GATEWAY, reason),
        },
        FilesError::NoSlotsServer | FilesError::Slots(_) => ApiError::unavailable(reason),
        FilesError::Unrepresentable(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason),
        FilesError::Config(_) | FilesError::Io { .. } | FilesError::Internal(_) => {
            ApiError::internal("files request failed", &error)
        }
    }
}

fn fail(error: FilesError) -> ApiError {
    to_api_error(error)
}

/// The query string; malformed values are 400 with a reason naming the parameter.
#[derive(Debug)]
struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<HashMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Query(map)) => Ok(Params(map)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

impl Params {
    /// A present, non-empty value.
    fn text(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn number(&self, key: &str) -> ApiResult<Option<u64>> {
        self.text(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "{key} must be a decimal non-negative integer, got {v:?}"
                    ))
                })
            })
            .transpose()
    }

    fn required_number(&self, key: &str) -> ApiResult<u64> {
        self.number(key)?
            .ok_or_else(|| ApiError::bad_request(format!("{key} is required")))
    }

    fn flag(&self, key: &str) -> ApiResult<Option<bool>> {
        self.text(key)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(ApiError::bad_request(format!(
                    "{key} must be true or false, got {v:?}"
                ))),
            })
            .transpose()
    }
}

async fn mount(
    State(state): State<AppState>,
    params: Params,
    ApiJson(link): ApiJson<ContentLink>,
) -> ApiResult<Json<Node>> {
    let executable = params.flag("executable")?.unwrap_or(false);
    let writable = params.flag("writable")?;
    let root = state
        .fs()
        .mount(link, executable, writable)
        .await
        .map_err(fail)?;
    Ok(Json(root))
}

async fn unmount(
    State(state): State<AppState>,
    ApiPath(node): ApiPath<Node>,
) -> ApiResult<Json<ContentLink>> {
    Ok(Json(state.fs().unmount(node).await.map_err(fail)?))
}

async fn info(
    State(state): State<AppState>,
    ApiPath(node): ApiPath<Node>,
) -> ApiResult<Json<Info>> {
    Ok(Json(state.fs().info(node).await.map_err(fail)?))
}

async fn lookup(
    State(state): State<AppState>,
    ApiPath((node, name)): ApiPath<(Node, String)>,
) -> ApiResult<Json<Info>> {
    Ok(Json(state.fs().lookup(node, &name).await.map_err(fail)?))
}

async fn content(
    State(state): State<AppState>,
    ApiPath(node): ApiPath<Node>,
) -> ApiResult<Json<ContentLink>> {
    Ok(Json(state.fs().content(node).await.map_err(fail)?))
}

async fn directory(
    State(state): State<AppState>,
    ApiPath(node): ApiPath<Node>,
    params: Params,
) -> ApiResult<Json<Vec<DirectoryEntry>>> {
    let offset = params.number("offset")?.unwrap_or(0);
    let length = params.number("length")?;
    let entries = state
        .fs()
        .directory(node, offset, length)
        .await
        .map_err(fail)?;
    Ok(Json(entries))
}

async fn read(
    State(state): State<AppState>,
    ApiPath(node): ApiPath<Node>,
    params: Params,
) -> ApiResult<Response> {
    let offset = params.number("offset")?.unwrap_or(0);
    let length = params.number("length")?;
    let mut data = state.fs().read(node, offset, length).map_err(fail)?;
    // Failures before the first byte still get a status of their own.
    let first = match data.next().await {
        Some(Ok(bytes)) => Some(Ok(bytes)),
        Some(Err(e)) => return Err(fail(e)),
        None => None,
    };
    let body = Body::from_stream(stream::iter(first).chain(data));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

async fn write(
    State(state): State<AppState>,
    ApiPath(node): ApiPath<Node>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<u64>> {
    let offset = params.number("offset")?.unwrap_or(0);
    // A declared length lets a write past the size limit be refused before any byte.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    let written = state
        .fs()
        .write(node, offset, declared, body.into_data_stream())
        .await
        .map_err(fail)?;
    Ok(Json(written))
}

fn parse_kind(text: Option<&str>) -> ApiResult<EntryKind> {
    match text.map(str::to_ascii_lowercase).as_deref() {
        None | Some("file") => Ok(EntryKind::File),
        Some("directory") => Ok(EntryKind::Directory),
        Some("symboliclink") => Ok(EntryKind::SymbolicLink),
        Some(_) => Err(ApiError::bad_request(
            "kind must be File, Directory or SymbolicLink",
        )),
    }
}

async fn create(
    State(state): State<AppState>,
    ApiPath((node, name)): ApiPath<(Node, String)>,
    params: Params,
) -> ApiResult<Json<Node>> {
    let kind = parse_kind(params.text("kind"))?;
    let content = params
        .text("content")
        .map(|json| {
            serde_json::from_str::<ContentLink>(json)
                .map_err(|e| ApiError::bad_request(format!("content is not a content link: {e}")))
        })
        .transpose()?;
    let target = params.text("target").map(str::to_string);
    let new = NewNode {
        kind,
        content,
        target,
    };
    let created = state.fs().create(node, &name, new).await.map_err(fail)?;
    Ok(Json(created))
}

async fn attributes(
    State(state): State<AppState>,
    ApiPath(node): ApiPath<Node>,
    ApiJson(attributes): ApiJson<Attributes>,
) -> ApiResult<Json<Info>> {
    let info = state
        .fs()
        .set_attributes(node, attributes)
        .await
        .map_err(fail)?;
    Ok(Json(info))
}

async fn size_query(
    State(state): State<AppState>,
    ApiPath(node): ApiPath<Node>,
    params: Params,
) -> ApiResult<StatusCode> {
    let size = params.required_number("size")?;
    state.fs().set_size(node, size).await.map_err(fail)?;
    Ok(StatusCode::OK)
}

async fn size_path(
    State(state): State<AppState>,
    ApiPath((node, size)): ApiPath<(Node, u64)>,
) -> ApiResult<StatusCode> {
    state.fs().set_size(node, size).await.map_err(fail)?;
    Ok(StatusCode::OK)
}

async fn rename(
    State(state): State<AppState>,
    ApiPath((node, name)): ApiPath<(Node, String)>,
    params: Params,
) -> ApiResult<StatusCode> {
    let new_parent = params.required_number("newParent")?;
    let new_name = params
        .text("newName")
        .ok_or_else(|| ApiError::bad_request("newName is required"))?;
    state
        .fs()
        .rename(node, &name, new_parent, new_name)
        .await
        .map_err(fail)?;
    Ok(StatusCode::OK)
}

async fn link(
    State(state): State<AppState>,
    ApiPath((node, name)): ApiPath<(Node, String)>,
    params: Params,
) -> ApiResult<StatusCode> {
    let target = params.required_number("node")?;
    state.fs().link(node, &name, target).await.map_err(fail)?;
    Ok(StatusCode::OK)
}

async fn remove(
    State(state): State<AppState>,
    ApiPath((node, name)): ApiPath<(Node, String)>,
) -> ApiResult<StatusCode> {
    state.fs().remove(node, &name).await.map_err(fail)?;
    Ok(StatusCode::OK)
}

async fn sync(State(state): State<AppState>, params: Params) -> ApiResult<StatusCode> {
    if params.0.get("root").is_some_and(String::is_empty) {
        // `?root=` names no mount: refused rather than read as "every mount".
        return Err(ApiError::bad_request(
            "root must be a decimal non-negative integer, got \"\"",
        ));
    }
    match params.number("root")? {
        Some(root) => state.fs().sync_root(root).await.map_err(fail)?,
        None => state.fs().sync().await.map_err(fail)?,
    }
    Ok(StatusCode::OK)
}
