//! The ClickHouse sink of enriched detail rows (the design brief, "ClickHouse sink").
//!
//! ```text
//!  partition tasks ──push──> sink task ──append──> journal/current.jsonl
//!                  ─barrier─>   │ seal at 10 000 rows or 15 s
//!                               v
//!                     journal/batch-<n>.jsonl ──> inserter: RowBinary INSERT, retried with backoff
//!                                                   ├─ ok: delete the file
//!                                                   └─ retries spent: move to spill/, alert
//! ```
//!
//! Rows are journaled on local disk as they arrive, and a partition task's `barrier`
//! (before it stores offsets in Redis) makes them durable, so rows of events whose
//! offsets are stored are never only in memory. A sealed batch is a file: its rows
//! and their order never change between retries. After a crash, leftover journal
//! files are inserted at start. Spilled files are loaded by `speed-layer replay-spill`,
//! which deletes each file only after ClickHouse acknowledged it. Duplicates from
//! re-inserts collapse in the `ReplacingMergeTree` table (read with `FINAL`).
//!
//! Writes go to the local table named in config, never through a `Distributed` table.
//!
//! # Shards
//!
//! With `clickhouse.shards` (one HTTP URL per shard) each shard has its own local
//! tables, rollups (materialized views fire on the shard's own inserts) and its own
//! journal, retries and spill directory (`<state_dir>/clickhouse/shard-<i>/`), so a
//! shard that is down delays or spills only its rows. A row goes to shard
//! `sipHash64(event_id) % shards` ([`shard_of`]), the sharding key of the
//! `events_all` `Distributed` table: an event's duplicates always meet on one shard,
//! where `FINAL` collapses them. BI reads the `*_all` tables.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use common::config::ClickHouseConfig;
use common::telemetry::{
    CLICKHOUSE_INSERT_ERRORS, CLICKHOUSE_ROWS_SPILLED, CLICKHOUSE_ROWS_WRITTEN,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::pipeline::detail::DetailRow;

/// The detail table rows go to.
pub const DETAIL_TABLE: &str = "events";

/// The ClickHouse DDL (`deploy/sql/clickhouse.sql`).
pub const SCHEMA_SQL: &str = include_str!("../../deploy/sql/clickhouse.sql");

/// The shard (0-based, below `shards`) of the row of `event_id`: ClickHouse's
/// `sipHash64(event_id) % shards`, the `Distributed` table's sharding key.
pub fn shard_of(event_id: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    // std's SipHasher is SipHash-2-4 with a zero key, exactly ClickHouse's sipHash64;
    // it is deprecated only in favour of a randomly keyed HashMap hasher.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    std::hash::Hasher::write(&mut h, event_id.as_bytes());
    let hash = std::hash::Hasher::finish(&h);
    usize::try_from(hash % shards as u64).unwrap_or(0)
}

/// The `Distributed` tables of a sharded deployment, created on every shard.
fn distributed_statements(cfg: &ClickHouseConfig) -> Vec<String> {
    let (cluster, db) = (ident(&cfg.cluster), ident(&cfg.database));
    [
        ("events", ", sipHash64(event_id)"),
        ("daily_ad", ""),
        ("daily_ad_uv", ""),
    ]
    .iter()
    .map(|(t, key)| {
        format!(
            "CREATE TABLE IF NOT EXISTS {t}_all AS {t} ENGINE = Distributed(`{cluster}`, `{db}`, {t}{key})"
        )
    })
    .collect()
}

/// Builds a client for `cfg` (RowBinary without schema validation: ClickHouse 18.16
/// does not know `RowBinaryWithNamesAndTypes`).
pub fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    server_client(cfg)
        .with_database(&cfg.database)
        .with_validation(false)
}

/// A client for `cfg`'s server with no database selected (to create or drop it).
pub fn server_client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(cfg.password.expose())
}

/// `name` safe to put between backticks in DDL (config values, not user input).
pub fn ident(name: &str) -> String {
    name.replace('`', "")
}

/// The DDL's statements.
pub fn schema_statements() -> Vec<String> {
    SCHEMA_SQL
        .split(";\n")
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.trim().is_empty())
        .collect()
}

/// Creates the database and tables that do not exist yet, on every shard (with the
/// `Distributed` tables when sharded).
///
/// # Errors
///
/// When ClickHouse is unreachable or refuses a statement.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<(), clickhouse::error::Error> {
    for shard in cfg.per_shard() {
        server_client(&shard)
            .query(&format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                ident(&shard.database)
            ))
            .execute()
            .await?;
        let c = client(&shard);
        for stmt in schema_statements() {
            c.query(&stmt).execute().await?;
        }
        if !cfg.shards.is_empty() {
            for stmt in distributed_statements(cfg) {
                c.query(&stmt).execute().await?;
            }
        }
    }
    Ok(())
}

enum SinkMsg {
    Rows(Vec<DetailRow>),
    Barrier(oneshot::Sender<Result<(), String>>),
}

/// Handle partition tasks use to hand rows to the sink (one channel per shard).
#[derive(Clone, Debug)]
pub struct SinkHandle {
    shards: Vec<mpsc::Sender<SinkMsg>>,
}

impl SinkHandle {
    /// Hands rows to the sink (waits when the sink is behind: backpressure).
    ///
    /// # Errors
    ///
    /// When the sink task has stopped.
    pub async fn push(&self, rows: Vec<DetailRow>) -> Result<(), String> {
        let stopped = |_| "clickhouse sink stopped".to_owned();
        if let [one] = self.shards.as_slice() {
            return one.send(SinkMsg::Rows(rows)).await.map_err(stopped);
        }
        let mut split: Vec<Vec<DetailRow>> = vec![Vec::new(); self.shards.len()];
        for r in rows {
            split[shard_of(&r.event_id, self.shards.len())].push(r);
        }
        for (tx, rows) in self.shards.iter().zip(split) {
            if !rows.is_empty() {
                tx.send(SinkMsg::Rows(rows)).await.map_err(stopped)?;
            }
        }
        Ok(())
    }

    /// Returns once every row pushed so far is durable (journaled on disk).
    ///
    /// # Errors
    ///
    /// When the journal cannot be written or the sink has stopped.
    pub async fn barrier(&self) -> Result<(), String> {
        let stopped = || "clickhouse sink stopped".to_owned();
        let mut acks = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (tx, rx) = oneshot::channel();
            shard
                .send(SinkMsg::Barrier(tx))
                .await
                .map_err(|_| stopped())?;
            acks.push(rx);
        }
        for rx in acks {
            rx.await.map_err(|_| stopped())??;
        }
        Ok(())
    }
}

/// Directories under the state directory.
#[derive(Debug, Clone)]
pub struct SinkDirs {
    /// Rows not yet acknowledged by ClickHouse.
    pub journal: PathBuf,
    /// Batches whose retries were spent.
    pub spill: PathBuf,
}

impl SinkDirs {
    /// `<state_dir>/clickhouse/{journal,spill}` of an unsharded deployment, else
    /// `<state_dir>/clickhouse/shard-<shard>/{journal,spill}`.
    pub fn of_shard(state_dir: &Path, shard: usize, shards: usize) -> Self {
        let base = if shards <= 1 {
            state_dir.join("clickhouse")
        } else {
            state_dir.join(format!("clickhouse/shard-{shard}"))
        };
        SinkDirs {
            journal: base.join("journal"),
            spill: base.join("spill"),
        }
    }
}

/// Each shard's configuration with its journal and spill directories.
fn shard_sinks(cfg: &ClickHouseConfig, state_dir: &Path) -> Vec<(ClickHouseConfig, SinkDirs)> {
    let shards = cfg.per_shard();
    let n = shards.len();
    shards
        .into_iter()
        .enumerate()
        .map(|(i, shard)| (shard, SinkDirs::of_shard(state_dir, i, n)))
        .collect()
}

/// Starts the sink of every shard ([`start_shard`]); the handle routes each row to its
/// shard.
///
/// # Errors
///
/// When the directories cannot be created.
pub async fn start(
    cfg: &ClickHouseConfig,
    state_dir: &Path,
    shutdown: &CancellationToken,
) -> std::io::Result<(SinkHandle, tokio::task::JoinSet<()>)> {
    let mut set = tokio::task::JoinSet::new();
    let mut handle = SinkHandle { shards: Vec::new() };
    for (shard, dirs) in shard_sinks(cfg, state_dir) {
        let tx = start_shard(shard, dirs, shutdown.clone(), &mut set).await?;
        handle.shards.push(tx);
    }
    Ok((handle, set))
}

/// Starts one shard's sink: a task batching rows into journal files, and an inserter
/// task.
/// Journal files left by an earlier run are inserted first. Both tasks end after
/// `shutdown` fires and the last batch was inserted or spilled.
///
/// # Errors
///
/// When the directories cannot be created.
async fn start_shard(
    cfg: ClickHouseConfig,
    dirs: SinkDirs,
    shutdown: CancellationToken,
    set: &mut tokio::task::JoinSet<()>,
) -> std::io::Result<mpsc::Sender<SinkMsg>> {
    tokio::fs::create_dir_all(&dirs.journal).await?;
    tokio::fs::create_dir_all(&dirs.spill).await?;
    let (tx, rx) = mpsc::channel(64);
    let (sealed_tx, sealed_rx) = mpsc::channel::<PathBuf>(4);
    // Leftovers of a previous run: the open journal first, then sealed batches in order.
    let mut leftovers = list_jsonl(&dirs.journal).await?;
    leftovers.sort();
    let mut next_seq = leftovers
        .iter()
        .filter_map(|p| batch_seq(p))
        .max()
        .map_or(0, |s| s + 1);
    let current = dirs.journal.join("current.jsonl");
    let mut recovered = Vec::new();
    for p in leftovers {
        if p == current {
            let sealed = dirs.journal.join(format!("batch-{next_seq:012}.jsonl"));
            next_seq += 1;
            tokio::fs::rename(&p, &sealed).await?;
            recovered.push(sealed);
        } else {
            recovered.push(p);
        }
    }
    let client = client(&cfg);
    let ins_cfg = cfg.clone();
    let spill_dir = dirs.spill.clone();
    set.spawn(async move { inserter(client, ins_cfg, spill_dir, recovered, sealed_rx).await });
    set.spawn(async move {
        let mut b = Batcher { cfg, dirs, seq: next_seq, writer: None, rows: 0, opened: None, sealed: sealed_tx };
        if let Err(e) = b.run(rx, shutdown).await {
            tracing::error!(error = %e, "clickhouse journal failed; rows since the last barrier are replayed from Kafka");
        }
    });
    Ok(tx)
}

struct Batcher {
    cfg: ClickHouseConfig,
    dirs: SinkDirs,
    seq: u64,
    writer: Option<BufWriter<tokio::fs::File>>,
    rows: usize,
    opened: Option<Instant>,
    sealed: mpsc::Sender<PathBuf>,
}

impl Batcher {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<SinkMsg>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(SinkMsg::Rows(rows)) => self.append(&rows).await?,
                    Some(SinkMsg::Barrier(reply)) => {
                        let r = self.sync().await.map_err(|e| e.to_string());
                        let _ = reply.send(r);
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if self.opened.is_some_and(|t| t.elapsed() >= self.cfg.batch_interval) {
                        self.seal().await?;
                    }
                }
                () = shutdown.cancelled(), if rx.is_empty() => {
                    // Partition tasks have pushed their last rows before shutdown completes;
                    // drain what is queued, then seal.
                    rx.close();
                    while let Some(msg) = rx.recv().await {
                        match msg {
                            SinkMsg::Rows(rows) => self.append(&rows).await?,
                            SinkMsg::Barrier(reply) => {
                                let _ = reply.send(self.sync().await.map_err(|e| e.to_string()));
                            }
                        }
                    }
                    break;
                }
            }
        }
        self.seal().await
    }

    async fn append(&mut self, rows: &[DetailRow]) -> std::io::Result<()> {
        for row in rows {
            if self.writer.is_none() {
                let f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dirs.journal.join("current.jsonl"))
                    .await?;
                self.writer = Some(BufWriter::with_capacity(1 << 20, f));
                self.opened = Some(Instant::now());
            }
            let w = self.writer.as_mut().expect("journal opened above");
            let mut line = serde_json::to_vec(row).map_err(std::io::Error::other)?;
            line.push(b'\n');
            w.write_all(&line).await?;
            self.rows += 1;
            if self.rows >= self.cfg.batch_rows {
                self.seal().await?;
            }
        }
        Ok(())
    }

    async fn sync(&mut self) -> std::io::Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.flush().await?;
            w.get_ref().sync_data().await?;
        }
        Ok(())
    }

    async fn seal(&mut self) -> std::io::Result<()> {
        if self.writer.is_none() {
            return Ok(());
        }
        self.sync().await?;
        self.writer = None;
        let sealed = self
            .dirs
            .journal
            .join(format!("batch-{:012}.jsonl", self.seq));
        self.seq += 1;
        tokio::fs::rename(self.dirs.journal.join("current.jsonl"), &sealed).await?;
        self.rows = 0;
        self.opened = None;
        // Waits while the inserter is behind: backpressure up to the partition tasks.
        self.sealed
            .send(sealed)
            .await
            .map_err(|_| std::io::Error::other("clickhouse inserter stopped"))
    }
}

fn batch_seq(p: &Path) -> Option<u64> {
    p.file_stem()?
        .to_str()?
        .strip_prefix("batch-")?
        .parse()
        .ok()
}

async fn list_jsonl(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut rd = tokio::fs::read_dir(dir).await?;
    while let Some(e) = rd.next_entry().await? {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            out.push(p);
        }
    }
    Ok(out)
}

async fn inserter(
    client: clickhouse::Client,
    cfg: ClickHouseConfig,
    spill_dir: PathBuf,
    recovered: Vec<PathBuf>,
    mut sealed: mpsc::Receiver<PathBuf>,
) {
    for p in recovered {
        tracing::info!(file = %p.display(), "inserting journal left by an earlier run");
        insert_or_spill(&client, &cfg, &spill_dir, &p).await;
    }
    while let Some(p) = sealed.recv().await {
        insert_or_spill(&client, &cfg, &spill_dir, &p).await;
    }
}

async fn insert_or_spill(
    client: &clickhouse::Client,
    cfg: &ClickHouseConfig,
    spill_dir: &Path,
    file: &Path,
) {
    match insert_file(client, cfg, file).await {
        Ok(n) => {
            metrics::counter!(CLICKHOUSE_ROWS_WRITTEN).increment(n as u64);
            if let Err(e) = tokio::fs::remove_file(file).await {
                tracing::warn!(file = %file.display(), error = %e, "inserted batch could not be deleted; it may be inserted again (deduplicated by FINAL)");
            }
        }
        Err(e) => {
            let name = file
                .file_name()
                .map(std::ffi::OsStr::to_os_string)
                .unwrap_or_default();
            let target = spill_dir.join(name);
            let rows = count_lines(file).await.unwrap_or(0);
            match tokio::fs::rename(file, &target).await {
                Ok(()) => {
                    metrics::counter!(CLICKHOUSE_ROWS_SPILLED).increment(rows as u64);
                    tracing::error!(alert = "clickhouse_spill", file = %target.display(), rows, error = %e,
                        "ClickHouse insert retries spent; batch spilled to disk. Run `speed-layer replay-spill` once ClickHouse is back");
                }
                Err(mv) => {
                    tracing::error!(alert = "clickhouse_spill", file = %file.display(), error = %e, move_error = %mv,
                    "ClickHouse insert retries spent and the batch could not be moved to the spill directory; it stays in the journal")
                }
            }
        }
    }
}

async fn count_lines(file: &Path) -> std::io::Result<usize> {
    let f = tokio::fs::File::open(file).await?;
    let mut lines = tokio::io::BufReader::new(f).lines();
    let mut n = 0;
    while lines.next_line().await?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Reads a journal or spill file.
///
/// # Errors
///
/// When the file cannot be read or a line is not a detail row.
pub async fn read_rows(file: &Path) -> Result<Vec<DetailRow>, String> {
    let text = tokio::fs::read_to_string(file)
        .await
        .map_err(|e| format!("{}: {e}", file.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{} line {}: {e}", file.display(), i + 1))
        })
        .collect()
}

/// Inserts one file's rows in one INSERT, retrying with exponential backoff up to
/// `cfg.max_attempts` attempts. Returns the row count.
///
/// # Errors
///
/// The last error once attempts are spent (or the file is unreadable).
pub async fn insert_file(
    client: &clickhouse::Client,
    cfg: &ClickHouseConfig,
    file: &Path,
) -> Result<usize, String> {
    let rows = read_rows(file).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let attempt = || async {
        let mut ins = client.insert::<DetailRow>(DETAIL_TABLE).await?;
        for r in &rows {
            ins.write(r).await?;
        }
        ins.end().await
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(cfg.retry_min_delay)
                .with_max_delay(cfg.retry_max_delay)
                .with_max_times(cfg.max_attempts.saturating_sub(1))
                .with_jitter(),
        )
        .notify(|e, d| {
            metrics::counter!(CLICKHOUSE_INSERT_ERRORS).increment(1);
            tracing::warn!(error = %e, retry_in = ?d, file = %file.display(), "ClickHouse insert failed; retrying");
        })
        .await
        .map_err(|e| {
            metrics::counter!(CLICKHOUSE_INSERT_ERRORS).increment(1);
            e.to_string()
        })?;
    Ok(rows.len())
}

/// Loads every spilled file of every shard into its shard, deleting each only after
/// its insert was acknowledged. Returns (files, rows) loaded.
///
/// # Errors
///
/// The first file that still cannot be inserted (it and later ones stay in place).
pub async fn replay_spill(
    cfg: &ClickHouseConfig,
    state_dir: &Path,
) -> Result<(usize, usize), String> {
    let (mut n_files, mut n_rows) = (0, 0);
    for (shard, dirs) in shard_sinks(cfg, state_dir) {
        let (f, r) = replay_shard_spill(&shard, &dirs.spill).await?;
        n_files += f;
        n_rows += r;
    }
    Ok((n_files, n_rows))
}

async fn replay_shard_spill(
    cfg: &ClickHouseConfig,
    spill_dir: &Path,
) -> Result<(usize, usize), String> {
    if !spill_dir.exists() {
        return Ok((0, 0));
    }
    let client = client(cfg);
    let mut files = list_jsonl(spill_dir)
        .await
        .map_err(|e| format!("{}: {e}", spill_dir.display()))?;
    files.sort();
    let (mut n_files, mut n_rows) = (0, 0);
    for f in files {
        let n = insert_file(&client, cfg, &f).await?;
        tokio::fs::remove_file(&f)
            .await
            .map_err(|e| format!("{}: {e}", f.display()))?;
        tracing::info!(file = %f.display(), rows = n, "spilled batch loaded");
        n_files += 1;
        n_rows += n;
    }
    Ok((n_files, n_rows))
}

#[cfg(test)]
mod tests {
    #[test]
    fn schema_has_the_detail_table_and_rollups() {
        let stmts = super::schema_statements();
        assert!(
            stmts
                .iter()
                .any(|s| s.contains("CREATE TABLE IF NOT EXISTS events"))
        );
        assert!(
            stmts
                .iter()
                .any(|s| s.contains("MATERIALIZED VIEW IF NOT EXISTS daily_ad_mv"))
        );
        assert!(
            stmts.iter().all(|s| !s.trim_end().ends_with(';')),
            "{stmts:?}"
        );
    }
}
