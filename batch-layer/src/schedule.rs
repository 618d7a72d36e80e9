//! The nightly schedule: on each tick of `batch.schedule` (cron, in
//! `batch.platform_tz`; default 02:30 for the day before, which leaves two and a half
//! hours for late data), recompute
//!
//! 1. yesterday, unless it is final already;
//! 2. every day of the last [`HORIZON_DAYS`] whose runs all failed (a failed run is
//!    retried by the next tick);
//! 3. every final day of that horizon whose input files now hold more (or fewer) rows
//!    than when it was computed: late data arrived, and the day becomes `revised`.
//!
//! With a split run (`--shard i/N`, one scheduler per worker) each worker applies these
//! rules to its own part: its part missing stands for "not final", and late data is
//! counted over its own partitions.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{Days, NaiveDate, Utc};
use common::config::Config;
use mysql_async::Pool;
use tokio_util::sync::CancellationToken;

use crate::archive::store::Archive;
use crate::recompute::{self, DaySummary, Options, Shard};
use crate::runs;

/// How many days back a tick looks for failed runs and late data.
pub const HORIZON_DAYS: u64 = 35;

/// The days one tick should recompute, and why.
///
/// # Errors
///
/// MySQL or archive errors.
pub async fn due_days(
    cfg: &Config,
    pool: &Pool,
    archive: &Archive,
    yesterday: NaiveDate,
    shard: Shard,
) -> anyhow::Result<Vec<(NaiveDate, &'static str)>> {
    let from = yesterday
        .checked_sub_days(Days::new(HORIZON_DAYS))
        .unwrap_or(yesterday);
    let runs = runs::since(pool, from).await?;
    let parts = runs::parts_since(pool, from, shard.index, shard.count).await?;
    let mut due = Vec::new();
    if !parts.contains_key(&yesterday) {
        due.push((yesterday, "yesterday"));
    }
    let dims = common::dims::load_all(pool).await?;
    let span = u64::from(dims.advertisers.values().any(|a| a.tz != chrono_tz::UTC));
    let opts = Options::from_config(cfg);
    let lookback = opts.lookback_days();
    let topics = [
        cfg.kafka.traffic_topic.as_str(),
        cfg.kafka.effects_topic.as_str(),
    ];
    for r in runs.iter().filter(|r| r.day < yesterday) {
        let Some(&part_rows) = parts.get(&r.day) else {
            due.push((r.day, "retry of a failed run"));
            continue;
        };
        if r.run_status != "running" {
            match recompute::current_archive_rows(archive, topics, r.day, span, lookback, shard)
                .await
            {
                Ok(n) if n != part_rows => due.push((r.day, "late data")),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(day = %r.day, error = %e, "cannot count the archive of a final day")
                }
            }
        }
    }
    due.sort();
    Ok(due)
}

/// Runs one tick now; returns each day's outcome.
///
/// # Errors
///
/// When the due days cannot be determined.
pub async fn tick(
    cfg: &Config,
    pool: &Pool,
    archive: &Archive,
    shard: Shard,
) -> anyhow::Result<Vec<(NaiveDate, Result<DaySummary, String>)>> {
    let tz: chrono_tz::Tz = cfg
        .batch
        .platform_tz
        .parse()
        .map_err(|_| anyhow::anyhow!("batch.platform_tz"))?;
    let today = Utc::now().with_timezone(&tz).date_naive();
    let yesterday = today.pred_opt().unwrap_or(today);
    let topics = [
        cfg.kafka.traffic_topic.as_str(),
        cfg.kafka.effects_topic.as_str(),
    ];
    let mut out = Vec::new();
    let opts = Options {
        shard,
        ..Options::from_config(cfg)
    };
    for (day, why) in due_days(cfg, pool, archive, yesterday, shard).await? {
        tracing::info!(%day, %shard, reason = why, "recomputing");
        let r = recompute::run_day(pool, archive, topics, day, opts, Arc::new(|_, _| {})).await;
        match &r {
            Ok(s) => {
                tracing::info!(%day, %shard, finality = %s.finality, parts_done = s.parts_done, rows = s.output_rows, seconds = s.seconds, "day recomputed")
            }
            Err(e) => {
                tracing::error!(%day, error = %e, "recompute failed; the next tick retries it")
            }
        }
        out.push((day, r.map_err(|e| e.to_string())));
    }
    Ok(out)
}

/// Runs ticks on the cron schedule until `shutdown`.
///
/// # Errors
///
/// When the schedule or time zone do not parse.
pub async fn run(
    cfg: Arc<Config>,
    pool: Pool,
    archive: Archive,
    shard: Shard,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let schedule = cron::Schedule::from_str(&cfg.batch.schedule)
        .with_context(|| format!("batch.schedule `{}`", cfg.batch.schedule))?;
    let tz: chrono_tz::Tz = cfg
        .batch
        .platform_tz
        .parse()
        .map_err(|_| anyhow::anyhow!("batch.platform_tz"))?;
    loop {
        let Some(next) = schedule.upcoming(tz).next() else {
            anyhow::bail!("the schedule has no future tick")
        };
        let wait = (next.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or_default();
        tracing::info!(next = %next, "next recompute tick");
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        if let Err(e) = tick(&cfg, &pool, &archive, shard).await {
            tracing::error!(error = %e, "recompute tick failed; retrying at the next tick");
        }
    }
}
