//! The HTTP API (axum). Routes:
//!
//! | route | answers |
//! |---|---|
//! | `GET /v1/me` | the key's role and advertiser |
//! | `GET /v1/advertisers/{id}/metrics?from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=day\|ad\|campaign` | metrics per day (and ad or campaign), each row marked final (batch) or provisional (speed) |
//! | `GET /v1/advertisers/{id}/realtime?minutes=N` | today's 10-second series ([`crate::live`]) |
//! | `GET /v1/advertisers/{id}/freshness` | last speed write, last final day, last batch run |
//! | `GET /openapi.json` | the OpenAPI 3.0 description of these routes |
//! | `GET /` | the advertiser dashboard (static page, `serving-layer/static/`) |
//! | `GET /healthz` | 200 when Redis answers |
//! | `GET /readyz` | 200 when Redis and MySQL answer |
//! | `GET /metrics` | Prometheus text |
//!
//! Every `/v1` route needs `Authorization: Bearer <key>`; see [`crate::auth`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::NaiveDate;
use common::counters::{Counters, Derived, Measure, UNATTRIBUTED_AD};
use common::day::{day_num, parse_date, rfc3339_ms, today};
use common::redis_keys::UvScope;
use common::telemetry::{HTTP_REQUEST_DURATION, HTTP_REQUESTS};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use metrics_exporter_prometheus::PrometheusHandle;
use mysql_async::Pool;
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::auth::{self, VerifiedKey};
use crate::batch::{self, BatchDay};
use crate::error::ApiError;
use crate::live;
use crate::speed::{SpeedDay, SpeedReader};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Serving configuration.
    pub cfg: Arc<common::config::ServingConfig>,
    /// MySQL (keys, dimensions, batch results).
    pub pool: Pool,
    /// Redis (speed results).
    pub speed: SpeedReader,
    /// Per-key rate limiter.
    pub limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// Prometheus text renderer, when this process installed the recorder.
    pub prometheus: Option<PrometheusHandle>,
}

impl AppState {
    /// State with a rate limiter built from `cfg`.
    pub fn new(
        cfg: common::config::ServingConfig,
        pool: Pool,
        speed: SpeedReader,
        prometheus: Option<PrometheusHandle>,
    ) -> Self {
        let per_s = std::num::NonZeroU32::new(cfg.rate_limit_per_second)
            .unwrap_or(std::num::NonZeroU32::MIN);
        let burst =
            std::num::NonZeroU32::new(cfg.rate_limit_burst).unwrap_or(std::num::NonZeroU32::MIN);
        AppState {
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_s).allow_burst(burst),
            )),
            cfg: Arc::new(cfg),
            pool,
            speed,
            prometheus,
        }
    }
}

/// The router (tests call it without a socket).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/me", get(me))
        .route("/v1/advertisers/{id}/metrics", get(metrics_handler))
        .route("/v1/advertisers/{id}/realtime", get(live::realtime))
        .route("/v1/advertisers/{id}/freshness", get(live::freshness))
        .route("/openapi.json", get(openapi))
        .route("/", get(dashboard))
        .route("/dashboard.js", get(dashboard_js))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

async fn record_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => resp.status().as_u16().to_string()).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// An authenticated, rate-limited caller.
pub struct Auth(pub VerifiedKey);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        let key = auth::verify(&state.pool, presented)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if let Err(not_until) = state.limiter.check_key(&key.key_id) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(ApiError::RateLimited {
                retry_after_s: wait.as_secs().max(1),
            });
        }
        Ok(Auth(key))
    }
}

/// `GET /v1/me`: whom the presented key belongs to, so the dashboard knows which
/// advertiser to show: `{"key_id": "...", "role": "advertiser", "advertiser_id": 12}`
/// or `{"key_id": "...", "role": "internal"}`.
async fn me(Auth(key): Auth) -> Json<serde_json::Value> {
    Json(match key.principal {
        auth::Principal::Advertiser(a) => {
            serde_json::json!({"key_id": key.key_id, "role": "advertiser", "advertiser_id": a})
        }
        auth::Principal::Internal => {
            serde_json::json!({"key_id": key.key_id, "role": "internal"})
        }
    })
}

/// The OpenAPI 3.0 description of this API (`serving-layer/static/openapi.json`).
pub const OPENAPI: &str = include_str!("../static/openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../static/index.html"))
}

async fn dashboard_js() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("../static/dashboard.js"),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.speed.ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => ApiError::Unavailable(format!("redis: {e}")).into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    s.speed.ping().await?;
    let mut conn = s.pool.get_conn().await?;
    conn.query_drop("SELECT 1").await?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

async fn prometheus(State(s): State<AppState>) -> Response {
    match &s.prometheus {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

/// Query of the metrics route.
#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
}

/// Grouping of metric rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One row per day.
    Day,
    /// One row per day and ad.
    Ad,
    /// One row per day and campaign.
    Campaign,
}

/// Validated parameters of a metrics request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First day, inclusive.
    pub from: NaiveDate,
    /// Last day, inclusive.
    pub to: NaiveDate,
    /// Grouping.
    pub group_by: GroupBy,
}

impl MetricsQuery {
    /// Validates the parameters; errors name the parameter.
    ///
    /// # Errors
    ///
    /// [`ApiError::BadParameter`].
    pub fn validate(&self, max_days: i64) -> Result<Range, ApiError> {
        let from = parse_date(
            self.from
                .as_deref()
                .ok_or_else(|| ApiError::bad("from", "`from` is required (YYYY-MM-DD)"))?,
        )
        .map_err(|m| ApiError::bad("from", m))?;
        let to = parse_date(
            self.to
                .as_deref()
                .ok_or_else(|| ApiError::bad("to", "`to` is required (YYYY-MM-DD)"))?,
        )
        .map_err(|m| ApiError::bad("to", m))?;
        if from > to {
            return Err(ApiError::bad(
                "from",
                format!("`from` ({from}) is after `to` ({to})"),
            ));
        }
        let days = (to - from).num_days() + 1;
        if days > max_days {
            return Err(ApiError::bad(
                "to",
                format!("the range has {days} days; at most {max_days} are allowed"),
            ));
        }
        let group_by = match self.group_by.as_deref().unwrap_or("day") {
            "day" => GroupBy::Day,
            "ad" => GroupBy::Ad,
            "campaign" => GroupBy::Campaign,
            other => {
                return Err(ApiError::bad(
                    "group_by",
                    format!("`{other}` is not one of day, ad, campaign"),
                ));
            }
        };
        Ok(Range { from, to, group_by })
    }
}

/// One row of the answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsRow {
    /// The advertiser-local day.
    pub day: NaiveDate,
    /// The ad (group_by=ad); 0 = effects no click earned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<i64>,
    /// The campaign (group_by=ad or campaign); 0 = unattributed effects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<i64>,
    /// `batch` or `speed`.
    pub source: &'static str,
    /// True for speed numbers (may still change).
    pub provisional: bool,
    /// `final`, `revised` or `provisional`.
    pub status: &'static str,
    /// A past day still on speed numbers because its batch run has not finished.
    pub awaiting_batch: bool,
    /// Last speed-layer write (RFC 3339), speed rows only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
    /// Batch run finish time (RFC 3339), batch rows only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub computed_at: Option<String>,
    /// The additive metrics (money in micros) and `uv`.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// CTR, CPC, CVR, CPA, ROAS from the sums.
    pub derived: Derived,
}

/// Totals over the whole answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Totals {
    /// True when any row is provisional.
    pub provisional: bool,
    /// Sums of the additive metrics (UV is not additive and is left out).
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Ratios of the sums.
    pub derived: Derived,
}

/// The answer of the metrics route.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsAnswer {
    /// The advertiser.
    pub advertiser_id: i64,
    /// Its reporting time zone.
    pub time_zone: String,
    /// Latest day whose batch results are final for it (null: none yet).
    pub final_through: Option<NaiveDate>,
    /// First day.
    pub from: NaiveDate,
    /// Last day.
    pub to: NaiveDate,
    /// `day`, `ad` or `campaign`.
    pub group_by: &'static str,
    /// Rows, by day then id.
    pub rows: Vec<MetricsRow>,
    /// Totals over the rows.
    pub totals: Totals,
}

fn metrics_map(c: &Counters, uv: Option<i64>) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    for x in Measure::ALL {
        m.insert(x.name().to_owned(), c[x].into());
    }
    if let Some(uv) = uv {
        m.insert("uv".to_owned(), uv.into());
    }
    m
}

/// The advertiser's reporting zone and `final_through`; `None` when unknown.
async fn advertiser(
    pool: &Pool,
    id: i64,
) -> Result<Option<(String, Option<NaiveDate>)>, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    conn.exec_first(
        "SELECT time_zone, final_through FROM advertisers WHERE advertiser_id = ?",
        (id,),
    )
    .await
}

/// The advertiser named by a path segment, if `key` may read it: its id, reporting
/// zone and `final_through`.
///
/// # Errors
///
/// [`ApiError::NotFound`] for a malformed id, another tenant's id and an unknown
/// advertiser alike (no leak of existence); 503 when MySQL fails.
pub async fn advertiser_of_key(
    s: &AppState,
    key: &VerifiedKey,
    id: &str,
) -> Result<(i64, chrono_tz::Tz, Option<NaiveDate>), ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound)?;
    if !key.principal.may_read(id) {
        return Err(ApiError::NotFound);
    }
    let (tz_name, final_through) = advertiser(&s.pool, id).await?.ok_or(ApiError::NotFound)?;
    let tz = common::day::parse_tz(&tz_name).unwrap_or(chrono_tz::UTC);
    Ok((id, tz, final_through))
}

async fn ad_campaigns(
    pool: &Pool,
    advertiser: i64,
) -> Result<BTreeMap<i64, i64>, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(i64, i64)> = conn
        .exec(
            "SELECT ad_id, campaign_id FROM ads WHERE advertiser_id = ?",
            (advertiser,),
        )
        .await?;
    Ok(rows.into_iter().collect())
}

async fn metrics_handler(
    State(s): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<Json<MetricsAnswer>, ApiError> {
    // Parameters first: a 400 says nothing about whether the advertiser exists.
    let range = q.validate(s.cfg.max_range_days)?;
    let (id, tz, final_through) = advertiser_of_key(&s, &key, &id).await?;
    let today = today(common::day::now_ms(), tz);
    let batch = batch::final_days(&s.pool, id, range.from, range.to).await?;
    let days: Vec<NaiveDate> = range
        .from
        .iter_days()
        .take_while(|d| *d <= range.to)
        .collect();
    let speed_days: Vec<NaiveDate> = days
        .iter()
        .copied()
        .filter(|d| !batch.contains_key(d))
        .collect();
    let speed = s.speed.days(id, &speed_days).await?;
    let campaigns = if range.group_by == GroupBy::Day {
        BTreeMap::new()
    } else {
        ad_campaigns(&s.pool, id).await?
    };
    let uv = speed_uv(&s.speed, id, range.group_by, &speed, &campaigns).await?;
    let mut rows = Vec::new();
    for d in &days {
        match (batch.get(d), speed.get(d)) {
            (Some(b), _) => rows.extend(batch_rows(*d, b, range.group_by)),
            (None, sd) => {
                let empty = SpeedDay::default();
                let sd = sd.unwrap_or(&empty);
                rows.extend(speed_rows(
                    *d,
                    sd,
                    range.group_by,
                    &campaigns,
                    &uv,
                    id,
                    *d < today,
                ));
            }
        }
    }
    let mut sum = Counters::ZERO;
    for r in &rows {
        for m in Measure::ALL {
            sum[m] += r
                .metrics
                .get(m.name())
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0);
        }
    }
    let totals = Totals {
        provisional: rows.iter().any(|r| r.provisional),
        metrics: metrics_map(&sum, None),
        derived: Derived::of(&sum),
    };
    Ok(Json(MetricsAnswer {
        advertiser_id: id,
        time_zone: tz.name().to_owned(),
        final_through,
        from: range.from,
        to: range.to,
        group_by: match range.group_by {
            GroupBy::Day => "day",
            GroupBy::Ad => "ad",
            GroupBy::Campaign => "campaign",
        },
        rows,
        totals,
    }))
}

async fn speed_uv(
    speed: &SpeedReader,
    advertiser: i64,
    group_by: GroupBy,
    days: &BTreeMap<NaiveDate, SpeedDay>,
    campaigns: &BTreeMap<i64, i64>,
) -> Result<std::collections::HashMap<(NaiveDate, UvScope), i64>, ApiError> {
    let mut wanted = BTreeSet::new();
    for (d, sd) in days {
        match group_by {
            GroupBy::Day => {
                wanted.insert((*d, UvScope::Advertiser(advertiser)));
            }
            GroupBy::Ad => wanted.extend(
                sd.by_ad
                    .keys()
                    .filter(|a| **a != UNATTRIBUTED_AD)
                    .map(|a| (*d, UvScope::Ad(*a))),
            ),
            GroupBy::Campaign => wanted.extend(
                sd.by_ad
                    .keys()
                    .filter_map(|a| campaigns.get(a))
                    .map(|c| (*d, UvScope::Campaign(*c))),
            ),
        }
    }
    let wanted: Vec<_> = wanted.into_iter().collect();
    Ok(speed.uv(&wanted).await?)
}

fn speed_rows(
    day: NaiveDate,
    sd: &SpeedDay,
    group_by: GroupBy,
    campaigns: &BTreeMap<i64, i64>,
    uv: &std::collections::HashMap<(NaiveDate, UvScope), i64>,
    advertiser: i64,
    past: bool,
) -> Vec<MetricsRow> {
    let row = |ad_id, campaign_id, c: &Counters, uv: Option<i64>| MetricsRow {
        day,
        ad_id,
        campaign_id,
        source: "speed",
        provisional: true,
        status: "provisional",
        awaiting_batch: past,
        as_of: sd.as_of.map(rfc3339_ms),
        computed_at: None,
        metrics: metrics_map(c, uv),
        derived: Derived::of(c),
    };
    match group_by {
        GroupBy::Day => {
            let mut sum = Counters::ZERO;
            for c in sd.by_ad.values() {
                sum += c;
            }
            vec![row(
                None,
                None,
                &sum,
                Some(
                    uv.get(&(day, UvScope::Advertiser(advertiser)))
                        .copied()
                        .unwrap_or(0),
                ),
            )]
        }
        GroupBy::Ad => sd
            .by_ad
            .iter()
            .map(|(ad, c)| {
                let campaign = if *ad == UNATTRIBUTED_AD {
                    0
                } else {
                    campaigns.get(ad).copied().unwrap_or(0)
                };
                row(
                    Some(*ad),
                    Some(campaign),
                    c,
                    Some(uv.get(&(day, UvScope::Ad(*ad))).copied().unwrap_or(0)),
                )
            })
            .collect(),
        GroupBy::Campaign => {
            let mut by_c: BTreeMap<i64, Counters> = BTreeMap::new();
            for (ad, c) in &sd.by_ad {
                let campaign = if *ad == UNATTRIBUTED_AD {
                    0
                } else {
                    campaigns.get(ad).copied().unwrap_or(0)
                };
                *by_c.entry(campaign).or_default() += c;
            }
            by_c.iter()
                .map(|(camp, c)| {
                    row(
                        None,
                        Some(*camp),
                        c,
                        Some(
                            uv.get(&(day, UvScope::Campaign(*camp)))
                                .copied()
                                .unwrap_or(0),
                        ),
                    )
                })
                .collect()
        }
    }
}

fn batch_rows(day: NaiveDate, b: &BatchDay, group_by: GroupBy) -> Vec<MetricsRow> {
    let row = |ad_id, campaign_id, c: &Counters, uv: i64| MetricsRow {
        day,
        ad_id,
        campaign_id,
        source: "batch",
        provisional: false,
        status: b.finality.as_str(),
        awaiting_batch: false,
        as_of: None,
        computed_at: Some(rfc3339_ms(b.computed_at)),
        metrics: metrics_map(c, Some(uv)),
        derived: Derived::of(c),
    };
    match group_by {
        GroupBy::Day => {
            let mut sum = Counters::ZERO;
            for a in b.by_ad.values() {
                sum += &a.counters;
            }
            vec![row(None, None, &sum, b.uv.get(&0).copied().unwrap_or(0))]
        }
        GroupBy::Ad => b
            .by_ad
            .iter()
            .map(|(ad, a)| row(Some(*ad), Some(a.campaign_id), &a.counters, a.uv))
            .collect(),
        GroupBy::Campaign => {
            let mut by_c: BTreeMap<i64, Counters> = BTreeMap::new();
            for a in b.by_ad.values() {
                *by_c.entry(a.campaign_id).or_default() += &a.counters;
            }
            by_c.iter()
                .map(|(camp, c)| row(None, Some(*camp), c, b.uv.get(camp).copied().unwrap_or(0)))
                .collect()
        }
    }
}

/// Day number helper kept for callers that key by day number.
pub fn day_key(d: NaiveDate) -> i32 {
    day_num(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: &str, to: &str, g: Option<&str>) -> MetricsQuery {
        MetricsQuery {
            from: Some(from.into()),
            to: Some(to.into()),
            group_by: g.map(Into::into),
        }
    }

    fn param_of(e: ApiError) -> &'static str {
        match e {
            ApiError::BadParameter { parameter, .. } => parameter,
            other => panic!("expected a bad parameter, got {other:?}"),
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(
            param_of(
                q("2026-13-01", "2026-11-02", None)
                    .validate(31)
                    .unwrap_err()
            ),
            "from"
        );
        assert_eq!(
            param_of(q("2026-11-01", "yesterday", None).validate(31).unwrap_err()),
            "to"
        );
        assert_eq!(
            param_of(
                q("2026-11-05", "2026-11-02", None)
                    .validate(31)
                    .unwrap_err()
            ),
            "from"
        );
        assert_eq!(
            param_of(
                q("2026-01-01", "2026-11-02", None)
                    .validate(31)
                    .unwrap_err()
            ),
            "to"
        );
        assert_eq!(
            param_of(
                q("2026-11-01", "2026-11-02", Some("week"))
                    .validate(31)
                    .unwrap_err()
            ),
            "group_by"
        );
        let missing = MetricsQuery {
            from: None,
            to: Some("2026-11-02".into()),
            group_by: None,
        };
        assert_eq!(param_of(missing.validate(31).unwrap_err()), "from");
        let r = q("2026-11-01", "2026-11-02", Some("ad"))
            .validate(31)
            .unwrap();
        assert_eq!(r.group_by, GroupBy::Ad);
    }
}
