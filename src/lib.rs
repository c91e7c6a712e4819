//! hookline: a webhook delivery service.
//!
//! An application reports business events (`order.created`, `order.paid`) to
//! `POST /v1/events`. hookline validates each against the event catalog,
//! commits it together with one pending delivery per active webhook of its
//! project, and answers 202 only then. A worker claims due deliveries, signs
//! each (GitHub-style `X-Signature` and Standard Webhooks headers), POSTs it to
//! the webhook's URL through an SSRF-guarded client, records the attempt, and
//! retries with backoff on network errors and 5xx. A webhook whose endpoint
//! stays dead is disabled, and the project is told with an event of its own.
//!
//! # Layout
//!
//! Data flows one way: request → [`api`] (parse into [`domain`] types) →
//! [`queue`] (one transaction in the [`store`], then hand over) → [`delivery`]
//! (the scheduler picks, [`signing`], send through [`ssrf`]-checked connections)
//! → [`queue`] (record the attempt, decide what is next).
//!
//! - [`cli`], [`config`]: the command line and the one checked [`config::Settings`]
//!   (flags > `HOOKLINE_*` variables > TOML file > defaults), passed down in parts.
//! - [`app`]: builds and runs the API, the worker and the pruner.
//! - [`server`]: the HTTP server under the API: connections, their time
//!   limits, the connection limit, shutdown.
//! - [`domain`]: ids, event catalog, target URLs, keys and secrets, the retry
//!   schedule, when a webhook is disabled ([`domain::lifecycle`]) and
//!   hookline's own events ([`domain::operational`]). Pure types, no I/O.
//! - [`api`]: axum routes, one module per resource; problem+json errors.
//! - [`queue`]: the outbox path: enqueue (commit, then hand over in memory),
//!   claim, complete, manual retry; which delivery starts next
//!   ([`queue::schedule`]: fairness, per-target limits, rate limits) and the
//!   circuit breaker per target ([`queue::breaker`]);
//!   replay and test deliveries ([`queue::lifecycle`]).
//! - [`store`]: the only SQL; the [`store::Backend`] contract, its model types
//!   and errors, and one folder per backend:
//!   - [`store::sqlite`]: the writer thread (group commit), queue statements,
//!     CRUD, the webhook lifecycle (disabling in the transaction that records
//!     attempts, operational events, replay), row mapping, migrations;
//!   - [`store::postgres`]: the ingest batcher, `NOTIFY`, queue statements,
//!     CRUD, the webhook lifecycle, row mapping, migrations (sqlx's migrator).
//! - [`delivery`]: the worker, the HTTP client, the retry policy.
//! - [`signing`]: both signature schemes, sign and verify.
//! - [`ssrf`]: which target addresses may be reached.
//! - [`vault`]: encryption of signing secrets at rest.
//! - [`projects`]: a service over the [`store`], so it does I/O: provisioning
//!   of projects, API keys and signing secrets, and their caches; called by
//!   the API and the CLI alike.
//! - [`listen`]: a local receiver for developers (`hookline listen`).
//! - [`verify`]: offline signature check of a captured request (`hookline verify`).
//! - [`demo`]: the whole flow in one command (`hookline demo`).
//! - [`telemetry`]: process logs and the Prometheus recorder.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod domain;
pub mod listen;
pub mod projects;
pub mod queue;
pub mod server;
pub mod signing;
pub mod ssrf;
pub mod store;
pub mod telemetry;
pub mod vault;
pub mod verify;

pub use app::Application;
pub use config::Settings;
