//! Provisioning of projects and their credentials, shared by the CLI
//! (`hookline project …`), the admin API and the rotation endpoint, so there is
//! one way a key or secret is made, stored and looked up. A service over the
//! [`Store`]: it does I/O, and knows nothing of HTTP or the command line.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::domain::time::{now_ms, to_rfc3339};
use crate::domain::{ApiKey, ApiKeyHash, ApiKeyId, ProjectId, SigningSecret, UnixMs};
use crate::store::{Backend as _, NewApiKey, Project, Result, Store};
use crate::vault::Vault;

/// Project names are labels for humans; this bounds them.
const MAX_NAME_LEN: usize = 200;

/// A project's name: 1 to 200 printable characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectName(String);

/// Why a project name was refused; the message completes "name …" or "--name …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to {MAX_NAME_LEN} printable characters")]
pub struct InvalidName;

impl ProjectName {
    pub fn parse(name: &str) -> std::result::Result<Self, InvalidName> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(InvalidName);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new project and its credentials, each shown once.
#[derive(Debug)]
pub struct Provisioned {
    pub project: Project,
    pub api_key: ApiKey,
    pub signing_secret: SigningSecret,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectView {
    /// `prj_…`
    pub id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}

// What `POST /v1/admin/projects` answers; here so the CLI prints the same
// without reaching into the API. The doc comment is the OpenAPI description.
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

fn new_key_record(key: &ApiKey, now: UnixMs) -> NewApiKey {
    NewApiKey { id: ApiKeyId::generate(), hash: key.hash(), prefix: key.display_prefix(), created_at: now }
}

/// Creates a project with one API key and a signing secret.
pub async fn create_project(store: &Store, vault: &Vault, name: &ProjectName) -> Result<Provisioned> {
    let now = now_ms();
    let project = Project { id: ProjectId::generate(), name: name.as_str().to_owned(), created_at: now };
    let api_key = ApiKey::generate();
    let signing_secret = SigningSecret::generate();
    let sealed = vault.seal(signing_secret.expose().as_bytes(), project.id.as_str());
    store.create_project(project.clone(), new_key_record(&api_key, now), sealed).await?;
    Ok(Provisioned { project, api_key, signing_secret })
}

/// Adds an API key to a project; `None` when the project does not exist.
pub async fn create_api_key(store: &Store, project: &ProjectId) -> Result<Option<(ApiKeyId, ApiKey)>> {
    let key = ApiKey::generate();
    let record = new_key_record(&key, now_ms());
    let id = record.id.clone();
    Ok(store.create_api_key(project.clone(), record).await?.then_some((id, key)))
}

/// Makes a new signing secret current; the old ones keep signing until the
/// returned instant.
pub async fn rotate_signing_secret(
    store: &Store,
    vault: &Vault,
    project: &ProjectId,
    overlap: std::time::Duration,
) -> Result<(SigningSecret, UnixMs)> {
    let now = now_ms();
    let until = now + overlap.as_millis() as i64;
    let secret = SigningSecret::generate();
    let sealed = vault.seal(secret.expose().as_bytes(), project.as_str());
    store.rotate_secret(project.clone(), sealed, now, until).await?;
    Ok((secret, until))
}

/// The secrets signing now for each project, newest first, decrypted.
/// A secret that fails to decrypt (wrong key, tampering) is skipped and logged:
/// deliveries of that project then fail instead of going out unsigned.
pub async fn signing_secrets(
    store: &Store,
    vault: &Vault,
    projects: Vec<ProjectId>,
    now: UnixMs,
) -> Result<HashMap<ProjectId, Vec<SigningSecret>>> {
    let mut out: HashMap<ProjectId, Vec<SigningSecret>> = HashMap::new();
    for sealed in store.signing_secrets(projects, now).await? {
        let opened = vault
            .open(&sealed.sealed, sealed.project_id.as_str())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| SigningSecret::parse(&text));
        match opened {
            Some(secret) => out.entry(sealed.project_id).or_default().push(secret),
            None => {
                tracing::error!(project = %sealed.project_id, "a signing secret could not be decrypted; check --secret-key")
            }
        }
    }
    Ok(out)
}

/// How long a successful key lookup is trusted without asking the database:
/// a revocation made in another process (`hookline project revoke-key`) takes
/// effect on a running server within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Bound on cached keys; the cache is cleared when it is full.
const KEY_CACHE_CAPACITY: usize = 10_000;

/// Recent API key lookups, so ingest does not read the database for every event.
#[derive(Default)]
pub struct KeyCache {
    /// The project of each key hash, and when it was looked up.
    entries: std::sync::Mutex<HashMap<ApiKeyHash, (ProjectId, Instant)>>,
}

impl KeyCache {
    /// The project whose active key has this hash; `None` for an unknown or revoked key.
    pub async fn project_by_key(&self, store: &Store, hash: ApiKeyHash) -> Result<Option<ProjectId>> {
        if let Some(project) = self.get(&hash) {
            return Ok(Some(project));
        }
        let found = store.project_by_key(hash).await?;
        if let Some(project) = &found {
            self.put(hash, project.clone());
        }
        Ok(found)
    }

    fn get(&self, hash: &ApiKeyHash) -> Option<ProjectId> {
        let entries = self.entries.lock().expect("not poisoned");
        entries.get(hash).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(p, _)| p.clone())
    }

    fn put(&self, hash: ApiKeyHash, project: ProjectId) {
        let mut entries = self.entries.lock().expect("not poisoned");
        if entries.len() >= KEY_CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(hash, (project, Instant::now()));
    }
}

/// How long the worker trusts the secrets it loaded. A rotation made by this
/// process is seen at once ([`SecretCache::forget`]); one made on another node,
/// or the end of an overlap window, within this time.
pub const SECRET_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// A project's signing secrets, newest first, as the worker signs with them.
pub type Secrets = std::sync::Arc<Vec<SigningSecret>>;

/// Decrypted signing secrets per project, so the worker does not read and
/// decrypt them for every batch of deliveries.
#[derive(Default)]
pub struct SecretCache {
    /// Each project's secrets and when they were loaded.
    entries: std::sync::Mutex<HashMap<ProjectId, (Secrets, std::time::Instant)>>,
}

impl SecretCache {
    /// The secrets of each of `projects`, loading the ones not cached or stale.
    pub async fn get(
        &self,
        store: &Store,
        vault: &Vault,
        projects: &[&ProjectId],
        now: UnixMs,
    ) -> Result<HashMap<ProjectId, Secrets>> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let entries = self.entries.lock().expect("not poisoned");
            for &p in projects {
                match entries.get(p).filter(|(_, at)| at.elapsed() < SECRET_CACHE_TTL) {
                    Some((secrets, _)) => {
                        found.insert(p.clone(), secrets.clone());
                    }
                    None => missing.push(p.clone()),
                }
            }
        }
        if !missing.is_empty() {
            let mut loaded = signing_secrets(store, vault, missing.clone(), now).await?;
            let mut entries = self.entries.lock().expect("not poisoned");
            for p in missing {
                let secrets = std::sync::Arc::new(loaded.remove(&p).unwrap_or_default());
                entries.insert(p.clone(), (secrets.clone(), std::time::Instant::now()));
                found.insert(p, secrets);
            }
        }
        Ok(found)
    }

    /// Drops a project's cached secrets (after a rotation).
    pub fn forget(&self, project: &ProjectId) {
        self.entries.lock().expect("not poisoned").remove(project);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_are_trimmed_printable_and_bounded() {
        assert_eq!(ProjectName::parse("  Shop  ").unwrap().as_str(), "Shop");
        assert_eq!(ProjectName::parse(&"é".repeat(200)).unwrap().as_str().chars().count(), 200);
        for refused in ["", "   ", "tab\there", "new\nline", &"x".repeat(201)] {
            assert_eq!(ProjectName::parse(refused), Err(InvalidName), "{refused:?}");
        }
    }
}
