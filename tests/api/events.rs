//! Ingest (`POST /v1/events`) and reading events back.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

/// POSTs `text` as JSON, exactly as written, as the app's project.
async fn post_text(app: &TestApp, path: &str, text: &str) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(&app.project.api_key)
        .header("content-type", "application/json")
        .body(text.to_owned())
        .send()
        .await
        .unwrap()
}

backend_tests! {
    async fn integer_fields_take_only_integers_that_fit_a_signed_64_bit_integer(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.created", &receiver.url("/")).await;
        let event = |amount: &str| {
            format!(r#"{{"event_name": "order.created", "data": {{"order_id": "o", "total_amount": {amount}}}}}"#)
        };
        for amount in ["1e300", "18446744073709551616", "9223372036854775808", "1E2", "1.0"] {
            let problem = assert_problem(post_text(&app, "/v1/events", &event(amount)).await, 422).await;
            assert_eq!(problem_fields(&problem), ["data.total_amount"], "{amount}");
            assert!(problem["errors"][0]["message"].as_str().unwrap().contains("9223372036854775807"), "{problem}");
        }

        let r = post_text(&app, "/v1/events", &event("9223372036854775807")).await;
        assert_eq!(r.status(), 202);
        let got = receiver.wait_for(1).await;
        let body = String::from_utf8_lossy(&got[0].body);
        assert!(body.contains(r#""total_amount":9223372036854775807"#), "delivered as {body}");
        assert_eq!(app.get_json("/v1/events").await["data"].as_array().unwrap().len(), 1);
    }

    async fn an_event_is_delivered_to_its_webhook_signed_with_both_schemes(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let webhook = app.add_webhook("order.created", &receiver.url("/hooks/orders")).await;

        let data = json!({"order_id": "ord_1", "currency": "EUR", "total_amount": 1999,
                          "items": [{"sku": "A-1", "quantity": 2, "unit_price": 999}]});
        let receipt = app.send_event("order.created", data.clone()).await;

        let got = receiver.wait_for(1).await;
        let got = &got[0];
        assert_eq!(got.path, "/hooks/orders");
        assert_eq!(got.header("content-type"), "application/json");
        assert!(got.header("user-agent").starts_with("hookline/"));
        assert_eq!(got.header("x-event-name"), "order.created");
        let delivery = &receipt["deliveries"][0];
        assert_eq!(delivery["webhook_id"], webhook.as_str());
        assert_eq!(got.header("webhook-id"), delivery["id"].as_str().unwrap());
        let body = got.json();
        assert_eq!(body, json!({"id": receipt["id"], "type": "order.created",
                                "timestamp": receipt["created_at"], "data": data}));
        assert_signed(got, &app.project.signing_secret);
        let ts: i64 = got.header("webhook-timestamp").parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((now - ts).abs() < 60);
    }

    async fn an_accepted_event_answers_202_with_one_pending_delivery_per_active_webhook(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let a = app.add_webhook("order.created", &receiver.url("/a")).await;
        let b = app.add_webhook("order.created", &receiver.url("/b")).await;
        app.add_webhook("order.paid", &receiver.url("/paid")).await;
        let inactive = app
            .post("/v1/webhooks", &json!({"event": "order.created", "target_url": receiver.url("/off"), "is_active": false}))
            .send().await.unwrap();
        assert_eq!(inactive.status(), 201);

        let receipt = app.send_event("order.created", json!({"order_id": "o"})).await;

        assert!(receipt["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(receipt["event_name"], "order.created");
        let deliveries = receipt["deliveries"].as_array().unwrap();
        let mut hooks: Vec<&str> = deliveries.iter().map(|d| d["webhook_id"].as_str().unwrap()).collect();
        hooks.sort();
        let mut want = vec![a.as_str(), b.as_str()];
        want.sort();
        assert_eq!(hooks, want);
        assert!(deliveries.iter().all(|d| d["status"] == "pending" && d["id"].as_str().unwrap().starts_with("dlv_")));
        let got = receiver.wait_for(2).await;
        let mut paths: Vec<String> = got.iter().map(|r| r.path.clone()).collect();
        paths.sort();
        assert_eq!(paths, ["/a", "/b"]);
    }

    async fn an_event_without_webhooks_is_accepted_with_no_deliveries(backend) {
        let app = TestApp::spawn(&backend).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o", "amount": 5})).await;
        assert_eq!(receipt["deliveries"], json!([]));
    }

    async fn ingest_without_a_valid_api_key_is_refused_with_401(backend) {
        let app = TestApp::spawn(&backend).await;
        let body = json!({"event_name": "order.paid", "data": {"order_id": "o"}});
        let url = app.url("/v1/events");
        let none = app.http.post(&url).json(&body).send().await.unwrap();
        let problem = assert_problem(none, 401).await;
        assert!(problem["detail"].as_str().unwrap().contains("API key"));
        let unknown = app.http.post(&url).bearer_auth("hlk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").json(&body).send().await.unwrap();
        assert_problem(unknown, 401).await;
        let garbage = app.http.post(&url).bearer_auth("not a key").json(&body).send().await.unwrap();
        assert_problem(garbage, 401).await;
        let via_header = app.http.post(&url).header("x-api-key", &app.project.api_key).json(&body).send().await.unwrap();
        assert_eq!(via_header.status(), 202);
    }

    async fn malformed_json_is_a_400(backend) {
        let app = TestApp::spawn(&backend).await;
        let r = app.http.post(app.url("/v1/events")).bearer_auth(&app.project.api_key)
            .header("content-type", "application/json").body(r#"{"event_name": "order.paid", "data": {"#)
            .send().await.unwrap();
        assert_problem(r, 400).await;
    }

    async fn a_body_that_is_not_json_is_a_415(backend) {
        let app = TestApp::spawn(&backend).await;
        for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
            let mut req = app.http.post(app.url("/v1/events")).bearer_auth(&app.project.api_key)
                .body(r#"{"event_name": "order.paid", "data": {"order_id": "o"}}"#);
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            assert_problem(req.send().await.unwrap(), 415).await;
        }
    }

    async fn a_huge_body_is_a_413_and_the_server_stays_healthy(backend) {
        let app = TestApp::spawn(&backend).await;
        let huge = format!(r#"{{"event_name": "order.paid", "data": {{"order_id": "{}"}}}}"#, "x".repeat(8 << 20));
        let r = app.http.post(app.url("/v1/events")).bearer_auth(&app.project.api_key)
            .header("content-type", "application/json").body(huge).send().await;
        // The server may answer 413 before reading everything and close the connection.
        if let Ok(r) = r {
            assert_eq!(r.headers()["connection"], "close", "the unread rest of the body ends the connection");
            assert_problem(r, 413).await;
        }
        assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
        app.send_event("order.paid", json!({"order_id": "still works"})).await;
    }

    async fn data_over_the_size_limit_is_a_413(backend) {
        let app = TestApp::spawn_with(&backend, &["--max-data-bytes", "1024"]).await;
        let mut metadata = serde_json::Map::new();
        for i in 0..10 {
            metadata.insert(format!("k{i}"), Value::String("v".repeat(200)));
        }
        let r = app.post("/v1/events", &json!({"event_name": "order.paid", "data": {"order_id": "o", "metadata": metadata}}))
            .send().await.unwrap();
        let problem = assert_problem(r, 413).await;
        assert!(problem["detail"].as_str().unwrap().contains("1024"));
    }

    async fn absurdly_nested_json_is_refused_cleanly(backend) {
        let app = TestApp::spawn(&backend).await;
        // Within the body size limit, so that it is parsed (and refused at 128 levels).
        let nested = format!(r#"{{"event_name": "order.paid", "data": {}{}}}"#, "[".repeat(30_000), "]".repeat(30_000));
        let r = app.http.post(app.url("/v1/events")).bearer_auth(&app.project.api_key)
            .header("content-type", "application/json").body(nested).send().await.unwrap();
        assert_problem(r, 400).await;
        assert_eq!(app.http.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    }

    async fn an_event_name_outside_the_catalog_is_a_422(backend) {
        let app = TestApp::spawn(&backend).await;
        let r = app.post("/v1/events", &json!({"event_name": "order.refunded", "data": {"order_id": "o"}})).send().await.unwrap();
        let problem = assert_problem(r, 422).await;
        assert_eq!(problem_fields(&problem), ["event_name"]);
        assert!(problem["errors"][0]["message"].as_str().unwrap().contains("order.created, order.paid"));
    }

    async fn data_that_breaks_the_schema_is_a_422_naming_each_field(backend) {
        let app = TestApp::spawn(&backend).await;
        let cases = [
            (json!({"event_name": "order.paid", "data": ["not", "an", "object"]}), vec!["data"]),
            (json!({"event_name": "order.paid"}), vec!["data"]),
            (json!({"data": {"order_id": "o"}}), vec!["event_name"]),
            (json!({"event_name": 7, "data": {"order_id": "o"}}), vec!["event_name"]),
            (json!({"event_name": "order.paid", "data": {"order_id": "o"}, "extra": 1}), vec!["extra"]),
            (json!({"event_name": "order.paid", "data": {}}), vec!["data.order_id"]),
            (json!({"event_name": "order.paid", "data": {"order_id": "o", "card_number": "4242"}}), vec!["data.card_number"]),
            (json!({"event_name": "order.paid", "data": {"order_id": "o", "amount": "12"}}), vec!["data.amount"]),
            (json!({"event_name": "order.created", "data": {"order_id": "o", "currency": "euro", "total_amount": -1}}),
             vec!["data.currency", "data.total_amount"]),
            (json!({"event_name": "order.created", "data": {"order_id": "o", "items": [{"sku": "a", "quantity": 1}]}}),
             vec!["data.items[0].unit_price"]),
            (json!({"event_name": "order.paid", "data": {"order_id": "o", "paid_at": "last tuesday"}}), vec!["data.paid_at"]),
        ];
        for (body, fields) in cases {
            let r = app.post("/v1/events", &body).send().await.unwrap();
            let problem = assert_problem(r, 422).await;
            assert_eq!(problem_fields(&problem), fields, "{body}");
            let text = problem.to_string();
            assert!(!text.contains("4242") && !text.contains("last tuesday"), "the error echoes data: {text}");
        }
        let events: Value = app.get("/v1/events").send().await.unwrap().json().await.unwrap();
        assert_eq!(events["data"], json!([]), "a refused event must not be stored");
    }

    async fn events_can_be_read_back_with_their_data_and_deliveries(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/")).await;
        let data = json!({"order_id": "o-9", "payment_id": "pay_1", "amount": 500, "paid_at": "2026-11-30T08:00:00Z"});
        let receipt = app.send_event("order.paid", data.clone()).await;
        let id = receipt["id"].as_str().unwrap();

        let event: Value = app.get(&format!("/v1/events/{id}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(event["id"], id);
        assert_eq!(event["event_name"], "order.paid");
        assert_eq!(event["data"], data);
        assert_eq!(event["created_at"], receipt["created_at"]);
        assert_eq!(event["deliveries"][0]["id"], receipt["deliveries"][0]["id"]);

        let r = app.get("/v1/events/evt_00000000000000000000000000000000").send().await.unwrap();
        assert_problem(r, 404).await;
        assert_problem(app.get("/v1/events/nonsense").send().await.unwrap(), 404).await;
    }

    async fn event_lists_are_paginated_newest_first(backend) {
        let app = TestApp::spawn(&backend).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(app.send_event("order.paid", json!({"order_id": format!("o{i}")})).await["id"].clone());
        }
        ids.reverse();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => "/v1/events?limit=2".to_owned(),
                Some(c) => format!("/v1/events?limit=2&cursor={c}"),
            };
            let page: Value = app.get(&path).send().await.unwrap().json().await.unwrap();
            let data = page["data"].as_array().unwrap();
            assert!(data.len() <= 2);
            seen.extend(data.iter().map(|e| e["id"].clone()));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, ids);
        for bad in ["limit=0", "limit=201", "limit=x", "cursor=bogus"] {
            assert_problem(app.get(&format!("/v1/events?{bad}")).send().await.unwrap(), 422).await;
        }
    }

    async fn validation_errors_name_a_field_only_when_its_key_is_plain(backend) {
        let app = TestApp::spawn(&backend).await;
        let secret = "PII_john@example.com";
        // (the body, the field and message of its one error)
        let cases = [
            (json!({"event_name": "order.paid", "data": {"order_id": "o", secret: 1}}), "data", "has an unknown field"),
            (json!({"event_name": "order.paid", "data": {"order_id": "o", "colour": 1}}), "data.colour", "unknown field"),
            (json!({"event_name": "order.paid", "data": {"order_id": "o"}, secret: 1}), "", "the body has an unknown field"),
            (json!({"event_name": "order.paid", "data": {"order_id": "o", "metadata": {secret: 5}}}),
             "data.metadata", "has a field that must be of type string"),
            (json!({"event_name": "order.paid", "data": {"order_id": "o", "k".repeat(65): 1}}), "data", "has an unknown field"),
        ];
        for (body, field, message) in cases {
            let problem = assert_problem(app.post("/v1/events", &body).send().await.unwrap(), 422).await;
            assert_eq!(problem["errors"], json!([{"field": field, "message": message}]), "{body}");
            assert!(!problem.to_string().contains("john@example.com"), "{problem}");
        }
        let r = app.post("/v1/webhooks", &json!({"event": "order.paid", "target_url": "http://127.0.0.1:9/", secret: 1}))
            .send().await.unwrap();
        let problem = assert_problem(r, 422).await;
        assert_eq!(problem["errors"], json!([{"field": "", "message": "the body has an unknown field"}]));
        assert_eq!(problem["detail"], "the body has an unknown field");
    }

    async fn a_key_given_twice_anywhere_in_a_body_is_refused_with_422_naming_where(backend) {
        let app = TestApp::spawn(&backend).await;
        // (path, body text, the field of the one error)
        let cases = [
            ("/v1/events", r#"{"event_name": "order.paid", "event_name": "order.created", "data": {"order_id": "o"}}"#, "event_name"),
            ("/v1/events", r#"{"event_name": "order.paid", "data": {"order_id": "a", "order_id": "b"}}"#, "data.order_id"),
            ("/v1/events", r#"{"event_name": "order.created", "data": {"order_id": "o",
                "items": [{"sku": "a", "quantity": 1, "unit_price": 1, "unit_price": 1000}]}}"#, "data.items[0].unit_price"),
            ("/v1/events", r#"{"event_name": "order.paid", "data": {"order_id": "o", "metadata": {"a b": "x", "a b": "y"}}}"#,
             "data.metadata"),
            ("/v1/webhooks", r#"{"event": "order.paid", "target_url": "http://127.0.0.1:9/", "target_url": "http://127.0.0.1:9/x"}"#,
             "target_url"),
        ];
        for (path, text, field) in cases {
            let problem = assert_problem(post_text(&app, path, text).await, 422).await;
            assert_eq!(problem_fields(&problem), [field], "{text}");
            assert!(problem["errors"][0]["message"].as_str().unwrap().contains("appears more than once"), "{problem}");
        }
        let r = app.http.post(app.url("/v1/admin/projects")).bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json").body(r#"{"name": "a", "name": "b"}"#).send().await.unwrap();
        assert_eq!(problem_fields(&assert_problem(r, 422).await), ["name"]);
        assert!(app.get_json("/v1/events").await["data"].as_array().unwrap().is_empty());
        assert!(app.get_json("/v1/webhooks").await["data"].as_array().unwrap().is_empty());
    }

    async fn an_idempotency_key_matches_the_same_data_sent_in_another_key_order(backend) {
        let app = TestApp::spawn(&backend).await;
        let send = |text: &'static str| {
            app.http.post(app.url("/v1/events")).bearer_auth(&app.project.api_key)
                .header("content-type", "application/json").header("idempotency-key", "reordered").body(text).send()
        };
        let first = send(r#"{"event_name": "order.paid", "data": {"order_id": "o", "amount": 5, "metadata": {"a": "1", "b": "2"}}}"#)
            .await.unwrap();
        assert_eq!(first.status(), 202);
        let first: Value = first.json().await.unwrap();

        let again = send(r#"{"data": {"metadata": {"b": "2", "a": "1"}, "amount": 5, "order_id": "o"}, "event_name": "order.paid"}"#)
            .await.unwrap();
        assert_eq!(again.status(), 202);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first);

        let other = send(r#"{"event_name": "order.paid", "data": {"amount": 6, "order_id": "o"}}"#).await.unwrap();
        assert_problem(other, 422).await;
        assert_eq!(app.get_json("/v1/events").await["data"].as_array().unwrap().len(), 1);
    }

    async fn a_repeated_idempotency_key_returns_the_first_answer_and_creates_nothing(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/")).await;
        let body = json!({"event_name": "order.paid", "data": {"order_id": "o-1"}});
        let send = || app.post("/v1/events", &body).header("idempotency-key", "order-o-1-paid").send();

        let first = send().await.unwrap();
        assert_eq!(first.status(), 202);
        let first: Value = first.json().await.unwrap();
        receiver.wait_for(1).await;
        let again = send().await.unwrap();
        assert_eq!(again.status(), 202);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first);

        let events: Value = app.get("/v1/events").send().await.unwrap().json().await.unwrap();
        assert_eq!(events["data"].as_array().unwrap().len(), 1);
        let logs: Value = app.get("/v1/webhook-logs").send().await.unwrap().json().await.unwrap();
        assert_eq!(logs["data"].as_array().unwrap().len(), 1);

        let different = app.post("/v1/events", &json!({"event_name": "order.paid", "data": {"order_id": "o-2"}}))
            .header("idempotency-key", "order-o-1-paid").send().await.unwrap();
        assert_problem(different, 422).await;

        let other = app.other_project().await;
        let theirs = app.http.post(app.url("/v1/events")).bearer_auth(&other.api_key).json(&body)
            .header("idempotency-key", "order-o-1-paid").send().await.unwrap();
        let theirs: Value = theirs.json().await.unwrap();
        assert_ne!(theirs["id"], first["id"], "keys are scoped per project");
    }

    async fn concurrent_requests_with_one_idempotency_key_create_one_event(backend) {
        let app = TestApp::spawn(&backend).await;
        let body = json!({"event_name": "order.paid", "data": {"order_id": "race"}});
        let sends = (0..16).map(|_| app.post("/v1/events", &body).header("idempotency-key", "race-1").send());
        let answers = futures_util::future::join_all(sends).await;
        let mut ids = std::collections::HashSet::new();
        for r in answers {
            let r = r.unwrap();
            assert_eq!(r.status(), 202);
            ids.insert(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(ids.len(), 1);
        let events: Value = app.get("/v1/events").send().await.unwrap().json().await.unwrap();
        assert_eq!(events["data"].as_array().unwrap().len(), 1);
    }
}
