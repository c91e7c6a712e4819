//! Request extractors that answer bad input with our problem documents
//! instead of axum's plain-text rejections.

use std::collections::HashMap;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, REQUEST_BODY};
use crate::domain::field::{FieldError, FieldPath, Step};
use crate::domain::json::{self, JsonError};
use crate::store::Page;

/// Bytes beyond `--max-data-bytes` a request body may carry (event name, keys,
/// whitespace), before it is refused unread.
const BODY_SLACK: usize = 16 * 1024;
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// A JSON body: 415 unless declared JSON, 413 over the size limit, 408 unless
/// it arrives within `--client-timeout`, 400 unless it parses, and 422 naming
/// the key when an object has a key twice.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let declared_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !declared_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.settings.max_data_bytes + BODY_SLACK;
        let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
            if caused_by::<crate::server::RequestTimedOut>(&e) {
                ApiError::RequestTimeout
            } else if caused_by::<http_body_util::LengthLimitError>(&e) {
                ApiError::PayloadTooLarge { what: REQUEST_BODY, limit }
            } else {
                ApiError::BadRequest("the body could not be read whole".into())
            }
        })?;
        // serde_json refuses nesting deeper than 128 levels, so absurd nesting
        // is a 400 here rather than a stack overflow anywhere.
        let value = json::parse_strict(&bytes).map_err(|e| match e {
            JsonError::Malformed(e) => ApiError::BadRequest(format!("the body is not valid JSON: {e}")),
            JsonError::DuplicateKey(path) => ApiError::Validation(vec![path.error("appears more than once")]),
        })?;
        Ok(Self(value))
    }
}

/// Whether `e` or an error it wraps is an `E`.
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A JSON body deserialized into `T`; shape errors are 422 naming the field.
pub struct TypedJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for TypedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let JsonBody(value) = JsonBody::from_request(req, state).await?;
        if !value.is_object() {
            return Err(ApiError::invalid("", "the body must be a JSON object"));
        }
        serde_path_to_error::deserialize(value).map(Self).map_err(|e| {
            let path = FieldPath::from_steps(e.path().iter().filter_map(step).collect());
            ApiError::Validation(vec![describe_serde_error(path, &e.inner().to_string())])
        })
    }
}

fn step(segment: &serde_path_to_error::Segment) -> Option<Step> {
    use serde_path_to_error::Segment;
    match segment {
        Segment::Seq { index } => Some(Step::Index(*index)),
        Segment::Map { key } => Some(Step::Key(key.clone())),
        Segment::Enum { .. } | Segment::Unknown => None,
    }
}

/// serde's messages quote the offending value; ours name the field (when its
/// name is plain, see [`FieldPath`]) and the expectation only.
fn describe_serde_error(path: FieldPath, msg: &str) -> FieldError {
    // "unknown field `name`, expected one of `a`, `b`" or "unknown field
    // `name`, there are no fields". The name may hold anything, backquotes
    // too; what follows it is ours, so it is cut at the last marker.
    let unknown = msg.strip_prefix("unknown field `").and_then(|rest| {
        rest.rsplit_once("`, expected ").map(|(name, _)| name).or_else(|| rest.strip_suffix("`, there are no fields"))
    });
    if let Some(name) = unknown {
        let at_field = matches!(path.last(), Some(Step::Key(last)) if last == name);
        return if at_field { path } else { path.key(name) }.unknown();
    }
    // The struct's own field names, not the client's.
    let missing = msg.strip_prefix("missing field `").and_then(|rest| rest.split_once('`')).map(|(name, _)| name);
    if let Some(name) = missing {
        return path.key(name).error("is required");
    }
    match msg.rsplit_once("expected ") {
        Some((_, expected)) => path.error(&format!("must be {expected}")),
        None => path.error("is not valid"),
    }
}

/// The pagination parameters that [`QueryMap::page`] reads, for the OpenAPI
/// document (nothing constructs it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Items per page.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Query parameters as a map; unknown ones are ignored.
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        Ok(Self(url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()))
    }
}

impl QueryMap {
    /// `?limit=` and `?cursor=`; the cursor must be an id of the listed kind.
    pub fn page(&self, cursor_is_valid: impl Fn(&str) -> bool) -> Result<Page, ApiError> {
        let limit = match self.0.get("limit") {
            None => DEFAULT_LIMIT,
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| ApiError::invalid("limit", format!("must be an integer from 1 to {MAX_LIMIT}")))?,
        };
        let after = match self.0.get("cursor") {
            None => None,
            Some(c) if cursor_is_valid(c) => Some(c.clone()),
            Some(_) => return Err(ApiError::invalid("cursor", "is not a cursor returned by this list")),
        };
        Ok(Page { limit, after })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_errors_name_fields_without_values() {
        let root = FieldPath::root;
        let e = describe_serde_error(root(), "unknown field `colour`, expected one of `event`, `target_url`");
        assert_eq!(e, FieldError::new("colour", "unknown field"));
        let e = describe_serde_error(root(), "missing field `event`");
        assert_eq!(e, FieldError::new("event", "is required"));
        let e = describe_serde_error(root().key("is_active"), "invalid type: string \"private\", expected a boolean");
        assert_eq!(e, FieldError::new("is_active", "must be a boolean"));
    }

    #[test]
    fn serde_errors_never_quote_a_key_that_is_not_plain() {
        let e = describe_serde_error(FieldPath::root(), "unknown field `PII john@example.com`, expected `name`");
        assert_eq!(e, FieldError::new("", "the body has an unknown field"));
        let e = describe_serde_error(FieldPath::root(), "unknown field `a`, b`, there are no fields");
        assert_eq!(e, FieldError::new("", "the body has an unknown field"));
        let e = describe_serde_error(FieldPath::root(), "unknown field `a`, expected `b`, expected `name`");
        assert_eq!(e, FieldError::new("", "the body has an unknown field"));
    }
}
