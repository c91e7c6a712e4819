//! Secure by default: the target address policy at delivery time, redirects,
//! proxies, signing secret rotation, secrets at rest, API keys, privacy of
//! payloads in every output, tenant isolation, and `hookline verify`.

use std::io::{BufRead as _, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hookline::domain::time::{now_ms, parse_rfc3339};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::*;

/// A TCP listener that only counts the connections it accepts: a stand-in for
/// a host that must never be reached (an internal service, a proxy).
struct ConnectionCounter {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl ConnectionCounter {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        Self { addr, count }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn connections(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Runs the `hookline` binary with `args` and waits for it.
fn hookline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookline")).args(args).output().unwrap()
}

/// `hookline` with `args` on the app's database (`--database-url`, plus the
/// `--secret-key` PostgreSQL needs).
fn hookline_on(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookline")).args(args).args(app.database_flags()).output().unwrap()
}

/// `hookline serve` as a child process, with everything it prints kept.
struct ServerProcess {
    child: std::process::Child,
    base: String,
    /// stdout and stderr, interleaved by line.
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `hookline serve` with `args` (a `--listen` on port 0 is added)
    /// and `env`, and waits until it listens. No proxy or log variable leaks in
    /// from the test's own environment.
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookline"));
        cmd.arg("serve").args(["--listen", "127.0.0.1:0"]).args(args);
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "RUST_LOG"] {
            cmd.env_remove(var).env_remove(var.to_lowercase());
        }
        cmd.envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let streams: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for stream in streams {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            }));
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let addr = loop {
            let listening = {
                let out = output.lock().unwrap();
                out.lines().find(|l| l.contains("hookline is listening")).and_then(|line| {
                    let at = line.find("127.0.0.1:")?;
                    let port: String = line[at + 10..].chars().take_while(char::is_ascii_digit).collect();
                    Some(format!("127.0.0.1:{port}"))
                })
            };
            if let Some(addr) = listening {
                break addr;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("hookline serve exited with {status}:\n{}", output.lock().unwrap());
            }
            assert!(tokio::time::Instant::now() < deadline, "the server never listened:\n{}", output.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Self { child, base: format!("http://{addr}"), output, readers }
    }

    /// Stops the server as SIGTERM does and returns everything it printed.
    async fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.child.try_wait().unwrap().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "the server did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        self.output.lock().unwrap().clone()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The Standard Webhooks signature of a received request with one secret,
/// computed here independently of hookline's signing module.
fn standard_signature(got: &Received, secret: &str) -> String {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut message = format!("{}.{}.", got.header("webhook-id"), got.header("webhook-timestamp")).into_bytes();
    message.extend_from_slice(&got.body);
    format!("v1,{}", STANDARD.encode(hmac_sha256(&key, &message)))
}

fn x_signature(got: &Received, secret: &str) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), &got.body)))
}

/// A delivery's log entry, read as the project with `key`.
async fn log_json(http: &reqwest::Client, base: &str, key: &str, id: &str) -> Value {
    let r = http.get(format!("{base}/v1/webhook-logs/{id}")).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits until none of the deliveries is pending.
async fn settle(http: &reqwest::Client, base: &str, key: &str, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for id in ids {
        while log_json(http, base, key, id).await["status"] == "pending" {
            assert!(tokio::time::Instant::now() < deadline, "delivery {id} never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until the wall clock has passed `at` (unix ms).
async fn wait_until(at: i64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while now_ms() <= at {
        assert!(tokio::time::Instant::now() < deadline, "the clock never reached {at}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

backend_tests! {
    async fn a_target_allowed_when_created_is_checked_again_at_every_attempt(backend) {
        // Created on a development server, where loopback targets are allowed...
        let mut app = TestApp::spawn_strict(&backend, &["--dev"]).await;
        let internal = ConnectionCounter::start().await;
        app.add_webhook("order.paid", &internal.url("/hook")).await;

        // ...and delivered by a server with the default policy on the same database.
        app.restart_with(&[]).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        let delivery = receipt["deliveries"][0]["id"].as_str().unwrap();

        // Blocked like a network error: retried (the policy may change back), never connected.
        let log = app.wait_for_status(delivery, "failed").await;
        assert_eq!(log["attempts"], 3);
        for attempt in log["attempt_history"].as_array().unwrap() {
            assert_eq!(attempt["error_class"], "blocked", "{log:#}");
            assert_eq!(attempt["response_code"], Value::Null);
            let why = attempt["error"].as_str().unwrap();
            assert!(why.contains("loopback address 127.0.0.1"), "{why}");
            assert_eq!(log["last_error"], why);
        }
        assert_eq!(internal.connections(), 0, "a blocked attempt must never connect");

        // The same target is refused outright by the strict server.
        let r = app.post("/v1/webhooks", &json!({"event": "order.paid", "target_url": internal.url("/again")}))
            .send().await.unwrap();
        assert_problem(r, 422).await;
    }

    async fn redirects_are_never_followed(backend) {
        let app = TestApp::spawn(&backend).await;
        let elsewhere = Receiver::start().await;
        for code in [301, 302, 303, 307, 308] {
            let redirecting = Receiver::start().await;
            redirecting.always(Reply::status(code).header("location", elsewhere.url("/internal")));
            let hook = app.add_webhook("order.paid", &redirecting.url("/hook")).await;
            let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
            let log = app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "failed").await;
            assert_eq!(log["response_code"], code);
            assert_eq!(log["attempts"], 1, "a redirect is final, never retried: {log:#}");
            assert_eq!(log["last_error"], format!("the receiver answered HTTP {code}"));
            assert_eq!(redirecting.received().len(), 1);
            let r = app.http.delete(app.url(&format!("/v1/webhooks/{hook}"))).bearer_auth(&app.project.api_key)
                .send().await.unwrap();
            assert_eq!(r.status(), 204);
        }
        assert!(elsewhere.received().is_empty(), "a redirect target was contacted");
    }

    async fn environment_proxies_are_ignored(backend) {
        let _ = &backend;
        let proxy = ConnectionCounter::start().await;
        let receiver = Receiver::start().await;
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("hookline.db").display());
        let proxy_url = proxy.url("");
        let env: Vec<(&str, &str)> = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"]
            .into_iter().map(|v| (v, proxy_url.as_str())).collect();
        let server = ServerProcess::start(
            &["--database-url", &db, "--allow-target-cidr", "127.0.0.1/32", "--admin-token", ADMIN_TOKEN,
              "--poll-interval", "100ms"],
            &env,
        ).await;
        let http = http_client();
        let project = create_project(&http, &server.base, "behind a proxy").await;
        let r = http.post(format!("{}/v1/webhooks", server.base)).bearer_auth(&project.api_key)
            .json(&json!({"event": "order.paid", "target_url": receiver.url("/direct")})).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let r = http.post(format!("{}/v1/events", server.base)).bearer_auth(&project.api_key)
            .json(&json!({"event_name": "order.paid", "data": {"order_id": "o"}})).send().await.unwrap();
        assert_eq!(r.status(), 202);

        let got = receiver.wait_for(1).await;
        assert_eq!(got[0].path, "/direct");
        assert_signed(&got[0], &project.signing_secret);
        assert_eq!(proxy.connections(), 0, "the delivery went through the environment's proxy");
        server.stop().await;
    }

    async fn after_a_rotation_both_secrets_sign_until_the_overlap_ends(backend) {
        let app = TestApp::spawn_with(&backend, &["--secret-overlap", "3s"]).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/")).await;
        let old = app.project.signing_secret.clone();

        let r = app.post("/v1/signing-secret/rotate", &json!({})).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let rotated: Value = r.json().await.unwrap();
        let new = rotated["signing_secret"].as_str().unwrap().to_owned();
        assert!(new.starts_with("whsec_") && new != old);
        assert_eq!(STANDARD.decode(&new["whsec_".len()..]).unwrap().len(), 32);
        assert!(!rotated.to_string().contains(&old), "the old secret is never returned again");
        let overlap_ends = parse_rfc3339(rotated["previous_secret_expires_at"].as_str().unwrap()).unwrap();

        // During the overlap: one signature per secret, the new one first;
        // X-Signature with the new secret only.
        app.send_event("order.paid", json!({"order_id": "during"})).await;
        let got = receiver.wait_for(1).await;
        let during = &got[0];
        let sent_at_ms = during.header("webhook-timestamp").parse::<i64>().unwrap() * 1000;
        assert!(sent_at_ms < overlap_ends, "this machine was too slow to deliver within the 3 s overlap");
        let signatures: Vec<&str> = during.header("webhook-signature").split(' ').collect();
        assert_eq!(signatures, [standard_signature(during, &new), standard_signature(during, &old)]);
        assert_eq!(during.header("x-signature"), x_signature(during, &new));
        assert_signed(during, &new);

        // After the overlap: the new secret alone.
        wait_until(overlap_ends).await;
        app.send_event("order.paid", json!({"order_id": "after"})).await;
        let got = receiver.wait_for(2).await;
        let after = &got[1];
        assert_eq!(after.header("webhook-signature"), standard_signature(after, &new));
        assert_eq!(after.header("x-signature"), x_signature(after, &new));

        // A second rotation hands out a third secret, never an earlier one.
        let again: Value = app.post("/v1/signing-secret/rotate", &json!({})).send().await.unwrap().json().await.unwrap();
        let third = again["signing_secret"].as_str().unwrap();
        assert!(third != new && third != old);
        for path in ["/v1/webhooks", "/v1/events", "/v1/webhook-logs"] {
            let listed = app.get_json(path).await.to_string();
            assert!(!listed.contains(&old) && !listed.contains(&new) && !listed.contains(third), "{path}");
        }
    }

    async fn secrets_and_keys_are_never_stored_in_clear(backend) {
        let mut app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/")).await;
        let rotated: Value = app.post("/v1/signing-secret/rotate", &json!({})).send().await.unwrap().json().await.unwrap();
        let new_secret = rotated["signing_secret"].as_str().unwrap().to_owned();
        let extra = hookline_on(&app, &["project", "create-key", "--project", &app.project.id]);
        assert!(extra.status.success(), "{}", String::from_utf8_lossy(&extra.stderr));
        let extra: Value = serde_json::from_slice(&extra.stdout).unwrap();
        let extra_key = extra["api_key"].as_str().unwrap().to_owned();
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "sent").await;

        // What must never be on disk in clear: both secrets (text, and the key
        // bytes they encode) and both API keys.
        let mut forbidden: Vec<(String, Vec<u8>)> = Vec::new();
        for secret in [&app.project.signing_secret, &new_secret] {
            let b64 = &secret["whsec_".len()..];
            forbidden.push((format!("secret {secret}"), secret.as_bytes().to_vec()));
            forbidden.push((format!("secret body {b64}"), b64.as_bytes().to_vec()));
            forbidden.push((format!("secret bytes of {secret}"), STANDARD.decode(b64).unwrap()));
        }
        for key in [&app.project.api_key, &extra_key] {
            forbidden.push((format!("API key {key}"), key.as_bytes().to_vec()));
            forbidden.push((format!("API key body {key}"), key.as_bytes()["hlk_".len()..].to_vec()));
        }
        // Everything the database holds: its files for SQLite, a data dump for PostgreSQL.
        let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
        if backend.is_postgres() {
            let dump = Command::new("pg_dump").args(["--data-only", &app.database_url]).output().unwrap();
            assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
            stored.push(("the PostgreSQL data".into(), dump.stdout));
        } else {
            let db = app.db.dir.path().join("hookline.db");
            for suffix in ["", "-wal", "-shm"] {
                let path = format!("{}{suffix}", db.display());
                if let Ok(bytes) = std::fs::read(&path) {
                    stored.push((path, bytes));
                }
            }
        }
        for (place, bytes) in &stored {
            for (what, needle) in &forbidden {
                assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_slice()), "{place} contains the {what}");
            }
        }
        // The keys are there, as SHA-256 hashes (raw in SQLite's pages, hex in a dump).
        use sha2::Digest as _;
        for key in [&app.project.api_key, &extra_key] {
            let hash = sha2::Sha256::digest(key.as_bytes());
            let hex = hex::encode(hash);
            let found = stored.iter().any(|(_, bytes)| {
                bytes.windows(32).any(|w| w == hash.as_slice()) || bytes.windows(64).any(|w| w == hex.as_bytes())
            });
            assert!(found, "no hash of {key} was stored");
        }

        #[cfg(unix)]
        if !backend.is_postgres() {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(app.db.dir.path().join("hookline.db.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the key file is readable by others: {mode:o}");
        }

        // With the wrong key the secrets cannot be opened: deliveries fail, never go out unsigned.
        let wrong_key = hookline::vault::Vault::generate_key();
        app.restart_with(&["--allow-target-cidr", "127.0.0.1/32", "--secret-key", &wrong_key]).await;
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        let log = app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "failed").await;
        for attempt in log["attempt_history"].as_array().unwrap() {
            assert_eq!(attempt["error_class"], "signing", "{log:#}");
        }
        assert!(log["last_error"].as_str().unwrap().contains("signing secret"), "{log:#}");
        assert_eq!(receiver.received().len(), 1, "a webhook went out although it could not be signed");

        // Recovery from a lost key: a rotation seals a new secret under the key in use.
        let r = app.post("/v1/signing-secret/rotate", &json!({})).send().await.unwrap();
        let recovered = r.json::<Value>().await.unwrap()["signing_secret"].as_str().unwrap().to_owned();
        let receipt = app.send_event("order.paid", json!({"order_id": "o"})).await;
        app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "sent").await;
        let got = receiver.wait_for(2).await;
        assert_eq!(got[1].header("webhook-signature"), standard_signature(&got[1], &recovered));
        assert_eq!(got[1].header("x-signature"), x_signature(&got[1], &recovered));
    }

    async fn an_api_key_works_until_it_is_revoked_and_the_others_keep_working(backend) {
        let app = TestApp::spawn(&backend).await;
        let project = app.project.id.as_str();
        let created = hookline_on(&app, &["project", "create-key", "--project", project]);
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
        let created: Value = serde_json::from_slice(&created.stdout).unwrap();
        let (key_id, key) = (created["id"].as_str().unwrap(), created["api_key"].as_str().unwrap());
        assert!(key_id.starts_with("key_") && key.starts_with("hlk_"));
        let status_with = |key: String| {
            let req = app.http.get(app.url("/v1/webhooks")).bearer_auth(key);
            async move { req.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status_with(key.to_owned()).await, 200);

        // Listing shows ids and prefixes, never keys.
        let listed = hookline_on(&app, &["project", "keys", "--project", project]);
        assert!(listed.status.success());
        let listed_text = String::from_utf8(listed.stdout).unwrap();
        assert!(!listed_text.contains(key) && !listed_text.contains(&app.project.api_key));
        let listed: Value = serde_json::from_str(&listed_text).unwrap();
        assert_eq!(listed["data"].as_array().unwrap().len(), 2);
        let first_key_id = listed["data"].as_array().unwrap().iter()
            .find(|k| app.project.api_key.starts_with(k["prefix"].as_str().unwrap()))
            .unwrap()["id"].as_str().unwrap().to_owned();

        // Another project cannot revoke this project's key.
        let other = app.other_project().await;
        let foreign = hookline_on(&app, &["project", "revoke-key", "--project", &other.id, "--key", &first_key_id]);
        assert!(!foreign.status.success());

        let revoked = hookline_on(&app, &["project", "revoke-key", "--project", project, "--key", key_id]);
        assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
        // The running server trusts a cached key for at most 5 s.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while status_with(key.to_owned()).await != 401 {
            assert!(tokio::time::Instant::now() < deadline, "the revoked key still works");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status_with(app.project.api_key.clone()).await, 200);
        assert_eq!(status_with(other.api_key.clone()).await, 200);
        let twice = hookline_on(&app, &["project", "revoke-key", "--project", project, "--key", key_id]);
        assert!(!twice.status.success());
    }

    async fn event_data_keys_and_secrets_never_appear_in_json_logs_at_trace_level(backend) {
        let _ = &backend;
        assert_nothing_private_is_printed("json").await;
    }

    async fn event_data_keys_and_secrets_never_appear_in_pretty_logs_at_trace_level(backend) {
        let _ = &backend;
        assert_nothing_private_is_printed("pretty").await;
    }

    async fn another_projects_ids_answer_404_and_lists_show_only_the_callers_objects(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        let a = app.project.clone();
        let b = app.other_project().await;
        let as_ = |p: &Project, method: reqwest::Method, path: &str| {
            app.http.request(method, app.url(path)).bearer_auth(&p.api_key)
        };

        // One webhook, event and delivery in each project.
        let mut ids = Vec::new();
        for (p, path) in [(&a, "/a"), (&b, "/b")] {
            let hook: Value = as_(p, reqwest::Method::POST, "/v1/webhooks")
                .json(&json!({"event": "order.paid", "target_url": receiver.url(path)}))
                .send().await.unwrap().json().await.unwrap();
            let receipt: Value = as_(p, reqwest::Method::POST, "/v1/events")
                .json(&json!({"event_name": "order.paid", "data": {"order_id": path}}))
                .send().await.unwrap().json().await.unwrap();
            let delivery = receipt["deliveries"][0]["id"].as_str().unwrap().to_owned();
            ids.push((hook["id"].as_str().unwrap().to_owned(), receipt["id"].as_str().unwrap().to_owned(), delivery));
        }
        receiver.wait_for(2).await;
        app.wait_for_status(&ids[0].2, "sent").await;
        let (a_hook, a_event, a_delivery) = ids[0].clone();
        let (b_hook, b_event, b_delivery) = ids[1].clone();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while log_json(&app.http, &app.base, &b.api_key, &b_delivery).await["status"] != "sent" {
            assert!(tokio::time::Instant::now() < deadline, "B's delivery never became sent");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Every route that takes an id, with the other project's ids: 404, and nothing of theirs.
        use reqwest::Method;
        let routes: Vec<(Method, String, Option<Value>)> = vec![
            (Method::GET, format!("/v1/webhooks/{a_hook}"), None),
            (Method::PATCH, format!("/v1/webhooks/{a_hook}"), Some(json!({"is_active": false}))),
            (Method::PATCH, format!("/v1/webhooks/{a_hook}"), Some(json!({"target_url": "https://10.0.0.1/"}))),
            (Method::DELETE, format!("/v1/webhooks/{a_hook}"), None),
            (Method::GET, format!("/v1/events/{a_event}"), None),
            (Method::GET, format!("/v1/webhook-logs/{a_delivery}"), None),
            (Method::POST, format!("/v1/webhook-logs/{a_delivery}/retry"), Some(json!({}))),
            (Method::POST, format!("/v1/webhooks/{a_hook}/test"), Some(json!({}))),
        ];
        for (method, path, body) in &routes {
            for header in ["authorization", "x-api-key"] {
                let mut req = app.http.request(method.clone(), app.url(path));
                req = if header == "authorization" { req.bearer_auth(&b.api_key) } else { req.header(header, &b.api_key) };
                if let Some(body) = body {
                    req = req.json(body);
                }
                let problem = assert_problem(req.send().await.unwrap(), 404).await;
                let text = problem.to_string();
                assert!(![&a_hook, &a_event, &a_delivery].iter().any(|id| text.contains(id.as_str())), "{method} {path}: {text}");
            }
        }

        // Lists, with every filter, show the caller's objects only.
        let list_ids = |v: &Value| -> Vec<String> {
            v["data"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect()
        };
        // `None`: any of the caller's objects may be listed, none of the other's.
        let lists: Vec<(String, Option<Vec<&String>>)> = vec![
            ("/v1/webhooks".into(), Some(vec![&b_hook])),
            (format!("/v1/webhooks?cursor={a_hook}"), None),
            (format!("/v1/events?cursor={a_event}"), None),
            (format!("/v1/webhook-logs?cursor={a_delivery}"), None),
            ("/v1/events".into(), Some(vec![&b_event])),
            ("/v1/webhook-logs".into(), Some(vec![&b_delivery])),
            ("/v1/webhook-logs?event=order.paid&status=sent".into(), Some(vec![&b_delivery])),
            (format!("/v1/webhook-logs?webhook_id={a_hook}"), Some(vec![])),
            (format!("/v1/webhook-logs?event_id={a_event}"), Some(vec![])),
            (format!("/v1/webhook-logs?webhook_id={b_hook}&event_id={b_event}"), Some(vec![&b_delivery])),
            ("/v1/webhook-logs?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z".into(), Some(vec![&b_delivery])),
        ];
        for (path, want) in &lists {
            let r = as_(&b, Method::GET, path).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let v: Value = r.json().await.unwrap();
            if let Some(want) = want {
                let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
                assert_eq!(list_ids(&v), want, "{path}");
            }
            let text = v.to_string();
            assert!(![&a_hook, &a_event, &a_delivery].iter().any(|id| text.contains(id.as_str())), "{path}: {text}");
        }

        // Nothing of A's changed: the PATCH, DELETE and retry above applied to nothing.
        let hook: Value = as_(&a, Method::GET, &format!("/v1/webhooks/{a_hook}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(hook["is_active"], true);
        assert_eq!(hook["target_url"], receiver.url("/a"));
        let log = app.log(&a_delivery).await;
        assert_eq!((log["status"].as_str(), log["attempts"].as_u64()), (Some("sent"), Some(1)));
        let a_lists: Value = app.get_json("/v1/webhooks").await;
        assert_eq!(list_ids(&a_lists), std::slice::from_ref(&a_hook));

        // B rotating its secret does not touch A's signatures.
        let r = as_(&b, Method::POST, "/v1/signing-secret/rotate").send().await.unwrap();
        assert_eq!(r.status(), 200);
        app.send_event("order.paid", json!({"order_id": "a2"})).await;
        let got = receiver.wait_for(3).await;
        let latest = got.iter().find(|r| r.path == "/a" && r.json()["data"]["order_id"] == "a2").unwrap();
        assert_eq!(latest.header("webhook-signature"), standard_signature(latest, &a.signing_secret));
        assert_eq!(latest.header("x-signature"), x_signature(latest, &a.signing_secret));
    }

    async fn hookline_verify_checks_a_captured_delivery_and_explains_a_failure(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = Receiver::start().await;
        app.add_webhook("order.paid", &receiver.url("/")).await;
        app.send_event("order.paid", json!({"order_id": "o", "amount": 1})).await;
        let got = receiver.wait_for(1).await.remove(0);
        let dir = tempfile::tempdir().unwrap();
        let body_file = dir.path().join("body.json");
        std::fs::write(&body_file, &got.body).unwrap();
        let header_args: Vec<String> = ["content-type", "x-signature", "webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter().flat_map(|h| ["--header".to_owned(), format!("{h}: {}", got.header(h))]).collect();
        let verify = |secret: &str, body: &std::path::Path, extra: &[&str]| {
            let mut args: Vec<String> = vec!["verify".into(), "--secret".into(), secret.into()];
            args.extend(header_args.iter().cloned());
            args.extend(["--body-file".to_owned(), body.display().to_string()]);
            args.extend(extra.iter().map(|s| s.to_string()));
            let out = Command::new(env!("CARGO_BIN_EXE_hookline")).args(&args).output().unwrap();
            (out.status.code(), String::from_utf8(out.stdout).unwrap())
        };
        let secret = app.project.signing_secret.as_str();

        let (code, said) = verify(secret, &body_file, &[]);
        assert_eq!(code, Some(0), "{said}");
        assert!(said.contains("X-Signature: verified"), "{said}");
        assert!(said.contains("webhook-signature: verified"), "{said}");
        assert!(said.contains("VERIFIED: this request was signed with this secret."), "{said}");

        // The body as an editor would save it, with a newline at the end.
        let edited = dir.path().join("edited.json");
        std::fs::write(&edited, [got.body.as_ref(), b"\n"].concat()).unwrap();
        let (code, said) = verify(secret, &edited, &[]);
        assert_eq!(code, Some(1), "{said}");
        assert!(said.contains("NOT VERIFIED") && said.contains("byte for byte"), "{said}");

        let (code, said) = verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &body_file, &[]);
        assert_eq!(code, Some(1), "{said}");

        // Ten minutes later it is refused as a possible replay, and the fix is named.
        let ts: i64 = got.header("webhook-timestamp").parse().unwrap();
        let (code, said) = verify(secret, &body_file, &["--now", &(ts + 600).to_string()]);
        assert_eq!(code, Some(1), "{said}");
        assert!(said.contains(&format!("pass --now {ts}")), "{said}");
        let (code, said) = verify(secret, &body_file, &["--now", &ts.to_string()]);
        assert_eq!(code, Some(0), "{said}");

        // The body can come from standard input, and the secret from the environment.
        let mut args: Vec<String> = vec!["verify".into(), "--body-file".into(), "-".into()];
        args.extend(header_args.iter().cloned());
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookline")).args(&args)
            .env("HOOKLINE_VERIFY_SECRET", secret)
            .stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(&got.body).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

        // A malformed secret is refused without being repeated back.
        let out = hookline(&["verify", "--secret", "not-a-secret-0123", "--body-file", &body_file.display().to_string()]);
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stderr).contains("not-a-secret-0123"));
    }
}

/// Runs a server at trace level with `format` logs, exercises every path that
/// touches event data, keys or secrets, and greps every output for them.
async fn assert_nothing_private_is_printed(format: &str) {
    let marker = format!("private-{}", uuid::Uuid::now_v7().simple());
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("hookline.db").display());
    let server = ServerProcess::start(
        &[
            "--database-url",
            &db,
            "--allow-target-cidr",
            "127.0.0.1/32",
            "--admin-token",
            ADMIN_TOKEN,
            "--log-format",
            format,
            "--retry-schedule",
            "20ms",
            "--max-attempts",
            "2",
            "--poll-interval",
            "100ms",
            "--max-data-bytes",
            "1024",
        ],
        &[("RUST_LOG", "trace")],
    )
    .await;
    let http = http_client();
    let base = server.base.clone();
    let project = create_project(&http, &base, "private").await;
    let key = project.api_key.clone();

    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.always(Reply::status(500).body("nope"));
    let refusing = Receiver::start().await;
    refusing.always(Reply::status(400).body("no"));
    for (event, receiver) in
        [("order.created", &ok), ("order.created", &failing), ("order.paid", &refusing), ("order.paid", &ok)]
    {
        let r = http
            .post(format!("{base}/v1/webhooks"))
            .bearer_auth(&key)
            .json(&json!({"event": event, "target_url": receiver.url("/hook")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    // Valid events carry the marker in their data; both ways of presenting the key.
    let mut deliveries = Vec::new();
    let valid = [
        json!({"event_name": "order.created", "data": {"order_id": marker, "customer_id": marker,
               "metadata": {"note": marker}}}),
        json!({"event_name": "order.paid", "data": {"order_id": marker, "payment_id": marker}}),
    ];
    for (i, body) in valid.iter().enumerate() {
        let req = http.post(format!("{base}/v1/events")).json(body).header("idempotency-key", format!("k{i}"));
        let req = if i == 0 { req.bearer_auth(&key) } else { req.header("x-api-key", &key) };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 202);
        let receipt: Value = r.json().await.unwrap();
        for d in receipt["deliveries"].as_array().unwrap() {
            deliveries.push(d["id"].as_str().unwrap().to_owned());
        }
        // The project can read its data back; that is the one place it appears.
        let event: Value = http
            .get(format!("{base}/v1/events/{}", receipt["id"].as_str().unwrap()))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(event["data"].to_string().contains(&marker));
    }
    assert_eq!(deliveries.len(), 4);

    // Refused requests that carry the marker: each answer is an error body to grep.
    let mut error_bodies = Vec::new();
    let invalid_json = [
        json!({"event_name": "order.created", "data": {"order_id": marker, "currency": marker}}),
        json!({"event_name": "order.created", "data": {"order_id": marker, "total_amount": marker}}),
        json!({"event_name": "order.created", "data": {"order_id": marker, "unexpected": marker}}),
        json!({"event_name": "order.paid", "data": {"order_id": marker, "metadata": {"note": {"deep": marker}}}}),
        json!({"event_name": "order.paid", "data": marker}),
        json!({"event_name": marker, "data": {"order_id": marker}}),
        json!({"event_name": "order.paid", "data": {"order_id": marker.repeat(5)}}),
        json!({"event_name": "order.paid", "data": {"order_id": "o", "metadata": {"a": marker.repeat(40)}}}),
        json!({"event_name": "order.paid", "data": {"order_id": "o", "metadata": {"a": marker.repeat(600)}}}),
    ];
    for body in &invalid_json {
        let r = http.post(format!("{base}/v1/events")).bearer_auth(&key).json(body).send().await.unwrap();
        assert!(r.status().is_client_error(), "{body}");
        error_bodies.push(r.text().await.unwrap());
    }
    let raw = [
        ("application/json", format!(r#"{{"event_name": "order.paid", "data": {{"order_id": "{marker}""#)),
        ("text/plain", format!(r#"{{"event_name": "order.paid", "data": {{"order_id": "{marker}"}}}}"#)),
    ];
    for (content_type, body) in raw {
        let r = http
            .post(format!("{base}/v1/events"))
            .bearer_auth(&key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error());
        error_bodies.push(r.text().await.unwrap());
    }
    let unauthorized =
        http.post(format!("{base}/v1/events")).bearer_auth(format!("{key}x")).json(&valid[0]).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    error_bodies.push(unauthorized.text().await.unwrap());

    // Rotate the secret, and retry a delivery by hand so the new one signs too.
    let rotated: Value = http
        .post(format!("{base}/v1/signing-secret/rotate"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["signing_secret"].as_str().unwrap().to_owned();

    settle(&http, &base, &key, &deliveries).await;
    let r =
        http.post(format!("{base}/v1/webhook-logs/{}/retry", deliveries[0])).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 202);
    settle(&http, &base, &key, &deliveries).await;
    ok.wait_for(3).await;

    // The delivery log, through the API: every row and every attempt.
    let mut logs = http
        .get(format!("{base}/v1/webhook-logs?limit=200"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for id in &deliveries {
        let log = log_json(&http, &base, &key, id).await;
        statuses.push(log["status"].as_str().unwrap().to_owned());
        logs.push_str(&log.to_string());
    }
    assert!(statuses.contains(&"sent".to_owned()) && statuses.contains(&"failed".to_owned()), "{statuses:?}");

    let output = server.stop().await;
    let trace_lines = output.lines().filter(|l| l.contains("TRACE")).count();
    assert!(trace_lines > 0, "RUST_LOG=trace produced no trace output:\n{output}");
    assert!(output.contains("hookline is listening"));
    if format == "json" {
        // Crates that see raw requests, TLS or SQL are held at info even at RUST_LOG=trace.
        for line in output.lines().filter(|l| l.starts_with('{')) {
            let event: Value = serde_json::from_str(line).unwrap();
            let (target, level) = (event["target"].as_str().unwrap(), event["level"].as_str().unwrap());
            let level: tracing::Level = level.parse().unwrap();
            assert!(hookline::telemetry::may_log(target, level), "{line}");
        }
    }

    let secret_body = |s: &str| s["whsec_".len()..].to_owned();
    let private = [
        ("event data", marker.clone()),
        ("API key", key.clone()),
        ("API key body", key["hlk_".len()..].to_owned()),
        ("signing secret", project.signing_secret.clone()),
        ("signing secret body", secret_body(&project.signing_secret)),
        ("rotated secret", new_secret.clone()),
        ("rotated secret body", secret_body(&new_secret)),
    ];
    for (what, value) in &private {
        if let Some(line) = output.lines().find(|l| l.contains(value.as_str())) {
            panic!("the {what} appears in the {format} process output: {line}");
        }
        for body in &error_bodies {
            assert!(!body.contains(value.as_str()), "the {what} appears in an error body: {body}");
        }
        assert!(!logs.contains(value.as_str()), "the {what} appears in the delivery log: {logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refuses_to_start_when_the_key_file_of_its_secrets_is_gone() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let db = app.db.clone();
    app.stop().await;
    std::fs::remove_file(db.dir.path().join("hookline.db.key")).unwrap();

    let settings = hookline::Settings::from_flags(["--listen", "127.0.0.1:0", "--database-url", &db.url]).unwrap();
    let refused = hookline::Application::build(settings).await.err().expect("the server must not start");
    let message = format!("{refused:#}");
    assert!(message.contains("hookline.db.key is missing") && message.contains("--secret-key"), "{message}");
    assert!(!db.dir.path().join("hookline.db.key").exists(), "no new key may replace the lost one");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_files_and_the_key_file_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::spawn(&Backend::Sqlite).await;
    app.send_event("order.paid", json!({"order_id": "o"})).await;

    let db = app.db.dir.path().join("hookline.db");
    for suffix in ["", "-wal", "-shm", ".key"] {
        let path = format!("{}{suffix}", db.display());
        let mode = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{path}: {e}")).permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path} has mode {mode:o}");
    }
}
