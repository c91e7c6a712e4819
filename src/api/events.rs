//! `POST /v1/events` (ingest) and reading events back.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use super::auth::ProjectAuth;
use super::error::ApiError;
use super::error::responses::{
    BadRequest, NotFound, PayloadTooLarge, Unauthorized, Unprocessable, UnsupportedMediaType,
};
use super::extract::{JsonBody, PageParams, QueryMap};
use super::logs::DeliveryState;
use super::{AppState, ListResponse};
use crate::domain::json::canonical;
use crate::domain::time::{now_ms, to_rfc3339};
use crate::domain::{DataError, EventId, FieldPath, operational};
use crate::store::{Backend as _, DeliverySummary, Event, IdempotencyKey, Ingested, NewEvent, Receipt};

/// Longest `Idempotency-Key` accepted (Stripe's limit).
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ingest).layer(axum::middleware::map_response(count_ingest)))
        .routes(routes!(list))
        .routes(routes!(show))
}

/// `hookline_ingest_requests_total{status}`: every answer of ingest, rejections by
/// the extractors (401, 413, 415, 400) included.
async fn count_ingest(response: Response) -> Response {
    ::metrics::counter!("hookline_ingest_requests_total", "status" => response.status().as_str().to_owned())
        .increment(1);
    response
}

/// The ingest body. `ingest` parses it by hand, to answer each broken rule with
/// its own status and field, so this type only describes it; the served
/// document replaces it with one variant per event of the catalog
/// (see [`super::openapi`]).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct IngestRequest {
    /// An event of the catalog, e.g. `order.created`.
    event_name: String,
    /// The event's fields, checked against the catalog's JSON Schema for it.
    #[schema(value_type = Object)]
    data: serde_json::Map<String, Value>,
}

/// The request headers that [`idempotency_key`] reads, for the OpenAPI
/// document (nothing constructs it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IngestHeaders {
    /// Makes a retried request safe: a repeat within 24 hours (per project)
    /// answers the first answer again and creates nothing.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    idempotency_key: Option<String>,
}

/// A delivery created for an event: one per active webhook of its type.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The delivery's id (`dlv_…`), sent as `webhook-id`.
    pub id: String,
    pub webhook_id: String,
    pub status: DeliveryState,
}

impl From<DeliverySummary> for DeliveryView {
    fn from(d: DeliverySummary) -> Self {
        Self { id: d.id.to_string(), webhook_id: d.webhook_id.to_string(), status: d.status.into() }
    }
}

/// The 202 answer to ingest.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReceiptView {
    /// The event's id (`evt_…`).
    pub id: String,
    pub event_name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// One pending delivery per active webhook for this event; may be empty.
    pub deliveries: Vec<DeliveryView>,
}

impl From<Receipt> for ReceiptView {
    fn from(r: Receipt) -> Self {
        Self {
            id: r.event_id.to_string(),
            event_name: r.event_name.to_string(),
            created_at: to_rfc3339(r.created_at),
            deliveries: r.deliveries.into_iter().map(Into::into).collect(),
        }
    }
}

/// A stored event, with its data.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    pub event_name: String,
    #[schema(value_type = Object)]
    pub data: Box<RawValue>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Only when one event is read (`GET /v1/events/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub deliveries: Option<Vec<DeliveryView>>,
}

impl EventView {
    fn new(e: Event, deliveries: Option<Vec<DeliverySummary>>) -> Self {
        Self {
            id: e.id.to_string(),
            event_name: e.event_name.to_string(),
            data: RawValue::from_string(e.data.as_json().to_owned()).expect("stored data is JSON"),
            created_at: to_rfc3339(e.created_at),
            deliveries: deliveries.map(|d| d.into_iter().map(Into::into).collect()),
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()));
    key.map(|k| Some(k.to_owned())).ok_or_else(|| {
        ApiError::invalid("Idempotency-Key", format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"))
    })
}

/// Ingest an event.
///
/// Validates the event against the catalog and answers 202 only once the event
/// and one pending delivery per active webhook for it are committed. With an
/// `Idempotency-Key`, a repeat within 24 hours answers the first answer again
/// and creates nothing.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    operation_id = "ingest_event",
    request_body(content = IngestRequest, content_type = "application/json"),
    params(IngestHeaders),
    responses(
        (status = 202, description = "Accepted: stored durably with its deliveries", body = ReceiptView,
            headers(("Idempotent-Replayed" = String,
                description = "`true` when this is the stored answer to an earlier request with the same Idempotency-Key"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn ingest(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_key(&headers)?;
    let Value::Object(mut body) = body else {
        return Err(ApiError::invalid("", "the body must be a JSON object with event_name and data"));
    };
    if let Some(unknown) = body.keys().find(|k| *k != "event_name" && *k != "data") {
        return Err(ApiError::Validation(vec![FieldPath::root().key(unknown.as_str()).unknown()]));
    }
    let name = match body.get("event_name") {
        None => return Err(ApiError::invalid("event_name", "is required")),
        Some(Value::String(s)) if operational::is_reserved(s) => {
            return Err(ApiError::invalid(
                "event_name",
                format!("is reserved: {}* events are sent by hookline itself", operational::RESERVED_PREFIX),
            ));
        }
        Some(Value::String(s)) => app
            .settings
            .catalog
            .event_name(s)
            .ok_or_else(|| ApiError::unknown_event("event_name", &app.settings.catalog))?,
        Some(_) => return Err(ApiError::invalid("event_name", "must be a string")),
    };
    let sent = match body.remove("data") {
        None => return Err(ApiError::invalid("data", "is required")),
        Some(data @ Value::Object(_)) => data,
        Some(_) => return Err(ApiError::invalid("data", "must be a JSON object")),
    };
    let data = app.settings.catalog.parse_data(&name, &sent, app.settings.max_data_bytes).map_err(|e| match e {
        DataError::TooLarge { limit } => ApiError::PayloadTooLarge { what: "data field", limit },
        DataError::Invalid(errors) => ApiError::Validation(errors),
    })?;
    // The same event is the same data in any key order: its canonical text is
    // what is compared, not the text as sent.
    let idempotency = idempotency.map(|key| {
        let mut h = Sha256::new();
        h.update(name.as_str());
        h.update([0]);
        h.update(canonical(&sent));
        IdempotencyKey { key, fingerprint: h.finalize().into() }
    });
    let now = now_ms();
    let event = NewEvent {
        id: EventId::generate_at(now),
        project_id: project,
        name,
        data,
        created_at: now,
        idempotency,
        lease: None,
    };
    match app.queue.enqueue(event).await? {
        Ingested::Created { receipt, .. } => {
            ::metrics::counter!("hookline_events_accepted_total", "event" => receipt.event_name.to_string())
                .increment(1);
            Ok((StatusCode::ACCEPTED, Json(ReceiptView::from(receipt))).into_response())
        }
        Ingested::Replayed(receipt) => {
            let mut response = (StatusCode::ACCEPTED, Json(ReceiptView::from(receipt))).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Ingested::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// List the project's events, newest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    operation_id = "list_events",
    params(PageParams),
    responses(
        (status = 200, description = "A page of events", body = ListResponse<EventView>),
        (status = 401, response = Unauthorized),
        (status = 422, response = Unprocessable),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn list(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    query: QueryMap,
) -> Result<Json<ListResponse<EventView>>, ApiError> {
    let page = query.page(|c| EventId::parse(c).is_some())?;
    let events = app.store.list_events(project, page).await?;
    Ok(Json(ListResponse::of(events, |e| EventView::new(e, None))))
}

/// Read one event, with its data and deliveries.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "events",
    operation_id = "get_event",
    params(("id" = String, Path, description = "The event's id (`evt_…`)")),
    responses(
        (status = 200, description = "The event", body = EventView),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn show(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    let id = EventId::parse(&id).ok_or(ApiError::NotFound)?;
    let (event, deliveries) = app.store.get_event(project, id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(EventView::new(event, Some(deliveries))))
}
