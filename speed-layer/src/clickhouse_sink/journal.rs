//! The journal: rows appended to `journal/current.jsonl` as they arrive, made durable by
//! a partition task's barrier, and sealed into `batch-<n>.jsonl` files at 10 000 rows
//! or 15 s; a sealed file never changes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::config::ClickHouseConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pipeline::detail::DetailRow;

use super::error::SinkError;
use super::{SinkDirs, SinkMsg};

/// The shard's journal writer: appends rows to `current.jsonl`, seals it into a
/// numbered batch file and hands that to the inserter.
pub(super) struct Batcher {
    pub(super) cfg: ClickHouseConfig,
    pub(super) dirs: SinkDirs,
    pub(super) seq: u64,
    pub(super) writer: Option<BufWriter<tokio::fs::File>>,
    pub(super) rows: usize,
    pub(super) opened: Option<Instant>,
    pub(super) sealed: mpsc::Sender<PathBuf>,
}

impl Batcher {
    pub(super) async fn run(
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
                        let r = self.sync().await.map_err(SinkError::Journal);
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
                                let _ = reply.send(self.sync().await.map_err(SinkError::Journal));
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

/// The sequence number of a `batch-<n>.jsonl` file.
pub(super) fn batch_seq(p: &Path) -> Option<u64> {
    p.file_stem()?
        .to_str()?
        .strip_prefix("batch-")?
        .parse()
        .ok()
}

/// The `.jsonl` files of `dir`, in no particular order.
pub(super) async fn list_jsonl(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
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

/// Rows (lines) of a journal or spill file.
pub(super) async fn count_lines(file: &Path) -> std::io::Result<usize> {
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
pub async fn read_rows(file: &Path) -> Result<Vec<DetailRow>, SinkError> {
    let bad = |detail: String| SinkError::BadFile {
        file: file.to_owned(),
        detail,
    };
    let text = tokio::fs::read_to_string(file)
        .await
        .map_err(|e| bad(e.to_string()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| bad(format!("line {}: {e}", i + 1))))
        .collect()
}
