//! Delivery: the worker that claims due deliveries, signs them, sends them and
//! records each attempt.
//!
//! - [`worker`]: the dispatcher loop (claim → spawn sends → record in batches),
//!   leases, per-target fairness and graceful shutdown.
//! - [`envelope`]: the request body, as signed.
//! - [`client`]: the HTTP client: connection pool, TLS, SSRF-guarded connector.
//! - [`http1`]: the HTTP/1.1 wire format the client speaks.
//! - [`policy`]: the outcome rules and the retry schedule, as pure functions.

pub mod client;
pub mod envelope;
mod http1;
pub mod policy;
pub mod worker;

pub use worker::Worker;

/// `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("hookline/", env!("CARGO_PKG_VERSION"));
