//! The SQLite backend: the embedded, zero-setup default.
//!
//! Writes go to one dedicated writer thread that owns the only write
//! connection and commits in groups: it takes every write request waiting in
//! its queue, runs them in one transaction (see `run_group` for how one failing
//! write is kept from failing the others), and commits them all with a
//! single fsync (`synchronous=FULL` in WAL mode, so a commit is on disk before
//! anyone is answered). Under load, hundreds of ingests share one fsync; alone,
//! a request waits for nobody. Reads use a small pool of read-only connections,
//! which WAL lets run beside the writer.
//!
//! This backend uses rusqlite rather than sqlx: group commit needs many short
//! statements on one connection, and rusqlite runs them synchronously with
//! cached prepared statements on the writer thread, where sqlx's SQLite driver
//! pays a cross-thread hop per statement.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, Row, params};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::*;
use crate::domain::{EventData, EventName, TargetUrl, UnixMs};

/// Numbered migrations; `PRAGMA user_version` records the last applied.
const MIGRATIONS: &[&str] = &[include_str!("../../migrations/sqlite/0001_init.sql")];
/// Largest group of writes in one transaction; bounds the latency of a group.
const MAX_GROUP: usize = 1024;
/// Write requests waiting beyond this make callers wait (backpressure).
const QUEUE_DEPTH: usize = 16 * 1024;
/// Concurrent readers.
const READERS: usize = 4;
/// The WAL file is truncated back to this size after it restarts.
const WAL_SIZE_LIMIT: i64 = 64 << 20;
/// How often committed WAL frames are copied into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Dropped with the store, which ends the checkpoint thread.
    _stop_checkpoints: Mutex<std::sync::mpsc::Sender<()>>,
    /// Write requests for the writer thread.
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    /// One permit per read connection.
    read_permits: Semaphore,
    path: PathBuf,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
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
        // Most checkpoint work runs on its own thread (see `checkpoint_loop`);
        // the writer's own automatic checkpoint then only has the rest to copy,
        // and being the one writer, it is the one that can let the WAL restart.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A write request: runs inside the group's transaction, then learns whether
/// the group committed.
trait WriteJob: Send {
    /// Runs the work; `false` means it failed. A job may run more than once
    /// (see [`run_group`]); only its last result counts.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Delivers the result once the group's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

struct Job<F, T> {
    work: F,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<F, T> WriteJob for Job<F, T>
where
    F: Fn(&Connection) -> Result<T> + Send,
    T: Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.work)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let outcome = match (committed, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::Database("the write was not run".into())),
            (Err(e), _) => Err(StoreError::Database(e)),
        };
        let _ = self.reply.send(outcome);
    }
}

fn writer_loop(conn: Connection, mut queue: mpsc::Receiver<Box<dyn WriteJob>>) {
    let mut group: Vec<Box<dyn WriteJob>> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = queue.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let committed = run_group(&conn, &mut group);
        // How well group commit works: writes per commit, and what a commit costs.
        ::metrics::histogram!("hookline_sqlite_group_writes").record(group.len() as f64);
        ::metrics::histogram!("hookline_sqlite_group_seconds").record(started.elapsed().as_secs_f64());
        for job in group.drain(..) {
            job.finish(committed.clone());
        }
    }
}

/// Copies committed WAL frames into the database file in the background, so
/// the WAL stays small without the writer ever waiting for a checkpoint.
/// Stops when the store is dropped (the sender side of `stop` goes away).
fn checkpoint_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        // PASSIVE never blocks the writer or readers; what it cannot copy now
        // it copies next time.
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            Ok((busy, log, done)) => tracing::trace!(busy, log, done, "WAL checkpoint"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// Runs a group of writes in one transaction. Optimistically first, without
/// savepoints: a savepoint makes SQLite copy every page a job touches into a
/// statement journal, which cost about 5 % of the CPU of a busy server. If a
/// job fails, nothing of the group is kept and it runs again with a savepoint
/// per job, so one failing write cannot take the others down with it.
fn run_group(conn: &Connection, group: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(drop);
    exec("BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
    if group.iter_mut().all(|job| job.run(conn)) {
        return exec("COMMIT").map_err(|e| {
            let _ = exec("ROLLBACK");
            e.to_string()
        });
    }
    exec("ROLLBACK").map_err(|e| e.to_string())?;
    exec("BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
    let mut failed = None;
    for job in group.iter_mut() {
        let step = exec("SAVEPOINT job").and_then(|()| {
            if job.run(conn) { exec("RELEASE job") } else { exec("ROLLBACK TO job").and_then(|()| exec("RELEASE job")) }
        });
        if let Err(e) = step {
            failed = Some(e.to_string());
            break;
        }
    }
    if let Some(e) = failed {
        let _ = exec("ROLLBACK");
        return Err(e);
    }
    exec("COMMIT").map_err(|e| {
        let _ = exec("ROLLBACK");
        e.to_string()
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and starts its writer thread.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let writer_conn = open_connection(path, false)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || writer_loop(writer_conn, rx))?;
        let readers = (0..READERS).map(|_| open_connection(path, true)).collect::<rusqlite::Result<Vec<_>>>()?;
        let checkpoint_conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        checkpoint_conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let (stop_checkpoints, stop) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stop))?;
        Ok(Self {
            inner: Arc::new(Inner {
                _stop_checkpoints: Mutex::new(stop_checkpoints),
                writer: tx,
                readers: Mutex::new(readers),
                read_permits: Semaphore::new(READERS),
                path: path.to_owned(),
            }),
        })
    }

    /// Whether any signing secret is stored: then the key that sealed them
    /// must not be replaced by a fresh one.
    pub async fn holds_secrets(&self) -> Result<bool> {
        self.read(|conn| {
            conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM signing_secrets)")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(db_err)
        })
        .await
    }

    /// Where the database file is; the vault key file lives beside it.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` in the next group commit and answers once it is durable.
    /// `work` may run twice (see [`run_group`]): it must not depend on side
    /// effects outside the transaction.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: Fn(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job { work, result: None, reply });
        self.inner.writer.send(job).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
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
        .map_err(|e| StoreError::Database(format!("reader failed: {e}")))?;
        self.inner.readers.lock().expect("not poisoned").push(conn);
        result
    }
}

// Typed columns: a stored URL or event name comes back as the domain type it
// was saved from, and a row that no longer parses is an error, not a string.
impl rusqlite::types::FromSql for TargetUrl {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        TargetUrl::parse(value.as_str()?).map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

impl rusqlite::ToSql for TargetUrl {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for EventName {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Ok(EventName::from_trusted(value.as_str()?))
    }
}

impl rusqlite::ToSql for EventName {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

fn webhook_from_row(r: &Row<'_>) -> rusqlite::Result<Webhook> {
    Ok(Webhook {
        id: WebhookId::from_trusted(r.get(0)?),
        project_id: ProjectId::from_trusted(r.get(1)?),
        event: r.get(2)?,
        target_url: r.get(3)?,
        is_active: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}
const WEBHOOK_COLUMNS: &str = "id, project_id, event, target_url, is_active, created_at, updated_at";

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: EventId::from_trusted(r.get(0)?),
        project_id: ProjectId::from_trusted(r.get(1)?),
        event_name: r.get(2)?,
        data: EventData::from_trusted(r.get(3)?),
        created_at: r.get(4)?,
    })
}
const EVENT_COLUMNS: &str = "id, project_id, event_name, data, created_at";

fn status_from_sql(s: String) -> rusqlite::Result<DeliveryStatus> {
    DeliveryStatus::parse(&s).ok_or_else(|| rusqlite::Error::InvalidColumnType(0, s, rusqlite::types::Type::Text))
}

fn log_from_row(r: &Row<'_>) -> rusqlite::Result<DeliveryLog> {
    Ok(DeliveryLog {
        id: DeliveryId::from_trusted(r.get(0)?),
        project_id: ProjectId::from_trusted(r.get(1)?),
        event: r.get(2)?,
        event_id: EventId::from_trusted(r.get(3)?),
        webhook_id: WebhookId::from_trusted(r.get(4)?),
        target_url: r.get(5)?,
        status: status_from_sql(r.get(6)?)?,
        response_code: r.get(7)?,
        attempts: r.get(8)?,
        next_attempt_at: r.get(9)?,
        last_error: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}
const LOG_COLUMNS: &str = "id, project_id, event, event_id, webhook_id, target_url, status, response_code, \
                           attempts, next_attempt_at, last_error, created_at, updated_at";

fn attempt_from_row(r: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        number: r.get(0)?,
        started_at: r.get(1)?,
        duration_ms: r.get(2)?,
        response_code: r.get(3)?,
        error_class: r.get(4)?,
        error: r.get(5)?,
        response_body: r.get(6)?,
    })
}

fn insert_key(conn: &Connection, project: &ProjectId, key: &NewApiKey) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO api_keys (id, project_id, key_hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![key.id.as_str(), project.as_str(), &key.hash.0[..], key.prefix, key.created_at])
}

fn get_log_row(conn: &Connection, project: &ProjectId, id: &DeliveryId) -> rusqlite::Result<Option<DeliveryLog>> {
    conn.prepare_cached(&format!("SELECT {LOG_COLUMNS} FROM webhook_logs WHERE id = ?1 AND project_id = ?2"))?
        .query_row(params![id.as_str(), project.as_str()], log_from_row)
        .optional()
}

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

fn ingest_in_tx(conn: &Connection, e: &NewEvent) -> rusqlite::Result<Ingested> {
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
            "SELECT id, target_url FROM project_webhooks WHERE project_id = ?1 AND event = ?2 AND is_active = 1 ORDER BY id",
        )?
        .query_map(params![e.project_id.as_str(), e.name.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, TargetUrl>(1)?))
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
    for (webhook_id, target_url) in hooks {
        let id = DeliveryId::generate();
        insert.execute(params![
            id.as_str(),
            e.project_id.as_str(),
            e.name.as_str(),
            e.id.as_str(),
            webhook_id,
            &target_url,
            due_at,
            e.lease.map(|l| l.token),
            e.created_at
        ])?;
        let webhook_id = WebhookId::from_trusted(webhook_id);
        targets.push(target_url);
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

fn complete_one(conn: &Connection, c: &Completion, now: UnixMs) -> rusqlite::Result<bool> {
    let (status, next_attempt_at) = c.next.columns();
    let counted = i64::from(c.attempt.is_some());
    let code = c.attempt.as_ref().and_then(|a| a.response_code);
    let changed = conn
        .prepare_cached(
            "UPDATE webhook_logs SET status = ?1, next_attempt_at = ?2, response_code = COALESCE(?3, response_code), \
             attempts = attempts + ?4, last_error = ?5, lease_token = NULL, updated_at = ?6, \
             target_url = COALESCE(?9, target_url) WHERE id = ?7 AND lease_token = ?8",
        )?
        .execute(params![
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
        return Ok(false);
    }
    if let Some(a) = &c.attempt {
        conn.prepare_cached(
            "INSERT INTO delivery_attempts (delivery_id, number, started_at, duration_ms, response_code, error_class, \
             error, response_body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
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
    if c.deactivate_webhook {
        conn.prepare_cached(
            "UPDATE project_webhooks SET is_active = 0, updated_at = ?1 \
             WHERE id = (SELECT webhook_id FROM webhook_logs WHERE id = ?2)",
        )?
        .execute(params![now, c.id.as_str()])?;
    }
    Ok(true)
}

impl Backend for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        self.write(|conn| {
            let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db_err)?;
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
                conn.execute_batch(sql).map_err(db_err)?;
                conn.pragma_update(None, "user_version", i + 1).map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|conn| {
            let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db_err)?;
            if version == MIGRATIONS.len() {
                Ok(())
            } else {
                Err(StoreError::Database(format!("schema version {version}, expected {}", MIGRATIONS.len())))
            }
        })
        .await
    }

    async fn create_project(&self, project: Project, key: NewApiKey, sealed_secret: Vec<u8>) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached("INSERT INTO projects (id, name, created_at) VALUES (?1, ?2, ?3)")
                .and_then(|mut s| s.execute(params![project.id.as_str(), project.name, project.created_at]))
                .and_then(|_| insert_key(conn, &project.id, &key))
                .and_then(|_| {
                    conn.prepare_cached(
                        "INSERT INTO signing_secrets (project_id, sealed, created_at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![project.id.as_str(), sealed_secret, project.created_at])
                })
                .map(drop)
                .map_err(db_err)
        })
        .await
    }

    async fn project_by_key(&self, hash: ApiKeyHash) -> Result<Option<ProjectId>> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT project_id FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL")
                .and_then(|mut s| s.query_row([&hash.0[..]], |r| r.get::<_, String>(0)).optional())
                .map(|id| id.map(ProjectId::from_trusted))
                .map_err(db_err)
        })
        .await
    }

    async fn create_api_key(&self, project: ProjectId, key: NewApiKey) -> Result<bool> {
        self.write(move |conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM projects WHERE id = ?1")
                .and_then(|mut s| s.exists([project.as_str()]))
                .map_err(db_err)?;
            if exists {
                insert_key(conn, &project, &key).map_err(db_err)?;
            }
            Ok(exists)
        })
        .await
    }

    async fn revoke_api_key(&self, project: ProjectId, key: ApiKeyId, now: UnixMs) -> Result<bool> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND project_id = ?3 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![now, key.as_str(), project.as_str()]))
            .map(|n| n == 1)
            .map_err(db_err)
        })
        .await
    }

    async fn list_api_keys(&self, project: ProjectId) -> Result<Vec<ApiKeyRecord>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, prefix, created_at, revoked_at FROM api_keys WHERE project_id = ?1 ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([project.as_str()], |r| {
                    Ok(ApiKeyRecord {
                        id: ApiKeyId::from_trusted(r.get(0)?),
                        prefix: r.get(1)?,
                        created_at: r.get(2)?,
                        revoked_at: r.get(3)?,
                    })
                })?
                .collect()
            })
            .map_err(db_err)
        })
        .await
    }

    async fn signing_secrets(&self, projects: Vec<ProjectId>, now: UnixMs) -> Result<Vec<SealedSecret>> {
        self.read(move |conn| {
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
        })
        .await
    }

    async fn rotate_secret(
        &self,
        project: ProjectId,
        sealed: Vec<u8>,
        now: UnixMs,
        overlap_until: UnixMs,
    ) -> Result<()> {
        self.write(move |conn| {
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
        })
        .await
    }

    async fn create_webhook(&self, w: Webhook) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(&format!(
                "INSERT INTO project_webhooks ({WEBHOOK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    w.id.as_str(),
                    w.project_id.as_str(),
                    &w.event,
                    &w.target_url,
                    w.is_active,
                    w.created_at,
                    w.updated_at
                ])
            })
            .map(drop)
            .map_err(db_err)
        })
        .await
    }

    async fn list_webhooks(&self, project: ProjectId, page: Page) -> Result<Paged<Webhook>> {
        self.read(move |conn| {
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
        })
        .await
    }

    async fn get_webhook(&self, project: ProjectId, id: WebhookId) -> Result<Option<Webhook>> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {WEBHOOK_COLUMNS} FROM project_webhooks WHERE id = ?1 AND project_id = ?2"
            ))
            .and_then(|mut s| s.query_row(params![id.as_str(), project.as_str()], webhook_from_row).optional())
            .map_err(db_err)
        })
        .await
    }

    async fn update_webhook(
        &self,
        project: ProjectId,
        id: WebhookId,
        patch: WebhookPatch,
        now: UnixMs,
    ) -> Result<Option<Webhook>> {
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE project_webhooks SET event = COALESCE(?1, event), target_url = COALESCE(?2, target_url), \
                     is_active = COALESCE(?3, is_active), updated_at = ?4 WHERE id = ?5 AND project_id = ?6",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        patch.event.as_ref().map(|e| e.as_str()),
                        patch.target_url,
                        patch.is_active,
                        now,
                        id.as_str(),
                        project.as_str()
                    ])
                })
                .map_err(db_err)?;
            if changed == 0 {
                return Ok(None);
            }
            conn.prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM project_webhooks WHERE id = ?1"))
                .and_then(|mut s| s.query_row([id.as_str()], webhook_from_row).optional())
                .map_err(db_err)
        })
        .await
    }

    async fn delete_webhook(&self, project: ProjectId, id: WebhookId) -> Result<bool> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM project_webhooks WHERE id = ?1 AND project_id = ?2")
                .and_then(|mut s| s.execute(params![id.as_str(), project.as_str()]))
                .map(|n| n == 1)
                .map_err(db_err)
        })
        .await
    }

    async fn ingest(&self, event: NewEvent) -> Result<Ingested> {
        self.write(move |conn| ingest_in_tx(conn, &event).map_err(db_err)).await
    }

    async fn list_events(&self, project: ProjectId, page: Page) -> Result<Paged<Event>> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE project_id = ?1 AND (?2 IS NULL OR id < ?2) \
                     ORDER BY id DESC LIMIT ?3"
                ))
                .and_then(|mut s| {
                    s.query_map(params![project.as_str(), page.after, page.limit + 1], event_from_row)?.collect()
                })
                .map_err(db_err)?;
            Ok(Paged::from_rows(rows, page.limit, |e: &Event| e.id.as_str()))
        })
        .await
    }

    async fn get_event(&self, project: ProjectId, id: EventId) -> Result<Option<(Event, Vec<DeliverySummary>)>> {
        self.read(move |conn| {
            let event = conn
                .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = ?1 AND project_id = ?2"))
                .and_then(|mut s| s.query_row(params![id.as_str(), project.as_str()], event_from_row).optional())
                .map_err(db_err)?;
            let Some(event) = event else { return Ok(None) };
            let deliveries = conn
                .prepare_cached("SELECT id, webhook_id, status FROM webhook_logs WHERE event_id = ?1 ORDER BY id")
                .and_then(|mut s| {
                    s.query_map([id.as_str()], |r| {
                        Ok(DeliverySummary {
                            id: DeliveryId::from_trusted(r.get(0)?),
                            webhook_id: WebhookId::from_trusted(r.get(1)?),
                            status: status_from_sql(r.get(2)?)?,
                        })
                    })?
                    .collect()
                })
                .map_err(db_err)?;
            Ok(Some((event, deliveries)))
        })
        .await
    }

    async fn list_logs(&self, project: ProjectId, f: LogFilter, page: Page) -> Result<Paged<DeliveryLog>> {
        self.read(move |conn| {
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
        })
        .await
    }

    async fn get_log(&self, project: ProjectId, id: DeliveryId) -> Result<Option<(DeliveryLog, Vec<Attempt>)>> {
        self.read(move |conn| {
            let Some(log) = get_log_row(conn, &project, &id).map_err(db_err)? else { return Ok(None) };
            let attempts = conn
                .prepare_cached(
                    "SELECT number, started_at, duration_ms, response_code, error_class, error, response_body \
                     FROM delivery_attempts WHERE delivery_id = ?1 ORDER BY number",
                )
                .and_then(|mut s| s.query_map([id.as_str()], attempt_from_row)?.collect())
                .map_err(db_err)?;
            Ok(Some((log, attempts)))
        })
        .await
    }

    async fn retry_delivery(&self, project: ProjectId, id: DeliveryId, now: UnixMs) -> Result<Option<DeliveryLog>> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE webhook_logs SET status = 'pending', next_attempt_at = ?1, lease_token = NULL, updated_at = ?1 \
                 WHERE id = ?2 AND project_id = ?3",
            )
            .and_then(|mut s| s.execute(params![now, id.as_str(), project.as_str()]))
            .and_then(|_| get_log_row(conn, &project, &id))
            .map_err(db_err)
        })
        .await
    }

    async fn claim(&self, now: UnixMs, lease_until: UnixMs, limit: u32) -> Result<Vec<Claimed>> {
        let lease: LeaseToken = rand::random();
        self.write(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(
                    "UPDATE webhook_logs SET lease_token = ?1, next_attempt_at = ?2 WHERE id IN \
                     (SELECT id FROM webhook_logs WHERE status = 'pending' AND next_attempt_at <= ?3 \
                      ORDER BY next_attempt_at LIMIT ?4) RETURNING id",
                )
                .and_then(|mut s| s.query_map(params![lease, lease_until, now, limit], |r| r.get(0))?.collect())
                .map_err(db_err)?;
            let mut details = conn
                .prepare_cached(
                    "SELECT l.project_id, l.event_id, e.event_name, e.created_at, e.data, l.webhook_id, \
                     w.target_url, w.is_active, l.attempts FROM webhook_logs l JOIN events e ON e.id = l.event_id \
                     LEFT JOIN project_webhooks w ON w.id = l.webhook_id WHERE l.id = ?1",
                )
                .map_err(db_err)?;
            let mut claimed = Vec::with_capacity(ids.len());
            for id in ids {
                let c = details
                    .query_row([&id], |r| {
                        let url: Option<TargetUrl> = r.get(6)?;
                        let active: Option<bool> = r.get(7)?;
                        Ok(Claimed {
                            id: DeliveryId::from_trusted(id.clone()),
                            lease,
                            lease_until,
                            project_id: ProjectId::from_trusted(r.get(0)?),
                            event_id: EventId::from_trusted(r.get(1)?),
                            event_name: r.get(2)?,
                            event_created_at: r.get(3)?,
                            data: EventData::from_trusted(r.get(4)?),
                            webhook_id: WebhookId::from_trusted(r.get(5)?),
                            webhook: url.zip(active),
                            attempts: r.get(8)?,
                        })
                    })
                    .map_err(db_err)?;
                claimed.push(c);
            }
            Ok(claimed)
        })
        .await
    }

    async fn complete(&self, done: Vec<Completion>, now: UnixMs) -> Result<usize> {
        self.write(move |conn| {
            let mut applied = 0;
            for c in &done {
                applied += usize::from(complete_one(conn, c, now).map_err(db_err)?);
            }
            Ok(applied)
        })
        .await
    }

    async fn release(&self, held: Vec<(DeliveryId, LeaseToken)>, due_at: UnixMs) -> Result<()> {
        self.write(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE webhook_logs SET lease_token = NULL, next_attempt_at = ?1 WHERE id = ?2 AND lease_token = ?3",
                )
                .map_err(db_err)?;
            for (id, lease) in &held {
                stmt.execute(params![due_at, id.as_str(), lease]).map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn prune(&self, before: UnixMs, now: UnixMs, batch: u32) -> Result<u64> {
        self.write(move |conn| {
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
        })
        .await
    }

    async fn queue_stats(&self, now: UnixMs) -> Result<QueueStats> {
        self.read(move |conn| {
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
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ApiKey, ApiKeyId};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_does_not_take_the_rest_of_its_group_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("h.db")).unwrap();
        store.migrate().await.unwrap();
        let project = Project { id: ProjectId::generate(), name: "p".into(), created_at: 1 };
        let key = ApiKey::generate();
        let record =
            NewApiKey { id: ApiKeyId::generate(), hash: key.hash(), prefix: key.display_prefix(), created_at: 1 };
        store.create_project(project.clone(), record, vec![1]).await.unwrap();
        let webhook = |id: WebhookId| Webhook {
            id,
            project_id: project.id.clone(),
            event: EventName::from_trusted("order.paid"),
            target_url: TargetUrl::parse("https://example.com/").unwrap(),
            is_active: true,
            created_at: 1,
            updated_at: 1,
        };
        let taken = WebhookId::generate();
        store.create_webhook(webhook(taken.clone())).await.unwrap();

        // Sent together, these share group commits; one of them breaks the primary key.
        let writes = (0..64).map(|i| {
            let store = store.clone();
            let id = if i == 32 { taken.clone() } else { WebhookId::generate() };
            let hook = webhook(id);
            tokio::spawn(async move { store.create_webhook(hook).await })
        });
        let results: Vec<_> = futures_util::future::join_all(writes).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        assert!(results[32].is_err());
        let listed = store.list_webhooks(project.id.clone(), Page { limit: 200, after: None }).await.unwrap();
        assert_eq!(listed.items.len(), 64, "the 63 good writes and the first one were kept");
    }
}
