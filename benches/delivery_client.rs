//! CPU per delivery: hookline's own HTTP/1.1 client ([`DeliveryClient`])
//! against one built on `hyper::client::conn::http1` with a small pool of its
//! own, both posting a signed-size webhook to a minimal receiver on 127.0.0.1.
//!
//! Method: the receiver runs in a child process (this binary with
//! `--receiver`), so the process CPU clock (`CLOCK_PROCESS_CPUTIME_ID`) of
//! this process counts the client side only: the runtime, the client, and a
//! task per delivery as the worker spawns them. Two scenarios: fan-out (each
//! event goes to 10 targets, 10 receiver ports, at once) and one target. Each
//! run builds a fresh client, warms its pool, then sends `DELIVERIES`
//! deliveries with `EVENTS_IN_FLIGHT` events in flight. The two clients run
//! in alternating order, `PAIRS` pairs per scenario; medians are reported,
//! with the median of the per-pair ratios.
//!
//! `cargo bench --bench delivery_client` (release profile). `cargo test` does
//! not run it. `HOOKLINE_BENCH_PAIRS` and `HOOKLINE_BENCH_DELIVERIES` shorten
//! a trial run.

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self as conn, SendRequest};
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use hookline::delivery::client::{DeliveryClient, KEPT_BODY_BYTES};
use hookline::domain::TargetUrl;
use hookline::ssrf::Policy;

const PAIRS: usize = 7;
const DELIVERIES: usize = 40_000;
const WARM_UP: usize = 2_000;
const EVENTS_IN_FLIGHT: usize = 8;
const FAN_OUT: usize = 10;
/// Idle connections kept per target by either client.
const MAX_IDLE: usize = 16;

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--receiver") {
        receiver(args[i + 1].parse().expect("a port count"));
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .args(["--receiver", &FAN_OUT.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the receiver starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("the receiver's ports");
    let targets: Vec<TargetUrl> = line
        .split_whitespace()
        .map(|port| TargetUrl::parse(&format!("http://127.0.0.1:{port}/webhooks")).expect("a target"))
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("delivery client CPU per delivery, µs (client process only)");
    for (scenario, targets) in [("fan-out 10", &targets[..]), ("1 target", &targets[..1])] {
        let (mut lean, mut hyper, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..setting("HOOKLINE_BENCH_PAIRS", PAIRS) {
            let run = |kind| runtime.block_on(measure(kind, targets));
            let (l, h) = if pair % 2 == 0 {
                let l = run(Kind::Lean);
                (l, run(Kind::Hyper))
            } else {
                let h = run(Kind::Hyper);
                (run(Kind::Lean), h)
            };
            println!("  {scenario} pair {pair}: lean {l:.2}, hyper {h:.2}");
            lean.push(l);
            hyper.push(h);
            ratios.push(h / l);
        }
        println!(
            "{scenario}: lean median {:.2} µs, hyper median {:.2} µs, hyper/lean median {:.3}",
            median(&mut lean),
            median(&mut hyper),
            median(&mut ratios)
        );
    }
    drop(child.stdin.take());
    let _ = child.wait();
}

/// A number from the environment, for shorter trial runs.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[derive(Clone, Copy)]
enum Kind {
    Lean,
    Hyper,
}

enum Client {
    Lean(DeliveryClient),
    Hyper(HyperClient),
}

impl Client {
    async fn post(&self, target: &TargetUrl, headers: HeaderMap, body: Bytes) -> u16 {
        match self {
            Client::Lean(c) => c.post(target, headers, body).await.result.expect("an answer").status,
            Client::Hyper(c) => c.post(target, headers, body).await.expect("an answer").0,
        }
    }
}

/// CPU µs per delivery of one run.
async fn measure(kind: Kind, targets: &[TargetUrl]) -> f64 {
    let policy =
        Policy { dev: false, allowed: vec!["127.0.0.1/32".parse().unwrap()], dns_timeout: Duration::from_secs(5) };
    let (connect, request) = (Duration::from_secs(5), Duration::from_secs(15));
    let client = Arc::new(match kind {
        Kind::Lean => Client::Lean(DeliveryClient::new(policy, connect, request, MAX_IDLE)),
        Kind::Hyper => Client::Hyper(HyperClient::new(policy, request)),
    });
    let targets = Arc::new(targets.to_vec());
    send(&client, &targets, WARM_UP).await;
    let deliveries = setting("HOOKLINE_BENCH_DELIVERIES", DELIVERIES);
    let started = cpu_time();
    send(&client, &targets, deliveries).await;
    (cpu_time() - started).as_secs_f64() * 1e6 / deliveries as f64
}

/// Sends `deliveries` deliveries, an event at a time to every target, each
/// delivery in a task of its own as the worker does.
async fn send(client: &Arc<Client>, targets: &Arc<Vec<TargetUrl>>, deliveries: usize) {
    let events = deliveries / targets.len();
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..EVENTS_IN_FLIGHT {
        let (client, targets, next) = (client.clone(), targets.clone(), next.clone());
        senders.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < events {
                let mut fan_out = tokio::task::JoinSet::new();
                for target in targets.iter() {
                    let (client, target) = (client.clone(), target.clone());
                    fan_out.spawn(async move { client.post(&target, headers(), body()).await });
                }
                while let Some(status) = fan_out.join_next().await {
                    assert_eq!(status.unwrap(), 200);
                }
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.unwrap();
    }
}

/// Headers of the size a signed delivery has.
fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("user-agent", HeaderValue::from_static("hookline/0.1.0"));
    h.insert("webhook-id", HeaderValue::from_static("dlv_01JDZ8Q4V6Q3KX6T9W2M5N7P8R"));
    h.insert("webhook-timestamp", HeaderValue::from_static("1796173200"));
    h.insert("webhook-signature", HeaderValue::from_static("v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="));
    h.insert(
        "x-signature",
        HeaderValue::from_static("sha256=2b9a197f337de59f5452ed44b1f4267d535086790466a8fda3d3437f1fffa48e"),
    );
    h.insert("x-event-name", HeaderValue::from_static("order.created"));
    h
}

fn body() -> Bytes {
    Bytes::from_static(
        br#"{"id":"evt_01JDZ8Q4V6Q3KX6T9W2M5N7P8R","type":"order.created","timestamp":"2026-12-02T01:00:00Z","data":{"order_id":"ord_1042","customer_id":"cus_77","currency":"EUR","total_amount":12990,"items":[{"sku":"SKU-1","quantity":2,"unit_price":4995},{"sku":"SKU-2","quantity":1,"unit_price":3000}],"created_at":"2026-12-02T00:59:58Z"}}"#,
    )
}

/// The same job on `hyper::client::conn::http1`: a connection task per
/// connection, an idle pool per target, the SSRF check on connect, one
/// deadline over the exchange, and the body read only up to the kept prefix.
struct HyperClient {
    policy: Policy,
    request_timeout: Duration,
    idle: Mutex<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
}

impl HyperClient {
    fn new(policy: Policy, request_timeout: Duration) -> Self {
        Self { policy, request_timeout, idle: Mutex::new(HashMap::new()) }
    }

    async fn post(&self, target: &TargetUrl, headers: HeaderMap, body: Bytes) -> Result<(u16, Vec<u8>), String> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        tokio::time::timeout_at(deadline, self.exchange(target, headers, body))
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    async fn exchange(&self, target: &TargetUrl, headers: HeaderMap, body: Bytes) -> Result<(u16, Vec<u8>), String> {
        let mut sender = loop {
            let Some(mut sender) = self.take(target.pool_key()) else { break self.connect(target).await? };
            if sender.ready().await.is_ok() {
                break sender;
            }
        };
        let mut request = hyper::Request::post(target.path_and_query()).body(Full::new(body)).expect("a request");
        *request.headers_mut() = headers;
        request.headers_mut().insert(HOST, HeaderValue::from_str(target.authority()).expect("a host"));
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut prefix = Vec::new();
        let complete = loop {
            match body.frame().await {
                None => break true,
                Some(Err(_)) => break false,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = KEPT_BODY_BYTES - prefix.len();
                        prefix.extend_from_slice(&data[..data.len().min(room)]);
                        if prefix.len() == KEPT_BODY_BYTES && data.len() > room {
                            break false;
                        }
                    }
                }
            }
        };
        if complete {
            let mut idle = self.idle.lock().unwrap();
            let conns = idle.entry(target.pool_key().to_owned()).or_default();
            if conns.len() < MAX_IDLE {
                conns.push(sender);
            }
        }
        Ok((status, prefix))
    }

    fn take(&self, key: &str) -> Option<SendRequest<Full<Bytes>>> {
        self.idle.lock().unwrap().get_mut(key)?.pop()
    }

    async fn connect(&self, target: &TargetUrl) -> Result<SendRequest<Full<Bytes>>, String> {
        let addrs =
            self.policy.resolve(&target.host(), target.port(), target.is_https()).await.map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addrs[0]).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = conn::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

/// The receiver process: `ports` listeners on 127.0.0.1 answering every
/// request with `200 ok`, until standard input closes.
fn receiver(ports: usize) {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_line(&mut String::new());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut listeners = Vec::new();
        let mut line = String::new();
        for _ in 0..ports {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            line.push_str(&format!("{} ", listener.local_addr().unwrap().port()));
            listeners.push(listener);
        }
        println!("{line}");
        std::io::stdout().flush().unwrap();
        for listener in listeners {
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(answer(socket));
                }
            });
        }
        std::future::pending::<()>().await;
    });
}

async fn answer(mut socket: TcpStream) {
    let _ = socket.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        // One whole request (head and Content-Length body), then the answer.
        let request_len = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let length = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= head + length {
                        break head + length;
                    }
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return,
            }
            match socket.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        buf.advance(request_len);
        if socket.write_all(ANSWER).await.is_err() {
            return;
        }
    }
}
