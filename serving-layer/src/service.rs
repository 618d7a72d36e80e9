//! The serving layer's entry point: [`run`] binds `serving.listen`, installs the
//! Prometheus recorder, connects to MySQL and Redis, and serves until `shutdown`
//! fires, then drains open connections (`server`). [`serve`] is the same on a
//! listener the caller bound, without installing a recorder: tests run the serving
//! layer in-process through it.

use common::config::Config;
use common::redis_keys::Keys;
use metrics_exporter_prometheus::PrometheusHandle;
use platform::db::DbError;
use platform::redis_conn::RedisConn;
use platform::speed_results::SpeedReader;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::routes::app;
use crate::state::AppState;

/// Why the serving layer could not start. Once serving, it stops only on `shutdown`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `serving.listen` is not `host:port`.
    #[error("serving.listen `{0}` is not host:port")]
    Address(String),
    /// The address could not be bound (taken, or not this host's).
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A Prometheus recorder is already installed in this process.
    #[error("prometheus exporter: {0}")]
    Metrics(String),
    /// MySQL is unreachable or its schema could not be applied.
    #[error("MySQL schema: {0}")]
    Mysql(#[from] DbError),
    /// Redis is unreachable (`redis.url` / `redis.cluster_nodes`).
    #[error("connecting to Redis (redis.url / redis.cluster_nodes): {0}")]
    Redis(#[from] redis::RedisError),
}

/// Serves the API on `serving.listen` until `shutdown` fires.
///
/// # Errors
///
/// [`StartError`] when the address, the recorder, MySQL or Redis fail at start. The
/// port is bound first, so a taken port fails the start before anything else runs.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let addr = cfg
        .serving
        .listen
        .parse()
        .map_err(|_| StartError::Address(cfg.serving.listen.clone()))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let prometheus = platform::telemetry::install_prometheus()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    serve(cfg, listener, Some(prometheus), shutdown).await
}

/// Serves the API on `listener` until `shutdown` fires; `/metrics` renders
/// `prometheus` (404 without one).
///
/// # Errors
///
/// [`StartError::Mysql`] or [`StartError::Redis`] when a store is unreachable at start.
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    prometheus: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool).await?;
    let conn = RedisConn::connect(&cfg.redis).await?;
    let speed = SpeedReader::new(conn, Keys::new(&cfg.redis.key_prefix), cfg.kafka.partitions);
    let state = AppState::new(
        cfg.serving.clone(),
        pool.clone(),
        speed,
        prometheus,
        &shutdown,
    );
    let timeout = cfg.serving.request_timeout;
    let router = app(state)
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                within(timeout, req, next)
            },
        ))
        .layer(TraceLayer::new_for_http());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving");
    }
    crate::server::serve(listener, router, cfg.serving.header_read_timeout, shutdown).await;
    // Bounded: a connection the pool is still opening (MySQL behind a partition that
    // drops packets) would hold `disconnect` until TCP gives up on it.
    if tokio::time::timeout(std::time::Duration::from_secs(5), pool.disconnect())
        .await
        .is_err()
    {
        tracing::warn!("MySQL pool not closed within 5 s of shutdown; exiting without it");
    }
    Ok(())
}

/// Answers `req` through `next`, or the JSON 503 of [`ApiError::Unavailable`] when the
/// handler has not answered within `serving.request_timeout` (a store that hangs, e.g.
/// MySQL behind a partition): the one error shape, never an empty body.
async fn within(
    timeout: std::time::Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Unavailable(format!(
            "the request was not answered within serving.request_timeout ({timeout:?})"
        ))
        .into_response(),
    }
}
