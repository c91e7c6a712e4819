//! `/v1/admin/*`: operator routes, on only when `--admin-token` is set.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::check_admin;
use super::error::ApiError;
use super::extract::TypedJson;
use crate::domain::time::to_rfc3339;
use crate::projects::{self, Provisioned};

/// Project names are labels for humans; this bounds them.
const MAX_NAME_LEN: usize = 200;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/admin/projects", post(create_project))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

/// The same JSON `hookline project create` prints.
#[derive(Debug, Serialize)]
pub struct ProvisionedView {
    pub project: ProjectView,
    pub api_key: String,
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
