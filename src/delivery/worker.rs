//! The delivery worker.
//!
//! One dispatcher task takes work from two sources: deliveries that ingest in
//! this process leased to it and handed over in memory ([`crate::queue::handoff`]),
//! and due deliveries it claims from the database in batches (as many as there
//! are free in-flight slots). It spawns one task per delivery, and goes back
//! to sleep when nothing is due. It wakes on an in-process signal when new work is
//! committed, on a timer for short retries, and on a poll as the backstop
//! (work from other processes, expired leases, retries scheduled before a
//! restart). No transaction is open while a request is in flight: the claim is
//! committed first, and the result is recorded afterwards by a recorder task
//! that writes completions in batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::client::{DeliveryClient, SendError, header};
use super::envelope;
use super::policy::{Decision, ErrorClass, Outcome, RetryPolicy, parse_retry_after};
use crate::domain::time::now_ms;
use crate::domain::{DeliveryId, ProjectId, SigningSecret, UnixMs};
use crate::projects;
use crate::queue::{HandoffReceiver, Queue};
use crate::signing;
use crate::store::{Attempt, Claimed, Completion, LeaseToken, NextState, Store};
use crate::vault::Vault;

/// Most deliveries claimed in one statement.
const CLAIM_BATCH: usize = 256;
/// Most results recorded in one write.
const RECORD_BATCH: usize = 512;
/// How long a delivery waits for a slot of its target before it is given back.
const TARGET_WAIT: Duration = Duration::from_millis(250);
/// When a delivery given back for a busy target is due again.
const TARGET_BACKOFF_MS: i64 = 1_000;
/// Per-target semaphores kept before idle ones are dropped.
const TARGETS_KEPT: usize = 4_096;

pub struct WorkerSettings {
    pub retry: RetryPolicy,
    /// The longest one send can take (connect plus request timeout): a
    /// handed-over delivery is started only with at least this much lease left.
    pub longest_send: Duration,
    pub poll_interval: Duration,
    pub max_in_flight: usize,
    pub max_per_target: usize,
    pub shutdown_grace: Duration,
}

/// What the per-delivery tasks share.
struct Shared {
    client: DeliveryClient,
    retry: RetryPolicy,
    max_per_target: usize,
    /// One semaphore per target host, so one slow receiver cannot hold every slot.
    targets: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Claimed and not yet finished, to give back on shutdown.
    in_flight: Mutex<HashMap<DeliveryId, LeaseToken>>,
    results: mpsc::UnboundedSender<TaskEnd>,
}

/// A finished delivery task's result for the recorder.
enum TaskEnd {
    Done(Completion),
    /// Not attempted; due again at the given time.
    GiveBack(DeliveryId, LeaseToken, UnixMs),
}

pub struct Worker {
    queue: Queue,
    /// Where the signing secrets are read from.
    store: Store,
    vault: Arc<Vault>,
    secrets: Arc<projects::SecretCache>,
    settings: WorkerSettings,
    /// Taken by `run` into the state its tasks share.
    client: Option<DeliveryClient>,
    /// Deliveries leased to this worker at ingest, when the API runs in this process.
    handoff: Option<HandoffReceiver>,
}

impl Worker {
    pub fn new(
        queue: Queue,
        handoff: Option<HandoffReceiver>,
        store: Store,
        vault: Arc<Vault>,
        secrets: Arc<projects::SecretCache>,
        client: DeliveryClient,
        settings: WorkerSettings,
    ) -> Self {
        Self { queue, store, vault, secrets, settings, client: Some(client), handoff }
    }

    /// Runs until `shutdown` is cancelled, then stops taking work, lets
    /// in-flight sends finish within the grace period, and gives back what is left.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client: self.client.take().expect("run once"),
            retry: self.settings.retry.clone(),
            max_per_target: self.settings.max_per_target,
            targets: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            results: results_tx,
        });
        let recorder = tokio::spawn(record(self.queue.clone(), results_rx, self.settings.poll_interval));
        let slots = Arc::new(Semaphore::new(self.settings.max_in_flight));
        let mut handoff = self.handoff.take();
        let mut tasks = JoinSet::new();
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether due work may be waiting in the database; true at start for
        // whatever a previous process left.
        let mut claim_wanted = true;

        loop {
            while let Some(joined) = tasks.try_join_next() {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "a delivery task failed");
                }
            }
            // Not biased: handed-over work must not starve claims of due retries.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = recv(&mut handoff) => match batch {
                    Some(batch) => {
                        if !self.start_handed_over(&shared, &mut tasks, &slots, batch, &shutdown).await {
                            break;
                        }
                    }
                    None => handoff = None,
                },
                permit = slots.clone().acquire_owned(), if claim_wanted => {
                    let permit = permit.expect("never closed");
                    match self.claim_and_start(&shared, &mut tasks, &slots, permit).await {
                        Ok(full) => claim_wanted = full,
                        Err(e) => {
                            tracing::error!(error = %e, "claiming deliveries failed");
                            claim_wanted = false;
                        }
                    }
                }
                _ = self.queue.work_ready() => claim_wanted = true,
                _ = poll.tick() => claim_wanted = true,
            }
        }

        // Shutdown: no new work. Let in-flight sends finish within the grace period.
        let drained =
            tokio::time::timeout(self.settings.shutdown_grace, async { while tasks.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(left = tasks.len(), "grace period over; giving back unfinished deliveries");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        let mut left: Vec<(DeliveryId, LeaseToken)> = shared.in_flight.lock().expect("not poisoned").drain().collect();
        if let Some(handoff) = handoff.as_mut() {
            left.extend(handoff.close().into_iter().map(|c| (c.id, c.lease)));
        }
        drop(shared);
        let _ = recorder.await;
        if !left.is_empty()
            && let Err(e) = self.queue.release(left, now_ms()).await
        {
            tracing::error!(error = %e, "giving back deliveries failed; their leases will expire");
        }
    }

    /// Claims up to a batch of due deliveries (one slot is already held) and
    /// starts them. Returns whether the batch was full, so more may be due.
    async fn claim_and_start(
        &self,
        shared: &Arc<Shared>,
        tasks: &mut JoinSet<()>,
        slots: &Arc<Semaphore>,
        first: OwnedSemaphorePermit,
    ) -> crate::store::Result<bool> {
        let mut permits = vec![first];
        while permits.len() < CLAIM_BATCH {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let asked = permits.len();
        let now = now_ms();
        let claimed = self.queue.claim(now, asked as u32).await?;
        let full = claimed.len() == asked;
        if !claimed.is_empty() {
            permits.truncate(claimed.len());
            self.start(shared, tasks, claimed, permits, now).await;
        }
        Ok(full)
    }

    /// Starts deliveries that ingest leased to this worker, each as a slot
    /// frees up. Returns `false` if shutdown came first (the rest are given
    /// back with the other unfinished work).
    async fn start_handed_over(
        &self,
        shared: &Arc<Shared>,
        tasks: &mut JoinSet<()>,
        slots: &Arc<Semaphore>,
        batch: Vec<Claimed>,
        shutdown: &CancellationToken,
    ) -> bool {
        // A send must end before its lease does, or another worker could take
        // the delivery over mid-send: one whose lease has less left than the
        // longest send is given back at once, for whichever worker claims it.
        let margin = self.settings.longest_send.as_millis() as i64;
        let mut fresh = Vec::with_capacity(batch.len());
        let mut permits = Vec::with_capacity(batch.len());
        let mut batch = batch.into_iter();
        while let Some(c) = batch.next() {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    // Start what is ready, then wait for a slot.
                    if !fresh.is_empty() {
                        let (ready, held) = (std::mem::take(&mut fresh), std::mem::take(&mut permits));
                        self.start(shared, tasks, ready, held, now_ms()).await;
                    }
                    tokio::select! {
                        p = slots.clone().acquire_owned() => p.expect("never closed"),
                        _ = shutdown.cancelled() => {
                            let mut in_flight = shared.in_flight.lock().expect("not poisoned");
                            for c in std::iter::once(c).chain(batch) {
                                in_flight.insert(c.id, c.lease);
                            }
                            return false;
                        }
                    }
                }
            };
            let now = now_ms();
            if c.lease_until - now < margin {
                let _ = shared.results.send(TaskEnd::GiveBack(c.id, c.lease, now));
                continue;
            }
            fresh.push(c);
            permits.push(permit);
        }
        if !fresh.is_empty() {
            self.start(shared, tasks, fresh, permits, now_ms()).await;
        }
        true
    }

    /// Starts one task per delivery, each holding one of `permits`.
    async fn start(
        &self,
        shared: &Arc<Shared>,
        tasks: &mut JoinSet<()>,
        claimed: Vec<Claimed>,
        mut permits: Vec<OwnedSemaphorePermit>,
        now: UnixMs,
    ) {
        let mut projects: Vec<&ProjectId> = claimed.iter().map(|c| &c.project_id).collect();
        projects.sort();
        projects.dedup();
        let secrets = match self.secrets.get(&self.store, &self.vault, &projects, now).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "loading signing secrets failed; giving deliveries back");
                for c in claimed {
                    let _ = shared.results.send(TaskEnd::GiveBack(c.id, c.lease, now + TARGET_BACKOFF_MS));
                }
                return;
            }
        };
        let mut in_flight = shared.in_flight.lock().expect("not poisoned");
        for c in claimed {
            let permit = permits.pop().expect("one permit per delivery");
            in_flight.insert(c.id.clone(), c.lease);
            let secrets = secrets.get(&c.project_id).cloned();
            let shared = shared.clone();
            // Ids only: never the payload, the URL's query or a secret. Debug
            // level: a span per delivery costs measurable CPU at full load,
            // and the few lines logged inside at info or above name their ids.
            let span = tracing::debug_span!(
                "delivery",
                delivery_id = %c.id,
                event_id = %c.event_id,
                webhook_id = %c.webhook_id,
                attempt = c.attempts + 1,
            );
            tasks.spawn(
                async move {
                    let id = c.id.clone();
                    let result = deliver(&shared, c, secrets).await;
                    // Record first, then forget: a shutdown in between cannot give back a finished delivery.
                    let _ = shared.results.send(result);
                    shared.in_flight.lock().expect("not poisoned").remove(&id);
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}

/// The next handed-over batch, or never when there is no handoff.
async fn recv(handoff: &mut Option<HandoffReceiver>) -> Option<Vec<Claimed>> {
    match handoff {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

impl Shared {
    fn target_slots(&self, authority: &str) -> Arc<Semaphore> {
        let mut targets = self.targets.lock().expect("not poisoned");
        if targets.len() >= TARGETS_KEPT {
            let max = self.max_per_target;
            targets.retain(|_, s| s.available_permits() < max);
        }
        targets.entry(authority.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.max_per_target))).clone()
    }
}

fn failed_without_attempt(c: &Claimed, reason: &str) -> TaskEnd {
    tracing::debug!(reason, "delivery failed without an attempt");
    ::metrics::counter!("hookline_deliveries_total", "outcome" => "failed").increment(1);
    TaskEnd::Done(Completion {
        id: c.id.clone(),
        lease: c.lease,
        next: NextState::Failed,
        attempt: None,
        target_url: None,
        last_error: Some(reason.to_owned()),
        deactivate_webhook: false,
    })
}

async fn deliver(shared: &Shared, c: Claimed, secrets: Option<Arc<Vec<SigningSecret>>>) -> TaskEnd {
    let Some((url, active)) = c.webhook.clone() else {
        return failed_without_attempt(&c, "the webhook was deleted");
    };
    if !active {
        return failed_without_attempt(&c, "the webhook is disabled");
    }
    let slots = shared.target_slots(url.pool_key());
    let _target_permit = match slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => match tokio::time::timeout(TARGET_WAIT, slots.acquire_owned()).await {
            Ok(p) => p.expect("never closed"),
            Err(_) => return TaskEnd::GiveBack(c.id, c.lease, now_ms() + TARGET_BACKOFF_MS),
        },
    };

    let number = c.attempts + 1;
    let started_at = now_ms();
    let clock = std::time::Instant::now();
    let result = match secrets.as_deref().filter(|s| !s.is_empty()) {
        None => Err(SendError {
            class: ErrorClass::Signing,
            message: "the project's signing secret could not be loaded".to_owned(),
        }),
        Some(secrets) => {
            let body = match envelope::body(&c.event_id, &c.event_name, c.event_created_at, &c.data) {
                Ok(body) => body,
                Err(e) => return failed_without_attempt(&c, &e.to_string()),
            };
            let headers = signed_headers(&c, secrets, &body, started_at / 1000);
            let result = shared.client.post(&url, headers, body).await.result;
            ::metrics::histogram!("hookline_delivery_attempt_duration_seconds").record(clock.elapsed().as_secs_f64());
            result
        }
    };
    if number > 1 {
        ::metrics::counter!("hookline_retries_total").increment(1);
    }
    let duration_ms = clock.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
    let mut attempt = Attempt {
        number,
        started_at,
        duration_ms,
        response_code: None,
        error_class: None,
        error: None,
        response_body: None,
    };
    let (outcome, last_error) = match result {
        Ok(answer) => {
            let code = answer.status;
            let retry_after = answer.retry_after.as_deref().and_then(|v| parse_retry_after(v, now_ms()));
            attempt.response_code = Some(code);
            attempt.response_body = Some(answer.body_prefix).filter(|b| !b.is_empty());
            let error = (!(200..300).contains(&code)).then(|| format!("the receiver answered HTTP {code}"));
            (Outcome::Status { code, retry_after }, error)
        }
        Err(e) => {
            attempt.error_class = Some(e.class.as_str().to_owned());
            attempt.error = Some(e.message.clone());
            (Outcome::Error(e.class), Some(e.message))
        }
    };
    let decision = shared.retry.decide(number, &outcome, now_ms(), &mut rand::rng());
    let (next, deactivate, outcome) = match decision {
        Decision::Sent => (NextState::Sent, false, "sent"),
        Decision::Failed { deactivate } => (NextState::Failed, deactivate, "failed"),
        Decision::RetryAt(at) => (NextState::RetryAt(at), false, "retry"),
    };
    ::metrics::counter!("hookline_deliveries_total", "outcome" => outcome).increment(1);
    tracing::debug!(
        outcome,
        response_code = attempt.response_code,
        error_class = attempt.error_class.as_deref(),
        duration_ms,
        "delivery attempt"
    );
    if deactivate {
        tracing::info!(delivery = %c.id, webhook = %c.webhook_id, "receiver answered 410 Gone; deactivating the webhook");
    }
    TaskEnd::Done(Completion {
        id: c.id,
        lease: c.lease,
        next,
        attempt: Some(attempt),
        target_url: Some(url),
        last_error,
        deactivate_webhook: deactivate,
    })
}

/// The headers of one attempt; the timestamp and signatures are fresh each time,
/// the `webhook-id` is the delivery's and never changes.
fn signed_headers(c: &Claimed, secrets: &[SigningSecret], body: &[u8], timestamp: i64) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(USER_AGENT, HeaderValue::from_static(super::USER_AGENT));
    h.insert("x-event-name", header(c.event_name.as_str()));
    h.insert("x-signature", header(&signing::x_signature(secrets[0].expose(), body)));
    h.insert("webhook-id", header(c.id.as_str()));
    h.insert("webhook-timestamp", header(&timestamp.to_string()));
    h.insert("webhook-signature", header(&signing::webhook_signature_header(secrets, c.id.as_str(), timestamp, body)));
    h
}

/// Writes results in batches, retrying a failed write a few times: a result
/// that cannot be written is not lost work, only a delivery that will be sent
/// again once its lease expires.
async fn record(queue: Queue, mut results: mpsc::UnboundedReceiver<TaskEnd>, poll_interval: Duration) {
    let mut done = Vec::with_capacity(RECORD_BATCH);
    let mut given_back: HashMap<UnixMs, Vec<(DeliveryId, LeaseToken)>> = HashMap::new();
    while let Some(first) = results.recv().await {
        let mut next = Some(first);
        while let Some(r) = next {
            match r {
                TaskEnd::Done(c) => done.push(c),
                TaskEnd::GiveBack(id, lease, at) => given_back.entry(at).or_default().push((id, lease)),
            }
            next = if done.len() < RECORD_BATCH { results.try_recv().ok() } else { None };
        }
        let now = now_ms();
        for c in &done {
            // Retries due sooner than the next poll get a timer of their own.
            if let NextState::RetryAt(at) = c.next
                && at - now < poll_interval.as_millis() as i64
            {
                let queue = queue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis((at - now_ms()).max(0) as u64)).await;
                    queue.wake();
                });
            }
        }
        if !done.is_empty() {
            let batch = std::mem::take(&mut done);
            with_retries("recording delivery results", || queue.complete(batch.clone(), now)).await;
        }
        for (at, held) in given_back.drain() {
            with_retries("giving deliveries back", || queue.release(held.clone(), at)).await;
        }
    }
}

async fn with_retries<T, F, Fut>(what: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::store::Result<T>>,
{
    for wait_ms in [50, 200, 1000, 0] {
        match op().await {
            Ok(_) => return,
            Err(e) if wait_ms == 0 => {
                tracing::error!(error = %e, "{what} failed; the leases will expire and the deliveries run again")
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
        }
    }
}
