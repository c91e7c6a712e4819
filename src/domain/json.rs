//! JSON as hookline reads and compares it: one value per key, and a canonical
//! text that does not depend on the order of keys.
//!
//! A JSON parser that lets the last of two equal keys win reads
//! `{"amount": 1, "amount": 1000}` differently from one that lets the first
//! win, or that refuses it; a body that two systems read differently is how
//! checks get bypassed. So request bodies are parsed by [`parse_strict`],
//! which refuses a repeated key anywhere and says where.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::field::{FieldPath, Step};

/// Why a body is not taken as JSON.
#[derive(Debug)]
pub enum JsonError {
    /// Not JSON at all (or nested deeper than 128 levels).
    Malformed(serde_json::Error),
    /// Well-formed, but an object has this key twice.
    DuplicateKey(FieldPath),
}

/// Parses one JSON value; a key given twice in any object is refused.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    let duplicate = RefCell::new(None);
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict { duplicate: &duplicate }.deserialize(&mut parser).and_then(|value| {
        parser.end()?;
        Ok(value)
    });
    parsed.map_err(|e| match duplicate.into_inner() {
        Some(mut steps) => {
            // Gathered from the innermost object outwards.
            steps.reverse();
            JsonError::DuplicateKey(FieldPath::from_steps(steps))
        }
        None => JsonError::Malformed(e),
    })
}

/// A value as a serde visitor builds it, refusing repeated keys. On a repeat,
/// `duplicate` gets the repeated key, and each enclosing array or object adds
/// its step on the way out, so the happy path builds no paths at all.
#[derive(Clone, Copy)]
struct Strict<'a> {
    duplicate: &'a RefCell<Option<Vec<Step>>>,
}

impl Strict<'_> {
    /// An error came from inside `step`: if it is a repeat, the path grows.
    fn passing(&self, step: Step) {
        if let Some(steps) = self.duplicate.borrow_mut().as_mut() {
            steps.push(step);
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // As serde_json's own Value does; a JSON text has no NaN or infinity.
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    self.passing(Step::Index(items.len()));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = match map.next_value_seed(self) {
                Ok(value) => value,
                Err(e) => {
                    self.passing(Step::Key(key));
                    return Err(e);
                }
            };
            match object.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                serde_json::map::Entry::Occupied(slot) => {
                    *self.duplicate.borrow_mut() = Some(vec![Step::Key(slot.key().clone())]);
                    return Err(de::Error::custom("a key appears more than once"));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// `value` as compact JSON text with the keys of every object in sorted order:
/// the same text for the same data, whatever order its keys were sent in.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(object) => {
            let mut entries: Vec<(&String, &Value)> = object.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn duplicate_at(text: &str) -> FieldPath {
        match parse_strict(text.as_bytes()) {
            Err(JsonError::DuplicateKey(path)) => path,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn bodies_without_repeated_keys_parse_as_serde_json_parses_them() {
        let text = r#"{"b": [1, -2, 3.5, "x", null, true, {"a": {}}], "a": {"c": 1e300, "d": 18446744073709551615}}"#;
        let strict = parse_strict(text.as_bytes()).unwrap();
        assert_eq!(strict, serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(strict.to_string(), serde_json::from_str::<Value>(text).unwrap().to_string(), "key order kept");
    }

    #[test]
    fn a_repeated_key_anywhere_is_refused_naming_where() {
        let path = |steps: &[Step]| FieldPath::from_steps(steps.to_vec());
        let key = |k: &str| Step::Key(k.to_owned());
        assert_eq!(duplicate_at(r#"{"event_name": "a", "event_name": "b"}"#), path(&[key("event_name")]));
        assert_eq!(
            duplicate_at(r#"{"data": {"items": [{}, {"sku": "a", "sku": "b"}]}}"#),
            path(&[key("data"), key("items"), Step::Index(1), key("sku")])
        );
        assert_eq!(duplicate_at(r#"[[], [{"x": 1, "x": 1}]]"#), path(&[Step::Index(1), Step::Index(0), key("x")]));
    }

    #[test]
    fn malformed_text_is_not_taken_for_a_repeat() {
        for text in ["{", r#"{"a": 1} x"#, r#"{"a": 1, "a"#, &"[".repeat(200)] {
            assert!(matches!(parse_strict(text.as_bytes()), Err(JsonError::Malformed(_))), "{text}");
        }
    }

    #[test]
    fn the_canonical_text_sorts_keys_at_every_depth() {
        let a = parse_strict(br#"{"b": {"y": [1, {"q": 1, "p": 2}], "x": "\u00e9\n"}, "a": 1.5}"#).unwrap();
        let b = parse_strict(br#"{"a": 1.5, "b": {"x": "\u00e9\n", "y": [1, {"p": 2, "q": 1}]}}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(canonical(&a), r#"{"a":1.5,"b":{"x":"é\n","y":[1,{"p":2,"q":1}]}}"#);
        assert_ne!(canonical(&json!({"a": [1, 2]})), canonical(&json!({"a": [2, 1]})), "arrays keep their order");
    }
}
