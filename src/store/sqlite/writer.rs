//! The writer thread and the checkpoint thread: the concurrency of the SQLite
//! backend, apart from the SQL it runs.
//!
//! SQLite allows one writer at a time, so one dedicated thread owns the only
//! write connection and commits in groups: it takes every write request
//! waiting in its queue, runs them in one transaction (see [`run_group`] for
//! how one failing write is kept from failing the others), and commits them
//! all with a single fsync (`synchronous=FULL` in WAL mode, so a commit is on
//! disk before anyone is answered). Under load, hundreds of ingests share one
//! fsync; alone, a request waits for nobody.
//!
//! A second thread copies committed WAL frames into the database file, so the
//! WAL stays small without the writer ever waiting for a checkpoint.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::store::{Result, StoreError};

/// Largest group of writes in one transaction; bounds the latency of a group.
const MAX_GROUP: usize = 1024;
/// Write requests waiting beyond this make callers wait (backpressure).
const QUEUE_DEPTH: usize = 16 * 1024;
/// How often committed WAL frames are copied into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The way to the writer thread; the thread ends when every handle is gone.
pub(super) struct Writer {
    /// Write requests for the writer thread.
    queue: mpsc::Sender<Box<dyn WriteJob>>,
}

impl Writer {
    /// Starts the writer thread on `conn`, the only write connection.
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new().name("sqlite-writer".into()).spawn(move || writer_loop(conn, rx))?;
        Ok(Self { queue: tx })
    }

    /// Runs `work` in the next group commit and answers once it is durable.
    /// `work` may run twice (see [`run_group`]): it must not depend on side
    /// effects outside the transaction.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T>
    where
        F: Fn(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job { work, result: None, reply });
        self.queue.send(job).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

/// The checkpoint thread; dropping this ends it.
pub(super) struct Checkpoints {
    /// Dropped with the store, which ends the checkpoint thread.
    _stop: Mutex<std::sync::mpsc::Sender<()>>,
}

impl Checkpoints {
    /// Starts the checkpoint thread on a connection of its own to `path`.
    pub(super) fn start(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let (stop_checkpoints, stop) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || checkpoint_loop(conn, stop))?;
        Ok(Self { _stop: Mutex::new(stop_checkpoints) })
    }
}

/// A write request: runs inside the group's transaction, then learns whether
/// the group committed.
trait WriteJob: Send {
    /// Runs the work; `false` means it failed. A job may run more than once
    /// (see [`run_group`]); only its last result counts.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Delivers the result once the group's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), Arc<rusqlite::Error>>);
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

    fn finish(self: Box<Self>, committed: Result<(), Arc<rusqlite::Error>>) {
        let outcome = match (committed, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::WriteNotRun),
            (Err(e), _) => Err(StoreError::GroupCommit(e)),
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
        // One error for the whole group, shared by every write in it.
        let committed = run_group(&conn, &mut group).map_err(Arc::new);
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
fn run_group(conn: &Connection, group: &mut [Box<dyn WriteJob>]) -> rusqlite::Result<()> {
    let exec = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(drop);
    exec("BEGIN IMMEDIATE")?;
    if group.iter_mut().all(|job| job.run(conn)) {
        return exec("COMMIT").inspect_err(|_| {
            let _ = exec("ROLLBACK");
        });
    }
    exec("ROLLBACK")?;
    exec("BEGIN IMMEDIATE")?;
    let mut failed = None;
    for job in group.iter_mut() {
        let step = exec("SAVEPOINT job").and_then(|()| {
            if job.run(conn) { exec("RELEASE job") } else { exec("ROLLBACK TO job").and_then(|()| exec("RELEASE job")) }
        });
        if let Err(e) = step {
            failed = Some(e);
            break;
        }
    }
    if let Some(e) = failed {
        let _ = exec("ROLLBACK");
        return Err(e);
    }
    exec("COMMIT").inspect_err(|_| {
        let _ = exec("ROLLBACK");
    })
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use crate::domain::{ApiKey, ApiKeyId, EventName, ProjectId, TargetUrl, WebhookId};
    use crate::store::{Backend as _, ConstraintKind, NewApiKey, Page, Project, StoreError, Webhook};

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
            disabled: None,
            created_at: 1,
            updated_at: 1,
            rate_limit: None,
        };
        let taken = WebhookId::generate();
        store.create_webhook(webhook(taken.clone()), u32::MAX).await.unwrap();

        // Sent together, these share group commits; one of them breaks the primary key.
        let writes = (0..64).map(|i| {
            let store = store.clone();
            let id = if i == 32 { taken.clone() } else { WebhookId::generate() };
            let hook = webhook(id);
            tokio::spawn(async move { store.create_webhook(hook, u32::MAX).await })
        });
        let results: Vec<_> = futures_util::future::join_all(writes).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        assert!(
            matches!(results[32], Err(StoreError::Constraint { kind: ConstraintKind::Unique, .. })),
            "the failing write gets its own error, named: {:?}",
            results[32]
        );
        let listed = store.list_webhooks(project.id.clone(), Page { limit: 200, after: None }).await.unwrap();
        assert_eq!(listed.items.len(), 64, "the 63 good writes and the first one were kept");
    }
}
