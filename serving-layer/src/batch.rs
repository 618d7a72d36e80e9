//! Reading the batch layer's final results from MySQL (`daily_ad_metrics`, `daily_uv`,
//! `batch_runs`; schema in `deploy/sql/mysql.sql`).
//!
//! The finality of each day and the rows of the final days are read in one read-only
//! transaction (a consistent snapshot), and the batch layer writes a day's rows and
//! its `batch_runs` record in one transaction: a day that turns final while it is
//! being read is seen either wholly before (speed numbers) or wholly after (batch).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use common::counters::{Counters, Measure, N_MEASURES};
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts};

/// Finality of a day as `batch_runs` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finality {
    /// Batch results are final.
    Final,
    /// Final, then recomputed because late data arrived.
    Revised,
}

impl Finality {
    /// `final` or `revised`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finality::Final => "final",
            Finality::Revised => "revised",
        }
    }
}

/// One ad-day of batch results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAd {
    /// The ad's campaign (0 for the unattributed pseudo-ad).
    pub campaign_id: i64,
    /// Counters.
    pub counters: Counters,
    /// Exact distinct users of the ad that day.
    pub uv: i64,
}

/// One final day of an advertiser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDay {
    /// Final or revised.
    pub finality: Finality,
    /// When the batch run finished, ms UTC.
    pub computed_at: i64,
    /// Rows per ad.
    pub by_ad: BTreeMap<i64, BatchAd>,
    /// Exact UV per campaign (key 0 = the whole advertiser).
    pub uv: BTreeMap<i64, i64>,
}

/// The final days of `advertiser` within `[from, to]`, with their rows.
///
/// # Errors
///
/// MySQL errors.
pub async fn final_days(
    pool: &Pool,
    advertiser: i64,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<BTreeMap<NaiveDate, BatchDay>, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let mut opts = TxOpts::default();
    opts.with_consistent_snapshot(true).with_readonly(true);
    let mut tx = conn.start_transaction(opts).await?;
    let runs: Vec<(NaiveDate, String, i64)> = tx
        .exec(
            "SELECT day, finality, CAST(UNIX_TIMESTAMP(finished_at) * 1000 AS SIGNED) FROM batch_runs \
             WHERE day BETWEEN ? AND ? AND finality IN ('final', 'revised')",
            (from, to),
        )
        .await?;
    let mut out: BTreeMap<NaiveDate, BatchDay> = runs
        .into_iter()
        .map(|(d, f, at)| {
            let finality = if f == "revised" {
                Finality::Revised
            } else {
                Finality::Final
            };
            (
                d,
                BatchDay {
                    finality,
                    computed_at: at,
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
        .exec("SELECT day, campaign_id, uv FROM daily_uv WHERE advertiser_id = ? AND day BETWEEN ? AND ?", (advertiser, from, to))
        .await?;
    for (day, campaign, uv) in uvs {
        if let Some(d) = out.get_mut(&day) {
            d.uv.insert(campaign, uv);
        }
    }
    tx.commit().await?;
    Ok(out)
}
