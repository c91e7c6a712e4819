//! Settings of a `serve` process: one [`Settings`], built once at start from
//! flags > `HOOKLINE_*` variables > a TOML file (`--config`) > defaults (see
//! [`sources`] for how the layers meet), checked, and handed down in parts:
//! [`ApiSettings`] to the API, [`DeliverySettings`] to the worker and its
//! client, [`DatabaseSettings`] to the store. Code past this module holds
//! typed, checked values; a bad value stops the process with a message naming
//! the flag, variable or file key it came from.

mod sources;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure};
use clap::{Args, ValueEnum};
use ipnet::IpNet;

pub use sources::{ServeFlags, effective_toml, process_env};

use crate::domain::{Catalog, RetrySchedule};
use crate::ssrf;

/// The Standard Webhooks schedule: immediately, then these delays (10
/// attempts over about three days).
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,14h,20h,24h";
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// A receiver asking for longer (`Retry-After`) gets this.
pub const DEFAULT_RETRY_AFTER_CAP: &str = "1h";
/// Five days of nothing but failures: longer than the default retry schedule
/// (about three days), so one delivery's whole schedule failing is not enough.
pub const DEFAULT_DISABLE_AFTER: &str = "5d";

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// The embedded default: one file, zero setup.
    Sqlite(PathBuf),
    /// Shared by any number of hookline processes.
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if let Some(rest) = s.strip_prefix("sqlite://").or_else(|| s.strip_prefix("sqlite:")) {
            let path = rest.split('?').next().unwrap_or_default();
            ensure!(
                !path.is_empty() && !path.contains(":memory:"),
                "sqlite needs a file path, such as sqlite://hookline.db (an in-memory database would lose accepted events)"
            );
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres(s.to_owned()));
        }
        bail!("database URL must start with sqlite:// or postgres://")
    }

    /// The URL with a PostgreSQL password replaced by `***`: how it is printed.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => match url::Url::parse(url) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    url.to_string()
                }
                // Unparsable: it may still hold a password somewhere.
                Err(_) => "postgres://***".to_owned(),
            },
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    // A Postgres URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A setting that is a secret (`--secret-key`, `--admin-token`): `Debug`
/// prints `***`, so the parsed flags can be logged or printed without it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Sensitive {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What a `serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// The HTTP API only (ingest, management, logs).
    Api,
    /// The delivery worker only (plus health and metrics endpoints).
    Worker,
    /// Both, in one process.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The database flag shared by `serve`, `migrate` and `project`.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` (embedded, the default) or `postgres://USER@HOST/DB`.
    #[arg(long, env = "HOOKLINE_DATABASE_URL", default_value = "sqlite://hookline.db", value_parser = DatabaseUrl::parse)]
    pub database_url: DatabaseUrl,

    /// Base64 of 32 bytes that encrypts signing secrets at rest. With SQLite and
    /// no key, one is generated into `<database file>.key` on first start.
    #[arg(long, env = "HOOKLINE_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<Sensitive>,

    /// PostgreSQL: most connections in this process's pool (one more listens
    /// for new work). Small on purpose: every process takes up to this many of
    /// the server's `max_connections` (100 on a stock install), and hookline's
    /// statements are short and batched, so a few connections carry a lot.
    #[arg(
        long,
        env = "HOOKLINE_DB_MAX_CONNECTIONS",
        default_value_t = DEFAULT_DB_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub db_max_connections: u32,
}

/// Enough for thousands of idle or slow clients besides the busy ones; each
/// costs a file descriptor and a few KiB.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Ten per process leaves a stock PostgreSQL (100 connections) room for
/// eight processes plus administration.
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 10;

/// Flags of `hookline serve` (and `hookline config`). Each has a variable and a
/// file key, the flag's name with `_` for `-` ([`sources`] derives both from here).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A TOML file of settings, keys named like the flags (`max_attempts = 5`);
    /// flags and variables override it.
    #[arg(long, env = "HOOKLINE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the HTTP API.
    #[arg(long, env = "HOOKLINE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub db: DatabaseArgs,

    /// What this process runs.
    #[arg(long, env = "HOOKLINE_ROLE", value_enum, default_value = "all")]
    pub role: Role,

    /// Enables `/v1/admin/*` for callers presenting it as a Bearer token.
    #[arg(long, env = "HOOKLINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Sensitive>,

    /// Local development: allows `http` targets and loopback addresses.
    #[arg(long, env = "HOOKLINE_DEV")]
    pub dev: bool,

    /// Allows target addresses in this range, over http or https (repeatable,
    /// or comma-separated in the variable), e.g. 127.0.0.1/32 for a local receiver.
    #[arg(long = "allow-target-cidr", env = "HOOKLINE_ALLOW_TARGET_CIDR", value_delimiter = ',')]
    pub allow_target_cidr: Vec<IpNet>,

    /// Delays before the 2nd, 3rd, … attempt; the last repeats.
    #[arg(long, env = "HOOKLINE_RETRY_SCHEDULE", default_value = DEFAULT_RETRY_SCHEDULE, value_parser = RetrySchedule::parse)]
    pub retry_schedule: RetrySchedule,

    /// Attempts per delivery, the first included.
    #[arg(long, env = "HOOKLINE_MAX_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,

    /// The longest `Retry-After` (on 429 and 503) that is honoured.
    #[arg(long, env = "HOOKLINE_RETRY_AFTER_CAP", default_value = DEFAULT_RETRY_AFTER_CAP, value_parser = humantime::parse_duration)]
    pub retry_after_cap: Duration,

    /// Largest `data` accepted, in bytes of compact JSON.
    #[arg(long, env = "HOOKLINE_MAX_DATA_BYTES", default_value_t = 65_536)]
    pub max_data_bytes: usize,

    /// A JSON file from event name to JSON Schema, replacing the built-in catalog.
    #[arg(long, env = "HOOKLINE_EVENT_CATALOG")]
    pub event_catalog: Option<PathBuf>,

    /// Events and delivery logs older than this many days are deleted.
    #[arg(long, env = "HOOKLINE_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,

    /// How often the retention pruner looks for events and logs past `--retention-days`.
    #[arg(long, env = "HOOKLINE_PRUNE_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub prune_interval: Duration,

    /// Process log format.
    #[arg(long, env = "HOOKLINE_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Bound on connecting to a receiver (DNS lookup included).
    #[arg(long, env = "HOOKLINE_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Bound on a whole delivery attempt, response included.
    #[arg(long, env = "HOOKLINE_REQUEST_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// How long a claimed delivery stays reserved for its worker; after a crash
    /// it is taken over once this expires.
    #[arg(long, env = "HOOKLINE_LEASE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// How often the worker looks for due work when nothing woke it.
    #[arg(long, env = "HOOKLINE_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Deliveries in flight at once in this process.
    #[arg(long, env = "HOOKLINE_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,

    /// Deliveries in flight at once to one host, so a slow receiver cannot take every slot.
    #[arg(long, env = "HOOKLINE_MAX_PER_TARGET", default_value_t = 64)]
    pub max_per_target: usize,

    /// How long a target's circuit stays open after it opened (5 consecutive
    /// failures); doubles with each failed probe, up to 5 minutes.
    #[arg(long, env = "HOOKLINE_BREAKER_COOLDOWN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub breaker_cooldown: Duration,

    /// A webhook whose every attempt has failed for longer than this, counted
    /// from the first failure after its last success, is disabled.
    #[arg(long, env = "HOOKLINE_DISABLE_AFTER", default_value = DEFAULT_DISABLE_AFTER, value_parser = humantime::parse_duration)]
    pub disable_after: Duration,

    /// On SIGTERM/SIGINT, how long in-flight deliveries and open API
    /// connections may take to finish; then they are dropped.
    #[arg(long, env = "HOOKLINE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// A client must send a whole request, head and body, within this
    /// (answered 408 otherwise); an idle kept-alive connection is closed after it.
    #[arg(long, env = "HOOKLINE_CLIENT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub client_timeout: Duration,

    /// API connections open at once; one more is answered 503 and closed.
    /// Lowered at start to what the process's open-file limit can hold.
    #[arg(long, env = "HOOKLINE_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Webhooks a project may have, active or not; creating one more is a 422.
    #[arg(long, env = "HOOKLINE_MAX_WEBHOOKS_PER_PROJECT", default_value_t = 100)]
    pub max_webhooks_per_project: u32,

    /// After a rotation, how long the previous signing secret keeps signing too.
    #[arg(long, env = "HOOKLINE_SECRET_OVERLAP", default_value = "24h", value_parser = humantime::parse_duration)]
    pub secret_overlap: Duration,
}

/// The checked settings of a `serve` process, in the parts its components take.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub role: Role,
    pub log_format: LogFormat,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub api: ApiSettings,
    pub delivery: DeliverySettings,
    /// Events and delivery logs older than this are pruned.
    pub retention: Duration,
    /// How often the pruner runs.
    pub prune_interval: Duration,
}

/// Where the data lives and how it is opened.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: DatabaseUrl,
    /// Encrypts signing secrets at rest; generated next to a SQLite file when absent.
    pub secret_key: Option<Sensitive>,
    /// PostgreSQL pool size of this process.
    pub max_connections: u32,
}

/// How the HTTP server holds its clients to account (SPEC §10).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The longest a client may take to send a request, and to stay idle between two.
    pub client_timeout: Duration,
    /// Connections served at once; past it, new ones are answered 503.
    pub max_connections: usize,
    /// How long open connections get on shutdown before they are dropped.
    pub shutdown_grace: Duration,
}

/// What the HTTP API needs.
#[derive(Clone)]
pub struct ApiSettings {
    pub catalog: Arc<Catalog>,
    pub max_data_bytes: usize,
    /// Each webhook is a delivery per event and a row to keep: a project
    /// cannot make one event fan out without bound.
    pub max_webhooks_per_project: u32,
    /// `None` turns the admin routes off (404).
    pub admin_token: Option<Sensitive>,
    /// How long a rotated-out signing secret keeps signing.
    pub secret_overlap: Duration,
    /// Target URLs are checked against it when webhooks are created or
    /// changed; the same policy the delivery client applies at every attempt.
    pub ssrf: ssrf::Policy,
}

/// When a failed delivery is tried again.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub schedule: RetrySchedule,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// The longest `Retry-After` honoured; a receiver cannot park a delivery for a week.
    pub retry_after_cap: Duration,
}

impl Default for RetrySettings {
    /// The defaults of the flags.
    fn default() -> Self {
        Self {
            schedule: RetrySchedule::parse(DEFAULT_RETRY_SCHEDULE).expect("the default schedule parses"),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_after_cap: humantime::parse_duration(DEFAULT_RETRY_AFTER_CAP).expect("the default cap parses"),
        }
    }
}

/// What the delivery worker and its HTTP client need.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub retry: RetrySettings,
    /// Which addresses may be reached, checked on every resolved address of every attempt.
    pub ssrf: ssrf::Policy,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How long a claimed delivery is reserved for this worker.
    pub lease: Duration,
    /// The backstop for work nobody announced (other processes, expired leases).
    pub poll_interval: Duration,
    pub max_in_flight: usize,
    pub max_per_target: usize,
    /// How long in-flight deliveries may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// The first cool-down of a target's open circuit.
    pub breaker_cooldown: Duration,
    /// How long a webhook may fail, with no success in between, before it is disabled.
    pub disable_after: Duration,
}

impl DeliverySettings {
    /// The longest one send can take: a handed-over delivery is started only
    /// with at least this much lease left.
    pub fn longest_send(&self) -> Duration {
        self.connect_timeout + self.request_timeout
    }
}

/// A value that parsed but is not allowed. It names the flag; [`sources`]
/// says instead which variable or file key the value came from.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} {problem}")]
pub struct Invalid {
    /// The flag's long name, without dashes.
    pub flag: &'static str,
    /// Completes the sentence: "must be at least 1".
    pub problem: String,
}

fn ensure_valid(ok: bool, flag: &'static str, problem: impl FnOnce() -> String) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err(Invalid { flag, problem: problem() }) }
}

impl Settings {
    /// The settings of `hookline serve` from its command-line flags (no
    /// program name), the variables that `env` looks up (use
    /// [`process_env`]) and the file they name, over the defaults.
    pub fn load<I, S>(flags: I, env: &dyn Fn(&str) -> Option<OsString>) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        sources::layer(flags.into_iter().map(Into::into).collect(), env)?.settings()
    }

    /// Parses `serve` flags from a list, as the command line would, with the
    /// process's variables: how tests and the demo configure an in-process server.
    pub fn from_flags<I, S>(flags: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self::load(flags, &process_env)
    }

    /// Checks values against each other and builds the parts.
    fn check(a: ServeArgs) -> Result<Self, Invalid> {
        ensure_valid(a.max_attempts >= 1, "max-attempts", || "must be at least 1".into())?;
        ensure_valid(a.max_data_bytes >= 2, "max-data-bytes", || "must be at least 2 (the size of {})".into())?;
        ensure_valid(a.max_in_flight >= 1, "max-in-flight", || "must be at least 1".into())?;
        ensure_valid(a.max_per_target >= 1, "max-per-target", || "must be at least 1".into())?;
        ensure_valid(a.retention_days >= 1, "retention-days", || "must be at least 1".into())?;
        ensure_valid(!a.poll_interval.is_zero(), "poll-interval", || "must be positive".into())?;
        ensure_valid(!a.prune_interval.is_zero(), "prune-interval", || "must be positive".into())?;
        ensure_valid(!a.breaker_cooldown.is_zero(), "breaker-cooldown", || "must be positive".into())?;
        ensure_valid(!a.client_timeout.is_zero(), "client-timeout", || "must be positive".into())?;
        ensure_valid(a.max_connections >= 1, "max-connections", || "must be at least 1".into())?;
        ensure_valid(a.max_webhooks_per_project >= 1, "max-webhooks-per-project", || "must be at least 1".into())?;
        ensure_valid(!a.disable_after.is_zero(), "disable-after", || "must be positive".into())?;
        ensure_valid(a.lease > a.request_timeout + a.connect_timeout, "lease", || {
            format!(
                "({}) must be longer than --request-timeout plus --connect-timeout, or a slow delivery would be taken over while still running",
                humantime::format_duration(a.lease)
            )
        })?;
        if let Some(token) = &a.admin_token {
            ensure_valid(token.expose().len() >= 16, "admin-token", || "must be at least 16 characters".into())?;
        }
        let catalog = match &a.event_catalog {
            Some(path) => Catalog::from_file(path)
                .map_err(|e| Invalid { flag: "event-catalog", problem: format!("could not be loaded: {e:#}") })?,
            None => Catalog::builtin(),
        };
        let ssrf = ssrf::Policy { dev: a.dev, allowed: a.allow_target_cidr, dns_timeout: a.connect_timeout };
        Ok(Self {
            listen: a.listen,
            role: a.role,
            log_format: a.log_format,
            database: DatabaseSettings {
                url: a.db.database_url,
                secret_key: a.db.secret_key,
                max_connections: a.db.db_max_connections,
            },
            http: HttpSettings {
                client_timeout: a.client_timeout,
                max_connections: a.max_connections,
                shutdown_grace: a.shutdown_grace,
            },
            api: ApiSettings {
                catalog: Arc::new(catalog),
                max_data_bytes: a.max_data_bytes,
                max_webhooks_per_project: a.max_webhooks_per_project,
                admin_token: a.admin_token,
                secret_overlap: a.secret_overlap,
                ssrf: ssrf.clone(),
            },
            delivery: DeliverySettings {
                retry: RetrySettings {
                    schedule: a.retry_schedule,
                    max_attempts: a.max_attempts,
                    retry_after_cap: a.retry_after_cap,
                },
                ssrf,
                connect_timeout: a.connect_timeout,
                request_timeout: a.request_timeout,
                lease: a.lease,
                poll_interval: a.poll_interval,
                max_in_flight: a.max_in_flight,
                max_per_target: a.max_per_target,
                shutdown_grace: a.shutdown_grace,
                breaker_cooldown: a.breaker_cooldown,
                disable_after: a.disable_after,
            },
            retention: Duration::from_secs(u64::from(a.retention_days) * 86_400),
            prune_interval: a.prune_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        let s = Settings::load(["--database-url", "sqlite://x.db"], &|_| None).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert!(!s.api.ssrf.dev && s.api.ssrf.allowed.is_empty());
        assert!(!s.delivery.ssrf.dev && s.delivery.ssrf.allowed.is_empty());
        assert!(s.api.admin_token.is_none());
        assert_eq!(s.delivery.retry.max_attempts, 10);
        assert_eq!(s.delivery.retry.schedule.delays().len(), 9);
        assert_eq!(s.role, Role::All);
        assert_eq!(s.database.max_connections, DEFAULT_DB_MAX_CONNECTIONS);
        assert_eq!(s.http.client_timeout, Duration::from_secs(30));
        assert_eq!(s.http.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(s.delivery.disable_after, Duration::from_secs(5 * 86_400));
    }

    #[test]
    fn the_retry_defaults_are_the_flag_defaults() {
        let s = Settings::load(["--database-url", "sqlite://x.db"], &|_| None).unwrap();
        let d = RetrySettings::default();
        assert_eq!(
            (s.delivery.retry.schedule, s.delivery.retry.max_attempts, s.delivery.retry.retry_after_cap),
            (d.schedule, d.max_attempts, d.retry_after_cap)
        );
    }

    #[test]
    fn invalid_values_fail_with_the_flag_named() {
        let err = |flags: &[&str]| format!("{:#}", Settings::from_flags(flags.iter().copied()).err().unwrap());
        assert!(err(&["--retry-schedule", "5s,often"]).contains("--retry-schedule"));
        assert!(err(&["--max-attempts", "0"]).contains("--max-attempts"));
        assert!(err(&["--lease", "1s"]).contains("--lease"));
        assert!(err(&["--allow-target-cidr", "10.0.0.0/33"]).contains("allow-target-cidr"));
        assert!(err(&["--database-url", "mysql://x"]).contains("database"));
        assert!(err(&["--database-url", "sqlite::memory:"]).contains("file path"));
        assert!(err(&["--admin-token", "short"]).contains("--admin-token"));
        assert!(err(&["--db-max-connections", "0"]).contains("--db-max-connections"));
        assert!(err(&["--event-catalog", "/nonexistent.json"]).contains("--event-catalog"));
        assert!(err(&["--prune-interval", "0s"]).contains("--prune-interval"));
        assert!(err(&["--client-timeout", "0s"]).contains("--client-timeout"));
        assert!(err(&["--max-connections", "0"]).contains("--max-connections"));
        assert!(err(&["--max-webhooks-per-project", "0"]).contains("--max-webhooks-per-project"));
        assert!(err(&["--disable-after", "0s"]).contains("--disable-after"));
    }

    #[test]
    fn secrets_in_the_flags_never_print() {
        #[derive(clap::Parser, Debug)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let token = "admin-token-that-must-not-print";
        let key = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LXByaW50IQ==";
        let args =
            <Wrapper as clap::Parser>::try_parse_from(["x", "--admin-token", token, "--secret-key", key]).unwrap();
        let shown = format!("{args:?}");
        assert!(!shown.contains(token) && !shown.contains(key), "{shown}");
        assert_eq!(args.serve.admin_token.unwrap().expose(), token);
    }

    #[test]
    fn database_urls_parse() {
        assert_eq!(DatabaseUrl::parse("sqlite://hookline.db").unwrap(), DatabaseUrl::Sqlite("hookline.db".into()));
        assert_eq!(DatabaseUrl::parse("sqlite:///tmp/h.db?mode=rwc").unwrap(), DatabaseUrl::Sqlite("/tmp/h.db".into()));
        assert!(matches!(DatabaseUrl::parse("postgres://u:pw@h/db").unwrap(), DatabaseUrl::Postgres(_)));
        assert_eq!(format!("{:?}", DatabaseUrl::parse("postgres://u:pw@h/db").unwrap()), "postgres://u:***@h/db");
        assert_eq!(DatabaseUrl::parse("postgres://u@h:5433/db").unwrap().redacted(), "postgres://u@h:5433/db");
    }
}
