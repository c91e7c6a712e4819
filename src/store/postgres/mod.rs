//! The PostgreSQL backend: one database shared by any number of hookline
//! processes, which is then also their queue (no broker).
//!
//! Every operation is one statement where it can be: concurrent ingests are
//! written together, a batch per transaction (`batch_ingests`); a keyed ingest
//! is one data-modifying CTE that commits the key, the event and its
//! deliveries atomically; a claim selects due rows `FOR UPDATE SKIP LOCKED`,
//! leases them and returns what is needed to send them; and a batch of
//! completions is one guarded `UPDATE … FROM UNNEST(…)`. Statements are runtime queries (no sqlx macros),
//! so building needs no database.
//!
//! Workers in other processes learn about new work through `LISTEN/NOTIFY` on
//! [`WORK_CHANNEL`]. The `NOTIFY` is sent right after the commit by a small
//! task that coalesces: PostgreSQL serializes the commits of all transactions
//! that notify (a lock on the whole cluster, held through the commit), so
//! notifying inside every ingest would serialize ingest. One `NOTIFY` covers
//! every commit that happened before it was sent; polling stays the backstop
//! for a lost one.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::{EventData, EventName, TargetUrl, UnixMs};

/// Numbered migrations; `hookline_migrations` records the applied ones.
const MIGRATIONS: &[&str] = &[include_str!("../../../migrations/postgres/0001_init.sql")];
/// Serializes migrations of concurrent processes ("hookline" in ASCII).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_6c69_6e65;
/// The channel new work is announced on.
pub const WORK_CHANNEL: &str = "hookline_work";
/// How long a query waits for a free pooled connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before listening again after the listener failed.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);
/// The most events one batched ingest transaction carries.
const INGEST_BATCH: usize = 256;
/// Batched ingest transactions in flight at once; while they run, the next
/// requests gather into the next batch.
const INGEST_BATCHES_IN_FLIGHT: usize = 4;
/// Ingests waiting for a batch before callers wait to enqueue (backpressure).
const INGEST_QUEUE: usize = 4096;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Where the listener connects (its own connection, outside the pool).
    options: Arc<PgConnectOptions>,
    /// Asks the announcer task for a `NOTIFY`; a full channel means one is
    /// already pending, which covers this request too.
    announce: mpsc::Sender<()>,
    /// Ingests without an idempotency key, for the batcher task.
    ingests: mpsc::Sender<(NewEvent, oneshot::Sender<Result<Ingested>>)>,
}

fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

impl PgStore {
    /// Connects a pool of at most `max_connections` (without migrating).
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?.application_name("hookline");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        let (announce, requests) = mpsc::channel(1);
        tokio::spawn(announce_work(pool.clone(), requests));
        let (ingests, waiting) = mpsc::channel(INGEST_QUEUE);
        tokio::spawn(batch_ingests(pool.clone(), announce.clone(), waiting));
        Ok(Self { pool, options: Arc::new(options), announce, ingests })
    }

    /// Tells workers in every process that work is due (after the commit).
    fn announce_work(&self) {
        let _ = self.announce.try_send(());
    }

    /// Subscribes to [`WORK_CHANNEL`] and, until `stop`, wakes `work_ready` on
    /// every notification and after every reconnect (notifications sent while
    /// disconnected are lost). Returns once the subscription is active, so a
    /// worker started afterwards misses nothing.
    pub async fn watch_for_work(&self, work_ready: Arc<Notify>, stop: CancellationToken) -> Result<()> {
        // A pool of one connection of its own: a busy query pool never delays
        // the listener, and it is one connection per process beyond the pool.
        let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with((*self.options).clone());
        let mut listener = PgListener::connect_with(&pool).await.map_err(db_err)?;
        listener.listen(WORK_CHANNEL).await.map_err(db_err)?;
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = listener.try_recv() => next,
                };
                match next {
                    // A notification, or a reconnect after which some may have been missed.
                    Ok(_) => work_ready.notify_one(),
                    Err(e) => {
                        tracing::warn!(error = %e, "listening for new work failed; polling until it is back");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(RELISTEN_AFTER) => {}
                        }
                    }
                }
            }
            drop(listener);
            pool.close().await;
        });
        Ok(())
    }
}

/// Sends one `NOTIFY` per batch of requests, until every store handle is gone.
async fn announce_work(pool: PgPool, mut requests: mpsc::Receiver<()>) {
    while requests.recv().await.is_some() {
        if let Err(e) = notify_once(&pool).await {
            tracing::warn!(error = %e, "announcing new work failed; other workers will find it by polling");
        }
    }
}

/// A `NOTIFY` that does not wait for its commit to reach disk (notifications
/// are not durable anyway), which keeps PostgreSQL's lock for notifying
/// commits held only briefly.
async fn notify_once(pool: &PgPool) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(WORK_CHANNEL).execute(&mut *tx).await?;
    tx.commit().await
}

/// Group commit for PostgreSQL: concurrent ingests without an idempotency
/// key are written together, a batch per transaction, instead of one
/// transaction (two statements and a WAL flush) each. Under load this cuts
/// PostgreSQL's work per event several times; alone, a request waits for
/// nobody. A failed batch fails each of its requests.
async fn batch_ingests(
    pool: PgPool,
    announce: mpsc::Sender<()>,
    mut waiting: mpsc::Receiver<(NewEvent, oneshot::Sender<Result<Ingested>>)>,
) {
    let in_flight = Arc::new(Semaphore::new(INGEST_BATCHES_IN_FLIGHT));
    loop {
        let permit = in_flight.clone().acquire_owned().await.expect("never closed");
        let Some(first) = waiting.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < INGEST_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (pool, announce) = (pool.clone(), announce.clone());
        tokio::spawn(async move {
            let (events, replies): (Vec<NewEvent>, Vec<_>) = batch.into_iter().unzip();
            let result = match ingest_batch(&pool, &events).await {
                // One bad event must not fail the others: each on its own.
                Err(e) if events.len() > 1 => {
                    tracing::warn!(error = %e, events = events.len(), "a batched ingest failed; writing its events one by one");
                    let mut one_by_one = Vec::with_capacity(events.len());
                    for e in &events {
                        one_by_one.push(ingest_batch(&pool, std::slice::from_ref(e)).await.map(|mut r| r.remove(0)));
                    }
                    Ok(one_by_one)
                }
                other => other.map(|results| results.into_iter().map(Ok).collect()),
            };
            match result {
                Ok(results) => {
                    // Deliveries not leased to this process's worker: tell every worker.
                    let unleased = events.iter().zip(&results).any(|(e, r)| {
                        e.lease.is_none() && matches!(r, Ok(Ingested::Created { targets, .. }) if !targets.is_empty())
                    });
                    if unleased {
                        let _ = announce.try_send(());
                    }
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result.map_err(db_err));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Database(e.to_string())));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Writes events (none with an idempotency key) and their deliveries in one
/// transaction: one query for the webhooks of every (project, event) in the
/// batch, one statement for all events and deliveries.
async fn ingest_batch(pool: &PgPool, events: &[NewEvent]) -> sqlx::Result<Vec<Ingested>> {
    let mut pairs: Vec<(&str, &str)> = events.iter().map(|e| (e.project_id.as_str(), e.name.as_str())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let (projects, names): (Vec<&str>, Vec<&str>) = pairs.into_iter().unzip();
    let mut tx = pool.begin().await?;
    let hooks = sqlx::query(
        "SELECT w.project_id, w.event, w.id, w.target_url FROM project_webhooks w \
         JOIN UNNEST($1::text[], $2::text[]) AS k (project_id, event) \
         ON w.project_id = k.project_id AND w.event = k.event WHERE w.is_active ORDER BY w.id",
    )
    .bind(&projects)
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_pair: std::collections::HashMap<(String, String), Vec<(String, TargetUrl)>> = Default::default();
    for r in &hooks {
        by_pair.entry((r.try_get(0)?, r.try_get(1)?)).or_default().push((r.try_get(2)?, r.try_get(3)?));
    }
    let mut deliveries_of = Vec::with_capacity(events.len());
    let mut d = DeliveryColumns::default();
    for e in events {
        let key = (e.project_id.to_string(), e.name.as_str().to_owned());
        let mut mine = Vec::new();
        for (webhook_id, target_url) in by_pair.get(&key).map(Vec::as_slice).unwrap_or_default() {
            let id = DeliveryId::generate();
            d.push(&id, e, webhook_id, target_url);
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
fn created(e: &NewEvent, deliveries: Vec<(DeliveryId, String, TargetUrl)>) -> Ingested {
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

// Column lists as macros, so statements stay `&'static str` (`concat!`).
macro_rules! webhook_columns {
    () => {
        "id, project_id, event, target_url, is_active, created_at, updated_at"
    };
}
macro_rules! event_columns {
    () => {
        "id, project_id, event_name, data, created_at"
    };
}
macro_rules! log_columns {
    () => {
        "id, project_id, event, event_id, webhook_id, target_url, status, response_code, \
         attempts, next_attempt_at, last_error, created_at, updated_at"
    };
}

// Typed columns: a stored URL or event name comes back as the domain type it
// was saved from, and a row that no longer parses is an error, not a string.
macro_rules! text_column {
    ($ty:ty, $decode:expr) => {
        impl sqlx::Type<Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<Postgres>>::compatible(ty)
            }
        }
        impl sqlx::Encode<'_, Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }
        impl<'r> sqlx::Decode<'r, Postgres> for $ty {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<Postgres>>::decode(value)?;
                $decode(text)
            }
        }
    };
}

text_column!(TargetUrl, |t: &str| TargetUrl::parse(t).map_err(Into::into));
text_column!(EventName, |t: &str| Ok(EventName::from_trusted(t)));

fn webhook_from_row(r: &PgRow) -> sqlx::Result<Webhook> {
    Ok(Webhook {
        id: WebhookId::from_trusted(r.try_get(0)?),
        project_id: ProjectId::from_trusted(r.try_get(1)?),
        event: r.try_get(2)?,
        target_url: r.try_get(3)?,
        is_active: r.try_get(4)?,
        created_at: r.try_get(5)?,
        updated_at: r.try_get(6)?,
    })
}

fn event_from_row(r: &PgRow) -> sqlx::Result<Event> {
    Ok(Event {
        id: EventId::from_trusted(r.try_get(0)?),
        project_id: ProjectId::from_trusted(r.try_get(1)?),
        event_name: r.try_get(2)?,
        data: EventData::from_trusted(r.try_get(3)?),
        created_at: r.try_get(4)?,
    })
}

fn status_from_sql(s: String) -> sqlx::Result<DeliveryStatus> {
    DeliveryStatus::parse(&s).ok_or_else(|| sqlx::Error::Decode(format!("unknown delivery status {s:?}").into()))
}

/// SMALLINT-range codes and counts are stored as INTEGER.
fn code_from_sql(code: Option<i32>) -> Option<u16> {
    code.and_then(|c| u16::try_from(c).ok())
}

fn log_from_row(r: &PgRow) -> sqlx::Result<DeliveryLog> {
    Ok(DeliveryLog {
        id: DeliveryId::from_trusted(r.try_get(0)?),
        project_id: ProjectId::from_trusted(r.try_get(1)?),
        event: r.try_get(2)?,
        event_id: EventId::from_trusted(r.try_get(3)?),
        webhook_id: WebhookId::from_trusted(r.try_get(4)?),
        target_url: r.try_get(5)?,
        status: status_from_sql(r.try_get(6)?)?,
        response_code: code_from_sql(r.try_get(7)?),
        attempts: r.try_get::<i32, _>(8)? as u32,
        next_attempt_at: r.try_get(9)?,
        last_error: r.try_get(10)?,
        created_at: r.try_get(11)?,
        updated_at: r.try_get(12)?,
    })
}

fn attempt_from_row(r: &PgRow) -> sqlx::Result<Attempt> {
    Ok(Attempt {
        number: r.try_get::<i32, _>(0)? as u32,
        started_at: r.try_get(1)?,
        duration_ms: r.try_get::<i64, _>(2)?.clamp(0, i64::from(u32::MAX)) as u32,
        response_code: code_from_sql(r.try_get(3)?),
        error_class: r.try_get(4)?,
        error: r.try_get(5)?,
        response_body: r.try_get(6)?,
    })
}

fn rows<T>(rows: Vec<PgRow>, map: fn(&PgRow) -> sqlx::Result<T>) -> Result<Vec<T>> {
    rows.iter().map(map).collect::<sqlx::Result<_>>().map_err(db_err)
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

/// Leases due deliveries in one statement and returns what sending them needs.
/// `SKIP LOCKED` lets concurrent claimers (in any process) pass over rows
/// another is taking, so none is handed out twice.
const CLAIM: &str = "WITH due AS MATERIALIZED (
         SELECT id FROM webhook_logs
         WHERE status = 'pending' AND next_attempt_at <= $3
         ORDER BY next_attempt_at
         LIMIT $4
         FOR UPDATE SKIP LOCKED
     ), leased AS (
         UPDATE webhook_logs l SET lease_token = $1, next_attempt_at = $2
         FROM due WHERE l.id = due.id
         RETURNING l.id, l.project_id, l.event_id, l.webhook_id, l.attempts
     )
     SELECT c.id, c.project_id, c.event_id, e.event_name, e.created_at, e.data, c.webhook_id,
            w.target_url, w.is_active, c.attempts
     FROM leased c JOIN events e ON e.id = c.event_id LEFT JOIN project_webhooks w ON w.id = c.webhook_id";

/// Records a batch of results; each row applies only while its lease is the
/// current one. Attempts are kept and 410s deactivate webhooks only for the
/// rows that applied.
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
                     $9::text[], $10::bool[])
             AS c (id, lease, status, next_attempt_at, response_code, counted, last_error, target_url, deactivate)
         WHERE l.id = c.id AND l.lease_token = c.lease
         RETURNING l.id, c.lease, l.webhook_id, c.deactivate
     ), recorded AS (
         -- Only the attempts whose result applied: matched on the lease too,
         -- as a batch may hold a stale result for the same delivery.
         INSERT INTO delivery_attempts (delivery_id, number, started_at, duration_ms, response_code, error_class,
                                        error, response_body)
         SELECT a.delivery_id, a.number, a.started_at, a.duration_ms, a.response_code, a.error_class, a.error,
                a.response_body
         FROM UNNEST($11::text[], $12::int4[], $13::int8[], $14::int8[], $15::int4[], $16::text[],
                     $17::text[], $18::text[], $19::int8[])
             AS a (delivery_id, number, started_at, duration_ms, response_code, error_class, error, response_body,
                   lease)
         WHERE (a.delivery_id, a.lease) IN (SELECT id, lease FROM done)
     ), deactivated AS (
         UPDATE project_webhooks w SET is_active = FALSE, updated_at = $1
         FROM done WHERE done.deactivate AND w.id = done.webhook_id
     )
     SELECT count(*) FROM done";

impl PgStore {
    /// Records a batch of results in one statement.
    async fn complete_batch(&self, done: &[Completion], now: UnixMs) -> sqlx::Result<usize> {
        if done.is_empty() {
            return Ok(0);
        }
        let n = done.len();
        let (mut ids, mut leases, mut statuses, mut next_at) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut codes, mut counted, mut errors, mut urls, mut deactivate) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
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
            codes.push(c.attempt.as_ref().and_then(|a| a.response_code).map(i32::from));
            counted.push(i32::from(c.attempt.is_some()));
            errors.push(c.last_error.as_deref());
            urls.push(c.target_url.as_ref().map(TargetUrl::as_str));
            deactivate.push(c.deactivate_webhook);
            if let Some(a) = &c.attempt {
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
        let applied = sqlx::query_scalar::<_, i64>(COMPLETE)
            .bind(now)
            .bind(ids)
            .bind(leases)
            .bind(statuses)
            .bind(next_at)
            .bind(codes)
            .bind(counted)
            .bind(errors)
            .bind(urls)
            .bind(deactivate)
            .bind(a_ids)
            .bind(a_number)
            .bind(a_started)
            .bind(a_duration)
            .bind(a_code)
            .bind(a_class)
            .bind(a_error)
            .bind(a_body)
            .bind(a_lease)
            .fetch_one(&self.pool)
            .await?;
        Ok(applied as usize)
    }

    /// One attempt at the ingest statement; `true` when the event was created.
    async fn try_ingest(
        &self,
        e: &NewEvent,
        deliveries: &[(DeliveryId, String, TargetUrl)],
        stale_event: Option<&str>,
    ) -> Result<bool> {
        let ids: Vec<&str> = deliveries.iter().map(|d| d.0.as_str()).collect();
        let hooks: Vec<&str> = deliveries.iter().map(|d| d.1.as_str()).collect();
        let urls: Vec<&str> = deliveries.iter().map(|d| d.2.as_str()).collect();
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
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(created == 1)
    }

    /// Ingest under an idempotency key: one event at a time, as the key
    /// decides whether anything is created at all.
    async fn ingest_keyed(&self, e: NewEvent) -> Result<Ingested> {
        let hooks = sqlx::query(
            "SELECT id, target_url FROM project_webhooks WHERE project_id = $1 AND event = $2 AND is_active ORDER BY id",
        )
        .bind(e.project_id.as_str())
        .bind(e.name.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let deliveries = hooks
            .iter()
            .map(|r| Ok((DeliveryId::generate(), r.try_get(0)?, r.try_get(1)?)))
            .collect::<sqlx::Result<Vec<(DeliveryId, String, TargetUrl)>>>()
            .map_err(db_err)?;

        // Usually one round: created. Otherwise the key is taken, by a retry
        // of this request or by another event; a key whose event is gone is
        // taken over on the next round.
        let mut stale_event: Option<String> = None;
        for _ in 0..3 {
            if self.try_ingest(&e, &deliveries, stale_event.as_deref()).await? {
                // Leased deliveries go to this process's worker in memory; others must hear of them.
                if !deliveries.is_empty() && e.lease.is_none() {
                    self.announce_work();
                }
                return Ok(created(&e, deliveries));
            }
            let idem = e.idempotency.as_ref().expect("only a keyed ingest can find its key taken");
            let seen =
                sqlx::query("SELECT fingerprint, event_id FROM idempotency_keys WHERE project_id = $1 AND key = $2")
                    .bind(e.project_id.as_str())
                    .bind(&idem.key)
                    .fetch_optional(&self.pool)
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
            if let Some(receipt) = self.receipt_of(&event_id).await? {
                return Ok(Ingested::Replayed(receipt));
            }
            stale_event = Some(event_id);
        }
        Err(StoreError::Database("the idempotency key changed under three attempts in a row".into()))
    }

    /// The answer ingest gave for this event: its deliveries, all pending as
    /// they were when it was accepted.
    async fn receipt_of(&self, event_id: &str) -> Result<Option<Receipt>> {
        let found = sqlx::query(
            "SELECT e.event_name, e.created_at, l.id, l.webhook_id FROM events e \
             LEFT JOIN webhook_logs l ON l.event_id = e.id WHERE e.id = $1 ORDER BY l.id",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
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

    async fn get_log_row(&self, project: &ProjectId, id: &DeliveryId) -> Result<Option<DeliveryLog>> {
        sqlx::query(concat!("SELECT ", log_columns!(), " FROM webhook_logs WHERE id = $1 AND project_id = $2"))
            .bind(id.as_str())
            .bind(project.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
            .as_ref()
            .map(log_from_row)
            .transpose()
            .map_err(db_err)
    }
}

impl Backend for PgStore {
    async fn migrate(&self) -> Result<()> {
        // One transaction under an advisory lock: a second process running
        // this at the same time waits, then finds nothing left to do. DDL is
        // transactional in PostgreSQL, so a failed migration leaves nothing behind.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(db_err)?;
        // Asked first, not CREATE … IF NOT EXISTS, which logs a notice on every start.
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('hookline_migrations') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if !exists {
            sqlx::raw_sql("CREATE TABLE hookline_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let current: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM hookline_migrations")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.unwrap_or(0) as usize) {
            sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(db_err)?;
            sqlx::query("INSERT INTO hookline_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(i as i32 + 1)
                .bind(crate::domain::time::now_ms())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn ping(&self) -> Result<()> {
        let version: Option<i32> = sqlx::query_scalar("SELECT max(version) FROM hookline_migrations")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        match version {
            Some(v) if v as usize == MIGRATIONS.len() => Ok(()),
            v => Err(StoreError::Database(format!("schema version {}, expected {}", v.unwrap_or(0), MIGRATIONS.len()))),
        }
    }

    async fn create_project(&self, project: Project, key: NewApiKey, sealed_secret: Vec<u8>) -> Result<()> {
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
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(db_err)
    }

    async fn project_by_key(&self, hash: ApiKeyHash) -> Result<Option<ProjectId>> {
        sqlx::query_scalar::<_, String>("SELECT project_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
            .bind(&hash.0[..])
            .fetch_optional(&self.pool)
            .await
            .map(|id| id.map(ProjectId::from_trusted))
            .map_err(db_err)
    }

    async fn create_api_key(&self, project: ProjectId, key: NewApiKey) -> Result<bool> {
        sqlx::query(
            "INSERT INTO api_keys (id, project_id, key_hash, prefix, created_at) \
             SELECT $1, id, $3, $4, $5 FROM projects WHERE id = $2",
        )
        .bind(key.id.as_str())
        .bind(project.as_str())
        .bind(&key.hash.0[..])
        .bind(&key.prefix)
        .bind(key.created_at)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected() == 1)
        .map_err(db_err)
    }

    async fn revoke_api_key(&self, project: ProjectId, key: ApiKeyId, now: UnixMs) -> Result<bool> {
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND project_id = $3 AND revoked_at IS NULL")
            .bind(now)
            .bind(key.as_str())
            .bind(project.as_str())
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(db_err)
    }

    async fn list_api_keys(&self, project: ProjectId) -> Result<Vec<ApiKeyRecord>> {
        let found =
            sqlx::query("SELECT id, prefix, created_at, revoked_at FROM api_keys WHERE project_id = $1 ORDER BY id")
                .bind(project.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        rows(found, |r| {
            Ok(ApiKeyRecord {
                id: ApiKeyId::from_trusted(r.try_get(0)?),
                prefix: r.try_get(1)?,
                created_at: r.try_get(2)?,
                revoked_at: r.try_get(3)?,
            })
        })
    }

    async fn signing_secrets(&self, projects: Vec<ProjectId>, now: UnixMs) -> Result<Vec<SealedSecret>> {
        let ids: Vec<&str> = projects.iter().map(ProjectId::as_str).collect();
        let found = sqlx::query(
            "SELECT project_id, sealed, created_at, expires_at FROM signing_secrets \
             WHERE project_id = ANY($1) AND (expires_at IS NULL OR expires_at > $2) ORDER BY project_id, seq DESC",
        )
        .bind(ids)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows(found, |r| {
            Ok(SealedSecret {
                project_id: ProjectId::from_trusted(r.try_get(0)?),
                sealed: r.try_get(1)?,
                created_at: r.try_get(2)?,
                expires_at: r.try_get(3)?,
            })
        })
    }

    async fn rotate_secret(
        &self,
        project: ProjectId,
        sealed: Vec<u8>,
        now: UnixMs,
        overlap_until: UnixMs,
    ) -> Result<()> {
        // Rotations of one project take turns on its row; the statements after
        // the lock see (and expire) a secret a concurrent rotation just added,
        // which one statement, reading its snapshot from before the wait, would not.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE")
            .bind(project.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query(
            "UPDATE signing_secrets SET expires_at = LEAST(COALESCE(expires_at, $1), $1) WHERE project_id = $2",
        )
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

    async fn create_webhook(&self, w: Webhook) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO project_webhooks (",
            webhook_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(w.id.as_str())
        .bind(w.project_id.as_str())
        .bind(&w.event)
        .bind(&w.target_url)
        .bind(w.is_active)
        .bind(w.created_at)
        .bind(w.updated_at)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(db_err)
    }

    async fn list_webhooks(&self, project: ProjectId, page: Page) -> Result<Paged<Webhook>> {
        let found = sqlx::query(concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM project_webhooks WHERE project_id = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(project.as_str())
        .bind(page.after.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(Paged::from_rows(rows(found, webhook_from_row)?, page.limit, |w: &Webhook| w.id.as_str()))
    }

    async fn get_webhook(&self, project: ProjectId, id: WebhookId) -> Result<Option<Webhook>> {
        sqlx::query(concat!("SELECT ", webhook_columns!(), " FROM project_webhooks WHERE id = $1 AND project_id = $2"))
            .bind(id.as_str())
            .bind(project.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
            .as_ref()
            .map(webhook_from_row)
            .transpose()
            .map_err(db_err)
    }

    async fn update_webhook(
        &self,
        project: ProjectId,
        id: WebhookId,
        patch: WebhookPatch,
        now: UnixMs,
    ) -> Result<Option<Webhook>> {
        sqlx::query(concat!(
            "UPDATE project_webhooks SET event = COALESCE($1, event), target_url = COALESCE($2, target_url), \
             is_active = COALESCE($3, is_active), updated_at = $4 WHERE id = $5 AND project_id = $6 RETURNING ",
            webhook_columns!()
        ))
        .bind(patch.event.as_ref().map(|e| e.as_str()))
        .bind(patch.target_url)
        .bind(patch.is_active)
        .bind(now)
        .bind(id.as_str())
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(webhook_from_row)
        .transpose()
        .map_err(db_err)
    }

    async fn delete_webhook(&self, project: ProjectId, id: WebhookId) -> Result<bool> {
        sqlx::query("DELETE FROM project_webhooks WHERE id = $1 AND project_id = $2")
            .bind(id.as_str())
            .bind(project.as_str())
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(db_err)
    }

    async fn ingest(&self, e: NewEvent) -> Result<Ingested> {
        if e.idempotency.is_some() {
            return self.ingest_keyed(e).await;
        }
        let (reply, answer) = oneshot::channel();
        self.ingests.send((e, reply)).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    async fn list_events(&self, project: ProjectId, page: Page) -> Result<Paged<Event>> {
        let found = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM events WHERE project_id = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(project.as_str())
        .bind(page.after.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(Paged::from_rows(rows(found, event_from_row)?, page.limit, |e: &Event| e.id.as_str()))
    }

    async fn get_event(&self, project: ProjectId, id: EventId) -> Result<Option<(Event, Vec<DeliverySummary>)>> {
        let event = sqlx::query(concat!("SELECT ", event_columns!(), " FROM events WHERE id = $1 AND project_id = $2"))
            .bind(id.as_str())
            .bind(project.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let Some(event) = event else { return Ok(None) };
        let event = event_from_row(&event).map_err(db_err)?;
        let found = sqlx::query("SELECT id, webhook_id, status FROM webhook_logs WHERE event_id = $1 ORDER BY id")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let deliveries = rows(found, |r| {
            Ok(DeliverySummary {
                id: DeliveryId::from_trusted(r.try_get(0)?),
                webhook_id: WebhookId::from_trusted(r.try_get(1)?),
                status: status_from_sql(r.try_get(2)?)?,
            })
        })?;
        Ok(Some((event, deliveries)))
    }

    async fn list_logs(&self, project: ProjectId, f: LogFilter, page: Page) -> Result<Paged<DeliveryLog>> {
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
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(Paged::from_rows(rows(found, log_from_row)?, page.limit, |l: &DeliveryLog| l.id.as_str()))
    }

    async fn get_log(&self, project: ProjectId, id: DeliveryId) -> Result<Option<(DeliveryLog, Vec<Attempt>)>> {
        let Some(log) = self.get_log_row(&project, &id).await? else { return Ok(None) };
        let found = sqlx::query(
            "SELECT number, started_at, duration_ms, response_code, error_class, error, response_body \
             FROM delivery_attempts WHERE delivery_id = $1 ORDER BY number",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(Some((log, rows(found, attempt_from_row)?)))
    }

    async fn retry_delivery(&self, project: ProjectId, id: DeliveryId, now: UnixMs) -> Result<Option<DeliveryLog>> {
        let log = sqlx::query(concat!(
            "UPDATE webhook_logs SET status = 'pending', next_attempt_at = $1, lease_token = NULL, updated_at = $1 \
             WHERE id = $2 AND project_id = $3 RETURNING ",
            log_columns!()
        ))
        .bind(now)
        .bind(id.as_str())
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(log_from_row)
        .transpose()
        .map_err(db_err)?;
        if log.is_some() {
            self.announce_work();
        }
        Ok(log)
    }

    async fn claim(&self, now: UnixMs, lease_until: UnixMs, limit: u32) -> Result<Vec<Claimed>> {
        let lease: LeaseToken = rand::random();
        let found = sqlx::query(CLAIM)
            .bind(lease)
            .bind(lease_until)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
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
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(db_err)
    }

    async fn complete(&self, done: Vec<Completion>, now: UnixMs) -> Result<usize> {
        match self.complete_batch(&done, now).await {
            Ok(applied) => Ok(applied),
            // One bad row must not keep the others from being recorded: each
            // on its own, as SQLite's writer falls back to one savepoint each.
            Err(e) if done.len() > 1 => {
                tracing::warn!(error = %e, results = done.len(), "recording a batch of results failed; recording them one by one");
                let mut applied = 0;
                for c in &done {
                    match self.complete_batch(std::slice::from_ref(c), now).await {
                        Ok(k) => applied += k,
                        Err(e) => tracing::error!(error = %e, delivery = %c.id, "recording a result failed"),
                    }
                }
                Ok(applied)
            }
            Err(e) => Err(db_err(e)),
        }
    }

    async fn release(&self, held: Vec<(DeliveryId, LeaseToken)>, due_at: UnixMs) -> Result<()> {
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
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        // Given back for now (a shutdown): another process may take them at once.
        if due_at <= crate::domain::time::now_ms() {
            self.announce_work();
        }
        Ok(())
    }

    async fn prune(&self, before: UnixMs, now: UnixMs, batch: u32) -> Result<u64> {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(now - IDEMPOTENCY_WINDOW_MS)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        // Rotated-out secrets past their overlap sign nothing any more.
        sqlx::query("DELETE FROM signing_secrets WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
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
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(db_err)
    }

    async fn queue_stats(&self, now: UnixMs) -> Result<QueueStats> {
        let r = sqlx::query(
            // A claim pushes next_attempt_at to the lease's expiry, so a row
            // whose lease expired is due again, and a leased row is one whose
            // lease has not expired yet.
            "SELECT count(*), count(*) FILTER (WHERE next_attempt_at <= $1), \
             count(*) FILTER (WHERE lease_token IS NOT NULL AND next_attempt_at > $1), min(created_at) \
             FROM webhook_logs WHERE status = 'pending'",
        )
        .bind(now)
        .fetch_one(&self.pool)
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
}
