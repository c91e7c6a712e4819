//! The objects a project manages, in SQLite: projects, API keys, signing
//! secrets and webhooks, and the reads of events and delivery logs that the
//! API serves.
//!
//! Each function runs on the connection it is given; `mod.rs` decides which
//! (a reader, or the writer's group transaction), so the writes here may run
//! twice (see `writer.rs`) and keep no state outside the transaction.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::db_err;
use super::rows::{
    EVENT_COLUMNS, LOG_COLUMNS, WEBHOOK_COLUMNS, api_key_from_row, attempt_from_row, event_from_row, log_from_row,
    summary_from_row, webhook_from_row,
};
use crate::domain::{ApiKeyHash, ApiKeyId, DeliveryId, EventId, ProjectId, UnixMs, WebhookId};
use crate::store::{
    ApiKeyRecord, Attempt, DeliveryLog, DeliveryStatus, DeliverySummary, Event, LogFilter, NewApiKey, Page, Paged,
    Project, Result, SealedSecret, Webhook, WebhookCreation, WebhookPatch,
};

/// Whether any signing secret is stored.
pub(super) fn holds_secrets(conn: &Connection) -> Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM signing_secrets)")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(db_err)
}

fn insert_key(conn: &Connection, project: &ProjectId, key: &NewApiKey) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO api_keys (id, project_id, key_hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![key.id.as_str(), project.as_str(), &key.hash.0[..], key.prefix, key.created_at])
}

pub(super) fn create_project(
    conn: &Connection,
    project: &Project,
    key: &NewApiKey,
    sealed_secret: &[u8],
) -> Result<()> {
    conn.prepare_cached("INSERT INTO projects (id, name, created_at) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![project.id.as_str(), project.name, project.created_at]))
        .and_then(|_| insert_key(conn, &project.id, key))
        .and_then(|_| {
            conn.prepare_cached("INSERT INTO signing_secrets (project_id, sealed, created_at) VALUES (?1, ?2, ?3)")?
                .execute(params![project.id.as_str(), sealed_secret, project.created_at])
        })
        .map(drop)
        .map_err(db_err)
}

pub(super) fn project_by_key(conn: &Connection, hash: &ApiKeyHash) -> Result<Option<ProjectId>> {
    conn.prepare_cached("SELECT project_id FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL")
        .and_then(|mut s| s.query_row([&hash.0[..]], |r| r.get::<_, String>(0)).optional())
        .map(|id| id.map(ProjectId::from_trusted))
        .map_err(db_err)
}

pub(super) fn create_api_key(conn: &Connection, project: &ProjectId, key: &NewApiKey) -> Result<bool> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM projects WHERE id = ?1")
        .and_then(|mut s| s.exists([project.as_str()]))
        .map_err(db_err)?;
    if exists {
        insert_key(conn, project, key).map_err(db_err)?;
    }
    Ok(exists)
}

pub(super) fn revoke_api_key(conn: &Connection, project: &ProjectId, key: &ApiKeyId, now: UnixMs) -> Result<bool> {
    conn.prepare_cached("UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND project_id = ?3 AND revoked_at IS NULL")
        .and_then(|mut s| s.execute(params![now, key.as_str(), project.as_str()]))
        .map(|n| n == 1)
        .map_err(db_err)
}

pub(super) fn list_api_keys(conn: &Connection, project: &ProjectId) -> Result<Vec<ApiKeyRecord>> {
    conn.prepare_cached("SELECT id, prefix, created_at, revoked_at FROM api_keys WHERE project_id = ?1 ORDER BY id")
        .and_then(|mut s| s.query_map([project.as_str()], api_key_from_row)?.collect())
        .map_err(db_err)
}

pub(super) fn signing_secrets(conn: &Connection, projects: &[ProjectId], now: UnixMs) -> Result<Vec<SealedSecret>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT sealed, created_at, expires_at FROM signing_secrets \
             WHERE project_id = ?1 AND (expires_at IS NULL OR expires_at > ?2) ORDER BY seq DESC",
        )
        .map_err(db_err)?;
    let mut out = Vec::new();
    for project in projects {
        let rows = stmt
            .query_map(params![project.as_str(), now], |r| {
                Ok(SealedSecret {
                    project_id: project.clone(),
                    sealed: r.get(0)?,
                    created_at: r.get(1)?,
                    expires_at: r.get(2)?,
                })
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(db_err)?;
        out.extend(rows);
    }
    Ok(out)
}

pub(super) fn rotate_secret(
    conn: &Connection,
    project: &ProjectId,
    sealed: &[u8],
    now: UnixMs,
    overlap_until: UnixMs,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE signing_secrets SET expires_at = MIN(COALESCE(expires_at, ?1), ?1) WHERE project_id = ?2",
    )
    .and_then(|mut s| s.execute(params![overlap_until, project.as_str()]))
    .and_then(|_| {
        conn.prepare_cached("INSERT INTO signing_secrets (project_id, sealed, created_at) VALUES (?1, ?2, ?3)")?
            .execute(params![project.as_str(), sealed, now])
    })
    .map(drop)
    .map_err(db_err)
}

/// One statement counts and inserts, on the one writer: no other write can
/// come between the two.
pub(super) fn create_webhook(conn: &Connection, w: &Webhook, limit: u32) -> Result<WebhookCreation> {
    let inserted = conn
        .prepare_cached(&format!(
            "INSERT INTO project_webhooks ({WEBHOOK_COLUMNS}) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 \
             WHERE (SELECT count(*) FROM project_webhooks WHERE project_id = ?2) < ?11"
        ))
        .and_then(|mut s| {
            s.execute(params![
                w.id.as_str(),
                w.project_id.as_str(),
                &w.event,
                &w.target_url,
                w.is_active,
                w.created_at,
                w.updated_at,
                w.rate_limit,
                w.disabled.as_ref().map(|d| d.reason.as_str()),
                w.disabled.as_ref().map(|d| d.at),
                limit
            ])
        })
        .map_err(db_err)?;
    Ok(if inserted == 1 { WebhookCreation::Created } else { WebhookCreation::LimitReached })
}

pub(super) fn list_webhooks(conn: &Connection, project: &ProjectId, page: &Page) -> Result<Paged<Webhook>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM project_webhooks WHERE project_id = ?1 AND (?2 IS NULL OR id < ?2) \
             ORDER BY id DESC LIMIT ?3"
        ))
        .and_then(|mut s| {
            s.query_map(params![project.as_str(), page.after, page.limit + 1], webhook_from_row)?.collect()
        })
        .map_err(db_err)?;
    Ok(Paged::from_rows(rows, page.limit, |w: &Webhook| w.id.as_str()))
}

pub(super) fn get_webhook(conn: &Connection, project: &ProjectId, id: &WebhookId) -> Result<Option<Webhook>> {
    conn.prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM project_webhooks WHERE id = ?1 AND project_id = ?2"))
        .and_then(|mut s| s.query_row(params![id.as_str(), project.as_str()], webhook_from_row).optional())
        .map_err(db_err)
}

pub(super) fn update_webhook(
    conn: &Connection,
    project: &ProjectId,
    id: &WebhookId,
    patch: &WebhookPatch,
    now: UnixMs,
) -> Result<Option<Webhook>> {
    let changed = conn
        .prepare_cached(
            // Made active: what hookline recorded when it disabled the
            // webhook goes, and a streak of failures starts afresh.
            "UPDATE project_webhooks SET event = COALESCE(?1, event), target_url = COALESCE(?2, target_url), \
             is_active = COALESCE(?3, is_active), updated_at = ?4, \
             rate_limit = CASE WHEN ?7 THEN ?8 ELSE rate_limit END, \
             disabled_reason = CASE WHEN ?3 = 1 THEN NULL ELSE disabled_reason END, \
             disabled_at = CASE WHEN ?3 = 1 THEN NULL ELSE disabled_at END, \
             failing_since = CASE WHEN ?3 = 1 AND is_active = 0 THEN NULL ELSE failing_since END \
             WHERE id = ?5 AND project_id = ?6",
        )
        .and_then(|mut s| {
            s.execute(params![
                patch.event.as_ref().map(|e| e.as_str()),
                patch.target_url,
                patch.is_active,
                now,
                id.as_str(),
                project.as_str(),
                patch.rate_limit.is_some(),
                patch.rate_limit.flatten()
            ])
        })
        .map_err(db_err)?;
    if changed == 0 {
        return Ok(None);
    }
    conn.prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM project_webhooks WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id.as_str()], webhook_from_row).optional())
        .map_err(db_err)
}

pub(super) fn delete_webhook(conn: &Connection, project: &ProjectId, id: &WebhookId) -> Result<bool> {
    conn.prepare_cached("DELETE FROM project_webhooks WHERE id = ?1 AND project_id = ?2")
        .and_then(|mut s| s.execute(params![id.as_str(), project.as_str()]))
        .map(|n| n == 1)
        .map_err(db_err)
}

pub(super) fn list_events(conn: &Connection, project: &ProjectId, page: &Page) -> Result<Paged<Event>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE project_id = ?1 AND (?2 IS NULL OR id < ?2) \
             ORDER BY id DESC LIMIT ?3"
        ))
        .and_then(|mut s| s.query_map(params![project.as_str(), page.after, page.limit + 1], event_from_row)?.collect())
        .map_err(db_err)?;
    Ok(Paged::from_rows(rows, page.limit, |e: &Event| e.id.as_str()))
}

pub(super) fn get_event(
    conn: &Connection,
    project: &ProjectId,
    id: &EventId,
) -> Result<Option<(Event, Vec<DeliverySummary>)>> {
    let event = conn
        .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1 AND project_id = ?2"))
        .and_then(|mut s| s.query_row(params![id.as_str(), project.as_str()], event_from_row).optional())
        .map_err(db_err)?;
    let Some(event) = event else { return Ok(None) };
    let deliveries = conn
        .prepare_cached("SELECT id, webhook_id, status FROM webhook_logs WHERE event_id = ?1 ORDER BY id")
        .and_then(|mut s| s.query_map([id.as_str()], summary_from_row)?.collect())
        .map_err(db_err)?;
    Ok(Some((event, deliveries)))
}

pub(super) fn list_logs(
    conn: &Connection,
    project: &ProjectId,
    f: &LogFilter,
    page: &Page,
) -> Result<Paged<DeliveryLog>> {
    let rows = conn
        .prepare_cached(&format!(
            "SELECT {LOG_COLUMNS} FROM webhook_logs WHERE project_id = ?1 AND (?2 IS NULL OR id < ?2) \
             AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR event = ?4) \
             AND (?5 IS NULL OR webhook_id = ?5) AND (?6 IS NULL OR event_id = ?6) \
             AND (?7 IS NULL OR created_at >= ?7) AND (?8 IS NULL OR created_at < ?8) \
             ORDER BY id DESC LIMIT ?9"
        ))
        .and_then(|mut s| {
            s.query_map(
                params![
                    project.as_str(),
                    page.after,
                    f.status.map(DeliveryStatus::as_str),
                    f.event,
                    f.webhook_id.as_ref().map(WebhookId::as_str),
                    f.event_id.as_ref().map(EventId::as_str),
                    f.since,
                    f.until,
                    page.limit + 1
                ],
                log_from_row,
            )?
            .collect()
        })
        .map_err(db_err)?;
    Ok(Paged::from_rows(rows, page.limit, |l: &DeliveryLog| l.id.as_str()))
}

pub(super) fn get_log(
    conn: &Connection,
    project: &ProjectId,
    id: &DeliveryId,
) -> Result<Option<(DeliveryLog, Vec<Attempt>)>> {
    let Some(log) = get_log_row(conn, project, id).map_err(db_err)? else { return Ok(None) };
    let attempts = conn
        .prepare_cached(
            "SELECT number, started_at, duration_ms, response_code, error_class, error, response_body \
             FROM delivery_attempts WHERE delivery_id = ?1 ORDER BY number",
        )
        .and_then(|mut s| s.query_map([id.as_str()], attempt_from_row)?.collect())
        .map_err(db_err)?;
    Ok(Some((log, attempts)))
}

pub(super) fn get_log_row(
    conn: &Connection,
    project: &ProjectId,
    id: &DeliveryId,
) -> rusqlite::Result<Option<DeliveryLog>> {
    conn.prepare_cached(&format!("SELECT {LOG_COLUMNS} FROM webhook_logs WHERE id = ?1 AND project_id = ?2"))?
        .query_row(params![id.as_str(), project.as_str()], log_from_row)
        .optional()
}
