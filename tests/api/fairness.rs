//! Delivery when receivers misbehave (SPEC §8): one project's hanging targets
//! do not hold up another project, a failing target's circuit opens and its
//! deliveries wait without using attempts, and a recovered target gets one
//! probe before the rest.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::backend_tests;
use crate::helpers::*;

/// Sends `n` order.paid events and returns the ids of their deliveries.
async fn send_many(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let receipt = app.send_event("order.paid", json!({"order_id": format!("o{i}")})).await;
        for d in receipt["deliveries"].as_array().unwrap() {
            ids.push(d["id"].as_str().unwrap().to_owned());
        }
    }
    ids
}

async fn scrape(app: &TestApp) -> String {
    app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The value of one sample (`name{labels}`) in a Prometheus text page; 0 when absent.
fn sample(page: &str, series: &str) -> f64 {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Total attempts recorded over these deliveries.
async fn attempts_recorded(app: &TestApp, ids: &[String]) -> u64 {
    let mut total = 0;
    for id in ids {
        total += app.log(id).await["attempts"].as_u64().unwrap();
    }
    total
}

backend_tests! {
    async fn a_target_that_keeps_failing_opens_its_circuit_and_waiting_deliveries_use_no_attempt(backend) {
        // A cool-down longer than the test: once open, nothing more is sent.
        let app = TestApp::spawn_with(
            &backend,
            &["--breaker-cooldown", "60s", "--max-attempts", "10", "--retry-schedule", "10ms"],
        )
        .await;
        let receiver = Receiver::start().await;
        receiver.always(Reply::status(503));
        app.add_webhook("order.paid", &receiver.url("/hook")).await;
        let before = scrape(&app).await;

        let ids = send_many(&app, 10).await;
        eventually("the circuit opens and deliveries are postponed", || async {
            let page = scrape(&app).await;
            let postponed = sample(&page, r#"hookline_deliveries_postponed_total{reason="breaker"}"#)
                - sample(&before, r#"hookline_deliveries_postponed_total{reason="breaker"}"#);
            (postponed >= 10.0).then_some(())
        })
        .await;

        // Five consecutive failures opened it: the receiver got exactly five
        // requests, and every request is an attempt in the log.
        assert_eq!(receiver.received().len(), 5);
        assert_eq!(attempts_recorded(&app, &ids).await, 5);
        for id in &ids {
            let log = app.log(id).await;
            assert_eq!(log["status"], "pending", "waiting, not failed: {log:#}");
        }
        let page = scrape(&app).await;
        assert!(sample(&page, "hookline_breaker_opened_total") >= 1.0, "{page}");
        assert!(page.contains("hookline_breaker_open_targets"), "{page}");
    }

    async fn a_target_that_comes_back_gets_one_probe_and_then_its_backlog(backend) {
        let app = TestApp::spawn_with(
            &backend,
            &["--breaker-cooldown", "300ms", "--max-attempts", "10", "--retry-schedule", "10ms"],
        )
        .await;
        let receiver = Receiver::start().await;
        receiver.script((0..5).map(|_| Reply::status(503)));
        app.add_webhook("order.paid", &receiver.url("/hook")).await;

        let ids = send_many(&app, 8).await;
        for id in &ids {
            app.wait_for_status(id, "sent").await;
        }
        let got = receiver.received();
        // Five failures, then the probe after the cool-down, then one request per delivery left.
        assert_eq!(got.len(), 5 + 8);
        assert!(
            got[5].at.duration_since(got[4].at) >= Duration::from_millis(290),
            "the probe came {:?} after the fifth failure",
            got[5].at.duration_since(got[4].at)
        );
        assert_eq!(attempts_recorded(&app, &ids).await, 13, "postponements used no attempt");
    }

    async fn a_project_whose_targets_hang_does_not_delay_another_project(backend) {
        let app = TestApp::spawn_with(&backend, &["--request-timeout", "20s", "--lease", "60s", "--shutdown-grace", "100ms"]).await;
        // Alpha: four webhooks on four receivers that never answer in time, and a burst.
        let mut hanging = Vec::new();
        for _ in 0..4 {
            let r = Receiver::start().await;
            r.always(Reply::status(200).after(Duration::from_secs(60)));
            app.add_webhook("order.paid", &r.url("/hang")).await;
            hanging.push(r);
        }
        send_many(&app, 100).await;
        eventually("alpha's targets are busy", || async {
            hanging.iter().all(|r| !r.received().is_empty()).then_some(())
        })
        .await;

        // Beta: a healthy receiver, events one by one.
        let beta = app.other_project().await;
        let healthy = Receiver::start().await;
        let r = app
            .http
            .post(app.url("/v1/webhooks"))
            .bearer_auth(&beta.api_key)
            .json(&json!({"event": "order.paid", "target_url": healthy.url("/ok")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let mut worst = Duration::ZERO;
        for i in 0..10 {
            let sent = Instant::now();
            let r = app
                .http
                .post(app.url("/v1/events"))
                .bearer_auth(&beta.api_key)
                .json(&json!({"event_name": "order.paid", "data": {"order_id": format!("b{i}")}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let got = healthy.wait_for(i + 1).await;
            worst = worst.max(got[i].at.duration_since(sent));
        }
        // Before fair scheduling this took 8 to 15 s (every slot held by alpha).
        assert!(worst < Duration::from_secs(1), "beta's slowest delivery took {worst:?}");
        // And alpha's hanging targets hold only a few slots each.
        for r in &hanging {
            assert!(r.max_concurrent() <= 4, "a hanging target held {} requests", r.max_concurrent());
        }
    }

    async fn a_manual_retry_of_a_delivery_in_flight_is_a_409_and_sends_nothing(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(200).after(Duration::from_millis(500))]);
        app.add_webhook("order.paid", &receiver.url("/hook")).await;
        let id = send_many(&app, 1).await.remove(0);
        receiver.wait_for(1).await;

        let r = app.post(&format!("/v1/webhook-logs/{id}/retry"), &json!({})).send().await.unwrap();
        let problem = assert_problem(r, 409).await;
        assert!(problem["detail"].as_str().unwrap().contains("in flight"), "{problem}");
        let log = app.wait_for_status(&id, "sent").await;
        assert_eq!(log["attempts"], 1);
        assert_eq!(receiver.received().len(), 1);
    }

    async fn hammering_retry_sends_one_request_and_every_request_is_an_attempt(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/hook")).await;
        let id = send_many(&app, 1).await.remove(0);
        app.wait_for_status(&id, "sent").await;

        // 50 retries at once: the first makes it due, the others find it due or in flight.
        let path = format!("/v1/webhook-logs/{id}/retry");
        let answers = futures_util::future::join_all((0..50).map(|_| app.post(&path, &json!({})).send())).await;
        let statuses: Vec<u16> = answers.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
        assert_eq!(statuses.iter().filter(|&&s| s == 202).count(), 1, "{statuses:?}");
        assert!(statuses.iter().all(|&s| s == 202 || s == 409), "{statuses:?}");

        let log = eventually("the retry is sent", || async {
            let log = app.log(&id).await;
            (log["status"] == "sent" && log["attempts"] == 2).then_some(log)
        })
        .await;
        assert_eq!(log["attempt_history"].as_array().unwrap().len(), 2);
        assert_eq!(receiver.received().len(), 2, "the receiver got exactly what the log counts");
    }
}
