//! The exact daily recompute: for day D, read D's traffic and effects and the lookback
//! clicks from the archive, apply the attribution rules, and replace D's rows in MySQL
//! in one transaction together with its `batch_runs` record.
//!
//! ```text
//!  plan: list files of D (both topics) + lookback traffic, grouped by Kafka partition
//!    └─> workers (one per core): fetch a partition's files, decode (clicks only for the
//!        lookback), split into user-hash slices if it exceeds max_rows_in_memory,
//!        compute each slice (sort by user; dedup; attribute; count; exact UV)
//!          └─> merge (groups hold disjoint users: sums are exact) ─> MySQL, one transaction
//! ```
//!
//! Memory is bounded by the largest slice, not by the day: a partition's compressed
//! files plus at most `max_rows_in_memory` decoded records per worker.

pub mod compute;
pub mod input;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use chrono::NaiveDate;
use common::attribution::Rules;
use common::counters::Measure;
use common::day::day_num;
use common::dims::StaticDimensions;
use common::event::DAY_MS;
use mysql_async::Pool;
use mysql_async::prelude::Queryable;
use object_store::ObjectStoreExt;
use serde::Serialize;

use self::compute::DayResult;
use self::input::{InputError, InputFile, Plan};
use crate::archive::store::Archive;
use crate::runs;

/// Options of a recompute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Records decoded at once per worker before slicing by user hash.
    pub max_rows_in_memory: usize,
    /// Attribution rules.
    pub rules: Rules,
}

impl Options {
    /// From the configuration.
    pub fn from_config(cfg: &common::config::Config) -> Self {
        let threads = if cfg.batch.threads == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        } else {
            cfg.batch.threads
        };
        Options {
            threads,
            max_rows_in_memory: cfg.batch.max_rows_in_memory.max(1),
            rules: cfg.attribution.rules(),
        }
    }

    /// Whole days of lookback (rounded up).
    pub fn lookback_days(&self) -> u64 {
        u64::try_from((self.rules.lookback_ms + DAY_MS - 1) / DAY_MS).unwrap_or(14)
    }
}

/// Errors of a day's recompute.
#[derive(Debug, thiserror::Error)]
pub enum RecomputeError {
    /// The archive is missing or unreadable.
    #[error(transparent)]
    Input(#[from] InputError),
    /// MySQL failed.
    #[error("mysql: {0}")]
    Mysql(#[from] mysql_async::Error),
    /// Dimension tables could not be read.
    #[error("dimensions: {0}")]
    Dims(#[from] common::db::DbError),
    /// A worker panicked (a bug).
    #[error("recompute worker failed: {0}")]
    Worker(String),
}

/// What one day's run did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DaySummary {
    /// The day.
    pub day: NaiveDate,
    /// `final` or `revised`.
    pub finality: String,
    /// Records decoded (the day's rows and the lookback clicks).
    pub input_rows: u64,
    /// Rows of every input file (the late-data check compares this).
    pub archive_rows: i64,
    /// Result rows written (ads).
    pub output_rows: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Events skipped for unknown ads or advertisers.
    pub unknown_dimension: u64,
    /// Files read.
    pub files: usize,
    /// Wall seconds.
    pub seconds: f64,
}

/// Progress callback: (groups done, groups total).
pub type Progress = Arc<dyn Fn(usize, usize) + Send + Sync>;

/// Recomputes `day` and replaces its results, recording the run in `batch_runs`.
///
/// # Errors
///
/// [`RecomputeError`]; the run is then recorded as failed and the day's previous
/// results (if any) stay visible.
pub async fn run_day(
    pool: &Pool,
    archive: &Archive,
    topics: [&str; 2],
    day: NaiveDate,
    opts: Options,
    progress: Progress,
) -> Result<DaySummary, RecomputeError> {
    runs::start(pool, day).await?;
    match compute_and_write(pool, archive, topics, day, opts, progress).await {
        Ok(s) => Ok(s),
        Err(e) => {
            if let Err(f) = runs::fail(pool, day, &e.to_string()).await {
                tracing::error!(%day, error = %f, "could not record the failed run");
            }
            Err(e)
        }
    }
}

async fn compute_and_write(
    pool: &Pool,
    archive: &Archive,
    topics: [&str; 2],
    day: NaiveDate,
    opts: Options,
    progress: Progress,
) -> Result<DaySummary, RecomputeError> {
    let started = Instant::now();
    let dims = Arc::new(common::dims::load_all(pool).await?);
    let span = u64::from(dims.advertisers.values().any(|a| a.tz != chrono_tz::UTC));
    let plan = input::plan(archive, topics, day, span, opts.lookback_days()).await?;
    let files = plan.files();
    let (result, archive_rows) = compute_plan(archive, &plan, day, &dims, opts, progress).await?;
    let previous = runs::get(pool, day).await?;
    let finality = match previous {
        Some(r) if r.finality != "none" && r.archive_rows != archive_rows => "revised",
        Some(r) if r.finality == "revised" => "revised",
        _ => "final",
    };
    let output_rows = write(pool, day, &result, &dims, archive_rows, finality).await?;
    Ok(DaySummary {
        day,
        finality: finality.to_owned(),
        input_rows: result.input_rows,
        archive_rows,
        output_rows,
        duplicates: result.duplicates,
        unknown_dimension: result.unknown_dimension,
        files,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs the plan on worker threads; returns the merged result and the input files' rows.
///
/// # Errors
///
/// The first worker error.
pub async fn compute_plan(
    archive: &Archive,
    plan: &Plan,
    day: NaiveDate,
    dims: &Arc<StaticDimensions>,
    opts: Options,
    progress: Progress,
) -> Result<(DayResult, i64), RecomputeError> {
    let queue: Arc<Mutex<Vec<Vec<InputFile>>>> =
        Arc::new(Mutex::new(plan.groups.values().rev().cloned().collect()));
    let total = plan.groups.len();
    let handle = tokio::runtime::Handle::current();
    let archive = archive.clone();
    let dims = Arc::clone(dims);
    let dayn = day_num(day);
    tokio::task::spawn_blocking(move || {
        let done = Mutex::new(0_usize);
        let results: Mutex<Vec<Result<(DayResult, i64), RecomputeError>>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..opts.threads.max(1) {
                s.spawn(|| {
                    loop {
                        let Some(group) =
                            queue.lock().unwrap_or_else(PoisonError::into_inner).pop()
                        else {
                            break;
                        };
                        let r = compute_group(&handle, &archive, &group, dayn, &dims, opts);
                        let failed = r.is_err();
                        results
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(r);
                        if failed {
                            queue.lock().unwrap_or_else(PoisonError::into_inner).clear();
                            break;
                        }
                        let mut d = done.lock().unwrap_or_else(PoisonError::into_inner);
                        *d += 1;
                        progress(*d, total);
                    }
                });
            }
        });
        let mut merged = DayResult::default();
        let mut rows = 0;
        for r in results.into_inner().unwrap_or_else(PoisonError::into_inner) {
            let (res, n) = r?;
            merged.merge(res);
            rows += n;
        }
        Ok((merged, rows))
    })
    .await
    .map_err(|e| RecomputeError::Worker(e.to_string()))?
}

/// One Kafka partition's files: fetched once, decoded per user-hash slice.
fn compute_group(
    handle: &tokio::runtime::Handle,
    archive: &Archive,
    files: &[InputFile],
    day: common::day::DayNum,
    dims: &StaticDimensions,
    opts: Options,
) -> Result<(DayResult, i64), RecomputeError> {
    let mut fetched: Vec<(String, Bytes, bool)> = Vec::with_capacity(files.len());
    let mut file_rows = 0_i64;
    for f in files {
        let path = f.meta.location.to_string();
        let bytes = handle
            .block_on(async { archive.store.get(&f.meta.location).await?.bytes().await })
            .map_err(InputError::Store)?;
        file_rows += input::row_count(&path, bytes.clone())?;
        fetched.push((path, bytes, f.lookback));
    }
    let slices = u64::try_from(file_rows)
        .unwrap_or(0)
        .div_ceil(opts.max_rows_in_memory as u64)
        .max(1);
    let mut result = DayResult::default();
    for slice in 0..slices {
        let mut recs = Vec::new();
        for (path, bytes, lookback) in &fetched {
            input::decode_file(path, bytes.clone(), *lookback, (slice, slices), &mut recs)?;
        }
        result.merge(compute::compute(recs, day, dims, &opts.rules));
    }
    Ok((result, file_rows))
}

const INSERT_CHUNK: usize = 500;

/// Replaces `day`'s rows and records success, in one transaction.
async fn write(
    pool: &Pool,
    day: NaiveDate,
    r: &DayResult,
    dims: &StaticDimensions,
    archive_rows: i64,
    finality: &str,
) -> Result<u64, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    let mut tx = runs::begin(&mut conn).await?;
    tx.exec_drop("DELETE FROM daily_ad_metrics WHERE day = ?", (day,))
        .await?;
    tx.exec_drop("DELETE FROM daily_uv WHERE day = ?", (day,))
        .await?;
    let names: Vec<&str> = Measure::ALL.iter().map(|m| m.name()).collect();
    let cols = 5 + names.len();
    let rows: Vec<(&(i64, i64), &common::counters::Counters)> = r.by_ad.iter().collect();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let one = format!(
            "(?, ?, ?, ?, ?{}, CURRENT_TIMESTAMP(3))",
            ", ?".repeat(names.len())
        );
        let sql = format!(
            "INSERT INTO daily_ad_metrics (day, advertiser_id, ad_id, campaign_id, uv, {}, computed_at) VALUES {}",
            names.join(", "),
            vec![one; chunk.len()].join(", ")
        );
        let mut params: Vec<mysql_async::Value> = Vec::with_capacity(chunk.len() * cols);
        for ((adv, ad), c) in chunk {
            let campaign = dims.ads.get(ad).map_or(0, |a| a.campaign_id);
            params.push(day.into());
            params.push((*adv).into());
            params.push((*ad).into());
            params.push(campaign.into());
            params.push(r.uv_ad.get(&(*adv, *ad)).copied().unwrap_or(0).into());
            params.extend(c.0.iter().map(|v| mysql_async::Value::from(*v)));
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
            "INSERT INTO daily_uv (day, advertiser_id, campaign_id, uv) VALUES {}",
            vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
        );
        let params: Vec<mysql_async::Value> = chunk
            .iter()
            .flat_map(|(a, c, n)| [day.into(), (*a).into(), (*c).into(), (*n).into()])
            .collect();
        tx.exec_drop(sql, params).await?;
    }
    let output_rows = rows.len() as u64;
    tx.exec_drop(
        "UPDATE batch_runs SET finality = ?, run_status = 'succeeded', finished_at = CURRENT_TIMESTAMP(3), \
         first_final_at = COALESCE(first_final_at, CURRENT_TIMESTAMP(3)), input_rows = ?, output_rows = ?, \
         archive_rows = ?, code_version = ?, error = NULL WHERE day = ?",
        (finality, r.input_rows, output_rows, archive_rows, runs::CODE_VERSION, day),
    )
    .await?;
    tx.exec_drop(
        "UPDATE advertisers SET final_through = ? WHERE final_through IS NULL OR final_through < ?",
        (day, day),
    )
    .await?;
    tx.commit().await?;
    Ok(output_rows)
}

/// Rows of a day's input files now (footers only), to compare with what its last
/// success counted.
///
/// # Errors
///
/// Listing or footer errors.
pub async fn current_archive_rows(
    archive: &Archive,
    topics: [&str; 2],
    day: NaiveDate,
    span: u64,
    lookback_days: u64,
) -> Result<i64, InputError> {
    let plan = input::plan(archive, topics, day, span, lookback_days).await?;
    let mut total = 0;
    for files in plan.groups.values() {
        for f in files {
            let bytes = archive.store.get(&f.meta.location).await?.bytes().await?;
            total += input::row_count(f.meta.location.as_ref(), bytes)?;
        }
    }
    Ok(total)
}
