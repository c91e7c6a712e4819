//! The HTTP server under the API (SPEC §10): accepts connections, serves each
//! with hyper in a task of its own, and holds clients to `--client-timeout`,
//! `--max-connections` and, on shutdown, `--shutdown-grace`.
//!
//! `axum::serve` has no timer: a client that sends half a request head, or a
//! body at a byte a second, keeps its connection, and a graceful shutdown,
//! waiting for ever. hyper's own `header_read_timeout` covers the head only and
//! closes without an answer. So each connection keeps its own clock
//! ([`connection`]), and this module owns the accept loop around them:
//!
//! - **Limit.** A semaphore of `--max-connections` permits; a connection
//!   accepted without one is answered 503 (`Retry-After`, `Connection: close`)
//!   and closed. At most [`MAX_REFUSING`] such answers are in progress at once;
//!   past that, extra connections are closed unanswered, so a flood costs
//!   neither memory nor file descriptors without bound.
//! - **Shutdown.** On `stop` the listener closes and every connection is told
//!   to finish: idle ones close at once, a request in progress may finish.
//!   Whatever is still open after `--shutdown-grace` is dropped.
//! - **Open files.** Each connection holds a file descriptor; at start
//!   [`fit_to_open_file_limit`] raises the soft limit if needed (as Go's runtime
//!   does) or lowers the connection limit to what fits, so that clients alone
//!   can never exhaust the descriptors that deliveries and the database need.

mod connection;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use connection::RequestTimedOut;

use crate::config::HttpSettings;

/// Connections over the limit that are being answered 503 at once.
pub const MAX_REFUSING: usize = 128;
/// How long an answered and closing connection reads what its client still
/// sends (see [`connection::answer_and_close`]), at most.
const LINGER: Duration = Duration::from_secs(1);
/// The pause after accepting failed for want of resources (file descriptors,
/// memory), so that a full table does not turn the loop into a busy one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The answers the server writes itself, on connections no handler serves:
/// whole HTTP/1.1 responses (built by the API's error type).
#[derive(Clone)]
pub struct Answers {
    /// 408: a request head that did not arrive whole in time.
    pub timed_out: Arc<[u8]>,
    /// 503: a connection over `--max-connections`.
    pub overloaded: Arc<[u8]>,
}

/// Serves `router` on `listener` until `stop`, then gives open connections
/// `settings.shutdown_grace` to finish and drops the rest. Returns when every
/// connection is gone.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: HttpSettings,
    answers: Answers,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSING));
    let linger = LINGER.min(settings.client_timeout);
    let mut tasks = JoinSet::new();
    loop {
        let stream = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(joined) = tasks.join_next() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    tracing::error!("an API connection's task panicked");
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(&e, &stop).await;
                    continue;
                }
            },
        };
        // Answers are written whole at once; waiting for more to send only delays them.
        let _ = stream.set_nodelay(true);
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            let (router, answer, stop) = (router.clone(), answers.timed_out.clone(), stop.clone());
            let timeout = settings.client_timeout;
            tasks.spawn(async move {
                connection::serve(stream, router, timeout, &answer, linger, &stop).await;
                drop(slot);
            });
        } else if let Ok(refusing) = refusals.clone().try_acquire_owned() {
            ::metrics::counter!("hookline_http_connections_refused_total").increment(1);
            let (answer, stop) = (answers.overloaded.clone(), stop.clone());
            tasks.spawn(async move {
                connection::answer_and_close(stream, &answer, linger, &stop).await;
                drop(refusing);
            });
        } else {
            ::metrics::counter!("hookline_http_connections_refused_total").increment(1);
            drop(stream);
        }
    }
    drop(listener);
    if tasks.is_empty() {
        return;
    }
    tracing::info!(open = tasks.len(), "the API stopped accepting; open connections may finish");
    let drained = tokio::time::timeout(settings.shutdown_grace, async { while tasks.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!(open = tasks.len(), "dropping API connections still open after --shutdown-grace");
        tasks.shutdown().await;
    }
}

/// A failed `accept`: a connection that died in the backlog is simply gone;
/// anything else (no file descriptor or memory left) is logged and waited out.
async fn accept_failed(e: &io::Error, stop: &CancellationToken) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::warn!(error = %e, "accepting an API connection failed; retrying shortly");
    tokio::select! {
        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
        () = stop.cancelled() => {}
    }
}

/// The connection limit that this process's open-file limit can hold, besides
/// `reserved` descriptors for everything else (deliveries, the database,
/// files). Raises the soft limit towards the hard one when that is enough;
/// otherwise lowers the connection limit, and says so.
pub fn fit_to_open_file_limit(wanted: usize, reserved: u64) -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        let plan = plan_open_files(wanted, reserved, limit.current, limit.maximum);
        let mut soft = limit.current;
        if let Some(raise) = plan.raise_to {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(raise), maximum: limit.maximum }) {
                Ok(()) => soft = Some(raise),
                Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
            }
        }
        let fit = plan_open_files(wanted, reserved, soft, soft).connections;
        if fit < wanted {
            tracing::warn!(
                max_connections = fit,
                wanted,
                open_file_limit = soft,
                "--max-connections lowered to what the open-file limit holds; raise `ulimit -n` for more"
            );
        }
        fit
    }
    #[cfg(not(unix))]
    {
        let _ = reserved;
        wanted
    }
}

/// What to do about the open-file limit: a pure function of the limits, so
/// that it can be tested without changing the process's.
#[derive(Debug, PartialEq, Eq)]
struct OpenFilePlan {
    /// A new soft limit to set, when the current one is too low and the hard one allows more.
    raise_to: Option<u64>,
    /// The connection limit that fits once that is done.
    connections: usize,
}

/// `soft` and `hard` are the limits (`None`: unlimited).
fn plan_open_files(wanted: usize, reserved: u64, soft: Option<u64>, hard: Option<u64>) -> OpenFilePlan {
    let needed = wanted as u64 + MAX_REFUSING as u64 + reserved;
    let Some(soft) = soft else { return OpenFilePlan { raise_to: None, connections: wanted } };
    if soft >= needed {
        return OpenFilePlan { raise_to: None, connections: wanted };
    }
    let reachable = hard.map_or(needed, |hard| hard.min(needed));
    let raise_to = (reachable > soft).then_some(reachable);
    let usable = raise_to.unwrap_or(soft);
    let connections = usable.saturating_sub(MAX_REFUSING as u64 + reserved).clamp(1, wanted as u64) as usize;
    OpenFilePlan { raise_to, connections }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_fits_the_open_file_limit() {
        let extra = MAX_REFUSING as u64 + 500;
        // (wanted, soft, hard) → plan; 500 descriptors reserved.
        let cases = [
            // Enough already, or unlimited.
            (10_000, Some(20_000), Some(20_000), None, 10_000),
            (10_000, None, None, None, 10_000),
            // The soft limit is raised as far as needed, within the hard one.
            (10_000, Some(1024), Some(524_288), Some(10_000 + extra), 10_000),
            (10_000, Some(1024), None, Some(10_000 + extra), 10_000),
            // The hard limit is too low too: raised to it, connections lowered.
            (10_000, Some(1024), Some(4096), Some(4096), 4096 - extra as usize),
            // Nothing to raise: lowered, never below one.
            (10_000, Some(4096), Some(4096), None, 4096 - extra as usize),
            (10_000, Some(64), Some(64), None, 1),
        ];
        for (wanted, soft, hard, raise_to, connections) in cases {
            assert_eq!(
                plan_open_files(wanted, 500, soft, hard),
                OpenFilePlan { raise_to, connections },
                "wanted {wanted}, soft {soft:?}, hard {hard:?}"
            );
        }
    }
}
