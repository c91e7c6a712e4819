//! Operational events: what hookline itself tells a project, as events of
//! that project (SPEC §9). They are stored and delivered like the events a
//! client sends: signed, retried, logged, and visible in `GET /v1/events`.
//!
//! Their names are reserved: every `webhook.*` name belongs to hookline, is
//! refused by ingest (422) and cannot appear in an `--event-catalog` file. The
//! reserved entries live in `operational_catalog.json` (compiled in and added
//! to every catalog), each with the JSON Schema of its `data` and whether a
//! webhook may subscribe to it.
//!
//! An operational event is emitted by the store, in the transaction that
//! makes the change it reports, so it cannot be lost to a crash between the
//! two: the `webhook.disabled` of a webhook commits with the disabling
//! (`complete` in `store/sqlite/lifecycle.rs` and `store/postgres/lifecycle.rs`,
//! through each backend's `emit`).
//!
//! # Adding one
//!
//! A further operational event (say `webhook.enabled`, or
//! `webhook.secret_rotated`) is:
//!
//! 1. one entry in `operational_catalog.json`: its name, the schema of its
//!    `data`, `subscribable: true`;
//! 2. one variant of [`Operational`] with that data (the unit test checks the
//!    data against the schema);
//! 3. one `emit(…, &Operational::…, now)` call in the store operation that
//!    makes the change (for a re-enabled webhook: `update_webhook`), in each
//!    backend's transaction.
//!
//! Delivery, signing, the log, the OpenAPI document and the catalog checks
//! then take it as they take every event.

use serde_json::json;

use super::time::to_rfc3339;
use super::{EventData, EventName, TargetUrl, UnixMs, WebhookId};

/// The reserved prefix of operational event names.
pub const RESERVED_PREFIX: &str = "webhook.";
/// A webhook was disabled by hookline.
pub const WEBHOOK_DISABLED: &str = "webhook.disabled";
/// A test delivery (`POST /v1/webhooks/{id}/test`).
pub const WEBHOOK_TEST: &str = "webhook.test";

/// The reserved entries of the catalog, compiled in.
pub const OPERATIONAL_CATALOG_JSON: &str = include_str!("operational_catalog.json");

/// Whether a name is reserved for operational events.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// An operational event, with its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operational {
    /// hookline disabled a webhook; sent to the project's other webhooks
    /// subscribed to `webhook.disabled`.
    WebhookDisabled {
        webhook_id: WebhookId,
        /// The event the disabled webhook was subscribed to.
        event: EventName,
        target_url: TargetUrl,
        /// The webhook's `disabled_reason`.
        reason: String,
        disabled_at: UnixMs,
    },
    /// A test delivery, to one webhook only.
    WebhookTest { webhook_id: WebhookId, sent_at: UnixMs },
}

impl Operational {
    pub fn name(&self) -> EventName {
        EventName::from_trusted(match self {
            Self::WebhookDisabled { .. } => WEBHOOK_DISABLED,
            Self::WebhookTest { .. } => WEBHOOK_TEST,
        })
    }

    /// The event's `data`, as its schema in `operational_catalog.json` describes it.
    pub fn data(&self) -> EventData {
        let data = match self {
            Self::WebhookDisabled { webhook_id, event, target_url, reason, disabled_at } => json!({
                "webhook_id": webhook_id.as_str(),
                "event": event.as_str(),
                "target_url": target_url.as_str(),
                "reason": reason,
                "disabled_at": to_rfc3339(*disabled_at),
            }),
            Self::WebhookTest { webhook_id, sent_at } => {
                json!({"webhook_id": webhook_id.as_str(), "sent_at": to_rfc3339(*sent_at)})
            }
        };
        EventData::from_trusted(data.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Catalog;

    fn examples() -> Vec<Operational> {
        vec![
            Operational::WebhookDisabled {
                webhook_id: WebhookId::generate(),
                event: EventName::from_trusted("order.created"),
                target_url: TargetUrl::parse("https://example.com/hooks?token=1").unwrap(),
                reason: "The receiver answered 410 Gone.".into(),
                disabled_at: 1_700_000_000_000,
            },
            Operational::WebhookTest { webhook_id: WebhookId::generate(), sent_at: 1_700_000_000_000 },
        ]
    }

    #[test]
    fn every_operational_event_has_data_that_its_catalog_schema_accepts() {
        let catalog = Catalog::builtin();
        for event in examples() {
            let schema = catalog.operational_schema(event.name().as_str()).expect("a catalog entry");
            let validator = jsonschema::options().should_validate_formats(true).build(schema).unwrap();
            let data: serde_json::Value = serde_json::from_str(event.data().as_json()).unwrap();
            assert!(validator.is_valid(&data), "{}: {data}", event.name());
        }
    }

    #[test]
    fn every_operational_name_is_reserved() {
        for event in examples() {
            assert!(is_reserved(event.name().as_str()));
        }
        assert!(!is_reserved("order.created"));
    }
}
