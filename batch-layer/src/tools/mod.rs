//! The batch layer's operator commands, as `batch-layer` runs them: a recompute of
//! days by hand (with a progress bar), one schedule tick, the archive's completeness,
//! a reconciliation of final days, and the benchmark ([`bench`]). Each prints what it did and
//! fails (exit 1) when something is not final or differs.

pub mod bench;

use std::sync::Arc;

use anyhow::Context as _;
use chrono::NaiveDate;
use common::config::Config;
use indicatif::{ProgressBar, ProgressStyle};

use crate::archive::store;
use crate::recompute::{self, Options, RecomputeError, Shard};
use crate::schedule::TickKind;

/// `batch-layer recompute`: recomputes `days` in turn as of `now_ms`, printing one
/// line per day and a total.
///
/// # Errors
///
/// When MySQL or the archive cannot be opened, or when a day failed or was refused
/// (still open, archive incomplete): all days are tried first.
pub async fn recompute_days(
    cfg: &Config,
    days: &[NaiveDate],
    now_ms: i64,
    shard: Shard,
) -> anyhow::Result<()> {
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool).await.context("MySQL schema")?;
    let archive = store::open(&cfg.batch)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} partitions {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut read, mut written, mut failed, mut refused) = (0_u64, 0_u64, Vec::new(), Vec::new());
    let started = std::time::Instant::now();
    for d in days {
        bar.set_prefix(d.to_string());
        bar.set_position(0);
        let b = bar.clone();
        let progress = Arc::new(move |done: usize, total: usize| {
            b.set_length(total as u64);
            b.set_position(done as u64);
        });
        match recompute::run_day(
            &pool,
            &archive,
            cfg,
            *d,
            Options {
                shard,
                ..Options::from_config(cfg)
            },
            now_ms,
            progress,
        )
        .await
        {
            Ok(s) => {
                read += s.input_rows;
                written += s.output_rows;
                bar.suspend(|| print_summary(&s, shard));
                if !s.final_zones.is_empty()
                    && let Some(r) =
                        crate::reconcile::after_final(cfg, &pool, *d, &s.final_zones).await
                {
                    bar.suspend(|| println!("{r}"));
                }
            }
            Err(RecomputeError::Refused(why)) => {
                bar.suspend(|| println!("{d}: NOT FINAL — {why}"));
                refused.push(why.to_string());
            }
            Err(e) => {
                bar.suspend(|| println!("{d}: FAILED — {e}"));
                failed.push(format!("{d}: {e}"));
            }
        }
    }
    bar.finish_and_clear();
    println!(
        "recomputed {} day(s), {} not final yet, {} failed: {read} rows read, {written} rows written, {:.1} s",
        days.len() - failed.len() - refused.len(),
        refused.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    pool.disconnect().await.ok();
    anyhow::ensure!(
        failed.is_empty(),
        "failed (recorded as failed in batch_runs):\n  {}",
        failed.join("\n  ")
    );
    anyhow::ensure!(
        refused.is_empty(),
        "not final yet (nothing written for these days):\n  {}",
        refused.join("\n  ")
    );
    Ok(())
}

/// `batch-layer schedule --once`: one tick of `kind` (closed days, failed runs and,
/// when `kind` says so, late data) as of `now_ms`, one line per day.
///
/// # Errors
///
/// When MySQL or the archive cannot be opened, the tick fails, or a day's run
/// failed.
pub async fn schedule_once(
    cfg: &Config,
    now_ms: i64,
    shard: Shard,
    kind: TickKind,
) -> anyhow::Result<()> {
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool).await.context("MySQL schema")?;
    let archive = store::open(&cfg.batch)?;
    let from = crate::schedule::horizon_start(now_ms);
    for (d, started) in crate::runs::fail_abandoned(&pool, from).await? {
        println!("{d}: the run started at {started} stopped without an outcome; recorded failed");
    }
    let out = crate::schedule::tick(cfg, &pool, &archive, shard, now_ms, kind).await?;
    let mut failed = 0;
    for (d, r) in &out {
        match r {
            Ok(s) => println!(
                "{d}: {} ({} rows; final zones: {})",
                s.finality,
                s.output_rows,
                s.final_zones.join(", ")
            ),
            Err(RecomputeError::Refused(why)) => println!("{d}: NOT FINAL — {why}"),
            Err(e) => {
                failed += 1;
                println!("{d}: FAILED — {e}");
            }
        }
    }
    pool.disconnect().await.ok();
    // A failed day fails the process, so that a job runner retries it (a day not
    // final yet is no failure: the next tick takes it).
    anyhow::ensure!(failed == 0, "{failed} of {} days failed", out.len());
    Ok(())
}

/// `batch-layer archive-status`: how far each partition is archived; with `wait`,
/// polls until every partition is archived to its end offset or `timeout` passes.
///
/// # Errors
///
/// When the archive or Kafka cannot be read, or `wait` timed out.
pub async fn archive_status(
    cfg: &Config,
    wait: bool,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let archive = store::open(&cfg.batch)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let now = common::day::now_ms();
        let c = crate::finality::archive_completeness(cfg, &archive, Shard::WHOLE, now).await?;
        let behind: Vec<String> = c
            .partitions
            .iter()
            .filter(|p| p.archived_offset < p.end_offset)
            .map(ToString::to_string)
            .collect();
        if behind.is_empty() || !wait || std::time::Instant::now() >= deadline {
            for p in &c.partitions {
                println!("{p}");
            }
            println!(
                "archive complete through {} ({} of {} partitions behind)",
                common::day::rfc3339_ms(c.through_ms()),
                behind.len(),
                c.partitions.len()
            );
            anyhow::ensure!(
                behind.is_empty() || !wait,
                "timed out after {timeout:?} with partitions behind: {}",
                behind.join("; ")
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `batch-layer reconcile`: compares the speed layer's numbers with the final ones
/// again for the final days among `days`, one line per day.
///
/// # Errors
///
/// When a store cannot be read, or a count or sum differs.
pub async fn reconcile_days(cfg: &Config, days: &[NaiveDate]) -> anyhow::Result<()> {
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool).await.context("MySQL schema")?;
    let speed = crate::reconcile::speed_reader(cfg).await?;
    let finals = crate::finality::final_zones_since(&pool, days[0]).await?;
    let mut differing = 0;
    for d in days {
        let Some(zones) = finals.get(d) else {
            println!("{d}: not final; nothing to reconcile");
            continue;
        };
        let advertisers = crate::reconcile::advertisers_of_zones(&pool, zones).await?;
        let r = crate::reconcile::reconcile_day(&pool, &speed, *d, &advertisers).await?;
        println!("{r}");
        differing += r.differences.len();
    }
    pool.disconnect().await.ok();
    anyhow::ensure!(
        differing == 0,
        "{differing} advertiser-day(s) differ in a count or sum (table reconciliation)"
    );
    Ok(())
}

/// One line per recomputed day: what turned final and what did not.
fn print_summary(s: &recompute::DaySummary, shard: Shard) {
    println!(
        "{}: {} (part {}, {}/{} parts written) — {} input rows, {} rows written, {:.1} s; final zones: [{}]{}{}",
        s.day,
        s.finality,
        s.shard,
        s.parts_done,
        shard.count,
        s.input_rows,
        s.output_rows,
        s.seconds,
        s.final_zones.join(", "),
        if s.open.is_empty() {
            String::new()
        } else {
            format!("; still open: {}", s.open.join(", "))
        },
        if s.waiting.is_empty() {
            String::new()
        } else {
            format!("; waiting: {}", s.waiting.join(" | "))
        },
    );
}

/// `batch-layer bench prepare`: `gen_events.py` Parquet files of `input` into the
/// archive layout at `archive`, users split into `partitions`; returns the rows.
///
/// # Errors
///
/// When a file cannot be read or written.
pub async fn bench_prepare(
    cfg: &Config,
    input: &std::path::Path,
    archive: &std::path::Path,
    partitions: u64,
) -> anyhow::Result<u64> {
    let mut b = cfg.batch.clone();
    b.archive_url = archive.display().to_string();
    let a = store::open(&b)?;
    let topics = [
        cfg.kafka.traffic_topic.as_str(),
        cfg.kafka.effects_topic.as_str(),
    ];
    bench::prepare(input, &a, partitions, topics).await
}

/// `batch-layer bench run`: recomputes `day` of the prepared archive at `archive`
/// with `threads` workers (default: the configured), for a load of `advertisers`;
/// writes the rows as CSV into `out` when given (after the timing).
///
/// # Errors
///
/// When the archive cannot be read.
pub async fn bench_run(
    cfg: &Config,
    archive: &std::path::Path,
    day: NaiveDate,
    threads: Option<usize>,
    advertisers: i64,
    out: Option<&std::path::Path>,
) -> anyhow::Result<bench::RecomputeFigures> {
    let mut b = cfg.batch.clone();
    b.archive_url = archive.display().to_string();
    let a = store::open(&b)?;
    let mut opts = Options::from_config(cfg);
    if let Some(t) = threads {
        opts.threads = t;
    }
    let topics = [
        cfg.kafka.traffic_topic.as_str(),
        cfg.kafka.effects_topic.as_str(),
    ];
    bench::run(&a, topics, day, opts, advertisers, out).await
}
