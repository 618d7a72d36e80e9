//! The speed layer as one call: connects to MySQL, Redis, Kafka and ClickHouse as the
//! configuration says, consumes until `shutdown`, then drains (partitions flush, the
//! ClickHouse sink inserts its last batch). `speed-layer run` calls it after installing
//! the Prometheus exporter; `bench e2e` runs it in-process.

use std::sync::Arc;

use anyhow::Context as _;
use common::config::Config;
use common::redis_keys::Keys;
use tokio_util::sync::CancellationToken;

use crate::clickhouse_sink;
use crate::dims::DimCache;
use crate::partition::Shared;

/// Runs the speed layer until `shutdown` fires or a partition fails.
///
/// # Errors
///
/// When a service is unreachable at start (MySQL pool, Redis, the ClickHouse schema),
/// or a partition task fails (the process should exit and be restarted; state is in
/// Redis).
pub async fn run(cfg: Arc<Config>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = common::db::pool(&cfg.mysql)?;
    let dims = DimCache::new(
        pool.clone(),
        cfg.speed.dims_cache_capacity,
        cfg.speed.dims_cache_ttl,
    );
    let redis = common::redis_conn::RedisConn::connect(&cfg.redis)
        .await
        .context("connecting to Redis (redis.url / redis.cluster_nodes)")?;
    let producer = common::kafka::producer_config(&cfg.kafka)
        .create()
        .context("kafka producer")?;
    let sink_stop = CancellationToken::new();
    let (sink, mut sink_tasks) = if cfg.clickhouse.enabled {
        clickhouse_sink::migrate(&cfg.clickhouse)
            .await
            .context("ClickHouse schema (set clickhouse.enabled = false to run without)")?;
        let (h, set) = clickhouse_sink::start(&cfg.clickhouse, &cfg.state_dir, &sink_stop).await?;
        (Some(h), set)
    } else {
        (None, tokio::task::JoinSet::new())
    };
    let shared = Shared {
        cfg: Arc::clone(&cfg),
        keys: Keys::new(&cfg.redis.key_prefix),
        redis,
        dims,
        producer,
        sink,
    };
    let result = crate::consumer::run(Arc::clone(&cfg), shared, shutdown).await;
    // Partitions have drained; let the sink seal and insert its last batch.
    sink_stop.cancel();
    while sink_tasks.join_next().await.is_some() {}
    pool.disconnect().await.ok();
    result
}
