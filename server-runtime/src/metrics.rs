//! Request metrics and the Prometheus `GET /metrics` endpoint.
//!
//! Metrics (all labelled `role`, `method`, `route` — the route pattern, not the raw path):
//! - `http_requests_total` (counter, plus `status`): requests answered.
//! - `http_request_duration_seconds` (histogram): time until the response head.
//! - `http_request_bytes_total` / `http_response_bytes_total` (counters): body bytes
//!   received and sent, counted as they stream.
//!
//! The recorder is process-global (the `metrics` crate's model); several servers in one
//! process (in-process tests) share it and are told apart by `role`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::Role;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets in seconds: 50 µs .. 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Installs the Prometheus recorder once per process and returns its handle
/// (`None` if another recorder was installed first).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            let upkeep = handle.clone();
            // Histograms are drained into the exposition periodically; do it on a plain
            // thread so it works whichever runtime (or none) is current.
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn render() -> Response {
    match handle() {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            handle.render(),
        )
            .into_response(),
        None => crate::ApiError::unavailable("metrics recorder unavailable").into_response(),
    }
}

/// Middleware recording the metrics above for every routed request.
pub async fn track(role: Role, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let labels = [
        ("role", role.kind().to_owned()),
        ("method", method),
        ("route", route),
    ];

    let bytes_in = metrics::counter!("http_request_bytes_total", &labels);
    let request = request.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                bytes_in.increment(data.len() as u64);
            }
            frame
        }))
    });

    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    let status = response.status().as_u16().to_string();
    let mut with_status = labels.to_vec();
    with_status.push(("status", status));
    metrics::counter!("http_requests_total", &with_status).increment(1);

    let bytes_out = metrics::counter!("http_response_bytes_total", &labels);
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                bytes_out.increment(data.len() as u64);
            }
            frame
        }))
    })
}
