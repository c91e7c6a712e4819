//! The objects a project manages, in PostgreSQL: projects, API keys, signing
//! secrets and webhooks, and the reads of events and delivery logs that the
//! API serves. Each is one statement on the pool where it can be.

use sqlx::postgres::PgPool;

use super::db_err;
use super::rows::{
    api_key_from_row, attempt_from_row, event_columns, event_from_row, log_columns, log_from_row, row, rows,
    secret_from_row, summary_from_row, webhook_columns, webhook_from_row,
};
use crate::domain::{ApiKeyHash, ApiKeyId, DeliveryId, EventId, ProjectId, UnixMs, WebhookId};
use crate::store::{
    ApiKeyRecord, Attempt, DeliveryLog, DeliveryStatus, DeliverySummary, Event, LogFilter, NewApiKey, Page, Paged,
    Project, Result, SealedSecret, Webhook, WebhookCreation, WebhookPatch,
};

pub(super) async fn create_project(
    pool: &PgPool,
    project: Project,
    key: NewApiKey,
    sealed_secret: Vec<u8>,
) -> Result<()> {
    sqlx::query(
        "WITH p AS (INSERT INTO projects (id, name, created_at) VALUES ($1, $2, $3) RETURNING id), \
         k AS (INSERT INTO api_keys (id, project_id, key_hash, prefix, created_at) \
               SELECT $4, p.id, $5, $6, $7 FROM p) \
         INSERT INTO signing_secrets (project_id, sealed, created_at) SELECT p.id, $8, $3 FROM p",
    )
    .bind(project.id.as_str())
    .bind(&project.name)
    .bind(project.created_at)
    .bind(key.id.as_str())
    .bind(&key.hash.0[..])
    .bind(&key.prefix)
    .bind(key.created_at)
    .bind(sealed_secret)
    .execute(pool)
    .await
    .map(drop)
    .map_err(db_err)
}

pub(super) async fn project_by_key(pool: &PgPool, hash: ApiKeyHash) -> Result<Option<ProjectId>> {
    sqlx::query_scalar::<_, String>("SELECT project_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
        .bind(&hash.0[..])
        .fetch_optional(pool)
        .await
        .map(|id| id.map(ProjectId::from_trusted))
        .map_err(db_err)
}

pub(super) async fn create_api_key(pool: &PgPool, project: ProjectId, key: NewApiKey) -> Result<bool> {
    sqlx::query(
        "INSERT INTO api_keys (id, project_id, key_hash, prefix, created_at) \
         SELECT $1, id, $3, $4, $5 FROM projects WHERE id = $2",
    )
    .bind(key.id.as_str())
    .bind(project.as_str())
    .bind(&key.hash.0[..])
    .bind(&key.prefix)
    .bind(key.created_at)
    .execute(pool)
    .await
    .map(|r| r.rows_affected() == 1)
    .map_err(db_err)
}

pub(super) async fn revoke_api_key(pool: &PgPool, project: ProjectId, key: ApiKeyId, now: UnixMs) -> Result<bool> {
    sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND project_id = $3 AND revoked_at IS NULL")
        .bind(now)
        .bind(key.as_str())
        .bind(project.as_str())
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db_err)
}

pub(super) async fn list_api_keys(pool: &PgPool, project: ProjectId) -> Result<Vec<ApiKeyRecord>> {
    let found =
        sqlx::query("SELECT id, prefix, created_at, revoked_at FROM api_keys WHERE project_id = $1 ORDER BY id")
            .bind(project.as_str())
            .fetch_all(pool)
            .await
            .map_err(db_err)?;
    rows(found, api_key_from_row)
}

pub(super) async fn signing_secrets(pool: &PgPool, projects: Vec<ProjectId>, now: UnixMs) -> Result<Vec<SealedSecret>> {
    let ids: Vec<&str> = projects.iter().map(ProjectId::as_str).collect();
    let found = sqlx::query(
        "SELECT project_id, sealed, created_at, expires_at FROM signing_secrets \
         WHERE project_id = ANY($1) AND (expires_at IS NULL OR expires_at > $2) ORDER BY project_id, seq DESC",
    )
    .bind(ids)
    .bind(now)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows(found, secret_from_row)
}

pub(super) async fn rotate_secret(
    pool: &PgPool,
    project: ProjectId,
    sealed: Vec<u8>,
    now: UnixMs,
    overlap_until: UnixMs,
) -> Result<()> {
    // Rotations of one project take turns on its row; the statements after
    // the lock see (and expire) a secret a concurrent rotation just added,
    // which one statement, reading its snapshot from before the wait, would not.
    let mut tx = pool.begin().await.map_err(db_err)?;
    sqlx::query("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE")
        .bind(project.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query("UPDATE signing_secrets SET expires_at = LEAST(COALESCE(expires_at, $1), $1) WHERE project_id = $2")
        .bind(overlap_until)
        .bind(project.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query("INSERT INTO signing_secrets (project_id, sealed, created_at) VALUES ($1, $2, $3)")
        .bind(project.as_str())
        .bind(sealed)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)
}

pub(super) async fn create_webhook(pool: &PgPool, w: Webhook, limit: u32) -> Result<WebhookCreation> {
    // Creations in one project take turns on its row, so the count after the
    // lock sees a webhook that a concurrent creation just added; one statement
    // would count in its snapshot from before the wait. NO KEY UPDATE leaves
    // the row free for the key-share locks of foreign keys (ingest).
    let mut tx = pool.begin().await.map_err(db_err)?;
    sqlx::query("SELECT 1 FROM projects WHERE id = $1 FOR NO KEY UPDATE")
        .bind(w.project_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    let inserted = sqlx::query(concat!(
        "INSERT INTO project_webhooks (",
        webhook_columns!(),
        ") SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
         WHERE (SELECT count(*) FROM project_webhooks WHERE project_id = $2) < $11"
    ))
    .bind(w.id.as_str())
    .bind(w.project_id.as_str())
    .bind(&w.event)
    .bind(&w.target_url)
    .bind(w.is_active)
    .bind(w.created_at)
    .bind(w.updated_at)
    .bind(w.rate_limit.map(|n| n as i32))
    .bind(w.disabled.as_ref().map(|d| d.reason.as_str()))
    .bind(w.disabled.as_ref().map(|d| d.at))
    .bind(i64::from(limit))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?
    .rows_affected();
    tx.commit().await.map_err(db_err)?;
    Ok(if inserted == 1 { WebhookCreation::Created } else { WebhookCreation::LimitReached })
}

pub(super) async fn list_webhooks(pool: &PgPool, project: ProjectId, page: Page) -> Result<Paged<Webhook>> {
    let found = sqlx::query(concat!(
        "SELECT ",
        webhook_columns!(),
        " FROM project_webhooks WHERE project_id = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(project.as_str())
    .bind(page.after.as_deref())
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    Ok(Paged::from_rows(rows(found, webhook_from_row)?, page.limit, |w: &Webhook| w.id.as_str()))
}

pub(super) async fn get_webhook(pool: &PgPool, project: ProjectId, id: WebhookId) -> Result<Option<Webhook>> {
    let found =
        sqlx::query(concat!("SELECT ", webhook_columns!(), " FROM project_webhooks WHERE id = $1 AND project_id = $2"))
            .bind(id.as_str())
            .bind(project.as_str())
            .fetch_optional(pool)
            .await
            .map_err(db_err)?;
    row(found, webhook_from_row)
}

pub(super) async fn update_webhook(
    pool: &PgPool,
    project: ProjectId,
    id: WebhookId,
    patch: WebhookPatch,
    now: UnixMs,
) -> Result<Option<Webhook>> {
    let found = sqlx::query(concat!(
        // Made active: what hookline recorded when it disabled the webhook
        // goes, and a streak of failures starts afresh.
        "UPDATE project_webhooks SET event = COALESCE($1, event), target_url = COALESCE($2, target_url), \
         is_active = COALESCE($3, is_active), updated_at = $4, \
         rate_limit = CASE WHEN $7 THEN $8 ELSE rate_limit END, \
         disabled_reason = CASE WHEN $3 THEN NULL ELSE disabled_reason END, \
         disabled_at = CASE WHEN $3 THEN NULL ELSE disabled_at END, \
         failing_since = CASE WHEN $3 AND NOT is_active THEN NULL ELSE failing_since END \
         WHERE id = $5 AND project_id = $6 RETURNING ",
        webhook_columns!()
    ))
    .bind(patch.event.as_ref().map(|e| e.as_str()))
    .bind(patch.target_url)
    .bind(patch.is_active)
    .bind(now)
    .bind(id.as_str())
    .bind(project.as_str())
    .bind(patch.rate_limit.is_some())
    .bind(patch.rate_limit.flatten().map(|n| n as i32))
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    row(found, webhook_from_row)
}

pub(super) async fn delete_webhook(pool: &PgPool, project: ProjectId, id: WebhookId) -> Result<bool> {
    sqlx::query("DELETE FROM project_webhooks WHERE id = $1 AND project_id = $2")
        .bind(id.as_str())
        .bind(project.as_str())
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db_err)
}

pub(super) async fn list_events(pool: &PgPool, project: ProjectId, page: Page) -> Result<Paged<Event>> {
    let found = sqlx::query(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE project_id = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(project.as_str())
    .bind(page.after.as_deref())
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    Ok(Paged::from_rows(rows(found, event_from_row)?, page.limit, |e: &Event| e.id.as_str()))
}

pub(super) async fn get_event(
    pool: &PgPool,
    project: ProjectId,
    id: EventId,
) -> Result<Option<(Event, Vec<DeliverySummary>)>> {
    let found = sqlx::query(concat!("SELECT ", event_columns!(), " FROM events WHERE id = $1 AND project_id = $2"))
        .bind(id.as_str())
        .bind(project.as_str())
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    let Some(event) = row(found, event_from_row)? else { return Ok(None) };
    let found = sqlx::query("SELECT id, webhook_id, status FROM webhook_logs WHERE event_id = $1 ORDER BY id")
        .bind(id.as_str())
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    Ok(Some((event, rows(found, summary_from_row)?)))
}

pub(super) async fn list_logs(
    pool: &PgPool,
    project: ProjectId,
    f: LogFilter,
    page: Page,
) -> Result<Paged<DeliveryLog>> {
    let found = sqlx::query(concat!(
        "SELECT ",
        log_columns!(),
        " FROM webhook_logs WHERE project_id = $1 AND ($2::text IS NULL OR id < $2) \
         AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR event = $4) \
         AND ($5::text IS NULL OR webhook_id = $5) AND ($6::text IS NULL OR event_id = $6) \
         AND ($7::int8 IS NULL OR created_at >= $7) AND ($8::int8 IS NULL OR created_at < $8) \
         ORDER BY id DESC LIMIT $9"
    ))
    .bind(project.as_str())
    .bind(page.after.as_deref())
    .bind(f.status.map(DeliveryStatus::as_str))
    .bind(f.event)
    .bind(f.webhook_id.as_ref().map(WebhookId::as_str))
    .bind(f.event_id.as_ref().map(EventId::as_str))
    .bind(f.since)
    .bind(f.until)
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    Ok(Paged::from_rows(rows(found, log_from_row)?, page.limit, |l: &DeliveryLog| l.id.as_str()))
}

pub(super) async fn get_log(
    pool: &PgPool,
    project: ProjectId,
    id: DeliveryId,
) -> Result<Option<(DeliveryLog, Vec<Attempt>)>> {
    let Some(log) = get_log_row(pool, &project, &id).await? else { return Ok(None) };
    let found = sqlx::query(
        "SELECT number, started_at, duration_ms, response_code, error_class, error, response_body \
         FROM delivery_attempts WHERE delivery_id = $1 ORDER BY number",
    )
    .bind(id.as_str())
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    Ok(Some((log, rows(found, attempt_from_row)?)))
}

async fn get_log_row(pool: &PgPool, project: &ProjectId, id: &DeliveryId) -> Result<Option<DeliveryLog>> {
    let found = sqlx::query(concat!("SELECT ", log_columns!(), " FROM webhook_logs WHERE id = $1 AND project_id = $2"))
        .bind(id.as_str())
        .bind(project.as_str())
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row(found, log_from_row)
}
