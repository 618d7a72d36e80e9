//! `batch-layer`: the archiver, the daily recompute (scheduled or by hand), and the
//! benchmark.

use std::path::PathBuf;
use std::sync::Arc;

use batch_layer::recompute::Shard;
use batch_layer::schedule::TickKind;
use batch_layer::{service, tools};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand};
use common::config::Config;

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
        /// Run one tick (closed days, failed runs and, see `--late-data`, late data)
        /// and exit; exit 1 when a day's run failed.
        #[arg(long, conflicts_with = "metrics_only")]
        once: bool,
        /// With `--once`: whether the tick checks final days for late data (it reads
        /// every input file's footer of the horizon): `always`, or `on-schedule` when
        /// a tick of `batch.late_data_schedule` fell within the `batch.schedule`
        /// interval that ends now (for a job started on `batch.schedule` from outside,
        /// such as a Kubernetes CronJob, so that one tick a day checks).
        #[arg(long, value_enum, default_value_t = LateData::Always, requires = "once")]
        late_data: LateData,
        /// Never recompute: record abandoned runs failed and serve the batch gauges
        /// (days waiting, runs failed, reconciliation) from MySQL on every
        /// `batch.schedule` tick, for deployments whose recompute runs as short
        /// `--once` processes (a Kubernetes Indexed Job) that no scraper sees.
        #[arg(long)]
        metrics_only: bool,
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
        /// Also write the day's rows as CSV files in this directory, in the columns of
        /// the DuckDB baseline's tables (`ad_metrics.csv`, `unattributed.csv`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// When a one-off tick checks final days for late data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LateData {
    /// Every `--once` tick.
    Always,
    /// When a tick of `batch.late_data_schedule` fell within the `batch.schedule`
    /// interval that ends now.
    OnSchedule,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init_tracing();
    let cli = Cli::parse();
    let cfg = Arc::new(Config::load(cli.config.as_deref())?);
    match cli.command {
        Command::Archive { metrics_listen } => {
            service::archive(cfg, &metrics_listen, platform::shutdown::on_signal()).await
        }
        Command::Recompute { days, as_of, shard } => {
            tools::recompute_days(&cfg, &days.days()?, clock(as_of)?, shard).await
        }
        Command::Schedule {
            once: true,
            as_of,
            shard,
            late_data,
            ..
        } => {
            let now = clock(as_of)?;
            let kind = match late_data {
                LateData::Always => TickKind { late_data: true },
                LateData::OnSchedule => TickKind::for_one_off(&cfg, now)?,
            };
            tools::schedule_once(&cfg, now, shard, kind).await
        }
        Command::Schedule {
            metrics_only: true,
            metrics_listen,
            ..
        } => service::watch_runs(cfg, &metrics_listen, platform::shutdown::on_signal()).await,
        Command::Schedule {
            metrics_listen,
            shard,
            ..
        } => service::schedule(cfg, &metrics_listen, shard, platform::shutdown::on_signal()).await,
        Command::ArchiveStatus { wait, timeout } => {
            tools::archive_status(&cfg, wait, std::time::Duration::from_secs(timeout)).await
        }
        Command::Reconcile { days } => tools::reconcile_days(&cfg, &days.days()?).await,
        Command::Bench {
            which:
                BenchCommand::Prepare {
                    input,
                    archive,
                    partitions,
                },
        } => {
            let n = tools::bench_prepare(&cfg, &input, &archive, partitions).await?;
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
                    out,
                },
        } => {
            let f =
                tools::bench_run(&cfg, &archive, day, threads, advertisers, out.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&f)?);
            Ok(())
        }
    }
}
