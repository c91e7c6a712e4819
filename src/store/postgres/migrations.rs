//! The PostgreSQL schema's migrations, run by sqlx's migrator: the numbered
//! SQL files of `migrations/postgres/`, embedded in the binary, recorded with
//! their checksums in `_sqlx_migrations`. A migration edited after a database
//! applied it is then an error instead of a silent drift, and sqlx's tooling
//! (`sqlx migrate info --source migrations/postgres`) reads a database's state.
//!
//! The migrator is built at run time from `include_str!`
//! (`Migrator::with_migrations`), not by `sqlx::migrate!()`, which needs sqlx's
//! `macros` feature and its proc macros in the build (see Cargo.toml). The
//! price: a new file is listed in [`MIGRATOR`] by hand, as in
//! `sqlite/migrations.rs`.
//!
//! Several processes may migrate at once: the migrator holds PostgreSQL's
//! advisory lock (keyed on the database's name) for its whole run, so the
//! others wait, then find nothing left to do. Each migration runs in a
//! transaction of its own; DDL is transactional in PostgreSQL, so a failed
//! one leaves nothing behind. The lock is a session lock, which the migrator
//! does not release when a migration fails: it runs on a connection of its
//! own, closed afterwards, never on one of the store's pool, which would
//! keep the lock.
//!
//! A database set up by the runner hookline had before (a
//! `hookline_migrations` table, no checksums) is not adopted: that runner was
//! never released, and nothing would prove that such a schema matches today's
//! `0001_init.sql`. `migrate` stops before changing anything, with
//! [`StoreError::PreReleaseSchema`], which says to create a new database.

use std::sync::LazyLock;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::db_err;
use crate::store::{Result, StoreError};

/// The migrations, as `<version>_<description>.sql` files name them (the
/// layout sqlx's tooling reads).
static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    Migrator::with_migrations(vec![
        migration(1, "init", include_str!("../../../migrations/postgres/0001_init.sql")),
        migration(2, "rate_limit", include_str!("../../../migrations/postgres/0002_rate_limit.sql")),
        migration(3, "lifecycle", include_str!("../../../migrations/postgres/0003_lifecycle.sql")),
    ])
});

fn migration(version: i64, description: &'static str, sql: &'static str) -> Migration {
    Migration::new(version, description.into(), MigrationType::Simple, sql.into_sql_str(), false)
}

/// Applies the migrations the database has not seen yet, on a connection of
/// its own (see the module docs).
pub(super) async fn migrate(options: &PgConnectOptions) -> Result<()> {
    // The migrator creates its table with CREATE … IF NOT EXISTS, which
    // PostgreSQL answers with a notice on every start; sqlx would log it.
    let options = options.clone().options([("client_min_messages", "warning")]);
    // A pool of one, as the migrator takes a pool (its run on a bare
    // connection cannot be named in a `Send` future).
    let pool = PgPoolOptions::new().max_connections(1).connect_with(options).await.map_err(db_err)?;
    let result = run(&pool).await;
    // Ends the session, and with it the advisory lock, whatever happened.
    pool.close().await;
    result
}

async fn run(pool: &PgPool) -> Result<()> {
    let pre_release: bool = sqlx::query_scalar("SELECT to_regclass('hookline_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    if pre_release {
        return Err(StoreError::PreReleaseSchema);
    }
    MIGRATOR.run(pool).await.map_err(StoreError::Migrate)
}

/// Fails unless every migration has been applied.
pub(super) async fn check_current(pool: &PgPool) -> Result<()> {
    let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let found: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    match found {
        Some(v) if v == expected => Ok(()),
        v => Err(StoreError::SchemaNotCurrent { found: v.unwrap_or(0), expected }),
    }
}
