//! Delivery: the worker that claims due deliveries, signs them, sends them and
//! records each attempt.
//!
//! - [`worker`]: the dispatcher loop (claim → spawn sends → record in batches),
//!   leases, per-target fairness and graceful shutdown.
//! - [`handoff`]: deliveries passed from ingest to the worker in memory.
//! - [`client`]: the HTTP client with the SSRF-guarded connector.
//! - [`policy`]: the outcome rules and the retry schedule, as pure functions.

pub mod client;
pub mod handoff;
pub mod policy;
pub mod worker;

pub use worker::{Worker, WorkerSettings};

/// `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("hookline/", env!("CARGO_PKG_VERSION"));
