//! `speed-layer migrate`: creates what the speed layer needs, idempotently: the
//! Kafka topics (`kafka.partitions` each), the MySQL schema, and the ClickHouse tables
//! when `clickhouse.enabled`.

use anyhow::Context as _;
use common::config::Config;

use crate::clickhouse_sink;

/// Creates the topics, the MySQL schema and (if enabled) the ClickHouse tables.
///
/// # Errors
///
/// When Kafka, MySQL or ClickHouse refuse, naming which.
pub async fn run(cfg: &Config) -> anyhow::Result<()> {
    let k = &cfg.kafka;
    platform::kafka::create_topics(
        k,
        &[&k.traffic_topic, &k.effects_topic, &k.dlq_topic],
        k.partitions,
    )
    .await?;
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool).await.context("MySQL schema")?;
    pool.disconnect().await.ok();
    if cfg.clickhouse.enabled {
        clickhouse_sink::migrate(&cfg.clickhouse)
            .await
            .context("ClickHouse schema")?;
    }
    Ok(())
}
