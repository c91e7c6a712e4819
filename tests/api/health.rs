//! Health endpoints and the edges of the router.

use serde_json::Value;

use crate::backend_tests;
use crate::helpers::*;

backend_tests! {
    async fn health_and_readiness_answer_200(backend) {
        let app = TestApp::spawn(&backend).await;
        let live = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(live.status(), 200);
        let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
        assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    }

    async fn unknown_routes_and_methods_answer_problems(backend) {
        let app = TestApp::spawn(&backend).await;
        assert_problem(app.get("/v1/nothing-here").send().await.unwrap(), 404).await;
        let r = app.http.put(app.url("/v1/events")).bearer_auth(&app.project.api_key).send().await.unwrap();
        assert_problem(r, 405).await;
    }

    async fn every_response_carries_a_request_id(backend) {
        let app = TestApp::spawn(&backend).await;
        let r = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert!(!r.headers()["x-request-id"].is_empty());
        let r = app.http.get(app.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
        assert_eq!(r.headers()["x-request-id"], "abc-123");
    }
}
