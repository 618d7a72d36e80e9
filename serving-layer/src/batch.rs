//! Reading the batch layer's final results from MySQL (`day_finality`,
//! `daily_ad_metrics`, `daily_uv`, `day_revisions`; schema in `deploy/sql/mysql.sql`).
//!
//! Finality is per advertiser-local day and time zone: an advertiser-day is final
//! exactly when its (day, the advertiser's `time_zone`) row of `day_finality` is
//! `final`. `batch_runs` (run status per day) is not read here.
//!
//! Two reads:
//!
//! - [`read_catalog`]: which (day, zone) pairs are final and in which version (the
//!   `computed_at` of the run that last wrote their rows, ms UTC). One row per day
//!   and zone with advertisers, so a small table; the read path polls it every half of
//!   `serving.batch_staleness`.
//! - [`load_days`]: the rows of some final days of one advertiser, read in one
//!   read-only consistent-snapshot transaction together with the days' versions and
//!   the latest revision of each day. The batch layer writes a zone-day's rows, its
//!   `day_finality` row and its `day_revisions` rows in one transaction, so the rows
//!   and the revision returned are exactly those of the version returned with them.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use chrono_tz::Tz;
use common::counters::{Counters, Measure, N_MEASURES};
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts};

use crate::error::ApiError;
use crate::merge::{BatchAd, BatchDay, Revision};

/// A final zone-day's version: `day_finality.computed_at`, ms UTC (a new run of the
/// zone-day has a later one; 0 if the batch layer left it null).
pub type Version = i64;

/// The final (day, time zone) pairs, each with its [`Version`].
pub type Catalog = HashMap<(NaiveDate, Tz), Version>;

const FINAL_ZONE_DAYS: &str = "SELECT day, time_zone, CAST(UNIX_TIMESTAMP(computed_at) * 1000 AS SIGNED) \
     FROM day_finality WHERE status = 'final'";

/// Every final (day, time zone) with its version. A zone chrono-tz does not know is
/// left out: no advertiser the API serves has it (the read path refuses such an
/// advertiser).
///
/// # Errors
///
/// MySQL errors.
pub async fn read_catalog(pool: &Pool) -> Result<Catalog, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let rows: Vec<(NaiveDate, String, Option<i64>)> = conn.query(FINAL_ZONE_DAYS).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(d, zone, at)| {
            let tz = common::day::parse_tz(&zone).ok()?;
            Some(((d, tz), at.unwrap_or(0)))
        })
        .collect())
}

/// The latest revision of each revised day of one advertiser in a range, with the
/// number of revisions of the day. Columns: day, revisions, revised_at (ms UTC),
/// previous_totals (JSON). Parameters: advertiser, from, to, advertiser.
const LATEST_REVISIONS: &str = "SELECT r.day, n.revisions, \
     CAST(UNIX_TIMESTAMP(r.revised_at) * 1000 AS SIGNED), r.previous_totals \
     FROM day_revisions r JOIN (\
       SELECT day, MAX(revision) AS latest, COUNT(*) AS revisions FROM day_revisions \
       WHERE advertiser_id = ? AND day BETWEEN ? AND ? GROUP BY day\
     ) n ON n.day = r.day AND n.latest = r.revision \
     WHERE r.advertiser_id = ?";

/// A row of [`LATEST_REVISIONS`]: day, revisions, revised_at, previous_totals.
type RevisionRow = (NaiveDate, i64, Option<i64>, Option<Vec<u8>>);

/// The rows of `advertiser` (whose reporting zone is `tz`) on those of `days` that are
/// final in `tz`, each with the version it was read at and its latest revision. A day
/// of `days` that is not final (any more) is absent.
///
/// # Errors
///
/// 503 ([`ApiError::Unavailable`]) on MySQL errors; 500 ([`ApiError::Internal`]) when a
/// revision's `previous_totals` is not a JSON object of integers.
pub async fn load_days(
    pool: &Pool,
    advertiser: i64,
    tz: Tz,
    days: &[NaiveDate],
) -> Result<BTreeMap<NaiveDate, BatchDay>, ApiError> {
    let (Some(from), Some(to)) = (days.iter().min().copied(), days.iter().max().copied()) else {
        return Ok(BTreeMap::new());
    };
    let mut conn = pool.get_conn().await?;
    let mut opts = TxOpts::default();
    opts.with_consistent_snapshot(true).with_readonly(true);
    let mut tx = conn.start_transaction(opts).await?;
    let finals: Vec<(NaiveDate, Option<i64>)> = tx
        .exec(
            "SELECT day, CAST(UNIX_TIMESTAMP(computed_at) * 1000 AS SIGNED) FROM day_finality \
             WHERE status = 'final' AND time_zone = ? AND day BETWEEN ? AND ?",
            (tz.name(), from, to),
        )
        .await?;
    let mut out: BTreeMap<NaiveDate, BatchDay> = finals
        .into_iter()
        .filter(|(d, _)| days.contains(d))
        .map(|(d, at)| {
            (
                d,
                BatchDay {
                    computed_at: at.unwrap_or(0),
                    revision: None,
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
    let revisions: Vec<RevisionRow> = tx
        .exec(LATEST_REVISIONS, (advertiser, from, to, advertiser))
        .await?;
    tx.commit().await?;
    for (day, n, revised_at, previous) in revisions {
        let Some(d) = out.get_mut(&day) else { continue };
        d.revision = Some(Revision {
            revisions: u32::try_from(n).unwrap_or(u32::MAX),
            revised_at: revised_at.unwrap_or(0),
            previous: parse_totals(previous.as_deref().unwrap_or(b"{}")).map_err(|e| {
                ApiError::Internal(format!(
                    "day_revisions of advertiser {advertiser} on {day}: previous_totals: {e}"
                ))
            })?,
        });
    }
    Ok(out)
}

/// Parses a stored totals object (`{"clicks": 3, ..., "uv": 5}`).
fn parse_totals(json: &[u8]) -> Result<BTreeMap<String, i64>, serde_json::Error> {
    serde_json::from_slice(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_totals_parse_as_measure_names_to_integers() {
        let t = parse_totals(br#"{"clicks": 3, "cost_micros": 1200, "uv": 2}"#).unwrap();
        assert_eq!(t["clicks"], 3);
        assert_eq!(t["uv"], 2);
        assert_eq!(t.len(), 3);
        assert!(parse_totals(br#"{"clicks": "3"}"#).is_err());
        assert!(parse_totals(b"[1]").is_err());
    }
}
