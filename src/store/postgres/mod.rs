//! The PostgreSQL backend: one database shared by any number of hookline
//! processes, which is then also their queue (no broker).
//!
//! This file connects the pool, starts the two tasks a store runs, and holds
//! the [`Backend`] impl, which hands each operation to the file that owns it:
//!
//! - `batcher.rs`: concurrent ingests without an idempotency key, written a
//!   batch per transaction (group commit for PostgreSQL).
//! - `notify.rs`: `LISTEN/NOTIFY`, so workers in other processes hear of new
//!   work; the `NOTIFY` is coalesced and sent after the commit.
//! - `queue.rs`: ingest, claim, complete, release, manual retry, queue
//!   counts, pruning.
//! - `crud.rs`: projects, keys, secrets, webhooks; reads of events and logs.
//! - `lifecycle.rs`: streaks of failures and disabling, operational events,
//!   test deliveries, replay.
//! - `rows.rs`: row mapping, written once, and the typed columns.
//! - `migrations.rs`: the schema's migrations, by sqlx's migrator.
//!
//! Statements are runtime queries (no sqlx macros), so building needs no
//! database.

mod batcher;
mod crud;
mod lifecycle;
mod migrations;
mod notify;
mod queue;
mod rows;

pub use notify::WORK_CHANNEL;

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::{DisablePolicy, UnixMs};

/// How long a query waits for a free pooled connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Where the listener and the migrator connect (connections of their
    /// own, outside the pool).
    options: Arc<PgConnectOptions>,
    /// Tells workers in other processes that work was committed.
    announce: notify::Announcer,
    /// Ingests without an idempotency key go through the batcher task.
    ingests: batcher::Batcher,
}

/// An sqlx error as a store error: a constraint violation is told by its
/// SQLSTATE and named by PostgreSQL; anything else is kept whole.
fn db_err(e: sqlx::Error) -> StoreError {
    use sqlx::error::ErrorKind;
    let violated = match &e {
        sqlx::Error::Database(db) => {
            let kind = match db.kind() {
                ErrorKind::UniqueViolation => Some(ConstraintKind::Unique),
                ErrorKind::ForeignKeyViolation => Some(ConstraintKind::ForeignKey),
                ErrorKind::CheckViolation => Some(ConstraintKind::Check),
                _ => None,
            };
            kind.map(|kind| (kind, db.constraint().map(str::to_owned)))
        }
        _ => None,
    };
    match violated {
        Some((kind, constraint)) => StoreError::Constraint { kind, constraint, source: Box::new(e) },
        None => StoreError::Postgres(e),
    }
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
        let announce = notify::Announcer::start(pool.clone());
        let ingests = batcher::Batcher::start(pool.clone(), announce.clone());
        Ok(Self { pool, options: Arc::new(options), announce, ingests })
    }

    /// Subscribes to [`WORK_CHANNEL`] and, until `stop`, wakes `work_ready` on
    /// every notification and after every reconnect. Returns once the
    /// subscription is active, so a worker started afterwards misses nothing.
    pub async fn watch_for_work(&self, work_ready: Arc<Notify>, stop: CancellationToken) -> Result<()> {
        notify::watch_for_work(&self.options, work_ready, stop).await
    }
}

impl Backend for PgStore {
    async fn migrate(&self) -> Result<()> {
        migrations::migrate(&self.options).await
    }

    async fn ping(&self) -> Result<()> {
        migrations::check_current(&self.pool).await
    }

    async fn create_project(&self, project: Project, key: NewApiKey, sealed_secret: Vec<u8>) -> Result<()> {
        crud::create_project(&self.pool, project, key, sealed_secret).await
    }

    async fn project_by_key(&self, hash: ApiKeyHash) -> Result<Option<ProjectId>> {
        crud::project_by_key(&self.pool, hash).await
    }

    async fn create_api_key(&self, project: ProjectId, key: NewApiKey) -> Result<bool> {
        crud::create_api_key(&self.pool, project, key).await
    }

    async fn revoke_api_key(&self, project: ProjectId, key: ApiKeyId, now: UnixMs) -> Result<bool> {
        crud::revoke_api_key(&self.pool, project, key, now).await
    }

    async fn list_api_keys(&self, project: ProjectId) -> Result<Vec<ApiKeyRecord>> {
        crud::list_api_keys(&self.pool, project).await
    }

    async fn signing_secrets(&self, projects: Vec<ProjectId>, now: UnixMs) -> Result<Vec<SealedSecret>> {
        crud::signing_secrets(&self.pool, projects, now).await
    }

    async fn rotate_secret(
        &self,
        project: ProjectId,
        sealed: Vec<u8>,
        now: UnixMs,
        overlap_until: UnixMs,
    ) -> Result<()> {
        crud::rotate_secret(&self.pool, project, sealed, now, overlap_until).await
    }

    async fn create_webhook(&self, w: Webhook, limit: u32) -> Result<WebhookCreation> {
        crud::create_webhook(&self.pool, w, limit).await
    }

    async fn list_webhooks(&self, project: ProjectId, page: Page) -> Result<Paged<Webhook>> {
        crud::list_webhooks(&self.pool, project, page).await
    }

    async fn get_webhook(&self, project: ProjectId, id: WebhookId) -> Result<Option<Webhook>> {
        crud::get_webhook(&self.pool, project, id).await
    }

    async fn update_webhook(
        &self,
        project: ProjectId,
        id: WebhookId,
        patch: WebhookPatch,
        now: UnixMs,
    ) -> Result<Option<Webhook>> {
        crud::update_webhook(&self.pool, project, id, patch, now).await
    }

    async fn delete_webhook(&self, project: ProjectId, id: WebhookId) -> Result<bool> {
        crud::delete_webhook(&self.pool, project, id).await
    }

    async fn ingest(&self, e: NewEvent) -> Result<Ingested> {
        if e.idempotency.is_some() {
            return queue::ingest_keyed(&self.pool, &self.announce, e).await;
        }
        self.ingests.ingest(e).await
    }

    async fn list_events(&self, project: ProjectId, page: Page) -> Result<Paged<Event>> {
        crud::list_events(&self.pool, project, page).await
    }

    async fn get_event(&self, project: ProjectId, id: EventId) -> Result<Option<(Event, Vec<DeliverySummary>)>> {
        crud::get_event(&self.pool, project, id).await
    }

    async fn list_logs(&self, project: ProjectId, f: LogFilter, page: Page) -> Result<Paged<DeliveryLog>> {
        crud::list_logs(&self.pool, project, f, page).await
    }

    async fn get_log(&self, project: ProjectId, id: DeliveryId) -> Result<Option<(DeliveryLog, Vec<Attempt>)>> {
        crud::get_log(&self.pool, project, id).await
    }

    async fn retry_delivery(&self, project: ProjectId, id: DeliveryId, now: UnixMs) -> Result<Retried> {
        queue::retry_delivery(&self.pool, &self.announce, project, id, now).await
    }

    async fn replay_snapshot(&self, project: ProjectId, f: LogFilter) -> Result<ReplaySnapshot> {
        lifecycle::replay_snapshot(&self.pool, project, f).await
    }

    async fn requeue(&self, project: ProjectId, batch: Vec<Requeue>, now: UnixMs) -> Result<u64> {
        lifecycle::requeue(&self.pool, &self.announce, project, batch, now).await
    }

    async fn create_test_delivery(
        &self,
        project: ProjectId,
        webhook: WebhookId,
        now: UnixMs,
    ) -> Result<Option<DeliverySummary>> {
        lifecycle::create_test_delivery(&self.pool, &self.announce, project, webhook, now).await
    }

    async fn claim(&self, now: UnixMs, lease_until: UnixMs, limit: u32, skip: Vec<WebhookId>) -> Result<Vec<Claimed>> {
        queue::claim(&self.pool, now, lease_until, limit, skip).await
    }

    async fn complete(&self, done: Vec<Completion>, now: UnixMs, policy: DisablePolicy) -> Result<Completed> {
        queue::complete(&self.pool, &self.announce, done, now, policy).await
    }

    async fn release(&self, held: Vec<(DeliveryId, LeaseToken)>, due_at: UnixMs) -> Result<()> {
        queue::release(&self.pool, &self.announce, held, due_at).await
    }

    async fn prune(&self, before: UnixMs, now: UnixMs, batch: u32) -> Result<u64> {
        queue::prune(&self.pool, before, now, batch).await
    }

    async fn queue_stats(&self, now: UnixMs) -> Result<QueueStats> {
        queue::queue_stats(&self.pool, now).await
    }
    async fn take_rate_slots(&self, webhook: WebhookId, now_us: i64, count: u32, interval_us: i64) -> Result<i64> {
        queue::take_rate_slots(&self.pool, &webhook, now_us, count, interval_us).await
    }
}
