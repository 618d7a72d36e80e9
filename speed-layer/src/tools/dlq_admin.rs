//! Operator commands on the dead-letter topic: `speed-layer dlq list` shows what is in
//! it, by reason; `speed-layer dlq redrive` produces selected messages back to the
//! topic they came from, after the cause was fixed (a missing ad added to MySQL, a
//! producer bug fixed and the payload still valid, ...). Nothing is deleted from the
//! DLQ: it stays the record of what was rejected, and a re-driven message that is
//! still bad is dead-lettered again with its new reason.
//!
//! A re-driven message keeps its key and bytes, so its `event_id` is unchanged: if it
//! is re-driven twice, the speed layer's dedup (`speed.dedup_horizon`) and the batch
//! recompute's dedup count it once. Re-drive within the dedup horizon of the first
//! re-drive, or check `dlq list` for earlier re-drives (header `dlq.redriven_at_ms`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use common::config::KafkaConfig;
use platform::kafka::header_str;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

/// One dead-letter record as listed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DlqEntry {
    /// Position in the DLQ topic, `partition:offset` (what `--at` selects).
    pub at: String,
    /// Stable reason code (`unknown_ad`, `not_json`, ...).
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
    /// Source `topic/partition/offset`.
    pub source: String,
    /// When it was rejected, ms UTC.
    pub rejected_at_ms: i64,
    /// The original payload (lossy UTF-8; re-drive sends the exact bytes).
    pub payload: String,
}

/// Which records a command applies to.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these reasons (empty = all).
    pub reasons: Vec<String>,
    /// Only these DLQ positions `partition:offset` (empty = all).
    pub at: Vec<String>,
}

impl Selection {
    fn matches(&self, reason: &str, at: &str) -> bool {
        (self.reasons.is_empty() || self.reasons.iter().any(|r| r == reason))
            && (self.at.is_empty() || self.at.iter().any(|a| a == at))
    }
}

/// Reads the whole DLQ topic (start to the current end, no consumer group) and calls
/// `each` for every selected record.
fn scan(
    cfg: &KafkaConfig,
    sel: &Selection,
    mut each: impl FnMut(&BorrowedMessage<'_>, DlqEntry) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = platform::kafka::client_config(cfg)
        .set("group.id", "admetrics-dlq-admin")
        .set("enable.auto.commit", "false")
        .create()
        .context("kafka consumer")?;
    let topic = cfg.dlq_topic.as_str();
    let timeout = Duration::from_secs(10);
    let partitions = platform::kafka::topic_partitions(&consumer, topic, timeout)
        .with_context(|| format!("metadata of {topic}"))?;
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        }
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "reading {topic} did not reach its end within 120 s"
        );
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.with_context(|| format!("reading {topic}"))?;
        let (p, o) = (m.partition(), m.offset());
        if ends.get(&p).is_some_and(|end| o + 1 >= *end) {
            ends.remove(&p);
        }
        let h = |k: &str| {
            m.headers()
                .and_then(|h| header_str(h, k))
                .unwrap_or_default()
                .to_owned()
        };
        let entry = DlqEntry {
            at: format!("{p}:{o}"),
            reason: h("dlq.reason"),
            detail: h("dlq.detail"),
            source: format!(
                "{}/{}/{}",
                h("dlq.topic"),
                h("dlq.partition"),
                h("dlq.offset")
            ),
            rejected_at_ms: h("dlq.at_ms").parse().unwrap_or(0),
            payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        };
        if sel.matches(&entry.reason, &entry.at) {
            each(&m, entry)?;
        }
    }
    Ok(())
}

/// The selected records, in DLQ order per partition.
///
/// # Errors
///
/// When Kafka cannot be read.
pub fn list(cfg: &KafkaConfig, sel: &Selection) -> anyhow::Result<Vec<DlqEntry>> {
    let mut out = Vec::new();
    scan(cfg, sel, |_, e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

/// Counts of `entries` by reason.
pub fn by_reason(entries: &[DlqEntry]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in entries {
        *out.entry(e.reason.clone()).or_default() += 1;
    }
    out
}

/// Produces every selected record back to its source topic (same key and bytes, plus
/// headers `dlq.redriven_from` = its DLQ position and `dlq.redriven_at_ms`), or only
/// lists them when `dry_run`. Returns the records (re-)driven.
///
/// # Errors
///
/// When Kafka cannot be read, a record has no source topic, or a send fails (the
/// records sent before it stay sent; re-running is safe, see the module docs).
pub async fn redrive(
    cfg: &KafkaConfig,
    sel: &Selection,
    dry_run: bool,
) -> anyhow::Result<Vec<DlqEntry>> {
    let inputs = [cfg.traffic_topic.as_str(), cfg.effects_topic.as_str()];
    // (record, source topic, key, payload)
    type Redrive = (DlqEntry, String, Option<Vec<u8>>, Vec<u8>);
    let mut todo: Vec<Redrive> = Vec::new();
    scan(cfg, sel, |m, e| {
        let topic = m
            .headers()
            .and_then(|h| header_str(h, "dlq.topic"))
            .unwrap_or_default()
            .to_owned();
        anyhow::ensure!(
            inputs.contains(&topic.as_str()),
            "DLQ record {} came from `{topic}`, not an input topic ({inputs:?}); not re-driven",
            e.at
        );
        todo.push((
            e,
            topic,
            m.key().map(<[u8]>::to_vec),
            m.payload().unwrap_or_default().to_vec(),
        ));
        Ok(())
    })?;
    if dry_run {
        return Ok(todo.into_iter().map(|t| t.0).collect());
    }
    let producer: FutureProducer = platform::kafka::producer_config(cfg)
        .create()
        .context("kafka producer")?;
    let now = common::day::now_ms().to_string();
    let mut done = Vec::with_capacity(todo.len());
    for (entry, topic, key, payload) in todo {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dlq.redriven_from",
                value: Some(entry.at.as_str()),
            })
            .insert(Header {
                key: "dlq.redriven_at_ms",
                value: Some(now.as_str()),
            });
        let mut record = FutureRecord::to(&topic).payload(&payload).headers(headers);
        if let Some(k) = &key {
            record = record.key(k);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("re-driving {} to {topic}: {e}", entry.at))?;
        done.push(entry);
    }
    Ok(done)
}
