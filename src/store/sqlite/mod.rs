//! The SQLite backend: the embedded, zero-setup default.
//!
//! Writes go to one dedicated writer thread that owns the only write
//! connection and commits them in groups, one fsync per group (`writer.rs`).
//! Reads use a small pool of read-only connections, which WAL lets run beside
//! the writer. This file opens the database and holds the [`Backend`] impl,
//! which says for each operation which of the two it takes, and leaves the
//! SQL to the files below.
//!
//! - `writer.rs`: the writer thread with group commit, and the checkpoint thread.
//! - `queue.rs`: ingest, claim, complete, release, manual retry, queue counts, pruning.
//! - `crud.rs`: projects, keys, secrets, webhooks; reads of events and logs.
//! - `lifecycle.rs`: streaks of failures and disabling, operational events,
//!   test deliveries, replay.
//! - `rows.rs`: row mapping, written once, and the typed columns.
//! - `migrations.rs`: the schema's migrations and their runner.
//!
//! This backend uses rusqlite rather than sqlx: group commit needs many short
//! statements on one connection, and rusqlite runs them synchronously with
//! cached prepared statements on the writer thread, where sqlx's SQLite driver
//! pays a cross-thread hop per statement.

mod crud;
mod lifecycle;
mod migrations;
mod queue;
mod rows;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::*;
use crate::domain::{DisablePolicy, UnixMs};

/// Concurrent readers.
const READERS: usize = 4;
/// The WAL file is truncated back to this size after it restarts.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Ends the checkpoint thread when the store is dropped.
    _checkpoints: writer::Checkpoints,
    /// The writer thread, which runs every write.
    writer: writer::Writer,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    /// One permit per read connection.
    read_permits: Semaphore,
    path: PathBuf,
}

/// A rusqlite error as a store error: a constraint violation is told by its
/// extended code and named from SQLite's message; anything else is kept whole.
fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    let violated = match &e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            let kind = match failure.extended_code {
                ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE => Some(ConstraintKind::Unique),
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Some(ConstraintKind::ForeignKey),
                ffi::SQLITE_CONSTRAINT_CHECK => Some(ConstraintKind::Check),
                _ => None,
            };
            // "UNIQUE constraint failed: project_webhooks.id", "CHECK constraint
            // failed: <name or expression>"; a foreign key's names nothing.
            let name = message.as_deref().and_then(|m| m.split_once("constraint failed: ")).map(|(_, n)| n.to_owned());
            kind.map(|kind| (kind, name))
        }
        _ => None,
    };
    match violated {
        Some((kind, constraint)) => StoreError::Constraint { kind, constraint, source: Box::new(e) },
        None => StoreError::Sqlite(e),
    }
}

fn open_connection(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    if !read_only {
        // WAL lets readers run beside the writer; FULL makes every commit durable.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Each write job runs in a savepoint; keep its statement journal in
        // memory instead of a temp file created and deleted per commit.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Most checkpoint work runs on its own thread (see `writer.rs`);
        // the writer's own automatic checkpoint then only has the rest to copy,
        // and being the one writer, it is the one that can let the WAL restart.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates the database file, empty, readable and writable by its owner only
/// (0600), before SQLite would create it with the default mode (0644 under
/// the usual umask). SQLite gives the `-wal` and `-shm` files it creates
/// the database file's mode, so they follow. The umask is left alone: it is
/// the whole process's, and other threads create files too. A file that
/// exists keeps its mode, with a warning when others may read it.
fn create_owner_only(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            #[cfg(unix)]
            if let Ok(meta) = std::fs::metadata(path) {
                use std::os::unix::fs::PermissionsExt as _;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "the database file is readable by other users; restrict it (and its -wal and -shm files) with chmod 600"
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and starts its writer thread.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        create_owner_only(path)?;
        let writer = writer::Writer::start(open_connection(path, false)?)?;
        let readers = (0..READERS).map(|_| open_connection(path, true)).collect::<rusqlite::Result<Vec<_>>>()?;
        let checkpoints = writer::Checkpoints::start(path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                _checkpoints: checkpoints,
                writer,
                readers: Mutex::new(readers),
                read_permits: Semaphore::new(READERS),
                path: path.to_owned(),
            }),
        })
    }

    /// Whether any signing secret is stored: then the key that sealed them
    /// must not be replaced by a fresh one.
    pub async fn holds_secrets(&self) -> Result<bool> {
        self.read(crud::holds_secrets).await
    }

    /// Where the database file is; the vault key file lives beside it.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` in the writer's next group commit and answers once it is
    /// durable. `work` may run twice: it must not depend on side effects
    /// outside the transaction.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: Fn(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.inner.writer.write(work).await
    }

    /// Runs `work` on a read connection.
    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self.inner.read_permits.acquire().await.expect("never closed");
        let conn = self.inner.readers.lock().expect("not poisoned").pop();
        let conn = match conn {
            Some(c) => c,
            // A reader was lost to a panic: replace it.
            None => open_connection(&self.inner.path, true).map_err(db_err)?,
        };
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = work(&conn);
            (conn, result)
        })
        .await
        .map_err(|source| StoreError::TaskFailed { task: "SQLite reader", source })?;
        self.inner.readers.lock().expect("not poisoned").push(conn);
        result
    }
}

impl Backend for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        self.write(migrations::migrate).await
    }

    async fn ping(&self) -> Result<()> {
        self.read(migrations::check_current).await
    }

    async fn create_project(&self, project: Project, key: NewApiKey, sealed_secret: Vec<u8>) -> Result<()> {
        self.write(move |conn| crud::create_project(conn, &project, &key, &sealed_secret)).await
    }

    async fn project_by_key(&self, hash: ApiKeyHash) -> Result<Option<ProjectId>> {
        self.read(move |conn| crud::project_by_key(conn, &hash)).await
    }

    async fn create_api_key(&self, project: ProjectId, key: NewApiKey) -> Result<bool> {
        self.write(move |conn| crud::create_api_key(conn, &project, &key)).await
    }

    async fn revoke_api_key(&self, project: ProjectId, key: ApiKeyId, now: UnixMs) -> Result<bool> {
        self.write(move |conn| crud::revoke_api_key(conn, &project, &key, now)).await
    }

    async fn list_api_keys(&self, project: ProjectId) -> Result<Vec<ApiKeyRecord>> {
        self.read(move |conn| crud::list_api_keys(conn, &project)).await
    }

    async fn signing_secrets(&self, projects: Vec<ProjectId>, now: UnixMs) -> Result<Vec<SealedSecret>> {
        self.read(move |conn| crud::signing_secrets(conn, &projects, now)).await
    }

    async fn rotate_secret(
        &self,
        project: ProjectId,
        sealed: Vec<u8>,
        now: UnixMs,
        overlap_until: UnixMs,
    ) -> Result<()> {
        self.write(move |conn| crud::rotate_secret(conn, &project, &sealed, now, overlap_until)).await
    }

    async fn create_webhook(&self, w: Webhook, limit: u32) -> Result<WebhookCreation> {
        self.write(move |conn| crud::create_webhook(conn, &w, limit)).await
    }

    async fn list_webhooks(&self, project: ProjectId, page: Page) -> Result<Paged<Webhook>> {
        self.read(move |conn| crud::list_webhooks(conn, &project, &page)).await
    }

    async fn get_webhook(&self, project: ProjectId, id: WebhookId) -> Result<Option<Webhook>> {
        self.read(move |conn| crud::get_webhook(conn, &project, &id)).await
    }

    async fn update_webhook(
        &self,
        project: ProjectId,
        id: WebhookId,
        patch: WebhookPatch,
        now: UnixMs,
    ) -> Result<Option<Webhook>> {
        self.write(move |conn| crud::update_webhook(conn, &project, &id, &patch, now)).await
    }

    async fn delete_webhook(&self, project: ProjectId, id: WebhookId) -> Result<bool> {
        self.write(move |conn| crud::delete_webhook(conn, &project, &id)).await
    }

    async fn ingest(&self, event: NewEvent) -> Result<Ingested> {
        self.write(move |conn| queue::ingest(conn, &event)).await
    }

    async fn list_events(&self, project: ProjectId, page: Page) -> Result<Paged<Event>> {
        self.read(move |conn| crud::list_events(conn, &project, &page)).await
    }

    async fn get_event(&self, project: ProjectId, id: EventId) -> Result<Option<(Event, Vec<DeliverySummary>)>> {
        self.read(move |conn| crud::get_event(conn, &project, &id)).await
    }

    async fn list_logs(&self, project: ProjectId, f: LogFilter, page: Page) -> Result<Paged<DeliveryLog>> {
        self.read(move |conn| crud::list_logs(conn, &project, &f, &page)).await
    }

    async fn get_log(&self, project: ProjectId, id: DeliveryId) -> Result<Option<(DeliveryLog, Vec<Attempt>)>> {
        self.read(move |conn| crud::get_log(conn, &project, &id)).await
    }

    async fn retry_delivery(&self, project: ProjectId, id: DeliveryId, now: UnixMs) -> Result<Retried> {
        self.write(move |conn| queue::retry_delivery(conn, &project, &id, now)).await
    }

    async fn replay_snapshot(&self, project: ProjectId, f: LogFilter) -> Result<ReplaySnapshot> {
        self.read(move |conn| lifecycle::replay_snapshot(conn, &project, &f)).await
    }

    async fn requeue(&self, project: ProjectId, batch: Vec<Requeue>, now: UnixMs) -> Result<u64> {
        self.write(move |conn| lifecycle::requeue(conn, &project, &batch, now)).await
    }

    async fn create_test_delivery(
        &self,
        project: ProjectId,
        webhook: WebhookId,
        now: UnixMs,
    ) -> Result<Option<DeliverySummary>> {
        self.write(move |conn| lifecycle::create_test_delivery(conn, &project, &webhook, now)).await
    }

    async fn claim(&self, now: UnixMs, lease_until: UnixMs, limit: u32, skip: Vec<WebhookId>) -> Result<Vec<Claimed>> {
        // Drawn once, outside the write, which may run twice.
        let lease: LeaseToken = rand::random();
        // A JSON array: rusqlite binds no lists, and json_each reads one in the statement.
        let skip = serde_json::to_string(&skip.iter().map(WebhookId::as_str).collect::<Vec<_>>())
            .expect("a list of strings serializes");
        self.write(move |conn| queue::claim(conn, lease, now, lease_until, limit, &skip)).await
    }

    async fn complete(&self, done: Vec<Completion>, now: UnixMs, policy: DisablePolicy) -> Result<Completed> {
        self.write(move |conn| queue::complete(conn, &done, now, policy)).await
    }

    async fn release(&self, held: Vec<(DeliveryId, LeaseToken)>, due_at: UnixMs) -> Result<()> {
        self.write(move |conn| queue::release(conn, &held, due_at)).await
    }

    async fn prune(&self, before: UnixMs, now: UnixMs, batch: u32) -> Result<u64> {
        self.write(move |conn| queue::prune(conn, before, now, batch)).await
    }

    async fn queue_stats(&self, now: UnixMs) -> Result<QueueStats> {
        self.read(move |conn| queue::queue_stats(conn, now)).await
    }
    async fn take_rate_slots(&self, webhook: WebhookId, now_us: i64, count: u32, interval_us: i64) -> Result<i64> {
        self.write(move |conn| queue::take_rate_slots(conn, &webhook, now_us, count, interval_us)).await
    }
}
