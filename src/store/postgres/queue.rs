//! The queue's statements in PostgreSQL: ingest (batched, or under an
//! idempotency key), claim, complete, release, manual retry, queue counts and
//! pruning.
//!
//! Every operation is one statement where it can be: a batch of ingests is
//! one statement for all events and deliveries; a keyed ingest is one
//! data-modifying CTE that commits the key, the event and its deliveries
//! atomically; a claim selects due rows `FOR UPDATE SKIP LOCKED`, leases them
//! and returns what is needed to send them; and a batch of completions is one
//! guarded `UPDATE … FROM UNNEST(…)`. The functions that commit work another
//! process could take announce it (`notify.rs`) after the commit.

use sqlx::Row as _;
use sqlx::postgres::{PgConnection, PgPool};

use super::notify::Announcer;
use super::rows::{kind_from_sql, log_columns, log_from_row, row};
use super::{db_err, lifecycle};
use crate::domain::{DeliveryId, DisablePolicy, EventData, EventId, ProjectId, TargetUrl, UnixMs, WebhookId};
use crate::store::{
    Claimed, Completed, Completion, DeliveryStatus, DeliverySummary, IDEMPOTENCY_WINDOW_MS, Ingested, LeaseToken,
    NewEvent, QueueStats, Receipt, Result, Retried, StoreError, Target,
};

/// Writes events (none with an idempotency key) and their deliveries in one
/// transaction: one query for the webhooks of every (project, event) in the
/// batch, one statement for all events and deliveries.
pub(super) async fn ingest_batch(pool: &PgPool, events: &[NewEvent]) -> sqlx::Result<Vec<Ingested>> {
    let mut pairs: Vec<(&str, &str)> = events.iter().map(|e| (e.project_id.as_str(), e.name.as_str())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let (projects, names): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
    let mut tx = pool.begin().await?;
    let hooks = sqlx::query(
        "SELECT w.project_id, w.event, w.id, w.target_url, w.rate_limit FROM project_webhooks w \
         JOIN UNNEST($1::text[], $2::text[]) AS k (project_id, event) \
         ON w.project_id = k.project_id AND w.event = k.event WHERE w.is_active ORDER BY w.id",
    )
    .bind(&projects)
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_pair: std::collections::HashMap<(String, String), Vec<(String, Target)>> = Default::default();
    for r in &hooks {
        let target = Target { url: r.try_get(3)?, rate_limit: r.try_get::<Option<i32>, _>(4)?.map(|n| n as u32) };
        by_pair.entry((r.try_get(0)?, r.try_get(1)?)).or_default().push((r.try_get(2)?, target));
    }
    let mut deliveries_of = Vec::with_capacity(events.len());
    let mut d = DeliveryColumns::default();
    for e in events {
        let key = (e.project_id.to_string(), e.name.as_str().to_owned());
        let mut mine = Vec::new();
        for (webhook_id, target_url) in by_pair.get(&key).map(Vec::as_slice).unwrap_or_default() {
            let id = DeliveryId::generate_at(e.created_at);
            d.push(&id, e, webhook_id, &target_url.url);
            mine.push((id, webhook_id.clone(), target_url.clone()));
        }
        deliveries_of.push(mine);
    }
    sqlx::query(
        "WITH ev AS (
             INSERT INTO events (id, project_id, event_name, data, created_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
         )
         INSERT INTO webhook_logs (id, project_id, event, event_id, webhook_id, target_url, status, attempts,
                                   next_attempt_at, lease_token, created_at, updated_at)
         SELECT d.id, d.project_id, d.event, d.event_id, d.webhook_id, d.target_url, 'pending', 0,
                d.due_at, d.lease, d.created_at, d.created_at
         FROM UNNEST($6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[],
                     $13::bigint[], $14::bigint[])
              AS d (id, project_id, event, event_id, webhook_id, target_url, due_at, lease, created_at)",
    )
    .bind(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.project_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.name.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.data.as_json()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.created_at).collect::<Vec<_>>())
    .bind(&d.ids)
    .bind(&d.projects)
    .bind(&d.events)
    .bind(&d.event_ids)
    .bind(&d.webhooks)
    .bind(&d.urls)
    .bind(&d.due_at)
    .bind(&d.leases)
    .bind(&d.created_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(events.iter().zip(deliveries_of).map(|(e, mine)| created(e, mine)).collect())
}

/// The delivery rows of a batch, column by column, for `UNNEST`.
#[derive(Default)]
struct DeliveryColumns {
    ids: Vec<String>,
    projects: Vec<String>,
    events: Vec<String>,
    event_ids: Vec<String>,
    webhooks: Vec<String>,
    urls: Vec<String>,
    due_at: Vec<i64>,
    leases: Vec<Option<i64>>,
    created_at: Vec<i64>,
}

impl DeliveryColumns {
    fn push(&mut self, id: &DeliveryId, e: &NewEvent, webhook_id: &str, target_url: &TargetUrl) {
        self.ids.push(id.to_string());
        self.projects.push(e.project_id.to_string());
        self.events.push(e.name.as_str().to_owned());
        self.event_ids.push(e.id.to_string());
        self.webhooks.push(webhook_id.to_owned());
        self.urls.push(target_url.as_str().to_owned());
        // Leased deliveries are due when their lease runs out, as if claimed.
        self.due_at.push(e.lease.map_or(e.created_at, |l| l.until));
        self.leases.push(e.lease.map(|l| l.token));
        self.created_at.push(e.created_at);
    }
}

/// What ingest answers for a created event: its receipt, and the target of
/// each delivery.
fn created(e: &NewEvent, deliveries: Vec<(DeliveryId, String, Target)>) -> Ingested {
    let mut summaries = Vec::with_capacity(deliveries.len());
    let mut targets = Vec::with_capacity(deliveries.len());
    for (id, webhook, target_url) in deliveries {
        let webhook_id = WebhookId::from_trusted(webhook);
        targets.push(target_url);
        summaries.push(DeliverySummary { id, webhook_id, status: DeliveryStatus::Pending });
    }
    let receipt =
        Receipt { event_id: e.id.clone(), event_name: e.name.clone(), created_at: e.created_at, deliveries: summaries };
    Ingested::Created { receipt, targets }
}

/// The rest of the keyed ingest statement: the event, only when `claimed` has a
/// row, and its deliveries, leased to the ingesting process when `$9` (lease
/// end) and `$10` (token) are given. Answers 1 when the event was created, 0
/// when the idempotency key was taken.
macro_rules! ingest_tail {
    () => {
        ", event AS (
             INSERT INTO events (id, project_id, event_name, data, created_at)
             SELECT $1, $2, $3, $4, $5 FROM claimed
             RETURNING id
         ), deliveries AS (
             INSERT INTO webhook_logs (id, project_id, event, event_id, webhook_id, target_url, status, attempts,
                                       next_attempt_at, lease_token, created_at, updated_at)
             SELECT d.id, $2, $3, event.id, d.webhook_id, d.target_url, 'pending', 0,
                    COALESCE($9::bigint, $5), $10::bigint, $5, $5
             FROM event CROSS JOIN UNNEST($6::text[], $7::text[], $8::text[]) AS d (id, webhook_id, target_url)
         )
         SELECT count(*) FROM event"
    };
}

/// Ingest under an idempotency key. The key row is written first; when a row
/// for the key exists, it is taken over only if it has expired (or names the
/// event `$14`, which is gone), else nothing is created. A concurrent request
/// with the same key waits on the key's unique index until this one commits,
/// then finds the key taken, so one event is created, never two. The
/// condition looks only at the key row itself: that is the version
/// PostgreSQL re-checks after such a wait, where a subquery would still see
/// the statement's older snapshot.
const INGEST_WITH_KEY: &str = concat!(
    "WITH claimed AS (
         INSERT INTO idempotency_keys AS k (project_id, key, fingerprint, event_id, created_at)
         VALUES ($2, $11, $12, $1, $5)
         ON CONFLICT (project_id, key) DO UPDATE
             SET fingerprint = EXCLUDED.fingerprint, event_id = EXCLUDED.event_id, created_at = EXCLUDED.created_at
             WHERE k.created_at <= $13 OR k.event_id = $14
         RETURNING 1
     )",
    ingest_tail!()
);

/// One attempt at the ingest statement; `true` when the event was created.
async fn try_ingest(
    pool: &PgPool,
    e: &NewEvent,
    deliveries: &[(DeliveryId, String, Target)],
    stale_event: Option<&str>,
) -> Result<bool> {
    let ids: Vec<&str> = deliveries.iter().map(|d| d.0.as_str()).collect();
    let hooks: Vec<&str> = deliveries.iter().map(|d| d.1.as_str()).collect();
    let urls: Vec<&str> = deliveries.iter().map(|d| d.2.url.as_str()).collect();
    let idem = e.idempotency.as_ref().expect("only keyed ingests take this path; the others are batched");
    let created = sqlx::query_scalar::<_, i64>(INGEST_WITH_KEY)
        .bind(e.id.as_str())
        .bind(e.project_id.as_str())
        .bind(e.name.as_str())
        .bind(e.data.as_json())
        .bind(e.created_at)
        .bind(ids)
        .bind(hooks)
        .bind(urls)
        .bind(e.lease.map(|l| l.until))
        .bind(e.lease.map(|l| l.token))
        .bind(idem.key.as_str())
        .bind(&idem.fingerprint[..])
        .bind(e.created_at - IDEMPOTENCY_WINDOW_MS)
        .bind(stale_event)
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    Ok(created == 1)
}

/// Ingest under an idempotency key: one event at a time, as the key
/// decides whether anything is created at all.
pub(super) async fn ingest_keyed(pool: &PgPool, announce: &Announcer, e: NewEvent) -> Result<Ingested> {
    let hooks = sqlx::query(
        "SELECT id, target_url, rate_limit FROM project_webhooks \
         WHERE project_id = $1 AND event = $2 AND is_active ORDER BY id",
    )
    .bind(e.project_id.as_str())
    .bind(e.name.as_str())
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    let deliveries = hooks
        .iter()
        .map(|r| {
            let target = Target { url: r.try_get(1)?, rate_limit: r.try_get::<Option<i32>, _>(2)?.map(|n| n as u32) };
            Ok((DeliveryId::generate_at(e.created_at), r.try_get(0)?, target))
        })
        .collect::<sqlx::Result<Vec<(DeliveryId, String, Target)>>>()
        .map_err(db_err)?;

    // Usually one round: created. Otherwise the key is taken, by a retry
    // of this request or by another event; a key whose event is gone is
    // taken over on the next round.
    let mut stale_event: Option<String> = None;
    for _ in 0..3 {
        if try_ingest(pool, &e, &deliveries, stale_event.as_deref()).await? {
            // Leased deliveries go to this process's worker in memory; others must hear of them.
            if !deliveries.is_empty() && e.lease.is_none() {
                announce.announce();
            }
            return Ok(created(&e, deliveries));
        }
        let idem = e.idempotency.as_ref().expect("only a keyed ingest can find its key taken");
        let seen = sqlx::query("SELECT fingerprint, event_id FROM idempotency_keys WHERE project_id = $1 AND key = $2")
            .bind(e.project_id.as_str())
            .bind(&idem.key)
            .fetch_optional(pool)
            .await
            .map_err(db_err)?;
        let Some(seen) = seen else {
            // Pruned just now: try again.
            stale_event = None;
            continue;
        };
        let fingerprint: Vec<u8> = seen.try_get(0).map_err(db_err)?;
        let event_id: String = seen.try_get(1).map_err(db_err)?;
        if fingerprint != idem.fingerprint {
            return Ok(Ingested::KeyReused);
        }
        if let Some(receipt) = receipt_of(pool, &event_id).await? {
            return Ok(Ingested::Replayed(receipt));
        }
        stale_event = Some(event_id);
    }
    Err(StoreError::IdempotencyKeyContended)
}

/// The answer ingest gave for this event: its deliveries, all pending as
/// they were when it was accepted.
async fn receipt_of(pool: &PgPool, event_id: &str) -> Result<Option<Receipt>> {
    let found = sqlx::query(
        "SELECT e.event_name, e.created_at, l.id, l.webhook_id FROM events e \
         LEFT JOIN webhook_logs l ON l.event_id = e.id WHERE e.id = $1 ORDER BY l.id",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    let Some(first) = found.first() else { return Ok(None) };
    let mut receipt = Receipt {
        event_id: EventId::from_trusted(event_id.to_owned()),
        event_name: first.try_get(0).map_err(db_err)?,
        created_at: first.try_get(1).map_err(db_err)?,
        deliveries: Vec::with_capacity(found.len()),
    };
    for r in &found {
        let id: Option<String> = r.try_get(2).map_err(db_err)?;
        let webhook: Option<String> = r.try_get(3).map_err(db_err)?;
        if let Some((id, webhook)) = id.zip(webhook) {
            receipt.deliveries.push(DeliverySummary {
                id: DeliveryId::from_trusted(id),
                webhook_id: WebhookId::from_trusted(webhook),
                status: DeliveryStatus::Pending,
            });
        }
    }
    Ok(Some(receipt))
}

pub(super) async fn retry_delivery(
    pool: &PgPool,
    announce: &Announcer,
    project: ProjectId,
    id: DeliveryId,
    now: UnixMs,
) -> Result<Retried> {
    // In flight: leased. Due: next_attempt_at has come, by this request's clock
    // or by that of whoever last changed the row (updated_at): two retries a
    // millisecond apart must not both pass because their clocks disagree.
    let found = sqlx::query(concat!(
        "UPDATE webhook_logs SET status = 'pending', next_attempt_at = $1, lease_token = NULL, updated_at = $1 \
         WHERE id = $2 AND project_id = $3 \
         AND NOT (status = 'pending' AND (next_attempt_at <= GREATEST($1, updated_at) OR lease_token IS NOT NULL)) RETURNING ",
        log_columns!()
    ))
    .bind(now)
    .bind(id.as_str())
    .bind(project.as_str())
    .fetch_optional(pool)
    .await
    .map_err(db_err)?;
    if let Some(log) = row(found, log_from_row)? {
        announce.announce();
        return Ok(Retried::Due(log));
    }
    let exists = sqlx::query("SELECT 1 FROM webhook_logs WHERE id = $1 AND project_id = $2")
        .bind(id.as_str())
        .bind(project.as_str())
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    Ok(if exists.is_some() { Retried::Busy } else { Retried::NotFound })
}

/// Leases due deliveries in one statement and returns what sending them needs.
/// `SKIP LOCKED` lets concurrent claimers (in any process) pass over rows
/// another is taking, so none is handed out twice.
const CLAIM: &str = "WITH due AS MATERIALIZED (
         SELECT id FROM webhook_logs
         WHERE status = 'pending' AND next_attempt_at <= $3 AND webhook_id <> ALL($5::text[])
         ORDER BY next_attempt_at
         LIMIT $4
         FOR UPDATE SKIP LOCKED
     ), leased AS (
         UPDATE webhook_logs l SET lease_token = $1, next_attempt_at = $2
         FROM due WHERE l.id = due.id
         RETURNING l.id, l.project_id, l.event_id, l.webhook_id, l.attempts, l.attempt_base, l.kind
     )
     SELECT c.id, c.project_id, c.event_id, e.event_name, e.created_at, e.data, c.webhook_id,
            w.target_url, w.is_active, c.attempts, w.rate_limit, c.attempt_base, c.kind
     FROM leased c JOIN events e ON e.id = c.event_id LEFT JOIN project_webhooks w ON w.id = c.webhook_id";

pub(super) async fn claim(
    pool: &PgPool,
    now: UnixMs,
    lease_until: UnixMs,
    limit: u32,
    skip: Vec<WebhookId>,
) -> Result<Vec<Claimed>> {
    let lease: LeaseToken = rand::random();
    let skip: Vec<&str> = skip.iter().map(WebhookId::as_str).collect();
    let found = sqlx::query(CLAIM)
        .bind(lease)
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(limit))
        .bind(skip)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    found
        .iter()
        .map(|r| {
            let url: Option<TargetUrl> = r.try_get(7)?;
            let active: Option<bool> = r.try_get(8)?;
            Ok(Claimed {
                id: DeliveryId::from_trusted(r.try_get(0)?),
                lease,
                lease_until,
                project_id: ProjectId::from_trusted(r.try_get(1)?),
                event_id: EventId::from_trusted(r.try_get(2)?),
                event_name: r.try_get(3)?,
                event_created_at: r.try_get(4)?,
                data: EventData::from_trusted(r.try_get(5)?),
                webhook_id: WebhookId::from_trusted(r.try_get(6)?),
                webhook: url.zip(active),
                attempts: r.try_get::<i32, _>(9)? as u32,
                rate_limit: r.try_get::<Option<i32>, _>(10)?.map(|n| n as u32),
                attempt_base: r.try_get::<i32, _>(11)? as u32,
                kind: kind_from_sql(r.try_get(12)?)?,
            })
        })
        .collect::<sqlx::Result<_>>()
        .map_err(db_err)
}

/// Records a batch of results; each row applies only while its lease is the
/// current one, and only the attempts of rows that applied are kept. Answers
/// the rows that applied.
const COMPLETE: &str = "WITH done AS (
         UPDATE webhook_logs l SET
             status = c.status,
             next_attempt_at = c.next_attempt_at,
             response_code = COALESCE(c.response_code, l.response_code),
             attempts = l.attempts + c.counted,
             last_error = c.last_error,
             lease_token = NULL,
             updated_at = $1,
             target_url = COALESCE(c.target_url, l.target_url)
         FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::int8[], $6::int4[], $7::int4[], $8::text[],
                     $9::text[])
             AS c (id, lease, status, next_attempt_at, response_code, counted, last_error, target_url)
         WHERE l.id = c.id AND l.lease_token = c.lease
         RETURNING l.id, c.lease
     ), recorded AS (
         -- Only the attempts whose result applied: matched on the lease too,
         -- as a batch may hold a stale result for the same delivery.
         INSERT INTO delivery_attempts (delivery_id, number, started_at, duration_ms, response_code, error_class,
                                        error, response_body)
         SELECT a.delivery_id, a.number, a.started_at, a.duration_ms, a.response_code, a.error_class, a.error,
                a.response_body
         FROM UNNEST($10::text[], $11::int4[], $12::int8[], $13::int8[], $14::int4[], $15::text[],
                     $16::text[], $17::text[], $18::int8[])
             AS a (delivery_id, number, started_at, duration_ms, response_code, error_class, error, response_body,
                   lease)
         WHERE (a.delivery_id, a.lease) IN (SELECT id, lease FROM done)
     )
     SELECT id, lease FROM done";

/// Records a batch of results, and what they say about their webhooks, in
/// one transaction.
///
/// Locks come in one order, the one disabling takes: first the webhooks with
/// results, by id, then deliveries. So two batches, or a batch and a
/// disabling, never each hold what the other waits for.
async fn complete_batch(
    pool: &PgPool,
    done: &[Completion],
    now: UnixMs,
    policy: DisablePolicy,
) -> sqlx::Result<Completed> {
    if done.is_empty() {
        return Ok(Completed::default());
    }
    let mut tx = pool.begin().await?;
    let webhooks = lifecycle::lock_webhooks(&mut tx, done).await?;
    let applied = record_results(&mut tx, done, now).await?;
    let applied: Vec<&Completion> =
        done.iter().filter(|c| applied.contains(&(c.id.as_str().to_owned(), c.lease))).collect();
    let disabled = lifecycle::judge(&mut tx, &applied, webhooks, now, policy).await?;
    tx.commit().await?;
    Ok(Completed { applied: applied.len(), disabled })
}

/// The results' statement: the rows that applied, as (id, lease).
async fn record_results(
    tx: &mut PgConnection,
    done: &[Completion],
    now: UnixMs,
) -> sqlx::Result<std::collections::HashSet<(String, LeaseToken)>> {
    let n = done.len();
    let (mut ids, mut leases, mut statuses, mut next_at) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut codes, mut counted, mut errors, mut urls) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let mut a_ids = Vec::with_capacity(n);
    let (mut a_number, mut a_started, mut a_duration, mut a_code) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut a_class, mut a_error, mut a_body, mut a_lease) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for c in done {
        let (status, at) = c.next.columns();
        ids.push(c.id.as_str());
        leases.push(c.lease);
        statuses.push(status);
        next_at.push(at);
        codes.push(c.attempts.last().and_then(|a| a.response_code).map(i32::from));
        counted.push(c.attempts.len() as i32);
        errors.push(c.last_error.as_deref());
        urls.push(c.target_url.as_ref().map(TargetUrl::as_str));
        for a in &c.attempts {
            a_ids.push(c.id.as_str());
            a_number.push(a.number as i32);
            a_started.push(a.started_at);
            a_duration.push(i64::from(a.duration_ms));
            a_code.push(a.response_code.map(i32::from));
            a_class.push(a.error_class.as_deref());
            a_error.push(a.error.as_deref());
            a_body.push(a.response_body.as_deref());
            a_lease.push(c.lease);
        }
    }
    let applied = sqlx::query_as::<_, (String, LeaseToken)>(COMPLETE)
        .bind(now)
        .bind(ids)
        .bind(leases)
        .bind(statuses)
        .bind(next_at)
        .bind(codes)
        .bind(counted)
        .bind(errors)
        .bind(urls)
        .bind(a_ids)
        .bind(a_number)
        .bind(a_started)
        .bind(a_duration)
        .bind(a_code)
        .bind(a_class)
        .bind(a_error)
        .bind(a_body)
        .bind(a_lease)
        .fetch_all(&mut *tx)
        .await?;
    Ok(applied.into_iter().collect())
}

pub(super) async fn complete(
    pool: &PgPool,
    announce: &Announcer,
    done: Vec<Completion>,
    now: UnixMs,
    policy: DisablePolicy,
) -> Result<Completed> {
    let completed = match complete_batch(pool, &done, now, policy).await {
        Ok(completed) => completed,
        // One bad row must not keep the others from being recorded: each
        // on its own, as SQLite's writer falls back to one savepoint each.
        Err(e) if done.len() > 1 => {
            tracing::warn!(error = %e, results = done.len(), "recording a batch of results failed; recording them one by one");
            let mut all = Completed::default();
            for c in &done {
                match complete_batch(pool, std::slice::from_ref(c), now, policy).await {
                    Ok(one) => {
                        all.applied += one.applied;
                        all.disabled.extend(one.disabled);
                    }
                    Err(e) => tracing::error!(error = %e, delivery = %c.id, "recording a result failed"),
                }
            }
            all
        }
        Err(e) => return Err(db_err(e)),
    };
    // The webhook.disabled events' deliveries may go to any worker.
    if completed.disabled.iter().any(|d| d.notified > 0) {
        announce.announce();
    }
    Ok(completed)
}

pub(super) async fn release(
    pool: &PgPool,
    announce: &Announcer,
    held: Vec<(DeliveryId, LeaseToken)>,
    due_at: UnixMs,
) -> Result<()> {
    if held.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
    let leases: Vec<LeaseToken> = held.iter().map(|(_, lease)| *lease).collect();
    sqlx::query(
        "UPDATE webhook_logs l SET lease_token = NULL, next_attempt_at = $1 \
         FROM UNNEST($2::text[], $3::int8[]) AS h (id, lease) WHERE l.id = h.id AND l.lease_token = h.lease",
    )
    .bind(due_at)
    .bind(ids)
    .bind(leases)
    .execute(pool)
    .await
    .map_err(db_err)?;
    // Given back for now (a shutdown): another process may take them at once.
    if due_at <= crate::domain::time::now_ms() {
        announce.announce();
    }
    Ok(())
}

pub(super) async fn prune(pool: &PgPool, before: UnixMs, now: UnixMs, batch: u32) -> Result<u64> {
    sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(now - IDEMPOTENCY_WINDOW_MS)
        .execute(pool)
        .await
        .map_err(db_err)?;
    // Rotated-out secrets past their overlap sign nothing any more.
    sqlx::query("DELETE FROM signing_secrets WHERE expires_at <= $1").bind(now).execute(pool).await.map_err(db_err)?;
    // SKIP LOCKED: pruners of several processes take disjoint batches
    // instead of queueing (or deadlocking) on the same rows.
    // Event ids start with their creation time, so "older than" is an id range.
    sqlx::query(
        "DELETE FROM events WHERE id IN (SELECT id FROM events e WHERE id < $1 AND NOT EXISTS \
         (SELECT 1 FROM webhook_logs l WHERE l.event_id = e.id AND l.status = 'pending') \
         LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(EventId::first_at(before).as_str())
    .bind(i64::from(batch))
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
    .map_err(db_err)
}

pub(super) async fn queue_stats(pool: &PgPool, now: UnixMs) -> Result<QueueStats> {
    let r = sqlx::query(
        // A claim pushes next_attempt_at to the lease's expiry, so a row
        // whose lease expired is due again, and a leased row is one whose
        // lease has not expired yet.
        "SELECT count(*), count(*) FILTER (WHERE next_attempt_at <= $1), \
         count(*) FILTER (WHERE lease_token IS NOT NULL AND next_attempt_at > $1), min(created_at) \
         FROM webhook_logs WHERE status = 'pending'",
    )
    .bind(now)
    .fetch_one(pool)
    .await
    .map_err(db_err)?;
    let count = |i: usize| r.try_get::<i64, _>(i).map(|n| n as u64).map_err(db_err);
    Ok(QueueStats {
        pending: count(0)?,
        due: count(1)?,
        leased: count(2)?,
        oldest_pending_created_at: r.try_get(3).map_err(db_err)?,
    })
}

/// Reserves `count` request slots of a rate-limited webhook (see
/// `Backend::take_rate_slots`); returns the first. One statement: the row
/// lock orders concurrent takers on every node.
pub(super) async fn take_rate_slots(
    pool: &PgPool,
    webhook: &WebhookId,
    now_us: i64,
    count: u32,
    interval_us: i64,
) -> Result<i64> {
    let span = i64::from(count) * interval_us;
    let end: i64 = sqlx::query_scalar(
        "INSERT INTO webhook_rate_slots (webhook_id, next_slot_us) VALUES ($1, $2 + $3) \
         ON CONFLICT (webhook_id) DO UPDATE SET next_slot_us = GREATEST(webhook_rate_slots.next_slot_us, $2) + $3 \
         RETURNING next_slot_us",
    )
    .bind(webhook.as_str())
    .bind(now_us)
    .bind(span)
    .fetch_one(pool)
    .await
    .map_err(db_err)?;
    Ok(end - span)
}
