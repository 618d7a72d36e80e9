//! The dashboard's live views: today's 10-second series (`/realtime`) and how fresh
//! an advertiser's numbers are (`/freshness`).
//!
//! Both read the speed layer's Redis hashes ([`platform::speed_results`]) and, for freshness, the
//! batch layer's `batch_runs` and the advertiser's `final_through` (MySQL).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::NaiveDate;
use common::counters::{Counters, Derived, Measure};
use common::day::{clip, day_bounds_ms, now_ms, rfc3339_ms, today};
use mysql_async::prelude::Queryable;
use serde::Serialize;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::params::{AdvertiserSegment, query};
use crate::state::AppState;

/// Width of one point of the series, ms: the speed layer's tumbling window (the design
/// brief: 10-second windows).
pub const WINDOW_MS: i64 = 10_000;

/// Most minutes one `/realtime` request may ask for (a whole day).
pub const MAX_MINUTES: i64 = 1_440;

/// One 10-second window of the series.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Window start, ms UTC.
    pub t: i64,
    /// Window start, RFC 3339.
    pub at: String,
    /// The window's non-zero series measures (money in micros).
    pub metrics: BTreeMap<&'static str, i64>,
}

/// The answer of `/realtime`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RealtimeAnswer {
    /// The advertiser.
    pub advertiser_id: i64,
    /// Today in the advertiser's zone (the series never reaches into yesterday).
    pub day: NaiveDate,
    /// Width of a point, ms (10 000).
    pub window_ms: i64,
    /// First window start covered, ms UTC.
    pub from_ms: i64,
    /// Windows with data, oldest first; windows without events are left out.
    pub points: Vec<Point>,
    /// Sums over the points, with their ratios.
    pub totals: BTreeMap<&'static str, i64>,
    /// CTR, CPC, ... over the points.
    pub derived: Derived,
    /// Always true: the series comes from the speed layer.
    pub provisional: bool,
    /// Last speed-layer write for today (RFC 3339), if any.
    pub as_of: Option<String>,
}

/// `GET /v1/advertisers/{id}/realtime?minutes=N` (default 60, 1..=1440).
///
/// # Errors
///
/// 400 naming `minutes`; 401/404/429 as every `/v1` route; 503 when Redis fails.
pub async fn realtime(
    State(s): State<AppState>,
    Auth(key): Auth,
    AdvertiserSegment(id): AdvertiserSegment,
    RawQuery(q): RawQuery,
) -> Result<Json<RealtimeAnswer>, ApiError> {
    let [minutes] = query(q.as_deref(), ["minutes"])?;
    let minutes = match minutes.as_deref() {
        None => 60,
        Some(m) => m
            .parse::<i64>()
            .ok()
            .filter(|m| (1..=MAX_MINUTES).contains(m))
            .ok_or_else(|| {
                ApiError::bad(
                    "minutes",
                    format!(
                        "`{}` is not a whole number of minutes from 1 to {MAX_MINUTES}",
                        clip(m, 24)
                    ),
                )
            })?,
    };
    let adv = s.advertiser_of_key(&key, &id).await?;
    let (id, tz) = (adv.id, adv.tz);
    let now = now_ms();
    let day = today(now, tz);
    let (day_start, _) = day_bounds_ms(day, tz);
    let from_ms = (now - minutes * 60_000)
        .max(day_start)
        .div_euclid(WINDOW_MS)
        * WINDOW_MS;
    let series = s.speed.series(id, &[day]).await?;
    let as_of = s.speed.last_write(id, &[day]).await?;
    let mut sum = Counters::ZERO;
    let points = series
        .range(from_ms..)
        .map(|(t, c)| {
            sum += c;
            Point {
                t: *t,
                at: rfc3339_ms(*t),
                metrics: c.non_zero().map(|(m, v)| (m.name(), v)).collect(),
            }
        })
        .collect();
    Ok(Json(RealtimeAnswer {
        advertiser_id: id,
        day,
        window_ms: WINDOW_MS,
        from_ms,
        points,
        totals: Measure::ALL.iter().map(|m| (m.name(), sum[*m])).collect(),
        derived: Derived::of(&sum),
        provisional: true,
        as_of: as_of.map(rfc3339_ms),
    }))
}

/// The speed half of `/freshness`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpeedFreshness {
    /// Last write of this advertiser's numbers today or yesterday (RFC 3339).
    pub last_write: Option<String>,
    /// Seconds since that write.
    pub lag_seconds: Option<f64>,
}

/// The batch half of `/freshness`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BatchFreshness {
    /// Latest day final for this advertiser.
    pub final_through: Option<NaiveDate>,
    /// Days between `final_through` and yesterday (0 = yesterday is final).
    pub days_behind: Option<i64>,
    /// The most recent batch run: its day, status (`running`, `succeeded`, `failed`)
    /// and finish time.
    pub last_run: Option<LastRun>,
}

/// A batch run as `batch_runs` records it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LastRun {
    /// The day it computed.
    pub day: NaiveDate,
    /// `running`, `succeeded` or `failed`.
    pub status: String,
    /// `none`, `final` or `revised`.
    pub finality: String,
    /// When it finished (RFC 3339); null while running.
    pub finished_at: Option<String>,
}

/// The answer of `/freshness`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FreshnessAnswer {
    /// The advertiser.
    pub advertiser_id: i64,
    /// Server time (RFC 3339).
    pub now: String,
    /// Today in the advertiser's zone.
    pub today: NaiveDate,
    /// Provisional numbers.
    pub speed: SpeedFreshness,
    /// Final numbers.
    pub batch: BatchFreshness,
}

/// `GET /v1/advertisers/{id}/freshness`.
///
/// # Errors
///
/// 401/404/429 as every `/v1` route; 503 when Redis or MySQL fail.
pub async fn freshness(
    State(s): State<AppState>,
    Auth(key): Auth,
    AdvertiserSegment(id): AdvertiserSegment,
) -> Result<Json<FreshnessAnswer>, ApiError> {
    let adv = s.advertiser_of_key(&key, &id).await?;
    let (id, tz, final_through) = (adv.id, adv.tz, adv.final_through);
    let now = now_ms();
    let day = today(now, tz);
    let yesterday = day.pred_opt().unwrap_or(day);
    let last_write = s.speed.last_write(id, &[yesterday, day]).await?;
    let mut conn = s.pool.get_conn().await?;
    let run: Option<(NaiveDate, String, String, Option<i64>)> = conn
        .query_first(
            "SELECT day, run_status, finality, \
             CAST(UNIX_TIMESTAMP(finished_at) * 1000 AS SIGNED) FROM batch_runs \
             ORDER BY COALESCE(finished_at, started_at) DESC, day DESC LIMIT 1",
        )
        .await?;
    #[allow(clippy::cast_precision_loss)]
    let lag_seconds = last_write.map(|w| (now - w).max(0) as f64 / 1_000.0);
    Ok(Json(FreshnessAnswer {
        advertiser_id: id,
        now: rfc3339_ms(now),
        today: day,
        speed: SpeedFreshness {
            last_write: last_write.map(rfc3339_ms),
            lag_seconds,
        },
        batch: BatchFreshness {
            final_through,
            days_behind: final_through.map(|f| (yesterday - f).num_days().max(0)),
            last_run: run.map(|(day, status, finality, at)| LastRun {
                day,
                status,
                finality,
                finished_at: at.map(rfc3339_ms),
            }),
        },
    }))
}
