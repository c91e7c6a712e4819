//! The SQLite schema's migrations: numbered SQL files in `migrations/sqlite/`,
//! embedded in the binary, with `PRAGMA user_version` recording the last one
//! applied.
//!
//! A runner of our own rather than sqlx's migrator: this backend does not use
//! sqlx at all (see `mod.rs`), and the runner is a dozen lines. The migrations
//! run as one write, in the writer's transaction (`BEGIN IMMEDIATE`), so two
//! processes migrating one file take turns, and a failed migration leaves
//! nothing behind.

use rusqlite::Connection;

use super::db_err;
use crate::store::{Result, StoreError};

/// Numbered migrations, in order; `PRAGMA user_version` records how many are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_init.sql"),
    include_str!("../../../migrations/sqlite/0002_rate_limit.sql"),
    include_str!("../../../migrations/sqlite/0003_lifecycle.sql"),
];

/// Applies the migrations the database has not seen yet.
pub(super) fn migrate(conn: &Connection) -> Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db_err)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        conn.execute_batch(sql).map_err(db_err)?;
        conn.pragma_update(None, "user_version", i + 1).map_err(db_err)?;
    }
    Ok(())
}

/// Fails unless every migration has been applied.
pub(super) fn check_current(conn: &Connection) -> Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db_err)?;
    if version == MIGRATIONS.len() {
        Ok(())
    } else {
        Err(StoreError::SchemaNotCurrent { found: version as i64, expected: MIGRATIONS.len() as i64 })
    }
}
