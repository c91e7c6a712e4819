//! The store: the only place with SQL.
//!
//! [`Backend`] is the contract, with its model types and [`StoreError`] in
//! this file; [`Store`] dispatches to the configured backend without boxing.
//! One conformance suite (`tests/api/store.rs`) runs against both backends.
//!
//! The database is also the queue (a transactional outbox): [`Backend::ingest`]
//! commits the event and one pending delivery per active webhook in one
//! transaction, so a 202 is answered only for work that is already durable.
//! Workers [`Backend::claim`] due deliveries with a lease, commit, send without
//! any transaction open, and [`Backend::complete`] with a guarded update that
//! only applies while their lease is still the current one.
//!
//! Each backend is a folder, split by what each part owns; its `mod.rs` holds
//! the [`Backend`] impl, which hands every operation to one of the others:
//!
//! - [`sqlite`]: the embedded default, on rusqlite.
//!   - `writer.rs`: the one writer thread and its group commit; the checkpoint thread.
//!   - `queue.rs`: ingest, claim, complete, release, manual retry, queue counts, pruning.
//!   - `crud.rs`: projects, keys, secrets, webhooks; reads of events and logs.
//!   - `lifecycle.rs`: the webhook lifecycle (SPEC §9): streaks of failures
//!     and disabling, in the transaction that records attempts; operational
//!     events; test deliveries; replay.
//!   - `rows.rs`: row mapping, written once, and the typed columns.
//!   - `migrations.rs`: its own small runner over `PRAGMA user_version`.
//! - [`postgres`]: one database shared by many processes, on sqlx.
//!   - `batcher.rs`: concurrent ingests written a batch per transaction.
//!   - `notify.rs`: `LISTEN/NOTIFY`, to wake workers in other processes.
//!   - `queue.rs`, `crud.rs`, `lifecycle.rs`, `rows.rs`: as for SQLite.
//!   - `migrations.rs`: sqlx's migrator, with the SQL files embedded.
//!
//! Errors keep their cause. A write that breaks a constraint of the schema
//! comes back as [`StoreError::Constraint`], naming the constraint, which the
//! API answers with 409 or 422 (`api/error.rs`); anything else is a 500.

pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{
    ApiKeyHash, ApiKeyId, DeliveryId, DisablePolicy, DisableReason, EventData, EventId, EventName, ProjectId,
    TargetUrl, UnixMs, Verdict, WebhookId,
};

/// Errors of the storage layer. A constraint violation says which rule of the
/// schema a write broke, so the API can answer it (409 or 422); every other
/// error is an internal one and keeps its cause, for the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The schema refused a write: a duplicate key, a reference to a row that
    /// does not exist, or a failed CHECK.
    #[error("{kind} constraint {} violated", .constraint.as_deref().unwrap_or("(unnamed)"))]
    Constraint {
        kind: ConstraintKind,
        /// The name the database gives: PostgreSQL's constraint name (e.g.
        /// `project_webhooks_pkey`), SQLite's `table.column` list or CHECK
        /// name. `None` where the database names none (SQLite's foreign keys).
        constraint: Option<String>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("SQLite failed")]
    Sqlite(#[source] rusqlite::Error),
    /// The transaction of a group commit failed (to begin, or to commit):
    /// every write of the group gets this one error.
    #[error("the SQLite transaction of this write's group failed")]
    GroupCommit(#[source] Arc<rusqlite::Error>),
    #[error("PostgreSQL failed")]
    Postgres(#[source] sqlx::Error),
    #[error("migrating the PostgreSQL schema failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A PostgreSQL database migrated by a pre-release hookline, whose
    /// migration runner is gone (see `postgres/migrations.rs`).
    #[error(
        "this database was set up by a pre-release hookline (it has a hookline_migrations table); \
         create a new database and point hookline at it"
    )]
    PreReleaseSchema,
    /// Readiness: the schema is not the one this build expects.
    #[error("the schema is at version {found}, this hookline expects {expected}; run `hookline migrate`")]
    SchemaNotCurrent { found: i64, expected: i64 },
    /// A task doing store work ended without an answer (it panicked or was cancelled).
    #[error("the {task} task failed")]
    TaskFailed {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// An idempotency key that kept changing hands while a keyed ingest
    /// looked at it; the client may retry.
    #[error("the idempotency key changed under three attempts in a row")]
    IdempotencyKeyContended,
    /// The writer answered a write it had not run. Never expected: every
    /// write of a group that committed has run.
    #[error("the database writer answered a write it had not run")]
    WriteNotRun,
    #[error("the database writer has stopped")]
    WriterGone,
}

/// Which kind of constraint a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    /// A primary key or UNIQUE: the row exists already.
    Unique,
    /// A reference to a row that does not exist.
    ForeignKey,
    /// A CHECK of the schema.
    Check,
}

impl std::fmt::Display for ConstraintKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unique => "unique",
            Self::ForeignKey => "foreign key",
            Self::Check => "check",
        })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Identifies one claim; completion applies only while it is still current.
pub type LeaseToken = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub created_at: UnixMs,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub hash: ApiKeyHash,
    /// The first characters of the key, to tell keys apart in listings.
    pub prefix: String,
    pub created_at: UnixMs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub prefix: String,
    pub created_at: UnixMs,
    pub revoked_at: Option<UnixMs>,
}

/// A signing secret as stored: sealed by the vault.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub project_id: ProjectId,
    pub sealed: Vec<u8>,
    pub created_at: UnixMs,
    /// `None` for the current secret; the end of the overlap for an old one.
    pub expires_at: Option<UnixMs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: WebhookId,
    pub project_id: ProjectId,
    pub event: EventName,
    pub target_url: TargetUrl,
    pub is_active: bool,
    /// Set when hookline disabled it (then `is_active` is false); cleared
    /// when it is made active again.
    pub disabled: Option<Disabled>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
    /// Most requests per second to it, across all workers; `None` for no limit.
    pub rate_limit: Option<u32>,
}

/// Why and when hookline disabled a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// A sentence ([`DisableReason::sentence`]).
    pub reason: String,
    pub at: UnixMs,
}

/// Fields of a webhook to change; `None` leaves a field as it is. Making a
/// webhook active clears what hookline recorded when it disabled it, and its
/// streak of failures.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub event: Option<EventName>,
    pub target_url: Option<TargetUrl>,
    pub is_active: Option<bool>,
    /// `Some(None)` removes the limit.
    pub rate_limit: Option<Option<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub project_id: ProjectId,
    pub event_name: EventName,
    pub data: EventData,
    pub created_at: UnixMs,
}

/// An `Idempotency-Key` and what the request asked, to tell a retry from a
/// reuse of the key for a different event.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub project_id: ProjectId,
    pub name: EventName,
    pub data: EventData,
    pub created_at: UnixMs,
    pub idempotency: Option<IdempotencyKey>,
    /// When set, the deliveries are created already leased to this process's
    /// worker, which gets them in memory instead of claiming them.
    pub lease: Option<Lease>,
}

/// A lease on deliveries: who holds them and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub token: LeaseToken,
    pub until: UnixMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Sent,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "sent" => Some(Self::Sent),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// What a delivery is for. Stored in `webhook_logs.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// An event going to a webhook subscribed to it.
    Event,
    /// A test delivery (`POST /v1/webhooks/{id}/test`): sent even when its
    /// webhook is disabled, as testing a disabled endpoint is how one learns
    /// whether to enable it again.
    Test,
}

impl DeliveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "event" => Some(Self::Event),
            "test" => Some(Self::Test),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySummary {
    pub id: DeliveryId,
    pub webhook_id: WebhookId,
    pub status: DeliveryStatus,
}

/// What ingest answers: the event and the deliveries it created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub event_id: EventId,
    pub event_name: EventName,
    pub created_at: UnixMs,
    pub deliveries: Vec<DeliverySummary>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Created, with the target of each of `receipt.deliveries`, in order.
    Created { receipt: Receipt, targets: Vec<Target> },
    /// The key was seen within 24 h for the same request: the first answer.
    Replayed(Receipt),
    /// The key was seen within 24 h for a different request.
    KeyReused,
}

/// What [`Backend::create_webhook`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookCreation {
    Created,
    /// The project had as many webhooks as its limit: nothing was written.
    LimitReached,
}

/// One row of `webhook_logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryLog {
    pub id: DeliveryId,
    pub project_id: ProjectId,
    pub event: EventName,
    pub event_id: EventId,
    pub webhook_id: WebhookId,
    pub target_url: TargetUrl,
    pub status: DeliveryStatus,
    pub response_code: Option<u16>,
    pub attempts: u32,
    pub next_attempt_at: Option<UnixMs>,
    pub last_error: Option<String>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
}

/// Where a new delivery goes: its webhook's URL and rate limit when it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: TargetUrl,
    pub rate_limit: Option<u32>,
}

/// What a manual retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// Pending and due now.
    Due(DeliveryLog),
    /// In flight or already due: nothing changed.
    Busy,
    /// No such delivery in this project.
    NotFound,
}

/// One attempt of a delivery, as kept in `delivery_attempts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub number: u32,
    pub started_at: UnixMs,
    pub duration_ms: u32,
    pub response_code: Option<u16>,
    /// `timeout`, `connect`, `dns`, `tls`, `blocked`, `protocol`; `None` when the receiver answered.
    pub error_class: Option<String>,
    pub error: Option<String>,
    /// At most the first 1 KiB of the response body.
    pub response_body: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub status: Option<DeliveryStatus>,
    pub event: Option<String>,
    pub webhook_id: Option<WebhookId>,
    pub event_id: Option<EventId>,
    pub since: Option<UnixMs>,
    pub until: Option<UnixMs>,
}

/// Keyset pagination, newest first: `after` is the last id of the previous page.
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: u32,
    pub after: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub items: Vec<T>,
    /// The cursor of the next page, when there is one.
    pub next: Option<String>,
}

impl<T> Paged<T> {
    /// Builds a page from up to `limit + 1` rows: the extra row only says that
    /// more exist.
    fn from_rows(mut rows: Vec<T>, limit: u32, id: impl Fn(&T) -> &str) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = if more { rows.last().map(|r| id(r).to_owned()) } else { None };
        Self { items: rows, next }
    }
}

/// A delivery a worker holds: everything needed to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: DeliveryId,
    pub lease: LeaseToken,
    /// When the lease expires; past it, another worker may take the delivery.
    pub lease_until: UnixMs,
    pub project_id: ProjectId,
    pub event_id: EventId,
    pub event_name: EventName,
    pub event_created_at: UnixMs,
    pub data: EventData,
    pub webhook_id: WebhookId,
    /// The webhook's current URL and state; `None` when it was deleted.
    pub webhook: Option<(TargetUrl, bool)>,
    /// The webhook's current rate limit (requests per second).
    pub rate_limit: Option<u32>,
    /// Attempts already recorded; the next one is numbered `attempts + 1`.
    pub attempts: u32,
    /// Attempts made before the current budget began (a replay starts a
    /// fresh one): the retry policy counts `attempts - attempt_base`.
    pub attempt_base: u32,
    pub kind: DeliveryKind,
}

/// The state a delivery moves to after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextState {
    Sent,
    Failed,
    RetryAt(UnixMs),
}

impl NextState {
    /// The `status` and `next_attempt_at` columns it stands for.
    pub fn columns(&self) -> (&'static str, Option<UnixMs>) {
        match *self {
            NextState::Sent => ("sent", None),
            NextState::Failed => ("failed", None),
            NextState::RetryAt(at) => ("pending", Some(at)),
        }
    }
}

/// The result of working on a claimed delivery.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: DeliveryId,
    pub lease: LeaseToken,
    pub next: NextState,
    /// The attempts made, in order: usually one; two when a request written on
    /// a kept-alive connection got no answer and was sent again on a new one;
    /// none when no request was sent (the webhook was deleted or disabled).
    pub attempts: Vec<Attempt>,
    /// The URL the attempt went to (the webhook's current one), kept in the log.
    pub target_url: Option<TargetUrl>,
    pub last_error: Option<String>,
    /// The delivery's webhook, whose streak of failures the attempt extends or ends.
    pub webhook_id: WebhookId,
    /// What the attempt says about the webhook's endpoint; `None` when it
    /// says nothing (no request was made, or it could not be signed).
    pub verdict: Option<Verdict>,
}

/// What recording a batch of results did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completed {
    /// Results recorded (each only under its current lease).
    pub applied: usize,
    /// Webhooks disabled by these results, each with a `webhook.disabled`
    /// event committed with it.
    pub disabled: Vec<DisabledWebhook>,
}

/// A webhook that [`Backend::complete`] disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledWebhook {
    pub project_id: ProjectId,
    pub webhook_id: WebhookId,
    pub reason: DisableReason,
    /// Its pending deliveries, now failed.
    pub failed_deliveries: u64,
    /// Deliveries of its `webhook.disabled` event, to the project's other webhooks.
    pub notified: usize,
}

/// A delivery a replay is to requeue, as it was when the replay was asked
/// for: requeued only if it has not changed since, so a delivery that another
/// replay or a manual retry requeued (and maybe sent) meanwhile is not sent
/// again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeue {
    pub id: DeliveryId,
    pub updated_at: UnixMs,
    pub attempts: u32,
}

/// The deliveries a replay's filter matches, read in one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySnapshot {
    /// All of them, pending ones included.
    pub matched: u64,
    /// Those not pending, oldest first: the ones to requeue.
    pub to_requeue: Vec<Requeue>,
}

/// Counts for readiness and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Deliveries in state `pending`, leased or not.
    pub pending: u64,
    /// Pending deliveries a worker could claim now: due (`next_attempt_at <= now`)
    /// and not under an unexpired lease. A delivery whose lease expired is due.
    pub due: u64,
    /// Pending deliveries held by a worker under a lease that has not expired.
    pub leased: u64,
    /// When the oldest pending delivery was created.
    pub oldest_pending_created_at: Option<UnixMs>,
}

/// How long an `Idempotency-Key` is remembered.
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// What every storage backend provides. All methods that read or change a
/// project's objects take the project id and never cross projects.
pub trait Backend: Send + Sync {
    /// Brings the schema up to date; safe to run from several processes at once.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;
    /// Readiness: the database answers and the schema is current.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;

    fn create_project(
        &self,
        project: Project,
        key: NewApiKey,
        sealed_secret: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The project owning an unrevoked key with this hash.
    fn project_by_key(&self, hash: ApiKeyHash) -> impl Future<Output = Result<Option<ProjectId>>> + Send;
    /// Adds a key; `false` when the project does not exist.
    fn create_api_key(&self, project: ProjectId, key: NewApiKey) -> impl Future<Output = Result<bool>> + Send;
    /// Revokes a key; `false` when the project has no such unrevoked key.
    fn revoke_api_key(
        &self,
        project: ProjectId,
        key: ApiKeyId,
        now: UnixMs,
    ) -> impl Future<Output = Result<bool>> + Send;
    fn list_api_keys(&self, project: ProjectId) -> impl Future<Output = Result<Vec<ApiKeyRecord>>> + Send;

    /// The secrets that sign now for these projects, newest first per project.
    fn signing_secrets(
        &self,
        projects: Vec<ProjectId>,
        now: UnixMs,
    ) -> impl Future<Output = Result<Vec<SealedSecret>>> + Send;
    /// Makes `sealed` the current secret; the previous ones keep signing until `overlap_until`.
    fn rotate_secret(
        &self,
        project: ProjectId,
        sealed: Vec<u8>,
        now: UnixMs,
        overlap_until: UnixMs,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Adds a webhook only while its project has fewer than `limit`: the
    /// count and the insert are one step, so concurrent creations cannot
    /// pass the limit together.
    fn create_webhook(&self, webhook: Webhook, limit: u32) -> impl Future<Output = Result<WebhookCreation>> + Send;
    fn list_webhooks(&self, project: ProjectId, page: Page) -> impl Future<Output = Result<Paged<Webhook>>> + Send;
    fn get_webhook(&self, project: ProjectId, id: WebhookId) -> impl Future<Output = Result<Option<Webhook>>> + Send;
    fn update_webhook(
        &self,
        project: ProjectId,
        id: WebhookId,
        patch: WebhookPatch,
        now: UnixMs,
    ) -> impl Future<Output = Result<Option<Webhook>>> + Send;
    fn delete_webhook(&self, project: ProjectId, id: WebhookId) -> impl Future<Output = Result<bool>> + Send;

    /// Commits the event, its pending deliveries and the idempotency key in one transaction.
    fn ingest(&self, event: NewEvent) -> impl Future<Output = Result<Ingested>> + Send;
    fn list_events(&self, project: ProjectId, page: Page) -> impl Future<Output = Result<Paged<Event>>> + Send;
    fn get_event(
        &self,
        project: ProjectId,
        id: EventId,
    ) -> impl Future<Output = Result<Option<(Event, Vec<DeliverySummary>)>>> + Send;

    fn list_logs(
        &self,
        project: ProjectId,
        filter: LogFilter,
        page: Page,
    ) -> impl Future<Output = Result<Paged<DeliveryLog>>> + Send;
    fn get_log(
        &self,
        project: ProjectId,
        id: DeliveryId,
    ) -> impl Future<Output = Result<Option<(DeliveryLog, Vec<Attempt>)>>> + Send;
    /// Makes a delivery due now (SPEC §8): one that waits for a later attempt,
    /// `sent` or `failed`. One that is in flight (under an unexpired lease) or
    /// already due is left as it is: a retry never adds a request to those.
    fn retry_delivery(
        &self,
        project: ProjectId,
        id: DeliveryId,
        now: UnixMs,
    ) -> impl Future<Output = Result<Retried>> + Send;

    /// Reads, in one snapshot, how many deliveries `filter` matches, and
    /// those of them that are not pending. `filter.since` is required.
    fn replay_snapshot(
        &self,
        project: ProjectId,
        filter: LogFilter,
    ) -> impl Future<Output = Result<ReplaySnapshot>> + Send;
    /// Makes these deliveries pending and due at `now` with a fresh attempt
    /// budget (their history stays), each only if it is still not pending
    /// and unchanged since the snapshot. Returns how many were requeued.
    fn requeue(&self, project: ProjectId, batch: Vec<Requeue>, now: UnixMs)
    -> impl Future<Output = Result<u64>> + Send;
    /// Commits a `webhook.test` event and one test delivery of it to this
    /// webhook, due now; `None` when the project has no such webhook.
    fn create_test_delivery(
        &self,
        project: ProjectId,
        webhook: WebhookId,
        now: UnixMs,
    ) -> impl Future<Output = Result<Option<DeliverySummary>>> + Send;

    /// Leases up to `limit` due deliveries until `lease_until`, oldest due
    /// first, passing over those of the webhooks in `skip` (the caller holds
    /// enough of theirs already: another project's fresh work is found behind
    /// a backlog).
    fn claim(
        &self,
        now: UnixMs,
        lease_until: UnixMs,
        limit: u32,
        skip: Vec<WebhookId>,
    ) -> impl Future<Output = Result<Vec<Claimed>>> + Send;
    /// Records results; each applies only if its lease is still current.
    ///
    /// In the same transaction, each webhook's streak of failures is updated
    /// from the verdicts, and a webhook that `policy` judges dead (a 410, or
    /// failing for too long) is disabled: its pending deliveries fail, and a
    /// `webhook.disabled` event is committed with deliveries to the project's
    /// other webhooks subscribed to it.
    fn complete(
        &self,
        done: Vec<Completion>,
        now: UnixMs,
        policy: DisablePolicy,
    ) -> impl Future<Output = Result<Completed>> + Send;
    /// Gives deliveries back unattempted, due at `due_at`.
    fn release(&self, held: Vec<(DeliveryId, LeaseToken)>, due_at: UnixMs) -> impl Future<Output = Result<()>> + Send;

    /// Deletes up to `batch` finished events older than `before`, with their
    /// deliveries and attempts, expired idempotency keys, and signing secrets
    /// past their overlap. Returns the number of events deleted.
    fn prune(&self, before: UnixMs, now: UnixMs, batch: u32) -> impl Future<Output = Result<u64>> + Send;
    fn queue_stats(&self, now: UnixMs) -> impl Future<Output = Result<QueueStats>> + Send;
    /// Reserves `count` request slots of a rate-limited webhook, `interval_us`
    /// apart, none before `now_us` nor before the slots already handed out (to
    /// any process). Returns the first; the others follow at the interval.
    fn take_rate_slots(
        &self,
        webhook: WebhookId,
        now_us: i64,
        count: u32,
        interval_us: i64,
    ) -> impl Future<Output = Result<i64>> + Send;
}

/// The configured backend.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Sqlite($s) => $call,
            Store::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Opens the database named by `url` (without migrating). With
    /// PostgreSQL, `max_connections` bounds this process's connection pool.
    pub async fn open(url: &crate::config::DatabaseUrl, max_connections: u32) -> anyhow::Result<Self> {
        match url {
            crate::config::DatabaseUrl::Sqlite(path) => Ok(Self::Sqlite(sqlite::SqliteStore::open(path)?)),
            crate::config::DatabaseUrl::Postgres(url) => {
                Ok(Self::Postgres(postgres::PgStore::connect(url, max_connections).await?))
            }
        }
    }

    /// Wakes `work_ready` when another process commits work, until `stop`.
    /// Returns once it is listening, so a worker started afterwards misses
    /// nothing. PostgreSQL listens on a channel that ingest and manual retries
    /// notify; SQLite has no other process that ingests, so nothing to do.
    pub async fn watch_for_work(&self, work_ready: Arc<Notify>, stop: CancellationToken) -> Result<()> {
        match self {
            Self::Sqlite(_) => Ok(()),
            Self::Postgres(s) => s.watch_for_work(work_ready, stop).await,
        }
    }
}

impl Backend for Store {
    async fn migrate(&self) -> Result<()> {
        dispatch!(self, s => s.migrate().await)
    }
    async fn ping(&self) -> Result<()> {
        dispatch!(self, s => s.ping().await)
    }
    async fn create_project(&self, project: Project, key: NewApiKey, sealed_secret: Vec<u8>) -> Result<()> {
        dispatch!(self, s => s.create_project(project, key, sealed_secret).await)
    }
    async fn project_by_key(&self, hash: ApiKeyHash) -> Result<Option<ProjectId>> {
        dispatch!(self, s => s.project_by_key(hash).await)
    }
    async fn create_api_key(&self, project: ProjectId, key: NewApiKey) -> Result<bool> {
        dispatch!(self, s => s.create_api_key(project, key).await)
    }
    async fn revoke_api_key(&self, project: ProjectId, key: ApiKeyId, now: UnixMs) -> Result<bool> {
        dispatch!(self, s => s.revoke_api_key(project, key, now).await)
    }
    async fn list_api_keys(&self, project: ProjectId) -> Result<Vec<ApiKeyRecord>> {
        dispatch!(self, s => s.list_api_keys(project).await)
    }
    async fn signing_secrets(&self, projects: Vec<ProjectId>, now: UnixMs) -> Result<Vec<SealedSecret>> {
        dispatch!(self, s => s.signing_secrets(projects, now).await)
    }
    async fn rotate_secret(
        &self,
        project: ProjectId,
        sealed: Vec<u8>,
        now: UnixMs,
        overlap_until: UnixMs,
    ) -> Result<()> {
        dispatch!(self, s => s.rotate_secret(project, sealed, now, overlap_until).await)
    }
    async fn create_webhook(&self, webhook: Webhook, limit: u32) -> Result<WebhookCreation> {
        dispatch!(self, s => s.create_webhook(webhook, limit).await)
    }
    async fn list_webhooks(&self, project: ProjectId, page: Page) -> Result<Paged<Webhook>> {
        dispatch!(self, s => s.list_webhooks(project, page).await)
    }
    async fn get_webhook(&self, project: ProjectId, id: WebhookId) -> Result<Option<Webhook>> {
        dispatch!(self, s => s.get_webhook(project, id).await)
    }
    async fn update_webhook(
        &self,
        project: ProjectId,
        id: WebhookId,
        patch: WebhookPatch,
        now: UnixMs,
    ) -> Result<Option<Webhook>> {
        dispatch!(self, s => s.update_webhook(project, id, patch, now).await)
    }
    async fn delete_webhook(&self, project: ProjectId, id: WebhookId) -> Result<bool> {
        dispatch!(self, s => s.delete_webhook(project, id).await)
    }
    async fn ingest(&self, event: NewEvent) -> Result<Ingested> {
        dispatch!(self, s => s.ingest(event).await)
    }
    async fn list_events(&self, project: ProjectId, page: Page) -> Result<Paged<Event>> {
        dispatch!(self, s => s.list_events(project, page).await)
    }
    async fn get_event(&self, project: ProjectId, id: EventId) -> Result<Option<(Event, Vec<DeliverySummary>)>> {
        dispatch!(self, s => s.get_event(project, id).await)
    }
    async fn list_logs(&self, project: ProjectId, filter: LogFilter, page: Page) -> Result<Paged<DeliveryLog>> {
        dispatch!(self, s => s.list_logs(project, filter, page).await)
    }
    async fn get_log(&self, project: ProjectId, id: DeliveryId) -> Result<Option<(DeliveryLog, Vec<Attempt>)>> {
        dispatch!(self, s => s.get_log(project, id).await)
    }
    async fn retry_delivery(&self, project: ProjectId, id: DeliveryId, now: UnixMs) -> Result<Retried> {
        dispatch!(self, s => s.retry_delivery(project, id, now).await)
    }
    async fn replay_snapshot(&self, project: ProjectId, filter: LogFilter) -> Result<ReplaySnapshot> {
        dispatch!(self, s => s.replay_snapshot(project, filter).await)
    }
    async fn requeue(&self, project: ProjectId, batch: Vec<Requeue>, now: UnixMs) -> Result<u64> {
        dispatch!(self, s => s.requeue(project, batch, now).await)
    }
    async fn create_test_delivery(
        &self,
        project: ProjectId,
        webhook: WebhookId,
        now: UnixMs,
    ) -> Result<Option<DeliverySummary>> {
        dispatch!(self, s => s.create_test_delivery(project, webhook, now).await)
    }
    async fn claim(&self, now: UnixMs, lease_until: UnixMs, limit: u32, skip: Vec<WebhookId>) -> Result<Vec<Claimed>> {
        dispatch!(self, s => s.claim(now, lease_until, limit, skip).await)
    }
    async fn complete(&self, done: Vec<Completion>, now: UnixMs, policy: DisablePolicy) -> Result<Completed> {
        dispatch!(self, s => s.complete(done, now, policy).await)
    }
    async fn release(&self, held: Vec<(DeliveryId, LeaseToken)>, due_at: UnixMs) -> Result<()> {
        dispatch!(self, s => s.release(held, due_at).await)
    }
    async fn prune(&self, before: UnixMs, now: UnixMs, batch: u32) -> Result<u64> {
        dispatch!(self, s => s.prune(before, now, batch).await)
    }
    async fn take_rate_slots(&self, webhook: WebhookId, now_us: i64, count: u32, interval_us: i64) -> Result<i64> {
        dispatch!(self, s => s.take_rate_slots(webhook, now_us, count, interval_us).await)
    }
    async fn queue_stats(&self, now: UnixMs) -> Result<QueueStats> {
        dispatch!(self, s => s.queue_stats(now).await)
    }
}
