//! The speed layer's Kafka consumer group: subscription to both input topics,
//! rebalances that move partition state, and dispatch of messages to partition tasks.
//!
//! On assignment, the rebalance callback takes ownership of each partition number in
//! Redis (new epoch) and assigns the partitions at the offsets stored there with the
//! results, so consumption resumes exactly after the last flushed event. Kafka's own
//! committed offsets are not used. On revocation, the partition's task stops without
//! writing; whoever gets the partition next resumes from Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use common::config::Config;
use common::event::TopicKind;
use common::redis_keys::Keys;
use common::telemetry::CONSUMER_LAG;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::partition::{self, Ended, Inbound, PartitionError, Shared};
use crate::state::{self, Ownership};

/// What the rebalance callback tells the dispatcher.
#[derive(Debug)]
enum Change {
    Assigned(Ownership),
    Revoked(Vec<i32>),
    Failed(String),
}

/// Consumer context: owns the blocking Redis client the rebalance callback uses.
pub struct SpeedContext {
    redis: common::config::RedisConfig,
    keys: Keys,
    traffic: String,
    effects: String,
    changes: Arc<Mutex<Vec<Change>>>,
}

impl ClientContext for SpeedContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag of
    /// each owned partition, as the newest offset on the broker minus the next offset
    /// handed to this process.
    fn stats(&self, stats: rdkafka::Statistics) {
        for (topic, t) in &stats.topics {
            let kind = if *topic == self.traffic {
                TopicKind::Traffic
            } else if *topic == self.effects {
                TopicKind::Effects
            } else {
                continue;
            };
            for (p, part) in &t.partitions {
                if *p < 0 || part.hi_offset < 0 || part.app_offset < 0 {
                    continue;
                }
                #[allow(clippy::cast_precision_loss)]
                metrics::gauge!(CONSUMER_LAG, "topic" => kind.as_str(), "partition" => p.to_string())
                    .set((part.hi_offset - part.app_offset).max(0) as f64);
            }
        }
    }
}

/// The partition numbers of a rebalance's list, once each: both topics' partition N
/// are one unit of work (co-partitioned by user).
fn partition_numbers(tpl: &TopicPartitionList) -> Vec<i32> {
    let mut parts: Vec<i32> = tpl
        .elements()
        .iter()
        .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
        .collect();
    parts.sort_unstable();
    parts.dedup();
    parts
}

impl ConsumerContext for SpeedContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partition_numbers(tpl);
            tracing::info!(partitions = ?parts, "partitions revoked");
            self.push(Change::Revoked(parts));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let parts = partition_numbers(tpl);
        match self.take_ownership(&parts, tpl) {
            Ok((owned, positioned)) => {
                // Re-assign at the offsets stored with the results in Redis.
                if let Err(e) = consumer.assign(&positioned) {
                    self.push(Change::Failed(format!("assign at stored offsets: {e}")));
                    return;
                }
                tracing::info!(partitions = ?parts, "partitions assigned at offsets stored in Redis");
                for own in owned {
                    self.push(Change::Assigned(own));
                }
            }
            Err(e) => self.push(Change::Failed(format!("taking ownership in Redis: {e}"))),
        }
    }
}

impl SpeedContext {
    fn push(&self, c: Change) {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(c);
    }

    fn take_ownership(
        &self,
        parts: &[i32],
        assigned: &TopicPartitionList,
    ) -> Result<(Vec<Ownership>, TopicPartitionList), anyhow::Error> {
        let mut conn = common::redis_conn::BlockingRedis::connect(&self.redis)?;
        let mut owned = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for &p in parts {
            let own = state::acquire_blocking(&mut conn, &self.keys, p)?;
            for (topic, kind) in [
                (&self.traffic, TopicKind::Traffic),
                (&self.effects, TopicKind::Effects),
            ] {
                if assigned.find_partition(topic, p).is_some() {
                    let offset =
                        own.next_offsets[kind.index()].map_or(Offset::Beginning, Offset::Offset);
                    tpl.add_partition_offset(topic, p, offset)?;
                }
            }
            owned.push(own);
        }
        Ok((owned, tpl))
    }
}

struct Running {
    tx: mpsc::Sender<Inbound>,
    stop: CancellationToken,
}

/// Runs the speed layer until `shutdown` fires (then drains: every partition flushes
/// its open windows) or a partition fails.
///
/// # Errors
///
/// When a service is unreachable at start, or a partition task fails (the process
/// should exit and be restarted; state is in Redis).
pub async fn run(
    cfg: Arc<Config>,
    shared: Shared,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let ctx = SpeedContext {
        redis: cfg.redis.clone(),
        keys: shared.keys.clone(),
        traffic: cfg.kafka.traffic_topic.clone(),
        effects: cfg.kafka.effects_topic.clone(),
        changes: Arc::clone(&changes),
    };
    let consumer: StreamConsumer<SpeedContext> =
        common::kafka::consumer_config(&cfg.kafka, &cfg.speed.group_id)
            // The consumer-lag gauge comes from these statistics: every second, so it
            // is there within a second of the first fetch.
            .set("statistics.interval.ms", "1000")
            .create_with_context(ctx)
            .context("kafka consumer")?;
    consumer
        .subscribe(&[&cfg.kafka.traffic_topic, &cfg.kafka.effects_topic])
        .context("subscribing to the input topics")?;
    tracing::info!(group = %cfg.speed.group_id, brokers = %cfg.kafka.brokers, "speed layer consuming");

    let drain = CancellationToken::new();
    let mut running: HashMap<i32, Running> = HashMap::new();
    let mut tasks: JoinSet<(i32, Result<Ended, PartitionError>)> = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            msg = consumer.recv() => {
                if let Err(e) = apply_changes(&changes, &shared, &mut running, &mut tasks, &drain, cfg.speed.partition_queue) {
                    break Err(e);
                }
                match msg {
                    Ok(m) => {
                        let Some(topic) = cfg.kafka.topic_kind(m.topic()) else { continue };
                        if let Some(r) = running.get(&m.partition()) {
                            let inbound = Inbound {
                                topic,
                                offset: m.offset(),
                                key: m.key().map(<[u8]>::to_vec),
                                payload: m.payload().map(<[u8]>::to_vec),
                            };
                            // A closed channel means the task ended; its outcome is reaped below.
                            let _ = r.tx.send(inbound).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                }
            }
            _ = tick.tick() => {
                if let Err(e) = apply_changes(&changes, &shared, &mut running, &mut tasks, &drain, cfg.speed.partition_queue) {
                    break Err(e);
                }
            }
            Some(done) = tasks.join_next() => {
                match done {
                    Ok((p, Ok(ended))) => {
                        tracing::info!(partition = p, ?ended, "partition task ended");
                        if ended == Ended::Fenced { running.remove(&p); }
                    }
                    Ok((p, Err(e))) => break Err(anyhow::anyhow!(e).context(format!("partition {p}"))),
                    Err(e) => break Err(anyhow::anyhow!("partition task panicked: {e}")),
                }
            }
        }
    };
    // Drain: every running partition closes its windows and writes them with offsets.
    drain.cancel();
    let deadline = tokio::time::sleep(cfg.speed.shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => {
                tracing::error!("shutdown timeout: some partitions did not flush; they resume from their last flush");
                tasks.abort_all();
                break;
            }
            done = tasks.join_next() => match done {
                None => break,
                Some(Ok((p, Ok(ended)))) => tracing::info!(partition = p, ?ended, "partition drained"),
                Some(Ok((p, Err(e)))) => tracing::error!(partition = p, error = %e, "partition failed while draining"),
                Some(Err(e)) => tracing::error!(error = %e, "partition task panicked while draining"),
            }
        }
    }
    consumer.unsubscribe();
    result
}

fn apply_changes(
    changes: &Mutex<Vec<Change>>,
    shared: &Shared,
    running: &mut HashMap<i32, Running>,
    tasks: &mut JoinSet<(i32, Result<Ended, PartitionError>)>,
    drain: &CancellationToken,
    queue: usize,
) -> anyhow::Result<()> {
    let pending = std::mem::take(&mut *changes.lock().unwrap_or_else(PoisonError::into_inner));
    for c in pending {
        match c {
            Change::Revoked(parts) => {
                for p in parts {
                    if let Some(r) = running.remove(&p) {
                        r.stop.cancel();
                    }
                }
            }
            Change::Assigned(own) => {
                let p = own.partition;
                if let Some(old) = running.remove(&p) {
                    old.stop.cancel();
                }
                let (tx, rx) = mpsc::channel(queue);
                let stop = CancellationToken::new();
                let (s, st, dr) = (shared.clone(), stop.clone(), drain.clone());
                tasks.spawn(async move { (p, partition::run(s, own, rx, st, dr).await) });
                running.insert(p, Running { tx, stop });
            }
            Change::Failed(why) => anyhow::bail!("rebalance failed: {why}"),
        }
    }
    Ok(())
}
