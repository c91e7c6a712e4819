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

use tokio::sync::mpsc;

use crate::domain::UnixMs;
use crate::store::{Claimed, Lease};

/// Ingest's end of the in-memory path.
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
