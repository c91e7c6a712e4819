//! The webhook lifecycle in SQLite (SPEC §9): the streak of failures and
//! disabling (in the transaction that records attempts), operational events,
//! test deliveries, and the two halves of a replay.
//!
//! The writes run in the writer's group transaction, like every write (see
//! `writer.rs`), so they may run twice and keep no state outside it.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::db_err;
use super::queue::ingest_in_tx;
use crate::domain::lifecycle::{EndpointState, Verdict};
use crate::domain::operational::Operational;
use crate::domain::{
    DeliveryId, DisablePolicy, DisableReason, EventId, EventName, ProjectId, TargetUrl, UnixMs, WebhookId,
};
use crate::store::{
    Completion, DeliveryKind, DeliveryStatus, DeliverySummary, DisabledWebhook, Ingested, LogFilter, NewEvent,
    ReplaySnapshot, Requeue, Result,
};

/// Applies the verdicts of recorded attempts to their webhooks: each
/// webhook's `failing_since`, and disabling the ones `policy` judges dead.
pub(super) fn judge(
    conn: &Connection,
    applied: &[&Completion],
    now: UnixMs,
    policy: DisablePolicy,
) -> rusqlite::Result<Vec<DisabledWebhook>> {
    let mut by_webhook: BTreeMap<&WebhookId, Vec<(UnixMs, Verdict)>> = BTreeMap::new();
    for c in applied {
        if let (Some(verdict), Some(attempt)) = (c.verdict, c.attempts.last()) {
            by_webhook.entry(&c.webhook_id).or_default().push((attempt.started_at, verdict));
        }
    }
    let mut disabled = Vec::new();
    for (webhook, results) in by_webhook {
        let found = conn
            .prepare_cached(
                "SELECT project_id, event, target_url, is_active, failing_since FROM project_webhooks WHERE id = ?1",
            )?
            .query_row([webhook.as_str()], |r| {
                let state = EndpointState { is_active: r.get(3)?, failing_since: r.get(4)? };
                Ok((ProjectId::from_trusted(r.get(0)?), r.get::<_, EventName>(1)?, r.get::<_, TargetUrl>(2)?, state))
            })
            .optional()?;
        // Deleted meanwhile: nothing to keep.
        let Some((project, event, target_url, state)) = found else { continue };
        let judgement = policy.judge(state, &results, now);
        if judgement.failing_since != state.failing_since {
            conn.prepare_cached("UPDATE project_webhooks SET failing_since = ?1 WHERE id = ?2")?
                .execute(params![judgement.failing_since, webhook.as_str()])?;
        }
        if let Some(reason) = judgement.disable {
            disabled.extend(disable(conn, &project, webhook, event, target_url, reason, now)?);
        }
    }
    Ok(disabled)
}

/// Disables an active webhook: records why, fails its pending deliveries
/// (but not the ones a worker holds, whose results will be recorded, nor test
/// deliveries), and emits `webhook.disabled`. `None` if it was not active.
fn disable(
    conn: &Connection,
    project: &ProjectId,
    webhook: &WebhookId,
    event: EventName,
    target_url: TargetUrl,
    reason: DisableReason,
    now: UnixMs,
) -> rusqlite::Result<Option<DisabledWebhook>> {
    let sentence = reason.sentence();
    let changed = conn
        .prepare_cached(
            "UPDATE project_webhooks SET is_active = 0, disabled_reason = ?1, disabled_at = ?2, updated_at = ?2 \
             WHERE id = ?3 AND is_active = 1",
        )?
        .execute(params![sentence, now, webhook.as_str()])?;
    if changed == 0 {
        return Ok(None);
    }
    // A lease that has not expired is a send in flight: its result is
    // recorded, and a retry it asks for fails at its next claim.
    let failed = conn
        .prepare_cached(
            "UPDATE webhook_logs SET status = 'failed', next_attempt_at = NULL, lease_token = NULL, \
             last_error = ?1, updated_at = ?2 \
             WHERE project_id = ?3 AND webhook_id = ?4 AND status = 'pending' AND kind = 'event' \
             AND (lease_token IS NULL OR next_attempt_at <= ?2)",
        )?
        .execute(params![reason.not_sent(), now, project.as_str(), webhook.as_str()])?;
    let notice = Operational::WebhookDisabled {
        webhook_id: webhook.clone(),
        event,
        target_url,
        reason: sentence,
        disabled_at: now,
    };
    let notified = emit(conn, project, &notice, now)?;
    Ok(Some(DisabledWebhook {
        project_id: project.clone(),
        webhook_id: webhook.clone(),
        reason,
        failed_deliveries: failed as u64,
        notified,
    }))
}

/// Commits an operational event of the project, with a delivery to each of
/// its active webhooks subscribed to it, in the caller's transaction.
/// Returns how many deliveries it made.
pub(super) fn emit(
    conn: &Connection,
    project: &ProjectId,
    event: &Operational,
    now: UnixMs,
) -> rusqlite::Result<usize> {
    let new = NewEvent {
        id: EventId::generate_at(now),
        project_id: project.clone(),
        name: event.name(),
        data: event.data(),
        created_at: now,
        idempotency: None,
        lease: None,
    };
    match ingest_in_tx(conn, &new)? {
        Ingested::Created { receipt, .. } => Ok(receipt.deliveries.len()),
        // Only a keyed ingest finds its key taken.
        Ingested::Replayed(_) | Ingested::KeyReused => unreachable!("an operational event has no idempotency key"),
    }
}

/// A `webhook.test` event and its one delivery, to this webhook only, due now.
pub(super) fn create_test_delivery(
    conn: &Connection,
    project: &ProjectId,
    webhook: &WebhookId,
    now: UnixMs,
) -> Result<Option<DeliverySummary>> {
    create_test_in_tx(conn, project, webhook, now).map_err(db_err)
}

fn create_test_in_tx(
    conn: &Connection,
    project: &ProjectId,
    webhook: &WebhookId,
    now: UnixMs,
) -> rusqlite::Result<Option<DeliverySummary>> {
    let target: Option<TargetUrl> = conn
        .prepare_cached("SELECT target_url FROM project_webhooks WHERE id = ?1 AND project_id = ?2")?
        .query_row(params![webhook.as_str(), project.as_str()], |r| r.get(0))
        .optional()?;
    let Some(target) = target else { return Ok(None) };
    let test = Operational::WebhookTest { webhook_id: webhook.clone(), sent_at: now };
    let event_id = EventId::generate_at(now);
    conn.prepare_cached(
        "INSERT INTO events (id, project_id, event_name, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![event_id.as_str(), project.as_str(), test.name(), test.data().as_json(), now])?;
    let id = DeliveryId::generate_at(now);
    conn.prepare_cached(
        "INSERT INTO webhook_logs (id, project_id, event, event_id, webhook_id, target_url, status, attempts, \
         next_attempt_at, kind, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?8, ?7, ?7)",
    )?
    .execute(params![
        id.as_str(),
        project.as_str(),
        test.name(),
        event_id.as_str(),
        webhook.as_str(),
        &target,
        now,
        DeliveryKind::Test.as_str()
    ])?;
    Ok(Some(DeliverySummary { id, webhook_id: webhook.clone(), status: DeliveryStatus::Pending }))
}

/// The deliveries a replay's filter matches, in one statement (one snapshot).
pub(super) fn replay_snapshot(conn: &Connection, project: &ProjectId, f: &LogFilter) -> Result<ReplaySnapshot> {
    // One statement reads one snapshot (its own read transaction).
    let read = || -> rusqlite::Result<ReplaySnapshot> {
        // Delivery ids begin with the time they were made, never before
        // their created_at: the id bound lets the project's index skip
        // everything older than `since`.
        let first_id = f.since.map(|since| DeliveryId::first_at(since).to_string());
        let mut stmt = conn.prepare_cached(
            "SELECT id, status, updated_at, attempts FROM webhook_logs WHERE project_id = ?1 \
             AND (?2 IS NULL OR id >= ?2) AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4) \
             AND (?5 IS NULL OR status = ?5) AND (?6 IS NULL OR event = ?6) \
             AND (?7 IS NULL OR webhook_id = ?7) AND (?8 IS NULL OR event_id = ?8) ORDER BY id",
        )?;
        let mut rows = stmt.query(params![
            project.as_str(),
            first_id,
            f.since,
            f.until,
            f.status.map(DeliveryStatus::as_str),
            f.event,
            f.webhook_id.as_ref().map(WebhookId::as_str),
            f.event_id.as_ref().map(EventId::as_str),
        ])?;
        let mut snapshot = ReplaySnapshot::default();
        while let Some(r) = rows.next()? {
            snapshot.matched += 1;
            if r.get_ref(1)?.as_str()? != DeliveryStatus::Pending.as_str() {
                snapshot.to_requeue.push(Requeue {
                    id: DeliveryId::from_trusted(r.get(0)?),
                    updated_at: r.get(2)?,
                    attempts: r.get(3)?,
                });
            }
        }
        Ok(snapshot)
    };
    read().map_err(db_err)
}

/// Requeues a batch of a replay: each delivery only if it is still not
/// pending and unchanged since the snapshot (same `updated_at` and attempts).
pub(super) fn requeue(conn: &Connection, project: &ProjectId, batch: &[Requeue], now: UnixMs) -> Result<u64> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE webhook_logs SET status = 'pending', next_attempt_at = ?1, lease_token = NULL, \
             attempt_base = attempts, updated_at = ?1 \
             WHERE id = ?2 AND project_id = ?3 AND status <> 'pending' AND updated_at = ?4 AND attempts = ?5",
        )
        .map_err(db_err)?;
    let mut requeued = 0;
    for r in batch {
        requeued +=
            stmt.execute(params![now, r.id.as_str(), project.as_str(), r.updated_at, r.attempts]).map_err(db_err)?;
    }
    Ok(requeued as u64)
}
