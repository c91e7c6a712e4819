//! Pure domain types, no I/O. Each type parses its input once at the edge, so
//! code past the API never holds an unchecked id, event name, URL or secret.

pub mod catalog;
pub mod field;
pub mod ids;
pub mod json;
pub mod lifecycle;
pub mod operational;
pub mod retry;
mod schema_type;
pub mod secrets;
pub mod target_url;
pub mod time;

pub use catalog::{Catalog, DataError, EventData, EventName};
pub use field::{FieldError, FieldPath};
pub use ids::{ApiKeyId, DeliveryId, EventId, ProjectId, WebhookId};
pub use lifecycle::{DisablePolicy, DisableReason, Verdict};
pub use operational::Operational;
pub use retry::RetrySchedule;
pub use secrets::{ApiKey, ApiKeyHash, SigningSecret};
pub use target_url::TargetUrl;
pub use time::UnixMs;
