//! The PostgreSQL schema's migrations: numbered SQL files in
//! `migrations/postgres/`, embedded in the binary, with `hookline_migrations`
//! recording the applied ones.

use sqlx::postgres::PgPool;

use super::db_err;
use crate::store::{Result, StoreError};

/// Numbered migrations; `hookline_migrations` records the applied ones.
const MIGRATIONS: &[&str] = &[include_str!("../../../migrations/postgres/0001_init.sql")];
/// Serializes migrations of concurrent processes ("hookline" in ASCII).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_6c69_6e65;

/// Applies the migrations the database has not seen yet.
pub(super) async fn migrate(pool: &PgPool) -> Result<()> {
    // One transaction under an advisory lock: a second process running
    // this at the same time waits, then finds nothing left to do. DDL is
    // transactional in PostgreSQL, so a failed migration leaves nothing behind.
    let mut tx = pool.begin().await.map_err(db_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(db_err)?;
    // Asked first, not CREATE … IF NOT EXISTS, which logs a notice on every start.
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('hookline_migrations') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    if !exists {
        sqlx::raw_sql("CREATE TABLE hookline_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    let current: Option<i32> =
        sqlx::query_scalar("SELECT max(version) FROM hookline_migrations").fetch_one(&mut *tx).await.map_err(db_err)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.unwrap_or(0) as usize) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(db_err)?;
        sqlx::query("INSERT INTO hookline_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(i as i32 + 1)
            .bind(crate::domain::time::now_ms())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// Fails unless every migration has been applied.
pub(super) async fn check_current(pool: &PgPool) -> Result<()> {
    let version: Option<i32> =
        sqlx::query_scalar("SELECT max(version) FROM hookline_migrations").fetch_one(pool).await.map_err(db_err)?;
    match version {
        Some(v) if v as usize == MIGRATIONS.len() => Ok(()),
        v => Err(StoreError::SchemaNotCurrent { found: v.unwrap_or(0).into(), expected: MIGRATIONS.len() as i64 }),
    }
}
