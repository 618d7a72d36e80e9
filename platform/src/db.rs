//! MySQL access shared by the layers: the connection pool and the schema
//! (`deploy/sql/mysql.sql`, applied idempotently).
//!
//! SQL is always built with bound parameters (`exec` with params), never by
//! formatting input into statements.

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};

use common::config::MysqlConfig;

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

/// MySQL server error codes of passing states, worth a retry (MariaDB and MySQL
/// share them): `ER_CON_COUNT_ERROR` 1040 (too many connections),
/// `ER_SERVER_SHUTDOWN` 1053, `ER_NET_READ_ERROR` 1158, `ER_NET_READ_INTERRUPTED`
/// 1159, `ER_NET_ERROR_ON_WRITE` 1160, `ER_NET_WRITE_INTERRUPTED` 1161,
/// `ER_LOCK_WAIT_TIMEOUT` 1205, `ER_LOCK_DEADLOCK` 1213, `ER_QUERY_INTERRUPTED`
/// 1317, `ER_CONNECTION_KILLED` 1927, `CR_SERVER_GONE_ERROR` 2006,
/// `CR_SERVER_LOST` 2013.
const RETRIABLE_MYSQL_CODES: [u16; 12] = [
    1040, 1053, 1158, 1159, 1160, 1161, 1205, 1213, 1317, 1927, 2006, 2013,
];

impl DbError {
    /// True when a retry may cure it: the connection (I/O, a pool that lost its
    /// server) or a server error code of a passing state ([`RETRIABLE_MYSQL_CODES`]).
    /// A missing table or column, a syntax error or access denied is not retried.
    pub fn is_retriable(&self) -> bool {
        match self {
            DbError::Url(_) => false,
            DbError::Mysql(e) => match e {
                mysql_async::Error::Io(_) => true,
                mysql_async::Error::Driver(d) => matches!(
                    d,
                    mysql_async::DriverError::ConnectionClosed
                        | mysql_async::DriverError::PoolDisconnected
                        | mysql_async::DriverError::PacketOutOfOrder
                ),
                mysql_async::Error::Server(s) => RETRIABLE_MYSQL_CODES.contains(&s.code),
                _ => false,
            },
        }
    }
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
