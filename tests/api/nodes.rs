//! Several hookline nodes on one database: roles that split the work, wake-ups
//! across processes, and real `hookline serve` processes sharing a
//! PostgreSQL queue, one of them killed mid-flight.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use crate::backend_tests;
use crate::helpers::*;

backend_tests! {
    async fn an_api_node_ingests_and_a_worker_node_delivers(backend) {
        let api = TestApp::spawn_with(&backend, &["--role", "api"]).await;
        let receiver = Receiver::start().await;
        api.add_webhook("order.paid", &receiver.url("/hook")).await;
        let receipt = api.send_event("order.paid", json!({"order_id": "o"})).await;
        let id = receipt["deliveries"][0]["id"].as_str().unwrap().to_owned();

        // Alone, the API node leaves it queued. (A bounded look for something
        // that must not happen: it cannot fail spuriously.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(receiver.received().is_empty(), "an API-only node delivered");
        assert_eq!(api.log(&id).await["status"], "pending");

        let worker = api.spawn_peer(&["--role", "worker"]).await;
        let got = receiver.wait_for(1).await;
        assert_eq!(got[0].header("webhook-id"), id);
        assert_signed(&got[0], &api.project.signing_secret);
        api.wait_for_status(&id, "sent").await;

        // The worker node serves health, not the API.
        let r = api.http.get(worker.url("/v1/events")).bearer_auth(&api.project.api_key).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(api.http.get(worker.url("/readyz")).send().await.unwrap().status(), 200);
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_another_node_is_woken_by_new_work_without_polling() {
    let Some(backend) = Backend::postgres() else { return skipped_without_postgres() };
    let api = TestApp::spawn_with(&backend, &["--role", "api"]).await;
    // It polls once at start, then only when woken.
    let worker = api.spawn_peer(&["--role", "worker", "--poll-interval", "1h"]).await;
    let receiver = Receiver::start().await;
    api.add_webhook("order.paid", &receiver.url("/")).await;

    // The first event may be found by the start-up poll; by the time it
    // arrives, the worker is listening (it subscribes before its first claim).
    api.send_event("order.paid", json!({"order_id": "first"})).await;
    receiver.wait_for(1).await;
    let sent_at = std::time::Instant::now();
    api.send_event("order.paid", json!({"order_id": "second"})).await;
    receiver.wait_for(2).await;
    eprintln!("ingest on one node to delivery by another: {:?}", sent_at.elapsed());
    worker.stop().await;
}

/// A `hookline serve` process.
struct Node {
    name: &'static str,
    child: tokio::process::Child,
    base: String,
}

/// Upper bound for the multi-process test's waits: real processes, hundreds of deliveries.
const NODE_PATIENCE: Duration = Duration::from_secs(90);

impl Node {
    /// Starts the binary on `db` with a random port, and learns the port from its log.
    async fn start(name: &'static str, db: &TestDatabase, extra: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--allow-target-cidr", "127.0.0.1/32"])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(db.flags())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("hookline starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let address = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                eprintln!("[{name}] {line}");
                let Ok(entry) = serde_json::from_str::<Value>(&line) else { continue };
                if entry["message"] == "hookline is listening" {
                    return entry["address"].as_str().unwrap().to_owned();
                }
            }
            panic!("{name} exited before listening");
        })
        .await
        .unwrap_or_else(|_| panic!("{name} did not start listening"));
        // Keep reading, or the process blocks on a full pipe; shown if the test fails.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
        });
        Self { name, child, base: format!("http://{address}") }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGTERM, then waits for the graceful exit.
    async fn terminate(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(PATIENCE, self.child.wait()).await.expect("stops within its grace period");
        assert!(exit.unwrap().success(), "{} did not exit cleanly", self.name);
    }

    /// SIGKILL: no shutdown, leases left as they are.
    async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// Sends `count` events, spread over `nodes` in turn and `concurrency` at a
/// time; returns the delivery ids of their receipts.
async fn ingest(http: &reqwest::Client, key: &str, nodes: &[&Node], count: usize, tag: &str) -> Vec<String> {
    let sends = (0..count).map(|i| {
        let url = nodes[i % nodes.len()].url("/v1/events");
        let body = json!({"event_name": "order.paid", "data": {"order_id": format!("{tag}-{i}")}});
        let request = http.post(url).bearer_auth(key).json(&body);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 202);
            let receipt: Value = r.json().await.unwrap();
            receipt["deliveries"][0]["id"].as_str().unwrap().to_owned()
        }
    });
    futures_util::stream::iter(sends).buffer_unordered(32).collect().await
}

/// How many of the project's deliveries are in `status`, read page by page.
async fn count_logs(http: &reqwest::Client, node: &Node, key: &str, status: &str) -> usize {
    let mut count = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = node.url(&format!("/v1/webhook-logs?status={status}&limit=200"));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http.get(url).bearer_auth(key).send().await.unwrap().json().await.unwrap();
        count += page["data"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return count,
        }
    }
}

/// Waits until no delivery of the project is pending any more.
async fn wait_until_all_finished(http: &reqwest::Client, node: &Node, key: &str) {
    eventually_within(NODE_PATIENCE, "no delivery to be left pending", || async {
        let page: Value = http
            .get(node.url("/v1/webhook-logs?status=pending&limit=1"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["data"].as_array().unwrap().is_empty().then_some(())
    })
    .await
}

async fn wait_for_requests(receiver: &Receiver, n: usize) {
    eventually_within(NODE_PATIENCE, &format!("{n} requests"), || async {
        (receiver.received().len() >= n).then_some(())
    })
    .await
}

/// How often each `webhook-id` arrived.
fn arrivals(got: &[Received]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in got {
        *seen.entry(r.header("webhook-id").to_owned()).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_one_queue_and_one_finishes_what_a_killed_one_left() {
    let Some(backend) = Backend::postgres() else { return skipped_without_postgres() };
    let db = TestDatabase::create(&backend).await;
    let http = http_client();
    let receiver = Receiver::start().await;

    // Phase 1: two nodes, 500 events ingested through both at once; each
    // delivery reaches the receiver exactly once.
    let steady = ["--poll-interval", "200ms", "--retry-schedule", "200ms", "--max-attempts", "10"];
    let a = Node::start("a", &db, &steady).await;
    let b = Node::start("b", &db, &steady).await;
    let project = create_project(&http, &a.base, "shared").await;
    let key = project.api_key.as_str();
    let r = http
        .post(b.url("/v1/webhooks"))
        .bearer_auth(key)
        .json(&json!({"event": "order.paid", "target_url": receiver.url("/hook")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let first: HashSet<String> = ingest(&http, key, &[&a, &b], 500, "one").await.into_iter().collect();
    assert_eq!(first.len(), 500);
    wait_for_requests(&receiver, 500).await;
    wait_until_all_finished(&http, &a, key).await;
    // Stopped, neither node has anything in flight that could still arrive.
    a.terminate().await;
    b.terminate().await;
    let got = receiver.received();
    let seen = arrivals(&got);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), first);
    assert_eq!(got.len(), 500);
    for r in got.iter().take(5) {
        assert_signed(r, &project.signing_secret);
    }

    // Phase 2: a slow receiver and short leases; a node is killed while it
    // holds deliveries, and another takes them over once the leases expire.
    receiver.always(Reply::status(200).body("ok").after(Duration::from_millis(400)));
    let short = [
        "--lease",
        "2s",
        "--request-timeout",
        "1s",
        "--connect-timeout",
        "500ms",
        "--max-in-flight",
        "8",
        "--poll-interval",
        "100ms",
        "--retry-schedule",
        "200ms",
        "--max-attempts",
        "10",
    ];
    let doomed = Node::start("c", &db, &short).await;
    let second: HashSet<String> = ingest(&http, key, &[&doomed], 150, "two").await.into_iter().collect();
    // It keeps 8 deliveries in flight while work is left, each answered only
    // after 400 ms: right after a request arrives, it is certainly mid-flight.
    wait_for_requests(&receiver, 500 + 8).await;
    doomed.kill().await;
    let survivor = Node::start("d", &db, &short).await;

    wait_until_all_finished(&http, &survivor, key).await;
    let seen = arrivals(&receiver.received());
    let missing: Vec<_> = second.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(count_logs(&http, &survivor, key, "sent").await, 650, "every delivery ends sent");
    assert_eq!(count_logs(&http, &survivor, key, "failed").await, 0);
    // What the killed node had in flight reached the receiver but was never
    // recorded: the survivor sent those again (at-least-once).
    let resent = second.iter().filter(|id| seen[*id] > 1).count();
    assert!(resent >= 1, "the killed node held no deliveries: the test did not kill it mid-flight");
    eprintln!("phase 2: {resent} deliveries were sent again after the kill");
    survivor.terminate().await;
}
