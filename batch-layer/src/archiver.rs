//! The archiver: a consumer group of its own on both input topics that writes every
//! valid event to Parquet in the object store, and commits Kafka offsets only after
//! the upload succeeded (the design brief, "Batch layer").
//!
//! One task consumes, buffers per (topic, partition), and uploads inline, so a
//! rebalance callback (which runs inside `recv`) never races an upload of this
//! instance: on revocation, buffered rows are dropped uncommitted and the next owner
//! re-reads them.
//!
//! # Idempotent batches
//!
//! A batch is the partition's messages from the committed offset `first` to `last`.
//! Before uploading, the archiver records an *intent* (`_intents/...`: the batch's
//! range and file paths). After a crash, the intent of an uncommitted batch (its
//! `first` is at or after the committed offset) names files that may exist; they are
//! deleted before consuming again, since the new batch may be cut elsewhere. Files of
//! a committed batch are never touched again. The archive thus holds every event of
//! the topic exactly once, whatever is killed when.
//!
//! # A write that fails
//!
//! Each write (an intent, an archive file) is retried on a fixed schedule
//! ([`WRITE_ATTEMPTS`] attempts, [`write_retry_budget`] of waiting in all). A write
//! that still fails (the store is unreachable; a local archive's disk is full) stops
//! the archiver with [`StoreError::Write`], naming the object and the store's error:
//! its batch was not committed, so a restart re-reads it from Kafka and deletes by its
//! intent what of it was written (crash-only: the supervisor restarts the process).
//! While it retries it consumes nothing.
//!
//! # Progress
//!
//! After each commit the archiver records how far the partition is archived (the
//! committed offset and the newest event time archived: [`crate::archive::progress`]).
//! A day turns final only once every partition's record has passed the day's close
//! ([`crate::finality`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, NaiveDate, Timelike};
use common::config::Config;
use common::decode::{Limits, decode};
use common::event::TopicKind;
use common::telemetry::{ARCHIVE_FILES_WRITTEN, ARCHIVE_ROWS_WRITTEN};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::archive::layout;
use crate::archive::progress::{self, Progress};
use crate::archive::schema::{ArchivedEvent, encode_parquet};
use crate::archive::store::{Archive, StoreError};

/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 65_536;

/// A batch in flight, as recorded before its upload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Intent {
    /// First offset of the batch.
    pub first: i64,
    /// Last offset of the batch.
    pub last: i64,
    /// Files the batch writes.
    pub files: Vec<String>,
}

#[derive(Default)]
struct Buffer {
    rows: Vec<ArchivedEvent>,
    first: Option<i64>,
    last: i64,
    since: Option<Instant>,
    /// The offset to commit of a batch uploaded but not committed yet (the group
    /// coordinator was unreachable). The partition is paused meanwhile: the intent of
    /// that batch must stay the partition's only uncommitted one (module docs).
    uncommitted: Option<i64>,
    /// Newest event time of the batch being buffered (or uploaded and uncommitted).
    max_event_ms: Option<i64>,
    /// What the archive holds of this partition (committed batches); kept across batches.
    archived: Progress,
    /// `archived` is ahead of the record in the object store (a write failed, or a
    /// commit succeeded on a retry): written on the next tick.
    progress_unsaved: bool,
}

impl Buffer {
    /// A partition whose committed batches reach `archived`.
    fn new(archived: Progress, progress_unsaved: bool) -> Self {
        Buffer {
            archived,
            progress_unsaved,
            ..Buffer::default()
        }
    }

    /// Records that everything below `next_offset` is committed, with `max_event_ms`
    /// its newest event time; the record is written by [`save_progress`].
    fn committed(&mut self, next_offset: i64, max_event_ms: Option<i64>) {
        self.archived = self
            .archived
            .advanced(next_offset, max_event_ms, common::day::now_ms());
        self.progress_unsaved = true;
    }
}

#[derive(Debug)]
enum Change {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

struct ArchiverContext {
    changes: Arc<Mutex<Vec<Change>>>,
}

impl ClientContext for ArchiverContext {}

fn parts(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for ArchiverContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Change::Revoked(parts(tpl)));
        }
    }
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            self.changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Change::Assigned(parts(tpl)));
        }
    }
}

/// Runs the archiver until `shutdown` (then uploads and commits what it holds).
///
/// # Errors
///
/// When Kafka or the object store fail beyond retries.
pub async fn run(
    cfg: Arc<Config>,
    archive: Archive,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let consumer: StreamConsumer<ArchiverContext> =
        platform::kafka::consumer_config(&cfg.kafka, &cfg.batch.group_id)
            .create_with_context(ArchiverContext {
                changes: Arc::clone(&changes),
            })
            .context("kafka consumer")?;
    consumer
        .subscribe(&[&cfg.kafka.traffic_topic, &cfg.kafka.effects_topic])
        .context("subscribe")?;
    tracing::info!(group = %cfg.batch.group_id, url = %cfg.batch.archive_url, "archiver consuming");
    // Archive everything that parses; age limits are the speed layer's concern.
    let limits = Limits {
        max_age_ms: i64::MAX,
        max_future_ms: i64::MAX / 4,
        ..cfg.validation.limits()
    };
    let mut buffers: HashMap<(String, i32), Buffer> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            msg = consumer.recv() => {
                apply_changes(&changes, &archive, &consumer, &mut buffers).await?;
                let m = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        // librdkafka's fatal errors (a static member fenced by its own
                        // rejoin after a broker outage) leave the consumer unusable:
                        // exit, and let the supervisor start a fresh one (nothing is
                        // lost: uncommitted batches are cleaned by their intents).
                        if let Some((code, reason)) = consumer.client().fatal_error() {
                            anyhow::bail!("fatal Kafka consumer error {code:?}: {reason} (the archiver must be restarted)");
                        }
                        tracing::warn!(error = %e, "kafka consumer error");
                        continue;
                    }
                };
                let Some(topic) = cfg.kafka.topic_kind(m.topic()) else { continue };
                let key = (m.topic().to_owned(), m.partition());
                let Some(buf) = buffers.get_mut(&key) else { continue };
                // Paused until its last batch is committed; re-read from there after.
                if buf.uncommitted.is_some() { continue; }
                if buf.first.is_none() {
                    buf.first = Some(m.offset());
                    buf.since = Some(Instant::now());
                }
                buf.last = m.offset();
                match m.payload().map(|p| decode(p, topic, 0, &limits)) {
                    Some(Ok(e)) => buf.rows.push({
                        // Capped at the clock: one event stamped in the future must
                        // not make a lagging partition look complete.
                        buf.max_event_ms = buf.max_event_ms.max(Some(e.ts.min(common::day::now_ms())));
                        ArchivedEvent { event: e.into_owned(), partition: m.partition(), offset: m.offset() }
                    }),
                    // Invalid messages are the DLQ's (the speed layer sends them there).
                    _ => metrics::counter!("admetrics_archive_invalid_skipped_total", "topic" => topic.as_str()).increment(1),
                }
                if buf.rows.len() >= cfg.batch.archive_max_rows {
                    flush(&archive, &consumer, &key, buf).await?;
                }
            }
            _ = tick.tick() => {
                apply_changes(&changes, &archive, &consumer, &mut buffers).await?;
                for (key, buf) in &mut buffers {
                    if buf.uncommitted.is_some() {
                        retry_commit(&consumer, key, buf);
                    } else if buf.since.is_some_and(|t| t.elapsed() >= cfg.batch.archive_max_age) {
                        flush(&archive, &consumer, key, buf).await?;
                    }
                    if buf.progress_unsaved {
                        save_progress(&archive, key, buf).await;
                    }
                }
            }
        }
    }
    for (key, buf) in &mut buffers {
        if buf.uncommitted.is_some() {
            retry_commit(&consumer, key, buf);
        } else {
            flush(&archive, &consumer, key, buf).await?;
        }
        if buf.progress_unsaved {
            save_progress(&archive, key, buf).await;
        }
    }
    consumer.unsubscribe();
    Ok(())
}

async fn apply_changes(
    changes: &Mutex<Vec<Change>>,
    archive: &Archive,
    consumer: &StreamConsumer<ArchiverContext>,
    buffers: &mut HashMap<(String, i32), Buffer>,
) -> anyhow::Result<()> {
    let pending = std::mem::take(&mut *changes.lock().unwrap_or_else(PoisonError::into_inner));
    for c in pending {
        match c {
            Change::Revoked(ps) => {
                for p in ps {
                    // Uncommitted rows are re-read by the next owner.
                    buffers.remove(&p);
                }
            }
            Change::Assigned(ps) => {
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &ps {
                    tpl.add_partition(t, *p);
                }
                // A partition paused for a failed commit before it was revoked starts
                // afresh from the committed offset.
                consumer
                    .resume(&tpl)
                    .context("resuming assigned partitions")?;
                let committed = consumer
                    .committed_offsets(tpl, Duration::from_secs(10))
                    .context("committed offsets")?;
                for e in committed.elements() {
                    let from = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    };
                    clean_uncommitted(archive, e.topic(), e.partition(), from).await?;
                    // The record may lag the committed offset (its write failed before
                    // a crash): committed batches are durable, so catch it up.
                    let recorded = progress::read(archive, e.topic(), e.partition())
                        .await
                        .context("archive progress record")?
                        .unwrap_or_default();
                    let behind = recorded.next_offset < from;
                    let archived = if behind {
                        recorded.advanced(from, None, common::day::now_ms())
                    } else {
                        recorded
                    };
                    buffers.insert(
                        (e.topic().to_owned(), e.partition()),
                        Buffer::new(archived, behind),
                    );
                }
                tracing::info!(partitions = ?ps, "archiving partitions");
            }
        }
    }
    Ok(())
}

/// Deletes the files of a batch that was recorded but not committed.
async fn clean_uncommitted(
    archive: &Archive,
    topic: &str,
    partition: i32,
    committed: i64,
) -> anyhow::Result<()> {
    let path = layout::intent_path(&archive.root, topic, partition);
    let intent: Intent = match archive.store.get(&path).await {
        Ok(r) => serde_json::from_slice(&r.bytes().await?).context("intent record")?,
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if intent.first >= committed {
        tracing::warn!(
            topic,
            partition,
            first = intent.first,
            last = intent.last,
            files = intent.files.len(),
            "removing files of a batch that was not committed (crash before commit)"
        );
        for f in &intent.files {
            match archive.store.delete(&Path::from(f.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Attempts of one archive write (an intent, a file) before the archiver stops.
pub const WRITE_ATTEMPTS: usize = 9;

/// The retry schedule of an archive write: 200 ms doubling to 10 s, no jitter (the
/// total wait is fixed: [`write_retry_budget`]).
fn retry() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(WRITE_ATTEMPTS - 1)
}

/// How long the archiver waits in all between the attempts of one write before it
/// stops (32.6 s): the sum of [`retry`]'s delays.
pub fn write_retry_budget() -> Duration {
    use backon::BackoffBuilder as _;
    retry().build().sum()
}

/// Writes `payload` to `path` with the retry schedule; the last error once
/// [`WRITE_ATTEMPTS`] attempts are spent (module docs, "A write that fails").
async fn put(archive: &Archive, path: &Path, payload: PutPayload) -> Result<(), StoreError> {
    (|| archive.store.put(path, payload.clone()))
        .retry(retry())
        .notify(|e, d| {
            tracing::warn!(error = %e, retry_in = ?d, file = %archive.locate(path), "archive write failed; retrying");
        })
        .await
        .map(drop)
        .map_err(|source| {
            let location = archive.locate(path);
            tracing::error!(file = %location, attempts = WRITE_ATTEMPTS, error = %source,
                "archive write failed after its retries: the archiver stops; nothing of the batch is committed, a restart re-reads it from Kafka");
            StoreError::Write {
                location,
                attempts: WRITE_ATTEMPTS,
                source,
            }
        })
}

/// Uploads a partition's buffer as one file per (date, hour), then commits.
async fn flush(
    archive: &Archive,
    consumer: &StreamConsumer<ArchiverContext>,
    key: &(String, i32),
    buf: &mut Buffer,
) -> anyhow::Result<()> {
    let Some(first) = buf.first else {
        return Ok(());
    };
    let last = buf.last;
    let max_event_ms = buf.max_event_ms;
    let (topic, partition) = (key.0.as_str(), key.1);
    let mut groups: BTreeMap<(NaiveDate, u32), Vec<ArchivedEvent>> = BTreeMap::new();
    for r in std::mem::take(&mut buf.rows) {
        let t = DateTime::from_timestamp_millis(r.event.ts).unwrap_or_default();
        groups
            .entry((t.date_naive(), t.hour()))
            .or_default()
            .push(r);
    }
    let files: Vec<(Path, Vec<ArchivedEvent>)> = groups
        .into_iter()
        .map(|((d, h), rows)| {
            (
                layout::file_path(&archive.root, topic, d, h, partition, first, last),
                rows,
            )
        })
        .collect();
    let intent = Intent {
        first,
        last,
        files: files.iter().map(|(p, _)| p.to_string()).collect(),
    };
    let intent_path = layout::intent_path(&archive.root, topic, partition);
    let body = serde_json::to_vec(&intent)?;
    put(archive, &intent_path, PutPayload::from(body))
        .await
        .context("writing the batch's intent")?;
    let mut rows_total = 0;
    for (path, rows) in files {
        rows_total += rows.len();
        let compression = archive.compression;
        let bytes =
            tokio::task::spawn_blocking(move || encode_parquet(rows, ROW_GROUP_ROWS, compression))
                .await??;
        put(archive, &path, PutPayload::from(bytes))
            .await
            .context("uploading an archive file")?;
        metrics::counter!(ARCHIVE_FILES_WRITTEN).increment(1);
    }
    metrics::counter!(ARCHIVE_ROWS_WRITTEN, "topic" => topic.to_owned())
        .increment(rows_total as u64);
    tracing::debug!(topic, partition, first, last, rows = rows_total, "archived");
    *buf = Buffer::new(buf.archived, buf.progress_unsaved);
    if let Err(e) = commit(consumer, topic, partition, last + 1) {
        // The broker or the group coordinator is away (an outage, a rebalance). Keep
        // polling (the group can only be rejoined by polling) with the partition
        // paused, and commit on a later tick; if the partition is revoked meanwhile,
        // its next owner deletes this batch's files by its intent and re-reads it.
        tracing::warn!(topic, partition, offset = last + 1, error = %e,
            "commit failed; the partition waits, paused, and the commit is retried");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        consumer.pause(&tpl).context("pausing the partition")?;
        buf.uncommitted = Some(last + 1);
        buf.max_event_ms = max_event_ms;
        return Ok(());
    }
    buf.committed(last + 1, max_event_ms);
    save_progress(archive, key, buf).await;
    Ok(())
}

/// Writes the partition's progress record; on failure leaves it marked unsaved for
/// the next tick (the record lags; it is never ahead of the archive).
async fn save_progress(archive: &Archive, key: &(String, i32), buf: &mut Buffer) {
    match progress::write(archive, &key.0, key.1, &buf.archived).await {
        Ok(()) => buf.progress_unsaved = false,
        Err(e) => {
            tracing::warn!(topic = %key.0, partition = key.1, error = %e,
                "writing the archive progress record failed; retrying on the next tick");
            buf.progress_unsaved = true;
        }
    }
}

fn commit(
    consumer: &StreamConsumer<ArchiverContext>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.commit(&tpl, CommitMode::Sync)
}

/// Commits a paused partition's uploaded batch; on success resumes the partition
/// from the committed offset (messages fetched while it was paused were skipped).
fn retry_commit(consumer: &StreamConsumer<ArchiverContext>, key: &(String, i32), buf: &mut Buffer) {
    let Some(offset) = buf.uncommitted else {
        return;
    };
    let (topic, partition) = (key.0.as_str(), key.1);
    if let Err(e) = commit(consumer, topic, partition, offset) {
        tracing::debug!(topic, partition, offset, error = %e, "commit still failing");
        return;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let resumed = consumer.resume(&tpl).and_then(|()| {
        consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(10),
        )
    });
    match resumed {
        Ok(()) => {
            tracing::info!(
                topic,
                partition,
                offset,
                "committed after a retry; partition resumed"
            );
            buf.uncommitted = None;
            let max_event_ms = buf.max_event_ms.take();
            buf.committed(offset, max_event_ms);
        }
        // Committed, but not resumed: try the resume again on the next tick (a commit
        // of the same offset again is harmless).
        Err(e) => {
            tracing::warn!(topic, partition, offset, error = %e, "resuming the partition failed")
        }
    }
}

/// Lists every archive file of `topic` on `date`.
///
/// # Errors
///
/// When listing fails.
pub async fn list_date(
    archive: &Archive,
    topic: &str,
    date: NaiveDate,
) -> Result<Vec<object_store::ObjectMeta>, object_store::Error> {
    let prefix = layout::date_prefix(&archive.root, topic, date);
    let mut out = Vec::new();
    let mut s = archive.store.list(Some(&prefix));
    while let Some(m) = s.next().await {
        let m = m?;
        if m.location.extension() == Some("parquet") {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(out)
}

/// The kind of a topic name for the archive's purposes.
pub fn topic_kind(cfg: &Config, topic: &str) -> Option<TopicKind> {
    cfg.kafka.topic_kind(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_retried_for_a_fixed_32_6_seconds() {
        // 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 6.4 + 10 + 10 (capped) between 9 attempts.
        // (backon computes the delays in floating point: a few nanoseconds over.)
        assert_eq!(write_retry_budget().as_millis(), 32_600);
    }
}
