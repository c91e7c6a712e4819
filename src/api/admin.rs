//! `/v1/admin/*`: operator routes, on only when `--admin-token` is set.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::AdminAuth;
use super::error::ApiError;
use super::error::responses::{
    BadRequest, NotFound, PayloadTooLarge, Unauthorized, Unprocessable, UnsupportedMediaType,
};
use super::extract::TypedJson;
use crate::projects::{self, ProjectName, ProvisionedView};

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
    _: AdminAuth,
    TypedJson(body): TypedJson<CreateProject>,
) -> Result<(StatusCode, Json<ProvisionedView>), ApiError> {
    let name = ProjectName::parse(&body.name).map_err(|e| ApiError::invalid("name", e.to_string()))?;
    let provisioned = projects::create_project(&app.store, &app.vault, &name).await?;
    tracing::info!(project = %provisioned.project.id, "project created");
    Ok((StatusCode::CREATED, Json(provisioned.into())))
}
