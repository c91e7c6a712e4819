//! Wake-ups across processes: `LISTEN/NOTIFY` on [`WORK_CHANNEL`].
//!
//! Workers in other processes learn about new work through a notification.
//! The `NOTIFY` is sent right after the commit by a small task that
//! coalesces: PostgreSQL serializes the commits of all transactions that
//! notify (a lock on the whole cluster, held through the commit), so
//! notifying inside every ingest would serialize ingest. One `NOTIFY` covers
//! every commit that happened before it was sent; polling stays the backstop
//! for a lost one.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::db_err;
use crate::store::Result;

/// The channel new work is announced on.
pub const WORK_CHANNEL: &str = "hookline_work";
/// Pause before listening again after the listener failed.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// Asks the announcer task for a `NOTIFY`.
#[derive(Clone)]
pub(super) struct Announcer {
    /// A full channel means one `NOTIFY` is already pending, which covers
    /// this request too.
    requests: mpsc::Sender<()>,
}

impl Announcer {
    /// Starts the announcer task, which ends when every handle is gone.
    pub(super) fn start(pool: PgPool) -> Self {
        let (announce, requests) = mpsc::channel(1);
        tokio::spawn(announce_work(pool, requests));
        Self { requests: announce }
    }

    /// Tells workers in every process that work is due (after the commit).
    pub(super) fn announce(&self) {
        let _ = self.requests.try_send(());
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

/// Subscribes to [`WORK_CHANNEL`] and, until `stop`, wakes `work_ready` on
/// every notification and after every reconnect (notifications sent while
/// disconnected are lost). Returns once the subscription is active, so a
/// worker started afterwards misses nothing.
pub(super) async fn watch_for_work(
    options: &PgConnectOptions,
    work_ready: Arc<Notify>,
    stop: CancellationToken,
) -> Result<()> {
    // A pool of one connection of its own: a busy query pool never delays
    // the listener, and it is one connection per process beyond the pool.
    let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(options.clone());
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
