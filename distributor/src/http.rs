//! The distributor protocol's routes and handlers.
//!
//! | route | answer |
//! |---|---|
//! | `PUT /distributor/pin` | 200; 400 malformed body; 413 too many ids |
//! | `PUT /distributor/unpin` | 200; 409 when the caller would go below zero pins of a block (nothing applied) |
//! | `PUT /distributor/register/storage` | 200 |
//! | `PUT /distributor/unregister/storage` | 200; 409 below zero (nothing applied) |
//! | `POST /distributor/blocks` | 200 JSON `[{block, storages}]`, streamed |
//! | `GET /distributor/status` | 200 JSON status; with `pins_by_subject` for a `distributor:admin` caller |
//! | `GET /distributor/gc` | 200 JSON garbage-collection status |
//! | `POST /distributor/gc[?dry_run=true]` | 200 NDJSON: progress lines, then the sweep's report (`distributor:admin`) |
//!
//! The same routes answer under `/distribute/` (the reference docs' spelling). Bodies
//! are id lists parsed as they stream in ([`crate::body`]); a body is applied only
//! after it parsed completely, in one durable transaction.
//!
//! Pins belong to the caller: the subject of the request's verified token, or the
//! anonymous subject `""` in open mode (no token checks, so every caller is the same
//! subject and pins behave as they always did). An unpin takes pins only from the
//! caller's own count of each block. In auth mode the runtime has already refused
//! requests without a token (401) or without `distributor:pin` (403).

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::StreamExt;
use invariant_runtime::{ApiError, ApiResult, Caller, Role};
use invariant_spec::Id;
use invariant_spec::distributor::{
    BlockPlacement, DistributorStatus, GcEvent, GcStatus, SubjectPins,
};
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

use crate::body::read_ids;
use crate::placement::nearest;
use crate::state::{BlockingError, Core};
use crate::store::{ANONYMOUS, BelowZero};

/// Ids answered per store read in `POST /distributor/blocks`.
const BLOCKS_CHUNK: usize = 1024;

/// Every distributor route, under `/distributor/` and `/distribute/`.
pub(crate) fn router(core: Arc<Core>) -> Router {
    let routes = Router::new()
        .route("/pin", put(pin))
        .route("/unpin", put(unpin))
        .route("/register/storage", put(register))
        .route("/unregister/storage", put(unregister))
        .route("/blocks", post(blocks))
        .route("/status", get(status))
        .route("/gc", get(gc_status).post(gc_run));
    Router::new()
        .nest("/distributor", routes.clone())
        .nest("/distribute", routes)
        .with_state(core)
}

fn internal(context: &str) -> impl FnOnce(BlockingError) -> ApiError + '_ {
    move |e| ApiError::internal(context, e)
}

fn below_zero(what: &str, counted: &str, below: BelowZero) -> ApiError {
    ApiError::conflict(format!(
        "{what} {} has {} {counted} and cannot lose {}; nothing was changed",
        below.id, below.have, below.asked
    ))
}

async fn ids(core: &Core, body: Body) -> ApiResult<Vec<Id>> {
    Ok(read_ids(body, core.config.max_ids_per_request).await?)
}

/// Whose pins a request changes: the token's subject, or anonymous in open mode.
fn subject(caller: &Option<Extension<Arc<Caller>>>) -> String {
    match caller {
        Some(Extension(caller)) => caller.subject.clone(),
        None => ANONYMOUS.to_string(),
    }
}

async fn pin(
    State(core): State<Arc<Core>>,
    caller: Option<Extension<Arc<Caller>>>,
    body: Body,
) -> ApiResult<StatusCode> {
    let subject = subject(&caller);
    let blocks = ids(&core, body).await?;
    // In a task of its own: a caller that goes away cannot drop the write lock
    // between the commit and its effects (the repair queue, a sweep's confirmation).
    let task = Arc::clone(&core);
    core.tasks
        .spawn(async move { apply_pin(&task, subject, blocks).await })
        .await
        .map_err(|e| ApiError::internal("recording pins", e))?
}

async fn apply_pin(core: &Core, subject: String, blocks: Vec<Id>) -> ApiResult<StatusCode> {
    let _writes = core.writes.lock().await;
    let store = core.store.clone();
    let added = core
        .blocking(move || store.pin(&subject, &blocks))
        .await
        .map_err(internal("recording pins"))?;
    core.stats.pinned.store(added.total, Ordering::Relaxed);
    if !added.new.is_empty() {
        core.refresh_gc()
            .await
            .map_err(internal("reading collection totals"))?;
        if let Some(backup) = &core.backup {
            backup.wake.notify_one();
        }
    }
    if core.members.active().ids.is_empty() {
        core.work.stall(added.new);
    } else {
        core.work.enqueue(added.new);
    }
    core.publish();
    Ok(StatusCode::OK)
}

async fn unpin(
    State(core): State<Arc<Core>>,
    caller: Option<Extension<Arc<Caller>>>,
    body: Body,
) -> ApiResult<StatusCode> {
    let subject = subject(&caller);
    let counted = if caller.is_some() {
        "pin(s) of yours"
    } else {
        "pin(s)"
    };
    let blocks = ids(&core, body).await?;
    // In a task of its own, like a pin.
    let task = Arc::clone(&core);
    core.tasks
        .spawn(async move { apply_unpin(&task, subject, counted, blocks).await })
        .await
        .map_err(|e| ApiError::internal("removing pins", e))?
}

async fn apply_unpin(
    core: &Core,
    subject: String,
    counted: &'static str,
    blocks: Vec<Id>,
) -> ApiResult<StatusCode> {
    let _writes = core.writes.lock().await;
    let store = core.store.clone();
    let removed = core
        .blocking(move || store.unpin(&subject, &blocks))
        .await
        .map_err(internal("removing pins"))?
        .map_err(|below| below_zero("block", counted, below))?;
    core.stats.pinned.store(removed.total, Ordering::Relaxed);
    core.work.forget(&removed.released);
    if !removed.released.is_empty() {
        core.refresh_gc()
            .await
            .map_err(internal("reading collection totals"))?;
    }
    core.publish();
    Ok(StatusCode::OK)
}

async fn register(State(core): State<Arc<Core>>, body: Body) -> ApiResult<StatusCode> {
    let storages = ids(&core, body).await?;
    let _writes = core.writes.lock().await;
    let store = core.store.clone();
    let added = core
        .blocking(move || store.register(&storages))
        .await
        .map_err(internal("recording storage registrations"))?;
    core.stats.registered.store(added.total, Ordering::Relaxed);
    if !added.new.is_empty() {
        core.members.add_registered(&added.new);
    }
    Ok(StatusCode::OK)
}

async fn unregister(State(core): State<Arc<Core>>, body: Body) -> ApiResult<StatusCode> {
    let storages = ids(&core, body).await?;
    let _writes = core.writes.lock().await;
    let store = core.store.clone();
    let removed = core
        .blocking(move || store.unregister(&storages))
        .await
        .map_err(internal("removing storage registrations"))?
        .map_err(|below| below_zero("storage server", "registration(s)", below))?;
    core.stats
        .registered
        .store(removed.total, Ordering::Relaxed);
    if !removed.released.is_empty() {
        core.members.remove_registered(&removed.released);
    }
    Ok(StatusCode::OK)
}

/// Streams `[{block, storages}]`, reading pins in chunks on a blocking thread. A store
/// failure before the first chunk is a 500; a later one cuts the body short.
async fn blocks(State(core): State<Arc<Core>>, body: Body) -> ApiResult<Response> {
    let blocks = ids(&core, body).await?;
    let active = core.members.active();
    let replicas = core.config.replicas;
    let store = core.store.clone();
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    core.tasks.spawn_blocking(move || {
        let mut out = Vec::with_capacity(BLOCKS_CHUNK * 300);
        out.push(b'[');
        let chunks: Vec<&[Id]> = if blocks.is_empty() {
            vec![&[]]
        } else {
            blocks.chunks(BLOCKS_CHUNK).collect()
        };
        let last = chunks.len() - 1;
        for (n, chunk) in chunks.into_iter().enumerate() {
            let flags = match store.pinned_flags(chunk) {
                Ok(flags) => flags,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                    return;
                }
            };
            for (i, (block, pinned)) in chunk.iter().zip(flags).enumerate() {
                if n > 0 || i > 0 {
                    out.push(b',');
                }
                let storages = if pinned {
                    nearest(block, &active.ids, replicas)
                } else {
                    Vec::new()
                };
                let placement = BlockPlacement {
                    block: *block,
                    storages,
                };
                if let Err(e) = serde_json::to_writer(&mut out, &placement) {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e)));
                    return;
                }
            }
            if n == last {
                out.push(b']');
            }
            let bytes = Bytes::from(std::mem::take(&mut out));
            if tx.blocking_send(Ok(bytes)).is_err() {
                return;
            }
        }
    });
    let first = match rx.recv().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => return Err(ApiError::internal("reading pins", e)),
        None => return Err(ApiError::internal("reading pins", "producer stopped")),
    };
    let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = futures_util::stream::once(async move { Ok(first) }).chain(rest);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn status(
    State(core): State<Arc<Core>>,
    caller: Option<Extension<Arc<Caller>>>,
) -> ApiResult<Json<DistributorStatus>> {
    let mut status = core.publish();
    let admin = caller
        .as_ref()
        .is_some_and(|Extension(caller)| caller.allows(Role::Distributor, "admin"));
    if admin {
        let store = core.store.clone();
        let totals = core
            .blocking(move || store.pins_by_subject())
            .await
            .map_err(internal("reading pins by subject"))?;
        status.pins_by_subject = Some(
            totals
                .into_iter()
                .map(|(subject, t)| {
                    (
                        subject,
                        SubjectPins {
                            blocks: t.blocks,
                            pins: t.pins,
                        },
                    )
                })
                .collect(),
        );
    }
    Ok(Json(status))
}

async fn gc_status(State(core): State<Arc<Core>>) -> ApiResult<Json<GcStatus>> {
    Ok(Json(
        core.gc_status()
            .await
            .map_err(internal("reading collection status"))?,
    ))
}

#[derive(Debug, serde::Deserialize)]
struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Runs a sweep in a tracked task (it finishes even if the caller goes away) and
/// streams its events, one JSON object per line.
async fn gc_run(
    State(core): State<Arc<Core>>,
    Query(query): Query<GcQuery>,
) -> ApiResult<Response> {
    let (tx, rx) = mpsc::channel::<GcEvent>(64);
    let sweeper = Arc::clone(&core);
    core.tasks.spawn(async move {
        let progress_tx = tx.clone();
        let outcome = crate::gc::sweep(&sweeper, query.dry_run, move |progress| {
            // A slow reader misses progress lines, never the report.
            let _ = progress_tx.try_send(GcEvent::Progress(progress));
        })
        .await;
        let last = match outcome {
            Ok(report) => GcEvent::Report(report),
            Err(e) => {
                tracing::warn!(error = %e, "garbage collection sweep failed");
                GcEvent::Error(e.to_string())
            }
        };
        let _ = tx.send(last).await;
    });
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx).map(|event| {
        let mut line = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        Ok::<_, std::io::Error>(Bytes::from(line))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}
