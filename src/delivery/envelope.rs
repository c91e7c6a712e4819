//! The body of every delivery, SPEC §5:
//! `{"id": "<event id>", "type": "<event_name>", "timestamp": "<RFC 3339>", "data": {...}}`.
//!
//! Serialized by serde, so every field is escaped whatever it holds; `data` is
//! the stored JSON text embedded as it is (a [`RawValue`]), never parsed into
//! a tree and written again. These bytes are what is signed.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::domain::time::to_rfc3339;
use crate::domain::{EventData, EventId, EventName, UnixMs};

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    data: &'a RawValue,
}

/// Stored data that is not JSON: only a damaged database row can cause it.
#[derive(Debug, thiserror::Error)]
#[error("the stored event data is not valid JSON")]
pub struct DamagedData;

/// The request body for an event.
pub fn body(id: &EventId, name: &EventName, created_at: UnixMs, data: &EventData) -> Result<Bytes, DamagedData> {
    let data: &RawValue = serde_json::from_str(data.as_json()).map_err(|_| DamagedData)?;
    let envelope = Envelope { id: id.as_str(), event_type: name.as_str(), timestamp: to_rfc3339(created_at), data };
    Ok(Bytes::from(serde_json::to_vec(&envelope).expect("a struct of strings and raw JSON serializes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_spec_envelope_with_data_as_stored() {
        let id = EventId::from_trusted("evt_0193".to_owned());
        let data = EventData::from_trusted(r#"{"order_id":"o-1","total_amount":12990}"#.to_owned());
        let body = body(&id, &EventName::from_trusted("order.created"), 1_764_489_600_123, &data).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"evt_0193","type":"order.created","timestamp":"2025-11-30T08:00:00.123Z","data":{"order_id":"o-1","total_amount":12990}}"#
        );
    }

    #[test]
    fn names_are_escaped_whatever_a_catalog_allows() {
        let id = EventId::from_trusted("evt_1".to_owned());
        let data = EventData::from_trusted("{}".to_owned());
        let body = body(&id, &EventName::from_trusted(r#"a"b\c"#), 0, &data).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["type"], r#"a"b\c"#);
    }

    #[test]
    fn damaged_data_is_an_error_not_a_broken_body() {
        let id = EventId::from_trusted("evt_1".to_owned());
        let data = EventData::from_trusted(r#"{"cut":"#.to_owned());
        assert!(body(&id, &EventName::from_trusted("order.paid"), 0, &data).is_err());
    }
}
