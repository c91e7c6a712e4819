//! The queue's statements in SQLite: ingest (the event, its deliveries and
//! the idempotency key), claim, complete, release, manual retry, queue counts
//! and pruning.
//!
//! Every write here runs inside the writer's group transaction (see
//! `writer.rs`), which is what makes an ingest's rows commit together and
//! what serializes claims: with one writer, no two claims can lease the same
//! delivery, so no `SKIP LOCKED` is needed.

use rusqlite::{Connection, OptionalExtension as _, params};

use super::crud::get_log_row;
use super::rows::kind_from_sql;
use super::{db_err, lifecycle};
use crate::domain::{
    DeliveryId, DisablePolicy, EventData, EventId, EventName, ProjectId, TargetUrl, UnixMs, WebhookId,
};
use crate::store::{
    Claimed, Completed, Completion, DeliveryStatus, DeliverySummary, IDEMPOTENCY_WINDOW_MS, Ingested, LeaseToken,
    NewEvent, QueueStats, Receipt, Result, Retried, Target,
};

/// The answer ingest gave for this event: its deliveries, all pending as they
/// were when it was accepted.
fn receipt_of(conn: &Connection, event_id: &str) -> rusqlite::Result<Option<Receipt>> {
    let head = conn
        .prepare_cached("SELECT event_name, created_at FROM events WHERE id = ?1")?
        .query_row([event_id], |r| Ok((r.get::<_, EventName>(0)?, r.get::<_, i64>(1)?)))
        .optional()?;
    let Some((event_name, created_at)) = head else { return Ok(None) };
    let deliveries = conn
        .prepare_cached("SELECT id, webhook_id FROM webhook_logs WHERE event_id = ?1 ORDER BY id")?
        .query_map([event_id], |r| {
            Ok(DeliverySummary {
                id: DeliveryId::from_trusted(r.get(0)?),
                webhook_id: WebhookId::from_trusted(r.get(1)?),
                status: DeliveryStatus::Pending,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(Receipt { event_id: EventId::from_trusted(event_id.to_owned()), event_name, created_at, deliveries }))
}

/// Commits the event, its pending deliveries and the idempotency key (in the
/// caller's transaction).
pub(super) fn ingest(conn: &Connection, e: &NewEvent) -> Result<Ingested> {
    ingest_in_tx(conn, e).map_err(db_err)
}

/// Ingest in the caller's transaction; also how the store emits an
/// operational event (`lifecycle.rs`).
pub(super) fn ingest_in_tx(conn: &Connection, e: &NewEvent) -> rusqlite::Result<Ingested> {
    if let Some(idem) = &e.idempotency {
        let seen = conn
            .prepare_cached(
                "SELECT fingerprint, event_id, created_at FROM idempotency_keys WHERE project_id = ?1 AND key = ?2",
            )?
            .query_row(params![e.project_id.as_str(), idem.key], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })
            .optional()?;
        if let Some((fingerprint, event_id, at)) = seen {
            if at > e.created_at - IDEMPOTENCY_WINDOW_MS {
                if fingerprint != idem.fingerprint {
                    return Ok(Ingested::KeyReused);
                }
                if let Some(receipt) = receipt_of(conn, &event_id)? {
                    return Ok(Ingested::Replayed(receipt));
                }
            }
            conn.prepare_cached("DELETE FROM idempotency_keys WHERE project_id = ?1 AND key = ?2")?
                .execute(params![e.project_id.as_str(), idem.key])?;
        }
    }
    conn.prepare_cached(
        "INSERT INTO events (id, project_id, event_name, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![e.id.as_str(), e.project_id.as_str(), e.name.as_str(), e.data.as_json(), e.created_at])?;
    let hooks = conn
        .prepare_cached(
            "SELECT id, target_url, rate_limit FROM project_webhooks \
             WHERE project_id = ?1 AND event = ?2 AND is_active = 1 ORDER BY id",
        )?
        .query_map(params![e.project_id.as_str(), e.name.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, Target { url: r.get(1)?, rate_limit: r.get(2)? }))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut deliveries = Vec::with_capacity(hooks.len());
    let mut targets = Vec::with_capacity(hooks.len());
    let mut insert = conn.prepare_cached(
        "INSERT INTO webhook_logs (id, project_id, event, event_id, webhook_id, target_url, status, attempts, \
         next_attempt_at, lease_token, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?8, ?9, ?9)",
    )?;
    // Leased deliveries are due when their lease runs out, as if claimed.
    let due_at = e.lease.map_or(e.created_at, |l| l.until);
    for (webhook_id, target) in hooks {
        // Its time part is its created_at: a time range of deliveries is an id range.
        let id = DeliveryId::generate_at(e.created_at);
        insert.execute(params![
            id.as_str(),
            e.project_id.as_str(),
            e.name.as_str(),
            e.id.as_str(),
            webhook_id,
            &target.url,
            due_at,
            e.lease.map(|l| l.token),
            e.created_at
        ])?;
        let webhook_id = WebhookId::from_trusted(webhook_id);
        targets.push(target);
        deliveries.push(DeliverySummary { id, webhook_id, status: DeliveryStatus::Pending });
    }
    if let Some(idem) = &e.idempotency {
        conn.prepare_cached(
            "INSERT INTO idempotency_keys (project_id, key, fingerprint, event_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![e.project_id.as_str(), idem.key, &idem.fingerprint[..], e.id.as_str(), e.created_at])?;
    }
    let receipt = Receipt { event_id: e.id.clone(), event_name: e.name.clone(), created_at: e.created_at, deliveries };
    Ok(Ingested::Created { receipt, targets })
}

pub(super) fn retry_delivery(conn: &Connection, project: &ProjectId, id: &DeliveryId, now: UnixMs) -> Result<Retried> {
    // In flight: leased. Due: next_attempt_at has come, by this request's clock
    // or by that of whoever last changed the row (updated_at): two retries a
    // millisecond apart must not both pass because their clocks disagree.
    let changed = conn
        .prepare_cached(
            "UPDATE webhook_logs SET status = 'pending', next_attempt_at = ?1, lease_token = NULL, updated_at = ?1 \
             WHERE id = ?2 AND project_id = ?3 \
             AND NOT (status = 'pending' AND (next_attempt_at <= MAX(?1, updated_at) OR lease_token IS NOT NULL))",
        )
        .and_then(|mut s| s.execute(params![now, id.as_str(), project.as_str()]))
        .map_err(db_err)?;
    Ok(match get_log_row(conn, project, id).map_err(db_err)? {
        Some(log) if changed > 0 => Retried::Due(log),
        Some(_) => Retried::Busy,
        None => Retried::NotFound,
    })
}

/// Leases up to `limit` due deliveries to `lease` until `lease_until`.
pub(super) fn claim(
    conn: &Connection,
    lease: LeaseToken,
    now: UnixMs,
    lease_until: UnixMs,
    limit: u32,
    skip_json: &str,
) -> Result<Vec<Claimed>> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "UPDATE webhook_logs SET lease_token = ?1, next_attempt_at = ?2 WHERE id IN \
             (SELECT id FROM webhook_logs WHERE status = 'pending' AND next_attempt_at <= ?3 \
              AND webhook_id NOT IN (SELECT value FROM json_each(?5)) \
              ORDER BY next_attempt_at LIMIT ?4) RETURNING id",
        )
        .and_then(|mut s| s.query_map(params![lease, lease_until, now, limit, skip_json], |r| r.get(0))?.collect())
        .map_err(db_err)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // What a send needs, for all of them in one statement: one execution per
    // row cost the writer about a third of a drain's claim.
    let wanted = serde_json::to_string(&ids).expect("strings serialize");
    conn.prepare_cached(
        "SELECT l.id, l.project_id, l.event_id, e.event_name, e.created_at, e.data, l.webhook_id, \
         w.target_url, w.is_active, l.attempts, w.rate_limit, l.attempt_base, l.kind \
         FROM json_each(?1) AS j JOIN webhook_logs l ON l.id = j.value JOIN events e ON e.id = l.event_id \
         LEFT JOIN project_webhooks w ON w.id = l.webhook_id",
    )
    .and_then(|mut s| {
        s.query_map([wanted], |r| {
            let url: Option<TargetUrl> = r.get(7)?;
            let active: Option<bool> = r.get(8)?;
            Ok(Claimed {
                id: DeliveryId::from_trusted(r.get(0)?),
                lease,
                lease_until,
                project_id: ProjectId::from_trusted(r.get(1)?),
                event_id: EventId::from_trusted(r.get(2)?),
                event_name: r.get(3)?,
                event_created_at: r.get(4)?,
                data: EventData::from_trusted(r.get(5)?),
                webhook_id: WebhookId::from_trusted(r.get(6)?),
                webhook: url.zip(active),
                attempts: r.get(9)?,
                rate_limit: r.get(10)?,
                attempt_base: r.get(11)?,
                kind: kind_from_sql(r.get(12)?)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })
    .map(|mut claimed| {
        // Oldest first, as the claim's own order was (sorting here costs less
        // than the temporary B-tree an ORDER BY would build).
        claimed.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        claimed
    })
    .map_err(db_err)
}

/// Records results; each applies only if its lease is still current. Then,
/// in the same transaction, the webhooks' streaks of failures and whether
/// any is to be disabled (`lifecycle.rs`).
pub(super) fn complete(
    conn: &Connection,
    done: &[Completion],
    now: UnixMs,
    policy: DisablePolicy,
) -> Result<Completed> {
    let applied = record_results(conn, done, now).map_err(db_err)?;
    let disabled = lifecycle::judge(conn, &applied, now, policy).map_err(db_err)?;
    Ok(Completed { applied: applied.len(), disabled })
}

/// The results that applied (their lease was still current). The two
/// statements are prepared once for the batch: a cached statement's lookup
/// hashes its text, which cost the writer about 2 % of its instructions per
/// statement and event.
fn record_results<'a>(conn: &Connection, done: &'a [Completion], now: UnixMs) -> rusqlite::Result<Vec<&'a Completion>> {
    let mut update = conn.prepare_cached(
        "UPDATE webhook_logs SET status = ?1, next_attempt_at = ?2, response_code = COALESCE(?3, response_code), \
         attempts = attempts + ?4, last_error = ?5, lease_token = NULL, updated_at = ?6, \
         target_url = COALESCE(?9, target_url) WHERE id = ?7 AND lease_token = ?8",
    )?;
    let mut attempt = conn.prepare_cached(
        "INSERT INTO delivery_attempts (delivery_id, number, started_at, duration_ms, response_code, error_class, \
         error, response_body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut applied = Vec::with_capacity(done.len());
    for c in done {
        let (status, next_attempt_at) = c.next.columns();
        let counted = c.attempts.len() as i64;
        let code = c.attempts.last().and_then(|a| a.response_code);
        let changed = update.execute(params![
            status,
            next_attempt_at,
            code,
            counted,
            c.last_error,
            now,
            c.id.as_str(),
            c.lease,
            c.target_url
        ])?;
        if changed == 0 {
            continue;
        }
        for a in &c.attempts {
            attempt.execute(params![
                c.id.as_str(),
                a.number,
                a.started_at,
                a.duration_ms,
                a.response_code,
                a.error_class,
                a.error,
                a.response_body
            ])?;
        }
        applied.push(c);
    }
    Ok(applied)
}

/// Gives deliveries back unattempted, due at `due_at`.
pub(super) fn release(conn: &Connection, held: &[(DeliveryId, LeaseToken)], due_at: UnixMs) -> Result<()> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE webhook_logs SET lease_token = NULL, next_attempt_at = ?1 WHERE id = ?2 AND lease_token = ?3",
        )
        .map_err(db_err)?;
    for (id, lease) in held {
        stmt.execute(params![due_at, id.as_str(), lease]).map_err(db_err)?;
    }
    Ok(())
}

pub(super) fn prune(conn: &Connection, before: UnixMs, now: UnixMs, batch: u32) -> Result<u64> {
    conn.prepare_cached("DELETE FROM idempotency_keys WHERE created_at < ?1")
        .and_then(|mut s| s.execute([now - IDEMPOTENCY_WINDOW_MS]))
        .map_err(db_err)?;
    // Rotated-out secrets past their overlap sign nothing any more.
    conn.prepare_cached("DELETE FROM signing_secrets WHERE expires_at <= ?1")
        .and_then(|mut s| s.execute([now]))
        .map_err(db_err)?;
    // Event ids start with their creation time, so "older than" is an id range.
    conn.prepare_cached(
        "DELETE FROM events WHERE id IN (SELECT id FROM events e WHERE id < ?1 AND NOT EXISTS \
         (SELECT 1 FROM webhook_logs l WHERE l.event_id = e.id AND l.status = 'pending') LIMIT ?2)",
    )
    .and_then(|mut s| s.execute(params![EventId::first_at(before).as_str(), batch]))
    .map(|n| n as u64)
    .map_err(db_err)
}

pub(super) fn queue_stats(conn: &Connection, now: UnixMs) -> Result<QueueStats> {
    conn.prepare_cached(
        // A claim pushes next_attempt_at to the lease's expiry, so a
        // row whose lease expired is due again (and claimable), and a
        // leased row is one whose lease has not expired yet.
        "SELECT COUNT(*), COALESCE(SUM(next_attempt_at <= ?1), 0), \
         COALESCE(SUM(lease_token IS NOT NULL AND next_attempt_at > ?1), 0), MIN(created_at) \
         FROM webhook_logs WHERE status = 'pending'",
    )
    .and_then(|mut s| {
        s.query_row([now], |r| {
            Ok(QueueStats {
                pending: r.get::<_, i64>(0)? as u64,
                due: r.get::<_, i64>(1)? as u64,
                leased: r.get::<_, i64>(2)? as u64,
                oldest_pending_created_at: r.get(3)?,
            })
        })
    })
    .map_err(db_err)
}

/// Reserves `count` request slots of a rate-limited webhook (see
/// `Backend::take_rate_slots`); returns the first.
pub(super) fn take_rate_slots(
    conn: &Connection,
    webhook: &WebhookId,
    now_us: i64,
    count: u32,
    interval_us: i64,
) -> Result<i64> {
    let span = i64::from(count) * interval_us;
    let end: i64 = conn
        .prepare_cached(
            "INSERT INTO webhook_rate_slots (webhook_id, next_slot_us) VALUES (?1, ?2 + ?3) \
             ON CONFLICT (webhook_id) DO UPDATE SET next_slot_us = MAX(next_slot_us, ?2) + ?3 \
             RETURNING next_slot_us",
        )
        .and_then(|mut s| s.query_row(params![webhook.as_str(), now_us, span], |r| r.get(0)))
        .map_err(db_err)?;
    Ok(end - span)
}
