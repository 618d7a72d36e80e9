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

use std::path::PathBuf;
use std::time::Instant;

use common::config::Config;
use common::decode::{Limits, decode};
use common::dims::StaticDimensions;
use common::event::{EventKind, TopicKind};
use serde::Serialize;

use crate::pipeline::clicks::APPROX_BYTES_PER_CLICK;
use crate::pipeline::processor::{Processor, ProcessorConfig};

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineFigures {
    /// Events processed.
    pub events: usize,
    /// Wall seconds of the processing loop.
    pub seconds: f64,
    /// Events per second on one core.
    pub events_per_second: f64,
    /// Nanoseconds per event.
    pub ns_per_event: f64,
    /// Events accepted, duplicates, rejected.
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Rejected events (dimension join).
    pub rejected: u64,
    /// Events that failed decoding or validation, by reason code.
    pub invalid: std::collections::BTreeMap<&'static str, u64>,
    /// Effects direct / indirect / unattributed.
    pub attributed: [u64; 3],
    /// Clicks held in state at the end.
    pub clicks_tracked: usize,
    /// Approximate bytes per tracked click (struct sizes; see `state_bytes_per_click`).
    pub approx_bytes_per_click: usize,
    /// Resident memory growth over the run divided by clicks tracked (whole state, incl.
    /// dedup ids and hash-table slack).
    pub state_bytes_per_click: f64,
    /// Peak resident set size of the process, MiB.
    pub peak_rss_mib: f64,
}

/// Runs the pipeline benchmark over `files`.
///
/// # Errors
///
/// When a file cannot be read.
pub fn run(files: &[PathBuf], flush_every: usize, cfg: &Config) -> anyhow::Result<PipelineFigures> {
    // The load mixes both topics in one file; route lines by kind as producers do,
    // before the clock starts.
    let mut lines: Vec<(TopicKind, Vec<u8>)> = Vec::new();
    for f in files {
        let text = std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        for l in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            lines.push((topic_of(l), l.to_vec()));
        }
    }
    let (mut proc, dims, limits) = load_processor(cfg, false);
    let now = common::day::now_ms();
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut offsets = [0_i64; 2];
    let mut invalid = std::collections::BTreeMap::new();
    for (i, (topic, line)) in lines.iter().enumerate() {
        let topic = *topic;
        let off = offsets[topic.index()];
        offsets[topic.index()] += 1;
        match decode(line, topic, now, &limits) {
            Ok(e) => _ = std::hint::black_box(proc.process(topic, off, &e, &dims)),
            Err(r) => *invalid.entry(r.reason.as_str()).or_insert(0) += 1,
        }
        proc.consumed(topic, off);
        if (i + 1) % flush_every == 0 {
            std::hint::black_box(proc.take_flush(false));
        }
    }
    std::hint::black_box(proc.take_flush(true));
    let seconds = started.elapsed().as_secs_f64();
    let rss_after = rss_kib();
    let s = proc.stats();
    let clicks = proc.clicks_len();
    #[allow(clippy::cast_precision_loss)]
    Ok(PipelineFigures {
        events: lines.len(),
        seconds,
        events_per_second: lines.len() as f64 / seconds,
        ns_per_event: seconds * 1e9 / lines.len().max(1) as f64,
        accepted: s.accepted.iter().sum(),
        duplicates: s.duplicates,
        rejected: s.rejected,
        invalid,
        attributed: s.attributed,
        clicks_tracked: clicks,
        approx_bytes_per_click: APPROX_BYTES_PER_CLICK,
        state_bytes_per_click: (rss_after.saturating_sub(rss_before) as f64 * 1024.0)
            / clicks.max(1) as f64,
        peak_rss_mib: peak_rss_kib() as f64 / 1024.0,
    })
}

/// A processor set up for the standard load, its dimensions, and validation limits
/// that accept the load's historical event times (as a replay would).
pub(crate) fn load_processor(
    cfg: &Config,
    detail_rows: bool,
) -> (Processor, StaticDimensions, Limits) {
    let mut pcfg = ProcessorConfig::from_config(0, cfg);
    pcfg.detail_rows = detail_rows;
    // Advertiser ids from the load's default (1 000) with room for larger runs.
    let dims = StaticDimensions::standard_load(10_001);
    let limits = Limits {
        max_age_ms: i64::MAX,
        max_future_ms: i64::MAX / 2,
        ..cfg.validation.limits()
    };
    (Processor::new(pcfg), dims, limits)
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
