//! Process logs and metrics. Log filters come from `RUST_LOG` (default `info`). Nothing logged
//! anywhere in hookline carries event data, keys or secrets: spans hold method,
//! path, request id and object ids only.
//!
//! Dependencies that handle raw requests, TLS or SQL (see [`QUIET_TARGETS`])
//! are held at `info` whatever `RUST_LOG` asks: at debug and trace level such
//! crates may print headers (`Authorization`), bodies or statements, and the
//! promise that no key, secret or payload reaches the logs must hold at every
//! level. hookline's own targets, `tower_http` and `axum::serve` stay fully
//! tunable.

use std::io::IsTerminal as _;

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Targets (and their submodules) never logged below `info`.
pub const QUIET_TARGETS: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "rustls",
    "tokio_rustls",
    "reqwest",
    "sqlx",
    "tokio_postgres",
    "postgres",
    // axum's trace-level rejection events include the rejection's text, which
    // for JSON extractors can quote the offending value.
    "axum::rejection",
];

/// Whether an event or span of `target` at `level` may be logged at all.
pub fn may_log(target: &str, level: Level) -> bool {
    let quiet = QUIET_TARGETS
        .iter()
        .any(|t| target.strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")));
    !quiet || level <= Level::INFO
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let quiet = filter_fn(|meta: &Metadata<'_>| may_log(meta.target(), *meta.level()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests building several apps) is harmless; ignore it.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).finish().with(quiet).try_init(),
        LogFormat::Pretty => builder.finish().with(quiet).try_init(),
    };
}

/// Buckets of `hookline_delivery_attempt_duration_seconds`: from a fast local
/// receiver to past the request timeout. An attempt that times out lasts a
/// little longer than the timeout (15 s by default, configurable), so buckets
/// reach beyond it: otherwise every timeout would land in `+Inf` only.
const ATTEMPT_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0];

/// Buckets of `hookline_sqlite_group_writes`: writes that shared one commit.
const GROUP_WRITES_BUCKETS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
/// Buckets of `hookline_sqlite_group_seconds`: from a cached commit to a slow disk.
const GROUP_SECONDS_BUCKETS: [f64; 10] = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5];

/// How often histograms and idle series are tidied, scraped or not.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();

/// The process's Prometheus recorder, installed on first use. A process has one
/// global recorder, while tests build several applications in one process:
/// they all share this one.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    METRICS.get_or_init(|| {
        let recorder = recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder was installed first; /metrics will be empty");
        }
        describe_metrics();
        let upkeep = handle.clone();
        // A thread rather than a task: the recorder outlives any one runtime.
        let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP);
                upkeep.run_upkeep();
            }
        });
        handle
    })
}

/// The Prometheus recorder with hookline's histogram buckets.
fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("hookline_delivery_attempt_duration_seconds".to_owned()),
            &ATTEMPT_BUCKETS,
        )
        .expect("the buckets are not empty")
        .set_buckets_for_metric(Matcher::Full("hookline_sqlite_group_writes".to_owned()), &GROUP_WRITES_BUCKETS)
        .expect("the buckets are not empty")
        .set_buckets_for_metric(Matcher::Full("hookline_sqlite_group_seconds".to_owned()), &GROUP_SECONDS_BUCKETS)
        .expect("the buckets are not empty")
        .build_recorder()
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("hookline_ingest_requests_total", "Answers of POST /v1/events, by HTTP status.");
    describe_counter!("hookline_events_accepted_total", "Events stored (202, not replayed), by event type.");
    describe_counter!(
        "hookline_http_connections_refused_total",
        "API connections refused because --max-connections were open (answered 503, or closed in a flood)."
    );
    describe_counter!(
        "hookline_deliveries_total",
        "Delivery attempts by outcome: sent, failed (for good), retry (another attempt scheduled)."
    );
    describe_histogram!("hookline_sqlite_group_writes", "SQLite: writes committed together by one group commit.");
    describe_histogram!(
        "hookline_sqlite_group_seconds",
        Unit::Seconds,
        "SQLite: time to run and commit one group of writes, fsync included."
    );
    describe_histogram!(
        "hookline_delivery_attempt_duration_seconds",
        Unit::Seconds,
        "Time from sending a delivery attempt to its answer or error."
    );
    describe_counter!("hookline_retries_total", "Delivery attempts that were not a delivery's first.");
    describe_gauge!(
        "hookline_queue_depth",
        "Pending deliveries: all of them, those due now, and those leased by a worker."
    );
    describe_gauge!(
        "hookline_oldest_pending_age_seconds",
        Unit::Seconds,
        "Age of the oldest pending delivery; 0 when none is pending."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_that_ran_into_the_request_timeout_lands_in_a_bucket_of_its_own() {
        let recorder = recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            // Timed out at the default 15 s request timeout, plus the time to notice.
            metrics::histogram!("hookline_delivery_attempt_duration_seconds").record(15.02);
        });
        let text = handle.render();
        let bucket = |le: &str| {
            let prefix = format!("hookline_delivery_attempt_duration_seconds_bucket{{le=\"{le}\"}} ");
            let line =
                text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no bucket {le}:\n{text}"));
            line[prefix.len()..].parse::<u64>().unwrap()
        };
        assert_eq!(bucket("15"), 0);
        assert_eq!(bucket("20"), 1, "a bucket above 15 s holds the timeout");
        assert_eq!(bucket("+Inf"), 1);
    }

    #[test]
    fn protocol_crates_are_held_at_info_and_ours_are_not() {
        let cases = [
            ("hyper::proto::h1::role", Level::TRACE, false),
            ("h2::codec::framed_write", Level::DEBUG, false),
            ("rustls::client::hs", Level::TRACE, false),
            ("sqlx::query", Level::DEBUG, false),
            ("axum::rejection", Level::TRACE, false),
            ("hyper_util::client::legacy::pool", Level::INFO, true),
            ("h2", Level::WARN, true),
            ("hookline::delivery::worker", Level::TRACE, true),
            ("hyperloop", Level::TRACE, true),
            ("axum::serve", Level::TRACE, true),
            ("tower_http::trace::on_request", Level::DEBUG, true),
        ];
        for (target, level, allowed) in cases {
            assert_eq!(may_log(target, level), allowed, "{target} at {level}");
        }
    }
}
