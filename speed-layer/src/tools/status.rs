//! `speed-layer status`: per partition, the offsets stored with the results in Redis
//! against the end of each topic (lag), the windows still open and the effects still
//! waiting. `--wait` blocks until every partition has caught up and written every
//! window, which is when Redis holds the final provisional numbers of what was
//! produced (the end-to-end command and the tests use it).

use std::time::{Duration, Instant};

use crate::state_keys::StateKeys;
use anyhow::Context as _;
use common::config::Config;
use common::event::TopicKind;
use common::redis_keys::Keys;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::pipeline::processor::Snapshot;

/// One partition's progress.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Partition number.
    pub partition: i32,
    /// Next offset stored in Redis per topic (traffic, effects); 0 when none.
    pub stored: [i64; 2],
    /// End offset (high watermark) per topic.
    pub end: [i64; 2],
    /// Windows not yet written.
    pub open_windows: usize,
    /// Effects waiting for their click.
    pub pending_effects: usize,
}

impl PartitionStatus {
    /// Messages not yet reflected in Redis.
    pub fn lag(&self) -> i64 {
        (self.end[0] - self.stored[0]).max(0) + (self.end[1] - self.stored[1]).max(0)
    }

    /// True when everything produced is consumed and written.
    pub fn settled(&self) -> bool {
        self.lag() == 0 && self.open_windows == 0 && self.pending_effects == 0
    }
}

/// Reads every partition's status.
///
/// # Errors
///
/// When Redis or Kafka do not answer.
pub async fn read(cfg: &Config) -> anyhow::Result<Vec<PartitionStatus>> {
    let keys = Keys::new(&cfg.redis.key_prefix);
    let mut conn = platform::redis_conn::RedisConn::connect(&cfg.redis)
        .await
        .context("connecting to Redis")?;
    let consumer: BaseConsumer = platform::kafka::client_config(&cfg.kafka)
        .create()
        .context("kafka client")?;
    let kafka = cfg.kafka.clone();
    let ends = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<[i64; 2]>> {
        (0..kafka.partitions)
            .map(|p| {
                let mut e = [0; 2];
                for t in TopicKind::ALL {
                    let (_, high) = consumer
                        .fetch_watermarks(kafka.topic(t), p, Duration::from_secs(10))
                        .with_context(|| {
                            format!("watermarks of {} partition {p}", kafka.topic(t))
                        })?;
                    e[t.index()] = high;
                }
                Ok(e)
            })
            .collect()
    })
    .await??;
    let mut out = Vec::new();
    for (p, end) in (0..cfg.kafka.partitions).zip(ends) {
        let off: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(keys.offsets(p))
            .query_async(&mut conn)
            .await?;
        let open: Option<String> = redis::cmd("GET")
            .arg(keys.open_windows(p))
            .query_async(&mut conn)
            .await?;
        let open_windows = match open {
            Some(s) => serde_json::from_str::<Snapshot>(&s)
                .map(|s| s.windows.open_count())
                .unwrap_or(usize::MAX),
            None => 0,
        };
        let pending_effects: usize = redis::cmd("HLEN")
            .arg(keys.pending(p))
            .query_async(&mut conn)
            .await?;
        let stored = [
            off.get(TopicKind::Traffic.as_str()).copied().unwrap_or(0),
            off.get(TopicKind::Effects.as_str()).copied().unwrap_or(0),
        ];
        out.push(PartitionStatus {
            partition: p,
            stored,
            end,
            open_windows,
            pending_effects,
        });
    }
    Ok(out)
}

/// Polls [`read`] until every partition is settled.
///
/// # Errors
///
/// When `timeout` passes first (the message says which partitions lag), or a read fails.
pub async fn wait_settled(cfg: &Config, timeout: Duration) -> anyhow::Result<Vec<PartitionStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = read(cfg).await?;
        if s.iter().all(PartitionStatus::settled) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            let behind: Vec<String> = s
                .iter()
                .filter(|p| !p.settled())
                .map(|p| {
                    format!(
                        "p{}: lag {}, open windows {}, pending {}",
                        p.partition,
                        p.lag(),
                        p.open_windows,
                        p.pending_effects
                    )
                })
                .collect();
            anyhow::bail!(
                "speed layer not settled after {timeout:?}: {}",
                behind.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
