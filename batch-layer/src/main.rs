//! `batch-layer`: the archiver, the daily recompute (scheduled or by hand), and the
//! benchmark.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use batch_layer::archive::store;
use batch_layer::recompute::{self, Options, RecomputeError, Shard};
use batch_layer::schedule::TickKind;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand};
use common::config::Config;
use indicatif::{ProgressBar, ProgressStyle};
use metrics_exporter_prometheus::PrometheusBuilder;

#[derive(Parser)]
#[command(
    version,
    about = "Batch layer of the ad-metrics platform: Parquet archive and exact daily recompute"
)]
struct Cli {
    /// Configuration file (TOML); `ADMETRICS__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "ADMETRICS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Archive both input topics to Parquet (a consumer group of its own).
    Archive {
        /// Address of the Prometheus endpoint.
        #[arg(long, default_value = "127.0.0.1:9102")]
        metrics_listen: String,
    },
    /// Recompute one day or a range (backfill), with a progress bar. Only time zones
    /// whose day has closed (end + `batch.late_allowance`) and whose archive is complete
    /// turn final; a day still open or waiting for the archive is refused (exit 1).
    Recompute {
        #[command(flatten)]
        days: DaysArg,
        /// Evaluate the rules as of this past instant (RFC 3339) instead of now: what
        /// a run at that time would have finalized. Never later than the clock.
        #[arg(long)]
        as_of: Option<DateTime<Utc>>,
        /// This worker's share of a split run, `i/N` (0-based): the Kafka partitions p
        /// with p mod N = i. The day turns final when all N parts are written.
        #[arg(long, default_value = "0/1")]
        shard: Shard,
    },
    /// Run the schedule (`batch.schedule`: finalize closed days; `batch.late_data_schedule`:
    /// also re-check final days for late data); `--once` runs one full tick now.
    Schedule {
        /// Run one tick (closed days, failed runs and late data) and exit.
        #[arg(long)]
        once: bool,
        /// With `--once`: as of this past instant (RFC 3339) instead of now.
        #[arg(long, requires = "once")]
        as_of: Option<DateTime<Utc>>,
        /// Address of the Prometheus endpoint (reconciliation gauges).
        #[arg(long, default_value = "127.0.0.1:9103")]
        metrics_listen: String,
        /// This worker's share of a split run, `i/N` (0-based): the Kafka partitions p
        /// with p mod N = i. The day turns final when all N parts are written.
        #[arg(long, default_value = "0/1")]
        shard: Shard,
    },
    /// How far the archive is complete, per topic and partition (what a recompute
    /// checks before a day may turn final); `--wait` until every partition is archived
    /// to its end offset.
    ArchiveStatus {
        /// Wait until every partition is archived to its end offset.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 1).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Compare the speed layer's numbers with the final ones again for final days
    /// (the `reconciliation` table); prints what differs. Exit 1 when a count or sum
    /// differs.
    Reconcile {
        #[command(flatten)]
        days: DaysArg,
    },
    /// Benchmarks on the standard load.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

/// `--day D` or `--from A --to B`.
#[derive(clap::Args)]
struct DaysArg {
    /// One day (YYYY-MM-DD).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    day: Option<NaiveDate>,
    /// First day of a range.
    #[arg(long, requires = "to")]
    from: Option<NaiveDate>,
    /// Last day of a range (inclusive).
    #[arg(long, requires = "from")]
    to: Option<NaiveDate>,
}

impl DaysArg {
    fn days(&self) -> anyhow::Result<Vec<NaiveDate>> {
        match (self.day, self.from, self.to) {
            (Some(d), _, _) => Ok(vec![d]),
            (None, Some(f), Some(t)) if f <= t => {
                Ok(f.iter_days().take_while(|d| *d <= t).collect())
            }
            (None, Some(f), Some(t)) => anyhow::bail!("--from {f} is after --to {t}"),
            _ => anyhow::bail!("give --day, or --from and --to"),
        }
    }
}

/// The clock of a run: now, or `--as-of` (which may not be in the future, so that no
/// option makes a day final before it has closed).
fn clock(as_of: Option<DateTime<Utc>>) -> anyhow::Result<i64> {
    let now = common::day::now_ms();
    match as_of {
        None => Ok(now),
        Some(t) if t.timestamp_millis() <= now => Ok(t.timestamp_millis()),
        Some(t) => anyhow::bail!(
            "--as-of {t} is in the future (now is {}): a run can look back, never ahead",
            common::day::rfc3339_ms(now)
        ),
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Convert `gen_events.py` Parquet files into the archive layout (not timed).
    Prepare {
        /// Directory of `events-YYYY-MM-DD.parquet` files.
        #[arg(long)]
        input: PathBuf,
        /// Archive directory to write.
        #[arg(long)]
        archive: PathBuf,
        /// Partitions to split users into.
        #[arg(long, default_value_t = 8)]
        partitions: u64,
    },
    /// Recompute one day of a prepared archive and print throughput and peak memory.
    Run {
        /// Archive directory.
        #[arg(long)]
        archive: PathBuf,
        /// Day to recompute.
        #[arg(long)]
        day: NaiveDate,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Advertisers in the load (`gen_events.py --advertisers`).
        #[arg(long, default_value_t = 1000)]
        advertisers: i64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init_tracing();
    let cli = Cli::parse();
    let cfg = Arc::new(Config::load(cli.config.as_deref())?);
    let topics = [
        cfg.kafka.traffic_topic.clone(),
        cfg.kafka.effects_topic.clone(),
    ];
    let topics = [topics[0].as_str(), topics[1].as_str()];
    match cli.command {
        Command::Archive { metrics_listen } => {
            let addr = common::telemetry::listen_addr("--metrics-listen", &metrics_listen)?;
            PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .context("prometheus exporter")?;
            let archive = store::open(&cfg.batch)?;
            batch_layer::archiver::run(Arc::clone(&cfg), archive, common::shutdown::on_signal())
                .await
        }
        Command::Recompute { days, as_of, shard } => {
            let days = days.days()?;
            let now_ms = clock(as_of)?;
            let pool = common::db::pool(&cfg.mysql)?;
            common::db::migrate(&pool).await.context("MySQL schema")?;
            let archive = store::open(&cfg.batch)?;
            let bar = ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} partitions {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let (mut read, mut written, mut failed, mut refused) =
                (0_u64, 0_u64, Vec::new(), Vec::new());
            let started = std::time::Instant::now();
            for d in &days {
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
                    &cfg,
                    *d,
                    Options {
                        shard,
                        ..Options::from_config(&cfg)
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
                                batch_layer::reconcile::after_final(&cfg, &pool, *d, &s.final_zones)
                                    .await
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
        Command::Schedule {
            once,
            as_of,
            metrics_listen,
            shard,
        } => {
            let pool = common::db::pool(&cfg.mysql)?;
            common::db::migrate(&pool).await.context("MySQL schema")?;
            let archive = store::open(&cfg.batch)?;
            if once {
                let now_ms = clock(as_of)?;
                let kind = TickKind { late_data: true };
                let out =
                    batch_layer::schedule::tick(&cfg, &pool, &archive, shard, now_ms, kind).await?;
                for (d, r) in &out {
                    match r {
                        Ok(s) => println!(
                            "{d}: {} ({} rows; final zones: {})",
                            s.finality,
                            s.output_rows,
                            s.final_zones.join(", ")
                        ),
                        Err(RecomputeError::Refused(why)) => println!("{d}: NOT FINAL — {why}"),
                        Err(e) => println!("{d}: FAILED — {e}"),
                    }
                }
                Ok(())
            } else {
                let addr = common::telemetry::listen_addr("--metrics-listen", &metrics_listen)?;
                PrometheusBuilder::new()
                    .with_http_listener(addr)
                    .install()
                    .context("prometheus exporter")?;
                batch_layer::schedule::run(
                    Arc::clone(&cfg),
                    pool,
                    archive,
                    shard,
                    common::shutdown::on_signal(),
                )
                .await
            }
        }
        Command::ArchiveStatus { wait, timeout } => {
            let archive = store::open(&cfg.batch)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                let now = common::day::now_ms();
                let c =
                    batch_layer::finality::archive_completeness(&cfg, &archive, Shard::WHOLE, now)
                        .await?;
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
                        "timed out after {timeout} s with partitions behind: {}",
                        behind.join("; ")
                    );
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        Command::Reconcile { days } => {
            let days = days.days()?;
            let pool = common::db::pool(&cfg.mysql)?;
            common::db::migrate(&pool).await.context("MySQL schema")?;
            let speed = batch_layer::reconcile::speed_reader(&cfg).await?;
            let finals = batch_layer::finality::final_zones_since(&pool, days[0]).await?;
            let mut differing = 0;
            for d in &days {
                let Some(zones) = finals.get(d) else {
                    println!("{d}: not final; nothing to reconcile");
                    continue;
                };
                let advertisers =
                    batch_layer::reconcile::advertisers_of_zones(&pool, zones).await?;
                let r =
                    batch_layer::reconcile::reconcile_day(&pool, &speed, *d, &advertisers).await?;
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
        Command::Bench {
            which:
                BenchCommand::Prepare {
                    input,
                    archive,
                    partitions,
                },
        } => {
            let mut b = cfg.batch.clone();
            b.archive_url = archive.display().to_string();
            let a = store::open(&b)?;
            let n = batch_layer::bench::prepare(&input, &a, partitions, topics).await?;
            println!("{{\"rows\": {n}}}");
            Ok(())
        }
        Command::Bench {
            which:
                BenchCommand::Run {
                    archive,
                    day,
                    threads,
                    advertisers,
                },
        } => {
            let mut b = cfg.batch.clone();
            b.archive_url = archive.display().to_string();
            let a = store::open(&b)?;
            let mut opts = Options::from_config(&cfg);
            if let Some(t) = threads {
                opts.threads = t;
            }
            let f = batch_layer::bench::run(&a, topics, day, opts, advertisers).await?;
            println!("{}", serde_json::to_string_pretty(&f)?);
            Ok(())
        }
    }
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
