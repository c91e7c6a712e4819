//! `POST /v1/signing-secret/rotate`: a new signing secret, shown once.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::ProjectAuth;
use super::error::ApiError;
use super::error::responses::Unauthorized;
use crate::domain::time::to_rfc3339;
use crate::projects;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(rotate))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    /// The new secret (`whsec_…`); it signs from now on and is not shown again.
    pub signing_secret: String,
    /// Until then, deliveries carry a signature with the previous secret too.
    #[schema(format = DateTime)]
    pub previous_secret_expires_at: String,
}

/// Rotate the signing secret.
///
/// The new secret is returned once. During the overlap window
/// (`--secret-overlap`, 24 h by default) every delivery is signed with both the
/// new and the previous secret (`webhook-signature` carries one `v1,…` per secret).
#[utoipa::path(
    post,
    path = "/v1/signing-secret/rotate",
    tag = "signing-secret",
    operation_id = "rotate_signing_secret",
    responses(
        (status = 200, description = "The new secret", body = RotatedSecret),
        (status = 401, response = Unauthorized),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
async fn rotate(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
) -> Result<Json<RotatedSecret>, ApiError> {
    let (secret, until) =
        projects::rotate_signing_secret(&app.store, &app.vault, &project, app.settings.secret_overlap).await?;
    app.secrets.forget(&project);
    tracing::info!(project = %project, "signing secret rotated");
    Ok(Json(RotatedSecret {
        signing_secret: secret.expose().to_owned(),
        previous_secret_expires_at: to_rfc3339(until),
    }))
}
