//! The `hookline` binary itself: `demo`, `serve --help` against the README,
//! start-up validation, and what the process logs.

use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_hookline");

/// The binary with no `HOOKLINE_*` or `RUST_LOG` from the environment.
fn hookline() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HOOKLINE_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn demo_shows_two_verified_deliveries_their_log_and_a_test_delivery_then_exits_0() {
    let (out, stdout, stderr) = run(hookline().arg("demo"));
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    assert_eq!(stdout.matches("X-Signature: verified").count(), 3, "{stdout}");
    assert_eq!(stdout.matches("webhook-signature: verified").count(), 3, "{stdout}");
    assert!(!stdout.contains("NOT VERIFIED"), "{stdout}");
    for event in ["order.created", "order.paid", "webhook.test"] {
        assert!(stdout.contains(&format!("event={event}")), "{event} never arrived:\n{stdout}");
    }
    assert_eq!(stdout.matches(" sent  HTTP 200  attempts 1").count(), 3, "{stdout}");
    assert!(stdout.contains("Done:"), "{stdout}");
    // The throwaway database is gone.
    let db = stdout.split("(sqlite://").nth(1).and_then(|s| s.split(')').next()).expect("the demo names its database");
    assert!(!std::path::Path::new(db).exists(), "{db} was left behind");
}

/// `(long flag, env var)` of every option in `hookline serve --help`.
fn serve_flags() -> Vec<(String, Option<String>)> {
    let (out, help, _) = run(hookline().args(["serve", "--help"]));
    assert!(out.status.success());
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-')
            && let Some(long) = trimmed.split_whitespace().find_map(|w| w.strip_prefix("--"))
        {
            let long = long.trim_end_matches(',').split(['=', '<', ' ']).next().unwrap().to_owned();
            flags.push((long, None));
        }
        if let Some(env) = line.split("[env: ").nth(1) {
            let env = env.split(['=', ']']).next().unwrap().to_owned();
            flags.last_mut().expect("an env var belongs to a flag").1 = Some(env);
        }
    }
    flags.retain(|(long, _)| long != "help");
    flags
}

#[test]
fn every_serve_flag_has_an_env_var_and_a_row_in_the_readme() {
    let flags = serve_flags();
    assert!(flags.len() >= 20, "{flags:?}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: Vec<&str> = readme
        .split("## Configuration")
        .nth(1)
        .expect("the README has a Configuration section")
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .collect();
    for (long, env) in flags {
        let env = env.unwrap_or_else(|| panic!("--{long} has no environment variable"));
        assert!(env.starts_with("HOOKLINE_"), "--{long}: {env}");
        let row = table.iter().find(|row| row.starts_with(&format!("| `--{long}")));
        let row = row.unwrap_or_else(|| panic!("--{long} is missing from the README's configuration table"));
        assert!(row.contains(&format!("`{env}`")), "the README row of --{long} does not name {env}: {row}");
        let key = long.replace('-', "_");
        assert!(
            long == "config" || row.contains(&format!("`{key}`")),
            "the README row of --{long} does not name its file key {key}: {row}"
        );
    }
}

#[test]
fn config_prints_the_settings_of_all_sources_as_toml_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hookline.toml");
    std::fs::write(
        &file,
        r#"
        database_url = "postgres://hookline:db-password-4711@db.internal:5432/hookline"
        secret_key = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LXByaW50IQ=="
        admin_token = "admin-token-from-the-file-4711"
        max_attempts = 3
        allow_target_cidr = ["127.0.0.1/32"]
        "#,
    )
    .unwrap();
    let (out, stdout, stderr) = run(hookline()
        .args(["config", "--config", file.to_str().unwrap(), "--retry-schedule", "100ms,1s"])
        .env("HOOKLINE_MAX_IN_FLIGHT", "9"));
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    for secret in ["db-password-4711", "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LXByaW50IQ==", "admin-token-from-the-file-4711"]
    {
        assert!(!stdout.contains(secret), "{secret} was printed:\n{stdout}");
    }
    let settings: toml::Table = stdout.parse().unwrap_or_else(|e| panic!("not TOML: {e}\n{stdout}"));
    assert_eq!(settings["database_url"].as_str(), Some("postgres://hookline:***@db.internal:5432/hookline"));
    assert_eq!(settings["secret_key"].as_str(), Some("***"));
    assert_eq!(settings["admin_token"].as_str(), Some("***"));
    assert_eq!(settings["max_attempts"].as_integer(), Some(3), "from the file");
    assert_eq!(settings["allow_target_cidr"].as_array().unwrap().len(), 1, "from the file");
    assert_eq!(settings["max_in_flight"].as_integer(), Some(9), "from the variable");
    assert_eq!(settings["retry_schedule"].as_str(), Some("100ms,1s"), "from the flag");
    assert_eq!(settings["listen"].as_str(), Some("127.0.0.1:8080"), "the default");
}

#[test]
fn config_refuses_an_unknown_key_or_a_bad_value_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hookline.toml");
    // (the file, the key the message must name)
    let cases =
        [("max_attemps = 3", "max_attemps"), ("max_attempts = \"ten\"", "max_attempts"), ("lease = \"1s\"", "lease")];
    for (text, key) in cases {
        std::fs::write(&file, text).unwrap();
        let (out, stdout, stderr) = run(hookline().args(["config", "--config", file.to_str().unwrap()]));
        assert!(!out.status.success(), "{text}: exit 0\n{stdout}");
        assert!(stderr.contains(&format!("`{key}`")), "{text}: the message does not name {key}: {stderr}");
        assert!(stderr.contains(file.to_str().unwrap()), "{text}: the message does not name the file: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_with_the_settings_of_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hookline.toml");
    let database = format!("sqlite://{}", dir.path().join("hookline.db").display());
    std::fs::write(&file, format!("role = \"worker\"\nlog_format = \"json\"\ndatabase_url = {database:?}\n")).unwrap();
    let server = crate::process::ServerProcess::start(&["--config", file.to_str().unwrap()], &[]);
    let http = http_client();
    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // A worker serves no API.
    let ingest = http.post(server.url("/v1/events")).json(&json!({})).send().await.unwrap();
    assert_eq!(ingest.status(), 404);
    assert!(dir.path().join("hookline.db").exists(), "the database of the file was not used");
    let output = server.output.lock().unwrap().clone();
    let listening = output.lines().find(|l| l.contains("hookline is listening")).unwrap();
    assert!(serde_json::from_str::<Value>(listening).is_ok(), "not a JSON log line: {listening}");
}

#[test]
fn invalid_values_stop_serve_at_start_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("hookline.db").display());
    // (flags, environment, the flag the message must name)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--max-attempts", "0"], &[], "--max-attempts"),
        (&["--poll-interval", "soon"], &[], "--poll-interval"),
        (&["--prune-interval", "0s"], &[], "--prune-interval"),
        (&["--listen", "nowhere"], &[], "--listen"),
        (&["--log-format", "xml"], &[], "--log-format"),
        (&["--retention-days", "0"], &[], "--retention-days"),
        (&["--retry-schedule", "5s,later"], &[], "--retry-schedule"),
        (&["--allow-target-cidr", "10.0.0.0/99"], &[], "--allow-target-cidr"),
        (&[], &[("HOOKLINE_MAX_ATTEMPTS", "0")], "--max-attempts"),
        (&[], &[("HOOKLINE_REQUEST_TIMEOUT", "forever")], "--request-timeout"),
    ];
    for (args, env, flag) in cases {
        let mut cmd = hookline();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--database-url", &database]).args(*args);
        cmd.envs(env.iter().copied());
        let (out, _, stderr) = run(&mut cmd);
        assert!(!out.status.success(), "{args:?} {env:?} started");
        assert!(stderr.contains(flag), "{args:?} {env:?}: the message does not name {flag}: {stderr}");
    }
    assert!(!dir.path().join("hookline.db").exists(), "a refused start opened the database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_logs_are_json_with_ids_on_requests_and_deliveries_but_no_data_or_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("hookline.db").display());
    let mut child = tokio::process::Command::from(hookline())
        .args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0", "--database-url", &database])
        .args(["--admin-token", ADMIN_TOKEN, "--allow-target-cidr", "127.0.0.1/32", "--poll-interval", "100ms"])
        .env("RUST_LOG", "hookline=debug,tower_http=debug")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (address_tx, address_rx) = tokio::sync::oneshot::channel();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let reader = tokio::spawn({
        let lines = lines.clone();
        async move {
            let mut address_tx = Some(address_tx);
            while let Ok(Some(line)) = stderr.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(addr) = v["address"].as_str()
                    && let Some(tx) = address_tx.take()
                {
                    let _ = tx.send(addr.to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        }
    });
    let address = tokio::time::timeout(PATIENCE, address_rx).await.expect("the server logged its address").unwrap();
    let base = format!("http://{address}");
    let http = http_client();
    let project = create_project(&http, &base, "logged").await;
    let receiver = Receiver::start().await;
    let hook = http
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(&project.api_key)
        .json(&json!({"event": "order.created", "target_url": receiver.url("/hook")}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 201);
    let marker = "ord_do_not_log_me_4711";
    let receipt: Value = http
        .post(format!("{base}/v1/events"))
        .bearer_auth(&project.api_key)
        .json(&json!({"event_name": "order.created", "data": {"order_id": marker}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let delivery = receipt["deliveries"][0]["id"].as_str().unwrap().to_owned();
    receiver.wait_for(1).await;

    // Wait for the attempt's log line, then stop the server.
    eventually("a delivery attempt to be logged", || async {
        lines.lock().unwrap().iter().any(|l| l.contains("delivery attempt")).then_some(())
    })
    .await;
    child.kill().await.unwrap();
    reader.await.unwrap();

    let lines = lines.lock().unwrap().clone();
    let logs: Vec<Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    let requests: Vec<&Value> = logs.iter().filter(|l| l["span"]["name"] == "request").collect();
    assert!(!requests.is_empty(), "no request was logged: {lines:#?}");
    assert!(requests.iter().all(|l| l["span"]["request_id"].as_str().is_some_and(|id| !id.is_empty())));
    let attempt = logs.iter().find(|l| l["message"] == "delivery attempt").unwrap();
    assert_eq!(attempt["span"]["name"], "delivery");
    assert_eq!(attempt["span"]["delivery_id"], delivery.as_str());
    assert_eq!(attempt["span"]["event_id"], receipt["id"]);
    assert!(attempt["span"]["webhook_id"].as_str().unwrap().starts_with("wh_"));
    assert_eq!(attempt["outcome"], "sent");
    for secret in [marker, &project.api_key, &project.signing_secret, ADMIN_TOKEN] {
        assert!(!lines.iter().any(|l| l.contains(secret)), "a log line carries {secret}");
    }
}
