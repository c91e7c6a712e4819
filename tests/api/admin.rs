//! Operators: `POST /v1/admin/projects` and `hookline project create`.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

backend_tests! {
    async fn the_admin_api_creates_a_project_whose_key_works(backend) {
        let app = TestApp::spawn(&backend).await;
        let r = app.http.post(app.url("/v1/admin/projects")).bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "shop"})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let created: Value = r.json().await.unwrap();
        assert!(created["project"]["id"].as_str().unwrap().starts_with("prj_"));
        assert_eq!(created["project"]["name"], "shop");
        let key = created["api_key"].as_str().unwrap();
        let secret = created["signing_secret"].as_str().unwrap();
        assert!(key.starts_with("hlk_") && secret.starts_with("whsec_"));
        assert_ne!(key, secret);
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD.decode(&secret["whsec_".len()..]).unwrap();
        assert_eq!(raw.len(), 32);
        let r = app.http.get(app.url("/v1/webhooks")).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn admin_routes_refuse_a_wrong_token_with_401(backend) {
        let app = TestApp::spawn(&backend).await;
        for token in ["wrong-token-wrong-token", "", &app.project.api_key] {
            let r = app.http.post(app.url("/v1/admin/projects")).bearer_auth(token).json(&json!({"name": "x"})).send().await.unwrap();
            assert_problem(r, 401).await;
        }
        let r = app.http.post(app.url("/v1/admin/projects")).json(&json!({"name": "x"})).send().await.unwrap();
        assert_problem(r, 401).await;
    }

    async fn admin_routes_refuse_a_wrong_token_before_reading_the_body(backend) {
        // The client timeout is far off: only the token can explain an answer.
        let app = TestApp::spawn_with(&backend, &["--client-timeout", "60s"]).await;
        for authorization in ["Authorization: Bearer wrong-token-wrong-token\r\n", ""] {
            let mut client = RawConnection::open(&app.base).await;
            let head = format!(
                "POST /v1/admin/projects HTTP/1.1\r\nHost: hookline\r\n{authorization}\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
            );
            let started = std::time::Instant::now();
            client.send(head.as_bytes()).await;
            let answer = client.answer().await;
            assert_eq!(answer.status, 401, "{authorization:?}");
            assert_eq!(answer.problem()["type"], "/problems/unauthorized");
            assert!(started.elapsed() < std::time::Duration::from_secs(5), "answered after {:?}", started.elapsed());
        }
    }

    async fn admin_routes_do_not_exist_without_an_admin_token(backend) {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("h.db").display());
        let _ = &backend;
        let settings = hookline::Settings::from_flags(["--listen", "127.0.0.1:0", "--database-url", &db]).unwrap();
        let app = hookline::Application::build(settings).await.unwrap();
        let base = format!("http://{}", app.local_addr());
        tokio::spawn(app.run_until_stopped(std::future::pending()));
        let r = http_client().post(format!("{base}/v1/admin/projects")).bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "x"})).send().await.unwrap();
        assert_problem(r, 404).await;
    }

    async fn a_project_needs_a_sensible_name(backend) {
        let app = TestApp::spawn(&backend).await;
        for name in [json!(""), json!("   "), json!("x".repeat(201)), json!(5)] {
            let r = app.http.post(app.url("/v1/admin/projects")).bearer_auth(ADMIN_TOKEN)
                .json(&json!({"name": name})).send().await.unwrap();
            assert_problem(r, 422).await;
        }
    }

    async fn the_cli_creates_a_project_and_prints_its_credentials_once(backend) {
        let app = TestApp::spawn(&backend).await;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
            .args(["project", "create", "--name", "from the cli"])
            .args(app.database_flags())
            .output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(printed["project"]["name"], "from the cli");
        let key = printed["api_key"].as_str().unwrap();
        assert!(printed["signing_secret"].as_str().unwrap().starts_with("whsec_"));

        // The running server sees the new project through the shared database.
        let r = app.http.get(app.url("/v1/events")).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}
