//! The batch layer's long-running services, each `(config, ..., shutdown)`: the
//! archiver (Kafka -> Parquet), the scheduler (closed days -> final) and, where the
//! recompute runs as short jobs, the run watcher (the scheduler's gauges only). Each
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

/// Serves the batch alerts' metrics without recomputing until `shutdown` (see
/// [`crate::schedule::watch`]).
///
/// # Errors
///
/// When the metrics address, MySQL or a schedule fail at start.
pub async fn watch_runs(
    cfg: Arc<Config>,
    metrics_listen: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool).await.context("MySQL schema")?;
    platform::telemetry::serve_prometheus("--metrics-listen", metrics_listen)?;
    crate::schedule::watch(cfg, pool, shutdown).await
}
