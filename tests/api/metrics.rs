//! `GET /metrics`. The recorder is process-wide and tests run in parallel, so
//! counters are checked for growing by at least what this test caused.

use serde_json::json;

use crate::backend_tests;
use crate::helpers::*;

/// The value of one sample (`name{labels}`) in a Prometheus text page; 0 when absent.
fn sample(page: &str, series: &str) -> f64 {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

async fn scrape(app: &TestApp) -> String {
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    r.text().await.unwrap()
}

backend_tests! {
    async fn metrics_count_ingest_answers_events_and_delivery_outcomes(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        receiver.script([Reply::status(503)]);
        app.add_webhook("order.paid", &receiver.url("/hook")).await;
        let before = scrape(&app).await;

        let receipt = app.send_event("order.paid", json!({"order_id": "ord_1"})).await;
        let unauthenticated = app.http.post(app.url("/v1/events")).json(&json!({})).send().await.unwrap();
        assert_eq!(unauthenticated.status(), 401);
        app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "sent").await;
        let after = scrape(&app).await;

        let grew = |series: &str, by: f64| {
            let (b, a) = (sample(&before, series), sample(&after, series));
            assert!(a - b >= by, "{series} went from {b} to {a}, expected at least +{by}\n{after}");
        };
        grew(r#"hookline_ingest_requests_total{status="202"}"#, 1.0);
        grew(r#"hookline_ingest_requests_total{status="401"}"#, 1.0);
        grew(r#"hookline_events_accepted_total{event="order.paid"}"#, 1.0);
        grew(r#"hookline_deliveries_total{outcome="retry"}"#, 1.0);
        grew(r#"hookline_deliveries_total{outcome="sent"}"#, 1.0);
        grew("hookline_retries_total", 1.0);
        grew("hookline_delivery_attempt_duration_seconds_count", 2.0);
        assert!(after.contains("# TYPE hookline_delivery_attempt_duration_seconds histogram"), "{after}");
        assert!(after.contains(r#"hookline_delivery_attempt_duration_seconds_bucket{le="0.005"}"#), "{after}");
        for state in ["pending", "due", "leased"] {
            assert!(after.contains(&format!("hookline_queue_depth{{state=\"{state}\"}} ")), "{after}");
        }
        assert!(after.contains("hookline_oldest_pending_age_seconds "), "{after}");
    }
}

#[tokio::test]
async fn a_worker_only_process_serves_health_and_metrics_but_not_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("hookline.db").display());
    let settings =
        hookline::Settings::from_flags(["--listen", "127.0.0.1:0", "--role", "worker", "--database-url", &database])
            .unwrap();
    let app = hookline::Application::build(settings).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let http = http_client();
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("hookline_queue_depth"));
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    assert_problem(http.get(format!("{base}/v1/events")).send().await.unwrap(), 404).await;
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
