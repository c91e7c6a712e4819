//! The webhook lifecycle in PostgreSQL (SPEC §9): the streak of failures and
//! disabling (in the transaction that records attempts, `queue::complete`),
//! operational events, test deliveries, and the two halves of a replay.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row as _;
use sqlx::postgres::{PgConnection, PgPool};

use super::db_err;
use super::notify::Announcer;
use crate::domain::lifecycle::{EndpointState, Verdict};
use crate::domain::operational::Operational;
use crate::domain::{
    DeliveryId, DisablePolicy, DisableReason, EventId, EventName, ProjectId, TargetUrl, UnixMs, WebhookId,
};
use crate::store::{
    Completion, DeliveryKind, DeliveryStatus, DeliverySummary, DisabledWebhook, LogFilter, ReplaySnapshot, Requeue,
    Result,
};

/// A webhook with results in a batch, as locked before the batch is recorded.
pub(super) struct Locked {
    project: ProjectId,
    event: EventName,
    target_url: TargetUrl,
    state: EndpointState,
}

/// Locks the webhooks that the results speak of, in id order, and reads
/// their state. The first statement of a batch's transaction: the lock on a
/// webhook's row is what serializes the changes to its streak of failures
/// between workers.
pub(super) async fn lock_webhooks(
    tx: &mut PgConnection,
    done: &[Completion],
) -> sqlx::Result<HashMap<WebhookId, Locked>> {
    let mut ids: Vec<&str> = done.iter().filter(|c| c.verdict.is_some()).map(|c| c.webhook_id.as_str()).collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort_unstable();
    ids.dedup();
    let found = sqlx::query(
        "SELECT id, project_id, event, target_url, is_active, failing_since FROM project_webhooks \
         WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    found
        .iter()
        .map(|r| {
            let locked = Locked {
                project: ProjectId::from_trusted(r.try_get(1)?),
                event: r.try_get(2)?,
                target_url: r.try_get(3)?,
                state: EndpointState { is_active: r.try_get(4)?, failing_since: r.try_get(5)? },
            };
            Ok((WebhookId::from_trusted(r.try_get(0)?), locked))
        })
        .collect()
}

/// Applies the verdicts of recorded attempts to their (locked) webhooks:
/// each webhook's `failing_since`, and disabling the ones `policy` judges dead.
pub(super) async fn judge(
    tx: &mut PgConnection,
    applied: &[&Completion],
    mut webhooks: HashMap<WebhookId, Locked>,
    now: UnixMs,
    policy: DisablePolicy,
) -> sqlx::Result<Vec<DisabledWebhook>> {
    let mut by_webhook: BTreeMap<&WebhookId, Vec<(UnixMs, Verdict)>> = BTreeMap::new();
    for c in applied {
        if let (Some(verdict), Some(attempt)) = (c.verdict, c.attempts.last()) {
            by_webhook.entry(&c.webhook_id).or_default().push((attempt.started_at, verdict));
        }
    }
    let (mut changed_ids, mut changed_to) = (Vec::new(), Vec::new());
    let mut to_disable = Vec::new();
    for (webhook, results) in by_webhook {
        // Deleted meanwhile: nothing to keep.
        let Some(locked) = webhooks.remove(webhook) else { continue };
        let judgement = policy.judge(locked.state, &results, now);
        if judgement.failing_since != locked.state.failing_since {
            changed_ids.push(webhook.as_str());
            changed_to.push(judgement.failing_since);
        }
        if let Some(reason) = judgement.disable {
            to_disable.push((webhook, locked, reason));
        }
    }
    if !changed_ids.is_empty() {
        sqlx::query(
            "UPDATE project_webhooks w SET failing_since = s.failing_since \
             FROM UNNEST($1::text[], $2::int8[]) AS s (id, failing_since) WHERE w.id = s.id",
        )
        .bind(changed_ids)
        .bind(changed_to)
        .execute(&mut *tx)
        .await?;
    }
    let mut disabled = Vec::new();
    for (webhook, locked, reason) in to_disable {
        disabled.extend(disable(tx, webhook, locked, reason, now).await?);
    }
    Ok(disabled)
}

/// Disables an active webhook: records why, fails its pending deliveries
/// (but not the ones a worker holds, whose results will be recorded, nor test
/// deliveries), and emits `webhook.disabled`. `None` if it was not active.
async fn disable(
    tx: &mut PgConnection,
    webhook: &WebhookId,
    locked: Locked,
    reason: DisableReason,
    now: UnixMs,
) -> sqlx::Result<Option<DisabledWebhook>> {
    let sentence = reason.sentence();
    let changed = sqlx::query(
        "UPDATE project_webhooks SET is_active = FALSE, disabled_reason = $1, disabled_at = $2, updated_at = $2 \
         WHERE id = $3 AND is_active",
    )
    .bind(&sentence)
    .bind(now)
    .bind(webhook.as_str())
    .execute(&mut *tx)
    .await?;
    if changed.rows_affected() == 0 {
        return Ok(None);
    }
    // A lease that has not expired is a send in flight: its result is
    // recorded, and a retry it asks for fails at its next claim.
    let failed = sqlx::query(
        "UPDATE webhook_logs SET status = 'failed', next_attempt_at = NULL, lease_token = NULL, \
         last_error = $1, updated_at = $2 \
         WHERE project_id = $3 AND webhook_id = $4 AND status = 'pending' AND kind = 'event' \
         AND (lease_token IS NULL OR next_attempt_at <= $2)",
    )
    .bind(reason.not_sent())
    .bind(now)
    .bind(locked.project.as_str())
    .bind(webhook.as_str())
    .execute(&mut *tx)
    .await?;
    let notice = Operational::WebhookDisabled {
        webhook_id: webhook.clone(),
        event: locked.event,
        target_url: locked.target_url,
        reason: sentence,
        disabled_at: now,
    };
    let notified = emit(tx, &locked.project, &notice, now).await?;
    Ok(Some(DisabledWebhook {
        project_id: locked.project,
        webhook_id: webhook.clone(),
        reason,
        failed_deliveries: failed.rows_affected(),
        notified,
    }))
}

/// Commits an operational event of the project, with a delivery to each of
/// its active webhooks subscribed to it, in the caller's transaction.
/// Returns how many deliveries it made; the caller announces them after the
/// commit.
pub(super) async fn emit(
    tx: &mut PgConnection,
    project: &ProjectId,
    event: &Operational,
    now: UnixMs,
) -> sqlx::Result<usize> {
    let name = event.name();
    let hooks = sqlx::query(
        "SELECT id, target_url FROM project_webhooks WHERE project_id = $1 AND event = $2 AND is_active ORDER BY id",
    )
    .bind(project.as_str())
    .bind(name.as_str())
    .fetch_all(&mut *tx)
    .await?;
    let mut webhooks = Vec::with_capacity(hooks.len());
    let mut urls = Vec::with_capacity(hooks.len());
    for r in &hooks {
        webhooks.push(r.try_get::<String, _>(0)?);
        urls.push(r.try_get::<String, _>(1)?);
    }
    let ids: Vec<String> = webhooks.iter().map(|_| DeliveryId::generate_at(now).to_string()).collect();
    sqlx::query(
        "WITH ev AS (
             INSERT INTO events (id, project_id, event_name, data, created_at) VALUES ($1, $2, $3, $4, $5)
         )
         INSERT INTO webhook_logs (id, project_id, event, event_id, webhook_id, target_url, status, attempts,
                                   next_attempt_at, created_at, updated_at)
         SELECT d.id, $2, $3, $1, d.webhook_id, d.target_url, 'pending', 0, $5, $5, $5
         FROM UNNEST($6::text[], $7::text[], $8::text[]) AS d (id, webhook_id, target_url)",
    )
    .bind(EventId::generate_at(now).as_str())
    .bind(project.as_str())
    .bind(name.as_str())
    .bind(event.data().as_json())
    .bind(now)
    .bind(&ids)
    .bind(&webhooks)
    .bind(&urls)
    .execute(&mut *tx)
    .await?;
    Ok(ids.len())
}

/// A `webhook.test` event and its one delivery, to this webhook only, due
/// now, in one statement.
pub(super) async fn create_test_delivery(
    pool: &PgPool,
    announce: &Announcer,
    project: ProjectId,
    webhook: WebhookId,
    now: UnixMs,
) -> Result<Option<DeliverySummary>> {
    let test = Operational::WebhookTest { webhook_id: webhook.clone(), sent_at: now };
    let id = DeliveryId::generate_at(now);
    let created = sqlx::query(
        "WITH w AS (
             SELECT id, target_url FROM project_webhooks WHERE id = $1 AND project_id = $2
         ), ev AS (
             INSERT INTO events (id, project_id, event_name, data, created_at) SELECT $3, $2, $4, $5, $6 FROM w
             RETURNING id
         )
         INSERT INTO webhook_logs (id, project_id, event, event_id, webhook_id, target_url, status, attempts,
                                   next_attempt_at, kind, created_at, updated_at)
         SELECT $7, $2, $4, ev.id, w.id, w.target_url, 'pending', 0, $6, $8, $6, $6 FROM w, ev",
    )
    .bind(webhook.as_str())
    .bind(project.as_str())
    .bind(EventId::generate_at(now).as_str())
    .bind(test.name().as_str())
    .bind(test.data().as_json())
    .bind(now)
    .bind(id.as_str())
    .bind(DeliveryKind::Test.as_str())
    .execute(pool)
    .await
    .map_err(db_err)?;
    if created.rows_affected() == 0 {
        return Ok(None);
    }
    announce.announce();
    Ok(Some(DeliverySummary { id, webhook_id: webhook, status: DeliveryStatus::Pending }))
}

/// The deliveries a replay's filter matches, in one statement (one snapshot).
pub(super) async fn replay_snapshot(pool: &PgPool, project: ProjectId, f: LogFilter) -> Result<ReplaySnapshot> {
    // Delivery ids begin with the time they were made, never before their
    // created_at: the id bound lets the project's index skip everything
    // older than `since`.
    let first_id = f.since.map(|since| DeliveryId::first_at(since).to_string());
    let found = sqlx::query(
        "SELECT id, status, updated_at, attempts FROM webhook_logs WHERE project_id = $1 \
         AND ($2::text IS NULL OR id >= $2) AND ($3::int8 IS NULL OR created_at >= $3) \
         AND ($4::int8 IS NULL OR created_at < $4) AND ($5::text IS NULL OR status = $5) \
         AND ($6::text IS NULL OR event = $6) AND ($7::text IS NULL OR webhook_id = $7) \
         AND ($8::text IS NULL OR event_id = $8) ORDER BY id",
    )
    .bind(project.as_str())
    .bind(first_id)
    .bind(f.since)
    .bind(f.until)
    .bind(f.status.map(DeliveryStatus::as_str))
    .bind(f.event)
    .bind(f.webhook_id.as_ref().map(WebhookId::as_str))
    .bind(f.event_id.as_ref().map(EventId::as_str))
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    let mut snapshot = ReplaySnapshot { matched: found.len() as u64, to_requeue: Vec::new() };
    for r in &found {
        let status: &str = r.try_get(1).map_err(db_err)?;
        if status != DeliveryStatus::Pending.as_str() {
            snapshot.to_requeue.push(Requeue {
                id: DeliveryId::from_trusted(r.try_get(0).map_err(db_err)?),
                updated_at: r.try_get(2).map_err(db_err)?,
                attempts: r.try_get::<i32, _>(3).map_err(db_err)? as u32,
            });
        }
    }
    Ok(snapshot)
}

/// Requeues a batch of a replay in one statement: each delivery only if it is
/// still not pending and unchanged since the snapshot (same `updated_at` and
/// attempts).
pub(super) async fn requeue(
    pool: &PgPool,
    announce: &Announcer,
    project: ProjectId,
    batch: Vec<Requeue>,
    now: UnixMs,
) -> Result<u64> {
    let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
    let updated: Vec<i64> = batch.iter().map(|r| r.updated_at).collect();
    let attempts: Vec<i32> = batch.iter().map(|r| r.attempts as i32).collect();
    let requeued = sqlx::query(
        "UPDATE webhook_logs l SET status = 'pending', next_attempt_at = $1, lease_token = NULL, \
         attempt_base = l.attempts, updated_at = $1 \
         FROM UNNEST($3::text[], $4::int8[], $5::int4[]) AS r (id, updated_at, attempts) \
         WHERE l.id = r.id AND l.project_id = $2 AND l.status <> 'pending' \
         AND l.updated_at = r.updated_at AND l.attempts = r.attempts",
    )
    .bind(now)
    .bind(project.as_str())
    .bind(ids)
    .bind(updated)
    .bind(attempts)
    .execute(pool)
    .await
    .map_err(db_err)?
    .rows_affected();
    if requeued > 0 {
        announce.announce();
    }
    Ok(requeued)
}
