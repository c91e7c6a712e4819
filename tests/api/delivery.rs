//! The worker: what receivers get and how outcomes are recorded.

use std::collections::HashSet;
use std::time::Duration;

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

    async fn deliveries_in_flight_are_bounded_by_max_in_flight(backend) {
        let app = TestApp::spawn_with(&backend, &["--max-in-flight", "3"]).await;
        let receiver = Receiver::start().await;
        receiver.always(Reply::status(200).after(Duration::from_millis(300)));
        app.add_webhook("order.paid", &receiver.url("/")).await;
        for i in 0..12 {
            app.send_event("order.paid", json!({"order_id": format!("o{i}")})).await;
        }
        receiver.wait_for(12).await;
        let most = receiver.max_concurrent();
        assert!((2..=3).contains(&most), "{most} at once");
    }

    async fn one_slow_receiver_does_not_starve_the_others(backend) {
        let app = TestApp::spawn_with(&backend, &["--max-per-target", "2", "--max-in-flight", "8"]).await;
        let slow = Receiver::start().await;
        slow.always(Reply::status(200).after(Duration::from_secs(2)));
        let fast = Receiver::start().await;
        app.add_webhook("order.created", &slow.url("/slow")).await;
        app.add_webhook("order.paid", &fast.url("/fast")).await;
        for i in 0..10 {
            app.send_event("order.created", json!({"order_id": format!("s{i}")})).await;
        }
        for i in 0..10 {
            app.send_event("order.paid", json!({"order_id": format!("f{i}")})).await;
        }
        // The slow receiver needs 10 s for its share (2 at a time, 2 s each);
        // the fast one must be served long before that.
        fast.wait_for(10).await;
        assert!(slow.received().len() < 10, "the fast receiver waited for the slow one");
        assert!(slow.max_concurrent() <= 2, "--max-per-target was exceeded: {}", slow.max_concurrent());
    }

    async fn deliveries_to_one_target_reuse_connections(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/")).await;
        for i in 0..10 {
            let receipt = app.send_event("order.paid", json!({"order_id": format!("o{i}")})).await;
            app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "sent").await;
        }
        let peers: HashSet<_> = receiver.received().iter().map(|r| r.peer).collect();
        assert!(peers.len() <= 2, "10 sequential deliveries used {} connections", peers.len());
    }
}
