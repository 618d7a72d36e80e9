//! `speed-layer bench pipeline`: the throughput of the broker-free core (decode ->
//! validate -> dedup -> dimension join -> attribution -> window aggregation) on one
//! core, over JSON-lines files of the standard load (`../shared/bench/gen_events.py
//! --format jsonl`), so the figure compares with other stream processors (the bench
//! README's Flink baseline).
//!
//! The files are read into memory first (I/O is not measured). Dimensions are
//! synthesised from the load's id scheme (`ad_id = advertiser * 100 + k`) into an
//! in-memory map, as the speed layer's cache holds them after warm-up. Windows are
//! closed and their deltas assembled as a flush would (without the Redis round trip)
//! every `flush_every` events, so state stays bounded as in production.
//!
//! Before the timed runs, the click index and the dedup set are each built alone from
//! the same events, in a child process, and measured as the resident memory they add
//! (issue 19's bounds: 48 bytes per tracked click, 16 per seen event id, table slack
//! included).

use std::path::PathBuf;
use std::time::Instant;

use common::config::Config;
use common::decode::{Limits, decode};
use common::dims::StaticDimensions;
use common::event::{EventKind, TopicKind};
use serde::Serialize;

use crate::pipeline::clicks::{ClickIndex, StoredClick};
use crate::pipeline::dedup::Dedup;
use crate::pipeline::enrich::{Enriched, enrich};
use crate::pipeline::processor::{Message, Processor, ProcessorConfig};

/// Figures of a benchmark: the throughput runs, then the state measured alone.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineFigures {
    /// Events processed per run.
    pub events: usize,
    /// Wall seconds of each run's processing loop.
    pub seconds: Vec<f64>,
    /// Median events per second on one core over the runs.
    pub events_per_second: f64,
    /// Nanoseconds per event at the median.
    pub ns_per_event: f64,
    /// Events accepted (last run).
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Rejected events (dimension join).
    pub rejected: u64,
    /// Events that failed decoding or validation, by reason code.
    pub invalid: std::collections::BTreeMap<&'static str, u64>,
    /// Effects direct / indirect / unattributed.
    pub attributed: [u64; 3],
    /// The attribution and dedup state, each built alone over the same events.
    pub state: StateFigures,
    /// Peak resident set size of the process, MiB.
    pub peak_rss_mib: f64,
}

/// The two bounded states, each measured as the resident memory it added while it
/// was built alone from the benchmark's events (in a process of its own, so no memory
/// freed by the throughput runs is reused), divided by what it holds at the end.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StateFigures {
    /// Clicks in the click index at the end (inside the lookback).
    pub clicks_tracked: usize,
    /// Resident memory growth per tracked click, bytes.
    pub bytes_per_click: f64,
    /// The index's own size (table with free slots, interned targets) per click.
    pub table_bytes_per_click: f64,
    /// Event ids in the dedup set at the end (inside its horizon).
    pub ids_seen: usize,
    /// Resident memory growth per seen event id, bytes.
    pub bytes_per_id: f64,
    /// The set's own size (table with free slots) per id.
    pub table_bytes_per_id: f64,
}

/// The benchmark's input: the lines of `files`, each with the topic its kind belongs
/// to (the load mixes both topics in one file; producers route by kind).
///
/// # Errors
///
/// When a file cannot be read.
pub fn read_lines(files: &[PathBuf]) -> anyhow::Result<Vec<(TopicKind, Vec<u8>)>> {
    let mut lines = Vec::new();
    for f in files {
        let text = std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        for l in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            lines.push((topic_of(l), l.to_vec()));
        }
    }
    Ok(lines)
}

/// Runs the pipeline benchmark over `files`: the state measured in a child process
/// ([`state_in_child`]), then `runs` throughput runs here, each with a fresh processor.
///
/// # Errors
///
/// When a file cannot be read or the child fails.
pub fn run(
    files: &[PathBuf],
    flush_every: usize,
    runs: usize,
    cfg: &Config,
) -> anyhow::Result<PipelineFigures> {
    let state = state_in_child(files, flush_every)?;
    let lines = read_lines(files)?;
    let advertisers = advertisers_in(&lines, cfg);
    let mut seconds = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let (secs, proc, invalid) = throughput_run(&lines, flush_every, advertisers, cfg);
        seconds.push(secs);
        last = Some((proc, invalid));
    }
    let (proc, invalid) = last.expect("at least one run");
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let s = proc.stats();
    #[allow(clippy::cast_precision_loss)]
    Ok(PipelineFigures {
        events: lines.len(),
        events_per_second: lines.len() as f64 / median,
        ns_per_event: median * 1e9 / lines.len().max(1) as f64,
        seconds,
        accepted: s.accepted.iter().sum(),
        duplicates: s.duplicates,
        rejected: s.rejected,
        invalid,
        attributed: s.attributed,
        state,
        peak_rss_mib: peak_rss_kib() as f64 / 1024.0,
    })
}

type Invalid = std::collections::BTreeMap<&'static str, u64>;

/// Messages per batch, as `crate::partition` takes them from its queue (up to 2 048).
const BATCH: usize = 1024;

/// One timed pass of the whole core over the lines.
fn throughput_run(
    lines: &[(TopicKind, Vec<u8>)],
    flush_every: usize,
    advertisers: i64,
    cfg: &Config,
) -> (f64, Processor, Invalid) {
    let (mut proc, dims, limits) = load_processor(cfg, false, advertisers);
    let now = common::day::now_ms();
    let started = Instant::now();
    let mut offsets = [0_i64; 2];
    let mut invalid = Invalid::new();
    let mut outcomes = Vec::with_capacity(BATCH);
    let mut since_flush = 0;
    // Batches as the partition task receives them from its queue.
    for chunk in lines.chunks(BATCH) {
        let mut batch = Vec::with_capacity(chunk.len());
        let mut positions = Vec::with_capacity(chunk.len());
        for (topic, line) in chunk {
            let off = offsets[topic.index()];
            offsets[topic.index()] += 1;
            positions.push((*topic, off));
            match decode(line, *topic, now, &limits) {
                Ok(e) => batch.push((*topic, off, e)),
                Err(r) => *invalid.entry(r.reason.as_str()).or_insert(0) += 1,
            }
        }
        let messages: Vec<Message<'_, '_>> = batch
            .iter()
            .map(|(topic, offset, event)| Message {
                topic: *topic,
                offset: *offset,
                event,
            })
            .collect();
        outcomes.clear();
        proc.process_batch(&messages, &dims, &mut outcomes);
        std::hint::black_box(&outcomes);
        for (topic, off) in positions {
            proc.consumed(topic, off);
        }
        since_flush += chunk.len();
        if since_flush >= flush_every {
            since_flush = 0;
            std::hint::black_box(proc.take_flush(false));
        }
    }
    std::hint::black_box(proc.take_flush(true));
    (started.elapsed().as_secs_f64(), proc, invalid)
}

/// Calls `f` with each event of `lines` as the stages after the join see it (decoded,
/// validated, enriched), with its index in the input.
fn for_each_enriched(
    lines: &[(TopicKind, Vec<u8>)],
    dims: &StaticDimensions,
    limits: &Limits,
    mut f: impl FnMut(usize, &Enriched<'_, '_>),
) {
    let now = common::day::now_ms();
    let mut offsets = [0_i64; 2];
    for (i, (topic, line)) in lines.iter().enumerate() {
        let offset = offsets[topic.index()];
        offsets[topic.index()] += 1;
        let Ok(event) = decode(line, *topic, now, limits) else {
            continue;
        };
        let msg = Message {
            topic: *topic,
            offset,
            event: &event,
        };
        if let Ok(x) = enrich(msg, dims) {
            f(i, &x);
        }
    }
}

/// Builds the click index and the dedup set alone from the events, as the processor
/// feeds them (pruned and expired at every flush), and measures what each added to
/// the resident memory. Returns the figures and the two states, which the caller keeps
/// alive so later runs cannot reuse their memory.
fn measure_state(
    lines: &[(TopicKind, Vec<u8>)],
    flush_every: usize,
    advertisers: i64,
    cfg: &Config,
) -> (StateFigures, (ClickIndex, Dedup)) {
    let (_, dims, limits) = load_processor(cfg, false, advertisers);
    let pcfg = ProcessorConfig::from_config(0, cfg);
    let before = rss_kib();
    let mut dedup = Dedup::new(pcfg.dedup_horizon_ms);
    for_each_enriched(lines, &dims, &limits, |i, x| {
        let ts = x.msg.event.ts;
        dedup.insert(x.id, ts);
        if (i + 1) % flush_every == 0 {
            dedup.expire(ts);
            drop(dedup.take_added());
        }
    });
    let dedup_rss = rss_kib().saturating_sub(before);
    let before = rss_kib();
    let mut clicks = ClickIndex::new(pcfg.rules.lookback_ms);
    for_each_enriched(lines, &dims, &limits, |i, x| {
        if let Some(c) = StoredClick::of_click(x) {
            clicks.insert(c);
        }
        if (i + 1) % flush_every == 0 {
            clicks.prune(x.msg.event.ts - pcfg.out_of_orderness_ms);
            drop(clicks.take_added());
        }
    });
    let clicks_rss = rss_kib().saturating_sub(before);
    let per = |bytes: f64, n: usize| {
        #[allow(clippy::cast_precision_loss)]
        let v = bytes / n.max(1) as f64;
        v
    };
    #[allow(clippy::cast_precision_loss)]
    let figures = StateFigures {
        clicks_tracked: clicks.len(),
        bytes_per_click: per(clicks_rss as f64 * 1024.0, clicks.len()),
        table_bytes_per_click: per(clicks.bytes() as f64, clicks.len()),
        ids_seen: dedup.len(),
        bytes_per_id: per(dedup_rss as f64 * 1024.0, dedup.len()),
        table_bytes_per_id: per(dedup.bytes() as f64, dedup.len()),
    };
    (figures, (clicks, dedup))
}

/// glibc's malloc tunables the state measurement runs under: fixed mmap and trim
/// thresholds.
///
/// By default glibc raises its mmap threshold each time a large block is freed (up to
/// 32 MiB) and then keeps freed heap memory resident; a growing table frees ever larger
/// blocks, so the flush buffers freed next to it stayed resident and read as state
/// (54 bytes per click and 18 per id here, where the tables themselves take 36 and 12).
/// With fixed thresholds the resident growth is the state's own. The throughput runs
/// keep glibc's defaults, as production does.
pub const MALLOC_TUNABLES: &str =
    "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072";

/// Measures the state in a child process (`bench pipeline --state-only`) started
/// under [`MALLOC_TUNABLES`], and reads its figures.
///
/// # Errors
///
/// When the child cannot be started, fails, or prints no figures.
pub fn state_in_child(files: &[PathBuf], flush_every: usize) -> anyhow::Result<StateFigures> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "pipeline", "--state-only", "--flush-every"])
        .arg(flush_every.to_string())
        .args(files)
        .env("GLIBC_TUNABLES", MALLOC_TUNABLES)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "state measurement failed: {}",
        out.status
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The state measurement alone (what the child of [`state_in_child`] runs).
///
/// # Errors
///
/// When a file cannot be read.
pub fn state_only(
    files: &[PathBuf],
    flush_every: usize,
    cfg: &Config,
) -> anyhow::Result<StateFigures> {
    let lines = read_lines(files)?;
    let advertisers = advertisers_in(&lines, cfg);
    Ok(measure_state(&lines, flush_every, advertisers, cfg).0)
}

/// The advertiser count of the load in `lines` (its highest id plus one), so the
/// dimensions hold what the speed layer's cache would hold after warm-up, no more.
fn advertisers_in(lines: &[(TopicKind, Vec<u8>)], cfg: &Config) -> i64 {
    let limits = historical_limits(cfg);
    lines
        .iter()
        .filter_map(|(t, l)| decode(l, *t, 0, &limits).ok())
        .map(|e| e.advertiser_id + 1)
        .max()
        .unwrap_or(1)
}

/// A processor set up for the standard load of `advertisers` advertisers, its
/// dimensions, and validation limits that accept the load's historical event times
/// (as a replay would).
pub(crate) fn load_processor(
    cfg: &Config,
    detail_rows: bool,
    advertisers: i64,
) -> (Processor, StaticDimensions, Limits) {
    let mut pcfg = ProcessorConfig::from_config(0, cfg);
    pcfg.detail_rows = detail_rows;
    let dims = fixtures::standard_load::dimensions(advertisers);
    (Processor::new(pcfg), dims, historical_limits(cfg))
}

/// The configured validation limits, but accepting the load's historical event times
/// (as a replay would).
fn historical_limits(cfg: &Config) -> Limits {
    Limits {
        max_age_ms: i64::MAX,
        max_future_ms: i64::MAX / 2,
        ..cfg.validation.limits()
    }
}

/// The topic an event of the load goes to (by its `kind`).
pub(crate) fn topic_of(line: &[u8]) -> TopicKind {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: EventKind,
    }
    serde_json::from_slice::<Kind>(line).map_or(TopicKind::Traffic, |k| k.kind.topic())
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}
