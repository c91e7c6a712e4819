//! Row mapping for PostgreSQL, written once: how a stored record reads back
//! as a model type, beside the column list each mapper expects, and how the
//! typed domain values (`TargetUrl`, `EventName`) go in and out of a column.
//!
//! The rows that only one statement shapes (a claim, a receipt, queue counts)
//! are mapped beside that statement, in `queue.rs`.

use sqlx::Postgres;
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::db_err;
use crate::domain::{ApiKeyId, DeliveryId, EventData, EventId, EventName, ProjectId, TargetUrl, WebhookId};
use crate::store::{
    ApiKeyRecord, Attempt, DeliveryKind, DeliveryLog, DeliveryStatus, DeliverySummary, Disabled, Event, Result,
    SealedSecret, Webhook,
};

// Column lists as macros, so statements stay `&'static str` (`concat!`).
macro_rules! webhook_columns {
    () => {
        "id, project_id, event, target_url, is_active, created_at, updated_at, rate_limit, disabled_reason, \
         disabled_at"
    };
}
macro_rules! event_columns {
    () => {
        "id, project_id, event_name, data, created_at"
    };
}
macro_rules! log_columns {
    () => {
        "id, project_id, event, event_id, webhook_id, target_url, status, response_code, \
         attempts, next_attempt_at, last_error, created_at, updated_at"
    };
}
pub(super) use {event_columns, log_columns, webhook_columns};

// Typed columns: a stored URL or event name comes back as the domain type it
// was saved from, and a row that no longer parses is an error, not a string.
macro_rules! text_column {
    ($ty:ty, $decode:expr) => {
        impl sqlx::Type<Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<Postgres>>::compatible(ty)
            }
        }
        impl sqlx::Encode<'_, Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }
        impl<'r> sqlx::Decode<'r, Postgres> for $ty {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<Postgres>>::decode(value)?;
                $decode(text)
            }
        }
    };
}

text_column!(TargetUrl, |t: &str| TargetUrl::from_stored(t).map_err(Into::into));
text_column!(EventName, |t: &str| Ok(EventName::from_trusted(t)));

/// Maps every row, or fails on the first that does not map.
pub(super) fn rows<T>(rows: Vec<PgRow>, map: fn(&PgRow) -> sqlx::Result<T>) -> Result<Vec<T>> {
    rows.iter().map(map).collect::<sqlx::Result<_>>().map_err(db_err)
}

/// Maps the row a query found, if it found one.
pub(super) fn row<T>(row: Option<PgRow>, map: fn(&PgRow) -> sqlx::Result<T>) -> Result<Option<T>> {
    row.as_ref().map(map).transpose().map_err(db_err)
}

pub(super) fn webhook_from_row(r: &PgRow) -> sqlx::Result<Webhook> {
    Ok(Webhook {
        id: WebhookId::from_trusted(r.try_get(0)?),
        project_id: ProjectId::from_trusted(r.try_get(1)?),
        event: r.try_get(2)?,
        target_url: r.try_get(3)?,
        is_active: r.try_get(4)?,
        created_at: r.try_get(5)?,
        updated_at: r.try_get(6)?,
        rate_limit: r.try_get::<Option<i32>, _>(7)?.map(|n| n as u32),
        // Set and cleared together (a CHECK of the schema).
        disabled: r
            .try_get::<Option<String>, _>(8)?
            .zip(r.try_get::<Option<i64>, _>(9)?)
            .map(|(reason, at)| Disabled { reason, at }),
    })
}

pub(super) fn event_from_row(r: &PgRow) -> sqlx::Result<Event> {
    Ok(Event {
        id: EventId::from_trusted(r.try_get(0)?),
        project_id: ProjectId::from_trusted(r.try_get(1)?),
        event_name: r.try_get(2)?,
        data: EventData::from_trusted(r.try_get(3)?),
        created_at: r.try_get(4)?,
    })
}

pub(super) fn kind_from_sql(s: String) -> sqlx::Result<DeliveryKind> {
    DeliveryKind::parse(&s).ok_or_else(|| sqlx::Error::Decode(format!("unknown delivery kind {s:?}").into()))
}

fn status_from_sql(s: String) -> sqlx::Result<DeliveryStatus> {
    DeliveryStatus::parse(&s).ok_or_else(|| sqlx::Error::Decode(format!("unknown delivery status {s:?}").into()))
}

/// SMALLINT-range codes and counts are stored as INTEGER.
fn code_from_sql(code: Option<i32>) -> Option<u16> {
    code.and_then(|c| u16::try_from(c).ok())
}

pub(super) fn log_from_row(r: &PgRow) -> sqlx::Result<DeliveryLog> {
    Ok(DeliveryLog {
        id: DeliveryId::from_trusted(r.try_get(0)?),
        project_id: ProjectId::from_trusted(r.try_get(1)?),
        event: r.try_get(2)?,
        event_id: EventId::from_trusted(r.try_get(3)?),
        webhook_id: WebhookId::from_trusted(r.try_get(4)?),
        target_url: r.try_get(5)?,
        status: status_from_sql(r.try_get(6)?)?,
        response_code: code_from_sql(r.try_get(7)?),
        attempts: r.try_get::<i32, _>(8)? as u32,
        next_attempt_at: r.try_get(9)?,
        last_error: r.try_get(10)?,
        created_at: r.try_get(11)?,
        updated_at: r.try_get(12)?,
    })
}

/// `id, webhook_id, status` of a delivery.
pub(super) fn summary_from_row(r: &PgRow) -> sqlx::Result<DeliverySummary> {
    Ok(DeliverySummary {
        id: DeliveryId::from_trusted(r.try_get(0)?),
        webhook_id: WebhookId::from_trusted(r.try_get(1)?),
        status: status_from_sql(r.try_get(2)?)?,
    })
}

pub(super) fn attempt_from_row(r: &PgRow) -> sqlx::Result<Attempt> {
    Ok(Attempt {
        number: r.try_get::<i32, _>(0)? as u32,
        started_at: r.try_get(1)?,
        duration_ms: r.try_get::<i64, _>(2)?.clamp(0, i64::from(u32::MAX)) as u32,
        response_code: code_from_sql(r.try_get(3)?),
        error_class: r.try_get(4)?,
        error: r.try_get(5)?,
        response_body: r.try_get(6)?,
    })
}

/// `id, prefix, created_at, revoked_at` of an API key.
pub(super) fn api_key_from_row(r: &PgRow) -> sqlx::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: ApiKeyId::from_trusted(r.try_get(0)?),
        prefix: r.try_get(1)?,
        created_at: r.try_get(2)?,
        revoked_at: r.try_get(3)?,
    })
}

/// `project_id, sealed, created_at, expires_at` of a signing secret.
pub(super) fn secret_from_row(r: &PgRow) -> sqlx::Result<SealedSecret> {
    Ok(SealedSecret {
        project_id: ProjectId::from_trusted(r.try_get(0)?),
        sealed: r.try_get(1)?,
        created_at: r.try_get(2)?,
        expires_at: r.try_get(3)?,
    })
}
