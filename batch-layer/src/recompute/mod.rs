//! The exact daily recompute: for day D, read D's traffic and effects and the lookback
//! clicks from the archive, apply the attribution rules, and replace D's rows in MySQL
//! in one transaction together with its `batch_runs` record.
//!
//! ```text
//!  plan: list files of D (both topics) + lookback traffic, grouped by Kafka partition
//!    └─> workers (one per core): fetch a partition's files; per user-hash slice (more
//!        than one when the day's rows exceed max_rows_in_memory): decode the day's
//!        files, then from the lookback only the clicks of (user, advertiser) pairs
//!        with an effect that day (a semi-join), compute (sort by user; dedup; attribute; count;
//!        exact UV)
//!          └─> merge (groups hold disjoint users: sums are exact) ─> MySQL, one transaction
//! ```
//!
//! Memory is bounded by the largest slice, not by the day: a partition's compressed
//! files plus at most `max_rows_in_memory` decoded records per worker.
//!
//! A run finalizes only the time zones whose day has closed and whose archive is
//! complete ([`crate::finality`]): before computing, it refuses a day that is still
//! open everywhere, and records as `waiting` (writing no result) a day whose archive
//! lags. Each part records how far its archive was complete; the last part finalizes
//! the zones that every part saw complete.
//!
//! A day can also be split across machines ([`Shard`], `--shard i/N`): worker `i` takes
//! the Kafka partitions `p` with `p mod N = i` and writes its part; the day turns final
//! when the last part is written ([`output`]). N workers give the same rows as one.

pub mod compute;
pub mod input;
pub mod output;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use chrono::NaiveDate;
use common::attribution::Rules;
use common::day::day_num;
use common::dims::StaticDimensions;
use common::event::DAY_MS;
use mysql_async::Pool;
use serde::Serialize;

use self::compute::DayResult;
use self::input::{FetchedFile, InputError, InputFile, Plan};
use crate::archive::store::Archive;
use crate::finality::{self, Refusal};
use crate::runs;

/// One worker's share of a split run: the Kafka partitions `p` with `p mod count =
/// index`. Written `i/N` (0-based, like partitions and StatefulSet ordinals); `0/1`
/// is the whole day.
///
/// Splitting by partition is splitting by a hash of the user (producers key every event
/// by `user_id`, design brief "Topics"), so a user's clicks and effects, lookback
/// included, stay with one worker and attribution never crosses workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// `i`, below `count`.
    pub index: u32,
    /// `N`, at least 1.
    pub count: u32,
}

impl Shard {
    /// The whole day, one worker.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Whether this shard owns Kafka partition `partition`.
    pub fn owns(self, partition: i32) -> bool {
        u32::try_from(partition).is_ok_and(|p| p % self.count == self.index)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The most parts a day can be split into (each part takes Kafka partitions, and the
/// sweep of abandoned runs checks this many leases per day).
pub const MAX_PARTS: u32 = 64;

impl std::str::FromStr for Shard {
    type Err = String;

    /// Parses `i/N` with `0 <= i < N <= MAX_PARTS`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}`: expected i/N with 0 <= i < N <= {MAX_PARTS}, e.g. 0/3");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count || count > MAX_PARTS {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// Options of a recompute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Records decoded at once per worker before slicing by user hash.
    pub max_rows_in_memory: usize,
    /// Attribution rules.
    pub rules: Rules,
    /// This worker's share of the day ([`Shard::WHOLE`] unless split).
    pub shard: Shard,
    /// `batch.late_allowance`: how long after its end in a zone a day closes there.
    pub late_allowance: std::time::Duration,
    /// Recompute zones that are final already (a backfill, late data, a retry); the
    /// scheduler's "closed, not final yet" runs leave them alone, so that a day with
    /// one zone waiting for the archive is not recomputed every tick for nothing.
    pub rewrite_final_zones: bool,
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
            shard: Shard::WHOLE,
            late_allowance: cfg.batch.late_allowance,
            rewrite_final_zones: true,
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
    Dims(#[from] platform::db::DbError),
    /// A worker panicked (a bug).
    #[error("recompute worker failed: {0}")]
    Worker(String),
    /// The day may not turn final yet; nothing was written (a waiting day is recorded
    /// as such in `day_finality`).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The archive's completeness could not be checked (Kafka or the progress records).
    #[error("checking that the archive is complete: {0:#}")]
    Completeness(anyhow::Error),
}

/// What one day's run did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DaySummary {
    /// The day.
    pub day: NaiveDate,
    /// `final`, `revised` (an advertiser's totals changed since the day was final), or
    /// `pending` (other parts of a split run are missing, or no zone was complete in
    /// every part).
    pub finality: String,
    /// The time zones this run finalized (IANA names).
    pub final_zones: Vec<String>,
    /// Zones closed but waiting for the archive, with the reason.
    pub waiting: Vec<String>,
    /// Zones not closed yet, with their close (RFC 3339).
    pub open: Vec<String>,
    /// Advertisers whose totals this run revised.
    pub revised_advertisers: u64,
    /// The part this run wrote (`i/N`).
    pub shard: String,
    /// Parts of the split present after this run (N when the day is complete).
    pub parts_done: u32,
    /// Records decoded (the day's rows and the lookback clicks).
    pub input_rows: u64,
    /// Rows of every input file (the late-data check compares this).
    pub archive_rows: i64,
    /// Result rows written: the day's ad rows when complete, else this part's.
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

/// Recomputes `day` as of `now_ms` (the clock: ms UTC) and replaces the results of
/// its time zones that may turn final, recording the run in `batch_runs`.
///
/// # Errors
///
/// [`RecomputeError::Refused`] before anything is written when no zone of the day may
/// turn final yet (open, or waiting for the archive: recorded in `day_finality`);
/// other [`RecomputeError`]s record the run as failed, and the day's previous results
/// (if any) stay visible.
pub async fn run_day(
    pool: &Pool,
    archive: &Archive,
    cfg: &common::config::Config,
    day: NaiveDate,
    opts: Options,
    now_ms: i64,
    progress: Progress,
) -> Result<DaySummary, RecomputeError> {
    let dims = Arc::new(platform::dims::load_all(pool).await?);
    let zones = finality::zone_days(day, &dims, opts.late_allowance);
    let first_close = zones.first().map_or(i64::MAX, |z| z.closes_at_ms);
    // A day open everywhere is refused without asking Kafka (`recompute --day today`).
    let completeness = if first_close <= now_ms {
        finality::archive_completeness(cfg, archive, opts.shard, now_ms)
            .await
            .map_err(RecomputeError::Completeness)?
    } else {
        finality::Completeness {
            checked_at_ms: now_ms,
            partitions: Vec::new(),
        }
    };
    let mut decision = finality::decide(zones, now_ms, &completeness);
    finality::record_waiting(pool, day, &decision.waiting).await?;
    let mut final_ready = Vec::new();
    if !opts.rewrite_final_zones {
        let finals = finality::final_zones_since(pool, day).await?;
        let finals = finals.get(&day).cloned().unwrap_or_default();
        let (done, new): (Vec<_>, Vec<_>) = std::mem::take(&mut decision.ready)
            .into_iter()
            .partition(|z| finals.iter().any(|f| f == z.tz.name()));
        decision.ready = new;
        final_ready = done;
    }
    if let Some(r) = finality::refusal(day, &decision) {
        return Err(r.into());
    }
    let topics = [
        cfg.kafka.traffic_topic.as_str(),
        cfg.kafka.effects_topic.as_str(),
    ];
    let lease = runs::start(pool, day, opts.shard.index).await?;
    let input = DayInput {
        day,
        dims,
        decision: &decision,
        final_ready,
        complete_through_ms: completeness.through_ms(),
    };
    let result = match compute_and_write(pool, archive, topics, &input, opts, progress).await {
        Ok(s) => Ok(s),
        Err(e) => {
            if let Err(f) = runs::fail(pool, day, &e.to_string()).await {
                tracing::error!(%day, error = %f, "could not record the failed run");
            }
            Err(e)
        }
    };
    lease.release().await;
    result
}

/// What a run of a day starts from.
struct DayInput<'a> {
    day: NaiveDate,
    dims: Arc<StaticDimensions>,
    decision: &'a finality::Decision,
    /// Ready zones final already, left alone ([`Options::rewrite_final_zones`] off)
    /// unless the input changed since this part was last written.
    final_ready: Vec<finality::ZoneDay>,
    complete_through_ms: i64,
}

async fn compute_and_write(
    pool: &Pool,
    archive: &Archive,
    topics: [&str; 2],
    input: &DayInput<'_>,
    opts: Options,
    progress: Progress,
) -> Result<DaySummary, RecomputeError> {
    let started = Instant::now();
    let (day, dims) = (input.day, &input.dims);
    let span = u64::from(dims.advertisers.values().any(|a| a.tz != chrono_tz::UTC));
    let plan = shard_plan(archive, topics, day, span, opts.lookback_days(), opts.shard).await?;
    let files = plan.files();
    let (result, archive_rows) = compute_plan(archive, &plan, day, dims, opts, progress).await?;
    let part = output::Part {
        day,
        shard: opts.shard,
        archive_rows,
        complete_through_ms: input.complete_through_ms,
    };
    let mut zones = input.decision.ready.clone();
    zones.extend(input.decision.waiting.iter().map(|(z, _)| z.clone()));
    if !input.final_ready.is_empty() {
        // Late data reached the archive since the final zones were computed: this part
        // is rewritten with it, so those zones are too (and revised where it changes
        // their totals); else the nightly check would compare against this count.
        let stored = runs::parts_since(pool, day, opts.shard.index, opts.shard.count).await?;
        if stored.get(&day).is_some_and(|rows| *rows != archive_rows) {
            zones.extend(input.final_ready.iter().cloned());
        }
    }
    let written = output::write_part(pool, &part, &result, dims, &zones).await?;
    Ok(DaySummary {
        day,
        finality: written.finality.unwrap_or("pending").to_owned(),
        final_zones: written.final_zones.clone(),
        waiting: input
            .decision
            .waiting
            .iter()
            .map(|(_, r)| r.clone())
            .collect(),
        open: input
            .decision
            .open
            .iter()
            .map(|z| {
                format!(
                    "{} closes at {}",
                    z.tz.name(),
                    common::day::rfc3339_ms(z.closes_at_ms)
                )
            })
            .collect(),
        revised_advertisers: written.revised_advertisers,
        shard: opts.shard.to_string(),
        parts_done: written.parts_done,
        input_rows: result.input_rows,
        archive_rows,
        output_rows: written.output_rows,
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

/// One Kafka partition's files, decoded per user-hash slice.
///
/// Each slice decodes the day's own files first (fetched once, kept for the slices);
/// an effect is credited only to a click of its own user and advertiser, so from the
/// lookback files (about 14 times the day's clicks), fetched one at a time and dropped
/// after use, only the clicks of the slice's (user, advertiser) pairs with an effect
/// are decoded (on the standard load 1.4 % of the lookback's clicks). The slice count
/// comes from the day's rows alone, so a long lookback does not make the day's files
/// decode more than once.
fn compute_group(
    handle: &tokio::runtime::Handle,
    archive: &Archive,
    files: &[InputFile],
    day: common::day::DayNum,
    dims: &StaticDimensions,
    opts: Options,
) -> Result<(DayResult, i64), RecomputeError> {
    let fetch = |f: &InputFile| -> Result<FetchedFile, InputError> {
        let bytes = archive.read_blocking(handle, &f.meta.location)?;
        FetchedFile::open(f.meta.location.to_string(), bytes, f.lookback)
    };
    let own = files
        .iter()
        .filter(|f| !f.lookback)
        .map(fetch)
        .collect::<Result<Vec<_>, _>>()?;
    let lookback: Vec<&InputFile> = files.iter().filter(|f| f.lookback).collect();
    let day_rows: i64 = own.iter().map(FetchedFile::rows).sum();
    let mut file_rows = day_rows;
    let slices = u64::try_from(day_rows)
        .unwrap_or(0)
        .div_ceil(opts.max_rows_in_memory as u64)
        .max(1);
    let mut result = DayResult::default();
    for slice in 0..slices {
        let mut recs = Vec::new();
        for f in &own {
            input::decode_day(f, (slice, slices), &mut recs)?;
        }
        let day_recs = recs.len() as u64;
        let converters: input::Converters = recs
            .iter()
            .filter(|r| !r.kind.is_traffic())
            .map(|r| (r.user, r.advertiser))
            .collect();
        // The first slice reads the whole lookback even without an effect: it counts
        // the lookback clicks (input rows) and the files' rows (archive rows).
        let mut lookback_clicks = 0;
        if slice == 0 || !converters.is_empty() {
            let converters = Arc::new(converters);
            for f in &lookback {
                let file = fetch(f)?;
                if slice == 0 {
                    file_rows += file.rows();
                }
                lookback_clicks += input::decode_lookback_clicks(&file, &converters, &mut recs)?;
            }
        }
        let mut r = compute::compute(recs, day, dims, &opts.rules);
        r.input_rows = day_recs + if slice == 0 { lookback_clicks } else { 0 };
        result.merge(r);
    }
    Ok((result, file_rows))
}

/// The input files of `shard`'s part of `day` (its Kafka partitions' groups).
async fn shard_plan(
    archive: &Archive,
    topics: [&str; 2],
    day: NaiveDate,
    span: u64,
    lookback_days: u64,
    shard: Shard,
) -> Result<Plan, InputError> {
    let mut plan = input::plan(archive, topics, day, span, lookback_days).await?;
    plan.groups.retain(|p, _| shard.owns(*p));
    Ok(plan)
}

/// Rows of the input files of `shard`'s part of a day now (footers only), to compare
/// with what its last success counted.
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
    shard: Shard,
) -> Result<i64, InputError> {
    let plan = shard_plan(archive, topics, day, span, lookback_days, shard).await?;
    let mut total = 0;
    for files in plan.groups.values() {
        for f in files {
            total += input::footer_row_count(archive, &f.meta).await?;
        }
    }
    Ok(total)
}
