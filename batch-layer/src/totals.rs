//! Advertiser-day totals of the final results (`daily_ad_metrics` summed over ads, and
//! the advertiser's exact UV from `daily_uv`): what a revision records before and
//! after, and what reconciliation compares with the speed layer.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use common::counters::{Counters, Measure, N_MEASURES};
use mysql_async::Value;
use mysql_async::prelude::Queryable;

/// Advertisers per `IN (...)` list of one statement.
pub const IN_CHUNK: usize = 1000;

/// One advertiser-day's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Every measure summed over the advertiser's ads (ad 0 included).
    pub counters: Counters,
    /// Exact distinct users of the advertiser that day.
    pub uv: i64,
}

impl Totals {
    /// As JSON: `{"<measure>": n, ..., "uv": n}` (the shape of `day_revisions`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for x in Measure::ALL {
            m.insert(x.name().to_owned(), self.counters[x].into());
        }
        m.insert("uv".to_owned(), self.uv.into());
        serde_json::Value::Object(m)
    }
}

/// `(?, ?, ...)` with `n` placeholders.
pub fn placeholders(n: usize) -> String {
    format!("({})", vec!["?"; n].join(", "))
}

/// The totals of `advertisers` on `day` in the final tables; an advertiser without
/// rows is absent.
///
/// # Errors
///
/// MySQL errors.
pub async fn read<Q: Queryable>(
    q: &mut Q,
    day: NaiveDate,
    advertisers: &[i64],
) -> Result<BTreeMap<i64, Totals>, mysql_async::Error> {
    let sums: Vec<String> = Measure::ALL
        .iter()
        .map(|m| format!("CAST(SUM({}) AS SIGNED)", m.name()))
        .collect();
    let mut out: BTreeMap<i64, Totals> = BTreeMap::new();
    for chunk in advertisers.chunks(IN_CHUNK) {
        let mut params: Vec<Value> = vec![day.into()];
        params.extend(chunk.iter().map(|a| Value::from(*a)));
        let rows: Vec<mysql_async::Row> = q
            .exec(
                format!(
                    "SELECT advertiser_id, {} FROM daily_ad_metrics WHERE day = ? AND advertiser_id IN {} GROUP BY advertiser_id",
                    sums.join(", "),
                    placeholders(chunk.len())
                ),
                params.clone(),
            )
            .await?;
        for row in rows {
            let adv: i64 = row.get(0).unwrap_or_default();
            let t = out.entry(adv).or_default();
            for i in 0..N_MEASURES {
                t.counters.0[i] = row.get::<Option<i64>, _>(1 + i).flatten().unwrap_or(0);
            }
        }
        let uvs: Vec<(i64, i64)> = q
            .exec(
                format!(
                    "SELECT advertiser_id, uv FROM daily_uv WHERE day = ? AND campaign_id = 0 AND advertiser_id IN {}",
                    placeholders(chunk.len())
                ),
                params,
            )
            .await?;
        for (adv, uv) in uvs {
            out.entry(adv).or_default().uv = uv;
        }
    }
    Ok(out)
}
