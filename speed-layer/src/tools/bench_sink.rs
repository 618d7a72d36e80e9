//! `speed-layer bench sink`: the ClickHouse sink's insert throughput, to compare with
//! `clickhouse-client` loading the same rows in one batch on the same server.
//!
//! Detail rows are made by the speed layer's own core from the standard load (JSON
//! lines), written as the sink's journal batches (RowBinary, `batch_rows` rows each), and inserted
//! one batch after the other with the sink's insert function (RowBinary over HTTP,
//! retries), as the running sink does. Only the inserts are timed. The same rows are
//! also written as one `JSONEachRow` file for `clickhouse-client`; the command prints
//! how to load it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use common::config::Config;
use common::decode::decode;
use serde::Serialize;

use crate::clickhouse_sink::{self, DETAIL_TABLE};
use crate::pipeline::detail::DetailRow;

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct SinkFigures {
    /// Rows inserted.
    pub rows: usize,
    /// Batches (one INSERT each).
    pub batches: usize,
    /// Seconds spent inserting.
    pub seconds: f64,
    /// Rows per second.
    pub rows_per_second: f64,
    /// The same rows as one `JSONEachRow` file, for `clickhouse-client`.
    pub client_file: PathBuf,
    /// A command that loads it into the same table.
    pub client_command: String,
}

/// Makes up to `rows` detail rows from `files`, writes them under `dir`, and times
/// their insertion into `cfg.clickhouse` (its database is dropped and re-created).
///
/// # Errors
///
/// When a file cannot be read or written, or ClickHouse refuses a batch.
pub async fn run(
    cfg: &Config,
    files: &[PathBuf],
    rows: usize,
    dir: &Path,
) -> anyhow::Result<SinkFigures> {
    let details = detail_rows(cfg, files, rows)?;
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let per_batch = cfg.clickhouse.batch_rows.max(1);
    let mut batches = Vec::new();
    for (i, chunk) in details.chunks(per_batch).enumerate() {
        let path = dir.join(format!("batch-{i:06}.rowbinary"));
        let mut bytes = Vec::new();
        for r in chunk {
            r.as_ref().encode(&mut bytes);
        }
        std::fs::write(&path, bytes).with_context(|| path.display().to_string())?;
        batches.push(path);
    }
    let client_file = dir.join("clickhouse-client.jsonl");
    write_client_file(&details, &client_file)?;

    let ch = &cfg.clickhouse;
    clickhouse_sink::server_client(ch)
        .query(&format!(
            "DROP DATABASE IF EXISTS `{}`",
            clickhouse_sink::ident(&ch.database)
        ))
        .execute()
        .await?;
    clickhouse_sink::migrate(ch).await?;
    let client = clickhouse_sink::client(ch);
    let started = Instant::now();
    let mut inserted = 0;
    for b in &batches {
        inserted += clickhouse_sink::insert_file(&client, ch, b)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", b.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    Ok(SinkFigures {
        rows: inserted,
        batches: batches.len(),
        seconds,
        rows_per_second: inserted as f64 / seconds.max(1e-9),
        client_command: format!(
            "clickhouse-client --database {} --query 'INSERT INTO {DETAIL_TABLE} FORMAT JSONEachRow' < {}",
            ch.database,
            client_file.display()
        ),
        client_file,
    })
}

/// Advertisers of the standard load (its default of 1 000, with room for larger runs).
const ADVERTISERS: i64 = 10_001;

/// Runs the speed layer's core over the load and keeps its detail rows.
fn detail_rows(cfg: &Config, files: &[PathBuf], rows: usize) -> anyhow::Result<Vec<DetailRow>> {
    let (mut proc, dims, limits) = crate::tools::bench::load_processor(cfg, true, ADVERTISERS);
    let now = common::day::now_ms();
    let mut out = Vec::with_capacity(rows);
    let mut offsets = [0_i64; 2];
    'files: for f in files {
        let text = std::fs::read(f).with_context(|| f.display().to_string())?;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let topic = crate::tools::bench::topic_of(line);
            let off = offsets[topic.index()];
            offsets[topic.index()] += 1;
            if let Ok(e) = decode(line, topic, now, &limits) {
                proc.process(topic, off, &e, &dims);
            }
            out.extend(proc.take_details().decoded());
            if out.len() >= rows {
                break 'files;
            }
        }
    }
    proc.take_flush(true);
    out.extend(proc.take_details().decoded());
    out.truncate(rows);
    Ok(out)
}

/// The rows as `JSONEachRow` with `Date` and `DateTime` as text, which every
/// `clickhouse-client` version parses.
fn write_client_file(rows: &[DetailRow], path: &Path) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        let mut v = serde_json::to_value(r)?;
        let day = common::day::date_of(i32::from(r.day));
        v["day"] = day.to_string().into();
        v["event_time"] = chrono::DateTime::from_timestamp(i64::from(r.event_time), 0)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
            .into();
        serde_json::to_writer(&mut f, &v)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(())
}
