//! Faults of hookline itself: a kill -9 at any moment, SIGTERM, and manual
//! redelivery. Servers here are separate processes so they can really die.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;
use crate::process::ServerProcess;

/// Flags for process tests: a short lease so a crashed worker's deliveries
/// are taken over within seconds (the lease must outlast a request).
fn process_flags(db: &TestDatabase) -> Vec<String> {
    let mut flags = db.flags();
    flags.extend(
        [
            "--admin-token",
            ADMIN_TOKEN,
            "--allow-target-cidr",
            "127.0.0.1/32",
            "--lease",
            "2s",
            "--request-timeout",
            "1s",
            "--connect-timeout",
            "500ms",
            "--retry-schedule",
            "50ms",
            "--poll-interval",
            "100ms",
        ]
        .map(String::from),
    );
    flags
}

fn start(flags: &[String], extra: &[&str]) -> ServerProcess {
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    ServerProcess::start(&args, &[])
}

async fn add_webhook(base: &str, key: &str, url: &str) {
    let r = http_client()
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(key)
        .json(&json!({"event": "order.paid", "target_url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Event ids the receiver got, with how often each arrived.
fn arrivals(receiver: &Receiver) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in receiver.received() {
        *seen.entry(r.json()["id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    seen
}

backend_tests! {
    async fn every_accepted_event_is_delivered_after_a_kill_9_during_ingest_and_delivery(backend) {
        let db = TestDatabase::create(&backend).await;
        let flags = process_flags(&db);
        let receiver = Arc::new(Receiver::start().await);
        // Slow answers keep deliveries in flight when the process dies.
        receiver.always(Reply::status(200).after(Duration::from_millis(200)));
        let server = start(&flags, &["--max-in-flight", "8"]);
        let project = create_project(&http_client(), &server.base, "crash").await;
        add_webhook(&server.base, &project.api_key, &receiver.url("/")).await;

        // Eight clients ingest until the server dies under them.
        let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut clients = Vec::new();
        for c in 0..8 {
            let (accepted, url, key) = (accepted.clone(), server.url("/v1/events"), project.api_key.clone());
            clients.push(tokio::spawn(async move {
                let http = http_client();
                for i in 0..100 {
                    let body = json!({"event_name": "order.paid", "data": {"order_id": format!("{c}-{i}")}});
                    match http.post(&url).bearer_auth(&key).json(&body).send().await {
                        Ok(r) if r.status() == 202 => {
                            let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
                            accepted.lock().unwrap().push(id);
                        }
                        _ => return, // The server is gone.
                    }
                }
            }));
        }
        eventually("ingest and delivery to get going", || async {
            (accepted.lock().unwrap().len() >= 150 && receiver.received().len() >= 10).then_some(())
        })
        .await;
        server.kill9();
        for c in clients {
            c.await.unwrap();
        }
        let accepted: HashSet<String> = accepted.lock().unwrap().iter().cloned().collect();
        let before_restart = receiver.received().len();
        assert!(before_restart < accepted.len(), "the crash should leave work undelivered");

        receiver.always(Reply::status(200));
        let server = start(&flags, &[]);
        eventually("every accepted event to be delivered", || async {
            let seen = arrivals(&receiver);
            accepted.iter().all(|id| seen.contains_key(id)).then_some(())
        })
        .await;
        // Duplicates only where the crash hit mid-send: at most the in-flight
        // deliveries and the results not yet recorded.
        let duplicates: usize = arrivals(&receiver).values().map(|n| n - 1).sum();
        assert!(duplicates <= 16, "{duplicates} duplicates");

        // And the log agrees: nothing is left pending.
        let http = http_client();
        eventually("no delivery to be left pending", || async {
            let pending: Value = http.get(server.url("/v1/webhook-logs?status=pending"))
                .bearer_auth(&project.api_key).send().await.unwrap().json().await.unwrap();
            pending["data"].as_array().unwrap().is_empty().then_some(())
        })
        .await;
    }

    async fn sigterm_lets_an_in_flight_delivery_finish_and_exits_0(backend) {
        let db = TestDatabase::create(&backend).await;
        let flags = process_flags(&db);
        let receiver = Receiver::start().await;
        receiver.always(Reply::status(200).after(Duration::from_millis(700)));
        let server = start(&flags, &["--shutdown-grace", "10s"]);
        let project = create_project(&http_client(), &server.base, "term").await;
        add_webhook(&server.base, &project.api_key, &receiver.url("/")).await;
        let receipt: Value = http_client().post(server.url("/v1/events")).bearer_auth(&project.api_key)
            .json(&json!({"event_name": "order.paid", "data": {"order_id": "o"}})).send().await.unwrap()
            .json().await.unwrap();
        receiver.wait_for(1).await;

        let (code, _) = server.terminate();
        assert_eq!(code, Some(0));

        // The result was recorded before the exit: a new process finds it sent.
        let server = start(&flags, &[]);
        let id = receipt["deliveries"][0]["id"].as_str().unwrap();
        let log: Value = http_client().get(server.url(&format!("/v1/webhook-logs/{id}")))
            .bearer_auth(&project.api_key).send().await.unwrap().json().await.unwrap();
        assert_eq!(log["status"], "sent");
        assert_eq!(log["attempts"], 1);
        assert_eq!(receiver.received().len(), 1);
    }

    async fn sigterm_gives_back_deliveries_that_outlast_the_grace_period(backend) {
        let db = TestDatabase::create(&backend).await;
        // A long lease: only a give-back can explain a prompt redelivery.
        let mut flags = process_flags(&db);
        let lease = flags.iter().position(|f| f == "--lease").unwrap();
        flags[lease + 1] = "120s".into();
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(200).after(Duration::from_secs(30))]);
        let server = start(&flags, &["--shutdown-grace", "200ms"]);
        let project = create_project(&http_client(), &server.base, "grace").await;
        add_webhook(&server.base, &project.api_key, &receiver.url("/")).await;
        let r = http_client().post(server.url("/v1/events")).bearer_auth(&project.api_key)
            .json(&json!({"event_name": "order.paid", "data": {"order_id": "o"}})).send().await.unwrap();
        assert_eq!(r.status(), 202);
        receiver.wait_for(1).await;

        let (code, took) = server.terminate();
        assert_eq!(code, Some(0));
        assert!(took < Duration::from_secs(10), "shutdown waited for the slow receiver: {took:?}");

        let _server = start(&flags, &[]);
        let got = receiver.wait_for(2).await;
        assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    }

    async fn a_failed_delivery_can_be_retried_by_hand_and_keeps_its_id_and_history(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.always(Reply::status(400));
        app.add_webhook("order.paid", &receiver.url("/")).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        let id = receipt["deliveries"][0]["id"].as_str().unwrap();
        app.wait_for_status(id, "failed").await;

        receiver.always(Reply::status(200));
        let r = app.post(&format!("/v1/webhook-logs/{id}/retry"), &json!({})).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let answered: Value = r.json().await.unwrap();
        assert_eq!(answered["id"], id);
        assert_eq!(answered["status"], "pending");

        let log = app.wait_for_status(id, "sent").await;
        assert_eq!(log["attempts"], 2);
        let codes: Vec<&Value> = log["attempt_history"].as_array().unwrap().iter().map(|a| &a["response_code"]).collect();
        assert_eq!(codes, [&json!(400), &json!(200)]);
        let got = receiver.wait_for(2).await;
        assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
        assert_signed(&got[1], &app.project.signing_secret);
    }

    async fn a_sent_delivery_can_be_sent_again_by_hand(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/")).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        let id = receipt["deliveries"][0]["id"].as_str().unwrap();
        app.wait_for_status(id, "sent").await;
        let r = app.post(&format!("/v1/webhook-logs/{id}/retry"), &json!({})).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let got = receiver.wait_for(2).await;
        assert_eq!(got[1].header("webhook-id"), id);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while app.log(id).await["attempts"] != 2 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
