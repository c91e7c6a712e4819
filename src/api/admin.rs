//! `/v1/admin/*`: operator routes, on only when `--admin-token` is set.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::check_admin;
use super::error::ApiError;
use super::error::responses::{
    BadRequest, NotFound, PayloadTooLarge, Unauthorized, Unprocessable, UnsupportedMediaType,
};
use super::extract::TypedJson;
use crate::domain::time::to_rfc3339;
use crate::projects::{self, Provisioned};

/// Project names are labels for humans; this bounds them.
const MAX_NAME_LEN: usize = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_project))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// A label for humans, 1 to 200 printable characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$")]
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectView {
    /// `prj_…`
    pub id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// The same JSON `hookline project create` prints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProvisionedView {
    pub project: ProjectView,
    /// The project's first API key; shown once, stored only as a hash.
    pub api_key: String,
    /// The project's signing secret (`whsec_…`); shown once.
    pub signing_secret: String,
}

impl From<Provisioned> for ProvisionedView {
    fn from(p: Provisioned) -> Self {
        Self {
            project: ProjectView {
                id: p.project.id.to_string(),
                name: p.project.name,
                created_at: to_rfc3339(p.project.created_at),
            },
            api_key: p.api_key.expose().to_owned(),
            signing_secret: p.signing_secret.expose().to_owned(),
        }
    }
}

/// Checks a project name; shared with the CLI.
pub fn validate_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", format!("must be 1 to {MAX_NAME_LEN} printable characters")));
    }
    Ok(name)
}

/// Create a project (operator).
///
/// Needs the admin token (`--admin-token`) as `Authorization: Bearer`; without
/// one configured the route answers 404.
#[utoipa::path(
    post,
    path = "/v1/admin/projects",
    tag = "admin",
    operation_id = "create_project",
    request_body(content = CreateProject, content_type = "application/json"),
    responses(
        (status = 201, description = "Created: the key and secret are shown this once", body = ProvisionedView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
    ),
    security(("admin_token" = [])),
)]
async fn create_project(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<TypedJson<CreateProject>, ApiError>,
) -> Result<(StatusCode, Json<ProvisionedView>), ApiError> {
    // The token is checked before the body, so without it nothing is parsed.
    check_admin(&headers, app.admin_token.as_deref())?;
    let TypedJson(body) = body?;
    let name = validate_name(&body.name)?;
    let provisioned = projects::create_project(&app.store, &app.vault, name).await?;
    tracing::info!(project = %provisioned.project.id, "project created");
    Ok((StatusCode::CREATED, Json(provisioned.into())))
}
