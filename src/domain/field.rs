//! Where in a request body a problem is, and how an error says so.
//!
//! Keys in a body are chosen by the client, and a key can carry anything a
//! value can: `data.PII_john@example.com: unknown field` would copy an e-mail
//! address into the answer and into anything that records answers. So an
//! error names a field by its path only when every key on the path is a
//! *plain* key (see [`is_plain_key`]); otherwise it names the deepest part of
//! the path that is plain and says "has an unknown field" or "has a field
//! that …", never quoting the key.

use std::fmt::Write as _;

/// Longest key that an error quotes.
pub const MAX_PLAIN_KEY_LEN: usize = 64;

/// One reason an input was refused, pointing at the field: `data.items[0].sku`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The offending field's path, e.g. `data.items[0].sku`; empty for the
    /// body itself. A key that is not a plain identifier (letters, digits,
    /// `_`, `-`, `.`, at most 64 characters) is never quoted: the path then
    /// stops before it.
    pub field: String,
    /// What is wrong with it; never quotes the value sent.
    pub message: String,
}

impl FieldError {
    /// An error at a field whose name is not the client's (a field of the
    /// API's own types, a query parameter, a header).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Whether an error may quote `key`: ASCII letters, digits, `_`, `-` and `.`,
/// 1 to [`MAX_PLAIN_KEY_LEN`] of them.
pub fn is_plain_key(key: &str) -> bool {
    (1..=MAX_PLAIN_KEY_LEN).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// One step into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A path into a request body, such as `data.items[0].sku`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Step>);

impl FieldPath {
    /// The body itself.
    pub fn root() -> Self {
        Self::default()
    }

    pub fn from_steps(steps: Vec<Step>) -> Self {
        Self(steps)
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.0.push(Step::Key(key.into()));
        self
    }

    pub fn index(mut self, index: usize) -> Self {
        self.0.push(Step::Index(index));
        self
    }

    pub fn last(&self) -> Option<&Step> {
        self.0.last()
    }

    /// The path as far as its keys are plain, and whether that is all of it.
    fn shown(&self) -> (String, bool) {
        let mut out = String::new();
        for step in &self.0 {
            match step {
                Step::Key(key) if is_plain_key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Step::Key(_) => return (out, false),
                Step::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        (out, true)
    }

    /// The field at this path breaks a rule; `message` completes a sentence
    /// whose subject is the field ("must be a string", "is required").
    pub fn error(&self, message: &str) -> FieldError {
        match self.shown() {
            (field, true) => FieldError::new(field, message),
            (field, false) => hidden(field, &format!("has a field that {message}")),
        }
    }

    /// The field at this path is not one the body may have.
    pub fn unknown(&self) -> FieldError {
        match self.shown() {
            (field, true) => FieldError::new(field, "unknown field"),
            (field, false) => hidden(field, "has an unknown field"),
        }
    }
}

/// An error about a field that is not named, said of the plain part of its
/// path (`data.metadata: has a field that …`), or of the body.
fn hidden(field: String, message: &str) -> FieldError {
    if field.is_empty() {
        FieldError::new(field, format!("the body {message}"))
    } else {
        FieldError::new(field, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_are_short_identifiers() {
        for key in ["order_id", "a", "x-request.id", "K9", &"k".repeat(64)] {
            assert!(is_plain_key(key), "{key:?}");
        }
        for key in ["", "PII_john@example.com", "two words", "ключ", "a/b", "a`b", "é", &"k".repeat(65)] {
            assert!(!is_plain_key(key), "{key:?}");
        }
    }

    #[test]
    fn a_path_is_named_only_as_far_as_its_keys_are_plain() {
        let items = FieldPath::root().key("data").key("items").index(0);
        assert_eq!(items.clone().key("sku").error("is required"), FieldError::new("data.items[0].sku", "is required"));
        assert_eq!(items.clone().key("colour").unknown(), FieldError::new("data.items[0].colour", "unknown field"));

        let secret = FieldPath::root().key("data").key("PII_john@example.com");
        assert_eq!(secret.unknown(), FieldError::new("data", "has an unknown field"));
        assert_eq!(
            secret.clone().key("inner").error("must be a string"),
            FieldError::new("data", "has a field that must be a string")
        );
        assert_eq!(FieldPath::root().key("a b").unknown(), FieldError::new("", "the body has an unknown field"));
        assert_eq!(
            FieldPath::root().key("event_name").error("appears more than once"),
            FieldError::new("event_name", "appears more than once")
        );
    }
}
