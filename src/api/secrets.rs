//! `POST /v1/signing-secret/rotate`: a new signing secret, shown once.

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde::Serialize;

use super::AppState;
use super::auth::ProjectAuth;
use super::error::ApiError;
use crate::domain::time::to_rfc3339;
use crate::projects;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/v1/signing-secret/rotate", post(rotate))
}

#[derive(Debug, Serialize)]
pub struct RotatedSecret {
    /// The new secret; it signs from now on and is not shown again.
    pub signing_secret: String,
    /// Until then, deliveries carry a signature with the previous secret too.
    pub previous_secret_expires_at: String,
}

async fn rotate(
    State(app): State<AppState>,
    ProjectAuth(project): ProjectAuth,
) -> Result<Json<RotatedSecret>, ApiError> {
    let (secret, until) = projects::rotate_signing_secret(&app.store, &app.vault, &project, app.secret_overlap).await?;
    tracing::info!(project = %project, "signing secret rotated");
    Ok(Json(RotatedSecret {
        signing_secret: secret.expose().to_owned(),
        previous_secret_expires_at: to_rfc3339(until),
    }))
}
