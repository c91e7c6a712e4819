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
pub mod metrics;
pub mod secrets;
pub mod webhooks;

use std::sync::Arc;

use axum::http::{HeaderName, Request};
use axum::{Json, Router};
use serde::Serialize;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::openapi::security::{ApiKey as ApiKeyScheme, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::{Config as SwaggerConfig, SwaggerUi};

use crate::config::ApiSettings;
use crate::domain::Catalog;
use crate::store::Store;
use crate::vault::Vault;

/// What handlers share.
pub struct ApiContext {
    pub store: Store,
    /// The API's part of the settings: catalog, limits, admin token, SSRF policy.
    pub settings: ApiSettings,
    pub vault: Arc<Vault>,
    /// Where accepted events and manual retries go.
    pub queue: crate::queue::Queue,
    /// The worker's cache of signing secrets, forgotten on rotation.
    pub secrets: Arc<crate::projects::SecretCache>,
    pub keys: crate::projects::KeyCache,
    /// The OpenAPI document served at `/openapi.json` (see [`openapi`]).
    pub openapi: serde_json::Value,
}

pub type AppState = Arc<ApiContext>;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives a request without an `x-request-id` a fresh UUID (time-ordered, from
/// the thread's RNG: unlike a v4 from the operating system, no system call per
/// request).
#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = crate::domain::ids::new_uuid().hyphenated().to_string();
        Some(RequestId::new(axum::http::HeaderValue::from_str(&id).expect("a UUID is a valid header value")))
    }
}

/// A page of a list: `{"data": [...], "next_cursor": "..." | null}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListResponse<T> {
    pub data: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> ListResponse<T> {
    /// A page from the store, each item turned into its view.
    pub fn of<S>(page: crate::store::Paged<S>, view: impl FnMut(S) -> T) -> Self {
        Self { data: page.items.into_iter().map(view).collect(), next_cursor: page.next }
    }
}

/// What the OpenAPI document says beyond the routes: title, tags, security
/// schemes and the shared error components.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "hookline",
        description = "Events in, HMAC-signed webhooks out, durably. Errors are RFC 9457 \
            `application/problem+json` documents. Lists are cursor-paginated, newest first.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&SecuritySchemes),
    components(
        schemas(error::Problem, crate::domain::FieldError),
        responses(
            error::responses::BadRequest,
            error::responses::Unauthorized,
            error::responses::NotFound,
            error::responses::Conflict,
            error::responses::PayloadTooLarge,
            error::responses::UnsupportedMediaType,
            error::responses::Unprocessable,
            error::responses::Unavailable,
            error::responses::RequestTimeout,
            error::responses::Overloaded,
        ),
    ),
    tags(
        (name = "events", description = "Report business events; each is delivered to the project's webhooks"),
        (name = "webhooks", description = "The project's webhook endpoints, and test deliveries to them"),
        (name = "webhook-logs", description = "Deliveries, their attempts, manual redelivery and replay"),
        (name = "signing-secret", description = "The secret that signs deliveries"),
        (name = "admin", description = "Operator routes, on only with --admin-token"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    ),
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some(what)).build())
        };
        components.add_security_scheme("bearer", bearer("A project API key: `Authorization: Bearer <key>`"));
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKeyScheme::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A project API key, the alternative to `Authorization: Bearer`",
            ))),
        );
        components.add_security_scheme("admin_token", bearer("The operator's `--admin-token`"));
    }
}

/// Every documented route, with its part of the OpenAPI document.
fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(events::router())
        .merge(webhooks::router())
        .merge(logs::router())
        .merge(secrets::router())
        .merge(admin::router())
        .merge(health::router())
        .merge(metrics::router())
        .routes(utoipa_axum::routes!(openapi_json))
}

/// The OpenAPI document of this build, with the events described by `catalog`:
/// the ingest body per event, the events a webhook may subscribe to, and the
/// `data` of hookline's own events (`webhook.*`).
pub fn openapi(catalog: &Catalog) -> serde_json::Value {
    let mut doc = serde_json::to_value(documented_routes().into_openapi()).expect("the document serializes");
    add_connection_answers(&mut doc);
    let schemas = &mut doc["components"]["schemas"];
    schemas["IngestRequest"] = ingest_schema(catalog);
    for (name, description, data) in catalog.operational() {
        let mut data = data.clone();
        data["title"] = format!("data of {name}").into();
        data["description"] = description.into();
        schemas[name] = data;
    }
    let names: Vec<serde_json::Value> = catalog.subscribable_names().map(Into::into).collect();
    schemas["CreateWebhook"]["properties"]["event"]["enum"] = names.clone().into();
    // Absent or null leaves the event as it is.
    schemas["UpdateWebhook"]["properties"]["event"]["enum"] =
        names.into_iter().chain([serde_json::Value::Null]).collect::<Vec<_>>().into();
    doc
}

/// Adds the answers that the server gives on any route, whatever its handler
/// does (see [`crate::server`]): 408 for a request not sent within
/// `--client-timeout`, and 503 for a connection over `--max-connections`
/// (where a route documents a 503 of its own, that one stays).
fn add_connection_answers(doc: &mut serde_json::Value) {
    let reference = |name: &str| serde_json::json!({"$ref": format!("#/components/responses/{name}")});
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for operation in paths.values_mut().filter_map(|p| p.as_object_mut()).flat_map(|p| p.values_mut()) {
        let Some(responses) = operation.get_mut("responses").and_then(|r| r.as_object_mut()) else { continue };
        responses.entry("408").or_insert_with(|| reference("RequestTimeout"));
        responses.entry("503").or_insert_with(|| reference("Overloaded"));
        responses.sort_keys();
    }
}

/// The document as committed in `openapi.json` and printed by `hookline openapi`.
pub fn openapi_json_text(catalog: &Catalog) -> String {
    serde_json::to_string_pretty(&openapi(catalog)).expect("the document serializes")
}

/// The ingest body as one variant per catalog event, each with the event's
/// JSON Schema for `data`, so readers (and API fuzzers) see the fields each
/// event takes. It replaces the generic [`events::IngestRequest`] in JSON form:
/// utoipa's schema model has no `const`. A schema with `$ref`s is left
/// generic, as its references would not resolve inside this document.
fn ingest_schema(catalog: &Catalog) -> serde_json::Value {
    let variants: Vec<serde_json::Value> = catalog
        .schemas()
        .map(|(name, schema)| {
            let data = if schema.to_string().contains("\"$ref\"") {
                serde_json::json!({"type": "object"})
            } else {
                schema.clone()
            };
            serde_json::json!({
                "type": "object",
                "title": name,
                "required": ["event_name", "data"],
                "additionalProperties": false,
                "properties": {"event_name": {"type": "string", "const": name}, "data": data},
            })
        })
        .collect();
    serde_json::json!({
        "description": "An event of the catalog and its data; unknown fields are rejected. An `integer` \
            is a JSON integer from -9223372036854775808 to 9223372036854775807, written without a \
            fraction or exponent. No object may have a key twice.",
        "oneOf": variants,
    })
}

/// This document: OpenAPI 3.1 of every route, generated from the code.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
)]
async fn openapi_json(axum::extract::State(app): axum::extract::State<AppState>) -> Json<serde_json::Value> {
    Json(app.openapi.clone())
}

/// The full API, for `--role api` and `--role all`.
pub fn router(state: AppState) -> Router {
    let (routes, _) = documented_routes().split_for_parts();
    // The page loads its assets from this server (`/docs/*`), never from a
    // CDN; the validator badge, which would call out to a public validator, is off.
    let docs = SwaggerUi::new("/docs").config(SwaggerConfig::from("/openapi.json").validator_url("none"));
    routes
        .merge(docs)
        .fallback(|| async { error::ApiError::NotFound })
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            // Method, path and request id only: no query values, no headers, no body.
            let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), NewRequestId))
        .with_state(state)
}

/// Health and metrics endpoints only, for `--role worker`.
pub fn worker_router(state: AppState) -> Router {
    let (routes, _) = health::router().merge(metrics::router()).split_for_parts();
    routes.fallback(|| async { error::ApiError::NotFound }).with_state(state)
}
