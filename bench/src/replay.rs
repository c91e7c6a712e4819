//! The `replay` scenario: how ingest fares while a large replay runs.
//!
//! After the live phase has delivered every event once, it measures ingest
//! at a steady rate (`--replay-rate`) for a few seconds as a baseline, then
//! asks `POST /v1/webhook-logs/replay` to send every delivery of the run again
//! while the same steady ingest goes on, and stops when every replayed
//! delivery has arrived again. It reports the replay's answer, how long the
//! redelivery took, and ingest latency before and during it.
//!
//! Deliveries of the steady ingest are told from replayed ones by their
//! sequence numbers: they are numbered past the live phase's, which the
//! receiver does not know (`Arrivals::unmatched`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;

use crate::receiver::Arrivals;
use crate::{
    HttpClient, IngestResult, Percentiles, Target, event_body, percentiles_ms, post_json, wait_for_deliveries,
};

/// How long ingest is measured before the replay, for comparison.
const BASELINE: Duration = Duration::from_secs(5);
/// Steady-ingest clients: enough for the rates this scenario uses.
const CLIENTS: usize = 8;

#[derive(Debug, Serialize)]
pub struct ReplayResult {
    /// The replay's answer.
    pub matched: u64,
    pub requeued: u64,
    /// How long `POST /v1/webhook-logs/replay` took to answer.
    pub answer_ms: f64,
    /// From the replay request until the last replayed delivery arrived.
    pub redelivery_seconds: f64,
    pub redelivered: u64,
    /// Steady ingest before the replay, and while it ran.
    pub ingest_before: IngestResult,
    pub ingest_during: IngestResult,
}

/// Runs the scenario on a server that has delivered `delivered` deliveries.
pub async fn run(
    client: &HttpClient,
    target: &Target,
    arrivals: &Arrivals,
    delivered: u64,
    webhooks: usize,
    rate: f64,
    first_seq: usize,
) -> anyhow::Result<ReplayResult> {
    let next_seq = Arc::new(AtomicUsize::new(first_seq));

    let stop = Arc::new(AtomicBool::new(false));
    let before = tokio::spawn(steady_ingest(target.clone(), rate, next_seq.clone(), stop.clone()));
    tokio::time::sleep(BASELINE).await;
    stop.store(true, Ordering::Relaxed);
    let ingest_before = before.await??;
    let settled = delivered + (ingest_before.accepted * webhooks) as u64;
    anyhow::ensure!(
        wait_for_deliveries(arrivals, settled, Duration::from_secs(30)).await,
        "the baseline's deliveries did not all arrive"
    );
    let replayed_before = arrivals.count.load(Ordering::Relaxed) - arrivals.unmatched.load(Ordering::Relaxed);

    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(steady_ingest(target.clone(), rate, next_seq, stop.clone()));
    let asked = Instant::now();
    let answer = post_json(
        client,
        &format!("{}/v1/webhook-logs/replay", target.base),
        &target.api_key,
        &json!({"since": "2000-01-01T00:00:00Z"}),
    )
    .await
    .context("the replay request")?;
    let answer_ms = asked.elapsed().as_secs_f64() * 1000.0;
    let matched = answer["matched"].as_u64().context("no matched in the replay's answer")?;
    let requeued = answer["requeued"].as_u64().context("no requeued in the replay's answer")?;

    // Replayed deliveries are the ones whose sequence number the receiver knows.
    let replayed =
        || arrivals.count.load(Ordering::Relaxed) - arrivals.unmatched.load(Ordering::Relaxed) - replayed_before;
    let (mut last, mut last_change) = (replayed(), Instant::now());
    while replayed() < requeued && last_change.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if replayed() != last {
            (last, last_change) = (replayed(), Instant::now());
        }
    }
    let redelivery_seconds = asked.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let ingest_during = during.await??;
    Ok(ReplayResult {
        matched,
        requeued,
        answer_ms,
        redelivery_seconds,
        redelivered: replayed(),
        ingest_before,
        ingest_during,
    })
}

/// Sends events at `rate` per second in total, numbered from `next_seq` on,
/// until `stop` is set.
async fn steady_ingest(
    target: Target,
    rate: f64,
    next_seq: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<IngestResult> {
    let authority = target.base.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let addr = tokio::net::lookup_host(&authority).await?.next().context("the server's address does not resolve")?;
    let started = Instant::now();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let mut conn = crate::wire::ClientConn::connect(addr).await?;
        let (host, key) = (authority.clone(), target.api_key.clone());
        let (next_seq, stop, sent) = (next_seq.clone(), stop.clone(), sent.clone());
        tasks.spawn(async move {
            let (mut latencies, mut accepted, mut rejected) = (Vec::new(), 0usize, 0usize);
            while !stop.load(Ordering::Relaxed) {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep_until((started + Duration::from_secs_f64(n as f64 / rate)).into()).await;
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                match conn.post(&host, "/v1/events", &key, event_body(seq).as_bytes()).await {
                    Ok((202, _)) => {
                        accepted += 1;
                        latencies.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Ok(_) => rejected += 1,
                    Err(_) => {
                        rejected += 1;
                        break;
                    }
                }
            }
            (latencies, accepted, rejected)
        });
    }
    let (mut latencies, mut accepted, mut rejected) = (Vec::new(), 0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (l, a, r) = joined?;
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

pub fn print_report(r: &ReplayResult) {
    let p = |p: &Option<Percentiles>| match p {
        Some(p) => format!("p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms", p.p50, p.p90, p.p99, p.max),
        None => "-".to_owned(),
    };
    println!(
        "  replay     matched {}, requeued {}, answered in {:.0} ms; {} redelivered in {:.2} s = {:.0} deliveries/s",
        r.matched,
        r.requeued,
        r.answer_ms,
        r.redelivered,
        r.redelivery_seconds,
        r.redelivered as f64 / r.redelivery_seconds
    );
    println!(
        "  ingest before the replay   {:.0} events/s  latency {}",
        r.ingest_before.events_per_s,
        p(&r.ingest_before.latency_ms)
    );
    println!(
        "  ingest during the replay   {:.0} events/s  latency {}",
        r.ingest_during.events_per_s,
        p(&r.ingest_during.latency_ms)
    );
}
