//! The delivery log (`/v1/webhook-logs`).

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests! {
    async fn a_sent_delivery_is_logged_with_its_response_code_and_attempt(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.always(Reply::status(200).body("thanks"));
        let webhook = app.add_webhook("order.created", &receiver.url("/in")).await;
        let receipt = app.send_event("order.created", json!({"order_id": "o"})).await;
        let delivery = receipt["deliveries"][0]["id"].as_str().unwrap();

        let log = app.wait_for_status(delivery, "sent").await;
        assert_eq!(log["id"], delivery);
        assert_eq!(log["project_id"], app.project.id.as_str());
        assert_eq!(log["event"], "order.created");
        assert_eq!(log["event_id"], receipt["id"]);
        assert_eq!(log["webhook_id"], webhook.as_str());
        assert_eq!(log["target_url"], receiver.url("/in"));
        assert_eq!(log["response_code"], 200);
        assert_eq!(log["attempts"], 1);
        assert_eq!(log["next_attempt_at"], Value::Null);
        assert_eq!(log["last_error"], Value::Null);
        assert!(log["created_at"].is_string() && log["updated_at"].is_string());
        let attempts = log["attempt_history"].as_array().unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["number"], 1);
        assert_eq!(attempts[0]["response_code"], 200);
        assert_eq!(attempts[0]["response_body"], "thanks");
        assert_eq!(attempts[0]["error_class"], Value::Null);
        assert!(log.get("data").is_none() && !log.to_string().contains("\"order_id\""), "no payload in logs");
    }

    async fn logs_can_be_filtered(backend) {
        let app = TestApp::spawn(&backend).await;
        let ok = Receiver::start().await;
        let broken = Receiver::start().await;
        broken.always(Reply::status(400));
        let good_hook = app.add_webhook("order.created", &ok.url("/")).await;
        app.add_webhook("order.created", &broken.url("/")).await;
        let paid_hook = app.add_webhook("order.paid", &ok.url("/")).await;
        let created = app.send_event("order.created", json!({"order_id": "o"})).await;
        let paid = app.send_event("order.paid", json!({"order_id": "o"})).await;
        for receipt in [&created, &paid] {
            for d in receipt["deliveries"].as_array().unwrap() {
                let id = d["id"].as_str().unwrap();
                eventually("the delivery to finish", || async { (app.log(id).await["status"] != "pending").then_some(()) })
                    .await;
            }
        }
        let ids = |v: Value| -> Vec<String> {
            v["data"].as_array().unwrap().iter().map(|l| l["webhook_id"].as_str().unwrap().to_owned()).collect()
        };
        let app = &app;
        let query = |q: String| async move { app.get_json(&format!("/v1/webhook-logs?{q}")).await };

        assert_eq!(query("".into()).await["data"].as_array().unwrap().len(), 3);
        assert_eq!(query("status=failed".into()).await["data"][0]["response_code"], 400);
        assert_eq!(query("status=failed".into()).await["data"].as_array().unwrap().len(), 1);
        assert_eq!(ids(query("event=order.paid".into()).await), [paid_hook.as_str()]);
        assert_eq!(ids(query(format!("webhook_id={good_hook}")).await), [good_hook.as_str()]);
        assert_eq!(query(format!("event_id={}", paid["id"].as_str().unwrap())).await["data"].as_array().unwrap().len(), 1);
        assert_eq!(query("since=2999-01-01T00:00:00Z".into()).await["data"], json!([]));
        assert_eq!(query("until=2000-01-01T00:00:00Z".into()).await["data"], json!([]));
        assert_eq!(query("since=2000-01-01T00:00:00Z&status=sent".into()).await["data"].as_array().unwrap().len(), 2);

        for bad in ["status=done", "webhook_id=42", "event_id=x", "since=yesterday", "until=2020-13-01T00:00:00Z"] {
            let r = app.get(&format!("/v1/webhook-logs?{bad}")).send().await.unwrap();
            assert_problem(r, 422).await;
        }
    }

    async fn a_delivery_refused_with_a_4xx_is_failed_without_retry(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.always(Reply::status(422).body("bad payload"));
        app.add_webhook("order.paid", &receiver.url("/")).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        let log = app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "failed").await;
        assert_eq!(log["response_code"], 422);
        assert_eq!(log["attempts"], 1);
        assert_eq!(log["last_error"], "the receiver answered HTTP 422");
        assert_eq!(log["attempt_history"][0]["response_body"], "bad payload");
        assert_eq!(receiver.received().len(), 1);
    }

    async fn an_unknown_delivery_is_a_404(backend) {
        let app = TestApp::spawn(&backend).await;
        assert_problem(app.get("/v1/webhook-logs/dlv_00000000000000000000000000000000").send().await.unwrap(), 404).await;
        assert_problem(app.get("/v1/webhook-logs/evt_00000000000000000000000000000000").send().await.unwrap(), 404).await;
        let r = app.post("/v1/webhook-logs/dlv_00000000000000000000000000000000/retry", &json!({})).send().await.unwrap();
        assert_problem(r, 404).await;
    }
}
