//! `batch-layer`: the archiver, the daily recompute (scheduled or by hand), and the
//! benchmark.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use batch_layer::archive::store;
use batch_layer::recompute::{self, Options, Shard};
use chrono::NaiveDate;
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
    /// Recompute one day or a range (backfill), with a progress bar.
    Recompute {
        /// One day (YYYY-MM-DD).
        #[arg(long, conflicts_with_all = ["from", "to"])]
        day: Option<NaiveDate>,
        /// First day of a range.
        #[arg(long, requires = "to")]
        from: Option<NaiveDate>,
        /// Last day of a range (inclusive).
        #[arg(long, requires = "from")]
        to: Option<NaiveDate>,
        /// This worker's share of a split run, `i/N` (0-based): the Kafka partitions p
        /// with p mod N = i. The day turns final when all N parts are written.
        #[arg(long, default_value = "0/1")]
        shard: Shard,
    },
    /// Run the nightly schedule (`batch.schedule`); `--once` runs one tick now.
    Schedule {
        /// Run one tick and exit.
        #[arg(long)]
        once: bool,
        /// This worker's share of a split run, `i/N` (0-based): the Kafka partitions p
        /// with p mod N = i. The day turns final when all N parts are written.
        #[arg(long, default_value = "0/1")]
        shard: Shard,
    },
    /// Benchmarks on the standard load.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
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
        Command::Recompute {
            day,
            from,
            to,
            shard,
        } => {
            let days: Vec<NaiveDate> = match (day, from, to) {
                (Some(d), _, _) => vec![d],
                (None, Some(f), Some(t)) if f <= t => {
                    f.iter_days().take_while(|d| *d <= t).collect()
                }
                (None, Some(f), Some(t)) => anyhow::bail!("--from {f} is after --to {t}"),
                _ => anyhow::bail!("give --day, or --from and --to"),
            };
            let pool = common::db::pool(&cfg.mysql)?;
            common::db::migrate(&pool).await.context("MySQL schema")?;
            let archive = store::open(&cfg.batch)?;
            let bar = ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} partitions {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let (mut read, mut written, mut failed) = (0_u64, 0_u64, Vec::new());
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
                    topics,
                    *d,
                    Options {
                        shard,
                        ..Options::from_config(&cfg)
                    },
                    progress,
                )
                .await
                {
                    Ok(s) => {
                        read += s.input_rows;
                        written += s.output_rows;
                        bar.suspend(|| {
                            println!(
                                "{d}: {} (part {}, {}/{} parts written) — {} input rows, {} rows written, {:.1} s",
                                s.finality, s.shard, s.parts_done, shard.count, s.input_rows, s.output_rows, s.seconds
                            );
                        });
                    }
                    Err(e) => {
                        bar.suspend(|| println!("{d}: FAILED — {e}"));
                        failed.push(format!("{d}: {e}"));
                    }
                }
            }
            bar.finish_and_clear();
            println!(
                "recomputed {} day(s), {} failed: {read} rows read, {written} rows written, {:.1} s",
                days.len() - failed.len(),
                failed.len(),
                started.elapsed().as_secs_f64()
            );
            pool.disconnect().await.ok();
            anyhow::ensure!(
                failed.is_empty(),
                "failed (recorded as failed in batch_runs):\n  {}",
                failed.join("\n  ")
            );
            Ok(())
        }
        Command::Schedule { once, shard } => {
            let pool = common::db::pool(&cfg.mysql)?;
            common::db::migrate(&pool).await.context("MySQL schema")?;
            let archive = store::open(&cfg.batch)?;
            if once {
                let out = batch_layer::schedule::tick(&cfg, &pool, &archive, shard).await?;
                for (d, r) in &out {
                    match r {
                        Ok(s) => println!("{d}: {} ({} rows)", s.finality, s.output_rows),
                        Err(e) => println!("{d}: FAILED — {e}"),
                    }
                }
                Ok(())
            } else {
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
