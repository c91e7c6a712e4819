//! The store contract, checked on every backend: the queue's leases and
//! guards, idempotent ingest, pruning and counts. These call
//! `hookline::store` directly and pass `now` explicitly, so no test races a
//! wall clock.

use std::collections::HashSet;

use hookline::domain::{
    ApiKey, ApiKeyId, DisablePolicy, EventData, EventId, EventName, ProjectId, TargetUrl, Verdict, WebhookId,
};
use hookline::store::{
    Attempt, Backend as _, Completion, ConstraintKind, DeliveryStatus, IDEMPOTENCY_WINDOW_MS, IdempotencyKey, Ingested,
    NewApiKey, NewEvent, NextState, Project, QueueStats, Receipt, Retried, Store, StoreError, Webhook,
};

use crate::backend_tests;
use crate::helpers::*;

/// An arbitrary fixed instant (2027-01-15): every time in these tests is relative to it.
const T: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 24 * 60 * MINUTE;
/// `--disable-after` in these tests: the default, five days.
const POLICY: DisablePolicy = DisablePolicy { after: std::time::Duration::from_secs(5 * 86_400) };

/// A migrated store with one project and one active webhook for `order.paid`.
struct Fixture {
    store: Store,
    project: ProjectId,
    webhook: WebhookId,
    db: TestDatabase,
}

async fn fixture(backend: &Backend) -> Fixture {
    let db = TestDatabase::create(backend).await;
    let store = db.store().await;
    let project = new_project(&store).await;
    let webhook = new_webhook(&store, &project, "order.paid").await;
    Fixture { store, project, webhook, db }
}

async fn new_project(store: &Store) -> ProjectId {
    let project = Project { id: ProjectId::generate(), name: "p".into(), created_at: T - DAY * 30 };
    let key = ApiKey::generate();
    let record = NewApiKey { id: ApiKeyId::generate(), hash: key.hash(), prefix: key.display_prefix(), created_at: T };
    store.create_project(project.clone(), record, vec![1, 2, 3]).await.unwrap();
    project.id
}

async fn new_webhook(store: &Store, project: &ProjectId, event: &str) -> WebhookId {
    let id = WebhookId::generate();
    store.create_webhook(webhook(id.clone(), project, event), u32::MAX).await.unwrap();
    id
}

fn webhook(id: WebhookId, project: &ProjectId, event: &str) -> Webhook {
    Webhook {
        id,
        project_id: project.clone(),
        event: EventName::from_trusted(event),
        target_url: TargetUrl::parse("https://example.com/hook").unwrap(),
        is_active: true,
        disabled: None,
        created_at: T - DAY * 30,
        updated_at: T - DAY * 30,
        rate_limit: None,
    }
}

fn event(project: &ProjectId, name: &str, at: i64) -> NewEvent {
    NewEvent {
        id: EventId::generate_at(at),
        project_id: project.clone(),
        name: EventName::from_trusted(name),
        data: EventData::from_trusted(r#"{"order_id":"o"}"#.into()),
        created_at: at,
        idempotency: None,
        lease: None,
    }
}

fn keyed(mut e: NewEvent, key: &str, fingerprint: u8) -> NewEvent {
    e.idempotency = Some(IdempotencyKey { key: key.into(), fingerprint: [fingerprint; 32] });
    e
}

async fn ingest_created(store: &Store, e: NewEvent) -> Receipt {
    match store.ingest(e).await.unwrap() {
        Ingested::Created { receipt, .. } => receipt,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// Ingests an `order.paid` event at `at` and returns its one delivery's id.
async fn delivery_at(f: &Fixture, at: i64) -> hookline::domain::DeliveryId {
    let receipt = ingest_created(&f.store, event(&f.project, "order.paid", at)).await;
    assert_eq!(receipt.deliveries.len(), 1);
    receipt.deliveries[0].id.clone()
}

fn attempt(number: u32, at: i64, code: u16) -> Attempt {
    Attempt {
        number,
        started_at: at,
        duration_ms: 12,
        response_code: Some(code),
        error_class: None,
        error: None,
        response_body: Some("ok".into()),
    }
}

fn sent(c: &hookline::store::Claimed, at: i64) -> Completion {
    Completion {
        id: c.id.clone(),
        lease: c.lease,
        next: NextState::Sent,
        attempts: vec![attempt(c.attempts + 1, at, 200)],
        target_url: None,
        last_error: None,
        webhook_id: c.webhook_id.clone(),
        verdict: Some(Verdict::Succeeded),
    }
}

/// Rows in a table, read directly from the database: what pruning left behind.
async fn count_rows(db: &TestDatabase, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table}");
    if let Some(path) = db.url.strip_prefix("sqlite://") {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row(&sql, [], |r| r.get(0)).unwrap()
    } else {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&mut conn).await.unwrap()
    }
}

backend_tests! {
    async fn a_claim_leases_due_deliveries_oldest_due_first_and_skips_leased_ones(backend) {
        let f = fixture(&backend).await;
        let second = delivery_at(&f, T + 2).await;
        let first = delivery_at(&f, T + 1).await;
        let third = delivery_at(&f, T + 3).await;
        let not_due = delivery_at(&f, T + MINUTE).await;

        let claimed = f.store.claim(T + 10, T + 10 + MINUTE, 1, Vec::new()).await.unwrap();
        assert_eq!(claimed.iter().map(|c| &c.id).collect::<Vec<_>>(), [&first]);
        assert_eq!(claimed[0].project_id, f.project);
        assert_eq!(claimed[0].webhook_id, f.webhook);
        assert_eq!(claimed[0].webhook, Some((TargetUrl::parse("https://example.com/hook").unwrap(), true)));
        assert_eq!(claimed[0].event_name.as_str(), "order.paid");
        assert_eq!(claimed[0].data.as_json(), r#"{"order_id":"o"}"#);
        assert_eq!(claimed[0].attempts, 0);

        let rest = f.store.claim(T + 10, T + 10 + MINUTE, 10, Vec::new()).await.unwrap();
        let rest: HashSet<_> = rest.into_iter().map(|c| c.id).collect();
        assert_eq!(rest, HashSet::from([second, third]));
        assert!(!rest.contains(&not_due));
        assert!(f.store.claim(T + 20, T + 20 + MINUTE, 10, Vec::new()).await.unwrap().is_empty(), "leased rows are skipped");
    }

    async fn an_expired_lease_is_claimed_again_with_a_new_token(backend) {
        let f = fixture(&backend).await;
        let id = delivery_at(&f, T).await;
        let first = f.store.claim(T, T + 1000, 10, Vec::new()).await.unwrap();
        assert_eq!(first.len(), 1);
        assert!(f.store.claim(T + 999, T + 2000, 10, Vec::new()).await.unwrap().is_empty());
        let again = f.store.claim(T + 1000, T + 2000, 10, Vec::new()).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, id);
        assert_ne!(again[0].lease, first[0].lease);
    }

    async fn a_completion_with_a_stale_lease_is_ignored(backend) {
        let f = fixture(&backend).await;
        let id = delivery_at(&f, T).await;
        let stale = f.store.claim(T, T + 1000, 10, Vec::new()).await.unwrap().remove(0);
        let current = f.store.claim(T + 1000, T + 2000, 10, Vec::new()).await.unwrap().remove(0);

        assert_eq!(f.store.complete(vec![sent(&stale, T + 1500)], T + 1500, POLICY).await.unwrap().applied, 0);
        let (log, attempts) = f.store.get_log(f.project.clone(), id.clone()).await.unwrap().unwrap();
        assert_eq!(log.status.as_str(), "pending");
        assert_eq!(log.attempts, 0);
        assert!(attempts.is_empty());

        assert_eq!(f.store.complete(vec![sent(&current, T + 1600)], T + 1600, POLICY).await.unwrap().applied, 1);
        let (log, attempts) = f.store.get_log(f.project.clone(), id).await.unwrap().unwrap();
        assert_eq!(log.status.as_str(), "sent");
        assert_eq!((log.attempts, log.response_code, log.next_attempt_at), (1, Some(200), None));
        assert_eq!(attempts, vec![attempt(1, T + 1600, 200)]);
    }

    async fn a_batch_of_completions_records_each_outcome(backend) {
        let f = fixture(&backend).await;
        for at in [T, T + 1, T + 2] {
            delivery_at(&f, at).await;
        }
        let claimed = f.store.claim(T + 5, T + MINUTE, 10, Vec::new()).await.unwrap();
        assert_eq!(claimed.len(), 3);
        let retry = Completion {
            next: NextState::RetryAt(T + 500),
            attempts: vec![attempt(1, T + 6, 503)],
            last_error: Some("the receiver answered HTTP 503".into()),
            ..sent(&claimed[1], T + 6)
        };
        let refused = Completion {
            next: NextState::Failed,
            attempts: vec![attempt(1, T + 6, 404)],
            last_error: Some("the receiver answered HTTP 404".into()),
            verdict: Some(Verdict::Failed),
            ..sent(&claimed[2], T + 6)
        };
        let applied = f.store.complete(vec![sent(&claimed[0], T + 6), retry, refused], T + 7, POLICY).await.unwrap().applied;
        assert_eq!(applied, 3);

        let status = |i: usize| {
            let id = claimed[i].id.clone();
            let store = f.store.clone();
            let project = f.project.clone();
            async move { store.get_log(project, id).await.unwrap().unwrap().0 }
        };
        assert_eq!(status(0).await.status.as_str(), "sent");
        let retried = status(1).await;
        assert_eq!((retried.status.as_str(), retried.next_attempt_at, retried.attempts), ("pending", Some(T + 500), 1));
        assert_eq!(retried.last_error.as_deref(), Some("the receiver answered HTTP 503"));
        assert_eq!(status(2).await.status.as_str(), "failed");

        let again = f.store.claim(T + 500, T + MINUTE, 10, Vec::new()).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].attempts, again[0].webhook.clone()), (1, Some((TargetUrl::parse("https://example.com/hook").unwrap(), true))));
    }

    async fn a_410_disables_the_webhook_fails_its_pending_deliveries_and_tells_the_project_at_once(backend) {
        let f = fixture(&backend).await;
        let watcher = new_webhook(&f.store, &f.project, "webhook.disabled").await;
        let gone_one = delivery_at(&f, T).await;
        let waiting = delivery_at(&f, T + 1).await;
        let claimed = f.store.claim(T + 2, T + MINUTE, 1, Vec::new()).await.unwrap().remove(0);
        assert_eq!(claimed.id, gone_one);
        let gone = Completion {
            next: NextState::Failed,
            attempts: vec![attempt(1, T + 3, 410)],
            last_error: Some("the receiver answered HTTP 410".into()),
            verdict: Some(Verdict::Gone),
            ..sent(&claimed, T + 3)
        };

        let done = f.store.complete(vec![gone], T + 4, POLICY).await.unwrap();

        assert_eq!(done.applied, 1);
        assert_eq!(done.disabled.len(), 1);
        assert_eq!((done.disabled[0].failed_deliveries, done.disabled[0].notified), (1, 1));
        let webhook = f.store.get_webhook(f.project.clone(), f.webhook.clone()).await.unwrap().unwrap();
        assert!(!webhook.is_active);
        let disabled = webhook.disabled.expect("disabled by hookline");
        assert_eq!(disabled.at, T + 4);
        assert!(disabled.reason.contains("410 Gone"), "{}", disabled.reason);
        let (log, _) = f.store.get_log(f.project.clone(), waiting).await.unwrap().unwrap();
        assert_eq!(log.status, DeliveryStatus::Failed);
        assert!(log.last_error.unwrap().contains("disabled the webhook"));
        // The notice is committed with the disabling: an event, and a delivery due now to the watcher.
        let notice = f.store.claim(T + 4, T + MINUTE, 10, Vec::new()).await.unwrap();
        assert_eq!(notice.len(), 1);
        assert_eq!((notice[0].event_name.as_str(), &notice[0].webhook_id), ("webhook.disabled", &watcher));
        let data: serde_json::Value = serde_json::from_str(notice[0].data.as_json()).unwrap();
        assert_eq!(data["webhook_id"], f.webhook.as_str());
        assert_eq!(data["reason"], disabled.reason.as_str());

        // Enabled again: what hookline recorded goes.
        let patch = hookline::store::WebhookPatch { is_active: Some(true), ..Default::default() };
        let enabled = f.store.update_webhook(f.project.clone(), f.webhook.clone(), patch, T + 5).await.unwrap().unwrap();
        assert!(enabled.is_active && enabled.disabled.is_none());
    }

    async fn a_webhook_is_disabled_once_it_has_failed_for_longer_than_the_policy_allows(backend) {
        let f = fixture(&backend).await;
        let fail = |c: &hookline::store::Claimed, at: i64| Completion {
            next: NextState::RetryAt(at + DAY),
            attempts: vec![attempt(c.attempts + 1, at, 500)],
            last_error: Some("the receiver answered HTTP 500".into()),
            verdict: Some(Verdict::Failed),
            ..sent(c, at)
        };
        // A success, then failures from T on: not yet after exactly five days.
        delivery_at(&f, T - DAY).await;
        let c = f.store.claim(T - DAY, T - DAY + MINUTE, 1, Vec::new()).await.unwrap().remove(0);
        f.store.complete(vec![sent(&c, T - DAY)], T - DAY, POLICY).await.unwrap();
        let id = delivery_at(&f, T).await;
        let mut now = T;
        for _ in 0..5 {
            let c = f.store.claim(now, now + MINUTE, 1, Vec::new()).await.unwrap().remove(0);
            let done = f.store.complete(vec![fail(&c, now)], now, POLICY).await.unwrap();
            assert!(done.disabled.is_empty(), "failing for {} days only", (now - T) / DAY);
            now += DAY;
        }
        assert_eq!(now, T + 5 * DAY);
        let c = f.store.claim(now + 1, now + MINUTE, 1, Vec::new()).await.unwrap().remove(0);

        let done = f.store.complete(vec![fail(&c, now + 1)], now + 1, POLICY).await.unwrap();

        assert_eq!(done.disabled.len(), 1, "failing for longer than five days");
        let reason = f.store.get_webhook(f.project.clone(), f.webhook.clone()).await.unwrap().unwrap().disabled.unwrap().reason;
        assert!(reason.contains("2027-01-15T08:00:00.000Z"), "counted from the first failure: {reason}");
        let (log, attempts) = f.store.get_log(f.project.clone(), id).await.unwrap().unwrap();
        assert_eq!((log.status, attempts.len()), (DeliveryStatus::Failed, 6), "the retry it asked for is failed");
    }

    async fn a_success_ends_the_streak_and_enabling_starts_afresh(backend) {
        let f = fixture(&backend).await;
        delivery_at(&f, T).await;
        let c = f.store.claim(T, T + MINUTE, 1, Vec::new()).await.unwrap().remove(0);
        let fail = Completion {
            next: NextState::RetryAt(T + 6 * DAY),
            attempts: vec![attempt(1, T, 500)],
            verdict: Some(Verdict::Failed),
            ..sent(&c, T)
        };
        f.store.complete(vec![fail], T, POLICY).await.unwrap();
        let c = f.store.claim(T + 6 * DAY, T + 6 * DAY + MINUTE, 1, Vec::new()).await.unwrap().remove(0);

        let done = f.store.complete(vec![sent(&c, T + 6 * DAY)], T + 6 * DAY, POLICY).await.unwrap();

        assert!(done.disabled.is_empty(), "the attempt that ends the streak succeeded");
        delivery_at(&f, T + 6 * DAY).await;
        let c = f.store.claim(T + 6 * DAY, T + 6 * DAY + MINUTE, 1, Vec::new()).await.unwrap().remove(0);
        let fail = Completion { attempts: vec![attempt(1, T + 6 * DAY + 1, 500)], verdict: Some(Verdict::Failed), next: NextState::Failed, ..sent(&c, T + 6 * DAY + 1) };
        assert!(f.store.complete(vec![fail], T + 6 * DAY + 2, POLICY).await.unwrap().disabled.is_empty(), "a new streak began");
    }

    async fn a_requeue_applies_only_to_deliveries_unchanged_since_the_snapshot(backend) {
        let f = fixture(&backend).await;
        let other = new_project(&f.store).await;
        let theirs_hook = new_webhook(&f.store, &other, "order.paid").await;
        for at in [T, T + 1, T + 2] {
            delivery_at(&f, at).await;
        }
        ingest_created(&f.store, event(&other, "order.paid", T + 3)).await;
        let claimed = f.store.claim(T + 5, T + MINUTE, 10, Vec::new()).await.unwrap();
        let done: Vec<Completion> = claimed.iter().map(|c| sent(c, T + 6)).collect();
        f.store.complete(done, T + 6, POLICY).await.unwrap();
        delivery_at(&f, T + 7).await; // pending
        let filter = hookline::store::LogFilter { since: Some(T), ..Default::default() };

        let snapshot = f.store.replay_snapshot(f.project.clone(), filter.clone()).await.unwrap();

        assert_eq!((snapshot.matched, snapshot.to_requeue.len()), (4, 3), "pending ones match but are not requeued");
        // One of them is retried by hand meanwhile: the replay leaves it.
        f.store.retry_delivery(f.project.clone(), snapshot.to_requeue[0].id.clone(), T + 8).await.unwrap();
        assert_eq!(f.store.requeue(other.clone(), snapshot.to_requeue.clone(), T + 9).await.unwrap(), 0, "never another project's");
        assert_eq!(f.store.requeue(f.project.clone(), snapshot.to_requeue.clone(), T + 9).await.unwrap(), 2);
        assert_eq!(f.store.requeue(f.project.clone(), snapshot.to_requeue.clone(), T + 10).await.unwrap(), 0, "requeued once");
        let (log, _) = f.store.get_log(f.project.clone(), snapshot.to_requeue[1].id.clone()).await.unwrap().unwrap();
        assert_eq!((log.status, log.next_attempt_at, log.attempts), (DeliveryStatus::Pending, Some(T + 9), 1));
        let again = f.store.claim(T + 9, T + MINUTE, 10, Vec::new()).await.unwrap();
        let replayed = again.iter().find(|c| c.id == snapshot.to_requeue[1].id).unwrap();
        assert_eq!((replayed.attempts, replayed.attempt_base), (1, 1), "a fresh budget, the history kept");
        let filter = hookline::store::LogFilter { webhook_id: Some(theirs_hook), ..filter };
        assert_eq!(f.store.replay_snapshot(f.project.clone(), filter).await.unwrap().matched, 0);
    }

    async fn a_test_delivery_is_due_now_and_marked_as_a_test(backend) {
        let f = fixture(&backend).await;
        let other = new_project(&f.store).await;
        assert!(f.store.create_test_delivery(other, f.webhook.clone(), T).await.unwrap().is_none());

        let test = f.store.create_test_delivery(f.project.clone(), f.webhook.clone(), T).await.unwrap().unwrap();

        let claimed = f.store.claim(T, T + MINUTE, 10, Vec::new()).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!((&claimed[0].id, claimed[0].kind), (&test.id, hookline::store::DeliveryKind::Test));
        assert_eq!(claimed[0].event_name.as_str(), "webhook.test");
    }

    async fn concurrent_claims_never_hand_out_one_delivery_twice(backend) {
        let f = fixture(&backend).await;
        let mut all = HashSet::new();
        for i in 0..200 {
            all.insert(delivery_at(&f, T + i % 7).await);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let store = f.store.clone();
            tasks.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = store.claim(T + 10, T + MINUTE, 7, Vec::new()).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|c| c.id));
                }
            });
        }
        let mut claimed = Vec::new();
        while let Some(mine) = tasks.join_next().await {
            claimed.extend(mine.unwrap());
        }
        let unique: HashSet<_> = claimed.iter().cloned().collect();
        assert_eq!(unique.len(), claimed.len(), "a delivery was claimed twice");
        assert_eq!(unique, all);
    }

    async fn a_claim_passes_over_the_webhooks_it_is_told_to_skip(backend) {
        let f = fixture(&backend).await;
        let id = delivery_at(&f, T).await;
        let (log, _) = f.store.get_log(f.project.clone(), id.clone()).await.unwrap().unwrap();
        let skipped = f.store.claim(T + 1, T + MINUTE, 10, vec![log.webhook_id.clone()]).await.unwrap();
        assert!(skipped.is_empty(), "the only due delivery belongs to a skipped webhook");
        let other = WebhookId::generate();
        let claimed = f.store.claim(T + 1, T + MINUTE, 10, vec![other]).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].id, id);
    }

    async fn a_manual_retry_leaves_a_delivery_in_flight_or_due_and_makes_a_waiting_one_due(backend) {
        let f = fixture(&backend).await;
        let id = delivery_at(&f, T).await;
        let retry = |at| f.store.retry_delivery(f.project.clone(), id.clone(), at);

        // Due (not claimed yet): nothing changes.
        assert_eq!(retry(T + 1).await.unwrap(), Retried::Busy);
        // In flight: the lease stands and the worker's result is recorded.
        let held = f.store.claim(T + 1, T + MINUTE, 10, Vec::new()).await.unwrap().remove(0);
        assert_eq!(retry(T + 2).await.unwrap(), Retried::Busy);
        let waiting = Completion { next: NextState::RetryAt(T + MINUTE * 5), ..sent(&held, T + 3) };
        assert_eq!(f.store.complete(vec![waiting], T + 3, POLICY).await.unwrap().applied, 1, "the lease was not cancelled");

        // Waiting for a later attempt: due now.
        let Retried::Due(log) = retry(T + 4).await.unwrap() else { panic!("a waiting delivery is made due") };
        assert_eq!((log.status.as_str(), log.next_attempt_at), ("pending", Some(T + 4)));
        let again = f.store.claim(T + 4, T + MINUTE, 10, Vec::new()).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, id);
        // Sent: due again.
        assert_eq!(f.store.complete(vec![sent(&again[0], T + 5)], T + 5, POLICY).await.unwrap().applied, 1);
        assert!(matches!(retry(T + 6).await.unwrap(), Retried::Due(_)));

        let other = new_project(&f.store).await;
        assert_eq!(
            f.store.retry_delivery(other, id.clone(), T + 7).await.unwrap(),
            Retried::NotFound,
            "another project's delivery is not found"
        );
    }

    async fn a_released_delivery_is_due_again_only_with_its_current_lease(backend) {
        let f = fixture(&backend).await;
        delivery_at(&f, T).await;
        let stale = f.store.claim(T, T + 1000, 10, Vec::new()).await.unwrap().remove(0);
        let current = f.store.claim(T + 1000, T + MINUTE, 10, Vec::new()).await.unwrap().remove(0);
        f.store.release(vec![(stale.id.clone(), stale.lease)], T + 1000).await.unwrap();
        assert!(f.store.claim(T + 1001, T + MINUTE, 10, Vec::new()).await.unwrap().is_empty(), "a stale release changes nothing");
        f.store.release(vec![(current.id.clone(), current.lease)], T + 2000).await.unwrap();
        assert!(f.store.claim(T + 1999, T + MINUTE, 10, Vec::new()).await.unwrap().is_empty());
        assert_eq!(f.store.claim(T + 2000, T + MINUTE, 10, Vec::new()).await.unwrap().len(), 1);
    }

    async fn an_idempotency_key_replays_the_first_receipt_and_rejects_another_event(backend) {
        let f = fixture(&backend).await;
        let first = ingest_created(&f.store, keyed(event(&f.project, "order.paid", T), "k1", 1)).await;

        let replay = f.store.ingest(keyed(event(&f.project, "order.paid", T + MINUTE), "k1", 1)).await.unwrap();
        assert_eq!(replay, Ingested::Replayed(first.clone()));
        let reuse = f.store.ingest(keyed(event(&f.project, "order.paid", T + MINUTE), "k1", 2)).await.unwrap();
        assert_eq!(reuse, Ingested::KeyReused);

        // Keys are per project, and forgotten after the window.
        let other = new_project(&f.store).await;
        ingest_created(&f.store, keyed(event(&other, "order.paid", T), "k1", 2)).await;
        let later = ingest_created(&f.store, keyed(event(&f.project, "order.paid", T + IDEMPOTENCY_WINDOW_MS), "k1", 2)).await;
        assert_ne!(later.event_id, first.event_id);

        let page = hookline::store::Page { limit: 10, after: None };
        assert_eq!(f.store.list_events(f.project.clone(), page).await.unwrap().items.len(), 2);
    }

    async fn concurrent_requests_with_one_idempotency_key_create_one_event(backend) {
        let f = fixture(&backend).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let store = f.store.clone();
            let e = keyed(event(&f.project, "order.paid", T), "same", 7);
            tasks.spawn(async move { store.ingest(e).await.unwrap() });
        }
        let mut created = Vec::new();
        let mut replayed = Vec::new();
        while let Some(answer) = tasks.join_next().await {
            match answer.unwrap() {
                Ingested::Created { receipt, .. } => created.push(receipt),
                Ingested::Replayed(r) => replayed.push(r),
                Ingested::KeyReused => panic!("the same request is not a reuse"),
            }
        }
        assert_eq!(created.len(), 1);
        assert!(replayed.iter().all(|r| *r == created[0]));
        assert_eq!(count_rows(&f.db, "events").await, 1);
        assert_eq!(count_rows(&f.db, "webhook_logs").await, 1);
    }

    async fn pruning_deletes_only_finished_old_events_with_their_logs_and_attempts(backend) {
        let f = fixture(&backend).await;
        let old_sent = delivery_at(&f, T - 10 * DAY).await;
        let old_pending = delivery_at(&f, T - 10 * DAY + 1).await;
        let claimed = f.store.claim(T - 10 * DAY, T - 10 * DAY + MINUTE, 1, Vec::new()).await.unwrap();
        assert_eq!(claimed[0].id, old_sent);
        f.store.complete(vec![sent(&claimed[0], T - 10 * DAY)], T - 10 * DAY, POLICY).await.unwrap();
        let recent = delivery_at(&f, T - MINUTE).await;
        // No webhook listens to order.created: an event with no deliveries is finished.
        let old_quiet = ingest_created(&f.store, event(&f.project, "order.created", T - 9 * DAY)).await;
        // Idempotency keys: one past the window, one within it.
        ingest_created(&f.store, keyed(event(&f.project, "order.created", T - 2 * DAY), "old-key", 1)).await;
        ingest_created(&f.store, keyed(event(&f.project, "order.created", T - 1000), "new-key", 1)).await;
        assert_eq!(count_rows(&f.db, "delivery_attempts").await, 1);

        // A batch of one deletes one; the next batch the rest.
        assert_eq!(f.store.prune(T - 5 * DAY, T, 1).await.unwrap(), 1);
        assert_eq!(f.store.prune(T - 5 * DAY, T, 100).await.unwrap(), 1);
        assert_eq!(f.store.prune(T - 5 * DAY, T, 100).await.unwrap(), 0);

        assert!(f.store.get_log(f.project.clone(), old_sent).await.unwrap().is_none());
        assert!(f.store.get_event(f.project.clone(), old_quiet.event_id).await.unwrap().is_none());
        assert!(f.store.get_log(f.project.clone(), old_pending).await.unwrap().is_some(), "pending work is kept");
        assert!(f.store.get_log(f.project.clone(), recent).await.unwrap().is_some());
        assert_eq!(count_rows(&f.db, "delivery_attempts").await, 0);
        assert_eq!(count_rows(&f.db, "webhook_logs").await, 2);
        assert_eq!(count_rows(&f.db, "idempotency_keys").await, 1);
    }

    async fn a_batch_with_a_stale_and_a_current_result_for_one_delivery_records_the_current_one(backend) {
        let f = fixture(&backend).await;
        let a = delivery_at(&f, T).await;
        let b = delivery_at(&f, T + 1).await;
        let first = f.store.claim(T + 2, T + 2 + MINUTE, 2, Vec::new()).await.unwrap();
        let first_a = first.iter().find(|c| c.id == a).unwrap();
        let first_b = first.iter().find(|c| c.id == b).unwrap();
        // The first lease runs out while its send is still in flight, and the delivery is claimed again.
        let again = f.store.claim(T + 3 + MINUTE, T + 4 + 2 * MINUTE, 1, Vec::new()).await.unwrap();
        assert_eq!(again[0].id, a);

        let batch = vec![sent(first_a, T + 5), sent(&again[0], T + 5), sent(first_b, T + 5)];
        assert_eq!(f.store.complete(batch, T + 5, POLICY).await.unwrap().applied, 2, "the stale result is ignored, the others apply");
        let (log, attempts) = f.store.get_log(f.project.clone(), a).await.unwrap().unwrap();
        assert_eq!(log.status, DeliveryStatus::Sent);
        assert_eq!(attempts.len(), 1, "only the current lease's attempt is recorded");
        let (log, _) = f.store.get_log(f.project.clone(), b).await.unwrap().unwrap();
        assert_eq!(log.status, DeliveryStatus::Sent);
    }

    async fn concurrent_rotations_leave_one_current_secret(backend) {
        let f = fixture(&backend).await;
        let rotations = (0..8u8).map(|i| {
            let (store, project) = (f.store.clone(), f.project.clone());
            tokio::spawn(async move { store.rotate_secret(project, vec![i], T + i64::from(i), T + DAY).await })
        });
        for r in futures_util::future::join_all(rotations).await {
            r.unwrap().unwrap();
        }
        let current = f.store.signing_secrets(vec![f.project.clone()], T + 2 * DAY).await.unwrap();
        assert_eq!(current.len(), 1, "after every overlap has ended exactly one secret signs");
    }

    async fn pruning_deletes_signing_secrets_past_their_overlap(backend) {
        let f = fixture(&backend).await;
        f.store.rotate_secret(f.project.clone(), vec![4, 5, 6], T, T + MINUTE).await.unwrap();
        assert_eq!(count_rows(&f.db, "signing_secrets").await, 2);
        assert_eq!(f.store.signing_secrets(vec![f.project.clone()], T).await.unwrap().len(), 2, "both sign in the overlap");

        f.store.prune(T - DAY, T + MINUTE - 1, 100).await.unwrap();
        assert_eq!(count_rows(&f.db, "signing_secrets").await, 2, "the overlap has not ended");
        f.store.prune(T - DAY, T + MINUTE, 100).await.unwrap();
        assert_eq!(count_rows(&f.db, "signing_secrets").await, 1);
        let left = f.store.signing_secrets(vec![f.project.clone()], T + MINUTE).await.unwrap();
        assert_eq!(left[0].sealed, vec![4, 5, 6]);
    }

    async fn queue_stats_count_pending_due_and_leased_deliveries(backend) {
        let f = fixture(&backend).await;
        assert_eq!(f.store.queue_stats(T).await.unwrap(), QueueStats::default());
        for at in [T - 3, T - 2, T - 1, T + MINUTE] {
            delivery_at(&f, at).await;
        }
        let stats = f.store.queue_stats(T).await.unwrap();
        assert_eq!(stats, QueueStats { pending: 4, due: 3, leased: 0, oldest_pending_created_at: Some(T - 3) });

        let claimed = f.store.claim(T, T + MINUTE, 2, Vec::new()).await.unwrap();
        let stats = f.store.queue_stats(T).await.unwrap();
        assert_eq!((stats.pending, stats.due, stats.leased), (4, 1, 2));

        f.store.complete(vec![sent(&claimed[0], T + 1)], T + 1, POLICY).await.unwrap();
        let stats = f.store.queue_stats(T + 1).await.unwrap();
        assert_eq!((stats.pending, stats.due, stats.leased), (3, 1, 1));
    }

    async fn a_webhook_with_an_id_that_exists_is_refused_as_a_named_unique_violation(backend) {
        let f = fixture(&backend).await;

        let refused = f.store.create_webhook(webhook(f.webhook.clone(), &f.project, "order.created"), u32::MAX).await;

        match refused {
            Err(StoreError::Constraint { kind: ConstraintKind::Unique, constraint: Some(name), .. }) => {
                // PostgreSQL names the constraint (project_webhooks_pkey), SQLite the column (project_webhooks.id).
                assert!(name.starts_with("project_webhooks"), "named {name}");
            }
            other => panic!("expected a named unique violation, got {other:?}"),
        }
        let kept = f.store.get_webhook(f.project.clone(), f.webhook.clone()).await.unwrap().unwrap();
        assert_eq!(kept.event.as_str(), "order.paid", "the webhook that exists is unchanged");
    }

    async fn a_webhook_of_a_project_that_does_not_exist_is_refused_as_a_foreign_key_violation(backend) {
        let f = fixture(&backend).await;

        let refused =
            f.store.create_webhook(webhook(WebhookId::generate(), &ProjectId::generate(), "order.paid"), u32::MAX).await;

        match refused {
            Err(StoreError::Constraint { kind: ConstraintKind::ForeignKey, constraint, .. }) => {
                // SQLite does not say which foreign key; PostgreSQL does.
                if backend.is_postgres() {
                    assert_eq!(constraint.as_deref(), Some("project_webhooks_project_id_fkey"));
                }
            }
            other => panic!("expected a foreign key violation, got {other:?}"),
        }
    }

    async fn migrations_are_safe_to_run_from_several_processes_at_once(backend) {
        let db = TestDatabase::create(&backend).await;
        let url = hookline::config::DatabaseUrl::parse(&db.url).unwrap();
        let mut opened = Vec::new();
        for _ in 0..4 {
            opened.push(Store::open(&url, 2).await.unwrap());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for store in opened.clone() {
            tasks.spawn(async move { store.migrate().await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        for store in &opened {
            store.ping().await.unwrap();
        }
    }
}

/// A PostgreSQL database set up by the pre-release migration runner is
/// refused as it is, with a message that says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_pre_release_migration_runner_is_refused_untouched() {
    let Some(backend) = Backend::postgres() else { return skipped_without_postgres() };
    let db = TestDatabase::create(&backend).await;
    {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql("CREATE TABLE hookline_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let url = hookline::config::DatabaseUrl::parse(&db.url).unwrap();
    let store = Store::open(&url, 2).await.unwrap();

    let refused = store.migrate().await;

    assert!(matches!(refused, Err(StoreError::PreReleaseSchema)), "{refused:?}");
    assert!(refused.unwrap_err().to_string().contains("create a new database"));
    assert_eq!(count_rows(&db, "pg_tables WHERE tablename IN ('_sqlx_migrations', 'projects')").await, 0);
}
