//! API-key authentication: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
//!
//! Keys are looked up by their SHA-256 (see [`crate::domain::ApiKeyHash`])
//! through [`crate::projects::KeyCache`], so a revocation made in another
//! process takes effect within [`crate::projects::KEY_CACHE_TTL`].

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};

use super::AppState;
use super::error::ApiError;
use crate::domain::{ApiKey, ProjectId};

/// The project whose API key authenticated the request.
pub struct ProjectAuth(pub ProjectId);

impl FromRequestParts<AppState> for ProjectAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .or_else(|| parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim);
        let key = presented.and_then(ApiKey::parse).ok_or(ApiError::Unauthorized)?;
        let project = state.keys.project_by_key(&state.store, key.hash()).await?.ok_or(ApiError::Unauthorized)?;
        Ok(Self(project))
    }
}

/// A caller that presented the admin token. As an extractor of the request's
/// head it runs before any extractor of its body: a caller without the token
/// is answered 401 (404 with no token configured) without a byte of the body
/// being read, however much it announces.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check_admin(&parts.headers, state.settings.admin_token.as_ref().map(crate::config::Sensitive::expose))?;
        Ok(Self)
    }
}

/// Checks the admin token in constant time; admin routes do not exist without one.
/// Both sides are hashed first, so even the token's length does not show in timing.
fn check_admin(parts_headers: &axum::http::HeaderMap, configured: Option<&str>) -> Result<(), ApiError> {
    use sha2::{Digest as _, Sha256};
    use subtle::ConstantTimeEq as _;
    let Some(configured) = configured else { return Err(ApiError::NotFound) };
    let presented = parts_headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let same = Sha256::digest(presented.as_bytes()).ct_eq(&Sha256::digest(configured.as_bytes()));
    if bool::from(same) { Ok(()) } else { Err(ApiError::Unauthorized) }
}
