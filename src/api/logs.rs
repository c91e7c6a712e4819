//! `/v1/webhook-logs`: the delivery log, one row per delivery, with its
//! attempts; manual redelivery of one, and replay of many.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::ProjectAuth;
use super::error::ApiError;
use super::error::responses::{
    BadRequest, Conflict, NotFound, PayloadTooLarge, Unauthorized, Unprocessable, UnsupportedMediaType,
};
use super::extract::{PageParams, QueryMap, TypedJson};
use super::{AppState, ListResponse};
use crate::domain::time::{parse_rfc3339, to_rfc3339};
use crate::domain::{DeliveryId, EventId, WebhookId};
use crate::store::{Attempt, Backend as _, DeliveryLog, DeliveryStatus, LogFilter, Retried};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(show)).routes(routes!(retry)).routes(routes!(replay))
}

/// A delivery's state: `pending` until it is `sent` or has `failed` for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Sent,
    Failed,
}

impl From<DeliveryStatus> for DeliveryState {
    fn from(s: DeliveryStatus) -> Self {
        match s {
            DeliveryStatus::Pending => Self::Pending,
            DeliveryStatus::Sent => Self::Sent,
            DeliveryStatus::Failed => Self::Failed,
        }
    }
}

/// One delivery (an event going to one webhook): a row of `webhook_logs`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogView {
    /// The delivery's id (`dlv_…`), sent as `webhook-id`.
    pub id: String,
    pub project_id: String,
    /// The event's name, e.g. `order.created`.
    pub event: String,
    pub event_id: String,
    pub webhook_id: String,
    /// Where the last attempt went (the webhook's URL at the time).
    pub target_url: String,
    pub status: DeliveryState,
    /// The receiver's HTTP status on the last attempt, when it answered.
    pub response_code: Option<u16>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due; set only while `pending`.
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// Why the last attempt did not succeed.
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<DeliveryLog> for LogView {
    fn from(l: DeliveryLog) -> Self {
        Self {
            id: l.id.to_string(),
            project_id: l.project_id.to_string(),
            event: l.event.to_string(),
            event_id: l.event_id.to_string(),
            webhook_id: l.webhook_id.to_string(),
            target_url: l.target_url.to_string(),
            status: l.status.into(),
            response_code: l.response_code,
            attempts: l.attempts,
            next_attempt_at: l.next_attempt_at.map(to_rfc3339),
            last_error: l.last_error,
            created_at: to_rfc3339(l.created_at),
            updated_at: to_rfc3339(l.updated_at),
        }
    }
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1 for the first attempt.
    pub number: u32,
    #[schema(format = DateTime)]
    pub started_at: String,
    pub duration_ms: u32,
    /// The receiver's HTTP status, when it answered.
    pub response_code: Option<u16>,
    /// When it did not: `timeout`, `connect`, `dns`, `tls`, `blocked`, `protocol`, `signing`.
    pub error_class: Option<String>,
    pub error: Option<String>,
    /// At most the first 1 KiB of the receiver's answer.
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogDetailView {
    #[serde(flatten)]
    pub log: LogView,
    pub attempt_history: Vec<AttemptView>,
}

/// The filters that [`parse_filter`] reads, for the OpenAPI document (nothing
/// constructs it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct LogFilters {
    /// Only deliveries in this state.
    status: Option<DeliveryState>,
    /// Only deliveries of this event type, e.g. `order.created`.
    event: Option<String>,
    /// Only deliveries to this webhook (`wh_…`).
    webhook_id: Option<String>,
    /// Only deliveries of this event (`evt_…`).
    event_id: Option<String>,
    /// Only deliveries created at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only deliveries created before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
}

fn parse_filter(q: &QueryMap) -> Result<LogFilter, ApiError> {
    filter_from(|field| q.get(field))
}

/// The list's filters from wherever they come (the query, or a replay's body).
fn filter_from<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<LogFilter, ApiError> {
    let status = get("status")
        .map(|s| DeliveryStatus::parse(s).ok_or_else(|| ApiError::invalid("status", "must be pending, sent or failed")))
        .transpose()?;
    let webhook_id = get("webhook_id")
        .map(|s| WebhookId::parse(s).ok_or_else(|| ApiError::invalid("webhook_id", "is not a webhook id")))
        .transpose()?;
    let event_id = get("event_id")
        .map(|s| EventId::parse(s).ok_or_else(|| ApiError::invalid("event_id", "is not an event id")))
        .transpose()?;
    let time = |field: &'static str| {
        get(field)
            .map(|s| parse_rfc3339(s).ok_or_else(|| ApiError::invalid(field, "must be an RFC 3339 timestamp")))
            .transpose()
    };
    Ok(LogFilter {
        status,
        event: get("event").map(str::to_owned),
        webhook_id,
        event_id,
        since: time("since")?,
        until: time("until")?,
    })
}

/// List delivery logs, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhook-logs",
    tag = "webhook-logs",
    operation_id = "list_webhook_logs",
    params(LogFilters, PageParams),
    responses(
        (status = 200, description = "A page of deliveries", body = ListResponse<LogView>),
        (status = 401, response = Unauthorized),
        (status = 422, response = Unprocessable),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn list(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    query: QueryMap,
) -> Result<Json<ListResponse<LogView>>, ApiError> {
    let filter = parse_filter(&query)?;
    let page = query.page(|c| DeliveryId::parse(c).is_some())?;
    let logs = app.store.list_logs(project, filter, page).await?;
    Ok(Json(ListResponse::of(logs, Into::into)))
}

/// Read one delivery with all its attempts.
#[utoipa::path(
    get,
    path = "/v1/webhook-logs/{id}",
    tag = "webhook-logs",
    operation_id = "get_webhook_log",
    params(("id" = String, Path, description = "The delivery's id (`dlv_…`)")),
    responses(
        (status = 200, description = "The delivery and its attempts", body = LogDetailView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn show(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
) -> Result<Json<LogDetailView>, ApiError> {
    let id = DeliveryId::parse(&id).ok_or(ApiError::NotFound)?;
    let (log, attempts) = app.store.get_log(project, id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(LogDetailView { log: log.into(), attempt_history: attempts.into_iter().map(Into::into).collect() }))
}

/// What to replay: the list's filters, `since` required, and `dry_run`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Deliveries created at or after this time (RFC 3339). Required: a
    /// replay is always bounded in time.
    #[schema(format = DateTime)]
    pub since: String,
    /// Deliveries created before this time (RFC 3339).
    #[schema(format = DateTime)]
    pub until: Option<String>,
    /// Only deliveries in this state; `pending` ones match but are never requeued.
    #[schema(value_type = Option<DeliveryState>)]
    pub status: Option<String>,
    /// Only deliveries of this event type, e.g. `order.created`.
    pub event: Option<String>,
    /// Only deliveries to this webhook (`wh_…`).
    pub webhook_id: Option<String>,
    /// Only deliveries of this event (`evt_…`).
    pub event_id: Option<String>,
    /// Count what matches and change nothing.
    #[serde(default)]
    #[schema(default = false)]
    pub dry_run: bool,
}

/// The 202 answer to a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayView {
    /// Deliveries the filters matched, pending ones included.
    pub matched: u64,
    /// Matching deliveries that this replay makes pending again, due now,
    /// with a fresh attempt budget (0 for a dry run). The first 1,000 are
    /// pending before this answer and counted exactly; the rest are counted
    /// now and requeued right after, in batches. A delivery that changes in
    /// between (another replay or a manual retry took it) is left alone rather
    /// than sent twice, so the final count can be lower.
    pub requeued: u64,
}

/// Replay deliveries in bulk.
///
/// Every delivery the filters match that is not pending goes back to
/// `pending`, due now, with a fresh attempt budget; it keeps its id
/// (`webhook-id`) and its attempt history, which numbers on. Pending ones are
/// left alone, so the same replay sent twice in a row sends nothing twice.
/// Replayed deliveries wait their turn like any other: fairness, rate limits
/// and open circuits apply. Deliveries to a disabled webhook fail again
/// without an attempt: enable it first. With `dry_run`, nothing changes.
#[utoipa::path(
    post,
    path = "/v1/webhook-logs/replay",
    tag = "webhook-logs",
    operation_id = "replay_webhook_logs",
    request_body(content = ReplayRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the matching deliveries are being requeued", body = ReplayView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn replay(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    TypedJson(body): TypedJson<ReplayRequest>,
) -> Result<(StatusCode, Json<ReplayView>), ApiError> {
    let filter = filter_from(|field| match field {
        "since" => Some(body.since.as_str()),
        "until" => body.until.as_deref(),
        "status" => body.status.as_deref(),
        "event" => body.event.as_deref(),
        "webhook_id" => body.webhook_id.as_deref(),
        "event_id" => body.event_id.as_deref(),
        _ => None,
    })?;
    let replayed = app.queue.replay(project, filter, body.dry_run).await?;
    Ok((StatusCode::ACCEPTED, Json(ReplayView { matched: replayed.matched, requeued: replayed.requeued })))
}

/// Send a delivery again now.
///
/// A delivery that waits for a later attempt, `sent` or `failed` becomes
/// pending and due at once, and keeps its id (`webhook-id`) and its attempt
/// history. One that is in flight or already due answers 409 and nothing more
/// is sent: a retry never multiplies requests toward the receiver.
#[utoipa::path(
    post,
    path = "/v1/webhook-logs/{id}/retry",
    tag = "webhook-logs",
    operation_id = "retry_webhook_log",
    params(("id" = String, Path, description = "The delivery's id (`dlv_…`)")),
    responses(
        (status = 202, description = "Pending again, due now", body = LogView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn retry(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<LogView>), ApiError> {
    let id = DeliveryId::parse(&id).ok_or(ApiError::NotFound)?;
    match app.queue.retry_now(project, id).await? {
        Retried::Due(log) => Ok((StatusCode::ACCEPTED, Json(log.into()))),
        Retried::Busy => Err(ApiError::DeliveryBusy),
        Retried::NotFound => Err(ApiError::NotFound),
    }
}
