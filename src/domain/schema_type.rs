//! The `type` keyword of the catalog's JSON Schemas, in place of the schema
//! library's own, so that `integer` means what receivers can hold.
//!
//! In JSON Schema an integer is any number without a fractional part: `1.0`,
//! `1e300` and `18446744073709551616` all pass, and would be stored and
//! delivered as floats (`1.8446744073709552e19`), beyond what a receiver's
//! 64-bit integer holds, or rounded. hookline's integers are amounts in minor
//! units and counts, so here an `integer` is a JSON integer that fits a signed
//! 64-bit integer: digits only, from −2⁶³ to 2⁶³−1. `1.0` is refused too: it
//! would reach receivers as `1.0`, a float to most JSON parsers, and an amount
//! written as a float is a bug worth telling its sender about. `number` keeps
//! its JSON Schema meaning. The other types are as JSON Schema defines them.

use jsonschema::paths::{LazyLocation, Location};
use jsonschema::{Keyword, ValidationError};
use serde_json::{Map, Value};

/// What a refused integer is told.
pub const NOT_AN_INT64: &str =
    "must be an integer from -9223372036854775808 to 9223372036854775807, without a fraction or exponent";

/// The JSON types a schema can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonType {
    Null,
    Boolean,
    Object,
    Array,
    Number,
    Integer,
    String,
}

impl JsonType {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "null" => Self::Null,
            "boolean" => Self::Boolean,
            "object" => Self::Object,
            "array" => Self::Array,
            "number" => Self::Number,
            "integer" => Self::Integer,
            "string" => Self::String,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::String => "string",
        }
    }

    fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (Self::Null, Value::Null)
            | (Self::Boolean, Value::Bool(_))
            | (Self::Object, Value::Object(_))
            | (Self::Array, Value::Array(_))
            | (Self::Number, Value::Number(_))
            | (Self::String, Value::String(_)) => true,
            // Integers that fit an i64 are the only numbers serde_json keeps as i64.
            (Self::Integer, Value::Number(n)) => n.is_i64(),
            _ => false,
        }
    }
}

/// A compiled `type` keyword.
struct TypeKeyword {
    allowed: Vec<JsonType>,
    /// Where the keyword sits in the schema, for errors.
    location: Location,
}

/// Compiles a `type` keyword (given to [`jsonschema::ValidationOptions::with_keyword`]).
#[allow(clippy::result_large_err)] // the signature jsonschema asks for
pub fn compile<'a>(
    _schema: &'a Map<String, Value>,
    value: &'a Value,
    location: Location,
) -> Result<Box<dyn Keyword>, ValidationError<'a>> {
    let names: Vec<&Value> = match value {
        Value::Array(names) => names.iter().collect(),
        name => vec![name],
    };
    let allowed: Option<Vec<JsonType>> = names.iter().map(|n| n.as_str().and_then(JsonType::parse)).collect();
    match allowed {
        Some(allowed) if !allowed.is_empty() => Ok(Box::new(TypeKeyword { allowed, location })),
        _ => Err(ValidationError::custom(Location::new(), location, value, "`type` must name JSON types")),
    }
}

impl TypeKeyword {
    /// Why `value` is refused: a number that JSON Schema would call an integer
    /// gets the range; anything else the allowed types.
    fn message(&self, value: &Value) -> String {
        let whole = match value {
            Value::Number(n) => n.as_f64().is_some_and(|f| f.fract() == 0.0),
            _ => false,
        };
        if whole && self.allowed.contains(&JsonType::Integer) {
            return NOT_AN_INT64.to_owned();
        }
        let names: Vec<&str> = self.allowed.iter().map(|t| t.name()).collect();
        format!("must be of type {}", names.join(" or "))
    }
}

impl Keyword for TypeKeyword {
    fn validate<'i>(&self, instance: &'i Value, location: &LazyLocation) -> Result<(), ValidationError<'i>> {
        if self.is_valid(instance) {
            return Ok(());
        }
        Err(ValidationError::custom(self.location.clone(), location.into(), instance, self.message(instance)))
    }

    fn is_valid(&self, instance: &Value) -> bool {
        self.allowed.iter().any(|t| t.admits(instance))
    }
}
