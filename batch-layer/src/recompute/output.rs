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
//!
//! Completing a day copies only the advertisers of the time zones that may turn final
//! ([`crate::finality`]): those whose close is at or before the smallest "complete
//! through" any part recorded. Their `day_finality` rows turn `final` in the same
//! transaction. An advertiser whose totals differ from those of its earlier final
//! version gets a `day_revisions` row (previous and new totals): the day is `revised`.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use common::counters::Measure;
use common::dims::StaticDimensions;
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, Transaction, Value};

use super::Shard;
use super::compute::DayResult;
use crate::finality::ZoneDay;
use crate::runs;
use crate::totals::{self, IN_CHUNK, placeholders};

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
    /// The zones finalized (IANA names).
    pub final_zones: Vec<String>,
    /// Advertisers with a new revision.
    pub revised_advertisers: u64,
}

/// One part of a day, as computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The day.
    pub day: NaiveDate,
    /// Which part.
    pub shard: Shard,
    /// Rows of its input files.
    pub archive_rows: i64,
    /// The archive of its partitions held every event up to this instant (ms UTC).
    pub complete_through_ms: i64,
}

/// Replaces `part`; completes the day for the zones of `zones` that every part saw
/// complete, when every part is present.
///
/// # Errors
///
/// MySQL errors; the transaction is then rolled back and nothing changes.
pub async fn write_part(
    pool: &Pool,
    part: &Part,
    r: &DayResult,
    dims: &StaticDimensions,
    zones: &[ZoneDay],
) -> Result<PartWritten, mysql_async::Error> {
    let (day, archive_rows) = (part.day, part.archive_rows);
    let mut conn = pool.get_conn().await?;
    let mut tx = runs::begin(&mut conn).await?;
    // Serialises the parts of the day (module docs).
    tx.exec_drop(
        "SELECT day FROM batch_runs WHERE day = ? FOR UPDATE",
        (day,),
    )
    .await?;
    let (index, count) = (part.shard.index, part.shard.count);
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
        "INSERT INTO batch_run_parts (day, shard, shards, input_rows, output_rows, archive_rows, finished_at, complete_through) \
         VALUES (?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP(3), FROM_UNIXTIME(? / 1000))",
        (
            day,
            index,
            count,
            r.input_rows,
            output_rows,
            archive_rows,
            part.complete_through_ms.max(0),
        ),
    )
    .await?;
    // A part without a complete_through (written by an earlier version) counts as
    // complete through nothing: COUNT(complete_through) < COUNT(*).
    let (parts_done, input_rows, day_archive_rows, through_parts, through_ms): (
        u32,
        i64,
        i64,
        u32,
        Option<i64>,
    ) = tx
        .exec_first(
            "SELECT COUNT(*), CAST(COALESCE(SUM(input_rows), 0) AS SIGNED), \
             CAST(COALESCE(SUM(archive_rows), 0) AS SIGNED), COUNT(complete_through), \
             CAST(UNIX_TIMESTAMP(MIN(complete_through)) * 1000 AS SIGNED) \
             FROM batch_run_parts WHERE day = ? AND shards = ?",
            (day, count),
        )
        .await?
        .unwrap_or_default();
    let mut written = PartWritten {
        output_rows,
        parts_done,
        finality: None,
        final_zones: Vec::new(),
        revised_advertisers: 0,
    };
    let through_ms = through_ms.filter(|_| through_parts == parts_done);
    let ready: Vec<&ZoneDay> = zones
        .iter()
        .filter(|z| through_ms.is_some_and(|t| z.closes_at_ms <= t))
        .collect();
    if parts_done == count && !ready.is_empty() {
        let done = complete_day(&mut tx, day, &ready, input_rows, day_archive_rows).await?;
        written.output_rows = done.output_rows;
        written.revised_advertisers = done.revised_advertisers;
        written.finality = Some(if done.day_revised { "revised" } else { "final" });
        written.final_zones = ready.iter().map(|z| z.tz.name().to_owned()).collect();
    } else if parts_done == count {
        // Every part is written, but no zone was complete in all of them (a part read
        // a lagging archive): the day stays as it was and the scheduler runs it again.
        tx.exec_drop(
            "UPDATE batch_runs SET run_status = 'failed', finished_at = CURRENT_TIMESTAMP(3), \
             error = 'no time zone was complete in every part; the parts are recomputed' WHERE day = ?",
            (day,),
        )
        .await?;
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

/// What completing a day did.
struct Completed {
    output_rows: u64,
    revised_advertisers: u64,
    /// Some advertiser-day of the day has a revision (this run's or an earlier one).
    day_revised: bool,
}

/// Replaces the results of the advertisers of `zones` by the sum of the day's parts,
/// records revisions, turns the zones final and records success.
async fn complete_day(
    tx: &mut Transaction<'_>,
    day: NaiveDate,
    zones: &[&ZoneDay],
    input_rows: i64,
    archive_rows: i64,
) -> Result<Completed, mysql_async::Error> {
    let names: Vec<&str> = Measure::ALL.iter().map(|m| m.name()).collect();
    let sums: Vec<String> = names.iter().map(|n| format!("SUM({n})")).collect();
    let was_final: BTreeSet<String> = tx
        .exec::<String, _, _>(
            "SELECT time_zone FROM day_finality WHERE day = ? AND status = 'final' FOR UPDATE",
            (day,),
        )
        .await?
        .into_iter()
        .collect();
    let advertisers: Vec<i64> = zones
        .iter()
        .flat_map(|z| z.advertisers.iter().copied())
        .collect();
    let final_before: Vec<i64> = zones
        .iter()
        .filter(|z| was_final.contains(z.tz.name()))
        .flat_map(|z| z.advertisers.iter().copied())
        .collect();
    let before = totals::read(&mut *tx, day, &final_before).await?;
    for chunk in advertisers.chunks(IN_CHUNK) {
        let ids = placeholders(chunk.len());
        let mut params: Vec<Value> = vec![day.into()];
        params.extend(chunk.iter().map(|a| Value::from(*a)));
        for table in ["daily_ad_metrics", "daily_uv"] {
            tx.exec_drop(
                format!("DELETE FROM {table} WHERE day = ? AND advertiser_id IN {ids}"),
                params.clone(),
            )
            .await?;
        }
        tx.exec_drop(
            format!(
                "INSERT INTO daily_ad_metrics (day, advertiser_id, ad_id, campaign_id, uv, {}, computed_at) \
                 SELECT day, advertiser_id, ad_id, MAX(campaign_id), SUM(uv), {}, CURRENT_TIMESTAMP(3) \
                 FROM daily_ad_metrics_parts WHERE day = ? AND advertiser_id IN {ids} \
                 GROUP BY day, advertiser_id, ad_id",
                names.join(", "),
                sums.join(", ")
            ),
            params.clone(),
        )
        .await?;
        tx.exec_drop(
            format!(
                "INSERT INTO daily_uv (day, advertiser_id, campaign_id, uv) \
                 SELECT day, advertiser_id, campaign_id, SUM(uv) FROM daily_uv_parts \
                 WHERE day = ? AND advertiser_id IN {ids} GROUP BY day, advertiser_id, campaign_id"
            ),
            params.clone(),
        )
        .await?;
        let mut through: Vec<Value> = vec![day.into()];
        through.extend(chunk.iter().map(|a| Value::from(*a)));
        through.push(day.into());
        tx.exec_drop(
            format!(
                "UPDATE advertisers SET final_through = ? WHERE advertiser_id IN {ids} \
                 AND (final_through IS NULL OR final_through < ?)"
            ),
            through,
        )
        .await?;
    }
    let after = totals::read(&mut *tx, day, &final_before).await?;
    let mut revised_zones: BTreeSet<&str> = BTreeSet::new();
    let mut revised_advertisers = 0;
    for z in zones.iter().filter(|z| was_final.contains(z.tz.name())) {
        for adv in &z.advertisers {
            let (old, new) = (
                before.get(adv).copied().unwrap_or_default(),
                after.get(adv).copied().unwrap_or_default(),
            );
            if old == new {
                continue;
            }
            tx.exec_drop(
                "INSERT INTO day_revisions (day, advertiser_id, revision, revised_at, previous_totals, new_totals) \
                 SELECT ?, ?, COALESCE(MAX(revision), 0) + 1, CURRENT_TIMESTAMP(3), ?, ? \
                 FROM day_revisions WHERE day = ? AND advertiser_id = ?",
                (
                    day,
                    adv,
                    old.to_json().to_string(),
                    new.to_json().to_string(),
                    day,
                    adv,
                ),
            )
            .await?;
            revised_zones.insert(z.tz.name());
            revised_advertisers += 1;
        }
    }
    for z in zones {
        tx.exec_drop(
            "INSERT INTO day_finality (day, time_zone, status, closes_at, final_at, computed_at, revised_at, checked_at) \
             VALUES (?, ?, 'final', FROM_UNIXTIME(? / 1000), CURRENT_TIMESTAMP(3), CURRENT_TIMESTAMP(3), \
                     IF(?, CURRENT_TIMESTAMP(3), NULL), CURRENT_TIMESTAMP(3)) \
             ON DUPLICATE KEY UPDATE status = 'final', reason = NULL, closes_at = VALUES(closes_at), \
             final_at = COALESCE(final_at, VALUES(final_at)), computed_at = VALUES(computed_at), \
             revised_at = COALESCE(VALUES(revised_at), revised_at), checked_at = VALUES(checked_at)",
            (
                day,
                z.tz.name(),
                z.closes_at_ms,
                revised_zones.contains(z.tz.name()),
            ),
        )
        .await?;
    }
    let day_revised: bool = tx
        .exec_first::<i64, _, _>("SELECT COUNT(*) FROM day_revisions WHERE day = ?", (day,))
        .await?
        .unwrap_or(0)
        > 0;
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
        (
            if day_revised { "revised" } else { "final" },
            input_rows,
            output_rows,
            archive_rows,
            runs::CODE_VERSION,
            day,
        ),
    )
    .await?;
    Ok(Completed {
        output_rows: u64::try_from(output_rows).unwrap_or(0),
        revised_advertisers,
        day_revised,
    })
}
