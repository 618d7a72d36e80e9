//! The speed layer as one call: connects to MySQL, Redis, Kafka and ClickHouse as the
//! configuration says, consumes until `shutdown`, then drains in order (partitions
//! flush, then the ClickHouse sink inserts its last batch), the whole drain within
//! `speed.shutdown_timeout` of the signal. `speed-layer run` calls [`run`] (which
//! installs the Prometheus exporter); `bench e2e` runs [`run_without_exporter`]
//! in-process.

use std::sync::Arc;

use anyhow::Context as _;
use common::config::Config;
use common::redis_keys::Keys;
use tokio_util::sync::CancellationToken;

use crate::clickhouse_sink;
use crate::dims::DimCache;
use crate::partition::Shared;

/// Serves Prometheus metrics on `speed.metrics_listen`, then runs the speed layer
/// until `shutdown` fires or a partition fails ([`run_without_exporter`]).
///
/// # Errors
///
/// When the metrics address cannot be served, and as [`run_without_exporter`].
pub async fn run(cfg: Arc<Config>, shutdown: CancellationToken) -> anyhow::Result<()> {
    platform::telemetry::serve_prometheus("speed.metrics_listen", &cfg.speed.metrics_listen)?;
    run_without_exporter(cfg, shutdown).await
}

/// Runs the speed layer until `shutdown` fires or a partition fails, recording
/// metrics into whatever recorder the process has.
///
/// # Errors
///
/// When a service is unreachable at start (MySQL pool, Redis, the ClickHouse schema),
/// a partition task fails (the process should exit and be restarted; state is in
/// Redis), or the drain outlasts `speed.shutdown_timeout` (what it did not flush
/// resumes from Redis and the sink's journal at the next start).
pub async fn run_without_exporter(
    cfg: Arc<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = platform::db::pool(&cfg.mysql)?;
    let dims = DimCache::new(
        pool.clone(),
        cfg.speed.dims_cache_capacity,
        cfg.speed.dims_cache_ttl,
    );
    let redis = platform::redis_conn::RedisConn::connect(&cfg.redis)
        .await
        .context("connecting to Redis (redis.url / redis.cluster_nodes)")?;
    let producer = platform::kafka::producer_config(&cfg.kafka)
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
    // The sink stops after the partitions (it must take their last rows), so its
    // token is cancelled when they have drained, not by the signal.
    let work = async {
        let result = crate::consumer::run(Arc::clone(&cfg), shared, shutdown.child_token()).await;
        sink_stop.cancel();
        while sink_tasks.join_next().await.is_some() {}
        result
    };
    let result = platform::shutdown::drain_within(&shutdown, cfg.speed.shutdown_timeout, work)
        .await
        .unwrap_or_else(|| {
            Err(anyhow::anyhow!(
                "the shutdown drain outlasted speed.shutdown_timeout ({:?}); what was not flushed resumes from Redis and the ClickHouse journal at the next start",
                cfg.speed.shutdown_timeout
            ))
        });
    pool.disconnect().await.ok();
    result
}
