//! A productions server that implements only the `core` profile of
//! `spec/productions.md`: outputs recorded by `PUT ?output=` and read as text, the last
//! recording winning; lowercase ids only. Its defective variant loses every recording
//! after the first for the same task and input.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use invariant_spec::Id;
use tokio::sync::Notify;

use super::{Answer, Refusal, id_routes, plain, refuse, serve, strict_id};

#[derive(Clone)]
struct Productions {
    outputs: Arc<Mutex<HashMap<(Id, Id), Id>>>,
    /// The defect switch: true keeps the first output recorded and drops the others.
    first_wins: bool,
}

/// `:task` and `:input` of the path; malformed ones are refused with 400.
fn key(task: &str, input: &str) -> Result<(Id, Id), Refusal> {
    match (strict_id(task), strict_id(input)) {
        (Some(task), Some(input)) => Ok((task, input)),
        _ => Err(refuse(StatusCode::BAD_REQUEST, "malformed task or input")),
    }
}

async fn read(
    State(productions): State<Productions>,
    Path((task, input)): Path<(String, String)>,
) -> Answer {
    let key = key(&task, &input)?;
    let output = productions
        .outputs
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
        .copied();
    match output {
        Some(output) => Ok(plain(format!("{output}\n"))),
        None => Err(refuse(StatusCode::NOT_FOUND, "no output recorded")),
    }
}

async fn record(
    State(productions): State<Productions>,
    Path((task, input)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let key = key(&task, &input)?;
    let output = query
        .get("output")
        .and_then(|o| strict_id(o))
        .ok_or(refuse(StatusCode::BAD_REQUEST, "output must be an address"))?;
    let mut outputs = productions
        .outputs
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if productions.first_wins {
        outputs.entry(key).or_insert(output);
    } else {
        outputs.insert(key, output);
    }
    Ok(plain(String::new()))
}

async fn start(first_wins: bool) -> String {
    let productions = Productions {
        outputs: Arc::default(),
        first_wins,
    };
    let app = id_routes()
        .route("/production/{task}/{input}", get(read).put(record))
        .route("/production/{task}/{input}/", get(read).put(record))
        .with_state(productions);
    serve(app, Arc::new(Notify::new())).await
}

/// A productions server that does exactly what the `core` profile asks.
pub async fn core() -> String {
    start(false).await
}

/// The core productions server, except that a recording for a task and input that
/// already have an output is answered 200 and lost.
pub async fn losing_replacements() -> String {
    start(true).await
}
