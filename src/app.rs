//! Wiring: [`Application::build`] turns settings into a bound listener, an API
//! and a worker; [`Application::run_until_stopped`] runs them until the
//! shutdown future completes. `main` and the tests use the same two calls.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::error::ApiError;
use crate::api::{self, ApiContext};
use crate::config::{DatabaseUrl, HttpSettings, Role, Sensitive, Settings};
use crate::delivery::Worker;
use crate::delivery::client::DeliveryClient;
use crate::domain::DisablePolicy;
use crate::domain::time::now_ms;
use crate::queue::Queue;
use crate::store::{Backend as _, Store};
use crate::vault::Vault;

/// Deliveries that may wait in the in-memory handoff per in-flight slot: enough
/// to keep the worker busy between wake-ups, few enough to be sent long before
/// their leases run out.
const HANDOFF_PER_SLOT: usize = 4;
/// Events deleted per statement, so pruning never holds the writer for long.
const PRUNE_BATCH: u32 = 500;
/// File descriptors kept for the process's own use besides the API's
/// connections, the deliveries' and the database pool's: files, the
/// listener, DNS lookups, slack.
const OWN_FILE_DESCRIPTORS: u64 = 256;

/// Opens the database, applies migrations, and loads the vault key: what every
/// subcommand that touches data needs. `max_connections` sizes the PostgreSQL pool.
pub async fn open_store(
    database: &DatabaseUrl,
    secret_key: Option<&str>,
    max_connections: u32,
) -> anyhow::Result<(Store, Vault)> {
    let store = Store::open(database, max_connections).await.context("opening the database")?;
    store.migrate().await.context("applying migrations")?;
    let vault = match (secret_key, database) {
        (Some(key), _) => Vault::from_base64(key).context("--secret-key")?,
        (None, DatabaseUrl::Sqlite(path)) => {
            let mut key_path = path.clone().into_os_string();
            key_path.push(".key");
            let holds_secrets = match &store {
                Store::Sqlite(s) => s.holds_secrets().await?,
                Store::Postgres(_) => unreachable!("a sqlite:// URL opens the SQLite store"),
            };
            Vault::load_or_create(std::path::Path::new(&key_path), !holds_secrets)?
        }
        (None, DatabaseUrl::Postgres(_)) => anyhow::bail!(
            "--secret-key (HOOKLINE_SECRET_KEY) is required with PostgreSQL: every node must share it; \
             generate one with `hookline secret-key`"
        ),
    };
    Ok((store, vault))
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    http: HttpSettings,
    worker: Option<Worker>,
    queue: Queue,
    store: Store,
    retention: Duration,
    prune_interval: Duration,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (store, vault) = open_store(
            &settings.database.url,
            settings.database.secret_key.as_ref().map(Sensitive::expose),
            settings.database.max_connections,
        )
        .await?;
        if settings.api.ssrf.dev {
            tracing::warn!(
                "--dev: http and loopback targets are allowed; never run this where tenants can reach the API"
            );
        }
        let vault = Arc::new(vault);
        // Installed before anything is counted: counts made earlier would be lost.
        crate::telemetry::metrics();
        let openapi =
            serde_json::to_value(api::openapi(&settings.api.catalog)).context("serializing the OpenAPI document")?;
        let secrets = Arc::new(crate::projects::SecretCache::default());
        // In one process, ingest hands new deliveries straight to the worker.
        let handoff_limit = (settings.role == Role::All).then_some(settings.delivery.max_in_flight * HANDOFF_PER_SLOT);
        let disable = DisablePolicy { after: settings.delivery.disable_after };
        let (queue, handoff) = Queue::new(store.clone(), settings.delivery.lease, disable, handoff_limit);
        let state = Arc::new(ApiContext {
            store: store.clone(),
            settings: settings.api,
            vault: vault.clone(),
            queue: queue.clone(),
            secrets: secrets.clone(),
            keys: Default::default(),
            openapi,
        });
        let router = match settings.role {
            Role::Worker => api::worker_router(state),
            Role::Api | Role::All => api::router(state),
        };
        let mut http = settings.http;
        // A delivery holds a connection in flight and may keep one idle in the pool.
        let others = 2 * settings.delivery.max_in_flight as u64
            + u64::from(settings.database.max_connections)
            + OWN_FILE_DESCRIPTORS;
        let worker = (settings.role != Role::Api).then(|| {
            let d = &settings.delivery;
            let client = DeliveryClient::new(d.ssrf.clone(), d.connect_timeout, d.request_timeout, d.max_per_target);
            Worker::new(queue.clone(), handoff, store.clone(), vault, secrets, client, settings.delivery)
        });
        let listener =
            TcpListener::bind(settings.listen).await.with_context(|| format!("listening on {}", settings.listen))?;
        http.max_connections = crate::server::fit_to_open_file_limit(http.max_connections, others);
        Ok(Self {
            listener,
            router,
            http,
            worker,
            queue,
            store,
            retention: settings.retention,
            prune_interval: settings.prune_interval,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then drains: the API stops accepting
    /// and its open connections get `--shutdown-grace` to finish, while the
    /// worker finishes or gives back its in-flight deliveries in the same time.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        });
        tracing::info!(address = %self.local_addr(), "hookline is listening");
        if self.worker.is_some() {
            // Listening before the worker's first claim: nothing committed after it is missed.
            self.queue.watch_for_work(stop.clone()).await.context("listening for work from other processes")?;
        }
        let worker = self.worker.map(|w| tokio::spawn(w.run(stop.clone())));
        let pruner = tokio::spawn(prune_forever(self.store.clone(), self.retention, self.prune_interval, stop.clone()));
        let answers = crate::server::Answers {
            timed_out: ApiError::RequestTimeout.into_http1_bytes().into(),
            overloaded: ApiError::Overloaded.into_http1_bytes().into(),
        };
        crate::server::serve(self.listener, self.router, self.http, answers, stop.clone()).await;
        if let Some(worker) = worker {
            worker.await.context("the delivery worker panicked")?;
        }
        pruner.abort();
        tracing::info!("stopped");
        Ok(())
    }
}

/// Deletes events and logs past the retention period, in small batches so
/// ingest is never blocked behind a large delete.
async fn prune_forever(store: Store, retention: Duration, every: Duration, stop: CancellationToken) {
    loop {
        loop {
            let now = now_ms();
            match store.prune(now - retention.as_millis() as i64, now, PRUNE_BATCH).await {
                Ok(n) if n == u64::from(PRUNE_BATCH) => tokio::task::yield_now().await,
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(events = n, "pruned old events");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
