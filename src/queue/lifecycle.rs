//! The queue's part of the webhook lifecycle (SPEC §9): what follows a
//! disabling, replays, and test deliveries.
//!
//! - **Disabling** is decided where results are recorded: [`Queue::complete`]
//!   hands `--disable-after` to the store, which judges each webhook with
//!   [`crate::domain::lifecycle`] in the transaction that records the
//!   attempts, and disables a dead one there, with its `webhook.disabled`
//!   event ([`crate::domain::operational`]). Here it is only logged, counted,
//!   and the worker woken for the event's deliveries.
//! - **Replay** ([`Queue::replay`]): the deliveries a filter matches are read
//!   in one snapshot; those not pending are requeued, due now, with a fresh
//!   attempt budget, [`REPLAY_BATCH`] per statement. The first batch is
//!   requeued before the answer, the rest by a background task, one batch at
//!   a time, so ingest keeps its turns at the database. Requeued deliveries
//!   go through the normal queue: claims, fairness, rate limits and open
//!   circuits apply to them as to any delivery.
//! - **Test deliveries** ([`Queue::send_test`]): a `webhook.test` event with
//!   one delivery to the webhook tested.
//!
//! # What `requeued` means
//!
//! The number of matching deliveries this replay makes pending again: the
//! first [`REPLAY_BATCH`] are requeued before the answer and counted exactly;
//! the rest are counted from the snapshot and requeued within moments after
//! it. A delivery is requeued only if it is unchanged since the snapshot, so
//! one that changed in between (another replay or a manual retry requeued it,
//! and it may have been sent since) is left alone rather than sent twice;
//! the `replay finished` log line gives the final count. Two identical
//! replays in a row thus send each delivery once: the second finds the
//! first's deliveries pending (or changed) and leaves them.
//!
//! A replay stopped by a shutdown before its last batch is not resumed;
//! running it again requeues what it had not reached (and, as a new replay,
//! what was already sent again since).

use crate::domain::time::now_ms;
use crate::domain::{ProjectId, WebhookId};
use crate::store::{self, Backend as _, DeliverySummary, DisabledWebhook, LogFilter, Requeue};

use super::Queue;

/// Deliveries requeued per statement: large enough that a replay of 100,000
/// takes a hundred statements, small enough that each holds the database
/// (SQLite's one writer) for milliseconds, not seconds.
pub const REPLAY_BATCH: usize = 1_000;

/// The answer to a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Deliveries the filter matched, pending ones included.
    pub matched: u64,
    /// See the module docs: exact for the first batch, counted from the
    /// snapshot for the rest; 0 for a dry run.
    pub requeued: u64,
}

impl Queue {
    /// Logs and counts webhooks that recording results disabled, and wakes
    /// the worker for their `webhook.disabled` deliveries.
    pub(super) fn disabled(&self, disabled: &[DisabledWebhook]) {
        for d in disabled {
            tracing::info!(
                project = %d.project_id,
                webhook = %d.webhook_id,
                reason = d.reason.kind(),
                failed_deliveries = d.failed_deliveries,
                notified = d.notified,
                "disabled a webhook"
            );
            ::metrics::counter!("hookline_webhooks_disabled_total", "reason" => d.reason.kind()).increment(1);
        }
        if disabled.iter().any(|d| d.notified > 0) {
            self.wake();
        }
    }

    /// Requeues what `filter` matches that is not pending (see the module
    /// docs), or only counts it when `dry_run`.
    ///
    /// Runs in a task of its own: a client that hangs up must not cancel a
    /// replay halfway through its first batch, nor before the rest is handed
    /// to the background.
    pub async fn replay(&self, project: ProjectId, filter: LogFilter, dry_run: bool) -> store::Result<Replayed> {
        let queue = self.clone();
        tokio::spawn(async move { queue.replay_here(project, filter, dry_run).await })
            .await
            .map_err(|source| store::StoreError::TaskFailed { task: "replay", source })?
    }

    async fn replay_here(&self, project: ProjectId, filter: LogFilter, dry_run: bool) -> store::Result<Replayed> {
        let snapshot = self.store.replay_snapshot(project.clone(), filter).await?;
        let matched = snapshot.matched;
        if dry_run {
            return Ok(Replayed { matched, requeued: 0 });
        }
        let mut first = snapshot.to_requeue;
        let rest = first.split_off(first.len().min(REPLAY_BATCH));
        let requeued = if first.is_empty() { 0 } else { self.store.requeue(project.clone(), first, now_ms()).await? };
        if requeued > 0 {
            self.wake();
        }
        let later = rest.len() as u64;
        if later > 0 {
            tokio::spawn(self.clone().requeue_in_background(project, rest, requeued));
        } else {
            tracing::info!(%project, matched, requeued, "replay finished");
        }
        Ok(Replayed { matched, requeued: requeued + later })
    }

    /// The batches of a replay after the first, one at a time.
    async fn requeue_in_background(self, project: ProjectId, rest: Vec<Requeue>, mut requeued: u64) {
        let total = rest.len();
        for (i, batch) in rest.chunks(REPLAY_BATCH).enumerate() {
            let mut tries = 0;
            let n = loop {
                match self.store.requeue(project.clone(), batch.to_vec(), now_ms()).await {
                    Ok(n) => break n,
                    Err(e) if tries < 3 => {
                        tries += 1;
                        tracing::warn!(%project, error = %e, "a replay batch failed; trying it again");
                        tokio::time::sleep(std::time::Duration::from_millis(200 << tries)).await;
                    }
                    Err(e) => {
                        let left = total - i * REPLAY_BATCH;
                        tracing::error!(
                            %project,
                            error = %e,
                            requeued,
                            left,
                            "a replay stopped; replay again to requeue the rest"
                        );
                        return;
                    }
                }
            };
            requeued += n;
            if n > 0 {
                self.wake();
            }
            // Between batches, whatever waits for the database goes first.
            tokio::task::yield_now().await;
        }
        tracing::info!(%project, requeued, "replay finished");
    }

    /// Commits a `webhook.test` event and its one delivery to `webhook`, due
    /// now, and wakes the worker. `None` when the project has no such webhook.
    pub async fn send_test(&self, project: ProjectId, webhook: WebhookId) -> store::Result<Option<DeliverySummary>> {
        let delivery = self.store.create_test_delivery(project, webhook, now_ms()).await?;
        if delivery.is_some() {
            self.wake();
        }
        Ok(delivery)
    }
}
