//! Writing a day's results to MySQL, as one part of a possibly split run.
//!
//! Every run writes a *part*: worker `i` of `N` replaces its rows in
//! `daily_ad_metrics_parts` / `daily_uv_parts` and its `batch_run_parts` record. The part
//! that completes the set (all `N` parts of the same split present) also replaces the
//! day's `daily_ad_metrics` / `daily_uv` by summing the parts and records success in
//! `batch_runs`, all in the same transaction. Parts hold disjoint users (a Kafka
//! partition is a hash of the user, and a part owns whole partitions), so the sums,
//! UV included, are exact, and attribution never crosses a part.
//!
//! Parts of one day serialise on the day's `batch_runs` row (`SELECT ... FOR UPDATE`
//! first), so exactly one of two parts finishing together sees the set complete.

use chrono::NaiveDate;
use common::counters::Measure;
use common::dims::StaticDimensions;
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, Transaction, Value};

use super::Shard;
use super::compute::DayResult;
use crate::runs;

const INSERT_CHUNK: usize = 500;

/// What writing a part did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartWritten {
    /// Result rows (ads) of this part.
    pub output_rows: u64,
    /// Parts of this split present after this one, of [`Shard::count`].
    pub parts_done: u32,
    /// `final` / `revised` when this part completed the day, else `None`.
    pub finality: Option<&'static str>,
}

/// Replaces `shard`'s part of `day`; completes the day when every part is present.
///
/// # Errors
///
/// MySQL errors; the transaction is then rolled back and nothing changes.
pub async fn write_part(
    pool: &Pool,
    day: NaiveDate,
    shard: Shard,
    r: &DayResult,
    dims: &StaticDimensions,
    archive_rows: i64,
) -> Result<PartWritten, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let mut tx = runs::begin(&mut conn).await?;
    let previous: Option<(String, i64)> = tx
        .exec_first(
            "SELECT finality, archive_rows FROM batch_runs WHERE day = ? FOR UPDATE",
            (day,),
        )
        .await?;
    let (index, count) = (shard.index, shard.count);
    // Parts of another split of this day (a different N) are stale; so are this
    // part's own old rows.
    tx.exec_drop(
        "DELETE FROM batch_run_parts WHERE day = ? AND (shard = ? OR shards <> ?)",
        (day, index, count),
    )
    .await?;
    for table in ["daily_ad_metrics_parts", "daily_uv_parts"] {
        tx.exec_drop(
            format!("DELETE FROM {table} WHERE day = ? AND (shard = ? OR shard >= ?)"),
            (day, index, count),
        )
        .await?;
    }
    let output_rows = insert_part_rows(&mut tx, day, index, r, dims).await?;
    tx.exec_drop(
        "INSERT INTO batch_run_parts (day, shard, shards, input_rows, output_rows, archive_rows, finished_at) \
         VALUES (?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP(3))",
        (day, index, count, r.input_rows, output_rows, archive_rows),
    )
    .await?;
    let (parts_done, input_rows, day_archive_rows): (u32, i64, i64) = tx
        .exec_first(
            "SELECT COUNT(*), CAST(COALESCE(SUM(input_rows), 0) AS SIGNED), \
             CAST(COALESCE(SUM(archive_rows), 0) AS SIGNED) \
             FROM batch_run_parts WHERE day = ? AND shards = ?",
            (day, count),
        )
        .await?
        .unwrap_or_default();
    let mut written = PartWritten {
        output_rows,
        parts_done,
        finality: None,
    };
    if parts_done == count {
        let finality = match previous {
            Some((f, rows)) if f != "none" && rows != day_archive_rows => "revised",
            Some((f, _)) if f == "revised" => "revised",
            _ => "final",
        };
        written.output_rows =
            complete_day(&mut tx, day, finality, input_rows, day_archive_rows).await?;
        written.finality = Some(finality);
    }
    // Otherwise the day keeps its previous results until the last part is written.
    tx.commit().await?;
    Ok(written)
}

/// Inserts one part's ad rows and UV rows; returns the ad rows.
async fn insert_part_rows(
    tx: &mut Transaction<'_>,
    day: NaiveDate,
    shard: u32,
    r: &DayResult,
    dims: &StaticDimensions,
) -> Result<u64, mysql_async::Error> {
    let names: Vec<&str> = Measure::ALL.iter().map(|m| m.name()).collect();
    let rows: Vec<(&(i64, i64), &common::counters::Counters)> = r.by_ad.iter().collect();
    let one = format!("(?, ?, ?, ?, ?, ?{})", ", ?".repeat(names.len()));
    for chunk in rows.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO daily_ad_metrics_parts (day, shard, advertiser_id, ad_id, campaign_id, uv, {}) VALUES {}",
            names.join(", "),
            vec![one.as_str(); chunk.len()].join(", ")
        );
        let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * (6 + names.len()));
        for ((adv, ad), c) in chunk {
            let campaign = dims.ads.get(ad).map_or(0, |a| a.campaign_id);
            params.push(day.into());
            params.push(shard.into());
            params.push((*adv).into());
            params.push((*ad).into());
            params.push(campaign.into());
            params.push(r.uv_ad.get(&(*adv, *ad)).copied().unwrap_or(0).into());
            params.extend(c.0.iter().map(|v| Value::from(*v)));
        }
        tx.exec_drop(sql, params).await?;
    }
    let uvs: Vec<(i64, i64, i64)> = r
        .uv_campaign
        .iter()
        .map(|((adv, c), n)| (*adv, *c, *n))
        .chain(r.uv_advertiser.iter().map(|(adv, n)| (*adv, 0, *n)))
        .collect();
    for chunk in uvs.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO daily_uv_parts (day, shard, advertiser_id, campaign_id, uv) VALUES {}",
            vec!["(?, ?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let params: Vec<Value> = chunk
            .iter()
            .flat_map(|(a, c, n)| {
                [
                    day.into(),
                    shard.into(),
                    (*a).into(),
                    (*c).into(),
                    (*n).into(),
                ]
            })
            .collect();
        tx.exec_drop(sql, params).await?;
    }
    Ok(rows.len() as u64)
}

/// Replaces the day's results by the sum of its parts and records success; returns the
/// day's result rows.
async fn complete_day(
    tx: &mut Transaction<'_>,
    day: NaiveDate,
    finality: &str,
    input_rows: i64,
    archive_rows: i64,
) -> Result<u64, mysql_async::Error> {
    let names: Vec<&str> = Measure::ALL.iter().map(|m| m.name()).collect();
    let sums: Vec<String> = names.iter().map(|n| format!("SUM({n})")).collect();
    tx.exec_drop("DELETE FROM daily_ad_metrics WHERE day = ?", (day,))
        .await?;
    tx.exec_drop("DELETE FROM daily_uv WHERE day = ?", (day,))
        .await?;
    tx.exec_drop(
        format!(
            "INSERT INTO daily_ad_metrics (day, advertiser_id, ad_id, campaign_id, uv, {}, computed_at) \
             SELECT day, advertiser_id, ad_id, MAX(campaign_id), SUM(uv), {}, CURRENT_TIMESTAMP(3) \
             FROM daily_ad_metrics_parts WHERE day = ? GROUP BY day, advertiser_id, ad_id",
            names.join(", "),
            sums.join(", ")
        ),
        (day,),
    )
    .await?;
    tx.exec_drop(
        "INSERT INTO daily_uv (day, advertiser_id, campaign_id, uv) \
         SELECT day, advertiser_id, campaign_id, SUM(uv) FROM daily_uv_parts WHERE day = ? \
         GROUP BY day, advertiser_id, campaign_id",
        (day,),
    )
    .await?;
    let output_rows: i64 = tx
        .exec_first(
            "SELECT COUNT(*) FROM daily_ad_metrics WHERE day = ?",
            (day,),
        )
        .await?
        .unwrap_or(0);
    tx.exec_drop(
        "UPDATE batch_runs SET finality = ?, run_status = 'succeeded', finished_at = CURRENT_TIMESTAMP(3), \
         first_final_at = COALESCE(first_final_at, CURRENT_TIMESTAMP(3)), input_rows = ?, output_rows = ?, \
         archive_rows = ?, code_version = ?, error = NULL WHERE day = ?",
        (finality, input_rows, output_rows, archive_rows, runs::CODE_VERSION, day),
    )
    .await?;
    tx.exec_drop(
        "UPDATE advertisers SET final_through = ? WHERE final_through IS NULL OR final_through < ?",
        (day, day),
    )
    .await?;
    Ok(u64::try_from(output_rows).unwrap_or(0))
}
