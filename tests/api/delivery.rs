//! The worker: what receivers get and how outcomes are recorded.

use serde_json::json;

use crate::backend_tests;
use crate::helpers::*;

backend_tests! {
    async fn each_webhook_gets_its_own_delivery_id_and_the_same_body(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/one")).await;
        app.add_webhook("order.paid", &receiver.url("/two")).await;
        app.send_event("order.paid", json!({"order_id": "o", "amount": 1})).await;
        let got = receiver.wait_for(2).await;
        assert_ne!(got[0].header("webhook-id"), got[1].header("webhook-id"));
        assert_eq!(got[0].body, got[1].body);
        for r in &got {
            assert_signed(r, &app.project.signing_secret);
        }
    }

    async fn a_deleted_webhook_gets_no_more_deliveries(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let hook = app.add_webhook("order.paid", &receiver.url("/")).await;
        let r = app.http.delete(app.url(&format!("/v1/webhooks/{hook}"))).bearer_auth(&app.project.api_key).send().await.unwrap();
        assert_eq!(r.status(), 204);
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        assert_eq!(receipt["deliveries"], json!([]));
    }

    async fn a_clean_stop_leaves_no_delivery_behind(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/")).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "sent").await;
        app.stop().await;
    }
}
