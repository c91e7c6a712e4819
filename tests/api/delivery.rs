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

    async fn a_receiver_that_closes_idle_connections_costs_no_failed_attempt(backend) {
        let app = TestApp::spawn(&backend).await;
        let receiver = IdleClosingReceiver::start(Duration::from_millis(50)).await;
        app.add_webhook("order.paid", &receiver.url("/hook")).await;
        for i in 0..3 {
            let receipt = app.send_event("order.paid", json!({"order_id": format!("o{i}")})).await;
            let log = app.wait_for_status(receipt["deliveries"][0]["id"].as_str().unwrap(), "sent").await;
            assert_eq!(log["attempts"], 1, "delivery {i} needed a second attempt: {log}");
            // The connection now idles in hookline's pool and is closed under it:
            // the next delivery finds it dead.
            receiver.wait_for_idle_closes(i + 1).await;
        }
        assert_eq!(receiver.requests(), 3, "each delivery arrived once");
        assert_eq!(receiver.connections(), 3, "a dead connection is replaced, not given up on");
    }
}

/// A keep-alive receiver that, like many servers, closes a connection that
/// stays idle for a while, without announcing it in the response.
struct IdleClosingReceiver {
    addr: std::net::SocketAddr,
    /// (connections accepted, requests answered, connections closed for idling)
    counts: tokio::sync::watch::Sender<(usize, usize, usize)>,
}

impl IdleClosingReceiver {
    async fn start(idle: Duration) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = tokio::sync::watch::channel((0, 0, 0)).0;
        let tx = counts.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tx.send_modify(|c| c.0 += 1);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One whole request: its head, then Content-Length bytes.
                        let total = loop {
                            let mut headers = [httparse::EMPTY_HEADER; 32];
                            let mut request = httparse::Request::new(&mut headers);
                            if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
                                let length =
                                    request.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
                                let length: usize =
                                    std::str::from_utf8(length.unwrap().value).unwrap().parse().unwrap();
                                if buf.len() >= head + length {
                                    break head + length;
                                }
                            }
                            let mut chunk = [0; 4096];
                            match tokio::time::timeout(idle, socket.read(&mut chunk)).await {
                                Ok(Ok(0)) | Ok(Err(_)) => return,
                                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                                Err(_) if buf.is_empty() => {
                                    drop(socket);
                                    tx.send_modify(|c| c.2 += 1);
                                    return;
                                }
                                Err(_) => {}
                            }
                        };
                        buf.drain(..total);
                        tx.send_modify(|c| c.1 += 1);
                        socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                    }
                });
            }
        });
        Self { addr, counts }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn connections(&self) -> usize {
        self.counts.borrow().0
    }

    fn requests(&self) -> usize {
        self.counts.borrow().1
    }

    async fn wait_for_idle_closes(&self, n: usize) {
        let mut counts = self.counts.subscribe();
        let closed = tokio::time::timeout(PATIENCE, counts.wait_for(|c| c.2 >= n)).await.is_ok();
        assert!(closed, "expected {n} idle connections closed, counts {:?}", *self.counts.borrow());
    }
}
