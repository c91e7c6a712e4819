//! The event catalog: which event names a project may send, and the JSON Schema
//! their `data` must satisfy.
//!
//! The default catalog (`default_catalog.json`, compiled in) allows
//! `order.created` and `order.paid`. `--event-catalog FILE` replaces it with a file
//! of the same shape: a JSON object from event name to JSON Schema.
//!
//! Every catalog also holds the reserved `webhook.*` entries of hookline's own
//! operational events (see [`super::operational`]): webhooks may subscribe to
//! the subscribable ones, clients may never send any, and a catalog file may
//! not define one.
//!
//! Validation messages are written here rather than taken from the schema
//! library, because the library's messages quote the offending value, and event
//! data must never be echoed into error bodies or logs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use anyhow::Context as _;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

use super::field::{FieldError, FieldPath};
use super::operational;

/// The compiled-in catalog, also the reference for the `--event-catalog` format.
pub const DEFAULT_CATALOG_JSON: &str = include_str!("default_catalog.json");

/// Event names are short dotted lower-case words, like `order.created`.
const MAX_EVENT_NAME_LEN: usize = 128;

/// The allowed events and their compiled schemas.
pub struct Catalog {
    /// Sorted, so listings and error messages are stable.
    events: BTreeMap<String, jsonschema::Validator>,
    /// The schemas as written, for the OpenAPI document.
    schemas: BTreeMap<String, Value>,
    /// hookline's own events (`webhook.*`), which clients cannot send.
    operational: BTreeMap<String, OperationalEntry>,
}

/// A reserved entry of `operational_catalog.json`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationalEntry {
    /// Whether a webhook may subscribe to it (`webhook.test` goes only to the
    /// webhook tested).
    subscribable: bool,
    /// What it reports, for the OpenAPI document.
    description: String,
    /// The JSON Schema of its `data`.
    data: Value,
}

/// An event name that the catalog allows. Only [`Catalog::event_name`] makes one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventName(Arc<str>);

impl EventName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a name read back from the database, which holds only names that
    /// were allowed when they were written.
    pub fn from_trusted(s: &str) -> Self {
        Self(Arc::from(s))
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Event data that passed its schema: the compact JSON text of an object.
///
/// Its `Debug` hides the content, so it cannot reach a log by accident.
/// Shared rather than copied: one event's data goes into every delivery.
#[derive(Clone, PartialEq, Eq)]
pub struct EventData(Arc<str>);

impl EventData {
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// Wraps JSON text read back from the database.
    pub fn from_trusted(s: String) -> Self {
        Self(Arc::from(s))
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventData({} bytes)", self.0.len())
    }
}

/// Why event data was refused.
#[derive(Debug)]
pub enum DataError {
    /// Larger than `--max-data-bytes` once serialized.
    TooLarge { limit: usize },
    /// Fails the schema; each entry names a field.
    Invalid(Vec<FieldError>),
}

impl Catalog {
    /// The compiled-in catalog.
    pub fn builtin() -> Self {
        Self::from_json_str(DEFAULT_CATALOG_JSON).expect("the built-in catalog is valid")
    }

    /// Reads a catalog file (`--event-catalog`).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading event catalog {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("event catalog {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> anyhow::Result<Self> {
        let value: Value = serde_json::from_str(text).context("not valid JSON")?;
        let Value::Object(map) = value else {
            anyhow::bail!("must be a JSON object from event name to JSON Schema");
        };
        let mut events = BTreeMap::new();
        let mut schemas = BTreeMap::new();
        for (name, schema) in map {
            anyhow::ensure!(
                is_valid_event_name(&name),
                "event name {name:?} must be dotted lower-case words like order.created"
            );
            anyhow::ensure!(
                !operational::is_reserved(&name),
                "event name {name:?} is reserved: {}* names are hookline's own events",
                operational::RESERVED_PREFIX
            );
            // `integer` means a signed 64-bit integer (see `schema_type`).
            let mut options =
                jsonschema::options().should_validate_formats(true).with_keyword("type", super::schema_type::compile);
            // A schema that names no dialect is read as Draft 7: it has every
            // keyword event schemas need, and its meta-schema, which checks
            // each catalog schema once at start, costs a fraction of the
            // memory of 2020-12's (about 1 MB against 25 MB, kept for the
            // life of the process). A schema that names its `$schema` gets it.
            if schema.get("$schema").is_none() {
                options = options.with_draft(jsonschema::Draft::Draft7);
            }
            let validator = options.build(&schema).map_err(|e| anyhow::anyhow!("schema of {name}: {e}"))?;
            events.insert(name.clone(), validator);
            schemas.insert(name, schema);
        }
        anyhow::ensure!(!events.is_empty(), "the catalog allows no event");
        let operational =
            serde_json::from_str(operational::OPERATIONAL_CATALOG_JSON).expect("the operational catalog is valid");
        Ok(Self { events, schemas, operational })
    }

    /// The names clients may send, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.events.keys().map(String::as_str)
    }

    /// The names a webhook may subscribe to: the clients' events, then
    /// hookline's subscribable operational events, each sorted.
    pub fn subscribable_names(&self) -> impl Iterator<Item = &str> {
        self.names().chain(self.operational.iter().filter(|(_, e)| e.subscribable).map(|(k, _)| k.as_str()))
    }

    /// The name, if a webhook may subscribe to it.
    pub fn subscribable(&self, s: &str) -> Option<EventName> {
        self.event_name(s).or_else(|| {
            self.operational.get_key_value(s).filter(|(_, e)| e.subscribable).map(|(k, _)| EventName::from_trusted(k))
        })
    }

    /// Each operational event with its description and the JSON Schema of its `data`, sorted by name.
    pub fn operational(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.operational.iter().map(|(k, e)| (k.as_str(), e.description.as_str(), &e.data))
    }

    /// The JSON Schema of an operational event's `data`.
    pub fn operational_schema(&self, name: &str) -> Option<&Value> {
        self.operational.get(name).map(|e| &e.data)
    }

    /// Each allowed event with the JSON Schema of its `data`, sorted by name.
    pub fn schemas(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.schemas.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The name, if the catalog allows it.
    pub fn event_name(&self, s: &str) -> Option<EventName> {
        self.events.get_key_value(s).map(|(k, _)| EventName(Arc::from(k.as_str())))
    }

    /// Checks `data` against the event's schema and size limit.
    pub fn parse_data(&self, name: &EventName, data: &Value, max_bytes: usize) -> Result<EventData, DataError> {
        let validator = &self.events[name.as_str()];
        // `is_valid` stops at the first problem and builds no error values;
        // collecting every error costs several times more, so only a refused
        // event pays for it.
        if !validator.is_valid(data) {
            let mut errors: Vec<FieldError> = validator.iter_errors(data).flat_map(|e| describe(data, &e)).collect();
            errors.sort_by(|a, b| a.field.cmp(&b.field));
            errors.dedup();
            if errors.is_empty() {
                errors.push(FieldError::new("data", "is not valid"));
            }
            return Err(DataError::Invalid(errors));
        }
        let text = serde_json::to_string(data).expect("a JSON value serializes");
        if text.len() > max_bytes {
            return Err(DataError::TooLarge { limit: max_bytes });
        }
        Ok(EventData(Arc::from(text)))
    }
}

fn is_valid_event_name(s: &str) -> bool {
    s.len() <= MAX_EVENT_NAME_LEN
        && s.split('.').count() >= 2
        && s.split('.')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
}

/// Turns a schema error into field errors (one per unknown field) that never
/// quote the value, nor a key that is not plain.
fn describe(data: &Value, e: &jsonschema::ValidationError<'_>) -> Vec<FieldError> {
    let path = field_path(data, e.instance_path.as_str());
    match &e.kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            unexpected.iter().map(|name| path.clone().key(name.as_str()).unknown()).collect()
        }
        ValidationErrorKind::Required { property } => {
            vec![path.key(property.as_str().unwrap_or("?")).error("is required")]
        }
        kind => vec![path.error(&message(kind))],
    }
}

fn message(kind: &ValidationErrorKind) -> String {
    use ValidationErrorKind as K;
    match kind {
        K::Type { kind } => {
            let names: Vec<String> = match kind {
                TypeKind::Single(t) => vec![t.to_string()],
                TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect(),
            };
            format!("must be of type {}", names.join(" or "))
        }
        K::MaxLength { limit } => format!("must be at most {limit} characters"),
        K::MinLength { limit } => format!("must be at least {limit} characters"),
        K::Minimum { limit } => format!("must be at least {limit}"),
        K::Maximum { limit } => format!("must be at most {limit}"),
        K::ExclusiveMinimum { limit } => format!("must be greater than {limit}"),
        K::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        K::MaxItems { limit } => format!("must have at most {limit} items"),
        K::MinItems { limit } => format!("must have at least {limit} items"),
        K::MaxProperties { limit } => format!("must have at most {limit} fields"),
        K::MinProperties { limit } => format!("must have at least {limit} fields"),
        K::Pattern { pattern } => format!("must match the pattern {pattern}"),
        K::Format { format } => format!("must be a valid {format}"),
        K::Enum { options } => format!("must be one of {options}"),
        K::Constant { expected_value } => format!("must be {expected_value}"),
        K::UniqueItems => "must not contain duplicate items".into(),
        K::MultipleOf { multiple_of } => format!("must be a multiple of {multiple_of}"),
        // Our own keywords' messages, which never quote the value.
        K::Custom { message } => message.clone(),
        _ => "is not allowed here".into(),
    }
}

/// `/items/0/sku` → `data.items[0].sku`, using the value to tell array indexes
/// from object keys that happen to be digits.
fn field_path(data: &Value, pointer: &str) -> FieldPath {
    let mut path = FieldPath::root().key("data");
    let mut current = Some(data);
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        match (current, seg.parse::<usize>()) {
            (Some(Value::Array(items)), Ok(i)) => {
                current = items.get(i);
                path = path.index(i);
            }
            (Some(Value::Object(map)), _) => {
                current = map.get(&seg);
                path = path.key(seg);
            }
            _ => {
                current = None;
                path = path.key(seg);
            }
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(event: &str, data: Value) -> Result<EventData, Vec<FieldError>> {
        let catalog = Catalog::builtin();
        let name = catalog.event_name(event).expect("allowed");
        catalog.parse_data(&name, &data, 65_536).map_err(|e| match e {
            DataError::Invalid(errors) => errors,
            DataError::TooLarge { .. } => panic!("unexpected size error"),
        })
    }

    #[test]
    fn the_default_catalog_allows_the_two_order_events_only() {
        let catalog = Catalog::builtin();
        assert_eq!(catalog.names().collect::<Vec<_>>(), ["order.created", "order.paid"]);
        assert!(catalog.event_name("order.refunded").is_none());
    }

    #[test]
    fn a_complete_order_created_is_accepted_and_kept_in_field_order() {
        let data = json!({
            "order_id": "ord_1", "customer_id": "cus_1", "currency": "EUR", "total_amount": 1999,
            "items": [{"sku": "A-1", "quantity": 2, "unit_price": 999}],
            "created_at": "2026-11-30T08:00:00Z", "metadata": {"channel": "web"}
        });
        let parsed = check("order.created", data).unwrap();
        assert!(parsed.as_json().starts_with(r#"{"order_id":"ord_1","customer_id""#));
    }

    #[test]
    fn schema_errors_name_the_field_and_never_quote_the_value() {
        let cases = [
            (json!({}), "data.order_id", "is required"),
            (json!({"order_id": "o", "secret_marker": 1}), "data.secret_marker", "unknown field"),
            (json!({"order_id": 42}), "data.order_id", "must be of type string"),
            (json!({"order_id": "o", "currency": "eur"}), "data.currency", "must match the pattern ^[A-Z]{3}$"),
            (json!({"order_id": "o", "total_amount": -1}), "data.total_amount", "must be at least 0"),
            (json!({"order_id": "o", "total_amount": 1.5}), "data.total_amount", "must be of type integer"),
            (json!({"order_id": "o", "created_at": "tuesday"}), "data.created_at", "must be a valid date-time"),
            (json!({"order_id": "x".repeat(129)}), "data.order_id", "must be at most 128 characters"),
            (
                json!({"order_id": "o", "items": [{"sku": "a", "quantity": 0, "unit_price": 1}]}),
                "data.items[0].quantity",
                "must be at least 1",
            ),
        ];
        for (data, field, message) in cases {
            let errors = check("order.created", data.clone()).unwrap_err();
            assert!(errors.contains(&FieldError::new(field, message)), "{data}: got {errors:?}");
            for e in &errors {
                assert!(!e.message.contains("tuesday") && !e.message.contains("eur"));
            }
        }
    }

    #[test]
    fn integers_are_json_integers_that_fit_a_signed_64_bit_integer() {
        // The raw text of `total_amount`, and whether it is accepted.
        let cases = [
            ("0", true),
            ("1999", true),
            ("9223372036854775807", true),
            ("9223372036854775808", false),
            ("18446744073709551615", false),
            ("18446744073709551616", false),
            ("1e300", false),
            ("1E2", false),
            ("1.0", false),
        ];
        for (text, accepted) in cases {
            let data: Value = serde_json::from_str(&format!(r#"{{"order_id": "o", "total_amount": {text}}}"#)).unwrap();
            match check("order.created", data) {
                Ok(parsed) => {
                    assert!(accepted, "{text} was accepted");
                    assert!(parsed.as_json().contains(&format!(":{text}}}")), "{text} stored as {}", parsed.as_json());
                }
                Err(errors) => {
                    assert!(!accepted, "{text} was refused: {errors:?}");
                    assert_eq!(errors, [FieldError::new("data.total_amount", super::super::schema_type::NOT_AN_INT64)]);
                }
            }
        }
        let errors = check(
            "order.created",
            json!({"order_id": "o", "items": [{"sku": "a", "quantity": 1e3, "unit_price": 1e19}]}),
        )
        .unwrap_err();
        assert_eq!(
            errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            ["data.items[0].quantity", "data.items[0].unit_price"],
        );
    }

    #[test]
    fn a_catalog_may_still_take_any_number_where_it_says_number() {
        let catalog = Catalog::from_json_str(
            r#"{"reading.taken": {"type": "object", "properties": {
                "value": {"type": "number"}, "count": {"type": ["integer", "null"]}}}}"#,
        )
        .unwrap();
        let name = catalog.event_name("reading.taken").unwrap();
        let parse = |data: Value| catalog.parse_data(&name, &data, 1024).map(|d| d.as_json().to_owned());
        assert!(parse(json!({"value": 1e300, "count": null})).is_ok());
        assert!(parse(json!({"value": 2.5, "count": 7})).is_ok());
        let Err(DataError::Invalid(errors)) = parse(json!({"count": 7.0})) else { panic!("7.0 accepted") };
        assert_eq!(errors, [FieldError::new("data.count", super::super::schema_type::NOT_AN_INT64)]);
        let Err(DataError::Invalid(errors)) = parse(json!({"count": "7"})) else { panic!("\"7\" accepted") };
        assert_eq!(errors, [FieldError::new("data.count", "must be of type integer or null")]);
    }

    #[test]
    fn errors_never_quote_a_key_that_is_not_plain() {
        let errors = check("order.paid", json!({"order_id": "o", "PII_john@example.com": 1, "colour": 2})).unwrap_err();
        assert_eq!(
            errors,
            [FieldError::new("data", "has an unknown field"), FieldError::new("data.colour", "unknown field")]
        );
        let errors = check("order.paid", json!({"order_id": "o", "metadata": {"john doe": 5}})).unwrap_err();
        assert_eq!(errors, [FieldError::new("data.metadata", "has a field that must be of type string")]);
    }

    #[test]
    fn metadata_is_limited_to_fifty_string_values() {
        let many: serde_json::Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
        let errors = check("order.paid", json!({"order_id": "o", "metadata": many})).unwrap_err();
        assert_eq!(errors, [FieldError::new("data.metadata", "must have at most 50 fields")]);
        let errors = check("order.paid", json!({"order_id": "o", "metadata": {"a": 1}})).unwrap_err();
        assert_eq!(errors, [FieldError::new("data.metadata.a", "must be of type string")]);
    }

    #[test]
    fn data_over_the_byte_limit_is_refused() {
        let catalog = Catalog::builtin();
        let name = catalog.event_name("order.paid").unwrap();
        let data = json!({"order_id": "o", "payment_id": "p".repeat(100)});
        assert!(matches!(catalog.parse_data(&name, &data, 64), Err(DataError::TooLarge { limit: 64 })));
    }

    #[test]
    fn a_catalog_file_with_a_bad_event_name_is_refused() {
        assert!(Catalog::from_json_str(r#"{"Order Created": {}}"#).is_err());
        assert!(Catalog::from_json_str(r#"{"invoice.sent": {"type": "object"}}"#).is_ok());
        assert!(Catalog::from_json_str("{}").is_err());
    }

    #[test]
    fn webhook_events_are_hookline_s_own() {
        let catalog = Catalog::builtin();
        assert!(catalog.event_name("webhook.disabled").is_none(), "clients cannot send it");
        assert_eq!(catalog.subscribable("webhook.disabled").unwrap().as_str(), "webhook.disabled");
        assert!(catalog.subscribable("webhook.test").is_none(), "a test goes only to the webhook tested");
        assert_eq!(
            catalog.subscribable_names().collect::<Vec<_>>(),
            ["order.created", "order.paid", "webhook.disabled"]
        );
        let err = Catalog::from_json_str(r#"{"webhook.created": {"type": "object"}}"#).err().unwrap();
        assert!(format!("{err:#}").contains("reserved"), "{err:#}");
    }

    #[test]
    fn event_data_debug_hides_the_content() {
        let parsed = check("order.paid", json!({"order_id": "very-private"})).unwrap();
        assert!(!format!("{parsed:?}").contains("very-private"));
    }
}
