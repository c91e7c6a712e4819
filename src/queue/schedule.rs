//! Which claimed delivery starts next (SPEC §8: no noisy neighbours).
//!
//! The worker puts every delivery it holds (claimed, or handed over at
//! ingest) here and asks for the next one whenever it could start one. The
//! answer is fair and keeps slow targets small:
//!
//! - **Round robin over projects, then over the webhooks of a project**: a
//!   project with a backlog of thousands gets one turn like a project with one
//!   fresh event, and so does each webhook within a project.
//! - **In-flight bounds**: at most `max_in_flight` in this process, at most
//!   `max_per_project` for one project (half of the slots by default), so one
//!   project can never hold every slot.
//! - **A concurrency limit per target that adapts** (additive increase,
//!   multiplicative decrease): it starts at [`INITIAL_TARGET_LIMIT`], grows by
//!   one with each quick answer up to `max_per_target`, shrinks by one with a
//!   slow answer and halves with a failure. A receiver that hangs holds a
//!   couple of slots, not sixty-four.
//! - **The circuit breaker** ([`super::breaker`]): deliveries to an open
//!   target are postponed without an attempt.
//! - **`rate_limit` per webhook**: requests to it go only at *slots*, times
//!   `1/rate_limit` s apart that the database hands out to every worker in
//!   small batches ([`Scheduler::take_wants`], [`Scheduler::grant`]), so no
//!   one-second window sees more than `rate_limit` across all nodes; a
//!   delivery whose slot is more than [`HOLD_MS`] away is postponed instead of
//!   held.
//!
//! Pure state with time as an argument: unit tests drive it without a clock.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::breaker::{Admission, Breakers, Health};
use crate::domain::{ProjectId, UnixMs, WebhookId};
use crate::store::Claimed;

/// Where a target's concurrency limit starts: enough for a healthy receiver
/// to ramp up within a few answers, few enough that a hanging one holds little.
pub const INITIAL_TARGET_LIMIT: f64 = 4.0;
/// An answer slower than this counts against its target's limit.
pub const SLOW_ANSWER: Duration = Duration::from_secs(1);
/// A rate-limited delivery due within this many ms waits in memory; one due
/// later goes back to the database until then.
pub const HOLD_MS: i64 = 1_000;
/// Most deliveries of one webhook held here, so a webhook whose target is
/// slow cannot fill the memory of the worker.
pub const MAX_WAITING_PER_WEBHOOK: usize = 1_024;
/// A webhook with this many deliveries waiting here is *saturated*: claims
/// pass over its rows, so other webhooks' work is found behind its backlog.
pub const SATURATED: usize = 256;
/// Target states kept before idle ones are forgotten.
const TARGETS_KEPT: usize = 4_096;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_in_flight: usize,
    pub max_per_project: usize,
    pub max_per_target: usize,
}

/// What to do next.
#[derive(Debug)]
pub enum Step {
    /// Send it now; report its end with [`Scheduler::finish`].
    Start(Started),
    /// Give it back unattempted, due at `until`.
    Postpone { claimed: Claimed, until: UnixMs, why: Why },
}

/// Why a delivery was postponed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its target's circuit is open.
    Breaker,
    /// Its webhook's rate limit would make it wait longer than [`HOLD_MS`].
    RateLimit,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Breaker => "breaker",
            Why::RateLimit => "rate_limit",
        }
    }
}

/// A delivery that was started, with what its end must be reported against.
#[derive(Debug)]
pub struct Started {
    pub claimed: Claimed,
    /// The one probe of an open circuit.
    pub probe: bool,
    ticket: Ticket,
}

/// What a started delivery holds, so its end frees exactly that.
#[derive(Debug, Clone)]
pub struct Ticket {
    project: ProjectId,
    /// `None` when no request will be made (the webhook is gone or disabled).
    target: Option<String>,
    probe: bool,
}

impl Started {
    pub fn ticket(&self) -> Ticket {
        self.ticket.clone()
    }
}

struct Waiting {
    claimed: Claimed,
    since: UnixMs,
}

/// A rate-limited webhook's request slots granted to this worker.
#[derive(Default)]
struct Slots {
    /// Unix µs, earliest first.
    granted: VecDeque<i64>,
    /// When this worker last sent to it (µs): slots used late never bunch up.
    last_start_us: Option<i64>,
    /// Slots are wanted and not granted yet.
    wanted: Option<(u32, u32)>,
}

/// Most slots asked for at once: enough to save round trips, few enough
/// that slots a worker does not use are not missed by the others for long.
const MAX_SLOTS_ASKED: usize = 16;

#[derive(Default)]
struct ProjectQueue {
    /// Webhooks with waiting deliveries, in turn order.
    turns: VecDeque<WebhookId>,
    by_webhook: HashMap<WebhookId, VecDeque<Waiting>>,
    in_flight: usize,
}

struct TargetState {
    in_flight: usize,
    limit: f64,
}

pub struct Scheduler {
    limits: Limits,
    /// Projects with waiting deliveries, in turn order.
    turns: VecDeque<ProjectId>,
    projects: HashMap<ProjectId, ProjectQueue>,
    targets: HashMap<String, TargetState>,
    breakers: Breakers,
    /// Per rate-limited webhook: the slots this worker holds.
    slots: HashMap<WebhookId, Slots>,
    /// The earliest time a delivery held back by a rate limit may go, as
    /// found by the last [`Scheduler::next`] that returned `None`.
    rate_wake: Option<UnixMs>,
    waiting: usize,
    in_flight: usize,
}

impl Scheduler {
    pub fn new(limits: Limits, breaker_cooldown: Duration) -> Self {
        Self {
            limits,
            turns: VecDeque::new(),
            projects: HashMap::new(),
            targets: HashMap::new(),
            breakers: Breakers::new(breaker_cooldown),
            slots: HashMap::new(),
            rate_wake: None,
            waiting: 0,
            in_flight: 0,
        }
    }

    /// Deliveries held and not started.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Webhooks with at least [`SATURATED`] deliveries waiting.
    pub fn saturated(&self) -> Vec<WebhookId> {
        let mut full = Vec::new();
        for q in self.projects.values() {
            full.extend(q.by_webhook.iter().filter(|(_, line)| line.len() >= SATURATED).map(|(w, _)| w.clone()));
        }
        full
    }

    /// Targets whose circuit is open.
    pub fn open_circuits(&self) -> usize {
        self.breakers.open_count()
    }

    /// Holds a delivery until it may go. One webhook's line is at most
    /// [`MAX_WAITING_PER_WEBHOOK`] long: a delivery beyond it is returned, for
    /// the caller to give back to the database.
    #[must_use]
    pub fn push(&mut self, claimed: Claimed, now: UnixMs) -> Option<Claimed> {
        if self
            .projects
            .get(&claimed.project_id)
            .and_then(|q| q.by_webhook.get(&claimed.webhook_id))
            .map_or(0, VecDeque::len)
            >= MAX_WAITING_PER_WEBHOOK
        {
            return Some(claimed);
        }
        let project = claimed.project_id.clone();
        let webhook = claimed.webhook_id.clone();
        let q = self.projects.entry(project.clone()).or_default();
        if q.turns.is_empty() && q.by_webhook.is_empty() {
            self.turns.push_back(project);
        }
        let line = q.by_webhook.entry(webhook.clone()).or_default();
        if line.is_empty() {
            q.turns.push_back(webhook);
        }
        line.push_back(Waiting { claimed, since: now });
        self.waiting += 1;
        None
    }

    /// The next delivery to act on, if any may go now.
    pub fn next(&mut self, now: UnixMs) -> Option<Step> {
        self.rate_wake = None;
        if self.in_flight >= self.limits.max_in_flight {
            return None;
        }
        for _ in 0..self.turns.len() {
            let project = self.turns.pop_front()?;
            let q = self.projects.get_mut(&project).expect("a project in turn has a queue");
            let step = if q.in_flight < self.limits.max_per_project {
                let mut ctx = Context {
                    targets: &mut self.targets,
                    breakers: &mut self.breakers,
                    slots: &mut self.slots,
                    rate_wake: &mut self.rate_wake,
                    limits: &self.limits,
                    now,
                };
                next_of_project(q, &mut ctx)
            } else {
                None
            };
            let empty = q.turns.is_empty();
            if !empty {
                self.turns.push_back(project.clone());
            }
            if let Some(step) = step {
                self.waiting -= 1;
                if let Step::Start(started) = &step {
                    self.in_flight += 1;
                    q.in_flight += 1;
                    if let Some(t) = &started.ticket.target {
                        self.targets.get_mut(t).expect("entered by next_of_project").in_flight += 1;
                    }
                }
                if empty && q.in_flight == 0 {
                    self.projects.remove(&project);
                }
                return Some(step);
            }
        }
        None
    }

    /// Rate-limited webhooks that need slots before their deliveries can go:
    /// (webhook, rate, how many). The caller asks the database and [`grant`]s them.
    ///
    /// [`grant`]: Scheduler::grant
    pub fn take_wants(&mut self) -> Vec<(WebhookId, u32, u32)> {
        let mut wants = Vec::new();
        for (webhook, slots) in &mut self.slots {
            if let Some((rate, count)) = slots.wanted.take() {
                wants.push((webhook.clone(), rate, count));
            }
        }
        wants
    }

    /// Slots (unix µs) the database handed this worker for a webhook.
    pub fn grant(&mut self, webhook: &WebhookId, granted: impl IntoIterator<Item = i64>) {
        if self.slots.len() >= TARGETS_KEPT {
            self.slots.retain(|_, s| !s.granted.is_empty() || s.wanted.is_some());
        }
        let slots = self.slots.entry(webhook.clone()).or_default();
        slots.granted.extend(granted);
        slots.granted.make_contiguous().sort_unstable();
    }

    /// When a delivery held back by a rate limit may go, if one is.
    pub fn wake_at(&self) -> Option<UnixMs> {
        self.rate_wake
    }

    /// Records the end of a started delivery: frees its slots and teaches the
    /// target's limit and breaker how it went. Returns `true` when this opened
    /// the target's circuit.
    pub fn finish(&mut self, ticket: Ticket, health: Health, took: Duration, now: UnixMs) -> bool {
        self.in_flight -= 1;
        if let Some(q) = self.projects.get_mut(&ticket.project) {
            q.in_flight -= 1;
            if q.in_flight == 0 && q.turns.is_empty() {
                self.projects.remove(&ticket.project);
            }
        }
        let Some(target) = ticket.target else { return false };
        if let Some(t) = self.targets.get_mut(&target) {
            t.in_flight -= 1;
            let max = self.limits.max_per_target as f64;
            t.limit = match health {
                Health::Up if took < SLOW_ANSWER => (t.limit + 1.0).min(max),
                Health::Up => (t.limit - 1.0).max(1.0),
                Health::Down => (t.limit / 2.0).max(1.0),
                Health::Unknown => t.limit,
            };
        }
        if self.targets.len() > TARGETS_KEPT {
            let start = INITIAL_TARGET_LIMIT;
            self.targets.retain(|_, t| t.in_flight > 0 || t.limit < start);
        }
        self.breakers.record(&target, health, ticket.probe, now)
    }

    /// Deliveries that have waited since before `before`: the caller gives
    /// them back so their leases are not held in memory for long.
    pub fn take_stale(&mut self, before: UnixMs) -> Vec<Claimed> {
        let mut stale = Vec::new();
        for q in self.projects.values_mut() {
            for line in q.by_webhook.values_mut() {
                while line.front().is_some_and(|w| w.since < before) {
                    stale.push(line.pop_front().expect("just checked").claimed);
                }
            }
            q.by_webhook.retain(|_, line| !line.is_empty());
            let by_webhook = &q.by_webhook;
            q.turns.retain(|w| by_webhook.contains_key(w));
        }
        self.forget_empty();
        self.waiting -= stale.len();
        stale
    }

    /// Everything still waiting (on shutdown).
    pub fn drain(&mut self) -> Vec<Claimed> {
        let mut all = Vec::with_capacity(self.waiting);
        for q in self.projects.values_mut() {
            q.turns.clear();
            for (_, line) in q.by_webhook.drain() {
                all.extend(line.into_iter().map(|w| w.claimed));
            }
        }
        self.forget_empty();
        self.waiting = 0;
        all
    }

    fn forget_empty(&mut self) {
        self.projects.retain(|_, q| !q.turns.is_empty() || q.in_flight > 0);
        let projects = &self.projects;
        self.turns.retain(|p| projects.get(p).is_some_and(|q| !q.turns.is_empty()));
    }
}

/// The scheduler's state that deciding about one delivery reads and changes.
struct Context<'a> {
    targets: &'a mut HashMap<String, TargetState>,
    breakers: &'a mut Breakers,
    slots: &'a mut HashMap<WebhookId, Slots>,
    rate_wake: &'a mut Option<UnixMs>,
    limits: &'a Limits,
    now: UnixMs,
}

/// The next step among one project's webhooks, taking turns.
fn next_of_project(q: &mut ProjectQueue, ctx: &mut Context<'_>) -> Option<Step> {
    for _ in 0..q.turns.len() {
        let webhook = q.turns.pop_front()?;
        let line = q.by_webhook.get_mut(&webhook).expect("a webhook in turn has a line");
        let head = line.front().expect("lines in turn are not empty");
        let decided = decide(head, &webhook, line.len(), ctx);
        match decided {
            None => q.turns.push_back(webhook),
            Some(kind) => {
                let w = line.pop_front().expect("just looked at it");
                if line.is_empty() {
                    q.by_webhook.remove(&webhook);
                } else {
                    q.turns.push_back(webhook);
                }
                return Some(match kind {
                    Decided::Start { target, probe } => Step::Start(Started {
                        probe,
                        ticket: Ticket { project: w.claimed.project_id.clone(), target, probe },
                        claimed: w.claimed,
                    }),
                    Decided::Postpone(until, why) => Step::Postpone { claimed: w.claimed, until, why },
                });
            }
        }
    }
    None
}

enum Decided {
    Start { target: Option<String>, probe: bool },
    Postpone(UnixMs, Why),
}

/// Whether the head of a webhook's line may go now; `None` leaves it waiting.
fn decide(head: &Waiting, webhook: &WebhookId, waiting: usize, ctx: &mut Context<'_>) -> Option<Decided> {
    let now = ctx.now;
    // A deleted or disabled webhook: the worker ends it without a request.
    let Some((url, true)) = &head.claimed.webhook else {
        return Some(Decided::Start { target: None, probe: false });
    };
    let key = url.pool_key();
    // An open circuit first: its deliveries go back to the database, not into a wait here.
    if let Some(until) = ctx.breakers.blocked_until(key, now) {
        return Some(Decided::Postpone(until, Why::Breaker));
    }
    let initial = INITIAL_TARGET_LIMIT.min(ctx.limits.max_per_target as f64);
    let target = ctx.targets.entry(key.to_owned()).or_insert(TargetState { in_flight: 0, limit: initial });
    if target.in_flight as f64 >= target.limit.floor() {
        return None;
    }
    // The rate limit is checked before the breaker, which changes state when it admits a probe.
    let now_us = now * 1000;
    if let Some(rate) = head.claimed.rate_limit {
        let interval_us = 1_000_000 / i64::from(rate.max(1));
        let slots = ctx.slots.entry(webhook.clone()).or_default();
        // A slot already passed is used now; of several passed, only the last.
        while slots.granted.len() > 1 && slots.granted[1] <= now_us {
            slots.granted.pop_front();
        }
        let Some(&slot) = slots.granted.front() else {
            let count = waiting.min(rate as usize).clamp(1, MAX_SLOTS_ASKED) as u32;
            slots.wanted = Some((rate, count));
            return None;
        };
        let at_us = slots.last_start_us.map_or(slot, |last| slot.max(last + interval_us));
        if at_us > now_us {
            let until = at_us.div_euclid(1000) + 1;
            if until - now > HOLD_MS {
                return Some(Decided::Postpone(until, Why::RateLimit));
            }
            *ctx.rate_wake = Some(ctx.rate_wake.map_or(until, |w| w.min(until)));
            return None;
        }
        let admission = ctx.breakers.admit(key, now);
        if let Admission::Postpone(until) = admission {
            return Some(Decided::Postpone(until, Why::Breaker));
        }
        slots.granted.pop_front();
        slots.last_start_us = Some(now_us);
        return Some(Decided::Start { target: Some(key.to_owned()), probe: admission == Admission::Probe });
    }
    match ctx.breakers.admit(key, now) {
        Admission::Postpone(until) => Some(Decided::Postpone(until, Why::Breaker)),
        a => Some(Decided::Start { target: Some(key.to_owned()), probe: a == Admission::Probe }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeliveryId, EventData, EventId, EventName, TargetUrl};

    const LIMITS: Limits = Limits { max_in_flight: 256, max_per_project: 128, max_per_target: 64 };

    fn delivery(project: &str, webhook: &str, url: &str) -> Claimed {
        Claimed {
            id: DeliveryId::generate(),
            lease: 1,
            lease_until: 60_000,
            project_id: ProjectId::from_trusted(format!("prj_{project}")),
            event_id: EventId::from_trusted("evt_1".to_owned()),
            event_name: EventName::from_trusted("order.created"),
            event_created_at: 0,
            data: EventData::from_trusted("{}".to_owned()),
            webhook_id: WebhookId::from_trusted(format!("wh_{webhook}")),
            webhook: Some((TargetUrl::parse(url).unwrap(), true)),
            attempts: 0,
            rate_limit: None,
            attempt_base: 0,
            kind: crate::store::DeliveryKind::Event,
        }
    }

    fn start(s: &mut Scheduler, now: UnixMs) -> Option<Started> {
        match s.next(now)? {
            Step::Start(started) => Some(started),
            Step::Postpone { .. } => panic!("unexpected postponement"),
        }
    }

    #[test]
    fn a_fresh_delivery_of_another_project_goes_before_a_backlog() {
        let mut s = Scheduler::new(LIMITS, Duration::from_secs(5));
        for i in 0..100 {
            assert!(
                s.push(delivery("alpha", &format!("a{}", i % 4), &format!("https://hang{}.example/", i % 4)), 0)
                    .is_none()
            );
        }
        assert!(s.push(delivery("beta", "b", "https://ok.example/"), 0).is_none());
        let first: Vec<String> = (0..2).map(|_| start(&mut s, 0).unwrap().claimed.project_id.to_string()).collect();
        assert!(first.contains(&"prj_beta".to_owned()), "{first:?}");
    }

    #[test]
    fn a_target_that_never_answers_holds_only_its_initial_limit() {
        let mut s = Scheduler::new(LIMITS, Duration::from_secs(5));
        for _ in 0..100 {
            assert!(s.push(delivery("alpha", "a", "https://hang.example/"), 0).is_none());
        }
        let mut started = 0;
        while start(&mut s, 0).is_some() {
            started += 1;
        }
        assert_eq!(started, INITIAL_TARGET_LIMIT as usize);
        assert_eq!(s.waiting(), 100 - started);
    }

    #[test]
    fn quick_answers_raise_a_target_limit_and_failures_halve_it() {
        let mut s = Scheduler::new(LIMITS, Duration::from_secs(5));
        for _ in 0..200 {
            assert!(s.push(delivery("p", "w", "https://fast.example/"), 0).is_none());
        }
        // Each quick answer lets one more go at once: the limit climbs to the cap.
        for _ in 0..100 {
            let mut batch = Vec::new();
            while let Some(d) = start(&mut s, 0) {
                batch.push(d);
            }
            for d in batch {
                s.finish(d.ticket(), Health::Up, Duration::from_millis(2), 0);
            }
            if s.waiting() == 0 {
                break;
            }
        }
        assert_eq!(s.waiting(), 0);
        assert_eq!(s.targets["https://fast.example:443"].limit, 64.0);
        for _ in 0..4 {
            assert!(s.push(delivery("p", "w", "https://fast.example/"), 0).is_none());
        }
        let d = start(&mut s, 0).unwrap();
        // Just below the breaker's threshold: the limit halves, the circuit stays closed.
        s.finish(d.ticket(), Health::Down, Duration::from_secs(15), 0);
        assert_eq!(s.targets["https://fast.example:443"].limit, 32.0);
    }

    #[test]
    fn one_project_holds_at_most_its_share_of_the_slots() {
        let limits = Limits { max_in_flight: 8, max_per_project: 4, max_per_target: 64 };
        let mut s = Scheduler::new(limits, Duration::from_secs(5));
        for i in 0..20 {
            assert!(s.push(delivery("alpha", &format!("a{i}"), &format!("https://t{i}.example/")), 0).is_none());
        }
        let mut started = 0;
        while start(&mut s, 0).is_some() {
            started += 1;
        }
        assert_eq!(started, 4);
        assert!(s.push(delivery("beta", "b", "https://ok.example/"), 0).is_none());
        assert_eq!(start(&mut s, 0).unwrap().claimed.project_id.as_str(), "prj_beta");
    }

    #[test]
    fn webhooks_of_one_project_take_turns() {
        let mut s = Scheduler::new(LIMITS, Duration::from_secs(5));
        for _ in 0..10 {
            assert!(s.push(delivery("p", "busy", "https://a.example/"), 0).is_none());
        }
        assert!(s.push(delivery("p", "quiet", "https://b.example/"), 0).is_none());
        let order: Vec<String> = (0..2).map(|_| start(&mut s, 0).unwrap().claimed.webhook_id.to_string()).collect();
        assert_eq!(order, ["wh_busy", "wh_quiet"]);
    }

    #[test]
    fn an_open_circuit_postpones_deliveries_to_the_end_of_the_cooldown() {
        let mut s = Scheduler::new(LIMITS, Duration::from_secs(5));
        for _ in 0..10 {
            assert!(s.push(delivery("p", "w", "https://down.example/"), 0).is_none());
        }
        let mut opened = false;
        for _ in 0..5 {
            let d = start(&mut s, 0).unwrap();
            opened = s.finish(d.ticket(), Health::Down, Duration::from_millis(1), 100);
        }
        assert!(opened);
        assert_eq!(s.open_circuits(), 1);
        match s.next(200) {
            Some(Step::Postpone { until, why, .. }) => assert_eq!((until, why), (5_100, Why::Breaker)),
            other => panic!("{other:?}"),
        }
        // After the cool-down, one probe; the rest wait for it.
        let probe = start(&mut s, 5_100).unwrap();
        assert!(probe.probe);
        assert!(matches!(s.next(5_101), Some(Step::Postpone { .. })));
        s.finish(probe.ticket(), Health::Up, Duration::from_millis(1), 5_200);
        assert!(!start(&mut s, 5_201).unwrap().probe, "closed again");
    }

    #[test]
    fn a_rate_limit_spaces_requests_at_granted_slots_and_never_fails_a_delivery() {
        let mut s = Scheduler::new(LIMITS, Duration::from_secs(5));
        for _ in 0..30 {
            let d = Claimed { rate_limit: Some(10), ..delivery("p", "w", "https://slow.example/") };
            assert!(s.push(d, 0).is_none());
        }
        // The database's part: slots 100 ms apart, never before the last one handed out.
        let mut next_slot_us = 0;
        let mut starts = Vec::new();
        let mut postponed = 0;
        let mut now = 0;
        while now < 3_000 {
            match s.next(now) {
                Some(Step::Start(d)) => {
                    starts.push(now);
                    s.finish(d.ticket(), Health::Up, Duration::from_millis(1), now);
                }
                Some(Step::Postpone { until, why, .. }) => {
                    assert!(until > now && why == Why::RateLimit);
                    postponed += 1;
                }
                None => {
                    let wants = s.take_wants();
                    if wants.is_empty() {
                        now = s.wake_at().unwrap_or(now + 1).max(now + 1);
                    }
                    for (webhook, rate, count) in wants {
                        assert_eq!(rate, 10);
                        let first = next_slot_us.max(now * 1000);
                        let slots: Vec<i64> = (0..i64::from(count)).map(|i| first + i * 100_000).collect();
                        next_slot_us = first + i64::from(count) * 100_000;
                        s.grant(&webhook, slots);
                    }
                }
            }
        }
        assert_eq!(starts.len() + postponed + s.waiting(), 30);
        assert!(starts.len() >= 20, "{starts:?}");
        for w in starts.windows(2) {
            assert!(w[1] - w[0] >= 100, "{starts:?}");
        }
        // No window of one second holds more than 10.
        for &t in &starts {
            assert!(starts.iter().filter(|&&u| u >= t && u < t + 1_000).count() <= 10, "{starts:?}");
        }
    }

    #[test]
    fn deliveries_waiting_too_long_are_handed_back_and_drain_empties_it() {
        let mut s = Scheduler::new(LIMITS, Duration::from_secs(5));
        for _ in 0..10 {
            assert!(s.push(delivery("p", "w", "https://hang.example/"), 0).is_none());
        }
        while start(&mut s, 0).is_some() {}
        assert!(s.push(delivery("p", "w", "https://hang.example/"), 500).is_none());
        let stale = s.take_stale(100);
        assert_eq!(stale.len(), 10 - INITIAL_TARGET_LIMIT as usize);
        assert_eq!(s.waiting(), 1);
        assert_eq!(s.drain().len(), 1);
        assert_eq!(s.waiting(), 0);
        assert!(s.next(600).is_none());
    }
}
