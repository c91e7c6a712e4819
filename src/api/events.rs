//! `POST /v1/events` (ingest) and reading events back.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};

use super::auth::ProjectAuth;
use super::error::ApiError;
use super::extract::{JsonBody, QueryMap};
use super::{AppState, ListResponse};
use crate::domain::time::{now_ms, to_rfc3339};
use crate::domain::{DataError, EventId};
use crate::store::{Backend as _, DeliverySummary, Event, IdempotencyKey, Ingested, NewEvent, Receipt};

/// Longest `Idempotency-Key` accepted (Stripe's limit).
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/events", get(list).post(ingest)).route("/v1/events/{id}", get(show))
}

#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: String,
    pub status: &'static str,
}

impl From<DeliverySummary> for DeliveryView {
    fn from(d: DeliverySummary) -> Self {
        Self { id: d.id.to_string(), webhook_id: d.webhook_id.to_string(), status: d.status.as_str() }
    }
}

/// The 202 answer to ingest.
#[derive(Debug, Serialize)]
pub struct ReceiptView {
    pub id: String,
    pub event_name: String,
    pub created_at: String,
    pub deliveries: Vec<DeliveryView>,
}

impl From<Receipt> for ReceiptView {
    fn from(r: Receipt) -> Self {
        Self {
            id: r.event_id.to_string(),
            event_name: r.event_name,
            created_at: to_rfc3339(r.created_at),
            deliveries: r.deliveries.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct EventView {
    pub id: String,
    pub event_name: String,
    pub data: Box<RawValue>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<Vec<DeliveryView>>,
}

impl EventView {
    fn new(e: Event, deliveries: Option<Vec<DeliverySummary>>) -> Self {
        Self {
            id: e.id.to_string(),
            event_name: e.event_name,
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

/// Validates and durably records an event; 202 once it and its deliveries are committed.
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
        return Err(ApiError::invalid(unknown.clone(), "unknown field"));
    }
    let name = match body.get("event_name") {
        None => return Err(ApiError::invalid("event_name", "is required")),
        Some(Value::String(s)) => app.catalog.event_name(s).ok_or_else(|| {
            let allowed: Vec<&str> = app.catalog.names().collect();
            ApiError::invalid("event_name", format!("is not an allowed event; allowed: {}", allowed.join(", ")))
        })?,
        Some(_) => return Err(ApiError::invalid("event_name", "must be a string")),
    };
    let data = match body.remove("data") {
        None => return Err(ApiError::invalid("data", "is required")),
        Some(data @ Value::Object(_)) => data,
        Some(_) => return Err(ApiError::invalid("data", "must be a JSON object")),
    };
    let data = app.catalog.parse_data(&name, &data, app.max_data_bytes).map_err(|e| match e {
        DataError::TooLarge { limit } => ApiError::PayloadTooLarge { what: "data field", limit },
        DataError::Invalid(errors) => ApiError::Validation(errors),
    })?;
    let idempotency = idempotency.map(|key| {
        let mut h = Sha256::new();
        h.update(name.as_str());
        h.update([0]);
        h.update(data.as_json());
        IdempotencyKey { key, fingerprint: h.finalize().into() }
    });
    let event =
        NewEvent { id: EventId::generate(), project_id: project, name, data, created_at: now_ms(), idempotency };
    match app.store.ingest(event).await? {
        Ingested::Created(receipt) => {
            if !receipt.deliveries.is_empty() {
                app.work_ready.notify_one();
            }
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

async fn list(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    query: QueryMap,
) -> Result<Json<ListResponse<EventView>>, ApiError> {
    let page = query.page(|c| EventId::parse(c).is_some())?;
    let events = app.store.list_events(project, page).await?;
    Ok(Json(ListResponse {
        data: events.items.into_iter().map(|e| EventView::new(e, None)).collect(),
        next_cursor: events.next,
    }))
}

async fn show(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    let id = EventId::parse(&id).ok_or(ApiError::NotFound)?;
    let (event, deliveries) = app.store.get_event(project, id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(EventView::new(event, Some(deliveries))))
}
