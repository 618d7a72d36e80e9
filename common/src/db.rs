//! MySQL access shared by the layers: the connection pool and the schema
//! (`deploy/sql/mysql.sql`, applied idempotently).
//!
//! SQL is always built with bound parameters (`exec` with params), never by
//! formatting input into statements.

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};

use crate::config::MysqlConfig;

/// The schema, embedded so every binary can apply it.
pub const SCHEMA_SQL: &str = include_str!("../../deploy/sql/mysql.sql");

/// Errors of the database helpers.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("bad mysql url: {0}")]
    Url(#[from] mysql_async::UrlError),
    /// A statement failed.
    #[error("mysql: {0}")]
    Mysql(#[from] mysql_async::Error),
}

/// Opens a pool for `cfg`. Connections are made lazily.
///
/// # Errors
///
/// [`DbError::Url`] when `mysql.url` does not parse.
pub fn pool(cfg: &MysqlConfig) -> Result<Pool, DbError> {
    let opts = Opts::from_url(cfg.url.expose())?;
    let constraints = PoolConstraints::new(0, cfg.pool_max.max(1)).unwrap_or_default();
    // Every session in UTC, so TIMESTAMP columns read and write UTC whatever the server's zone.
    let builder = OptsBuilder::from_opts(opts)
        .pool_opts(PoolOpts::default().with_constraints(constraints))
        .init(vec!["SET time_zone = '+00:00'"]);
    Ok(Pool::new(builder))
}

/// The schema's statements, one per `;` line.
pub fn schema_statements() -> impl Iterator<Item = &'static str> {
    SCHEMA_SQL.split("\n;").map(str::trim).filter(|s| {
        s.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
    })
}

/// Creates every table that does not exist yet.
///
/// # Errors
///
/// [`DbError::Mysql`] when a statement fails (no rights, server down).
pub async fn migrate(pool: &Pool) -> Result<(), DbError> {
    let mut conn = pool.get_conn().await?;
    for stmt in schema_statements() {
        conn.query_drop(stmt).await?;
    }
    adopt_day_finality(&mut conn).await?;
    for (table, column, definition) in ADDED_COLUMNS {
        let present: Option<i64> = conn
            .exec_first(
                "SELECT 1 FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?",
                (table, column),
            )
            .await?;
        if present.is_none() {
            tracing::info!(table, column, "adding a column to an existing table");
            conn.query_drop(format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))
            .await?;
        }
    }
    Ok(())
}

/// An installation from before per-zone finality has final days in `batch_runs` and
/// no `day_finality`: once, while `day_finality` is empty, each such day becomes final
/// for every zone its advertisers have (what that version served), so that upgrading
/// does not turn final days provisional. `closes_at` is unknown there and is set to
/// the run's finish.
async fn adopt_day_finality(conn: &mut mysql_async::Conn) -> Result<(), DbError> {
    let any: Option<i64> = conn
        .query_first("SELECT 1 FROM day_finality LIMIT 1")
        .await?;
    if any.is_some() {
        return Ok(());
    }
    conn.query_drop(
        "INSERT IGNORE INTO day_finality (day, time_zone, status, closes_at, final_at, computed_at, checked_at) \
         SELECT b.day, z.time_zone, 'final', b.finished_at, COALESCE(b.first_final_at, b.finished_at), \
                b.finished_at, CURRENT_TIMESTAMP(3) \
         FROM batch_runs b JOIN (SELECT DISTINCT time_zone FROM advertisers) z \
         WHERE b.finality IN ('final', 'revised') AND b.finished_at IS NOT NULL",
    )
    .await?;
    Ok(())
}

/// Columns added to a table after it was first created: `(table, column, definition)`.
/// `CREATE TABLE IF NOT EXISTS` leaves a table of an earlier version as it was, so
/// [`migrate`] adds these when missing (the same columns are in `deploy/sql/mysql.sql`
/// for new installs). Portable to MySQL and MariaDB (no `ADD COLUMN IF NOT EXISTS`).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[(
    "batch_run_parts",
    "complete_through",
    "TIMESTAMP(3) NULL COMMENT 'the archive of this part''s partitions was complete through this instant when it was read'",
)];

#[cfg(test)]
mod tests {
    #[test]
    fn schema_splits_into_statements() {
        let stmts: Vec<_> = super::schema_statements().collect();
        assert!(stmts.len() >= 9, "{}", stmts.len());
        assert!(
            stmts
                .iter()
                .all(|s| s.contains("CREATE TABLE IF NOT EXISTS")),
            "{stmts:#?}"
        );
    }
}
