//! Settings: every flag of `hookline serve`, each with a `HOOKLINE_*` variable,
//! parsed and validated once at start. Code past this module holds typed,
//! checked values; a bad value stops the process with a message naming the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use clap::{Args, ValueEnum};
use ipnet::IpNet;

use crate::delivery::policy::{self, RetryPolicy};
use crate::domain::Catalog;
use crate::ssrf;

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
}

impl std::fmt::Debug for DatabaseUrl {
    // A Postgres URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(_) => f.write_str("postgres://***"),
        }
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

/// Ten per process leaves a stock PostgreSQL (100 connections) room for
/// eight processes plus administration.
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 10;

/// Flags of `hookline serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
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
    #[arg(long, env = "HOOKLINE_RETRY_SCHEDULE", default_value = policy::DEFAULT_SCHEDULE)]
    pub retry_schedule: String,

    /// Attempts per delivery, the first included.
    #[arg(long, env = "HOOKLINE_MAX_ATTEMPTS", default_value_t = policy::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,

    /// The longest `Retry-After` (on 429 and 503) that is honoured.
    #[arg(long, env = "HOOKLINE_RETRY_AFTER_CAP", default_value = "1h", value_parser = humantime::parse_duration)]
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

    /// On SIGTERM/SIGINT, how long in-flight deliveries may take to finish.
    #[arg(long, env = "HOOKLINE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// After a rotation, how long the previous signing secret keeps signing too.
    #[arg(long, env = "HOOKLINE_SECRET_OVERLAP", default_value = "24h", value_parser = humantime::parse_duration)]
    pub secret_overlap: Duration,
}

/// The checked settings of a `serve` process.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database: DatabaseUrl,
    pub secret_key: Option<Sensitive>,
    /// PostgreSQL pool size of this process.
    pub db_max_connections: u32,
    pub role: Role,
    pub admin_token: Option<Sensitive>,
    pub ssrf: ssrf::Policy,
    pub retry: RetryPolicy,
    pub max_data_bytes: usize,
    pub catalog: Arc<Catalog>,
    pub retention: Duration,
    pub prune_interval: Duration,
    pub log_format: LogFormat,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub max_in_flight: usize,
    pub max_per_target: usize,
    pub shutdown_grace: Duration,
    pub secret_overlap: Duration,
}

impl Settings {
    /// Validates the flags; every error names the flag it is about.
    pub fn from_args(a: ServeArgs) -> anyhow::Result<Self> {
        let schedule =
            policy::parse_schedule(&a.retry_schedule).map_err(|e| anyhow::anyhow!("--retry-schedule: {e}"))?;
        ensure!(a.max_attempts >= 1, "--max-attempts must be at least 1");
        ensure!(a.max_data_bytes >= 2, "--max-data-bytes must be at least 2 (the size of {{}})");
        ensure!(a.max_in_flight >= 1, "--max-in-flight must be at least 1");
        ensure!(a.max_per_target >= 1, "--max-per-target must be at least 1");
        ensure!(a.retention_days >= 1, "--retention-days must be at least 1");
        ensure!(!a.poll_interval.is_zero(), "--poll-interval must be positive");
        ensure!(!a.prune_interval.is_zero(), "--prune-interval must be positive");
        ensure!(
            a.lease > a.request_timeout + a.connect_timeout,
            "--lease ({}) must be longer than --request-timeout plus --connect-timeout, or a slow delivery would be taken over while still running",
            humantime::format_duration(a.lease)
        );
        if let Some(token) = &a.admin_token {
            ensure!(token.expose().len() >= 16, "--admin-token must be at least 16 characters");
        }
        let catalog = match &a.event_catalog {
            Some(path) => Catalog::from_file(path).context("--event-catalog")?,
            None => Catalog::builtin(),
        };
        Ok(Self {
            listen: a.listen,
            database: a.db.database_url,
            secret_key: a.db.secret_key,
            db_max_connections: a.db.db_max_connections,
            role: a.role,
            admin_token: a.admin_token,
            ssrf: ssrf::Policy { dev: a.dev, allowed: a.allow_target_cidr, dns_timeout: a.connect_timeout },
            retry: RetryPolicy { schedule, max_attempts: a.max_attempts, retry_after_cap: a.retry_after_cap },
            max_data_bytes: a.max_data_bytes,
            catalog: Arc::new(catalog),
            retention: Duration::from_secs(u64::from(a.retention_days) * 86_400),
            prune_interval: a.prune_interval,
            log_format: a.log_format,
            connect_timeout: a.connect_timeout,
            request_timeout: a.request_timeout,
            lease: a.lease,
            poll_interval: a.poll_interval,
            max_in_flight: a.max_in_flight,
            max_per_target: a.max_per_target,
            shutdown_grace: a.shutdown_grace,
            secret_overlap: a.secret_overlap,
        })
    }

    /// Parses `serve` flags from a list, as the command line would: how tests
    /// and the demo configure an in-process server.
    pub fn from_flags<I, S>(flags: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let args = std::iter::once(std::ffi::OsString::from("hookline-serve")).chain(flags.into_iter().map(Into::into));
        let parsed = <Wrapper as clap::Parser>::try_parse_from(args)?;
        Self::from_args(parsed.serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        let s = Settings::from_flags(["--database-url", "sqlite://x.db"]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert!(!s.ssrf.dev && s.ssrf.allowed.is_empty());
        assert!(s.admin_token.is_none());
        assert_eq!(s.retry.max_attempts, 10);
        assert_eq!(s.retry.schedule.len(), 9);
        assert_eq!(s.role, Role::All);
        assert_eq!(s.db_max_connections, DEFAULT_DB_MAX_CONNECTIONS);
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
        assert_eq!(format!("{:?}", DatabaseUrl::parse("postgres://u:pw@h/db").unwrap()), "postgres://***");
    }
}
