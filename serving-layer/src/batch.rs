//! Reading the batch layer's final results from MySQL (`batch_runs`,
//! `daily_ad_metrics`, `daily_uv`; schema in `deploy/sql/mysql.sql`).
//!
//! Two reads:
//!
//! - [`read_catalog`]: which days are final and in which version (the run's
//!   `finished_at`, ms UTC). `batch_runs` holds one row per day, so this is a small
//!   table; the read path polls it every `serving.batch_check_interval`.
//! - [`load_days`]: the rows of some final days of one advertiser, read in one
//!   read-only transaction together with the days' versions. The batch layer writes a
//!   day's rows and its `batch_runs` record in one transaction, so the rows returned
//!   are exactly those of the version returned with them.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use common::counters::{Counters, Measure, N_MEASURES};
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts};

use crate::merge::{BatchAd, BatchDay, Finality};

/// A final day's version: its finality and the finish time of the run that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DayVersion {
    /// Final or revised.
    pub finality: Finality,
    /// When that run finished, ms UTC (a new run of the day has a later one).
    pub finished_at: i64,
}

fn finality_of(s: &str) -> Finality {
    if s == "revised" {
        Finality::Revised
    } else {
        Finality::Final
    }
}

const FINAL_RUNS: &str = "SELECT day, finality, CAST(UNIX_TIMESTAMP(finished_at) * 1000 AS SIGNED) \
     FROM batch_runs WHERE finality IN ('final', 'revised')";

/// Every final or revised day with its version.
///
/// # Errors
///
/// MySQL errors.
pub async fn read_catalog(
    pool: &Pool,
) -> Result<HashMap<NaiveDate, DayVersion>, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let runs: Vec<(NaiveDate, String, Option<i64>)> = conn.query(FINAL_RUNS).await?;
    Ok(runs
        .into_iter()
        .map(|(d, f, at)| {
            (
                d,
                DayVersion {
                    finality: finality_of(&f),
                    finished_at: at.unwrap_or(0),
                },
            )
        })
        .collect())
}

/// The rows of `advertiser` on those of `days` that are final, each with the version
/// it was read at. A day of `days` that is not final (any more) is absent.
///
/// # Errors
///
/// MySQL errors.
pub async fn load_days(
    pool: &Pool,
    advertiser: i64,
    days: &[NaiveDate],
) -> Result<BTreeMap<NaiveDate, BatchDay>, mysql_async::Error> {
    let (Some(from), Some(to)) = (days.iter().min().copied(), days.iter().max().copied()) else {
        return Ok(BTreeMap::new());
    };
    let mut conn = pool.get_conn().await?;
    let mut opts = TxOpts::default();
    opts.with_consistent_snapshot(true).with_readonly(true);
    let mut tx = conn.start_transaction(opts).await?;
    let runs: Vec<(NaiveDate, String, Option<i64>)> = tx
        .exec(format!("{FINAL_RUNS} AND day BETWEEN ? AND ?"), (from, to))
        .await?;
    let mut out: BTreeMap<NaiveDate, BatchDay> = runs
        .into_iter()
        .filter(|(d, _, _)| days.contains(d))
        .map(|(d, f, at)| {
            (
                d,
                BatchDay {
                    finality: finality_of(&f),
                    computed_at: at.unwrap_or(0),
                    by_ad: BTreeMap::new(),
                    uv: BTreeMap::new(),
                },
            )
        })
        .collect();
    if out.is_empty() {
        tx.commit().await?;
        return Ok(out);
    }
    let cols: Vec<&str> = Measure::ALL.iter().map(|m| m.name()).collect();
    let sql = format!(
        "SELECT day, ad_id, campaign_id, uv, {} FROM daily_ad_metrics WHERE advertiser_id = ? AND day BETWEEN ? AND ?",
        cols.join(", ")
    );
    let rows: Vec<mysql_async::Row> = tx.exec(sql, (advertiser, from, to)).await?;
    for row in rows {
        let day: NaiveDate = row.get(0).unwrap_or_default();
        let Some(d) = out.get_mut(&day) else { continue };
        let mut c = Counters::ZERO;
        for i in 0..N_MEASURES {
            c.0[i] = row.get(4 + i).unwrap_or_default();
        }
        let ad: i64 = row.get(1).unwrap_or_default();
        d.by_ad.insert(
            ad,
            BatchAd {
                campaign_id: row.get(2).unwrap_or_default(),
                counters: c,
                uv: row.get(3).unwrap_or_default(),
            },
        );
    }
    let uvs: Vec<(NaiveDate, i64, i64)> = tx
        .exec(
            "SELECT day, campaign_id, uv FROM daily_uv WHERE advertiser_id = ? AND day BETWEEN ? AND ?",
            (advertiser, from, to),
        )
        .await?;
    for (day, campaign, uv) in uvs {
        if let Some(d) = out.get_mut(&day) {
            d.uv.insert(campaign, uv);
        }
    }
    tx.commit().await?;
    Ok(out)
}
