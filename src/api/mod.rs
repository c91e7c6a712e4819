//! The HTTP API (axum only). Each resource module owns its routes; handlers
//! parse input into domain types, call the store once, and shape the answer.
//! Errors of every kind leave through [`error::ApiError`].

pub mod admin;
pub mod auth;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod logs;
pub mod secrets;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, Request};
use serde::Serialize;
use tokio::sync::Notify;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::domain::Catalog;
use crate::ssrf;
use crate::store::Store;
use crate::vault::Vault;

/// What handlers share.
pub struct ApiContext {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    /// Target URLs are checked against it when webhooks are created or changed.
    pub ssrf: ssrf::Policy,
    pub vault: Arc<Vault>,
    /// `None` turns the admin routes off (404).
    pub admin_token: Option<String>,
    pub max_data_bytes: usize,
    /// How long a rotated-out signing secret keeps signing.
    pub secret_overlap: Duration,
    /// Wakes this process's delivery worker when new work was committed.
    pub work_ready: Arc<Notify>,
    pub keys: auth::KeyCache,
}

pub type AppState = Arc<ApiContext>;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A page of a list: `{"data": [...], "next_cursor": "..." | null}`.
#[derive(Debug, Serialize)]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The full API, for `--role api` and `--role all`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(events::router())
        .merge(webhooks::router())
        .merge(logs::router())
        .merge(secrets::router())
        .merge(admin::router())
        .merge(health::router())
        .fallback(|| async { error::ApiError::NotFound })
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            // Method, path and request id only: no query values, no headers, no body.
            let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .with_state(state)
}

/// Health endpoints only, for `--role worker`.
pub fn worker_router(state: AppState) -> Router {
    health::router().fallback(|| async { error::ApiError::NotFound }).with_state(state)
}
