//! The `hookline` command line.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::app::{Application, open_store};
use crate::config::{self, DatabaseArgs, LogFormat, Sensitive, ServeFlags, Settings};
use crate::domain::time::to_rfc3339;
use crate::domain::{ApiKeyId, ProjectId};
use crate::store::Backend as _;
use crate::{projects, telemetry};

#[derive(Debug, Parser)]
#[command(name = "hookline", version, about = "Events in, signed webhooks out, durably.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the delivery worker.
    Serve(ServeFlags),
    /// Print the settings `serve` would run with, as TOML: flags, variables,
    /// the --config file and defaults merged, secrets masked.
    Config(ServeFlags),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create projects and manage their API keys.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Print a fresh random key for --secret-key.
    SecretKey,
    /// Run a local receiver that verifies and prints incoming webhooks.
    Listen(crate::listen::ListenArgs),
    /// Check a captured webhook's signatures and explain the result (exit code 0 only if verified).
    Verify(crate::verify::VerifyArgs),
    /// See hookline work in one command: a throwaway server, receiver and database.
    Demo,
    /// Print the OpenAPI 3.1 document of the HTTP API (as served at /openapi.json).
    Openapi {
        /// Describe the events of this catalog file instead of the built-in one.
        #[arg(long, env = "HOOKLINE_EVENT_CATALOG")]
        event_catalog: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project; prints its id, first API key and signing secret as JSON.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Add an API key to a project; prints it once.
    CreateKey {
        #[arg(long)]
        project: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Revoke one API key of a project.
    RevokeKey {
        #[arg(long)]
        project: String,
        /// The key's id (`key_…`), as listed by `project keys`.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// List a project's API keys (ids and prefixes, never the keys).
    Keys {
        #[arg(long)]
        project: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("JSON serializes"));
}

fn parse_project(s: &str) -> anyhow::Result<ProjectId> {
    ProjectId::parse(s).with_context(|| format!("{s:?} is not a project id (prj_…)"))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(flags) => {
            let settings = Settings::load(flags, &config::process_env)?;
            telemetry::init(settings.log_format);
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Config(flags) => {
            print!("{}", config::effective_toml(flags, &config::process_env)?);
            Ok(())
        }
        Command::Migrate(db) => {
            telemetry::init(LogFormat::Pretty);
            open_store(&db.database_url, db.secret_key.as_ref().map(Sensitive::expose), db.db_max_connections).await?;
            eprintln!("migrations applied to {:?}", db.database_url);
            Ok(())
        }
        Command::SecretKey => {
            println!("{}", crate::vault::Vault::generate_key());
            Ok(())
        }
        Command::Listen(args) => crate::listen::run(args).await,
        Command::Verify(args) => crate::verify::run(args),
        Command::Demo => {
            // Quiet unless asked: the demo's own output tells the story.
            if std::env::var_os("RUST_LOG").is_some() {
                telemetry::init(LogFormat::Pretty);
            }
            crate::demo::run().await
        }
        Command::Openapi { event_catalog } => {
            let catalog = match event_catalog {
                Some(path) => crate::domain::Catalog::from_file(&path).context("--event-catalog")?,
                None => crate::domain::Catalog::builtin(),
            };
            println!("{}", crate::api::openapi_json_text(&catalog));
            Ok(())
        }
        Command::Project(cmd) => {
            telemetry::init(LogFormat::Pretty);
            project(cmd).await
        }
    }
}

async fn project(cmd: ProjectCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectCommand::Create { name, db } => {
            let name = projects::ProjectName::parse(&name).map_err(|e| anyhow::anyhow!("--name {e}"))?;
            let (store, vault) =
                open_store(&db.database_url, db.secret_key.as_ref().map(Sensitive::expose), db.db_max_connections)
                    .await?;
            let p = projects::create_project(&store, &vault, &name).await?;
            print_json(&json!(projects::ProvisionedView::from(p)));
        }
        ProjectCommand::CreateKey { project, db } => {
            let project = parse_project(&project)?;
            let (store, _) =
                open_store(&db.database_url, db.secret_key.as_ref().map(Sensitive::expose), db.db_max_connections)
                    .await?;
            let (id, key) = projects::create_api_key(&store, &project).await?.context("no such project")?;
            print_json(&json!({"id": id.as_str(), "api_key": key.expose()}));
        }
        ProjectCommand::RevokeKey { project, key, db } => {
            let project = parse_project(&project)?;
            let key = ApiKeyId::parse(&key).with_context(|| format!("{key:?} is not a key id (key_…)"))?;
            let (store, _) =
                open_store(&db.database_url, db.secret_key.as_ref().map(Sensitive::expose), db.db_max_connections)
                    .await?;
            let revoked = store.revoke_api_key(project, key.clone(), crate::domain::time::now_ms()).await?;
            anyhow::ensure!(revoked, "the project has no active key {key}");
            eprintln!(
                "revoked {key}; running servers stop accepting it within {} s",
                projects::KEY_CACHE_TTL.as_secs()
            );
        }
        ProjectCommand::Keys { project, db } => {
            let project = parse_project(&project)?;
            let (store, _) =
                open_store(&db.database_url, db.secret_key.as_ref().map(Sensitive::expose), db.db_max_connections)
                    .await?;
            let keys = store.list_api_keys(project).await?;
            let keys: Vec<_> = keys
                .into_iter()
                .map(|k| {
                    json!({
                        "id": k.id.as_str(),
                        "prefix": k.prefix,
                        "created_at": to_rfc3339(k.created_at),
                        "revoked_at": k.revoked_at.map(to_rfc3339),
                    })
                })
                .collect();
            print_json(&json!({"data": keys}));
        }
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}
