//! Row mapping for SQLite, written once: how a stored record reads back as a
//! model type, beside the column list each mapper expects, and how the typed
//! domain values (`TargetUrl`, `EventName`) go in and out of a column.
//!
//! The rows that only one statement shapes are mapped beside that statement:
//! a claim, a receipt and queue counts in `queue.rs`, a project's secrets
//! (the project comes from the query, not the row) in `crud.rs`.

use rusqlite::Row;

use crate::domain::{ApiKeyId, DeliveryId, EventData, EventId, EventName, ProjectId, TargetUrl, WebhookId};
use crate::store::{
    ApiKeyRecord, Attempt, DeliveryKind, DeliveryLog, DeliveryStatus, DeliverySummary, Disabled, Event, Webhook,
};

// Typed columns: a stored URL or event name comes back as the domain type it
// was saved from, and a row that no longer parses is an error, not a string.
impl rusqlite::types::FromSql for TargetUrl {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        TargetUrl::from_stored(value.as_str()?).map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

impl rusqlite::ToSql for TargetUrl {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for EventName {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Ok(EventName::from_trusted(value.as_str()?))
    }
}

impl rusqlite::ToSql for EventName {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

pub(super) fn webhook_from_row(r: &Row<'_>) -> rusqlite::Result<Webhook> {
    Ok(Webhook {
        id: WebhookId::from_trusted(r.get(0)?),
        project_id: ProjectId::from_trusted(r.get(1)?),
        event: r.get(2)?,
        target_url: r.get(3)?,
        is_active: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        rate_limit: r.get(7)?,
        disabled: disabled_from_sql(r.get(8)?, r.get(9)?),
    })
}
pub(super) const WEBHOOK_COLUMNS: &str =
    "id, project_id, event, target_url, is_active, created_at, updated_at, rate_limit, disabled_reason, disabled_at";

/// `disabled_reason, disabled_at`, which the schema sets and clears together.
fn disabled_from_sql(reason: Option<String>, at: Option<i64>) -> Option<Disabled> {
    reason.zip(at).map(|(reason, at)| Disabled { reason, at })
}

pub(super) fn event_from_row(r: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: EventId::from_trusted(r.get(0)?),
        project_id: ProjectId::from_trusted(r.get(1)?),
        event_name: r.get(2)?,
        data: EventData::from_trusted(r.get(3)?),
        created_at: r.get(4)?,
    })
}
pub(super) const EVENT_COLUMNS: &str = "id, project_id, event_name, data, created_at";

pub(super) fn kind_from_sql(s: String) -> rusqlite::Result<DeliveryKind> {
    DeliveryKind::parse(&s).ok_or_else(|| rusqlite::Error::InvalidColumnType(0, s, rusqlite::types::Type::Text))
}

fn status_from_sql(s: String) -> rusqlite::Result<DeliveryStatus> {
    DeliveryStatus::parse(&s).ok_or_else(|| rusqlite::Error::InvalidColumnType(0, s, rusqlite::types::Type::Text))
}

pub(super) fn log_from_row(r: &Row<'_>) -> rusqlite::Result<DeliveryLog> {
    Ok(DeliveryLog {
        id: DeliveryId::from_trusted(r.get(0)?),
        project_id: ProjectId::from_trusted(r.get(1)?),
        event: r.get(2)?,
        event_id: EventId::from_trusted(r.get(3)?),
        webhook_id: WebhookId::from_trusted(r.get(4)?),
        target_url: r.get(5)?,
        status: status_from_sql(r.get(6)?)?,
        response_code: r.get(7)?,
        attempts: r.get(8)?,
        next_attempt_at: r.get(9)?,
        last_error: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}
pub(super) const LOG_COLUMNS: &str = "id, project_id, event, event_id, webhook_id, target_url, status, response_code, \
                                      attempts, next_attempt_at, last_error, created_at, updated_at";

/// `id, webhook_id, status` of a delivery.
pub(super) fn summary_from_row(r: &Row<'_>) -> rusqlite::Result<DeliverySummary> {
    Ok(DeliverySummary {
        id: DeliveryId::from_trusted(r.get(0)?),
        webhook_id: WebhookId::from_trusted(r.get(1)?),
        status: status_from_sql(r.get(2)?)?,
    })
}

pub(super) fn attempt_from_row(r: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        number: r.get(0)?,
        started_at: r.get(1)?,
        duration_ms: r.get(2)?,
        response_code: r.get(3)?,
        error_class: r.get(4)?,
        error: r.get(5)?,
        response_body: r.get(6)?,
    })
}

/// `id, prefix, created_at, revoked_at` of an API key.
pub(super) fn api_key_from_row(r: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: ApiKeyId::from_trusted(r.get(0)?),
        prefix: r.get(1)?,
        created_at: r.get(2)?,
        revoked_at: r.get(3)?,
    })
}
