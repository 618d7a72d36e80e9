//! `GET /v1/advertisers/{id}/reconciliation?from=YYYY-MM-DD&to=YYYY-MM-DD`: the speed
//! layer's provisional numbers against the final batch numbers of each advertiser-day,
//! as the batch layer recorded them when the day turned final or was revised
//! (`reconciliation`, one row per day, advertiser and measure; schema in
//! `deploy/sql/mysql.sql`).
//!
//! Internal keys only: an advertiser key gets the 404 of an unknown or foreign
//! advertiser ([`ApiError::NotFound`]), whatever the path says. Parameters are those of
//! the metrics route ([`DayRange`]: same formats and `serving.max_range_days`) and are
//! checked first, so a 400 says nothing about the advertiser.
//!
//! A day is `ok` when every count and sum agrees exactly (`diff` 0: both layers are
//! exact for them) and the speed layer's HyperLogLog UV is within
//! [`UV_RELATIVE_ERROR_BOUND`] of the exact batch UV. [`answer`] is pure; the handler
//! reads the rows with one bound-parameter query.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::NaiveDate;
use common::day::rfc3339_ms;
use mysql_async::prelude::Queryable;
use serde::Serialize;

use crate::auth::{Auth, Principal};
use crate::error::ApiError;
use crate::params::{AdvertiserSegment, DayRange};
use crate::state::AppState;

pub use platform::speed_results::UV_TOLERANCE as UV_RELATIVE_ERROR_BOUND;

/// The measure name of distinct users in `reconciliation.measure`.
pub const UV_MEASURE: &str = "uv";

/// One `reconciliation` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// The advertiser-local day.
    pub day: NaiveDate,
    /// A [`common::counters::Measure`] name, or [`UV_MEASURE`].
    pub measure: String,
    /// The speed layer's number when checked.
    pub speed: i64,
    /// The final (batch) number.
    pub batch: i64,
    /// `speed - batch`, as stored.
    pub diff: i64,
    /// When it was checked, ms UTC.
    pub checked_at: i64,
}

/// Speed and batch of one count or sum (money in micros).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct MeasureDiff {
    /// The speed layer's number.
    pub speed: i64,
    /// The batch number.
    pub batch: i64,
    /// `speed - batch` (0 when they agree).
    pub diff: i64,
}

/// Speed (HyperLogLog) and batch (exact) distinct users of the advertiser-day.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct UvDiff {
    /// The speed layer's estimate.
    pub speed: i64,
    /// The exact count.
    pub batch: i64,
    /// `(speed - batch) / batch`; 0 when both are 0; null when only `batch` is 0
    /// (undefined; such a day is not `ok`).
    pub relative_error: Option<f64>,
}

/// One reconciled advertiser-day.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReconciliationDay {
    /// The advertiser-local day.
    pub day: NaiveDate,
    /// Latest check of the day's rows (RFC 3339, ms, UTC).
    pub checked_at: String,
    /// Every count and sum has `diff` 0 and |`uv.relative_error`| is at most
    /// [`UV_RELATIVE_ERROR_BOUND`] (no `uv` row: counts and sums only).
    pub ok: bool,
    /// Distinct users; null when the day has no `uv` row.
    pub uv: Option<UvDiff>,
    /// Every other recorded measure, by name.
    pub measures: BTreeMap<String, MeasureDiff>,
}

/// The answer of the reconciliation route.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReconciliationAnswer {
    /// The advertiser.
    pub advertiser_id: i64,
    /// First day asked for.
    pub from: NaiveDate,
    /// Last day asked for, inclusive.
    pub to: NaiveDate,
    /// The days of the range that have reconciliation rows, in order; days without
    /// rows (not final yet, or never checked) are absent.
    pub days: Vec<ReconciliationDay>,
    /// How many of `days` are not `ok`.
    pub days_with_difference: usize,
}

/// `(speed - batch) / batch`, 0 when both are 0, `None` when only `batch` is 0.
pub fn relative_error(speed: i64, batch: i64) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)] // user counts are far below 2^52
    match (speed, batch) {
        (0, 0) => Some(0.0),
        (_, 0) => None,
        (s, b) => Some((s - b) as f64 / b as f64),
    }
}

/// Groups `rows` (any order) into the answer for `advertiser_id` over `from..=to`.
pub fn answer(
    advertiser_id: i64,
    from: NaiveDate,
    to: NaiveDate,
    rows: Vec<StoredRow>,
) -> ReconciliationAnswer {
    /// One day's rows so far.
    #[derive(Default)]
    struct Acc {
        checked_at: Option<i64>,
        uv: Option<UvDiff>,
        measures: BTreeMap<String, MeasureDiff>,
    }
    let mut by_day: BTreeMap<NaiveDate, Acc> = BTreeMap::new();
    for r in rows {
        let acc = by_day.entry(r.day).or_default();
        acc.checked_at = acc.checked_at.max(Some(r.checked_at));
        if r.measure == UV_MEASURE {
            acc.uv = Some(UvDiff {
                speed: r.speed,
                batch: r.batch,
                relative_error: relative_error(r.speed, r.batch),
            });
        } else {
            acc.measures.insert(
                r.measure,
                MeasureDiff {
                    speed: r.speed,
                    batch: r.batch,
                    diff: r.diff,
                },
            );
        }
    }
    let days: Vec<ReconciliationDay> = by_day
        .into_iter()
        .map(|(day, acc)| {
            let uv_ok = acc.uv.is_none_or(|u| {
                u.relative_error
                    .is_some_and(|e| e.abs() <= UV_RELATIVE_ERROR_BOUND)
            });
            ReconciliationDay {
                day,
                checked_at: rfc3339_ms(acc.checked_at.unwrap_or(0)),
                ok: uv_ok && acc.measures.values().all(|m| m.diff == 0),
                uv: acc.uv,
                measures: acc.measures,
            }
        })
        .collect();
    ReconciliationAnswer {
        advertiser_id,
        from,
        to,
        days_with_difference: days.iter().filter(|d| !d.ok).count(),
        days,
    }
}

/// `GET /v1/advertisers/{id}/reconciliation?from&to` ([`ReconciliationAnswer`]).
///
/// # Errors
///
/// 400 naming `from` or `to`; 404 for an advertiser key (any id) and for an unknown
/// advertiser; 401/429 as every `/v1` route; 503 when MySQL fails.
pub async fn reconciliation(
    State(s): State<AppState>,
    Auth(key): Auth,
    AdvertiserSegment(id): AdvertiserSegment,
    RawQuery(q): RawQuery,
) -> Result<Json<ReconciliationAnswer>, ApiError> {
    let range = DayRange::parse(q.as_deref(), s.cfg.max_range_days)?;
    if key.principal != Principal::Internal {
        return Err(ApiError::NotFound);
    }
    let adv = s.advertiser_of_key(&key, &id).await?;
    let mut conn = s.pool.get_conn().await?;
    let rows: Vec<(NaiveDate, String, i64, i64, i64, Option<i64>)> = conn
        .exec(
            "SELECT day, measure, speed, batch, diff, \
             CAST(UNIX_TIMESTAMP(checked_at) * 1000 AS SIGNED) FROM reconciliation \
             WHERE advertiser_id = ? AND day BETWEEN ? AND ?",
            (adv.id, range.from, range.to),
        )
        .await?;
    let rows = rows
        .into_iter()
        .map(|(day, measure, speed, batch, diff, at)| StoredRow {
            day,
            measure,
            speed,
            batch,
            diff,
            checked_at: at.unwrap_or(0),
        })
        .collect();
    Ok(Json(answer(adv.id, range.from, range.to, rows)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, day).unwrap()
    }

    fn row(day: u32, measure: &str, speed: i64, batch: i64, checked_at: i64) -> StoredRow {
        StoredRow {
            day: d(day),
            measure: measure.to_owned(),
            speed,
            batch,
            diff: speed - batch,
            checked_at,
        }
    }

    #[test]
    fn relative_errors_are_defined_for_empty_days() {
        assert_eq!(relative_error(0, 0), Some(0.0));
        assert_eq!(relative_error(3, 0), None);
        assert_eq!(relative_error(102, 100), Some(0.02));
        assert_eq!(relative_error(97, 100), Some(-0.03));
    }

    #[test]
    fn days_are_ok_when_counts_agree_and_uv_is_close() {
        let a = answer(
            7,
            d(1),
            d(5),
            vec![
                // Day 2: UV 2 % off (the bound itself), counts exact.
                row(2, "clicks", 10, 10, 1_000),
                row(2, "uv", 102, 100, 2_000),
                row(2, "cost_micros", 500, 500, 1_000),
                // Day 1: a click lost somewhere.
                row(1, "clicks", 9, 10, 5_000),
                row(1, "uv", 100, 100, 5_000),
                // Day 3: counts exact, UV 3 % off.
                row(3, "clicks", 4, 4, 0),
                row(3, "uv", 97, 100, 0),
                // Day 4: speed saw users batch did not.
                row(4, "uv", 1, 0, 0),
                // Day 5: no uv row, counts exact.
                row(5, "orders_direct", 1, 1, 0),
            ],
        );
        let ok: Vec<_> = a.days.iter().map(|x| (x.day, x.ok)).collect();
        assert_eq!(
            ok,
            [
                (d(1), false),
                (d(2), true),
                (d(3), false),
                (d(4), false),
                (d(5), true)
            ]
        );
        assert_eq!(a.days_with_difference, 3);
        let day2 = &a.days[1];
        assert_eq!(day2.checked_at, rfc3339_ms(2_000));
        assert_eq!(day2.measures.len(), 2, "uv is not among the measures");
        assert_eq!(
            day2.measures["clicks"],
            MeasureDiff {
                speed: 10,
                batch: 10,
                diff: 0
            }
        );
        assert_eq!(a.days[0].measures["clicks"].diff, -1);
        assert_eq!(a.days[3].uv.unwrap().relative_error, None);
        assert!(a.days[4].uv.is_none());
    }

    #[test]
    fn the_answer_serializes_in_the_documented_shape() {
        let a = answer(
            7,
            d(1),
            d(2),
            vec![
                row(1, "clicks", 3, 3, 1_764_000_000_000),
                row(1, "uv", 0, 0, 0),
            ],
        );
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "advertiser_id": 7,
                "from": "2026-11-01",
                "to": "2026-11-02",
                "days": [{
                    "day": "2026-11-01",
                    "checked_at": "2025-11-24T16:00:00.000Z",
                    "ok": true,
                    "uv": {"speed": 0, "batch": 0, "relative_error": 0.0},
                    "measures": {"clicks": {"speed": 3, "batch": 3, "diff": 0}},
                }],
                "days_with_difference": 0,
            })
        );
    }
}
