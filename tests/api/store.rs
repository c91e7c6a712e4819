//! The store's time-driven parts, tested at the store level with `now` as an
//! input: retention pruning (days) and queue statistics (leases). The data is
//! made through the API of a running server; the store is then opened beside it.

use std::time::Duration;

use hookline::config::DatabaseUrl;
use hookline::domain::time::now_ms;
use hookline::store::{Backend as _, Store};
use serde_json::json;

use crate::backend_tests;
use crate::helpers::*;

const DAY_MS: i64 = 86_400_000;

async fn open_store(app: &TestApp) -> Store {
    let store = Store::open(&DatabaseUrl::parse(&app.database_url).unwrap()).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Rows of `delivery_attempts` of these deliveries (SQLite only; other
/// backends answer `None`).
fn attempt_rows(app: &TestApp, backend: &Backend, deliveries: &[String]) -> Option<usize> {
    match backend {
        Backend::Sqlite => {
            let path = app.database_url.strip_prefix("sqlite://").unwrap();
            let conn = rusqlite::Connection::open(path).unwrap();
            Some(
                deliveries
                    .iter()
                    .map(|id| {
                        conn.query_row("SELECT COUNT(*) FROM delivery_attempts WHERE delivery_id = ?1", [id], |r| {
                            r.get::<_, i64>(0)
                        })
                        .unwrap() as usize
                    })
                    .sum(),
            )
        }
    }
}

backend_tests! {
    async fn pruning_deletes_old_events_with_their_deliveries_and_attempts_in_batches_and_keeps_pending_ones(backend) {
        let app = TestApp::spawn(&backend).await;
        let ok = Receiver::start().await;
        // "Retry in an hour" keeps the order.paid delivery pending.
        let down = Receiver::start().await;
        down.always(Reply::status(429).header("retry-after", "3600"));
        app.add_webhook("order.created", &ok.url("/ok")).await;
        app.add_webhook("order.paid", &down.url("/down")).await;
        let mut done_events = Vec::new();
        let mut done_deliveries = Vec::new();
        for i in 0..5 {
            let receipt = app.send_event("order.created", json!({"order_id": format!("ord_{i}")})).await;
            done_events.push(receipt["id"].as_str().unwrap().to_owned());
            done_deliveries.push(receipt["deliveries"][0]["id"].as_str().unwrap().to_owned());
        }
        let pending = app.send_event("order.paid", json!({"order_id": "ord_9"})).await;
        let pending_delivery = pending["deliveries"][0]["id"].as_str().unwrap().to_owned();
        for id in &done_deliveries {
            app.wait_for_status(id, "sent").await;
        }
        down.wait_for(1).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while app.log(&pending_delivery).await["attempts"] != 1 {
            assert!(tokio::time::Instant::now() < deadline, "the first attempt was never recorded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(rows) = attempt_rows(&app, &backend, &done_deliveries) {
            assert_eq!(rows, 5);
        }

        // 31 days from now, with 30 days of retention, everything is old.
        let store = open_store(&app).await;
        let now = now_ms() + 31 * DAY_MS;
        let before = now - 30 * DAY_MS;
        let mut batches = Vec::new();
        loop {
            let deleted = store.prune(before, now, 2).await.unwrap();
            batches.push(deleted);
            if deleted < 2 {
                break;
            }
        }
        assert_eq!(batches, [2, 2, 1], "five finished events, two at a time");

        for id in &done_events {
            assert_problem(app.get(&format!("/v1/events/{id}")).send().await.unwrap(), 404).await;
        }
        for id in &done_deliveries {
            assert_problem(app.get(&format!("/v1/webhook-logs/{id}")).send().await.unwrap(), 404).await;
        }
        if let Some(rows) = attempt_rows(&app, &backend, &done_deliveries) {
            assert_eq!(rows, 0, "attempts of pruned deliveries are deleted too");
        }
        // The pending one is kept, whatever its age, with its history.
        let kept = app.log(&pending_delivery).await;
        assert_eq!(kept["status"], "pending");
        assert_eq!(kept["attempt_history"].as_array().unwrap().len(), 1);
        let events = app.get_json("/v1/events").await;
        assert_eq!(events["data"].as_array().unwrap().len(), 1);
        assert_eq!(events["data"][0]["id"], pending["id"]);
        // Nothing that recent is touched by today's pruning.
        assert_eq!(store.prune(now_ms() - 30 * DAY_MS, now_ms(), 2).await.unwrap(), 0);
    }

    async fn queue_stats_count_pending_due_and_leased_deliveries(backend) {
        // No worker: the test claims deliveries itself.
        let app = TestApp::spawn_with(&backend, &["--role", "api"]).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.created", &receiver.url("/hook")).await;
        app.send_event("order.created", json!({"order_id": "ord_1"})).await;
        app.send_event("order.created", json!({"order_id": "ord_2"})).await;
        let store = open_store(&app).await;
        let now = now_ms();

        let stats = store.queue_stats(now).await.unwrap();
        assert_eq!((stats.pending, stats.due, stats.leased), (2, 2, 0));
        assert!(stats.oldest_pending_created_at.is_some_and(|at| at <= now));

        let lease_ms = 60_000;
        assert_eq!(store.claim(now, now + lease_ms, 1).await.unwrap().len(), 1);
        let stats = store.queue_stats(now).await.unwrap();
        assert_eq!((stats.pending, stats.due, stats.leased), (2, 1, 1), "a leased delivery is not due");

        // Once the lease has expired the delivery is due again (a worker may take it over).
        let stats = store.queue_stats(now + lease_ms + 1).await.unwrap();
        assert_eq!((stats.pending, stats.due, stats.leased), (2, 2, 0));
    }
}
