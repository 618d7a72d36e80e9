//! The batch layer's two long-running services, each `run(config, ..., shutdown)`:
//! the archiver (Kafka -> Parquet) and the scheduler (closed days -> final). Each
//! serves its Prometheus endpoint on `metrics_listen` and returns once `shutdown`
//! fires and it has drained.

use std::sync::Arc;

use anyhow::Context as _;
use common::config::Config;
use tokio_util::sync::CancellationToken;

use crate::archive::store;
use crate::recompute::Shard;

/// Archives both input topics to Parquet until `shutdown` (see [`crate::archiver`]).
///
/// # Errors
///
/// When the metrics address, the archive or Kafka fail at start, or the archiver
/// stops on an error.
pub async fn archive(
    cfg: Arc<Config>,
    metrics_listen: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    platform::telemetry::serve_prometheus("--metrics-listen", metrics_listen)?;
    let archive = store::open(&cfg.batch)?;
    crate::archiver::run(cfg, archive, shutdown).await
}

/// Runs the recompute schedule until `shutdown` (see [`crate::schedule`]).
///
/// # Errors
///
/// When the metrics address, MySQL, the archive or a schedule fail at start.
pub async fn schedule(
    cfg: Arc<Config>,
    metrics_listen: &str,
    shard: Shard,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool).await.context("MySQL schema")?;
    let archive = store::open(&cfg.batch)?;
    platform::telemetry::serve_prometheus("--metrics-listen", metrics_listen)?;
    crate::schedule::run(cfg, pool, archive, shard, shutdown).await
}
