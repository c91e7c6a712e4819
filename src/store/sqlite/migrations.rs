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
    include_str!("../../../migrations/sqlite/0004_rowid_tables.sql"),
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

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::{MIGRATIONS, migrate};

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap()
    }

    /// 0004 rebuilds events, webhook_logs and delivery_attempts: their rows
    /// must come through, and the foreign keys must still cascade.
    #[test]
    fn the_rowid_rebuild_keeps_every_row_and_the_cascades() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO projects VALUES ('prj_1', 'shop', 1), ('prj_2', 'other', 1);
             INSERT INTO events VALUES ('evt_1', 'prj_1', 'order.paid', '{\"n\":1}', 1),
                                       ('evt_2', 'prj_2', 'order.paid', '{\"n\":2}', 2);
             INSERT INTO webhook_logs (id, project_id, event, event_id, webhook_id, target_url, status, attempts,
                                       next_attempt_at, created_at, updated_at, attempt_base, kind)
                 VALUES ('dlv_1', 'prj_1', 'order.paid', 'evt_1', 'wh_1', 'https://a.example/', 'sent', 1, NULL, 1, 2, 0, 'event'),
                        ('dlv_2', 'prj_2', 'order.paid', 'evt_2', 'wh_2', 'https://b.example/', 'pending', 2, 9, 2, 3, 1, 'test');
             INSERT INTO delivery_attempts VALUES ('dlv_1', 1, 1, 5, 200, NULL, NULL, 'ok'),
                                                  ('dlv_2', 1, 2, 5, 500, 'http', 'HTTP 500', NULL);",
        )
        .unwrap();

        migrate(&conn).unwrap();

        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let log: (String, i64, i64, String, Option<i64>) = conn
            .query_row(
                "SELECT status, attempts, attempt_base, kind, next_attempt_at FROM webhook_logs WHERE id = 'dlv_2'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(log, ("pending".into(), 2, 1, "test".into(), Some(9)), "every column came through");
        let data: String = conn.query_row("SELECT data FROM events WHERE id = 'evt_1'", [], |r| r.get(0)).unwrap();
        assert_eq!(data, "{\"n\":1}");
        assert_eq!(
            (count(&conn, "events"), count(&conn, "webhook_logs"), count(&conn, "delivery_attempts")),
            (2, 2, 2)
        );
        let broken: i64 = conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
        assert_eq!(broken, 0);

        // A project's deletion still reaches its deliveries' attempts, and only its own.
        conn.execute("DELETE FROM projects WHERE id = 'prj_1'", []).unwrap();
        assert_eq!(
            (count(&conn, "events"), count(&conn, "webhook_logs"), count(&conn, "delivery_attempts")),
            (1, 1, 1)
        );
        // Ids stay unique.
        let again = conn.execute("INSERT INTO events VALUES ('evt_2', 'prj_2', 'order.paid', '{}', 3)", []);
        assert!(again.is_err(), "a second evt_2 is refused");
    }
}
