//! `/v1/webhook-logs`: the delivery log, one row per delivery, with its attempts.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::Serialize;

use super::auth::ProjectAuth;
use super::error::ApiError;
use super::extract::QueryMap;
use super::{AppState, ListResponse};
use crate::domain::time::{now_ms, parse_rfc3339, to_rfc3339};
use crate::domain::{DeliveryId, EventId, WebhookId};
use crate::store::{Attempt, Backend as _, DeliveryLog, DeliveryStatus, LogFilter};

pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/webhook-logs", get(list))
        .route("/v1/webhook-logs/{id}", get(show))
        .route("/v1/webhook-logs/{id}/retry", post(retry))
}

#[derive(Debug, Serialize)]
pub struct LogView {
    pub id: String,
    pub project_id: String,
    pub event: String,
    pub event_id: String,
    pub webhook_id: String,
    pub target_url: String,
    pub status: &'static str,
    pub response_code: Option<u16>,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<DeliveryLog> for LogView {
    fn from(l: DeliveryLog) -> Self {
        Self {
            id: l.id.to_string(),
            project_id: l.project_id.to_string(),
            event: l.event,
            event_id: l.event_id.to_string(),
            webhook_id: l.webhook_id.to_string(),
            target_url: l.target_url,
            status: l.status.as_str(),
            response_code: l.response_code,
            attempts: l.attempts,
            next_attempt_at: l.next_attempt_at.map(to_rfc3339),
            last_error: l.last_error,
            created_at: to_rfc3339(l.created_at),
            updated_at: to_rfc3339(l.updated_at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AttemptView {
    pub number: u32,
    pub started_at: String,
    pub duration_ms: u32,
    pub response_code: Option<u16>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        Self {
            number: a.number,
            started_at: to_rfc3339(a.started_at),
            duration_ms: a.duration_ms,
            response_code: a.response_code,
            error_class: a.error_class,
            error: a.error,
            response_body: a.response_body,
        }
    }
}

/// One delivery with every attempt, oldest first.
#[derive(Debug, Serialize)]
pub struct LogDetailView {
    #[serde(flatten)]
    pub log: LogView,
    pub attempt_history: Vec<AttemptView>,
}

fn parse_filter(q: &QueryMap) -> Result<LogFilter, ApiError> {
    let status = q
        .get("status")
        .map(|s| DeliveryStatus::parse(s).ok_or_else(|| ApiError::invalid("status", "must be pending, sent or failed")))
        .transpose()?;
    let webhook_id = q
        .get("webhook_id")
        .map(|s| WebhookId::parse(s).ok_or_else(|| ApiError::invalid("webhook_id", "is not a webhook id")))
        .transpose()?;
    let event_id = q
        .get("event_id")
        .map(|s| EventId::parse(s).ok_or_else(|| ApiError::invalid("event_id", "is not an event id")))
        .transpose()?;
    let time = |field: &'static str| {
        q.get(field)
            .map(|s| parse_rfc3339(s).ok_or_else(|| ApiError::invalid(field, "must be an RFC 3339 timestamp")))
            .transpose()
    };
    Ok(LogFilter {
        status,
        event: q.get("event").map(str::to_owned),
        webhook_id,
        event_id,
        since: time("since")?,
        until: time("until")?,
    })
}

async fn list(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    query: QueryMap,
) -> Result<Json<ListResponse<LogView>>, ApiError> {
    let filter = parse_filter(&query)?;
    let page = query.page(|c| DeliveryId::parse(c).is_some())?;
    let logs = app.store.list_logs(project, filter, page).await?;
    Ok(Json(ListResponse { data: logs.items.into_iter().map(Into::into).collect(), next_cursor: logs.next }))
}

async fn show(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
) -> Result<Json<LogDetailView>, ApiError> {
    let id = DeliveryId::parse(&id).ok_or(ApiError::NotFound)?;
    let (log, attempts) = app.store.get_log(project, id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(LogDetailView { log: log.into(), attempt_history: attempts.into_iter().map(Into::into).collect() }))
}

/// Sends a delivery again now, whatever its state; it keeps its id and history.
async fn retry(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<LogView>), ApiError> {
    let id = DeliveryId::parse(&id).ok_or(ApiError::NotFound)?;
    let log = app.store.retry_delivery(project, id, now_ms()).await?.ok_or(ApiError::NotFound)?;
    app.work_ready.notify_one();
    Ok((StatusCode::ACCEPTED, Json(log.into())))
}
