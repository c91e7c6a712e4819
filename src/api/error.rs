//! The API's one error type and its mapping to HTTP: every error answer is an
//! RFC 9457 `application/problem+json` document, built here and nowhere else.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::FieldError;
use crate::store::{ConstraintKind, StoreError};

/// What [`ApiError::PayloadTooLarge`] names when the request body itself is
/// over the limit (as opposed to its `data`).
pub const REQUEST_BODY: &str = "request body";

/// Each variant is one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or a query parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no API key, or one that is unknown or revoked.
    #[error("a valid API key is required (Authorization: Bearer <key> or X-API-Key)")]
    Unauthorized,
    /// 404: no such object in the caller's project (also for other projects' ids).
    #[error("not found")]
    NotFound,
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 408: the request did not arrive whole within `--client-timeout`; the
    /// connection is closed after this answer.
    #[error("the request was not sent in time (--client-timeout); the connection is closed")]
    RequestTimeout,
    /// 413: the body (or `data`) is larger than allowed. For the body
    /// ([`REQUEST_BODY`]), the connection is closed after this answer.
    #[error("the {what} is larger than the limit of {limit} bytes")]
    PayloadTooLarge { what: &'static str, limit: usize },
    /// 415: the body is not declared as JSON.
    #[error("the body must be JSON, sent with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 422: well-formed JSON that breaks a rule; each entry names its field.
    #[error("the request is not valid")]
    Validation(Vec<FieldError>),
    /// 409: the change would duplicate an object that exists (a unique
    /// constraint of the store). The constraint's name is logged, not
    /// answered: schema names are not the client's business.
    #[error("the change conflicts with an existing object")]
    Conflict { constraint: String },
    /// 409: a manual retry of a delivery that is in flight or already due;
    /// nothing is sent (SPEC §8).
    #[error("the delivery is in flight or already due; nothing more is sent for this retry")]
    DeliveryBusy,
    /// 422: the change refers to an object that does not exist, or breaks a
    /// rule of the schema (a foreign key or CHECK constraint); its name is logged.
    #[error("the change refers to an object that does not exist or breaks a rule of the schema")]
    ConstraintViolated { constraint: String },
    /// 422: the project has `--max-webhooks-per-project` webhooks already.
    #[error(
        "the project has {limit} webhooks, the most it may have (--max-webhooks-per-project); delete one to add another"
    )]
    WebhookLimitReached { limit: u32 },
    /// 422: an `Idempotency-Key` reused for a different request.
    #[error("this Idempotency-Key was already used for a different request in the last 24 hours")]
    IdempotencyKeyReused,
    /// 503: a dependency (the database) is not reachable.
    #[error("{0}")]
    Unavailable(String),
    /// 503: the server holds `--max-connections` connections already; this one
    /// is answered and closed. Written by the server, not by a handler.
    #[error("the server has as many connections open as it serves at once; retry shortly")]
    Overloaded,
    /// 500: logged with its cause; answered without details.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// A 422 for an event name outside the catalog, listing the allowed ones.
    pub fn unknown_event(field: &str, catalog: &crate::domain::Catalog) -> Self {
        let allowed: Vec<&str> = catalog.names().collect();
        Self::invalid(field, format!("is not an allowed event; allowed: {}", allowed.join(", ")))
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Conflict { .. } | Self::DeliveryBusy => StatusCode::CONFLICT,
            Self::Validation(_)
            | Self::ConstraintViolated { .. }
            | Self::WebhookLimitReached { .. }
            | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable problem type per kind of error.
    fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "malformed-request",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::RequestTimeout => "request-timeout",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Conflict { .. } => "conflict",
            Self::DeliveryBusy => "delivery-busy",
            Self::ConstraintViolated { .. } => "constraint-violated",
            Self::Validation(_) => "validation",
            Self::WebhookLimitReached { .. } => "webhook-limit-reached",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::Unavailable(_) => "unavailable",
            Self::Overloaded => "overloaded",
            Self::Internal(_) => "internal",
        }
    }
}

/// The one place store errors become HTTP: a constraint the write broke is the
/// client's to fix (409 for a duplicate, 422 for the rest); anything else is a
/// 500, logged with its cause chain.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Constraint { kind, constraint, .. } => {
                let constraint = constraint.unwrap_or_else(|| format!("a {kind} constraint"));
                tracing::info!(%constraint, "a write broke a constraint of the store");
                match kind {
                    ConstraintKind::Unique => Self::Conflict { constraint },
                    ConstraintKind::ForeignKey | ConstraintKind::Check => Self::ConstraintViolated { constraint },
                }
            }
            other => Self::Internal(other.into()),
        }
    }
}

/// The problem document (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `/problems/<kind>`, stable for each kind of error.
    #[serde(rename = "type")]
    #[schema(example = "/problems/validation")]
    pub kind: String,
    /// The HTTP status's reason phrase.
    #[schema(example = "Unprocessable Entity")]
    pub title: String,
    #[schema(example = 422)]
    pub status: u16,
    /// What went wrong, for a human; never quotes the values sent.
    #[schema(example = "data.order_id: is required")]
    pub detail: String,
    /// For validation errors: one entry per offending field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub errors: Vec<FieldError>,
}

/// The error answers as reusable OpenAPI responses, one per status, so every
/// route lists its errors by name. They only describe [`Problem`] documents
/// that [`ApiError`] produces; nothing constructs them.
#[allow(dead_code)]
pub mod responses {
    use super::Problem;
    use utoipa::ToResponse;

    /// The body is not valid JSON, or a query parameter is malformed.
    #[derive(ToResponse)]
    #[response(content_type = "application/problem+json")]
    pub struct BadRequest(Problem);

    /// No API key, or an unknown or revoked one.
    #[derive(ToResponse)]
    #[response(
        content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String, description = "`Bearer`"))
    )]
    pub struct Unauthorized(Problem);

    /// No such object in the caller's project (another project's ids look the same).
    #[derive(ToResponse)]
    #[response(content_type = "application/problem+json")]
    pub struct NotFound(Problem);

    /// The body (or `data`, serialized) is larger than `--max-data-bytes`.
    #[derive(ToResponse)]
    #[response(content_type = "application/problem+json")]
    pub struct PayloadTooLarge(Problem);

    /// The body is not sent as `application/json`.
    #[derive(ToResponse)]
    #[response(content_type = "application/problem+json")]
    pub struct UnsupportedMediaType(Problem);

    /// The request conflicts with the state of the object.
    #[derive(ToResponse)]
    #[response(content_type = "application/problem+json")]
    pub struct Conflict(Problem);

    /// Well-formed input that breaks a rule; `errors` names each field.
    #[derive(ToResponse)]
    #[response(content_type = "application/problem+json")]
    pub struct Unprocessable(Problem);

    /// The database is not reachable or not migrated.
    #[derive(ToResponse)]
    #[response(content_type = "application/problem+json")]
    pub struct Unavailable(Problem);

    /// The request, head and body, did not arrive within the server's
    /// `--client-timeout` (30 s by default); the connection is closed.
    #[derive(ToResponse)]
    #[response(
        content_type = "application/problem+json",
        headers(("Connection" = String, description = "`close`"))
    )]
    pub struct RequestTimeout(Problem);

    /// The server has as many connections open as it serves at once
    /// (`--max-connections`); this one is closed. Retry after `Retry-After` seconds.
    #[derive(ToResponse)]
    #[response(
        content_type = "application/problem+json",
        headers(
            ("Retry-After" = String, description = "Seconds to wait before retrying"),
            ("Connection" = String, description = "`close`"),
        )
    )]
    pub struct Overloaded(Problem);
}

impl ApiError {
    /// The problem document of this error, and logs an internal error's cause.
    fn problem(self) -> (StatusCode, Problem) {
        let status = self.status();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let detail = match &self {
            Self::Validation(errors) if errors.len() == 1 && errors[0].field.is_empty() => errors[0].message.clone(),
            Self::Validation(errors) if errors.len() == 1 => format!("{}: {}", errors[0].field, errors[0].message),
            other => other.to_string(),
        };
        let problem = Problem {
            kind: format!("/problems/{}", self.kind()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            errors: match self {
                Self::Validation(errors) => errors,
                _ => Vec::new(),
            },
        };
        (status, problem)
    }

    /// Headers that go with the status: how to authenticate, when to come
    /// back, and that the connection ends.
    fn extra_headers(&self) -> &'static [(header::HeaderName, &'static str)] {
        match self {
            Self::Unauthorized => &[(header::WWW_AUTHENTICATE, "Bearer")],
            Self::RequestTimeout => &[(header::CONNECTION, "close")],
            // The rest of the body is never read, so the connection cannot
            // carry another request: say so, or a client's pool may send its
            // next request on a connection the server is closing.
            Self::PayloadTooLarge { what: REQUEST_BODY, .. } => &[(header::CONNECTION, "close")],
            // A second: connections free up as soon as any client finishes or times out.
            Self::Overloaded => &[(header::CONNECTION, "close"), (header::RETRY_AFTER, "1")],
            _ => &[],
        }
    }

    /// The whole HTTP/1.1 answer as bytes, closing the connection: for the
    /// server to write on a connection that no handler serves (a request head
    /// that never arrived whole, a connection over the limit).
    pub fn into_http1_bytes(self) -> Vec<u8> {
        let extra = self.extra_headers();
        let (status, problem) = self.problem();
        let body = serde_json::to_vec(&problem).expect("a problem document serializes");
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error"),
            body.len()
        );
        if !extra.iter().any(|(name, _)| name == header::CONNECTION) {
            out.push_str("connection: close\r\n");
        }
        for (name, value) in extra {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let extra = self.extra_headers();
        let (status, problem) = self.problem();
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        for (name, value) in extra {
            headers.insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violated(kind: ConstraintKind, constraint: Option<&str>) -> StoreError {
        StoreError::Constraint {
            kind,
            constraint: constraint.map(str::to_owned),
            source: Box::new(std::io::Error::other("refused")),
        }
    }

    #[test]
    fn store_errors_map_to_one_status_each() {
        let cases = [
            (violated(ConstraintKind::Unique, Some("project_webhooks_pkey")), 409),
            (violated(ConstraintKind::ForeignKey, Some("project_webhooks_project_id_fkey")), 422),
            (violated(ConstraintKind::ForeignKey, None), 422),
            (violated(ConstraintKind::Check, Some("webhook_logs_status_check")), 422),
            (StoreError::Sqlite(rusqlite::Error::InvalidQuery), 500),
            (StoreError::WriterGone, 500),
        ];
        for (store_error, status) in cases {
            let shown = store_error.to_string();
            assert_eq!(ApiError::from(store_error).status().as_u16(), status, "{shown}");
        }
    }

    #[test]
    fn a_constraint_violation_keeps_its_name_but_does_not_answer_it() {
        let e = ApiError::from(violated(ConstraintKind::Unique, Some("project_webhooks_pkey")));
        assert!(matches!(&e, ApiError::Conflict { constraint } if constraint == "project_webhooks_pkey"));
        assert!(!e.to_string().contains("project_webhooks_pkey"), "{e}");
        let e = ApiError::from(violated(ConstraintKind::ForeignKey, None));
        assert!(matches!(&e, ApiError::ConstraintViolated { constraint } if constraint == "a foreign key constraint"));
    }
}
