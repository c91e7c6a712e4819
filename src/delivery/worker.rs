//! The delivery worker.
//!
//! One dispatcher task takes work from two sources: deliveries that ingest in
//! this process leased to it and handed over in memory ([`crate::queue::handoff`]),
//! and due deliveries it claims from the database in batches. Both go into the
//! [`Scheduler`], which decides what starts next: fairly between projects and
//! webhooks, within each target's adaptive limit, its circuit breaker and its
//! webhook's rate limit (see [`crate::queue::schedule`]). The dispatcher spawns
//! one task per delivery it may start, and goes back to sleep when nothing may.
//! It wakes when a send ends, on an in-process signal when new work is
//! committed, on a timer for short retries and rate limits, and on a poll as
//! the backstop (work from other processes, expired leases, retries scheduled
//! before a restart). No transaction is open while a request is in flight: the
//! claim is committed first, and the result is recorded afterwards by a
//! recorder task that writes completions in batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::client::{DeliveryClient, SendError, header};
use super::envelope;
use super::policy::{Decision, ErrorClass, Outcome, RetryPolicy, parse_retry_after};
use crate::config::DeliverySettings;
use crate::domain::time::now_ms;
use crate::domain::{DeliveryId, ProjectId, SigningSecret, UnixMs, Verdict};
use crate::projects;
use crate::queue::breaker::Health;
use crate::queue::schedule::{Limits, Scheduler, Step, Ticket};
use crate::queue::{HandoffReceiver, Queue};
use crate::signing;
use crate::store::{Attempt, Claimed, Completion, DeliveryKind, LeaseToken, NextState, Store};
use crate::vault::Vault;

/// Most deliveries claimed in one statement.
const CLAIM_BATCH: usize = 256;
/// Most results recorded in one write.
const RECORD_BATCH: usize = 512;
/// How long a delivery may wait in the scheduler before it is given back, so
/// that leases are not held in memory while other workers could send.
const MAX_WAIT_MS: i64 = 5_000;
/// When a delivery given back after waiting, or for want of its secrets, is due again.
const GIVE_BACK_DELAY_MS: i64 = 1_000;

/// What the per-delivery tasks share.
struct Shared {
    client: DeliveryClient,
    retry: RetryPolicy,
    /// Claimed and not yet finished, to give back on shutdown.
    in_flight: Mutex<HashMap<DeliveryId, LeaseToken>>,
    results: mpsc::UnboundedSender<TaskEnd>,
    /// Tells the dispatcher that a send ended and how it went.
    ended: mpsc::UnboundedSender<Ended>,
}

/// A finished delivery task's result for the recorder.
enum TaskEnd {
    Done(Completion),
    /// Not attempted; due again at the given time.
    GiveBack(DeliveryId, LeaseToken, UnixMs),
}

/// The end of a send, for the scheduler.
struct Ended {
    ticket: Ticket,
    health: Health,
    took: Duration,
}

pub struct Worker {
    queue: Queue,
    /// Where the signing secrets are read from.
    store: Store,
    vault: Arc<Vault>,
    secrets: Arc<projects::SecretCache>,
    settings: DeliverySettings,
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
        settings: DeliverySettings,
    ) -> Self {
        Self { queue, store, vault, secrets, settings, client: Some(client), handoff }
    }

    /// Runs until `shutdown` is cancelled, then stops taking work, lets
    /// in-flight sends finish within the grace period, and gives back what is left.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client: self.client.take().expect("run once"),
            retry: RetryPolicy::from(&self.settings.retry),
            in_flight: Mutex::new(HashMap::new()),
            results: results_tx,
            ended: ended_tx,
        });
        let recorder = tokio::spawn(record(self.queue.clone(), results_rx, self.settings.poll_interval));
        let max_in_flight = self.settings.max_in_flight;
        let mut scheduler = Scheduler::new(
            Limits {
                max_in_flight,
                // Half the slots: one project can never hold them all.
                max_per_project: max_in_flight.div_ceil(2),
                max_per_target: self.settings.max_per_target,
            },
            self.settings.breaker_cooldown,
        );
        // Deliveries held in memory before claims pause: as many as the handoff may pass.
        let hold = max_in_flight * 4;
        let mut handoff = self.handoff.take();
        let mut tasks = JoinSet::new();
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether due work may be waiting in the database; true at start for
        // whatever a previous process left.
        let mut claim_wanted = true;
        // How many saturated webhooks the last claim passed over.
        let mut skipped = 0;
        // Whether a claim may pass over saturated webhooks now. Passing over
        // them walks their due rows (one webhook's backlog of 100,000 cost the
        // SQLite writer about 20 ms a claim), so after a claim that passed
        // over them and found less than it asked for, the next one waits
        // until the poll, or until a webhook leaves the saturated ones if
        // that claim found anything at all (other webhooks have rows behind
        // the backlog, and the one that left wants its line refilled). Fresh
        // work of other webhooks arrives by the handoff meanwhile.
        let mut may_pass_over = true;
        let mut passing_over_found = true;

        loop {
            while let Some(joined) = tasks.try_join_next() {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "a delivery task failed");
                }
            }
            self.start_what_may_go(&shared, &mut tasks, &mut scheduler).await;
            let wake = scheduler.wake_at();
            // Not biased: handed-over work must not starve claims of due retries.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(first) = ended_rx.recv() => {
                    let mut next = Some(first);
                    while let Some(e) = next {
                        if scheduler.finish(e.ticket, e.health, e.took, now_ms()) {
                            ::metrics::counter!("hookline_breaker_opened_total").increment(1);
                        }
                        next = ended_rx.try_recv().ok();
                    }
                    // A webhook passed over at the last claim is no longer saturated: refill it.
                    if skipped > 0 && scheduler.saturated().len() < skipped {
                        claim_wanted = true;
                        may_pass_over |= passing_over_found;
                    }
                }
                batch = recv(&mut handoff) => match batch {
                    Some(batch) => self.hold(&shared, &mut scheduler, batch),
                    None => handoff = None,
                },
                _ = std::future::ready(()), if claim_wanted && scheduler.waiting() < hold => {
                    let asked = CLAIM_BATCH.min(hold - scheduler.waiting());
                    // Rows of webhooks that already have a backlog here are
                    // passed over: another project's fresh work is found behind them.
                    let skip = scheduler.saturated();
                    skipped = skip.len();
                    if skipped > 0 && !may_pass_over {
                        claim_wanted = false;
                        continue;
                    }
                    match self.queue.claim(now_ms(), asked as u32, skip).await {
                        Ok(claimed) => {
                            claim_wanted = claimed.len() == asked;
                            if skipped > 0 {
                                may_pass_over = claim_wanted;
                                passing_over_found = !claimed.is_empty();
                            }
                            self.hold(&shared, &mut scheduler, claimed);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "claiming deliveries failed");
                            claim_wanted = false;
                        }
                    }
                }
                _ = self.queue.work_ready() => claim_wanted = true,
                _ = poll.tick() => {
                    claim_wanted = true;
                    may_pass_over = true;
                    let now = now_ms();
                    for c in scheduler.take_stale(now - MAX_WAIT_MS) {
                        let _ = shared.results.send(TaskEnd::GiveBack(c.id, c.lease, now + GIVE_BACK_DELAY_MS));
                    }
                    ::metrics::gauge!("hookline_breaker_open_targets").set(scheduler.open_circuits() as f64);
                }
                _ = sleep_until_ms(wake), if wake.is_some() => {}
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
        left.extend(scheduler.drain().into_iter().map(|c| (c.id, c.lease)));
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

    /// Puts claimed or handed-over deliveries into the scheduler; those it
    /// cannot hold go back to the database.
    fn hold(&self, shared: &Shared, scheduler: &mut Scheduler, claimed: Vec<Claimed>) {
        let now = now_ms();
        for c in claimed {
            if let Some(c) = scheduler.push(c, now) {
                // Due at once: its webhook's line is full, so claims pass it
                // over until the line has room again, and then take it at
                // once. A delay would leave the line empty and waiting.
                let _ = shared.results.send(TaskEnd::GiveBack(c.id, c.lease, now));
            }
        }
    }

    /// Starts every delivery the scheduler lets go now, and gives back the
    /// ones it postpones.
    async fn start_what_may_go(&self, shared: &Arc<Shared>, tasks: &mut JoinSet<()>, scheduler: &mut Scheduler) {
        let now = now_ms();
        // A send must end before its lease does, or another worker could take
        // the delivery over mid-send: one whose lease has less left than the
        // longest send is given back at once, for whichever worker claims it.
        let margin = self.settings.longest_send().as_millis() as i64;
        let mut starting = Vec::new();
        loop {
            while let Some(step) = scheduler.next(now) {
                match step {
                    Step::Start(s) if s.claimed.lease_until - now < margin => {
                        let _ = shared.results.send(TaskEnd::GiveBack(s.claimed.id.clone(), s.claimed.lease, now));
                        scheduler.finish(s.ticket(), Health::Unknown, Duration::ZERO, now);
                    }
                    Step::Start(s) => starting.push(s),
                    Step::Postpone { claimed, until, why } => {
                        ::metrics::counter!("hookline_deliveries_postponed_total", "reason" => why.as_str())
                            .increment(1);
                        let _ = shared.results.send(TaskEnd::GiveBack(claimed.id, claimed.lease, until));
                    }
                }
            }
            // Rate-limited webhooks without slots: ask the database (shared by
            // every worker), then look again. A failure waits for the next poll.
            let wants = scheduler.take_wants();
            if wants.is_empty() {
                break;
            }
            let mut granted_any = false;
            for (webhook, rate, count) in wants {
                match self.queue.rate_slots(webhook.clone(), rate, count, now).await {
                    Ok(slots) => {
                        scheduler.grant(&webhook, slots);
                        granted_any = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "taking rate-limit slots failed; retrying at the next poll"),
                }
            }
            if !granted_any {
                break;
            }
        }
        if starting.is_empty() {
            return;
        }
        let mut projects: Vec<&ProjectId> = starting.iter().map(|s| &s.claimed.project_id).collect();
        projects.sort();
        projects.dedup();
        let secrets = match self.secrets.get(&self.store, &self.vault, &projects, now).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "loading signing secrets failed; giving deliveries back");
                for s in starting {
                    let ticket = s.ticket();
                    let _ =
                        shared.results.send(TaskEnd::GiveBack(s.claimed.id, s.claimed.lease, now + GIVE_BACK_DELAY_MS));
                    scheduler.finish(ticket, Health::Unknown, Duration::ZERO, now);
                }
                return;
            }
        };
        let mut in_flight = shared.in_flight.lock().expect("not poisoned");
        for started in starting {
            let c = &started.claimed;
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
                probe = started.probe,
            );
            tasks.spawn(
                async move {
                    let ticket = started.ticket();
                    let id = started.claimed.id.clone();
                    let clock = std::time::Instant::now();
                    let (result, health) = deliver(&shared, started.claimed, secrets).await;
                    // Record first, then forget: a shutdown in between cannot give back a finished delivery.
                    let _ = shared.results.send(result);
                    shared.in_flight.lock().expect("not poisoned").remove(&id);
                    let _ = shared.ended.send(Ended { ticket, health, took: clock.elapsed() });
                }
                .instrument(span),
            );
        }
    }
}

/// Sleeps until the given unix time in ms (a wall-clock deadline of the scheduler).
async fn sleep_until_ms(at: Option<UnixMs>) {
    let wait = at.map_or(0, |at| (at - now_ms()).max(0));
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
}

/// The next handed-over batch, or never when there is no handoff.
async fn recv(handoff: &mut Option<HandoffReceiver>) -> Option<Vec<Claimed>> {
    match handoff {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

fn failed_without_attempt(c: &Claimed, reason: &str) -> TaskEnd {
    tracing::debug!(reason, "delivery failed without an attempt");
    ::metrics::counter!("hookline_deliveries_total", "outcome" => "failed").increment(1);
    TaskEnd::Done(Completion {
        id: c.id.clone(),
        lease: c.lease,
        next: NextState::Failed,
        attempts: Vec::new(),
        target_url: None,
        last_error: Some(reason.to_owned()),
        webhook_id: c.webhook_id.clone(),
        verdict: None,
    })
}

/// Makes one attempt and decides what comes next; also says what the attempt
/// showed of the target's health, for its circuit breaker and limit.
async fn deliver(shared: &Shared, c: Claimed, secrets: Option<Arc<Vec<SigningSecret>>>) -> (TaskEnd, Health) {
    let Some((url, active)) = c.webhook.clone() else {
        return (failed_without_attempt(&c, "the webhook was deleted"), Health::Unknown);
    };
    // A test delivery is the one kind sent to a disabled webhook: testing a
    // disabled endpoint is how its owner learns whether to enable it again.
    if !active && c.kind != DeliveryKind::Test {
        return (failed_without_attempt(&c, "the webhook is disabled"), Health::Unknown);
    }

    let mut number = c.attempts + 1;
    let started_at = now_ms();
    let clock = std::time::Instant::now();
    let (result, resent_after) = match secrets.as_deref().filter(|s| !s.is_empty()) {
        None => {
            let message = "the project's signing secret could not be loaded".to_owned();
            (Err(SendError { class: ErrorClass::Signing, message }), None)
        }
        Some(secrets) => {
            let body = match envelope::body(&c.event_id, &c.event_name, c.event_created_at, &c.data) {
                Ok(body) => body,
                Err(e) => return (failed_without_attempt(&c, &e.to_string()), Health::Unknown),
            };
            let headers = signed_headers(&c, secrets, &body, started_at / 1000);
            let sent = shared.client.post(&url, headers, body).await;
            ::metrics::histogram!("hookline_delivery_attempt_duration_seconds").record(clock.elapsed().as_secs_f64());
            (sent.result, sent.resent_after)
        }
    };
    // A request written on a kept-alive connection that broke, then sent again
    // on a new one: the receiver may have seen both, so both are attempts.
    let mut attempts = Vec::with_capacity(2);
    if let Some(first) = resent_after {
        attempts.push(Attempt {
            number,
            started_at,
            duration_ms: 0,
            response_code: None,
            error_class: Some(first.class.as_str().to_owned()),
            error: Some(format!("{}; sent again on a new connection", first.message)),
            response_body: None,
        });
        number += 1;
    }
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
    let health = match &result {
        Ok(answer) if answer.status >= 500 => Health::Down,
        Ok(_) => Health::Up,
        Err(e) if e.class == ErrorClass::Signing => Health::Unknown,
        Err(_) => Health::Down,
    };
    // Our own signing failure says nothing about the endpoint.
    let about_endpoint = health != Health::Unknown;
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
    // The retry policy counts the attempts of the current budget only (a
    // replay starts a fresh one); the history numbers on.
    let in_budget = number - c.attempt_base;
    let decision = shared.retry.decide(in_budget, &outcome, now_ms(), &mut rand::rng());
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
        tracing::info!(delivery = %c.id, webhook = %c.webhook_id, "receiver answered 410 Gone; disabling the webhook");
    }
    attempts.push(attempt);
    let verdict = about_endpoint.then_some(match next {
        _ if deactivate => Verdict::Gone,
        NextState::Sent => Verdict::Succeeded,
        NextState::Failed | NextState::RetryAt(_) => Verdict::Failed,
    });
    let done = TaskEnd::Done(Completion {
        id: c.id,
        lease: c.lease,
        next,
        attempts,
        target_url: Some(url),
        last_error,
        webhook_id: c.webhook_id,
        verdict,
    });
    (done, health)
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
