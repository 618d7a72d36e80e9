//! `batch-layer bench`: recompute throughput and peak memory on the standard load
//! (`../shared/bench/gen_events.py`, Parquet, one file per day).
//!
//! `prepare` turns the generator's files into the archive layout, as the archiver
//! would have written them (users hash-partitioned like a keyed topic, one file per
//! partition and hour, rows sorted by kind and user); it is not timed. `run` then
//! recomputes one day (its rows plus 14 days of lookback clicks) in a fresh process,
//! so the peak resident memory it reports is the recompute's own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use chrono::{DateTime, NaiveDate, Timelike};
use common::counters::{Counters, Measure, UNATTRIBUTED_AD};
use common::event::{Event, EventKind};
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::archive::layout;
use crate::archive::schema::{ArchivedEvent, encode_parquet};
use crate::archive::store::Archive;
use crate::recompute::compute::DayResult;
use crate::recompute::{self, Options};

/// Converts `events-*.parquet` files of the generator into the archive at `archive`
/// with `partitions` partitions. Returns rows written.
///
/// # Errors
///
/// Unreadable input or archive errors.
pub async fn prepare(
    input: &Path,
    archive: &Archive,
    partitions: u64,
    topics: [&str; 2],
) -> anyhow::Result<u64> {
    let mut files: Vec<_> = std::fs::read_dir(input)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let mut offsets: BTreeMap<(usize, u64), i64> = BTreeMap::new();
    let mut total = 0;
    for f in files {
        let file = std::fs::File::open(&f)?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
            .with_batch_size(65_536)
            .build()?;
        // (topic index, partition, date, hour) -> rows
        let mut groups: BTreeMap<(usize, u64, NaiveDate, u32), Vec<ArchivedEvent>> =
            BTreeMap::new();
        for b in reader {
            let b = b?;
            let col = |n: &str| {
                b.column_by_name(n)
                    .with_context(|| format!("{}: no column {n}", f.display()))
            };
            let (kind, id, ts, user) = (
                col("kind")?.as_string::<i32>(),
                col("event_id")?.as_string::<i32>(),
                col("ts")?.as_primitive::<Int64Type>(),
                col("user_id")?.as_string::<i32>(),
            );
            let (ad, adv, prod) = (
                col("ad_id")?.as_primitive::<Int64Type>(),
                col("advertiser_id")?.as_primitive::<Int64Type>(),
                col("product_id")?.as_primitive::<Int64Type>(),
            );
            let (cost, gmv) = (
                col("cost_micros")?.as_primitive::<Int64Type>(),
                col("gmv_micros")?.as_primitive::<Int64Type>(),
            );
            let opt = |a: &arrow::array::Int64Array, i: usize| {
                if a.is_null(i) { None } else { Some(a.value(i)) }
            };
            for i in 0..b.num_rows() {
                let k = EventKind::parse(kind.value(i))
                    .with_context(|| format!("unknown kind {}", kind.value(i)))?;
                let topic = k.topic().index();
                let p = common::event::id_hash(user.value(i)) % partitions;
                let off = offsets.entry((topic, p)).or_default();
                let t = DateTime::from_timestamp_millis(ts.value(i)).unwrap_or_default();
                let e = Event {
                    v: 1,
                    kind: k,
                    event_id: id.value(i).to_owned().into(),
                    ts: ts.value(i),
                    user_id: user.value(i).to_owned().into(),
                    ad_id: opt(ad, i),
                    advertiser_id: adv.value(i),
                    product_id: opt(prod, i),
                    cost_micros: opt(cost, i),
                    gmv_micros: opt(gmv, i),
                };
                groups
                    .entry((topic, p, t.date_naive(), t.hour()))
                    .or_default()
                    .push(ArchivedEvent {
                        event: e,
                        partition: i32::try_from(p).unwrap_or(0),
                        offset: *off,
                    });
                *off += 1;
                total += 1;
            }
        }
        for ((topic, p, date, hour), rows) in groups {
            let (first, last) = (
                rows.first().map_or(0, |r| r.offset),
                rows.last().map_or(0, |r| r.offset),
            );
            let path = layout::file_path(
                &archive.root,
                topics[topic],
                date,
                hour,
                i32::try_from(p).unwrap_or(0),
                first,
                last,
            );
            let compression = archive.compression;
            let bytes =
                tokio::task::spawn_blocking(move || encode_parquet(rows, 65_536, compression))
                    .await??;
            archive.store.put(&path, PutPayload::from(bytes)).await?;
        }
        tracing::info!(file = %f.display(), "prepared");
    }
    Ok(total)
}

/// Figures of one recompute.
#[derive(Debug, Clone, Serialize)]
pub struct RecomputeFigures {
    /// The day.
    pub day: NaiveDate,
    /// Worker threads.
    pub threads: usize,
    /// Input rows: the day's rows plus the lookback clicks.
    pub input_rows: u64,
    /// Result rows (ads).
    pub output_rows: usize,
    /// Wall seconds, listing to merged result (no MySQL write).
    pub seconds: f64,
    /// Of which listing the input files.
    pub plan_seconds: f64,
    /// Input files.
    pub files: usize,
    /// Input rows per second.
    pub input_rows_per_second: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
}

/// Recomputes `day` from the archive without writing results to MySQL; with `out`,
/// writes them as CSV files there once timed ([`write_csv`]).
///
/// # Errors
///
/// Archive errors, or the CSV files cannot be written.
pub async fn run(
    archive: &Archive,
    topics: [&str; 2],
    day: NaiveDate,
    opts: Options,
    advertisers: i64,
    out: Option<&Path>,
) -> anyhow::Result<RecomputeFigures> {
    let dims = Arc::new(fixtures::standard_load::dimensions(advertisers));
    let started = Instant::now();
    let plan = recompute::input::plan(archive, topics, day, 0, opts.lookback_days()).await?;
    let plan_seconds = started.elapsed().as_secs_f64();
    let (r, _) =
        recompute::compute_plan(archive, &plan, day, &dims, opts, Arc::new(|_, _| {})).await?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = out {
        write_csv(&r, day, dir)?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(RecomputeFigures {
        day,
        threads: opts.threads,
        input_rows: r.input_rows,
        output_rows: r.by_ad.len(),
        seconds,
        plan_seconds,
        files: plan.files(),
        input_rows_per_second: r.input_rows as f64 / seconds,
        peak_rss_mib: peak_rss_kib() as f64 / 1024.0,
    })
}

/// Writes a day's result as the DuckDB baseline's two tables (`../shared/bench/duckdb/
/// recompute.sql`), so the two can be compared row by row:
/// - `ad_metrics.csv`: `day,ad_id,advertiser_id,exposures,clicks,cost_micros,uv,` then
///   the direct and indirect effect counts and GMV (micros), one row per ad, by ad_id;
/// - `unattributed.csv`: `day,advertiser_id,consultations,private_messages,orders,
///   payments,gmv_micros`, the effects credited to no ad, one row per advertiser.
///
/// # Errors
///
/// When a file cannot be written.
pub fn write_csv(r: &DayResult, day: NaiveDate, dir: &Path) -> std::io::Result<()> {
    use std::fmt::Write as _;
    std::fs::create_dir_all(dir)?;
    let attributed: Vec<Measure> = Measure::ALL
        .into_iter()
        .filter(|m| m.name().ends_with("_direct") || m.name().ends_with("_indirect"))
        .collect();
    let mut ads = String::from("day,ad_id,advertiser_id,exposures,clicks,cost_micros,uv");
    for m in &attributed {
        let _ = write!(ads, ",{}", m.name());
    }
    ads.push('\n');
    // Ad id 0 is also where effects credited to no ad are counted (UNATTRIBUTED_AD):
    // its row holds only its traffic and attributed effects.
    let mut rows: Vec<(&(i64, i64), &Counters)> = r
        .by_ad
        .iter()
        .filter(|((_, ad), c)| {
            *ad != UNATTRIBUTED_AD || Measure::ALL.into_iter().any(|m| m.in_series() && c[m] != 0)
        })
        .collect();
    rows.sort_by_key(|((adv, ad), _)| (*ad, *adv));
    for (key @ (adv, ad), c) in rows {
        let uv = r.uv_ad.get(key).copied().unwrap_or(0);
        let _ = write!(
            ads,
            "{day},{ad},{adv},{},{},{},{uv}",
            c[Measure::Exposures],
            c[Measure::Clicks],
            c[Measure::CostMicros]
        );
        for m in &attributed {
            let _ = write!(ads, ",{}", c[*m]);
        }
        ads.push('\n');
    }
    std::fs::write(dir.join("ad_metrics.csv"), ads)?;
    let mut un = String::from(
        "day,advertiser_id,consultations,private_messages,orders,payments,gmv_micros\n",
    );
    // The measures outside the series are the unattributed ones, in the columns' order.
    let unattributed: Vec<Measure> = Measure::ALL
        .into_iter()
        .filter(|m| !m.in_series())
        .collect();
    for ((adv, _), c) in r
        .by_ad
        .iter()
        .filter(|((_, ad), c)| *ad == UNATTRIBUTED_AD && unattributed.iter().any(|m| c[*m] != 0))
    {
        let _ = write!(un, "{day},{adv}");
        for m in &unattributed {
            let _ = write!(un, ",{}", c[*m]);
        }
        un.push('\n');
    }
    std::fs::write(dir.join("unattributed.csv"), un)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
