//! `/v1/webhooks`: a project's webhook endpoints (`project_webhooks`), and
//! test deliveries to them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::ProjectAuth;
use super::error::ApiError;
use super::error::responses::{
    BadRequest, NotFound, PayloadTooLarge, Unauthorized, Unprocessable, UnsupportedMediaType,
};
use super::extract::{PageParams, QueryMap, TypedJson};
use super::{AppState, ListResponse};
use crate::domain::time::{now_ms, to_rfc3339};
use crate::domain::{EventName, TargetUrl, WebhookId};
use crate::store::{Backend as _, Webhook, WebhookCreation, WebhookPatch};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create, list)).routes(routes!(show, update, remove)).routes(routes!(test))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// The event type this webhook receives, e.g. `order.created`, or
    /// `webhook.disabled` to hear when hookline disables another webhook of
    /// the project.
    pub event: String,
    /// `https://` (or `http://` in `--dev` or an allowed range); checked
    /// against internal addresses now and before every attempt.
    pub target_url: String,
    #[serde(default = "default_active")]
    #[schema(default = true)]
    pub is_active: bool,
    /// Most deliveries per second to this webhook, across all workers
    /// (requests are spaced at least `1/rate_limit` s apart); `null` for none.
    /// Deliveries held back by it wait; they never fail because of it.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub rate_limit: Option<u32>,
}

fn default_active() -> bool {
    true
}

/// For PATCH: an absent field stays `None`, a `null` one becomes `Some(None)`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn check_rate_limit(rate_limit: Option<u32>) -> Result<Option<u32>, ApiError> {
    match rate_limit {
        Some(0) => Err(ApiError::invalid("rate_limit", "must be at least 1 (or null for no limit)")),
        other => Ok(other),
    }
}

/// The fields to change; absent ones stay as they are. `is_active: true`
/// enables a webhook hookline disabled, and clears `disabled_reason` and
/// `disabled_at`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    pub event: Option<String>,
    pub target_url: Option<String>,
    pub is_active: Option<bool>,
    /// Absent: unchanged; `null`: no limit; an integer ≥ 1: the new limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub rate_limit: Option<Option<u32>>,
}

/// A webhook endpoint of the project.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    /// `wh_…`
    pub id: String,
    pub event: String,
    pub target_url: String,
    /// Inactive webhooks get no new deliveries. hookline disables one whose
    /// receiver answers 410 Gone, or whose every attempt has failed for longer
    /// than `--disable-after` (5 days by default).
    pub is_active: bool,
    /// Why hookline disabled this webhook, in a sentence; `null` unless it did.
    pub disabled_reason: Option<String>,
    /// When hookline disabled it; `null` unless it did.
    #[schema(format = DateTime)]
    pub disabled_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Most deliveries per second; `null` for no limit.
    pub rate_limit: Option<u32>,
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        Self {
            id: w.id.to_string(),
            event: w.event.to_string(),
            target_url: w.target_url.to_string(),
            is_active: w.is_active,
            disabled_reason: w.disabled.as_ref().map(|d| d.reason.clone()),
            disabled_at: w.disabled.as_ref().map(|d| to_rfc3339(d.at)),
            created_at: to_rfc3339(w.created_at),
            updated_at: to_rfc3339(w.updated_at),
            rate_limit: w.rate_limit,
        }
    }
}

/// An event a webhook may subscribe to: one clients send, or one of
/// hookline's own that is sent to subscribers (`webhook.disabled`).
fn parse_event(app: &AppState, s: &str) -> Result<EventName, ApiError> {
    let catalog = &app.settings.catalog;
    catalog.subscribable(s).ok_or_else(|| {
        let allowed: Vec<&str> = catalog.subscribable_names().collect();
        ApiError::invalid(
            "event",
            format!("is not an event a webhook can subscribe to; allowed: {}", allowed.join(", ")),
        )
    })
}

/// Parses the URL and checks every address it resolves to against the SSRF policy.
async fn vet_target(app: &AppState, raw: &str) -> Result<TargetUrl, ApiError> {
    let url = TargetUrl::parse(raw).map_err(|e| ApiError::invalid("target_url", e.to_string()))?;
    app.settings
        .ssrf
        .resolve(&url.host(), url.port(), url.is_https())
        .await
        .map_err(|e| ApiError::invalid("target_url", e.to_string()))?;
    Ok(url)
}

/// Add a webhook.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    request_body(content = CreateWebhook, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = WebhookView,
            headers(("Location" = String, description = "`/v1/webhooks/{id}`"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn create(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    TypedJson(body): TypedJson<CreateWebhook>,
) -> Result<Response, ApiError> {
    let event = parse_event(&app, &body.event)?;
    let url = vet_target(&app, &body.target_url).await?;
    let rate_limit = check_rate_limit(body.rate_limit)?;
    let now = now_ms();
    let webhook = Webhook {
        id: WebhookId::generate(),
        project_id: project,
        event,
        target_url: url,
        is_active: body.is_active,
        disabled: None,
        created_at: now,
        updated_at: now,
        rate_limit,
    };
    let limit = app.settings.max_webhooks_per_project;
    if app.store.create_webhook(webhook.clone(), limit).await? == WebhookCreation::LimitReached {
        return Err(ApiError::WebhookLimitReached { limit });
    }
    let location = HeaderValue::from_str(&format!("/v1/webhooks/{}", webhook.id)).expect("ids are ASCII");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(WebhookView::from(webhook))).into_response())
}

/// List the project's webhooks, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    params(PageParams),
    responses(
        (status = 200, description = "A page of webhooks", body = ListResponse<WebhookView>),
        (status = 401, response = Unauthorized),
        (status = 422, response = Unprocessable),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn list(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    query: QueryMap,
) -> Result<Json<ListResponse<WebhookView>>, ApiError> {
    let page = query.page(|c| WebhookId::parse(c).is_some())?;
    let hooks = app.store.list_webhooks(project, page).await?;
    Ok(Json(ListResponse::of(hooks, Into::into)))
}

/// Read one webhook.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "get_webhook",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses(
        (status = 200, description = "The webhook", body = WebhookView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn show(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = WebhookId::parse(&id).ok_or(ApiError::NotFound)?;
    let hook = app.store.get_webhook(project, id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(hook.into()))
}

/// Change a webhook's event, URL or state.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "update_webhook",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    request_body(content = UpdateWebhook, content_type = "application/json"),
    responses(
        (status = 200, description = "The changed webhook", body = WebhookView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn update(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
    TypedJson(body): TypedJson<UpdateWebhook>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = WebhookId::parse(&id).ok_or(ApiError::NotFound)?;
    // 404 before 422: whether the id exists is not a secret to its owner, and
    // another project's id must look exactly like a missing one.
    app.store.get_webhook(project.clone(), id.clone()).await?.ok_or(ApiError::NotFound)?;
    let event = body.event.as_deref().map(|e| parse_event(&app, e)).transpose()?;
    let target_url = match body.target_url.as_deref() {
        Some(raw) => Some(vet_target(&app, raw).await?),
        None => None,
    };
    let rate_limit = body.rate_limit.map(check_rate_limit).transpose()?;
    let patch = WebhookPatch { event, target_url, is_active: body.is_active, rate_limit };
    let hook = app.store.update_webhook(project, id, patch, now_ms()).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(hook.into()))
}

/// The 202 answer to a test delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestDeliveryView {
    /// The test delivery (`dlv_…`); follow it in `GET /v1/webhook-logs/{id}`.
    pub delivery_id: String,
}

/// Send a test delivery.
///
/// Commits a `webhook.test` event (`data`: `webhook_id`, `sent_at`) with one
/// delivery to this webhook only, whatever its event and even when it is
/// disabled, signed, retried and logged like any delivery.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/test",
    tag = "webhooks",
    operation_id = "test_webhook",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses(
        (status = 202, description = "Accepted: the test delivery is committed and due now", body = TestDeliveryView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn test(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TestDeliveryView>), ApiError> {
    let id = WebhookId::parse(&id).ok_or(ApiError::NotFound)?;
    let delivery = app.queue.send_test(project, id).await?.ok_or(ApiError::NotFound)?;
    Ok((StatusCode::ACCEPTED, Json(TestDeliveryView { delivery_id: delivery.id.to_string() })))
}

/// Delete a webhook. Its pending deliveries fail without another attempt.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    operation_id = "delete_webhook",
    params(("id" = String, Path, description = "The webhook's id (`wh_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn remove(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = WebhookId::parse(&id).ok_or(ApiError::NotFound)?;
    if app.store.delete_webhook(project, id).await? { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::NotFound) }
}
