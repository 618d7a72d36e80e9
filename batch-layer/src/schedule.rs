//! The schedule. On each tick of `batch.schedule` (cron in `batch.platform_tz`,
//! default every 15 minutes) recompute every day of the last [`HORIZON_DAYS`] that
//!
//! 1. holds archive files (or is a neighbour of such a UTC date, or was run before),
//!    and has a time zone whose day has
//!    closed ([`crate::finality`]) but is not final yet: a zone turns final at most
//!    one tick after it closes, a day waiting for the archive is retried every tick;
//! 2. or whose last run failed (a failed run is retried by the next tick);
//!
//! and, on the ticks of `batch.late_data_schedule` (default 02:30), also every final
//! day of the horizon whose input files now hold more (or fewer) rows than when it
//! was computed: late data arrived, and the advertisers whose totals change are
//! `revised` (that check reads every input file's footer, hence nightly).
//!
//! With a split run (`--shard i/N`, one scheduler per worker) each worker applies these
//! rules to its own part: its part missing stands for "not final", and late data is
//! counted over its own partitions.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Days, NaiveDate, Utc};
use common::config::Config;
use mysql_async::Pool;
use tokio_util::sync::CancellationToken;

use crate::archive::store::Archive;
use crate::finality;
use crate::recompute::{self, DaySummary, Options, RecomputeError, Shard};
use crate::reconcile;
use crate::runs;

/// How many days back a tick looks for closed, failed and late days.
pub const HORIZON_DAYS: u64 = 35;

/// The first day of the horizon at `now_ms`: [`HORIZON_DAYS`] before today (UTC).
pub fn horizon_start(now_ms: i64) -> NaiveDate {
    let today = common::day::today(now_ms, chrono_tz::UTC);
    today
        .checked_sub_days(Days::new(HORIZON_DAYS))
        .unwrap_or(today)
}

/// Gauge: zone-days of the horizon that have closed but wait for the archive
/// (`day_finality.status = 'waiting'`). Alert when above 0 for long.
pub const DAYS_WAITING: &str = "admetrics_batch_days_waiting";

/// Gauge: days of the horizon whose last run failed (`batch_runs.run_status`).
pub const RUNS_FAILED: &str = "admetrics_batch_runs_failed";

/// Sets [`DAYS_WAITING`] and [`RUNS_FAILED`] from MySQL.
async fn export_run_gauges(pool: &Pool, from: NaiveDate) -> Result<(), mysql_async::Error> {
    use mysql_async::prelude::Queryable as _;
    let mut c = pool.get_conn().await?;
    let waiting: Option<i64> = c
        .exec_first(
            "SELECT COUNT(*) FROM day_finality WHERE day >= ? AND status = 'waiting'",
            (from,),
        )
        .await?;
    let failed: Option<i64> = c
        .exec_first(
            "SELECT COUNT(*) FROM batch_runs WHERE day >= ? AND run_status = 'failed'",
            (from,),
        )
        .await?;
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!(DAYS_WAITING).set(waiting.unwrap_or(0) as f64);
        metrics::gauge!(RUNS_FAILED).set(failed.unwrap_or(0) as f64);
    }
    Ok(())
}

/// The reason of a day due because a zone of it has closed and is not final yet.
const CLOSED_NOT_FINAL: &str = "closed, not final yet";

/// What one tick checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickKind {
    /// Also re-count the input of final days (late data).
    pub late_data: bool,
}

/// Days from `from` on that hold archive files of either topic (the `date=` prefixes).
async fn archived_days(
    archive: &Archive,
    topics: [&str; 2],
    from: NaiveDate,
) -> anyhow::Result<BTreeSet<NaiveDate>> {
    let mut out = BTreeSet::new();
    for t in topics {
        let prefix = crate::archive::layout::topic_prefix(&archive.root, t);
        let listing = archive
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .with_context(|| format!("listing {prefix}"))?;
        for p in listing.common_prefixes {
            if let Some(d) = p
                .filename()
                .and_then(|f| f.strip_prefix("date="))
                .and_then(|d| d.parse::<NaiveDate>().ok())
                && d >= from
            {
                out.insert(d);
            }
        }
    }
    Ok(out)
}

/// The days one tick at `now_ms` should recompute, and why.
///
/// # Errors
///
/// MySQL or archive errors.
pub async fn due_days(
    cfg: &Config,
    pool: &Pool,
    archive: &Archive,
    now_ms: i64,
    shard: Shard,
    kind: TickKind,
) -> anyhow::Result<Vec<(NaiveDate, &'static str)>> {
    let today = common::day::today(now_ms, chrono_tz::UTC);
    let from = horizon_start(now_ms);
    let topics = [
        cfg.kafka.traffic_topic.as_str(),
        cfg.kafka.effects_topic.as_str(),
    ];
    let runs = runs::since(pool, from).await?;
    let parts = runs::parts_since(pool, from, shard.index, shard.count).await?;
    let final_zones = finality::final_zones_since(pool, from).await?;
    let dims = platform::dims::load_all(pool).await?;
    let opts = Options::from_config(cfg);
    // With advertisers off UTC, a UTC date's events fall on the local days before and
    // after it too (zones from UTC-12 to UTC+14); the recompute then reads those
    // neighbouring dates as well (its `span`).
    let off_utc = dims.advertisers.values().any(|a| a.tz != chrono_tz::UTC);
    let mut candidates: BTreeSet<NaiveDate> = archived_days(archive, topics, from)
        .await?
        .into_iter()
        .flat_map(|d| {
            if off_utc {
                [d.pred_opt(), Some(d), d.succ_opt()]
            } else {
                [None, Some(d), None]
            }
        })
        .flatten()
        .filter(|d| *d >= from)
        .collect();
    candidates.extend(runs.iter().map(|r| r.day));
    let mut due = Vec::new();
    for day in candidates.into_iter().filter(|d| *d <= today) {
        let finals = final_zones.get(&day);
        let closed_not_final = finality::zone_days(day, &dims, opts.late_allowance)
            .iter()
            .any(|z| {
                z.closes_at_ms <= now_ms
                    && !finals.is_some_and(|f| f.iter().any(|n| n == z.tz.name()))
            });
        let run = runs.iter().find(|r| r.day == day);
        if closed_not_final {
            due.push((day, CLOSED_NOT_FINAL));
        } else if run.is_some_and(|r| r.run_status == "failed") {
            due.push((day, "retry of a failed run"));
        } else if kind.late_data
            && finals.is_some()
            && let Some(&part_rows) = parts.get(&day)
        {
            let span = u64::from(off_utc);
            match recompute::current_archive_rows(
                archive,
                topics,
                day,
                span,
                opts.lookback_days(),
                shard,
            )
            .await
            {
                Ok(n) if n != part_rows => due.push((day, "late data")),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%day, error = %e, "cannot count the archive of a final day");
                }
            }
        }
    }
    Ok(due)
}

/// Runs one tick as of `now_ms`; returns each day's outcome (a day that may not turn
/// final yet is a [`RecomputeError::Refused`]).
///
/// # Errors
///
/// When the due days cannot be determined.
pub async fn tick(
    cfg: &Config,
    pool: &Pool,
    archive: &Archive,
    shard: Shard,
    now_ms: i64,
    kind: TickKind,
) -> anyhow::Result<Vec<(NaiveDate, Result<DaySummary, RecomputeError>)>> {
    let mut out = Vec::new();
    let opts = Options {
        shard,
        ..Options::from_config(cfg)
    };
    // Runs a killed process left `running` are failed runs: recorded so (the alert
    // fires), then retried below like any failed run.
    runs::fail_abandoned(pool, horizon_start(now_ms)).await?;
    for (day, why) in due_days(cfg, pool, archive, now_ms, shard, kind).await? {
        tracing::info!(%day, %shard, reason = why, "recomputing");
        let opts = Options {
            rewrite_final_zones: why != CLOSED_NOT_FINAL,
            ..opts
        };
        let r =
            recompute::run_day(pool, archive, cfg, day, opts, now_ms, Arc::new(|_, _| {})).await;
        match &r {
            Ok(s) => {
                tracing::info!(%day, %shard, finality = %s.finality, zones = ?s.final_zones, parts_done = s.parts_done, rows = s.output_rows, seconds = s.seconds, "day recomputed");
                if !s.final_zones.is_empty() {
                    reconcile::after_final(cfg, pool, day, &s.final_zones).await;
                }
            }
            Err(RecomputeError::Refused(why)) => {
                tracing::info!(%day, %why, "not final yet");
            }
            Err(e) => {
                tracing::error!(%day, error = %e, "recompute failed; the next tick retries it");
            }
        }
        out.push((day, r));
    }
    match reconcile::pending_days(pool, horizon_start(now_ms)).await {
        Ok(days) => {
            for (day, zones) in days {
                reconcile::after_final(cfg, pool, day, &zones).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list the days awaiting reconciliation"),
    }
    export_gauges(pool, now_ms).await;
    Ok(out)
}

/// The two cron schedules of the batch section, in the platform's time zone.
struct Schedules {
    closing: cron::Schedule,
    late: cron::Schedule,
    tz: chrono_tz::Tz,
}

impl Schedules {
    fn of(cfg: &Config) -> anyhow::Result<Schedules> {
        let parse = |key: &str, s: &str| {
            common::config::cron_schedule(s).with_context(|| format!("batch.{key} `{s}`"))
        };
        Ok(Schedules {
            closing: parse("schedule", &cfg.batch.schedule)?,
            late: parse("late_data_schedule", &cfg.batch.late_data_schedule)?,
            tz: cfg
                .batch
                .platform_tz
                .parse()
                .map_err(|_| anyhow::anyhow!("batch.platform_tz `{}`", cfg.batch.platform_tz))?,
        })
    }
}

impl TickKind {
    /// The kind of a one-off tick at `now_ms` started by an outside scheduler (a
    /// Kubernetes CronJob on `batch.schedule`, which may start it late): it checks
    /// for late data when a tick of `batch.late_data_schedule` falls within the
    /// `batch.schedule` interval that ends now, so that of a day's ticks exactly one
    /// does (the check reads every input file's footer of 35 days).
    ///
    /// # Errors
    ///
    /// When a schedule or the time zone do not parse.
    pub fn for_one_off(cfg: &Config, now_ms: i64) -> anyhow::Result<TickKind> {
        let s = Schedules::of(cfg)?;
        let now = DateTime::<Utc>::from_timestamp_millis(now_ms)
            .context("the clock is out of range")?
            .with_timezone(&s.tz);
        // The interval of `batch.schedule` around now: from its last tick at or before
        // now to the next one.
        let day_before = now - chrono::Duration::days(1);
        let last = s
            .closing
            .after(&day_before)
            .take_while(|t| *t <= now)
            .last();
        let next = s.closing.after(&now).next();
        let (Some(last), Some(next)) = (last, next) else {
            // Ticks further apart than a day: every one-off tick checks.
            return Ok(TickKind { late_data: true });
        };
        let since = now - (next - last);
        let late = s.late.after(&since).next().is_some_and(|t| t <= now);
        Ok(TickKind { late_data: late })
    }
}

/// Exports the batch gauges from MySQL (the reconciliation gauges, [`DAYS_WAITING`],
/// [`RUNS_FAILED`]). Errors are logged (the next tick retries).
async fn export_gauges(pool: &Pool, now_ms: i64) {
    let from = horizon_start(now_ms);
    if let Err(e) = reconcile::export_gauges(pool, now_ms).await {
        tracing::warn!(error = %e, "could not export the reconciliation gauges");
    }
    if let Err(e) = export_run_gauges(pool, from).await {
        tracing::warn!(error = %e, "could not export the batch run gauges");
    }
}

/// Serves the batch alerts' metrics without recomputing, until `shutdown`: every
/// `batch.schedule` tick it records runs a killed worker left `running` as failed and
/// exports the gauges from MySQL ([`DAYS_WAITING`], [`RUNS_FAILED`], the
/// reconciliation gauges). For deployments whose recompute runs elsewhere in short
/// processes (`schedule --once` as a Kubernetes Indexed Job) that no scraper sees.
///
/// # Errors
///
/// When a schedule or the time zone do not parse.
pub async fn watch(
    cfg: Arc<Config>,
    pool: Pool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let s = Schedules::of(&cfg)?;
    loop {
        let now_ms = common::day::now_ms();
        if let Err(e) = runs::fail_abandoned(&pool, horizon_start(now_ms)).await {
            tracing::warn!(error = %e, "could not check for abandoned runs");
        }
        export_gauges(&pool, now_ms).await;
        let Some(next) = s.closing.upcoming(s.tz).next() else {
            anyhow::bail!("batch.schedule has no future tick")
        };
        let wait = (next.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or_default();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        // Past the tick's instant, so that `upcoming` names the next one.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
}

/// Runs ticks on the two cron schedules until `shutdown`.
///
/// # Errors
///
/// When a schedule or the time zone do not parse.
pub async fn run(
    cfg: Arc<Config>,
    pool: Pool,
    archive: Archive,
    shard: Shard,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Schedules { closing, late, tz } = Schedules::of(&cfg)?;
    export_gauges(&pool, common::day::now_ms()).await;
    let next_of = |s: &cron::Schedule| s.upcoming(tz).next().map(|t| t.with_timezone(&Utc));
    loop {
        let (Some(a), Some(b)) = (next_of(&closing), next_of(&late)) else {
            anyhow::bail!("a schedule has no future tick")
        };
        let next: DateTime<Utc> = a.min(b);
        let kind = TickKind { late_data: b <= a };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tracing::info!(next = %next, late_data = kind.late_data, "next recompute tick");
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
        if let Err(e) = tick(&cfg, &pool, &archive, shard, common::day::now_ms(), kind).await {
            tracing::error!(error = %e, "recompute tick failed; retrying at the next tick");
        }
        // Ticks that fall on the same instant run once; step past it.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn of_the_one_off_ticks_on_batch_schedule_exactly_one_a_day_checks_late_data() {
        // Defaults: a tick every 15 minutes, the late-data check at 02:30 (UTC).
        let cfg = Config::default();
        let late = |t: &str| TickKind::for_one_off(&cfg, at(t)).unwrap().late_data;
        assert!(late("2026-11-20T02:30:00Z"), "the 02:30 tick, on time");
        assert!(late("2026-11-20T02:34:10Z"), "the 02:30 tick, started late");
        assert!(!late("2026-11-20T02:29:59Z"), "before 02:30");
        assert!(!late("2026-11-20T02:45:00Z"), "the next tick, on time");
        assert!(!late("2026-11-20T02:45:30Z"), "the next tick, started late");
        assert!(!late("2026-11-20T02:15:00Z"), "the tick before");
        // Over a whole day of ticks started 20 s late, one checks.
        let day = at("2026-11-20T00:00:20Z");
        let checks = (0..96)
            .filter(|i| {
                TickKind::for_one_off(&cfg, day + i * 15 * 60_000)
                    .unwrap()
                    .late_data
            })
            .count();
        assert_eq!(checks, 1);
    }
}
