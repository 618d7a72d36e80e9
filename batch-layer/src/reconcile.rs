//! Reconciliation: when an advertiser-day turns final (or is revised), the speed
//! layer's provisional numbers (Redis) are compared with the final ones (MySQL), per
//! measure, and the difference is kept in the `reconciliation` table:
//!
//! | measure | expected difference |
//! |---|---|
//! | every count and sum (`exposures`, `clicks`, `cost_micros`, the effects) | 0: both paths apply the same rules to the same events exactly once |
//! | `uv` | within [`UV_TOLERANCE`]: the speed layer counts distinct users with HyperLogLog (0.81 % standard error), the batch exactly |
//!
//! A count or sum that differs is lost or doubled data on one path (a dropped write, a
//! replay counted twice, a bug): it is visible the morning it happens, as rows with
//! `diff <> 0`, as the Prometheus gauges [`RECONCILIATION_DIFF`] and
//! [`RECONCILIATION_DAYS_WITH_DIFFERENCE`], and on the serving layer's internal
//! `GET /v1/advertisers/{id}/reconciliation`.
//!
//! The speed layer must have consumed everything the batch read: while it lags (its
//! offsets stored in Redis behind the topics' end offsets) a comparison would report
//! its backlog as lost data, so reconciliation is postponed, and the scheduler
//! reconciles each final day that has none yet on its next ticks ([`pending_days`]).
//! Reconciliation never blocks finality: when Redis does not answer, the day turns
//! final anyway, the failure is logged, and `batch-layer reconcile` re-checks it.
//!
//! Events the speed layer refuses by age (`validation.max_age`, 7 d) but the archive
//! keeps are counted by the batch only: a replay of data older than that shows here as
//! a positive batch-minus-speed difference, by design.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use chrono::NaiveDate;
use common::config::Config;
use common::counters::UvScope;
use common::counters::{Counters, Measure};
use common::redis_keys::Keys;
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, Value};
use platform::speed_results::SpeedReader;

use crate::totals::{self, IN_CHUNK, Totals, placeholders};

pub use platform::speed_results::UV_TOLERANCE;

/// Gauge: the sum of |speed - batch| over the advertiser-days checked in the last
/// [`HORIZON_DAYS`](crate::schedule::HORIZON_DAYS) days, per measure (label `measure`; `uv` included). 0 for every
/// count and sum when the two paths agree.
pub const RECONCILIATION_DIFF: &str = "admetrics_reconciliation_diff";

/// Gauge: advertiser-days of the last [`HORIZON_DAYS`](crate::schedule::HORIZON_DAYS) days with a difference in a
/// count or a sum (UV excluded). Alert when above 0.
pub const RECONCILIATION_DAYS_WITH_DIFFERENCE: &str =
    "admetrics_reconciliation_days_with_difference";

/// What reconciling one day found.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DayReconciliation {
    /// The day.
    pub day: NaiveDate,
    /// Advertisers with numbers on either path.
    pub advertisers: usize,
    /// Advertisers with a difference in a count or a sum, with the measures.
    pub differences: BTreeMap<i64, Vec<String>>,
    /// Largest |speed - batch| / batch of UV over the advertisers (0 when batch is 0).
    pub max_uv_relative_error: f64,
}

impl std::fmt::Display for DayReconciliation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: reconciliation of {} advertiser(s): {} with a difference in a count or sum, UV within {:.2} %",
            self.day,
            self.advertisers,
            self.differences.len(),
            self.max_uv_relative_error * 100.0
        )?;
        for (adv, measures) in self.differences.iter().take(10) {
            write!(f, "; advertiser {adv}: {}", measures.join(", "))?;
        }
        Ok(())
    }
}

/// A reader of the speed layer's results of this deployment.
///
/// # Errors
///
/// When Redis does not answer.
pub async fn speed_reader(cfg: &Config) -> anyhow::Result<SpeedReader> {
    let conn = platform::redis_conn::RedisConn::connect(&cfg.redis)
        .await
        .context("connecting to Redis")?;
    Ok(SpeedReader::new(
        conn,
        Keys::new(&cfg.redis.key_prefix),
        cfg.kafka.partitions,
    ))
}

/// The speed layer's totals of `advertisers` on `day` (UV: the summed per-partition
/// HyperLogLog counts of the advertiser).
async fn speed_totals(
    speed: &SpeedReader,
    day: NaiveDate,
    advertisers: &[i64],
) -> redis::RedisResult<BTreeMap<i64, (Totals, bool)>> {
    let mut out = BTreeMap::new();
    for chunk in advertisers.chunks(IN_CHUNK) {
        let wanted: Vec<(NaiveDate, UvScope)> = chunk
            .iter()
            .map(|a| (day, UvScope::Advertiser(*a)))
            .collect();
        let uv: HashMap<(NaiveDate, UvScope), i64> = speed.uv(&wanted).await?;
        for adv in chunk {
            let days = speed.days(*adv, &[day]).await?;
            let sd = days.get(&day);
            let mut counters = Counters::ZERO;
            for c in sd.iter().flat_map(|d| d.by_ad.values()) {
                for m in Measure::ALL {
                    counters[m] += c[m];
                }
            }
            let t = Totals {
                counters,
                uv: uv
                    .get(&(day, UvScope::Advertiser(*adv)))
                    .copied()
                    .unwrap_or(0),
            };
            let written = sd.is_some_and(|d| d.as_of.is_some());
            out.insert(*adv, (t, written));
        }
    }
    Ok(out)
}

/// Compares speed and batch for `advertisers` on `day` and replaces their rows in
/// `reconciliation`. Advertisers with no number on either path are skipped.
///
/// # Errors
///
/// Redis or MySQL errors.
pub async fn reconcile_day(
    pool: &Pool,
    speed: &SpeedReader,
    day: NaiveDate,
    advertisers: &[i64],
) -> anyhow::Result<DayReconciliation> {
    let mut conn = pool.get_conn().await?;
    let batch = totals::read(&mut conn, day, advertisers).await?;
    let speed = speed_totals(speed, day, advertisers)
        .await
        .context("reading the speed layer's results")?;
    let mut found = DayReconciliation {
        day,
        ..DayReconciliation::default()
    };
    let mut rows: Vec<(i64, &'static str, i64, i64)> = Vec::new();
    let mut checked: Vec<i64> = Vec::new();
    for adv in advertisers {
        let b = batch.get(adv).copied();
        let (s, written) = speed.get(adv).copied().unwrap_or_default();
        if b.is_none() && !written && s == Totals::default() {
            continue;
        }
        let b = b.unwrap_or_default();
        checked.push(*adv);
        let mut differing = Vec::new();
        for m in Measure::ALL {
            rows.push((*adv, m.name(), s.counters[m], b.counters[m]));
            if s.counters[m] != b.counters[m] {
                differing.push(format!("{} {:+}", m.name(), s.counters[m] - b.counters[m]));
            }
        }
        rows.push((*adv, "uv", s.uv, b.uv));
        let rel = uv_relative_error(s.uv, b.uv);
        found.max_uv_relative_error = found.max_uv_relative_error.max(rel.abs());
        if !differing.is_empty() {
            found.differences.insert(*adv, differing);
        }
    }
    found.advertisers = checked.len();
    let mut tx = conn
        .start_transaction(mysql_async::TxOpts::default())
        .await?;
    for chunk in checked.chunks(IN_CHUNK) {
        let mut params: Vec<Value> = vec![day.into()];
        params.extend(chunk.iter().map(|a| Value::from(*a)));
        tx.exec_drop(
            format!(
                "DELETE FROM reconciliation WHERE day = ? AND advertiser_id IN {}",
                placeholders(chunk.len())
            ),
            params,
        )
        .await?;
    }
    for chunk in rows.chunks(500) {
        let sql = format!(
            "INSERT INTO reconciliation (day, advertiser_id, measure, speed, batch, diff, checked_at) VALUES {}",
            vec!["(?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP(3))"; chunk.len()].join(", ")
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|(adv, m, s, b)| {
                [
                    day.into(),
                    (*adv).into(),
                    (*m).into(),
                    (*s).into(),
                    (*b).into(),
                    (s - b).into(),
                ]
            })
            .collect();
        tx.exec_drop(sql, params).await?;
    }
    tx.commit().await?;
    Ok(found)
}

/// (speed - batch) / batch; 0 when both are 0, 1 when only batch is 0.
pub fn uv_relative_error(speed: i64, batch: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // counts of users
    match (speed, batch) {
        (0, 0) => 0.0,
        (_, 0) => 1.0,
        (s, b) => (s - b) as f64 / b as f64,
    }
}

/// The advertisers whose time zone is one of `zones` (IANA names).
///
/// # Errors
///
/// MySQL errors.
pub async fn advertisers_of_zones(
    pool: &Pool,
    zones: &[String],
) -> Result<Vec<i64>, platform::db::DbError> {
    let dims = platform::dims::load_all(pool).await?;
    let mut ids: Vec<i64> = dims
        .advertisers
        .values()
        .filter(|a| zones.iter().any(|z| z == a.tz.name()))
        .map(|a| a.advertiser_id)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Messages the speed layer has not consumed yet, over every partition of both topics
/// (the topics' end offsets minus the next offsets stored with its results in Redis).
///
/// # Errors
///
/// When Kafka or Redis do not answer.
pub async fn speed_lag(cfg: &Config) -> anyhow::Result<i64> {
    let ends = crate::finality::end_offsets(cfg, crate::recompute::Shard::WHOLE).await?;
    let mut conn = platform::redis_conn::RedisConn::connect(&cfg.redis)
        .await
        .context("connecting to Redis")?;
    let keys = Keys::new(&cfg.redis.key_prefix);
    let mut lag = 0;
    for (topic, partition, end) in ends {
        let Some(kind) = cfg.kafka.topic_kind(&topic) else {
            continue;
        };
        let next: Option<i64> = redis::cmd("HGET")
            .arg(keys.offsets(partition))
            .arg(kind.as_str())
            .query_async(&mut conn)
            .await?;
        lag += (end - next.unwrap_or(0)).max(0);
    }
    Ok(lag)
}

/// Reconciles the advertisers of `zones` on `day` after a run finalized them (or on a
/// later tick); logs what it found and never fails (module docs). `None` when it was
/// postponed or failed.
pub async fn after_final(
    cfg: &Config,
    pool: &Pool,
    day: NaiveDate,
    zones: &[String],
) -> Option<DayReconciliation> {
    match speed_lag(cfg).await {
        Ok(0) => {}
        Ok(lag) => {
            tracing::warn!(%day, lag, "the speed layer has not consumed everything yet; reconciliation postponed (the scheduler reconciles the day once it has)");
            return None;
        }
        Err(e) => {
            tracing::error!(%day, error = %format!("{e:#}"), "cannot tell whether the speed layer is caught up; reconciliation postponed");
            return None;
        }
    }
    let run = async {
        let advertisers = advertisers_of_zones(pool, zones).await?;
        let speed = speed_reader(cfg).await?;
        reconcile_day(pool, &speed, day, &advertisers).await
    };
    match run.await {
        Ok(r) if r.differences.is_empty() => {
            tracing::info!(%day, advertisers = r.advertisers, max_uv_relative_error = r.max_uv_relative_error, "reconciled: speed equals batch");
            Some(r)
        }
        Ok(r) => {
            tracing::warn!(%day, differences = %r, "reconciliation: speed and batch differ");
            Some(r)
        }
        Err(e) => {
            tracing::error!(%day, error = %format!("{e:#}"), "reconciliation failed; `batch-layer reconcile --day {day}` re-checks it");
            None
        }
    }
}

/// Final days from `from` on that have results but no reconciliation yet (it was
/// postponed or failed), with their final zones.
///
/// # Errors
///
/// MySQL errors.
pub async fn pending_days(
    pool: &Pool,
    from: NaiveDate,
) -> Result<BTreeMap<NaiveDate, Vec<String>>, mysql_async::Error> {
    let mut c = pool.get_conn().await?;
    let rows: Vec<(NaiveDate, String)> = c
        .exec(
            "SELECT f.day, f.time_zone FROM day_finality f WHERE f.day >= ? AND f.status = 'final' \
             AND EXISTS (SELECT 1 FROM daily_ad_metrics m WHERE m.day = f.day) \
             AND NOT EXISTS (SELECT 1 FROM reconciliation r WHERE r.day = f.day)",
            (from,),
        )
        .await?;
    let mut out: BTreeMap<NaiveDate, Vec<String>> = BTreeMap::new();
    for (d, z) in rows {
        out.entry(d).or_default().push(z);
    }
    Ok(out)
}

/// Sets the gauges [`RECONCILIATION_DIFF`] and [`RECONCILIATION_DAYS_WITH_DIFFERENCE`]
/// from the `reconciliation` rows of the last [`HORIZON_DAYS`](crate::schedule::HORIZON_DAYS) days before `now_ms`.
///
/// # Errors
///
/// MySQL errors.
pub async fn export_gauges(pool: &Pool, now_ms: i64) -> Result<(), mysql_async::Error> {
    let from = crate::schedule::horizon_start(now_ms);
    let mut c = pool.get_conn().await?;
    let per_measure: Vec<(String, i64)> = c
        .exec(
            "SELECT measure, CAST(SUM(ABS(diff)) AS SIGNED) FROM reconciliation WHERE day >= ? GROUP BY measure",
            (from,),
        )
        .await?;
    for m in Measure::ALL
        .iter()
        .map(|m| m.name())
        .chain(std::iter::once("uv"))
    {
        let v = per_measure
            .iter()
            .find(|(n, _)| n == m)
            .map_or(0, |(_, v)| *v);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(RECONCILIATION_DIFF, "measure" => m).set(v as f64);
    }
    let days: Option<i64> = c
        .exec_first(
            "SELECT COUNT(*) FROM (SELECT day, advertiser_id FROM reconciliation \
             WHERE day >= ? AND measure <> 'uv' AND diff <> 0 GROUP BY day, advertiser_id) d",
            (from,),
        )
        .await?;
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(RECONCILIATION_DAYS_WITH_DIFFERENCE).set(days.unwrap_or(0) as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uv_error_is_relative_to_the_exact_count() {
        assert!((uv_relative_error(102, 100) - 0.02).abs() < 1e-12);
        assert!((uv_relative_error(98, 100) + 0.02).abs() < 1e-12);
        assert_eq!(uv_relative_error(0, 0), 0.0);
        assert_eq!(uv_relative_error(5, 0), 1.0);
    }
}
