//! The webhook lifecycle (SPEC §9): hookline disables a dead webhook and
//! tells the project with a signed `webhook.disabled` event; replay sends
//! deliveries again in bulk, with a fresh attempt budget and no duplicates;
//! a test delivery reaches one webhook, even a disabled one.

use std::time::Duration;

use hookline::domain::time::{now_ms, parse_rfc3339, to_rfc3339};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

/// Flags under which a webhook failing for 300 ms is disabled: fast retries,
/// enough attempts to outlast it, and a short circuit cool-down so that the
/// probes of an open circuit keep recording failures.
const DISABLE_FAST: &[&str] =
    &["--disable-after", "300ms", "--retry-schedule", "20ms", "--max-attempts", "100", "--breaker-cooldown", "20ms"];

/// Waits until the webhook's view satisfies `done`, and returns it.
async fn wait_for_webhook(app: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("webhook {id} {what}"), || async {
        Some(app.get_json(&format!("/v1/webhooks/{id}")).await).filter(|hook| done(hook))
    })
    .await
}

async fn replay(app: &TestApp, body: Value) -> Value {
    let r = app.post("/v1/webhook-logs/replay", &body).send().await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// A time just before now, as a replay's `since`.
fn a_moment_ago() -> String {
    to_rfc3339(now_ms() - 1_000)
}

fn delivery_of(receipt: &Value) -> String {
    receipt["deliveries"][0]["id"].as_str().unwrap().to_owned()
}

/// Asserts that `got` is the signed `webhook.disabled` event naming `hook`
/// (its view), and returns the event's data.
fn assert_disabled_notice(app: &TestApp, got: &Received, hook: &Value) -> Value {
    assert_signed(got, &app.project.signing_secret);
    assert_eq!(got.header("x-event-name"), "webhook.disabled");
    let body = got.json();
    assert_eq!(body["type"], "webhook.disabled");
    let data = &body["data"];
    assert_eq!(data["webhook_id"], hook["id"]);
    assert_eq!(data["event"], hook["event"]);
    assert_eq!(data["target_url"], hook["target_url"]);
    assert_eq!(data["reason"], hook["disabled_reason"]);
    assert_eq!(data["disabled_at"], hook["disabled_at"]);
    data.clone()
}

backend_tests! {
    async fn a_webhook_failing_for_longer_than_disable_after_is_disabled_and_the_project_is_told(backend) {
        let app = TestApp::spawn_with(&backend, DISABLE_FAST).await;
        let dead = Receiver::start().await;
        dead.always(Reply::status(500));
        let watcher = Receiver::start().await;
        let hook = app.add_webhook("order.created", &dead.url("/dead")).await;
        app.add_webhook("webhook.disabled", &watcher.url("/ops")).await;
        let delivery = delivery_of(&app.send_event("order.created", json!({"order_id": "o"})).await);

        let hook = wait_for_webhook(&app, &hook, "disabled", |h| h["is_active"] == false).await;

        let reason = hook["disabled_reason"].as_str().expect("a reason");
        assert!(reason.contains("failed, for longer than 300ms"), "{reason}");
        let log = app.wait_for_status(&delivery, "failed").await;
        assert!(log["last_error"].as_str().unwrap().contains("disabled the webhook"), "{log:#}");
        let history = log["attempt_history"].as_array().unwrap();
        let first = parse_rfc3339(history[0]["started_at"].as_str().unwrap()).unwrap();
        let disabled_at = parse_rfc3339(hook["disabled_at"].as_str().unwrap()).unwrap();
        assert!(disabled_at - first > 300, "disabled {} ms after the first failure", disabled_at - first);
        assert!(history.len() > 1 && history.len() < 100, "{} attempts", history.len());

        let got = watcher.wait_for(1).await;
        assert_eq!(got.len(), 1);
        assert_disabled_notice(&app, &got[0], &hook);
        let notice = app.wait_for_status(got[0].header("webhook-id"), "sent").await;
        assert_eq!((notice["event"].as_str(), notice["status"].as_str()), (Some("webhook.disabled"), Some("sent")));
    }

    async fn a_410_disables_the_webhook_at_once_and_tells_the_others_but_never_itself(backend) {
        let app = TestApp::spawn(&backend).await;
        let gone = Receiver::start().await;
        gone.script([Reply::status(410)]);
        let watcher = Receiver::start().await;
        let hook = app.add_webhook("order.paid", &gone.url("/gone")).await;
        let watcher_hook = app.add_webhook("webhook.disabled", &watcher.url("/ops")).await;
        let delivery = delivery_of(&app.send_event("order.paid", json!({"order_id": "o"})).await);

        let log = app.wait_for_status(&delivery, "failed").await;
        assert_eq!(log["attempts"], 1);
        let view = wait_for_webhook(&app, &hook, "disabled", |h| h["is_active"] == false).await;
        assert!(view["disabled_reason"].as_str().unwrap().contains("410 Gone"), "{view:#}");
        let got = watcher.wait_for(1).await;
        assert_disabled_notice(&app, &got[0], &view);

        // The watcher itself answers a test with 410: it is disabled, and its
        // own webhook.disabled goes to the project's other subscribers (none
        // left active), never to itself.
        let second = Receiver::start().await;
        let second_hook = app.add_webhook("webhook.disabled", &second.url("/ops2")).await;
        watcher.script([Reply::status(410)]);
        let r = app.post(&format!("/v1/webhooks/{watcher_hook}/test"), &json!({})).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let watcher_view = wait_for_webhook(&app, &watcher_hook, "disabled", |h| h["is_active"] == false).await;
        let got = second.wait_for(1).await;
        assert_disabled_notice(&app, &got[0], &watcher_view);
        assert_eq!(watcher.received().len(), 2, "the first notice and the test, nothing about itself");
        assert_eq!(app.get_json(&format!("/v1/webhooks/{second_hook}")).await["is_active"], true);

        // Enabled again: both fields are cleared, and events flow again.
        let r = app.http.patch(app.url(&format!("/v1/webhooks/{hook}"))).bearer_auth(&app.project.api_key)
            .json(&json!({"is_active": true})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let enabled: Value = r.json().await.unwrap();
        assert_eq!((enabled["is_active"].clone(), enabled["disabled_reason"].clone(), enabled["disabled_at"].clone()),
                   (json!(true), Value::Null, Value::Null));
        let next = delivery_of(&app.send_event("order.paid", json!({"order_id": "o2"})).await);
        app.wait_for_status(&next, "sent").await;
    }

    async fn clients_cannot_send_webhook_events_but_webhooks_may_subscribe_to_them(backend) {
        let app = TestApp::spawn(&backend).await;
        for name in ["webhook.disabled", "webhook.test", "webhook.anything"] {
            let r = app.post("/v1/events", &json!({"event_name": name, "data": {}})).send().await.unwrap();
            let problem = assert_problem(r, 422).await;
            assert_eq!(problem_fields(&problem), ["event_name"], "{name}");
            assert!(problem.to_string().contains("reserved"), "{problem}");
        }
        app.add_webhook("webhook.disabled", "http://127.0.0.1:9/ops").await;
        let r = app.post("/v1/webhooks", &json!({"event": "webhook.test", "target_url": "https://example.com/t"}))
            .send().await.unwrap();
        assert_eq!(problem_fields(&assert_problem(r, 422).await), ["event"]);
        let fresh = app.get_json("/v1/webhooks").await;
        assert_eq!(fresh["data"][0]["disabled_reason"], Value::Null);
        assert_eq!(fresh["data"][0]["disabled_at"], Value::Null);
    }

    async fn a_replay_dry_run_counts_and_changes_nothing(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(400), Reply::status(400)]);
        let since = a_moment_ago();
        app.add_webhook("order.paid", &receiver.url("/h")).await;
        let first = delivery_of(&app.send_event("order.paid", json!({"order_id": "a"})).await);
        let second = delivery_of(&app.send_event("order.paid", json!({"order_id": "b"})).await);
        app.wait_for_status(&first, "failed").await;
        app.wait_for_status(&second, "failed").await;

        let counted = replay(&app, json!({"since": since, "dry_run": true})).await;

        assert_eq!(counted, json!({"matched": 2, "requeued": 0}));
        for id in [&first, &second] {
            let log = app.log(id).await;
            assert_eq!((log["status"].as_str(), log["attempts"].as_u64()), (Some("failed"), Some(1)));
        }
        // A real replay of one of them afterwards: it alone is sent again.
        let event_id = app.log(&second).await["event_id"].clone();
        let one = replay(&app, json!({"since": since, "event_id": event_id})).await;
        assert_eq!(one, json!({"matched": 1, "requeued": 1}));
        app.wait_for_status(&second, "sent").await;
        assert_eq!(receiver.received().len(), 3);
        assert_eq!(app.log(&first).await["status"], "failed");
    }

    async fn a_replayed_delivery_keeps_its_id_and_history_and_gets_a_fresh_attempt_budget(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(500), Reply::status(500), Reply::status(500)]);
        let since = a_moment_ago();
        app.add_webhook("order.paid", &receiver.url("/h")).await;
        let id = delivery_of(&app.send_event("order.paid", json!({"order_id": "o"})).await);
        let failed = app.wait_for_status(&id, "failed").await;
        assert_eq!(failed["attempts"], 3, "--max-attempts 3 used up");
        // Two more failures after the replay, then a success: only a fresh budget of three reaches it.
        receiver.script([Reply::status(500), Reply::status(500)]);

        let replayed = replay(&app, json!({"since": since, "status": "failed"})).await;

        assert_eq!(replayed, json!({"matched": 1, "requeued": 1}));
        let log = app.wait_for_status(&id, "sent").await;
        assert_eq!(log["attempts"], 6);
        let numbers: Vec<u64> = log["attempt_history"].as_array().unwrap().iter().map(|a| a["number"].as_u64().unwrap()).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
        let got = receiver.wait_for(6).await;
        assert!(got.iter().all(|r| r.header("webhook-id") == id), "the same webhook-id on every attempt");
        assert_eq!(got[5].body, got[0].body);
        assert_signed(&got[5], &app.project.signing_secret);
    }

    async fn the_same_replay_twice_in_a_row_sends_nothing_twice(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let since = a_moment_ago();
        app.add_webhook("order.paid", &receiver.url("/h")).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(delivery_of(&app.send_event("order.paid", json!({"order_id": format!("o{i}")})).await));
        }
        for id in &ids {
            app.wait_for_status(id, "sent").await;
        }
        // The replayed sends take a while, so they are still pending when the second replay comes.
        receiver.always(Reply::status(200).after(Duration::from_millis(500)));

        let first = replay(&app, json!({"since": since})).await;
        let second = replay(&app, json!({"since": since})).await;

        assert_eq!(first, json!({"matched": 3, "requeued": 3}));
        assert_eq!(second, json!({"matched": 3, "requeued": 0}), "the first replay's deliveries are pending");
        for id in &ids {
            let log = app.wait_for_status(id, "sent").await;
            assert_eq!(log["attempts"], 2, "sent once more, not twice");
        }
        assert_eq!(receiver.received().len(), 6);
    }

    async fn replay_filters_never_reach_another_projects_deliveries(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.always(Reply::status(400));
        let since = a_moment_ago();
        let other = app.other_project().await;
        let as_other = |path: &str, body: Value| app.http.post(app.url(path)).bearer_auth(&other.api_key).json(&body);
        let r = as_other("/v1/webhooks", json!({"event": "order.paid", "target_url": receiver.url("/theirs")})).send().await.unwrap();
        let their_hook = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        let r = as_other("/v1/events", json!({"event_name": "order.paid", "data": {"order_id": "t"}})).send().await.unwrap();
        let theirs: Value = r.json().await.unwrap();
        let (their_event, their_delivery) = (theirs["id"].as_str().unwrap().to_owned(), delivery_of(&theirs));
        app.add_webhook("order.paid", &receiver.url("/ours")).await;
        let ours = delivery_of(&app.send_event("order.paid", json!({"order_id": "o"})).await);
        app.wait_for_status(&ours, "failed").await;
        let their_log = |app: &TestApp| {
            let (http, url, key) = (app.http.clone(), app.url(&format!("/v1/webhook-logs/{their_delivery}")), other.api_key.clone());
            async move { http.get(url).bearer_auth(key).send().await.unwrap().json::<Value>().await.unwrap() }
        };
        eventually("their delivery failed", || async { (their_log(&app).await["status"] == "failed").then_some(()) }).await;

        for filter in [json!({"webhook_id": their_hook}), json!({"event_id": their_event})] {
            let mut body = filter.clone();
            body["since"] = json!(since);
            assert_eq!(replay(&app, body).await, json!({"matched": 0, "requeued": 0}), "{filter}");
        }
        assert_eq!(replay(&app, json!({"since": since})).await, json!({"matched": 1, "requeued": 1}), "ours only");

        let log = app.wait_for_status(&ours, "failed").await;
        assert_eq!(log["attempts"], 2);
        let theirs = their_log(&app).await;
        assert_eq!((theirs["status"].as_str(), theirs["attempts"].as_u64()), (Some("failed"), Some(1)));
        assert_eq!(receiver.received().iter().filter(|r| r.path == "/theirs").count(), 1);
    }

    async fn a_replay_needs_since_and_valid_filters(backend) {
        let app = TestApp::spawn(&backend).await;
        let cases = [
            (json!({}), "since"),
            (json!({"since": "yesterday"}), "since"),
            (json!({"since": "2026-01-01T00:00:00Z", "status": "lost"}), "status"),
            (json!({"since": "2026-01-01T00:00:00Z", "webhook_id": "wh_nope"}), "webhook_id"),
            (json!({"since": "2026-01-01T00:00:00Z", "dry_run": "yes"}), "dry_run"),
            (json!({"since": "2026-01-01T00:00:00Z", "colour": "red"}), "colour"),
        ];
        for (body, field) in cases {
            let r = app.post("/v1/webhook-logs/replay", &body).send().await.unwrap();
            assert_eq!(problem_fields(&assert_problem(r, 422).await), [field], "{body}");
        }
    }

    async fn a_test_delivery_reaches_its_webhook_whatever_its_event_signed_and_logged(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let hook = app.add_webhook("order.paid", &receiver.url("/h")).await;
        app.add_webhook("order.paid", &Receiver::start().await.url("/another")).await;

        let r = app.post(&format!("/v1/webhooks/{hook}/test"), &json!({})).send().await.unwrap();

        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        let delivery = body["delivery_id"].as_str().unwrap().to_owned();
        assert!(delivery.starts_with("dlv_"));
        let got = receiver.wait_for(1).await;
        assert_signed(&got[0], &app.project.signing_secret);
        assert_eq!(got[0].header("x-event-name"), "webhook.test");
        assert_eq!(got[0].header("webhook-id"), delivery);
        let event = got[0].json();
        assert_eq!(event["type"], "webhook.test");
        assert_eq!(event["data"]["webhook_id"], hook.as_str());
        assert!(parse_rfc3339(event["data"]["sent_at"].as_str().unwrap()).is_some());
        let log = app.wait_for_status(&delivery, "sent").await;
        assert_eq!((log["event"].as_str(), log["webhook_id"].as_str()), (Some("webhook.test"), Some(hook.as_str())));
        let only = app.get_json(&format!("/v1/events/{}", log["event_id"].as_str().unwrap())).await;
        assert_eq!(only["deliveries"].as_array().unwrap().len(), 1, "to that webhook only");

        let other = app.other_project().await;
        let r = app.http.post(app.url(&format!("/v1/webhooks/{hook}/test"))).bearer_auth(&other.api_key).send().await.unwrap();
        assert_problem(r, 404).await;
        let r = app.post("/v1/webhooks/wh_0123/test", &json!({})).send().await.unwrap();
        assert_problem(r, 404).await;
    }

    async fn a_test_delivery_reaches_a_disabled_webhook(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let hook = app.add_webhook("order.paid", &receiver.url("/h")).await;
        let r = app.http.patch(app.url(&format!("/v1/webhooks/{hook}"))).bearer_auth(&app.project.api_key)
            .json(&json!({"is_active": false})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let none = app.send_event("order.paid", json!({"order_id": "o"})).await;
        assert_eq!(none["deliveries"], json!([]));

        let r = app.post(&format!("/v1/webhooks/{hook}/test"), &json!({})).send().await.unwrap();

        assert_eq!(r.status(), 202);
        let delivery = r.json::<Value>().await.unwrap()["delivery_id"].as_str().unwrap().to_owned();
        let log = app.wait_for_status(&delivery, "sent").await;
        assert_eq!(log["attempts"], 1);
        let got = receiver.wait_for(1).await;
        assert_eq!(got[0].json()["type"], "webhook.test");
        assert_eq!(app.get_json(&format!("/v1/webhooks/{hook}")).await["is_active"], false, "a test enables nothing");
    }
}
