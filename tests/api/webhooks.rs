//! Managing webhooks (`/v1/webhooks`).

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests! {
    async fn a_webhook_can_be_created_read_listed_changed_and_deleted(backend) {
        let app = TestApp::spawn(&backend).await;
        let r = app.post("/v1/webhooks", &json!({"event": "order.created", "target_url": "http://127.0.0.1:9/a"}))
            .send().await.unwrap();
        assert_eq!(r.status(), 201);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let created: Value = r.json().await.unwrap();
        let id = created["id"].as_str().unwrap();
        assert!(id.starts_with("wh_"));
        assert_eq!(location, format!("/v1/webhooks/{id}"));
        assert_eq!(created["event"], "order.created");
        assert_eq!(created["target_url"], "http://127.0.0.1:9/a");
        assert_eq!(created["is_active"], true);

        let read: Value = app.get(&location).send().await.unwrap().json().await.unwrap();
        assert_eq!(read, created);

        let list: Value = app.get("/v1/webhooks").send().await.unwrap().json().await.unwrap();
        assert_eq!(list["data"], json!([created]));
        assert_eq!(list["next_cursor"], Value::Null);

        let patched = app.http.patch(app.url(&location)).bearer_auth(&app.project.api_key)
            .json(&json!({"is_active": false, "event": "order.paid"})).send().await.unwrap();
        assert_eq!(patched.status(), 200);
        let patched: Value = patched.json().await.unwrap();
        assert_eq!(patched["is_active"], false);
        assert_eq!(patched["event"], "order.paid");
        assert_eq!(patched["target_url"], created["target_url"]);

        let deleted = app.http.delete(app.url(&location)).bearer_auth(&app.project.api_key).send().await.unwrap();
        assert_eq!(deleted.status(), 204);
        assert_problem(app.get(&location).send().await.unwrap(), 404).await;
        let again = app.http.delete(app.url(&location)).bearer_auth(&app.project.api_key).send().await.unwrap();
        assert_problem(again, 404).await;
    }

    async fn a_webhook_for_an_event_outside_the_catalog_is_a_422(backend) {
        let app = TestApp::spawn(&backend).await;
        let r = app.post("/v1/webhooks", &json!({"event": "user.deleted", "target_url": "https://example.com/"})).send().await.unwrap();
        assert_eq!(problem_fields(&assert_problem(r, 422).await), ["event"]);
    }

    async fn target_urls_that_are_not_allowed_are_a_422_that_explains_why(backend) {
        let app = TestApp::spawn(&backend).await;
        let cases = [
            ("http://93.184.215.14/hook", "use https"),
            ("https://10.0.0.7/hook", "private address 10.0.0.7"),
            ("https://169.254.169.254/latest/meta-data", "link-local address 169.254.169.254"),
            ("https://127.0.0.2/", "loopback address 127.0.0.2"),
            ("https://[::1]/", "loopback address ::1"),
            ("https://0x7f000002/", "loopback address 127.0.0.2"),
            ("https://[::ffff:10.0.0.1]/", "private address 10.0.0.1"),
            ("https://user:pass@example.com/", "user name or password"),
            ("ftp://example.com/", "scheme"),
            ("not a url", "absolute URL"),
        ];
        for (url, why) in cases {
            let r = app.post("/v1/webhooks", &json!({"event": "order.paid", "target_url": url})).send().await.unwrap();
            let problem = assert_problem(r, 422).await;
            assert_eq!(problem_fields(&problem), ["target_url"], "{url}");
            let message = problem["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains(why), "{url}: {message:?} should say {why:?}");
        }
        let list: Value = app.get("/v1/webhooks").send().await.unwrap().json().await.unwrap();
        assert_eq!(list["data"], json!([]));
    }

    async fn a_change_to_a_refused_target_is_a_422_and_changes_nothing(backend) {
        let app = TestApp::spawn(&backend).await;
        let id = app.add_webhook("order.paid", "http://127.0.0.1:9/ok").await;
        let r = app.http.patch(app.url(&format!("/v1/webhooks/{id}"))).bearer_auth(&app.project.api_key)
            .json(&json!({"target_url": "https://192.168.1.1/", "is_active": false})).send().await.unwrap();
        assert_problem(r, 422).await;
        let read: Value = app.get(&format!("/v1/webhooks/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(read["target_url"], "http://127.0.0.1:9/ok");
        assert_eq!(read["is_active"], true);
    }

    async fn webhook_bodies_with_unknown_or_mistyped_fields_are_a_422(backend) {
        let app = TestApp::spawn(&backend).await;
        let cases = [
            (json!({"event": "order.paid", "target_url": "http://127.0.0.1:9/", "secret": "x"}), "secret"),
            (json!({"event": "order.paid"}), "target_url"),
            (json!({"event": "order.paid", "target_url": "http://127.0.0.1:9/", "is_active": "yes"}), "is_active"),
            (json!(["order.paid"]), ""),
        ];
        for (body, field) in cases {
            let r = app.post("/v1/webhooks", &body).send().await.unwrap();
            let problem = assert_problem(r, 422).await;
            assert_eq!(problem_fields(&problem), [field], "{body}");
            assert!(!problem.to_string().contains("yes\""), "the error echoes the value");
        }
    }

    async fn a_project_may_have_max_webhooks_per_project_and_one_more_is_a_422_naming_the_limit(backend) {
        let app = TestApp::spawn_with(&backend, &["--max-webhooks-per-project", "3"]).await;
        let body = |i: usize| json!({"event": "order.paid", "target_url": format!("http://127.0.0.1:9/{i}"), "is_active": i != 1});
        let mut ids = Vec::new();
        for i in 0..3 {
            let r = app.post("/v1/webhooks", &body(i)).send().await.unwrap();
            assert_eq!(r.status(), 201);
            ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
        }

        let problem = assert_problem(app.post("/v1/webhooks", &body(3)).send().await.unwrap(), 422).await;
        assert_eq!(problem["type"], "/problems/webhook-limit-reached");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains('3') && detail.contains("--max-webhooks-per-project"), "{detail}");
        assert_eq!(app.get_json("/v1/webhooks").await["data"].as_array().unwrap().len(), 3);

        // The limit is per project, and a deleted webhook makes room.
        let other = app.other_project().await;
        let r = app.http.post(app.url("/v1/webhooks")).bearer_auth(&other.api_key).json(&body(4)).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let r = app.http.delete(app.url(&format!("/v1/webhooks/{}", ids[0]))).bearer_auth(&app.project.api_key)
            .send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(app.post("/v1/webhooks", &body(5)).send().await.unwrap().status(), 201);
    }

    async fn concurrent_creations_never_pass_the_webhook_limit(backend) {
        let app = TestApp::spawn_with(&backend, &["--max-webhooks-per-project", "5"]).await;
        let creations = (0..20).map(|i| {
            app.post("/v1/webhooks", &json!({"event": "order.paid", "target_url": format!("http://127.0.0.1:9/{i}")}))
                .send()
        });
        let statuses: Vec<u16> =
            futures_util::future::join_all(creations).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 5, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 15, "{statuses:?}");
        assert_eq!(app.get_json("/v1/webhooks").await["data"].as_array().unwrap().len(), 5);
    }

    async fn webhook_lists_are_paginated(backend) {
        let app = TestApp::spawn(&backend).await;
        for i in 0..3 {
            app.add_webhook("order.paid", &format!("http://127.0.0.1:9/{i}")).await;
        }
        let first: Value = app.get("/v1/webhooks?limit=2").send().await.unwrap().json().await.unwrap();
        assert_eq!(first["data"].as_array().unwrap().len(), 2);
        let cursor = first["next_cursor"].as_str().unwrap();
        let second: Value = app.get(&format!("/v1/webhooks?limit=2&cursor={cursor}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(second["data"].as_array().unwrap().len(), 1);
        assert_eq!(second["next_cursor"], Value::Null);
        assert_eq!(second["data"][0]["target_url"], "http://127.0.0.1:9/0");
    }
}
