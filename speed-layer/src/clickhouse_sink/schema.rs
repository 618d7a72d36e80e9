//! The ClickHouse side of the sink: the DDL (`deploy/sql/clickhouse.sql`), clients,
//! and the shard a row goes to.

use common::config::ClickHouseConfig;

/// The detail table rows go to.
pub const DETAIL_TABLE: &str = "events";

/// The ClickHouse DDL (`deploy/sql/clickhouse.sql`).
pub const SCHEMA_SQL: &str = include_str!("../../../deploy/sql/clickhouse.sql");

/// The shard (0-based, below `shards`) of the row of `event_id`: ClickHouse's
/// `sipHash64(event_id) % shards`, the `Distributed` table's sharding key.
pub fn shard_of(event_id: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    // std's SipHasher is SipHash-2-4 with a zero key, exactly ClickHouse's sipHash64;
    // it is deprecated only in favour of a randomly keyed HashMap hasher.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    std::hash::Hasher::write(&mut h, event_id.as_bytes());
    let hash = std::hash::Hasher::finish(&h);
    usize::try_from(hash % shards as u64).unwrap_or(0)
}

/// The `Distributed` tables of a sharded deployment, created on every shard.
pub(super) fn distributed_statements(cfg: &ClickHouseConfig) -> Vec<String> {
    let (cluster, db) = (ident(&cfg.cluster), ident(&cfg.database));
    [
        ("events", ", sipHash64(event_id)"),
        ("daily_ad", ""),
        ("daily_ad_uv", ""),
    ]
    .iter()
    .map(|(t, key)| {
        format!(
            "CREATE TABLE IF NOT EXISTS {t}_all AS {t} ENGINE = Distributed(`{cluster}`, `{db}`, {t}{key})"
        )
    })
    .collect()
}

/// Builds a client for `cfg` (RowBinary without schema validation: ClickHouse 18.16
/// does not know `RowBinaryWithNamesAndTypes`).
pub fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    server_client(cfg)
        .with_database(&cfg.database)
        .with_validation(false)
}

/// A client for `cfg`'s server with no database selected (to create or drop it).
pub fn server_client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(cfg.password.expose())
}

/// `name` safe to put between backticks in DDL (config values, not user input).
pub fn ident(name: &str) -> String {
    name.replace('`', "")
}

/// The DDL's statements.
pub fn schema_statements() -> Vec<String> {
    SCHEMA_SQL
        .split(";\n")
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.trim().is_empty())
        .collect()
}

/// Creates the database and tables that do not exist yet, on every shard (with the
/// `Distributed` tables when sharded).
///
/// # Errors
///
/// When ClickHouse is unreachable or refuses a statement.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<(), clickhouse::error::Error> {
    for shard in cfg.per_shard() {
        server_client(&shard)
            .query(&format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                ident(&shard.database)
            ))
            .execute()
            .await?;
        let c = client(&shard);
        for stmt in schema_statements() {
            c.query(&stmt).execute().await?;
        }
        if !cfg.shards.is_empty() {
            for stmt in distributed_statements(cfg) {
                c.query(&stmt).execute().await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn schema_has_the_detail_table_and_rollups() {
        let stmts = super::schema_statements();
        assert!(
            stmts
                .iter()
                .any(|s| s.contains("CREATE TABLE IF NOT EXISTS events"))
        );
        assert!(
            stmts
                .iter()
                .any(|s| s.contains("MATERIALIZED VIEW IF NOT EXISTS daily_ad_mv"))
        );
        assert!(
            stmts.iter().all(|s| !s.trim_end().ends_with(';')),
            "{stmts:?}"
        );
    }
}
