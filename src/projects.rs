//! Provisioning of projects and their credentials, shared by the CLI
//! (`hookline project …`), the admin API and the rotation endpoint, so there is
//! one way a key or secret is made and stored.

use std::collections::HashMap;

use crate::domain::time::now_ms;
use crate::domain::{ApiKey, ApiKeyId, ProjectId, SigningSecret, UnixMs};
use crate::store::{Backend as _, NewApiKey, Project, Result, Store};
use crate::vault::Vault;

/// A new project and its credentials, each shown once.
#[derive(Debug)]
pub struct Provisioned {
    pub project: Project,
    pub api_key: ApiKey,
    pub signing_secret: SigningSecret,
}

fn new_key_record(key: &ApiKey, now: UnixMs) -> NewApiKey {
    NewApiKey { id: ApiKeyId::generate(), hash: key.hash(), prefix: key.display_prefix(), created_at: now }
}

/// Creates a project with one API key and a signing secret.
pub async fn create_project(store: &Store, vault: &Vault, name: &str) -> Result<Provisioned> {
    let now = now_ms();
    let project = Project { id: ProjectId::generate(), name: name.to_owned(), created_at: now };
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
