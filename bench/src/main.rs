//! `hookline-bench`: an end-to-end benchmark a user can run on their own machine.
//!
//! It starts `hookline serve` as a child process from a given binary (or
//! targets a running server with `--url`), starts a minimal local receiver,
//! creates a project with N webhooks, drives ingest with C concurrent
//! keep-alive clients, waits until every delivery has arrived, and reports
//! ingest throughput and latency, end-to-end deliveries per second and
//! send→delivery latency, and the server's CPU time and peak RSS (read from
//! /proc).
//!
//! It knows the server only by its command line, its HTTP API and the log
//! line that names its address, so the same load generator can measure two
//! builds of hookline (`--server-bin`).
//!
//! Scenarios: `live` ingests and delivers at the same time; `drain` ingests
//! with the worker stopped (`--role api`), then starts a worker-only server on
//! the same database and measures how fast the backlog drains; `replay`
//! delivers like `live`, then replays every delivery and measures ingest
//! meanwhile (`replay.rs`); `noisy` measures one project's deliveries
//! (*beta*, at a steady rate) while another project's targets (*alpha*'s)
//! hang until the server's request timeout.
//!
//! Layout: `wire` speaks the little HTTP/1.1 the load client and the receiver
//! need; `receiver` records arrivals; `server` runs the server under test.

#![forbid(unsafe_code)]

mod receiver;
mod replay;
mod server;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};

use receiver::{Arrivals, SendTimes};
use server::ServerUnderTest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Ingest and deliver at the same time.
    Live,
    /// Ingest with the worker stopped, then measure how fast a worker drains the backlog.
    Drain,
    /// Deliver like `live`, then replay every delivery and measure steady ingest meanwhile.
    Replay,
    /// A healthy project's latency while another project's targets hang (SPEC §8).
    Noisy,
}

/// Measure a hookline server's end-to-end throughput and latency on this machine.
#[derive(Debug, Clone, Parser)]
#[command(name = "hookline-bench", version)]
pub struct BenchArgs {
    /// Events to send (with --duration: the most to send).
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Send for this long instead of a fixed count (e.g. 60s; noisy: 20s by default).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Send at this steady rate (events/s) instead of as fast as possible (noisy: 20 by default).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Concurrent keep-alive ingest clients.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub concurrency: usize,
    /// Webhooks per event (each event becomes this many deliveries).
    #[arg(long, default_value_t = 1)]
    pub webhooks: usize,
    #[arg(long, value_enum, default_value = "live")]
    pub scenario: Scenario,
    /// Replay scenario: the steady ingest rate (events/s) measured before and during the replay.
    #[arg(long, default_value_t = 200.0)]
    pub replay_rate: f64,
    /// Noisy: webhooks of the noisy project, each to a receiver of its own that never answers.
    #[arg(long, default_value_t = 4)]
    pub slow_targets: usize,
    /// Noisy: events the noisy project sends in one burst before the measured one starts.
    #[arg(long, default_value_t = 200)]
    pub slow_events: usize,
    /// The `hookline` binary to start as the server under test; by default the
    /// one beside this executable (the same target directory).
    #[arg(long, env = "HOOKLINE_BENCH_SERVER_BIN")]
    pub server_bin: Option<PathBuf>,
    /// Database of the started server: a temp SQLite file by default, or `postgres://…`.
    #[arg(long, env = "HOOKLINE_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Benchmark a running server instead (started with `--allow-target-cidr 127.0.0.1/32`
    /// and an admin token); its CPU and memory are then not measured.
    #[arg(long)]
    pub url: Option<String>,
    /// The admin token of the server given with --url.
    #[arg(long, env = "HOOKLINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Extra `hookline serve` flags for the started server, after `--`.
    #[arg(last = true)]
    pub server_args: Vec<String>,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client(pool: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(pool).build(connector)
}

async fn post(client: &HttpClient, url: &str, bearer: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {bearer}"))
        .body(Full::new(body))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn post_json(client: &HttpClient, url: &str, bearer: &str, body: &Value) -> anyhow::Result<Value> {
    let (status, bytes) = post(client, url, bearer, Bytes::from(body.to_string())).await?;
    anyhow::ensure!((200..300).contains(&status), "POST {url} answered {status}: {}", String::from_utf8_lossy(&bytes));
    Ok(serde_json::from_slice(&bytes)?)
}

/// An `order.created` of about 500 bytes (499 and the digits of `seq`), the size of the reference workload.
fn event_body(seq: usize) -> String {
    format!(
        r#"{{"event_name":"order.created","data":{{"order_id":"b{seq}","customer_id":"cus_8f14e45fceea167a5a36dedd4bea2543","currency":"EUR","total_amount":12990,"items":[{{"sku":"SKU-TSHIRT-BLK-M","quantity":2,"unit_price":2495}},{{"sku":"SKU-HOODIE-GRY-L","quantity":1,"unit_price":5990}},{{"sku":"SKU-SOCKS-WHT-42","quantity":3,"unit_price":670}}],"created_at":"2026-11-30T08:00:00Z","metadata":{{"channel":"web","campaign":"black-friday-2026","coupon":"BF26","warehouse":"eu-central-1","note":"leave at the door"}}}}}}"#
    )
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

fn percentiles_ms(mut us: Vec<u32>) -> Option<Percentiles> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let at = |q: f64| f64::from(us[((us.len() - 1) as f64 * q).round() as usize]) / 1000.0;
    Some(Percentiles { p50: at(0.50), p90: at(0.90), p99: at(0.99), max: at(1.0) })
}

#[derive(Debug, Serialize)]
pub struct IngestResult {
    pub sent: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub seconds: f64,
    pub events_per_s: f64,
    pub latency_ms: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryResult {
    pub expected: u64,
    pub delivered: u64,
    pub complete: bool,
    pub seconds: f64,
    pub deliveries_per_s: f64,
    /// From the moment the event was sent until the receiver had it.
    pub latency_ms: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
pub struct ServerResult {
    pub cpu_seconds: f64,
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// CPU seconds by thread name: `sqlite-writer` is the SQLite writer,
    /// `tokio-runtime-w` the async workers (HTTP, delivery, PostgreSQL's
    /// statements).
    pub threads: std::collections::BTreeMap<String, server::ThreadCpu>,
    /// CPU time over wall time: 100 is one core busy.
    pub cpu_percent: f64,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub scenario: Scenario,
    pub backend: String,
    pub webhooks: usize,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub ingest: IngestResult,
    pub delivery: DeliveryResult,
    /// The replay scenario's phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<replay::ReplayResult>,
    pub server: Option<ServerResult>,
    /// The noisy scenario's other project; `ingest` and `delivery` are the measured one's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noisy: Option<NoisyResult>,
}

#[derive(Debug, Serialize)]
pub struct NoisyResult {
    /// Receivers that never answer, one webhook each.
    pub slow_targets: usize,
    pub slow_events: usize,
    pub slow_accepted: usize,
    /// Connections the server opened to them (each holds one request that hangs).
    pub slow_connections: u64,
}

#[derive(Clone)]
struct Target {
    base: String,
    api_key: String,
}

/// Creates a project and one `order.created` webhook per URL through the admin API.
async fn set_up(client: &HttpClient, base: &str, admin: &str, name: &str, urls: &[String]) -> anyhow::Result<Target> {
    let created = post_json(client, &format!("{base}/v1/admin/projects"), admin, &json!({"name": name})).await?;
    let api_key = created["api_key"].as_str().context("no api_key in the admin answer")?.to_owned();
    for url in urls {
        let hook = json!({"event": "order.created", "target_url": url});
        post_json(client, &format!("{base}/v1/webhooks"), &api_key, &hook).await?;
    }
    Ok(Target { base: base.to_owned(), api_key })
}

/// Sends events with `concurrency` keep-alive clients until the count or the duration is reached.
async fn ingest(
    args: &BenchArgs,
    target: &Target,
    times: Arc<SendTimes>,
    progress: Arc<Progress>,
) -> anyhow::Result<IngestResult> {
    let authority = target.base.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let addr = tokio::net::lookup_host(&authority).await?.next().context("the server's address does not resolve")?;
    let host: Arc<str> = authority.into();
    let key: Arc<str> = target.api_key.clone().into();
    let next = Arc::new(AtomicUsize::new(0));
    let limit = times.capacity();
    let started = Instant::now();
    let until = args.duration.map(|d| started + d);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let mut conn = wire::ClientConn::connect(addr).await?;
        let (host, key, next, times, progress) =
            (host.clone(), key.clone(), next.clone(), times.clone(), progress.clone());
        let rate = args.rate;
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let (mut accepted, mut rejected) = (0usize, 0usize);
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= limit || until.is_some_and(|u| Instant::now() >= u) {
                    break;
                }
                if let Some(rate) = rate {
                    tokio::time::sleep_until((started + Duration::from_secs_f64(seq as f64 / rate)).into()).await;
                }
                times.mark(seq);
                let t0 = Instant::now();
                match conn.post(&host, "/v1/events", &key, event_body(seq).as_bytes()).await {
                    Ok((202, _)) => {
                        accepted += 1;
                        latencies.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Ok(_) => rejected += 1,
                    Err(_) => {
                        rejected += 1;
                        break; // The connection is gone.
                    }
                }
                progress.sent.fetch_add(1, Ordering::Relaxed);
            }
            (latencies, accepted, rejected)
        });
    }
    let (mut latencies, mut accepted, mut rejected) = (Vec::new(), 0, 0);
    while let Some(Ok((l, a, r))) = tasks.join_next().await {
        latencies.extend(l);
        accepted += a;
        rejected += r;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(IngestResult {
        sent: accepted + rejected,
        accepted,
        rejected,
        seconds,
        events_per_s: accepted as f64 / seconds,
        latency_ms: percentiles_ms(latencies),
    })
}

/// Counters the progress line reads.
#[derive(Default)]
struct Progress {
    sent: AtomicUsize,
}

fn spawn_progress(
    progress: Arc<Progress>,
    arrivals: Arc<Arrivals>,
    expected: u64,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    use std::io::{IsTerminal as _, Write as _};
    tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal { Duration::from_millis(200) } else { Duration::from_secs(5) };
        loop {
            tokio::time::sleep(every).await;
            if quiet {
                continue;
            }
            let delivered = arrivals.count.load(Ordering::Relaxed);
            let done = if expected == 0 { 0 } else { (delivered * 30 / expected.max(1)).min(30) as usize };
            let bar = format!("[{}{}]", "#".repeat(done), ".".repeat(30 - done));
            let line =
                format!("{bar} sent {}  delivered {delivered}/{expected}", progress.sent.load(Ordering::Relaxed));
            let mut err = std::io::stderr();
            if terminal {
                let _ = write!(err, "\r{line}   ");
            } else {
                let _ = writeln!(err, "{line}");
            }
            let _ = err.flush();
        }
    })
}

/// Waits until `expected` deliveries arrived, or until nothing arrived for `stall`.
async fn wait_for_deliveries(arrivals: &Arrivals, expected: u64, stall: Duration) -> bool {
    let mut last = arrivals.count.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = arrivals.count.load(Ordering::Relaxed);
        if now >= expected {
            return true;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the benchmark on a single-threaded runtime: the load generator and the
/// receiver share the machine with the server they measure, and one thread
/// without cross-thread wake-ups is their cheapest form.
fn main() -> anyhow::Result<()> {
    let args = BenchArgs::parse();
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run(args))
}

async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.url.is_some() && args.scenario == Scenario::Drain {
        bail!("the drain scenario restarts the server, so it cannot target --url");
    }
    let noisy = args.scenario == Scenario::Noisy;
    if noisy {
        // The measured project sends at a steady rate for a while, unless told otherwise.
        args.rate.get_or_insert(20.0);
        args.duration.get_or_insert(Duration::from_secs(20));
    }
    let capacity = match (args.duration, args.rate) {
        (Some(d), Some(rate)) => ((d.as_secs_f64() * rate) as usize + 1).min(args.events.max(1) * 1000),
        (Some(d), None) => (d.as_secs_f64() * 200_000.0) as usize + 1,
        (None, _) => args.events,
    };
    let start = Instant::now();
    let times = Arc::new(SendTimes::new(start, capacity));
    let (receiver_addr, arrivals) = receiver::start(times.clone()).await?;
    let admin_client = http_client(4);
    let progress = Arc::new(Progress::default());

    let (backend, mut server, admin) = match &args.url {
        Some(url) => {
            let admin = args.admin_token.clone().context("--url needs --admin-token")?;
            ("external".to_owned(), None, (url.trim_end_matches('/').to_owned(), admin))
        }
        None => {
            let role = if args.scenario == Scenario::Drain { "api" } else { "all" };
            let s = ServerUnderTest::start(
                args.server_bin.as_deref(),
                args.database_url.as_deref(),
                role,
                &args.server_args,
            )
            .await?;
            let admin = (s.base.clone(), s.admin_token.clone());
            (s.backend_name().to_owned(), Some(s), admin)
        }
    };
    let urls: Vec<String> = (0..args.webhooks).map(|i| format!("http://{receiver_addr}/hook/{i}")).collect();
    let name = if noisy { "beta" } else { "bench" };
    let target = set_up(&admin_client, &admin.0, &admin.1, name, &urls).await?;
    let cpu_before = server.as_ref().map(|s| s.cpu()).unwrap_or_default();

    // Noisy: project alpha's targets hang; its burst is in before beta starts sending.
    let mut alpha = None;
    if noisy {
        let hanging = receiver::start_hanging(args.slow_targets).await?;
        let urls: Vec<String> = hanging.addrs.iter().map(|a| format!("http://{a}/hook")).collect();
        let alpha_target = set_up(&admin_client, &admin.0, &admin.1, "alpha", &urls).await?;
        let burst = BenchArgs { rate: None, duration: None, ..args.clone() };
        let burst_times = Arc::new(SendTimes::new(start, args.slow_events));
        let accepted = ingest(&burst, &alpha_target, burst_times, Arc::default()).await?.accepted;
        alpha = Some((hanging, accepted));
    }

    // With --duration the expected count is only known once sending stops.
    let expected_now = if args.duration.is_none() { (capacity * args.webhooks) as u64 } else { 0 };
    let progress_task = spawn_progress(progress.clone(), arrivals.clone(), expected_now, args.json);
    let ingest_result = ingest(&args, &target, times.clone(), progress.clone()).await?;
    let expected = (ingest_result.accepted * args.webhooks) as u64;

    let mut drain_started_us = None;
    if args.scenario == Scenario::Drain {
        let api = server.take().expect("drain starts its own server");
        let dir = api.stop().await?;
        drain_started_us = Some(times.since_start_us());
        server = Some(ServerUnderTest::restart(dir, "worker", &args.server_args).await?);
    }
    // Noisy: beta's deliveries may wait behind alpha's for several request timeouts (15 s each).
    let stall = Duration::from_secs(if noisy { 120 } else { 30 });
    let complete = wait_for_deliveries(&arrivals, expected, stall).await;
    progress_task.abort();
    if !args.json {
        eprintln!();
    }

    let delivered = arrivals.count.load(Ordering::Relaxed);
    let latencies = std::mem::take(&mut *arrivals.latencies_us.lock().expect("not poisoned"));
    let last_us = arrivals.last_us.load(Ordering::Relaxed);
    let replay = match args.scenario {
        Scenario::Replay if complete => Some(
            replay::run(&admin_client, &target, &arrivals, delivered, args.webhooks, args.replay_rate, capacity)
                .await?,
        ),
        _ => None,
    };
    let first = drain_started_us
        .unwrap_or_else(|| arrivals.first_us.load(Ordering::Relaxed).min(arrivals.last_us.load(Ordering::Relaxed)));
    let seconds = (last_us.saturating_sub(first)) as f64 / 1e6;
    let server_result = server.as_ref().map(|s| {
        // The drain's server was started after `cpu_before`: all of its time counts.
        let cpu = if drain_started_us.is_some() { s.cpu() } else { s.cpu().since(&cpu_before) };
        let wall = start.elapsed().as_secs_f64();
        ServerResult {
            cpu_seconds: cpu.total(),
            user_seconds: cpu.user,
            system_seconds: cpu.system,
            cpu_percent: 100.0 * cpu.total() / wall,
            peak_rss_mb: s.peak_rss_mb(),
            threads: cpu.threads,
        }
    });
    // Dropping the hanging receivers closes what they hold, so the server stops at once.
    let noisy_result = alpha.map(|(hanging, slow_accepted)| NoisyResult {
        slow_targets: hanging.addrs.len(),
        slow_events: args.slow_events,
        slow_accepted,
        slow_connections: hanging.connections.load(Ordering::Relaxed),
    });
    let result = BenchResult {
        scenario: args.scenario,
        backend,
        webhooks: args.webhooks,
        concurrency: args.concurrency,
        rate: args.rate,
        ingest: ingest_result,
        delivery: DeliveryResult {
            expected,
            delivered,
            complete,
            seconds,
            deliveries_per_s: if seconds > 0.0 { delivered as f64 / seconds } else { 0.0 },
            latency_ms: if drain_started_us.is_some() { None } else { percentiles_ms(latencies) },
        },
        replay,
        server: server_result,
        noisy: noisy_result,
    };
    if let Some(s) = server {
        s.stop().await?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_report(&result);
    }
    if !result.delivery.complete {
        bail!("only {} of {} deliveries arrived", result.delivery.delivered, result.delivery.expected);
    }
    Ok(())
}

fn print_report(r: &BenchResult) {
    let p = |p: &Option<Percentiles>| match p {
        Some(p) => format!("p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms", p.p50, p.p90, p.p99, p.max),
        None => "-".to_owned(),
    };
    println!(
        "hookline-bench: {:?} on {}, {} webhook(s) per event, {} clients",
        r.scenario, r.backend, r.webhooks, r.concurrency
    );
    println!(
        "  ingest     {} accepted ({} rejected) in {:.2} s = {:.0} events/s",
        r.ingest.accepted, r.ingest.rejected, r.ingest.seconds, r.ingest.events_per_s
    );
    println!("             latency {}", p(&r.ingest.latency_ms));
    println!(
        "  delivery   {}/{} in {:.2} s = {:.0} deliveries/s",
        r.delivery.delivered, r.delivery.expected, r.delivery.seconds, r.delivery.deliveries_per_s
    );
    println!("             send→delivery {}", p(&r.delivery.latency_ms));
    match &r.server {
        Some(s) => {
            println!(
                "  server     CPU {:.2} s ({:.0} % of one core; user {:.2} s, system {:.2} s), peak RSS {:.1} MB",
                s.cpu_seconds, s.cpu_percent, s.user_seconds, s.system_seconds, s.peak_rss_mb
            );
            let threads: Vec<String> = (s.threads.iter())
                .filter(|(_, t)| t.user + t.system >= 0.005)
                .map(|(name, t)| format!("{name} {:.2} s (system {:.2} s)", t.user + t.system, t.system))
                .collect();
            println!("             by thread: {}", threads.join(", "));
        }
        None => println!("  server     not measured (--url)"),
    }
    if let Some(replay) = &r.replay {
        replay::print_report(replay);
    }
    if let Some(n) = &r.noisy {
        println!(
            "  noisy      the figures above are project beta's; alpha sent {} events ({} accepted) to {} \
             targets that never answer, which held {} connections",
            n.slow_events, n.slow_accepted, n.slow_targets, n.slow_connections
        );
    }
}
