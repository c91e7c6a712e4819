//! Hostile clients (SPEC §10): requests sent too slowly, idle connections,
//! more connections than the server serves, and shutdown while clients hang.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::backend_tests;
use crate::helpers::*;
use crate::process::ServerProcess;

/// How much longer than `--shutdown-grace` stopping may take: the worker's
/// last database statements, on a machine busy with the other tests.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// A request whose head ends in the middle of a header line.
const HALF_A_HEAD: &[u8] = b"POST /v1/events HTTP/1.1\r\nHost: hookline\r\nContent-Ty";

/// The head of an ingest request that announces a body of `length` bytes.
fn ingest_head(api_key: &str, length: usize) -> Vec<u8> {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: hookline\r\nAuthorization: Bearer {api_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .into_bytes()
}

const HEALTH_CHECK: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: hookline\r\n\r\n";

backend_tests! {
    async fn a_request_head_not_sent_within_the_client_timeout_is_answered_408_and_closed(backend) {
        let app = TestApp::spawn_with(&backend, &["--client-timeout", "300ms"]).await;
        let mut client = RawConnection::open(&app.base).await;
        let started = Instant::now();
        client.send(HALF_A_HEAD).await;

        let answer = client.answer().await;
        assert_eq!(answer.status, 408);
        assert_eq!(answer.header("connection"), "close");
        assert_eq!(answer.problem()["type"], "/problems/request-timeout");
        assert!(started.elapsed() >= Duration::from_millis(300), "answered after {:?}", started.elapsed());
        assert!(client.closed().await.is_empty());
    }

    async fn a_request_body_that_trickles_in_is_answered_408_once_the_client_timeout_is_up(backend) {
        let app = TestApp::spawn_with(&backend, &["--client-timeout", "500ms"]).await;
        let mut client = RawConnection::open(&app.base).await;
        let started = Instant::now();
        client.send(&ingest_head(&app.project.api_key, 100)).await;

        // A byte every 50 ms would take five seconds to complete the body.
        let answer = client.answer_while_sending(&[b' '; 100], Duration::from_millis(50)).await;
        assert_eq!(answer.status, 408);
        assert_eq!(answer.header("connection"), "close");
        assert_eq!(answer.problem()["type"], "/problems/request-timeout");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(3), "answered after {took:?}");
        client.closed().await;
        assert!(app.get_json("/v1/events").await["data"].as_array().unwrap().is_empty());
    }

    async fn a_request_sent_in_pieces_within_the_client_timeout_is_served(backend) {
        let app = TestApp::spawn_with(&backend, &["--client-timeout", "2s"]).await;
        let mut client = RawConnection::open(&app.base).await;
        let body = json!({"event_name": "order.paid", "data": {"order_id": "o"}}).to_string();
        client.send(&ingest_head(&app.project.api_key, body.len())).await;

        let answer = client.answer_while_sending(body.as_bytes(), Duration::from_millis(5)).await;
        assert_eq!(answer.status, 202, "{:?}", answer.body);
    }

    async fn idle_connections_are_closed_quietly_after_the_client_timeout(backend) {
        let app = TestApp::spawn_with(&backend, &["--client-timeout", "300ms"]).await;
        let mut silent = RawConnection::open(&app.base).await;
        let mut kept_alive = RawConnection::open(&app.base).await;
        let asked = Instant::now();
        kept_alive.send(HEALTH_CHECK).await;
        assert_eq!(kept_alive.answer().await.status, 200);

        let sent = kept_alive.closed().await;
        assert!(sent.is_empty(), "an idle connection is closed without an answer: {:?}", String::from_utf8_lossy(&sent));
        assert!(asked.elapsed() >= Duration::from_millis(300), "closed after {:?}", asked.elapsed());
        assert!(silent.closed().await.is_empty());
    }

    async fn a_connection_over_the_limit_is_answered_503_and_one_is_served_once_another_closes(backend) {
        // No project and no other client: only these connections count.
        let db = TestDatabase::create(&backend).await;
        let server = Server::start(&db, &["--max-connections", "2"]).await;
        let mut first = RawConnection::open(&server.base).await;
        let mut second = RawConnection::open(&server.base).await;
        for held in [&mut first, &mut second] {
            held.send(HEALTH_CHECK).await;
            assert_eq!(held.answer().await.status, 200);
        }

        let mut third = RawConnection::open(&server.base).await;
        third.send(HEALTH_CHECK).await;
        let refused = third.answer().await;
        assert_eq!(refused.status, 503);
        assert_eq!(refused.header("connection"), "close");
        assert_eq!(refused.header("retry-after"), "1");
        assert_eq!(refused.problem()["type"], "/problems/overloaded");
        assert!(third.closed().await.is_empty());

        // The held connections are still served.
        second.send(HEALTH_CHECK).await;
        assert_eq!(second.answer().await.status, 200);

        drop(first);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut next = RawConnection::open(&server.base).await;
            next.send(HEALTH_CHECK).await;
            match next.answer().await.status {
                200 => break,
                503 => assert!(tokio::time::Instant::now() < deadline, "the closed connection's place never freed"),
                other => panic!("answered {other}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.stop().await;
    }

    async fn shutdown_ends_within_the_grace_period_whatever_clients_do(backend) {
        let app = TestApp::spawn_with(&backend, &["--shutdown-grace", "500ms", "--client-timeout", "60s"]).await;
        let mut half_a_head = RawConnection::open(&app.base).await;
        half_a_head.send(HALF_A_HEAD).await;
        let mut slow_body = RawConnection::open(&app.base).await;
        slow_body.send(&ingest_head(&app.project.api_key, 1000)).await;
        slow_body.send(b"{").await;
        let mut idle = RawConnection::open(&app.base).await;
        // Accepted in order: once a later connection is served, the server holds these.
        let mut probe = RawConnection::open(&app.base).await;
        probe.send(HEALTH_CHECK).await;
        assert_eq!(probe.answer().await.status, 200);
        let base = app.base.clone();

        let started = Instant::now();
        app.stop().await;
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500) + STOP_MARGIN, "stopping took {took:?}");
        for client in [&mut half_a_head, &mut slow_body, &mut idle, &mut probe] {
            client.closed().await;
        }
        let address = base.strip_prefix("http://").unwrap();
        assert!(tokio::net::TcpStream::connect(address).await.is_err(), "still listening");
    }
}

/// Connections are the server's, whatever the store: this one runs on SQLite
/// only, sparing the machine another two thousand sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_clients_do_not_stop_others_from_being_served() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let mut slow = Vec::new();
    for _ in 0..2000 {
        let mut client = RawConnection::open(&app.base).await;
        client.send(HALF_A_HEAD).await;
        slow.push(client);
    }
    let mut trickling = RawConnection::open(&app.base).await;
    trickling.send(&ingest_head(&app.project.api_key, 1000)).await;

    let started = Instant::now();
    app.send_event("order.paid", json!({"order_id": "o"})).await;
    let mut other = RawConnection::open(&app.base).await;
    other.send(HEALTH_CHECK).await;
    assert_eq!(other.answer().await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "served after {:?}", started.elapsed());
    // Held open until the others were served.
    drop((slow, trickling));
}

/// The red team's case: SIGTERM with slow clients connected used to leave the
/// process running for about a minute after the listener closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_process_within_the_grace_period_while_clients_hang() {
    let db = TestDatabase::create(&Backend::Sqlite).await;
    let flags: Vec<String> = db.flags();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--admin-token", ADMIN_TOKEN, "--shutdown-grace", "1s", "--client-timeout", "60s"]);
    let server = ServerProcess::start(&args, &[]);
    let project = create_project(&http_client(), &server.base, "sigterm").await;
    let mut half_a_head = RawConnection::open(&server.base).await;
    half_a_head.send(HALF_A_HEAD).await;
    let mut slow_body = RawConnection::open(&server.base).await;
    slow_body.send(&ingest_head(&project.api_key, 1000)).await;
    slow_body.send(b"{").await;
    let mut probe = RawConnection::open(&server.base).await;
    probe.send(HEALTH_CHECK).await;
    assert_eq!(probe.answer().await.status, 200);

    let (code, took) = server.terminate();
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(1) + STOP_MARGIN, "exit took {took:?}");
    half_a_head.closed().await;
    slow_body.closed().await;
}
