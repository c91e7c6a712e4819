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

        // 50 retries at once: the first makes it due, the others find it due
        // or in flight (409); one that comes after the resend finished may
        // start another (202). Either way the log counts every request.
        let path = format!("/v1/webhook-logs/{id}/retry");
        let answers = futures_util::future::join_all((0..50).map(|_| app.post(&path, &json!({})).send())).await;
        let statuses: Vec<u16> = answers.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
        assert!(statuses.iter().all(|&s| s == 202 || s == 409), "{statuses:?}");
        let accepted = statuses.iter().filter(|&&s| s == 202).count();
        assert!(accepted >= 1 && statuses.iter().filter(|&&s| s == 409).count() >= 1, "{statuses:?}");

        let expected = 1 + accepted;
        let log = eventually("the retries are sent", || async {
            let log = app.log(&id).await;
            (log["status"] == "sent" && log["attempts"] == expected).then_some(log)
        })
        .await;
        assert_eq!(log["attempt_history"].as_array().unwrap().len(), expected);
        assert_eq!(receiver.received().len(), expected, "the receiver got exactly what the log counts");
    }

    async fn a_webhook_rate_limit_is_shown_changed_and_validated(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let r = app
            .post("/v1/webhooks", &json!({"event": "order.paid", "target_url": receiver.url("/h"), "rate_limit": 20}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let hook: serde_json::Value = r.json().await.unwrap();
        assert_eq!(hook["rate_limit"], 20);
        let path = format!("/v1/webhooks/{}", hook["id"].as_str().unwrap());
        let patch = |body: serde_json::Value| app.http.patch(app.url(&path)).bearer_auth(&app.project.api_key).json(&body);

        let kept: serde_json::Value = patch(json!({"is_active": true})).send().await.unwrap().json().await.unwrap();
        assert_eq!(kept["rate_limit"], 20, "absent: unchanged");
        let removed: serde_json::Value = patch(json!({"rate_limit": null})).send().await.unwrap().json().await.unwrap();
        assert_eq!(removed["rate_limit"], serde_json::Value::Null, "null: no limit");
        for bad in [json!(0), json!(-1), json!("5"), json!(1.5)] {
            let problem = assert_problem(patch(json!({"rate_limit": bad})).send().await.unwrap(), 422).await;
            assert!(problem_fields(&problem).contains(&"rate_limit".to_owned()), "{bad}: {problem}");
        }
        let plain = app.add_webhook("order.paid", &receiver.url("/other")).await;
        assert_eq!(app.get_json(&format!("/v1/webhooks/{plain}")).await["rate_limit"], serde_json::Value::Null);
    }

    async fn a_rate_limited_webhook_gets_at_most_its_limit_per_second_and_loses_nothing(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let r = app
            .post("/v1/webhooks", &json!({"event": "order.paid", "target_url": receiver.url("/limited"), "rate_limit": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        // On PostgreSQL a second node sends too: the limit is shared through the database.
        let peer = if backend.is_postgres() { Some(app.spawn_peer(&[]).await) } else { None };
        let ids = send_many(&app, 20).await;
        if let Some(peer) = &peer {
            for i in 0..15 {
                let r = app
                    .http
                    .post(peer.url("/v1/events"))
                    .bearer_auth(&app.project.api_key)
                    .json(&json!({"event_name": "order.paid", "data": {"order_id": format!("peer{i}")}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        }
        let total = ids.len() + if peer.is_some() { 15 } else { 0 };
        let got = receiver.wait_for(total).await;
        for id in &ids {
            assert_eq!(app.wait_for_status(id, "sent").await["attempts"], 1, "held back, never failed");
        }
        let mut at: Vec<_> = got.iter().map(|r| r.at).collect();
        at.sort();
        // No one-second window sees more than the limit (10 % tolerance).
        for (i, start) in at.iter().enumerate() {
            let in_window = at[i..].iter().take_while(|t| t.duration_since(*start) < Duration::from_secs(1)).count();
            assert!(in_window <= 11, "{in_window} requests within one second");
        }
        if let Some(peer) = peer {
            peer.stop().await;
        }
    }

    async fn a_request_resent_on_a_new_connection_is_a_second_attempt(backend) {
        let app = TestApp::spawn(&backend).await;
        let (url, requests) = receiver_that_drops_the_second_request_on_a_kept_alive_connection().await;
        app.add_webhook("order.paid", &url).await;
        let first = send_many(&app, 1).await.remove(0);
        app.wait_for_status(&first, "sent").await;

        // The second delivery goes on the kept-alive connection, which the
        // receiver closes after reading the request: hookline sends it again
        // on a new connection, and both requests are attempts.
        let second = send_many(&app, 1).await.remove(0);
        let log = app.wait_for_status(&second, "sent").await;
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3, "requests the receiver read");
        assert_eq!(log["attempts"], 2, "{log:#}");
        let history = log["attempt_history"].as_array().unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0]["response_code"], serde_json::Value::Null);
        assert!(history[0]["error"].as_str().unwrap().contains("sent again on a new connection"), "{log:#}");
        assert_eq!(history[1]["response_code"], 200);
    }
}

/// A raw HTTP/1.1 receiver: on its first connection it answers the first
/// request (keep-alive) and closes after reading the second without
/// answering; every later connection is answered normally. Counts requests read.
async fn receiver_that_drops_the_second_request_on_a_kept_alive_connection()
-> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering::SeqCst;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        let mut first_connection = true;
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let drop_second = std::mem::replace(&mut first_connection, false);
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut served = 0;
                loop {
                    // Read one whole request: head, then Content-Length bytes.
                    let mut chunk = [0u8; 4096];
                    let request_end = loop {
                        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            if buf.len() >= head_end + 4 + length {
                                break head_end + 4 + length;
                            }
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    buf.drain(..request_end);
                    counted.fetch_add(1, SeqCst);
                    served += 1;
                    if drop_second && served == 2 {
                        return;
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if socket.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, requests)
}
