//! What the handlers share: configuration, the stores, the read path and the
//! authenticator.

use std::sync::Arc;

use axum::extract::FromRef;
use common::config::ServingConfig;
use metrics_exporter_prometheus::PrometheusHandle;
use mysql_async::Pool;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, VerifiedKey};
use crate::error::ApiError;
use crate::read_path::{Advertiser, ReadPath};
use platform::speed_results::SpeedReader;

/// What handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Serving configuration.
    pub cfg: Arc<ServingConfig>,
    /// MySQL (keys, dimensions, batch results, batch runs).
    pub pool: Pool,
    /// Redis (speed results).
    pub speed: SpeedReader,
    /// The cached read path of the metrics route.
    pub read: Arc<ReadPath>,
    /// API keys, rate limits.
    pub auth: Arc<Authenticator>,
    /// Prometheus text renderer, when this process installed the recorder.
    pub prometheus: Option<PrometheusHandle>,
}

impl AppState {
    /// State over `pool` and `speed`; starts the read path's version pollers, which
    /// stop with `shutdown`.
    pub fn new(
        cfg: ServingConfig,
        pool: Pool,
        speed: SpeedReader,
        prometheus: Option<PrometheusHandle>,
        shutdown: &CancellationToken,
    ) -> Self {
        let read = ReadPath::new(&cfg, pool.clone(), speed.clone());
        read.spawn_pollers(shutdown);
        AppState {
            auth: Arc::new(Authenticator::new(pool.clone(), &cfg)),
            cfg: Arc::new(cfg),
            pool,
            speed,
            read,
            prometheus,
        }
    }

    /// The advertiser named by a path segment, if `key` may read it.
    ///
    /// # Errors
    ///
    /// [`ApiError::NotFound`] for a malformed id, another tenant's id and an unknown
    /// advertiser alike (no leak of existence); 503 when MySQL fails.
    pub async fn advertiser_of_key(
        &self,
        key: &VerifiedKey,
        segment: &str,
    ) -> Result<Arc<Advertiser>, ApiError> {
        let id: i64 = segment.parse().map_err(|_| ApiError::NotFound)?;
        if !key.principal.may_read(id) {
            return Err(ApiError::NotFound);
        }
        self.read.advertiser(id).await?.ok_or(ApiError::NotFound)
    }
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(s: &AppState) -> Self {
        Arc::clone(&s.auth)
    }
}
