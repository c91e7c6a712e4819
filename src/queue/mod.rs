//! The queue: the path from an accepted event to a claimed delivery and back.
//!
//! The database is the queue (a transactional outbox, see [`crate::store`]);
//! this module owns every decision around it, so the API and the worker each
//! hold one [`Queue`] and know nothing of each other:
//!
//! - [`Queue::enqueue`] (the API): commits an event and its deliveries, then
//!   hands them to this process's worker in memory ([`handoff`]) when they
//!   could be leased to it, or wakes the workers to claim them.
//! - [`Queue::claim`] (the worker): leases due deliveries for one send each.
//! - [`Queue::complete`] and [`Queue::release`] (the worker): results back,
//!   each applied only under the lease it was sent under.
//! - [`Queue::retry_now`] (the API): a delivery due again at once.
//! - [`Queue::replay`] and [`Queue::send_test`] (the API): the webhook
//!   lifecycle's requeues and test deliveries ([`lifecycle`]).

pub mod breaker;
pub mod handoff;
pub mod lifecycle;
pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::time::now_ms;
use crate::domain::{DeliveryId, DisablePolicy, ProjectId, UnixMs, WebhookId};
use crate::store::{
    self, Backend as _, Claimed, Completion, DeliveryKind, Ingested, Lease, LeaseToken, NewEvent, Receipt, Retried,
    Store, Target,
};

pub use handoff::HandoffReceiver;

/// The queue's handle; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    store: Store,
    /// Hands new deliveries to this process's worker, when it runs one.
    handoff: Option<Arc<handoff::Handoff>>,
    /// Wakes this process's worker; also woken by work committed elsewhere.
    work_ready: Arc<Notify>,
    /// How long a claimed delivery stays reserved for its worker.
    lease: Duration,
    /// When recording results disables a webhook (`--disable-after`).
    disable: DisablePolicy,
}

impl Queue {
    /// A queue on `store`. With `handoff_limit`, the API and the worker run in
    /// this process: ingest leases new deliveries to the worker and passes
    /// them in memory, at most that many waiting; the receiver is the worker's end.
    pub fn new(
        store: Store,
        lease: Duration,
        disable: DisablePolicy,
        handoff_limit: Option<usize>,
    ) -> (Self, Option<HandoffReceiver>) {
        let (handoff, receiver) = match handoff_limit {
            Some(limit) => {
                let (h, rx) = handoff::Handoff::new(limit, lease);
                (Some(h), Some(rx))
            }
            None => (None, None),
        };
        (Self { store, handoff, work_ready: Arc::new(Notify::new()), lease, disable }, receiver)
    }

    /// Commits the event and its deliveries, then passes the deliveries to
    /// this process's worker: in memory when they could be leased to it (the
    /// handoff has room), else by waking it to claim them. Deliveries the
    /// worker can no longer take are given back at once, so the next worker
    /// need not wait for their lease.
    ///
    /// Runs in a task of its own: a client that hangs up after the commit
    /// must not cancel the handover of what was committed.
    pub async fn enqueue(&self, event: NewEvent) -> store::Result<Ingested> {
        let queue = self.clone();
        tokio::spawn(async move { queue.enqueue_here(event).await })
            .await
            .map_err(|source| store::StoreError::TaskFailed { task: "ingest", source })?
    }

    async fn enqueue_here(&self, mut event: NewEvent) -> store::Result<Ingested> {
        event.lease = self.handoff.as_ref().and_then(|h| h.lease(event.created_at));
        let ingested = self.store.ingest(event.clone()).await?;
        if let Ingested::Created { receipt, targets } = &ingested {
            match (&self.handoff, event.lease) {
                (Some(handoff), Some(lease)) if !targets.is_empty() => {
                    if let Err(back) = handoff.give(leased_at_ingest(&event, lease, receipt, targets)) {
                        let held = back.into_iter().map(|c| (c.id, c.lease)).collect();
                        if let Err(e) = self.store.release(held, now_ms()).await {
                            tracing::warn!(error = %e, "could not give back deliveries; their leases will expire");
                        }
                    }
                }
                _ if !targets.is_empty() => self.work_ready.notify_one(),
                _ => {}
            }
        }
        Ok(ingested)
    }

    /// Makes a delivery due now (manual redelivery) unless it is in flight or
    /// already due, and wakes the worker.
    pub async fn retry_now(&self, project: ProjectId, id: DeliveryId) -> store::Result<Retried> {
        let retried = self.store.retry_delivery(project, id, now_ms()).await?;
        if let Retried::Due(_) = retried {
            self.work_ready.notify_one();
        }
        Ok(retried)
    }

    /// Leases up to `limit` due deliveries to the caller, from `now` for the
    /// lease period, none of the webhooks in `skip`.
    pub async fn claim(&self, now: UnixMs, limit: u32, skip: Vec<WebhookId>) -> store::Result<Vec<Claimed>> {
        self.store.claim(now, now + self.lease.as_millis() as i64, limit, skip).await
    }

    /// Records results; each applies only under the lease it was sent under.
    /// A webhook that the results show dead is disabled in the same
    /// transaction (see [`lifecycle`]).
    pub async fn complete(&self, done: Vec<Completion>, now: UnixMs) -> store::Result<usize> {
        let completed = self.store.complete(done, now, self.disable).await?;
        self.disabled(&completed.disabled);
        Ok(completed.applied)
    }

    /// Gives deliveries back unattempted, due at `due_at`.
    pub async fn release(&self, held: Vec<(DeliveryId, LeaseToken)>, due_at: UnixMs) -> store::Result<()> {
        self.store.release(held, due_at).await
    }

    /// Reserves up to `count` request slots of a webhook limited to `rate`
    /// per second, shared with every other worker on the database: the times
    /// (unix µs) its next requests may go, `1/rate` s apart.
    pub async fn rate_slots(&self, webhook: WebhookId, rate: u32, count: u32, now: UnixMs) -> store::Result<Vec<i64>> {
        let interval_us = 1_000_000 / i64::from(rate.max(1));
        let first = self.store.take_rate_slots(webhook, now * 1000, count, interval_us).await?;
        Ok((0..i64::from(count)).map(|i| first + i * interval_us).collect())
    }

    /// Resolves when new work may be due (woken in this process, or by another one).
    pub async fn work_ready(&self) {
        self.work_ready.notified().await
    }

    /// Wakes the worker of this process, e.g. for a retry due before the next poll.
    pub fn wake(&self) {
        self.work_ready.notify_one();
    }

    /// Starts listening for work committed by other processes, until `stop`.
    /// Returns once listening, so a worker started afterwards misses nothing.
    pub async fn watch_for_work(&self, stop: CancellationToken) -> store::Result<()> {
        self.store.watch_for_work(self.work_ready.clone(), stop).await
    }
}

/// The deliveries of an event created leased to this process's worker, as
/// the worker gets them without a claim.
fn leased_at_ingest(e: &NewEvent, lease: Lease, receipt: &Receipt, targets: &[Target]) -> Vec<Claimed> {
    receipt
        .deliveries
        .iter()
        .zip(targets)
        .map(|(d, target)| Claimed {
            id: d.id.clone(),
            lease: lease.token,
            lease_until: lease.until,
            project_id: e.project_id.clone(),
            event_id: e.id.clone(),
            event_name: e.name.clone(),
            event_created_at: e.created_at,
            data: e.data.clone(),
            webhook_id: d.webhook_id.clone(),
            webhook: Some((target.url.clone(), true)),
            attempts: 0,
            rate_limit: target.rate_limit,
            attempt_base: 0,
            kind: DeliveryKind::Event,
        })
        .collect()
}
