//! The productions protocol's routes and handlers.
//!
//! | route | answer |
//! |---|---|
//! | `PUT /production/:task/:input?output=:address` | 200 (recorded, durably); 400 malformed id or missing `output` |
//! | `GET /production/:task/:input` | 200 `text/plain` output address; 404 none recorded; 400 malformed id |
//!
//! Recording a different output for a known task and input replaces it (last write
//! wins, as in the reference); the replacement is logged because it means the task is
//! not deterministic.

use std::collections::HashMap;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use invariant_runtime::{ApiError, ApiPath, ApiResult, blocking};
use invariant_spec::Id;

use crate::AppState;
use crate::store::PutOutcome;

/// Every route [`router`] serves, as `(method, path)` (axum path syntax). Listed for
/// tools that compare a server with its OpenAPI description (`spec/openapi/`).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/production/{task}/{input}"),
    ("PUT", "/production/{task}/{input}"),
];

/// Every productions route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/production/{task}/{input}",
            get(get_production).put(put_production),
        )
        .with_state(state)
}

async fn get_production(
    State(state): State<AppState>,
    ApiPath((task, input)): ApiPath<(Id, Id)>,
) -> ApiResult<Response> {
    let store = state.store().clone();
    let output = blocking("reading a production", move || store.get(&task, &input)).await?;
    match output {
        Some(output) => Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            output.to_string(),
        )
            .into_response()),
        None => Err(ApiError::not_found(format!(
            "no production recorded for task {task} and input {input}"
        ))),
    }
}

async fn put_production(
    State(state): State<AppState>,
    ApiPath((task, input)): ApiPath<(Id, Id)>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) =
        query.map_err(|e| ApiError::bad_request(format!("malformed query: {e}")))?;
    let output = params
        .get("output")
        .ok_or_else(|| ApiError::bad_request("missing query parameter `output`"))?;
    let output = Id::parse(output.trim())
        .map_err(|e| ApiError::bad_request(format!("query parameter `output`: {e}")))?;
    let store = state.store().clone();
    let outcome = blocking("recording a production", move || {
        store.put(&task, &input, &output)
    })
    .await?;
    if let PutOutcome::Replaced { previous } = outcome {
        tracing::warn!(%task, %input, %previous, %output, "production replaced by a different output");
    }
    Ok(().into_response())
}
