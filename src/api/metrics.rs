//! `GET /metrics`: Prometheus text exposition.
//!
//! Counters and the attempt histogram are recorded where the facts happen
//! (ingest in [`super::events`], attempts in [`crate::delivery::worker`]); the
//! queue gauges are read from the database on each scrape, so they are as
//! fresh as the scrape and cost nothing between scrapes.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::domain::time::now_ms;
use crate::store::Backend as _;
use crate::telemetry;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(scrape))
}

/// Prometheus metrics.
///
/// Text exposition format 0.0.4. Metric names start with `hookline_`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4")),
)]
async fn scrape(State(app): State<AppState>) -> Response {
    let handle = telemetry::metrics();
    let now = now_ms();
    match app.store.queue_stats(now).await {
        Ok(q) => {
            ::metrics::gauge!("hookline_queue_depth", "state" => "pending").set(q.pending as f64);
            ::metrics::gauge!("hookline_queue_depth", "state" => "due").set(q.due as f64);
            ::metrics::gauge!("hookline_queue_depth", "state" => "leased").set(q.leased as f64);
            let age_ms = q.oldest_pending_created_at.map_or(0, |at| (now - at).max(0));
            ::metrics::gauge!("hookline_oldest_pending_age_seconds").set(age_ms as f64 / 1000.0);
        }
        // The other metrics are still worth answering with.
        Err(e) => tracing::warn!(error = %e, "reading queue stats for /metrics failed"),
    }
    let mut response = handle.render().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    response
}
