//! Group commit for PostgreSQL: concurrent ingests without an idempotency
//! key are written together, a batch per transaction, instead of one
//! transaction (two statements and a WAL flush) each. Under load this cuts
//! PostgreSQL's work per event several times; alone, a request waits for
//! nobody. A failed batch is written again event by event, so one bad event
//! fails only its own request.
//!
//! This file owns the gathering and the replies; the statement a batch runs
//! is `queue::ingest_batch`. Keyed ingests do not come here: their key
//! decides whether anything is created at all, one event at a time.

use std::sync::Arc;

use sqlx::postgres::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::notify::Announcer;
use super::{db_err, queue};
use crate::store::{Ingested, NewEvent, Result, StoreError};

/// The most events one batched ingest transaction carries.
const INGEST_BATCH: usize = 256;
/// Batched ingest transactions in flight at once; while they run, the next
/// requests gather into the next batch.
const INGEST_BATCHES_IN_FLIGHT: usize = 4;
/// Ingests waiting for a batch before callers wait to enqueue (backpressure).
const INGEST_QUEUE: usize = 4096;

/// An ingest waiting for its batch, and where its answer goes.
type Request = (NewEvent, oneshot::Sender<Result<Ingested>>);

/// The way to the batcher task; the task ends when every handle is gone.
#[derive(Clone)]
pub(super) struct Batcher {
    /// Ingests without an idempotency key, for the batcher task.
    ingests: mpsc::Sender<Request>,
}

impl Batcher {
    /// Starts the batcher task, which announces the work it commits.
    pub(super) fn start(pool: PgPool, announce: Announcer) -> Self {
        let (ingests, waiting) = mpsc::channel(INGEST_QUEUE);
        tokio::spawn(batch_ingests(pool, announce, waiting));
        Self { ingests }
    }

    /// Ingests one event (without an idempotency key) in the next batch.
    pub(super) async fn ingest(&self, e: NewEvent) -> Result<Ingested> {
        let (reply, answer) = oneshot::channel();
        self.ingests.send((e, reply)).await.map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

async fn batch_ingests(pool: PgPool, announce: Announcer, mut waiting: mpsc::Receiver<Request>) {
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
            let results = match queue::ingest_batch(&pool, &events).await {
                Ok(results) => results.into_iter().map(Ok).collect(),
                // One bad event must not fail the others: each on its own.
                Err(e) if events.len() > 1 => {
                    tracing::warn!(error = %e, events = events.len(), "a batched ingest failed; writing its events one by one");
                    let mut one_by_one = Vec::with_capacity(events.len());
                    for e in &events {
                        one_by_one
                            .push(queue::ingest_batch(&pool, std::slice::from_ref(e)).await.map(|mut r| r.remove(0)));
                    }
                    one_by_one
                }
                // A batch of one: the error is its event's own.
                Err(e) => vec![Err(e)],
            };
            // Deliveries not leased to this process's worker: tell every worker.
            let unleased = events.iter().zip(&results).any(|(e, r)| {
                e.lease.is_none() && matches!(r, Ok(Ingested::Created { targets, .. }) if !targets.is_empty())
            });
            if unleased {
                announce.announce();
            }
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result.map_err(db_err));
            }
            drop(permit);
        });
    }
}
