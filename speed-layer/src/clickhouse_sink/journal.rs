//! The journal: RowBinary rows appended to `journal/current.rowbinary` as they arrive,
//! made durable by a partition task's barrier, and sealed into `batch-<n>.rowbinary`
//! files at `clickhouse.batch_rows` rows (but at most one such batch per
//! `clickhouse.min_insert_interval`) or after `clickhouse.batch_interval`; a sealed
//! file never changes. A file is exactly the body of its INSERT (`FORMAT RowBinary`), so an
//! operator can also load one by hand: `clickhouse-client --query 'INSERT INTO events
//! FORMAT RowBinary' < batch-<n>.rowbinary`.
//!
//! Files of JSON lines (`.jsonl`) written by earlier versions are read too: a leftover
//! `current.jsonl` is sealed at start like `current.rowbinary`, and sealed or spilled
//! `.jsonl` files are encoded to RowBinary when inserted.
//!
//! # A write that fails
//!
//! The first write, sync or seal that fails (a full disk, a volume turned read-only)
//! stops the journal for good: it logs the file and the error once
//! (`alert="clickhouse_journal"`), drops the rows handed over after it, and answers
//! every barrier with that error ([`SinkError::Journal`]), so each partition task stops
//! before it stores offsets for rows that are not on disk, and the process exits
//! naming the file and the error (crash-only: the supervisor restarts it). No later
//! write may succeed: the failed one may have left part of its bytes, and a barrier
//! that succeeded after a hole would store offsets over rows that were lost.
//!
//! At the next start the torn tail of a leftover `current.rowbinary` is cut after its
//! last whole row ([`cut_torn_tail`]): no barrier covered it, so no offset of its events
//! was stored and they are consumed again from Kafka.

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::ClickHouseConfig;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pipeline::detail::{DetailRef, DetailRow, EncodedRows};

use super::error::SinkError;
use super::{SinkDirs, SinkMsg};

/// Bytes of rows the journal holds in memory before it writes them (a barrier or a
/// seal writes them sooner).
const WRITE_CHUNK: usize = 1 << 20;

/// The open journal file this version writes.
const OPEN_JOURNAL: &str = "current.rowbinary";
/// Extension of the journal files this version writes.
const EXT: &str = "rowbinary";
/// Extension of the JSON-lines journal files of earlier versions.
const LEGACY_EXT: &str = "jsonl";

/// The open `current.rowbinary`: rows encoded into `pending`, written with one
/// blocking `write_all` on the blocking pool.
///
/// (`std::fs::File` rather than `tokio::fs::File`: tokio's file acknowledges a write
/// before it happens and reports a failure on a later call, at times only by its
/// error kind, so the operator would not read the system's "No space left on
/// device" and the bytes of the failed write would be gone without a trace.)
struct JournalFile {
    path: PathBuf,
    file: Arc<std::fs::File>,
    pending: Vec<u8>,
}

impl JournalFile {
    async fn open(path: PathBuf) -> Result<Self, SinkError> {
        let p = path.clone();
        let file = blocking(move || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
        })
        .await
        .map_err(|e| SinkError::journal(&path, e))?;
        Ok(JournalFile {
            path,
            file: Arc::new(file),
            pending: Vec::with_capacity(WRITE_CHUNK),
        })
    }

    /// Writes the rows held in memory.
    async fn write_pending(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = Arc::clone(&self.file);
        let buf = std::mem::take(&mut self.pending);
        let mut buf = blocking(move || (&*file).write_all(&buf).map(|()| buf))
            .await
            .map_err(|e| SinkError::journal(&self.path, e))?;
        buf.clear();
        self.pending = buf;
        Ok(())
    }

    /// Writes the rows held in memory and syncs the file: every row appended so far
    /// is on disk.
    async fn sync(&mut self) -> Result<(), SinkError> {
        self.write_pending().await?;
        let file = Arc::clone(&self.file);
        blocking(move || file.sync_data())
            .await
            .map_err(|e| SinkError::journal(&self.path, e))
    }
}

/// Runs blocking file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

/// The shard's journal writer: appends rows to `current.rowbinary`, seals it into a
/// numbered batch file and hands that to the inserter.
pub(super) struct Batcher {
    cfg: ClickHouseConfig,
    dirs: SinkDirs,
    seq: u64,
    writer: Option<JournalFile>,
    rows: usize,
    opened: Option<Instant>,
    /// When the last batch was sealed (`None` before the first).
    last_seal: Option<Instant>,
    sealed: mpsc::Sender<PathBuf>,
    /// The first failed write: the journal takes no rows after it (module docs).
    failed: Option<SinkError>,
}

impl Batcher {
    /// A writer of `dirs.journal` whose next sealed batch is number `seq`; sealed
    /// batches go to `sealed` (the inserter).
    pub(super) fn new(
        cfg: ClickHouseConfig,
        dirs: SinkDirs,
        seq: u64,
        sealed: mpsc::Sender<PathBuf>,
    ) -> Self {
        Batcher {
            cfg,
            dirs,
            seq,
            writer: None,
            rows: 0,
            opened: None,
            last_seal: None,
            sealed,
            failed: None,
        }
    }

    /// Journals what arrives on `rx` until it closes or `shutdown` fires (then drains
    /// what is queued and seals); after a failed write, answers barriers with it.
    pub(super) async fn run(
        &mut self,
        mut rx: mpsc::Receiver<SinkMsg>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg).await,
                    None => break,
                },
                _ = tick.tick() => {
                    let old = self.opened.is_some_and(|t| t.elapsed() >= self.cfg.batch_interval);
                    if self.failed.is_none() && (old || self.full()) {
                        let r = self.seal().await;
                        self.record(r);
                    }
                }
                () = shutdown.cancelled(), if rx.is_empty() => {
                    // Partition tasks have pushed their last rows before shutdown completes;
                    // drain what is queued, then seal.
                    rx.close();
                    while let Some(msg) = rx.recv().await {
                        self.handle(msg).await;
                    }
                    break;
                }
            }
        }
        // A failed journal is not sealed: its `current.rowbinary` is recovered at the next
        // start.
        if self.failed.is_none() {
            let r = self.seal().await;
            self.record(r);
        }
    }

    async fn handle(&mut self, msg: SinkMsg) {
        match msg {
            // After a failure rows are dropped: the barrier that would cover them fails,
            // so their offsets are never stored.
            SinkMsg::Rows(rows) => {
                if self.failed.is_none() {
                    let r = self.append(&rows).await;
                    self.record(r);
                }
            }
            SinkMsg::Barrier(reply) => {
                if self.failed.is_none() {
                    let r = self.sync().await;
                    self.record(r);
                }
                let _ = reply.send(self.failed.as_ref().map_or(Ok(()), |e| Err(again(e))));
            }
        }
    }

    /// Keeps the first failure: the journal stops taking rows (module docs).
    fn record(&mut self, r: Result<(), SinkError>) {
        let Err(e) = r else { return };
        tracing::error!(alert = "clickhouse_journal", dir = %self.dirs.journal.display(), error = %e,
            "ClickHouse journal write failed: the journal takes no more rows, and the speed layer stops consuming \
             (no offset is stored for a row that is not on disk). Make room in the journal's directory and restart; \
             what was not journaled is consumed again from Kafka");
        self.writer = None;
        self.failed = Some(e);
    }

    /// Appends encoded rows; seals once the file holds `batch_rows` rows or more (a
    /// partition's rows of one batch are never split between files).
    async fn append(&mut self, rows: &EncodedRows) -> Result<(), SinkError> {
        if self.writer.is_none() {
            self.writer = Some(JournalFile::open(self.dirs.journal.join(OPEN_JOURNAL)).await?);
            self.opened = Some(Instant::now());
        }
        let w = self.writer.as_mut().expect("journal opened above");
        w.pending.extend_from_slice(&rows.bytes);
        if w.pending.len() >= WRITE_CHUNK {
            w.write_pending().await?;
        }
        self.rows += rows.rows;
        if self.full() {
            self.seal().await?;
        }
        Ok(())
    }

    /// The open batch has `batch_rows` rows or more and `min_insert_interval` has
    /// passed since the last seal.
    fn full(&self) -> bool {
        self.rows >= self.cfg.batch_rows
            && self
                .last_seal
                .is_none_or(|t| t.elapsed() >= self.cfg.min_insert_interval)
    }

    async fn sync(&mut self) -> Result<(), SinkError> {
        match self.writer.as_mut() {
            Some(w) => w.sync().await,
            None => Ok(()),
        }
    }

    async fn seal(&mut self) -> Result<(), SinkError> {
        if self.writer.is_none() {
            return Ok(());
        }
        self.sync().await?;
        self.writer = None;
        let open = self.dirs.journal.join(OPEN_JOURNAL);
        let sealed = sealed_name(&self.dirs.journal, self.seq, &open);
        self.seq += 1;
        tokio::fs::rename(&open, &sealed)
            .await
            .map_err(|e| SinkError::journal(&sealed, e))?;
        self.rows = 0;
        self.opened = None;
        self.last_seal = Some(Instant::now());
        // Waits while the inserter is behind: backpressure up to the partition tasks.
        self.sealed
            .send(sealed)
            .await
            .map_err(|_| SinkError::Stopped)
    }
}

/// The journal's recorded failure, for one more barrier.
fn again(e: &SinkError) -> SinkError {
    match e {
        SinkError::Journal { path, source } => SinkError::Journal {
            path: path.clone(),
            source: Arc::clone(source),
        },
        // Only journal errors and a stopped inserter are recorded.
        _ => SinkError::Stopped,
    }
}

/// Cuts an open journal `file` after its last whole row and returns the bytes cut: a
/// row whose write did not complete (a full disk; the host lost power) is dropped. No
/// barrier covered it, so no offset of its event was stored: it is consumed again from
/// Kafka. A RowBinary file is cut at the first row that does not decode whole and
/// valid (`DetailRow::decode`: a torn row, or the zeros a file system can leave after
/// a power loss); a JSON-lines file after its last newline.
pub(super) async fn cut_torn_tail(file: &Path) -> std::io::Result<u64> {
    if !has_ext(file, LEGACY_EXT) {
        let p = file.to_owned();
        return blocking(move || {
            let bytes = std::fs::read(&p)?;
            let keep = whole_rows(&bytes).0;
            if keep < bytes.len() {
                let f = std::fs::OpenOptions::new().write(true).open(&p)?;
                f.set_len(keep as u64)?;
                f.sync_data()?;
            }
            Ok((bytes.len() - keep) as u64)
        })
        .await;
    }
    let p = file.to_owned();
    blocking(move || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)?;
        let len = f.metadata()?.len();
        let mut buf = vec![0_u8; 64 * 1024];
        let mut end = len;
        // Backwards in chunks to the last newline (a journal file is megabytes).
        let keep = loop {
            if end == 0 {
                break 0;
            }
            let start = end.saturating_sub(buf.len() as u64);
            let chunk = &mut buf[..usize::try_from(end - start).expect("at most a chunk")];
            f.read_exact_at(chunk, start)?;
            if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
                break start + i as u64 + 1;
            }
            end = start;
        };
        if keep < len {
            f.set_len(keep)?;
            f.sync_data()?;
        }
        Ok(len - keep)
    })
    .await
}

/// The sequence number of a `batch-<n>.rowbinary` (or `.jsonl`) file.
pub(super) fn batch_seq(p: &Path) -> Option<u64> {
    p.file_stem()?
        .to_str()?
        .strip_prefix("batch-")?
        .parse()
        .ok()
}

/// Bytes of the whole, valid rows at the front of `bytes`, and how many rows.
fn whole_rows(bytes: &[u8]) -> (usize, usize) {
    let mut rest = bytes;
    let mut rows = 0;
    loop {
        let before = rest;
        if rest.is_empty() || DetailRef::decode(&mut rest).is_err() {
            return (bytes.len() - before.len(), rows);
        }
        rows += 1;
    }
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|x| x == ext)
}

/// Whether `p` is an open journal (this version's or an earlier one's), which is
/// sealed at start.
pub(super) fn is_open_journal(p: &Path) -> bool {
    p.file_stem().is_some_and(|s| s == "current")
}

/// The sealed batch number `seq` in `dir`, in the format of the open journal `open`.
pub(super) fn sealed_name(dir: &Path, seq: u64, open: &Path) -> PathBuf {
    let ext = if has_ext(open, LEGACY_EXT) {
        LEGACY_EXT
    } else {
        EXT
    };
    dir.join(format!("batch-{seq:012}.{ext}"))
}

/// The journal files of `dir` (RowBinary, and JSON lines of earlier versions), in no
/// particular order.
pub(super) async fn list_journal(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut rd = tokio::fs::read_dir(dir).await?;
    while let Some(e) = rd.next_entry().await? {
        let p = e.path();
        if has_ext(&p, EXT) || has_ext(&p, LEGACY_EXT) {
            out.push(p);
        }
    }
    Ok(out)
}

/// A journal or spill file as the body of one `INSERT ... FORMAT RowBinary`, and its
/// row count. Every row is checked first, so a damaged file is refused before
/// ClickHouse sees any of it; JSON lines of earlier versions are encoded.
///
/// # Errors
///
/// [`SinkError::BadFile`] when the file cannot be read or a row is not a detail row.
pub(super) async fn read_batch(file: &Path) -> Result<(bytes::Bytes, usize), SinkError> {
    let bad = |detail: String| SinkError::BadFile {
        file: file.to_owned(),
        detail,
    };
    if has_ext(file, LEGACY_EXT) {
        let rows = read_json_lines(file).await?;
        let mut bytes = Vec::new();
        for r in &rows {
            r.as_ref().encode(&mut bytes);
        }
        return Ok((bytes.into(), rows.len()));
    }
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let (whole, rows) = whole_rows(&bytes);
    if whole < bytes.len() {
        let mut rest = &bytes[whole..];
        let why = DetailRef::decode(&mut rest)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Err(bad(format!("row {} at byte {whole}: {why}", rows + 1)));
    }
    Ok((bytes.into(), rows))
}

/// Rows of a journal or spill file.
///
/// # Errors
///
/// As [`read_batch`].
pub(super) async fn count_rows(file: &Path) -> Result<usize, SinkError> {
    read_batch(file).await.map(|(_, n)| n)
}

/// The rows of a JSON-lines file of an earlier version.
async fn read_json_lines(file: &Path) -> Result<Vec<DetailRow>, SinkError> {
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

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    /// A fresh directory under the system's temporary directory.
    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "admetrics-journal-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn row(id: &str) -> DetailRow {
        DetailRow {
            event_id: id.into(),
            kind: "click".into(),
            ts_ms: 0,
            event_time: 0,
            day: 0,
            user_id: "u".into(),
            advertiser_id: 1,
            campaign_id: 1,
            ad_id: 1,
            product_id: 1,
            category_id: 1,
            cost_micros: 1,
            gmv_micros: 0,
            attribution: String::new(),
            click_ts_ms: 0,
            kafka_partition: 0,
            kafka_offset: 0,
            version: 1,
        }
    }

    fn encoded(rows: &[DetailRow]) -> EncodedRows {
        let mut out = EncodedRows::default();
        for r in rows {
            r.as_ref().encode(&mut out.bytes);
            out.rows += 1;
        }
        out
    }

    async fn barrier(tx: &mpsc::Sender<SinkMsg>) -> Result<(), SinkError> {
        let (reply, rx) = oneshot::channel();
        tx.send(SinkMsg::Barrier(reply)).await.unwrap();
        rx.await.unwrap()
    }

    #[tokio::test]
    async fn a_torn_last_row_is_cut_and_whole_rows_stay() {
        let dir = temp_dir("torn");
        let f = dir.join(OPEN_JOURNAL);
        let whole = encoded(&[row("e1"), row("e2")]).bytes;
        let mut torn = whole.clone();
        torn.extend_from_slice(&encoded(&[row("e3")]).bytes[..20]);
        std::fs::write(&f, &torn).unwrap();
        assert_eq!(
            cut_torn_tail(&f).await.unwrap(),
            20,
            "the torn third row is cut"
        );
        assert_eq!(std::fs::read(&f).unwrap(), whole);
        assert_eq!(cut_torn_tail(&f).await.unwrap(), 0, "a whole file stays");
        assert_eq!(read_batch(&f).await.unwrap(), (whole.clone().into(), 2));
        // Zeros after the rows (left by a power loss) are not rows either.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 4096]);
        std::fs::write(&f, &zeros).unwrap();
        assert_eq!(cut_torn_tail(&f).await.unwrap(), 4096);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_batch_is_refused_whole_and_json_lines_of_earlier_versions_are_encoded() {
        let dir = temp_dir("batch");
        let f = dir.join("batch-000000000001.rowbinary");
        let mut bytes = encoded(&[row("e1")]).bytes;
        bytes.push(7);
        std::fs::write(&f, &bytes).unwrap();
        let e = read_batch(&f).await.expect_err("a torn row");
        assert!(e.to_string().contains("row 2"), "{e}");
        let legacy = dir.join("batch-000000000002.jsonl");
        let lines: String = [row("e1"), row("e2")]
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(&legacy, lines).unwrap();
        let (body, n) = read_batch(&legacy).await.unwrap();
        assert_eq!(n, 2);
        assert_eq!(&body[..], &encoded(&[row("e1"), row("e2")]).bytes[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_torn_last_line_of_an_earlier_versions_journal_is_cut() {
        let dir = temp_dir("torn-jsonl");
        let f = dir.join("current.jsonl");
        std::fs::write(&f, "{\"a\":1}\n{\"b\":2}\n{\"c\"").unwrap();
        assert_eq!(
            cut_torn_tail(&f).await.unwrap(),
            4,
            "the torn `{{\"c\"` is cut"
        );
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        assert_eq!(cut_torn_tail(&f).await.unwrap(), 0, "a whole file stays");
        std::fs::write(&f, "no newline at all").unwrap();
        assert_eq!(cut_torn_tail(&f).await.unwrap(), 17);
        assert_eq!(std::fs::read(&f).unwrap(), b"");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `/dev/full` answers every write with ENOSPC, as a full disk does.
    #[tokio::test]
    async fn after_a_write_fails_for_a_full_disk_every_barrier_fails_even_once_there_is_room() {
        let dir = temp_dir("full");
        let dirs = SinkDirs {
            journal: dir.join("journal"),
            spill: dir.join("spill"),
        };
        std::fs::create_dir_all(&dirs.journal).unwrap();
        let current = dirs.journal.join(OPEN_JOURNAL);
        std::os::unix::fs::symlink("/dev/full", &current).unwrap();
        let (tx, rx) = mpsc::channel(8);
        let (sealed_tx, _sealed_rx) = mpsc::channel(1);
        let mut b = Batcher::new(ClickHouseConfig::default(), dirs, 0, sealed_tx);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let s = shutdown.clone();
            async move { b.run(rx, s).await }
        });
        tx.send(SinkMsg::Rows(encoded(&[row("e1")]))).await.unwrap();
        let e = barrier(&tx)
            .await
            .expect_err("the row could not be written");
        let text = e.to_string();
        assert!(
            text.contains("No space left on device") && text.contains(OPEN_JOURNAL),
            "{text}"
        );
        // Room again: the journal still takes nothing, as rows may have been lost.
        std::fs::remove_file(&current).unwrap();
        tx.send(SinkMsg::Rows(encoded(&[row("e2")]))).await.unwrap();
        assert!(matches!(barrier(&tx).await, Err(SinkError::Journal { .. })));
        assert!(!current.exists(), "nothing written after the failure");
        shutdown.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
