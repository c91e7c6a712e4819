//! Process logs. Filters come from `RUST_LOG` (default `info`). Nothing logged
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

#[cfg(test)]
mod tests {
    use super::*;

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
