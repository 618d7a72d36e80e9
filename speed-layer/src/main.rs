//! `speed-layer`: the speed layer service and its tools.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use common::config::Config;
use speed_layer::clickhouse_sink;
use speed_layer::tools::replay::{self, ReplayOptions, Shift};

#[derive(Parser)]
#[command(
    version,
    about = "Speed layer of the ad-metrics platform: Kafka -> 10 s windows -> Redis (+ ClickHouse)"
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
    /// Consume both input topics and keep Redis (and ClickHouse) up to date.
    Run,
    /// Replay the data set into MySQL (dimensions) and Kafka (events).
    Replay {
        /// The TalkingData CSV file.
        #[arg(long, default_value = "../shared/data/talkingdata_train_sample.csv")]
        data: PathBuf,
        /// Event-time speed-up (60 = an hour per minute); 0 = as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        speed: f64,
        /// Date shift: `auto` (end near now, nothing in the future), `today` (last day is
        /// today; later events wait for their time), or a number of days.
        #[arg(long, default_value = "auto")]
        shift: Shift,
        /// Replay only the first N data rows.
        #[arg(long)]
        limit: Option<usize>,
        /// Copy N of the data set (N > 0): event ids get the prefix `c<N>-`, so that it
        /// counts as new data when replayed with another `--shift`.
        #[arg(long, default_value_t = 0)]
        copy: u32,
    },
    /// Load ClickHouse batches spilled to disk, deleting each once written.
    ReplaySpill,
    /// Per-partition progress: stored offsets vs topic ends, open windows, waiting effects.
    Status {
        /// Wait until every partition has caught up and written every window.
        #[arg(long)]
        wait: bool,
        /// Longest wait, seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Create what the speed layer needs: Kafka topics, MySQL and ClickHouse tables.
    Migrate,
    /// The dead-letter topic: list rejected messages by reason, re-drive fixed ones.
    Dlq {
        #[command(subcommand)]
        which: DlqCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Print every selected record as a JSON line, then the counts by reason.
    List {
        #[command(flatten)]
        select: DlqSelect,
        /// Only the counts by reason.
        #[arg(long)]
        summary: bool,
    },
    /// Produce the selected records back to their source topic (same key and bytes).
    Redrive {
        #[command(flatten)]
        select: DlqSelect,
        /// Show what would be re-driven, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct DlqSelect {
    /// Only records with this reason (repeatable), e.g. `unknown_ad`.
    #[arg(long = "reason")]
    reasons: Vec<String>,
    /// Only the record at this DLQ position `partition:offset` (repeatable).
    #[arg(long = "at")]
    at: Vec<String>,
}

impl From<DlqSelect> for speed_layer::tools::dlq_admin::Selection {
    fn from(s: DlqSelect) -> Self {
        speed_layer::tools::dlq_admin::Selection {
            reasons: s.reasons,
            at: s.at,
        }
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Core pipeline throughput on one core over JSON-lines files (no broker).
    Pipeline {
        /// JSON-lines files of the standard load (`gen_events.py --format jsonl`).
        files: Vec<PathBuf>,
        /// Close windows and assemble a flush every N events.
        #[arg(long, default_value_t = 50_000)]
        flush_every: usize,
        /// Timed runs (the figure is their median); the state is measured once.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Only measure the state and print its figures (the benchmark runs this in a
        /// child process under fixed malloc thresholds).
        #[arg(long, hide = true)]
        state_only: bool,
    },
    /// Throughput producer -> Kafka -> speed layer -> Redis next to a bare consumer on
    /// the same topic, and freshness at fixed rates; in a namespace of its own.
    E2e {
        /// The data set (its busiest advertiser's users and ads are used).
        #[arg(long, default_value = "../shared/data/talkingdata_train_sample.csv")]
        data: PathBuf,
        /// Clicks of the throughput phase.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Fixed rates of the freshness phases, clicks per second (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "2000,20000")]
        rates: Vec<u64>,
        /// Seconds each freshness phase produces.
        #[arg(long, default_value_t = 30)]
        rate_seconds: u64,
        /// Longest wait for the clicks of a phase to show up in Redis, seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// ClickHouse sink insert throughput (drops and re-creates `clickhouse.database`).
    Sink {
        /// JSON-lines files of the standard load.
        files: Vec<PathBuf>,
        /// Detail rows to insert.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Where to write the batches and the `clickhouse-client` file.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    platform::telemetry::init_tracing();
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    if let Command::Bench {
        which:
            BenchCommand::Pipeline {
                files,
                flush_every,
                runs,
                state_only,
            },
    } = &cli.command
    {
        if *state_only {
            let state = speed_layer::tools::bench::state_only(files, *flush_every, &cfg)?;
            println!("{}", serde_json::to_string(&state)?);
            return Ok(());
        }
        // One core: the figure is per core, and the benchmark is single-threaded.
        let figures = speed_layer::tools::bench::run(files, *flush_every, *runs, &cfg)?;
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async_main(cli.command, cfg))
}

async fn async_main(command: Command, cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::Run => {
            speed_layer::service::run(Arc::new(cfg), platform::shutdown::on_signal()).await
        }
        Command::Replay {
            data,
            speed,
            shift,
            limit,
            copy,
        } => {
            let summary = replay::run(
                &cfg,
                &ReplayOptions {
                    data,
                    speed,
                    shift,
                    limit,
                    copy,
                },
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
        Command::ReplaySpill => {
            let (files, rows) =
                clickhouse_sink::replay_spill(&cfg.clickhouse, &cfg.state_dir).await?;
            println!("{{\"files\": {files}, \"rows\": {rows}}}");
            Ok(())
        }
        Command::Status { wait, timeout } => {
            let s = if wait {
                speed_layer::tools::status::wait_settled(
                    &cfg,
                    std::time::Duration::from_secs(timeout),
                )
                .await?
            } else {
                speed_layer::tools::status::read(&cfg).await?
            };
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(())
        }
        Command::Dlq {
            which: DlqCommand::List { select, summary },
        } => {
            let entries = speed_layer::tools::dlq_admin::list(&cfg.kafka, &select.into())?;
            if !summary {
                for e in &entries {
                    println!("{}", serde_json::to_string(e)?);
                }
            }
            let counts = speed_layer::tools::dlq_admin::by_reason(&entries);
            println!(
                "{}",
                serde_json::json!({ "total": entries.len(), "by_reason": counts })
            );
            Ok(())
        }
        Command::Dlq {
            which: DlqCommand::Redrive { select, dry_run },
        } => {
            anyhow::ensure!(
                !select.reasons.is_empty() || !select.at.is_empty(),
                "say what to re-drive: --reason REASON and/or --at PARTITION:OFFSET (see `speed-layer dlq list`)"
            );
            let sent =
                speed_layer::tools::dlq_admin::redrive(&cfg.kafka, &select.into(), dry_run).await?;
            for e in &sent {
                println!("{}", serde_json::to_string(e)?);
            }
            println!(
                "{}",
                serde_json::json!({ "redriven": if dry_run { 0 } else { sent.len() }, "selected": sent.len(), "dry_run": dry_run })
            );
            Ok(())
        }
        Command::Migrate => speed_layer::tools::migrate::run(&cfg).await,
        Command::Bench {
            which:
                BenchCommand::E2e {
                    data,
                    events,
                    rates,
                    rate_seconds,
                    timeout,
                },
        } => {
            let opts = speed_layer::tools::bench_e2e::E2eOptions {
                data,
                events,
                rates,
                rate_duration: std::time::Duration::from_secs(rate_seconds),
                timeout: std::time::Duration::from_secs(timeout),
            };
            let figures = speed_layer::tools::bench_e2e::run(&cfg, &opts).await?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Bench {
            which: BenchCommand::Sink { files, rows, dir },
        } => {
            let figures = speed_layer::tools::bench_sink::run(&cfg, &files, rows, &dir).await?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::Bench { .. } => unreachable!("handled before the runtime starts"),
    }
}
