//! Outcome rules and backoff (SPEC §5): what is retried, what is not, and how
//! each attempt is recorded.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

/// Adds a webhook on `receiver`, sends one order.paid, and returns the id of
/// the delivery to that webhook.
async fn deliver_one(app: &TestApp, receiver: &Receiver) -> String {
    let webhook = app.add_webhook("order.paid", &receiver.url("/hook")).await;
    let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
    let ours = receipt["deliveries"].as_array().unwrap().iter().find(|d| d["webhook_id"] == webhook.as_str());
    ours.unwrap()["id"].as_str().unwrap().to_owned()
}

fn attempts(log: &Value) -> Vec<Value> {
    log["attempt_history"].as_array().unwrap().clone()
}

backend_tests! {
    async fn a_delivery_is_retried_after_503s_until_it_succeeds(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(503).body("down"), Reply::status(503)]);
        let id = deliver_one(&app, &receiver).await;

        let log = app.wait_for_status(&id, "sent").await;
        assert_eq!(log["attempts"], 3);
        assert_eq!(log["response_code"], 200);
        assert_eq!(log["last_error"], Value::Null);
        let history = attempts(&log);
        let codes: Vec<&Value> = history.iter().map(|a| &a["response_code"]).collect();
        assert_eq!(codes, [&json!(503), &json!(503), &json!(200)]);
        let numbers: Vec<&Value> = history.iter().map(|a| &a["number"]).collect();
        assert_eq!(numbers, [&json!(1), &json!(2), &json!(3)]);
        assert_eq!(history[0]["response_body"], "down");

        let got = receiver.wait_for(3).await;
        for r in &got {
            assert_eq!(r.header("webhook-id"), id, "the webhook-id is the same on every attempt");
            assert_eq!(r.body, got[0].body, "the body is the same on every attempt");
            assert_signed(r, &app.project.signing_secret);
        }
    }

    async fn a_delivery_fails_after_the_last_attempt(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.always(Reply::status(500));
        let id = deliver_one(&app, &receiver).await;

        let log = app.wait_for_status(&id, "failed").await;
        assert_eq!(log["attempts"], 3, "--max-attempts 3");
        assert_eq!(log["response_code"], 500);
        assert_eq!(log["next_attempt_at"], Value::Null);
        assert_eq!(log["last_error"], "the receiver answered HTTP 500");
        assert_eq!(receiver.received().len(), 3);
    }

    async fn retries_wait_for_the_schedule(backend) {
        let app = TestApp::spawn_with(&backend, &["--retry-schedule", "300ms", "--max-attempts", "3"]).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(500), Reply::status(500)]);
        let id = deliver_one(&app, &receiver).await;
        app.wait_for_status(&id, "sent").await;
        let got = receiver.wait_for(3).await;
        for pair in got.windows(2) {
            let gap = pair[1].at - pair[0].at;
            // 300 ms with ±20 % jitter.
            assert!(gap >= Duration::from_millis(240), "retried after {gap:?}");
        }
    }

    async fn while_waiting_for_a_retry_the_log_shows_when_and_why(backend) {
        let app = TestApp::spawn_with(&backend, &["--retry-schedule", "1h"]).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(502)]);
        let id = deliver_one(&app, &receiver).await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let log = loop {
            let log = app.log(&id).await;
            if log["attempts"] == 1 {
                break log;
            }
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(log["status"], "pending");
        assert_eq!(log["last_error"], "the receiver answered HTTP 502");
        let next = hookline::domain::time::parse_rfc3339(log["next_attempt_at"].as_str().unwrap()).unwrap();
        let in_ms = next - hookline::domain::time::now_ms();
        assert!((2_700_000..=4_400_000).contains(&in_ms), "next attempt in {in_ms} ms, expected about an hour");
    }

    async fn client_errors_fail_without_retry_except_408_425_and_429(backend) {
        let app = TestApp::spawn(&backend).await;
        for (code, retried) in [(400, false), (401, false), (403, false), (404, false), (422, false),
                                (408, true), (425, true), (429, true)] {
            let receiver = Receiver::start().await;
            receiver.script([Reply::status(code)]);
            let id = deliver_one(&app, &receiver).await;
            let status = if retried { "sent" } else { "failed" };
            let log = app.wait_for_status(&id, status).await;
            let want_attempts = if retried { 2 } else { 1 };
            assert_eq!(log["attempts"], want_attempts, "HTTP {code}");
            assert_eq!(log["attempt_history"][0]["response_code"], code);
        }
    }

    async fn redirects_are_not_followed_and_not_retried(backend) {
        let app = TestApp::spawn(&backend).await;
        for code in [301, 302, 307, 308] {
            let elsewhere = Receiver::start().await;
            let receiver = Receiver::start().await;
            receiver.script([Reply::status(code).header("location", elsewhere.url("/moved"))]);
            let id = deliver_one(&app, &receiver).await;
            let log = app.wait_for_status(&id, "failed").await;
            assert_eq!(log["attempts"], 1);
            assert_eq!(log["response_code"], code);
            assert!(elsewhere.received().is_empty(), "HTTP {code} was followed");
        }
    }

    async fn a_410_gone_fails_the_delivery_and_deactivates_the_webhook(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(410)]);
        let webhook = app.add_webhook("order.paid", &receiver.url("/gone")).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        let log = app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "failed").await;
        assert_eq!(log["attempts"], 1);
        let hook = app.get_json(&format!("/v1/webhooks/{webhook}")).await;
        assert_eq!(hook["is_active"], false);
        let next = app.send_event("order.paid", json!({"order_id": "o2"})).await;
        assert_eq!(next["deliveries"], json!([]), "an inactive webhook gets no new deliveries");
    }

    async fn a_429_waits_for_retry_after(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(429).header("retry-after", "1")]);
        let id = deliver_one(&app, &receiver).await;
        let log = app.wait_for_status(&id, "sent").await;
        assert_eq!(log["attempts"], 2);
        let got = receiver.wait_for(2).await;
        let gap = got[1].at - got[0].at;
        assert!(gap >= Duration::from_millis(950), "Retry-After: 1 was not honoured: {gap:?}");
    }

    async fn a_503_with_retry_after_as_a_date_is_honoured(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
        // The date has one-second resolution: the retry is due at the date as written.
        let due = httpdate::parse_http_date(&date).unwrap();
        let due = Instant::now() + due.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        receiver.script([Reply::status(503).header("retry-after", date)]);
        let id = deliver_one(&app, &receiver).await;
        app.wait_for_status(&id, "sent").await;
        let got = receiver.wait_for(2).await;
        // Measured against the date, not the first attempt, which a busy machine may delay.
        assert!(got[1].at + Duration::from_millis(20) >= due, "retried {:?} before the date", due - got[1].at);
    }

    async fn a_receiver_that_hangs_times_out_and_is_retried(backend) {
        let app = TestApp::spawn_with(&backend, &["--request-timeout", "300ms"]).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(200).after(Duration::from_secs(20))]);
        let id = deliver_one(&app, &receiver).await;
        let log = app.wait_for_status(&id, "sent").await;
        let history = attempts(&log);
        assert_eq!(history.len(), 2);
        assert_eq!(history[0]["error_class"], "timeout");
        assert_eq!(history[0]["response_code"], Value::Null);
        assert!(history[0]["duration_ms"].as_u64().unwrap() >= 300);
        assert!(history[0]["duration_ms"].as_u64().unwrap() < 5_000);
    }

    async fn a_refused_connection_is_retried_with_error_class_connect(backend) {
        let app = TestApp::spawn(&backend).await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        app.add_webhook("order.paid", &format!("http://{closed}/nobody-home")).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        let log = app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "failed").await;
        let history = attempts(&log);
        assert_eq!(history.len(), 3, "connection errors are retried up to --max-attempts");
        assert!(history.iter().all(|a| a["error_class"] == "connect"), "{history:?}");
        assert!(log["last_error"].as_str().unwrap().contains("connection"));
    }

    async fn a_tls_failure_is_retried_with_error_class_tls(backend) {
        let app = TestApp::spawn(&backend).await;
        // A plain-HTTP receiver cannot complete a TLS handshake.
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &format!("https://{}/tls", receiver.addr)).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        let log = app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "failed").await;
        let history = attempts(&log);
        assert_eq!(history.len(), 3);
        assert!(history.iter().all(|a| a["error_class"] == "tls"), "{history:?}");
    }

    async fn a_response_body_with_nul_bytes_or_invalid_utf8_is_kept_readably(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(200).body("ok\0ok\u{7f}")]);
        let id = deliver_one(&app, &receiver).await;
        let log = app.wait_for_status(&id, "sent").await;
        assert_eq!(log["attempts"], 1);
        assert_eq!(log["attempt_history"][0]["response_body"], "ok\u{fffd}ok\u{7f}");
    }

    async fn only_the_first_kilobyte_of_a_response_body_is_kept(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(500).body("x".repeat(100_000))]);
        let id = deliver_one(&app, &receiver).await;
        let log = app.wait_for_status(&id, "sent").await;
        assert_eq!(log["attempt_history"][0]["response_body"].as_str().unwrap().len(), 1024);
    }
}
