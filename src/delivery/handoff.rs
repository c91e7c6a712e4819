//! The in-memory path from ingest to this process's worker.
//!
//! When the API and the worker run in one process, ingest creates the
//! deliveries already leased to that worker and hands them over in memory, so
//! the worker does not have to find them again with a claim query: one write
//! and one read less per delivery, and no wait for a wake-up. The database is
//! unchanged as the source of truth: a handed-over delivery is an ordinary
//! leased row, and if this process dies its lease expires and any worker
//! takes it over.
//!
//! The handoff is bounded: above [`Handoff::limit`] queued deliveries, ingest
//! stops leasing and leaves new deliveries to the claim path, so a slow worker
//! never sits on leases in memory until they expire.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::domain::UnixMs;
use crate::domain::time::now_ms;
use crate::store::{self, Backend as _, Claimed, Ingested, Lease, NewEvent, Store};

/// Stores an event and passes its new deliveries to this process's worker: in
/// memory when they could be leased to it (`handoff` has room), else by waking
/// it to claim them. Deliveries the worker can no longer take are given back
/// at once, so the next worker need not wait for their lease.
pub async fn ingest(
    store: Store,
    handoff: Option<Arc<Handoff>>,
    work_ready: Arc<Notify>,
    mut event: NewEvent,
) -> store::Result<Ingested> {
    event.lease = handoff.as_ref().and_then(|h| h.lease(event.created_at));
    let mut ingested = store.ingest(event).await?;
    if let Ingested::Created { receipt, leased } = &mut ingested {
        let leased = std::mem::take(leased);
        match handoff {
            Some(handoff) if !leased.is_empty() => {
                if let Err(back) = handoff.give(leased) {
                    let held = back.into_iter().map(|c| (c.id, c.lease)).collect();
                    if let Err(e) = store.release(held, now_ms()).await {
                        tracing::warn!(error = %e, "could not give back deliveries; their leases will expire");
                    }
                }
            }
            _ if !receipt.deliveries.is_empty() => work_ready.notify_one(),
            _ => {}
        }
    }
    Ok(ingested)
}

pub struct Handoff {
    tx: mpsc::UnboundedSender<Vec<Claimed>>,
    /// Deliveries handed over and not yet taken by the worker.
    queued: AtomicUsize,
    /// The most deliveries that may wait in memory.
    limit: usize,
    lease: Duration,
}

/// The worker's end.
pub struct HandoffReceiver {
    rx: mpsc::UnboundedReceiver<Vec<Claimed>>,
    handoff: Arc<Handoff>,
}

impl Handoff {
    pub fn new(limit: usize, lease: Duration) -> (Arc<Self>, HandoffReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handoff = Arc::new(Self { tx, queued: AtomicUsize::new(0), limit, lease });
        (handoff.clone(), HandoffReceiver { rx, handoff })
    }

    /// A lease for the deliveries of an event about to be stored, if the worker has room.
    pub fn lease(&self, now: UnixMs) -> Option<Lease> {
        (self.queued.load(Ordering::Relaxed) < self.limit && !self.tx.is_closed())
            .then(|| Lease { token: rand::random(), until: now + self.lease.as_millis() as i64 })
    }

    /// Gives leased deliveries to the worker; hands them back if it has stopped.
    pub fn give(&self, claimed: Vec<Claimed>) -> Result<(), Vec<Claimed>> {
        let n = claimed.len();
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.tx.send(claimed).map_err(|e| {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            e.0
        })
    }
}

impl HandoffReceiver {
    pub async fn recv(&mut self) -> Option<Vec<Claimed>> {
        let batch = self.rx.recv().await?;
        self.handoff.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        Some(batch)
    }

    /// Stops the handoff and returns what was still waiting.
    pub fn close(&mut self) -> Vec<Claimed> {
        self.rx.close();
        let mut left = Vec::new();
        while let Ok(batch) = self.rx.try_recv() {
            left.extend(batch);
        }
        left
    }
}
