//! API-key authentication: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
//!
//! Keys are looked up by their SHA-256 (see [`crate::domain::ApiKeyHash`]).
//! Successful lookups are cached briefly so ingest does not read the database
//! for every event: a revocation (made with `hookline project revoke-key`, in
//! another process) takes effect on a running server within [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};

use super::AppState;
use super::error::ApiError;
use crate::domain::{ApiKey, ApiKeyHash, ProjectId};
use crate::store::Backend as _;

/// How long a successful key lookup is trusted without asking the database.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Bound on cached keys; the cache is cleared when it is full.
const CACHE_CAPACITY: usize = 10_000;

#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<ApiKeyHash, (ProjectId, Instant)>>,
}

impl KeyCache {
    fn get(&self, hash: &ApiKeyHash) -> Option<ProjectId> {
        let entries = self.entries.lock().expect("not poisoned");
        entries.get(hash).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(p, _)| p.clone())
    }

    fn put(&self, hash: ApiKeyHash, project: ProjectId) {
        let mut entries = self.entries.lock().expect("not poisoned");
        if entries.len() >= CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(hash, (project, Instant::now()));
    }
}

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
        let hash = key.hash();
        if let Some(project) = state.keys.get(&hash) {
            return Ok(Self(project));
        }
        let project = state.store.project_by_key(hash).await?.ok_or(ApiError::Unauthorized)?;
        state.keys.put(hash, project.clone());
        Ok(Self(project))
    }
}

/// Checks the admin token in constant time; admin routes do not exist without one.
/// Both sides are hashed first, so even the token's length does not show in timing.
pub fn check_admin(parts_headers: &axum::http::HeaderMap, configured: Option<&str>) -> Result<(), ApiError> {
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
