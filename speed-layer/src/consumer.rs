//! The speed layer's Kafka consumer group: subscription to both input topics,
//! rebalances that move partition state, and dispatch of messages to partition tasks.
//!
//! Kafka's committed offsets are not used: each partition's next offsets are stored in
//! Redis with its results, and consumption resumes exactly after the last flushed event.
//! The group uses the classic protocol with the eager `range` assignor (README,
//! "Consumer group"): every rebalance revokes the whole assignment and hands out a
//! complete new one, and both topics' partition N land on the same member.
//!
//! The rebalance callback (which librdkafka runs inside `recv`) does no I/O: on
//! assignment it records the partitions and leaves them unassigned locally, so nothing
//! is fetched from Kafka's committed offsets. The dispatcher then takes ownership of
//! each partition in Redis (new epoch, stored offsets) with async calls and assigns the
//! partitions at those offsets. A slow Redis thus delays this member's start, never the
//! callback (which must return promptly, or librdkafka cannot serve the group). On
//! revocation, the partition's task stops without writing; whoever gets the partition
//! next resumes from Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use backon::Retryable as _;
use common::config::Config;
use common::event::TopicKind;
use common::telemetry::CONSUMER_LAG;
use futures::FutureExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::partition::{self, Burst, Ended, Inbound, PartitionError, Shared};
use crate::state::{self, Ownership, StateError};

/// A rebalance, as the callback records it for the dispatcher.
#[derive(Debug)]
enum Change {
    /// The group's complete new assignment: (topic, partition) pairs.
    Assigned(Vec<(String, i32)>),
    /// Partition numbers taken away.
    Revoked(Vec<i32>),
    /// The callback could not leave the partitions unassigned.
    Failed(String),
}

/// Consumer context: the rebalance callback's queue of changes and the topic names for
/// the lag statistics.
pub struct SpeedContext {
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

/// The partition numbers of a list, once each: both topics' partition N are one unit
/// of work (co-partitioned by user).
fn partition_numbers(parts: impl IntoIterator<Item = i32>) -> Vec<i32> {
    let mut parts: Vec<i32> = parts.into_iter().collect();
    parts.sort_unstable();
    parts.dedup();
    parts
}

impl ConsumerContext for SpeedContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partition_numbers(tpl.elements().iter().map(|e| e.partition()));
            tracing::info!(partitions = ?parts, "partitions revoked");
            self.push(Change::Revoked(parts));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        // librdkafka has just assigned the partitions at Kafka's committed offsets;
        // undo that locally (no I/O: it only stops the fetchers) until the dispatcher
        // has read the offsets stored in Redis.
        if let Err(e) = consumer.assign(&TopicPartitionList::new()) {
            self.push(Change::Failed(format!("deferring the assignment: {e}")));
            return;
        }
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        self.push(Change::Assigned(parts));
    }
}

impl SpeedContext {
    fn push(&self, c: Change) {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(c);
    }
}

struct Running {
    tx: mpsc::UnboundedSender<Burst>,
    /// Room in the partition's queue, in messages (`speed.partition_queue`): a burst
    /// takes a permit per message, released once the task has handled it.
    room: Arc<Semaphore>,
    stop: CancellationToken,
    /// Messages read for this partition and not yet handed over.
    staged: Vec<Inbound>,
}

/// Most messages the dispatcher takes from librdkafka's queue (without waiting)
/// before it hands them to their partitions: one channel send and one wake-up per
/// partition and burst instead of per message (they were a tenth of the speed
/// layer's time in `bench e2e`).
const DISPATCH_BURST: usize = 512;

/// The partitions this instance works on and their tasks.
struct Dispatcher {
    shared: Shared,
    running: HashMap<i32, Running>,
    tasks: JoinSet<(i32, Result<Ended, PartitionError>)>,
    /// Cancelled at shutdown: every task flushes what it holds, then ends.
    drain: CancellationToken,
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
        traffic: cfg.kafka.traffic_topic.clone(),
        effects: cfg.kafka.effects_topic.clone(),
        changes: Arc::clone(&changes),
    };
    let consumer: StreamConsumer<SpeedContext> =
        platform::kafka::consumer_config(&cfg.kafka, &cfg.speed.group_id)
            // The consumer-lag gauge comes from these statistics: every second, so it
            // is there within a second of the first fetch.
            .set("statistics.interval.ms", "1000")
            .create_with_context(ctx)
            .context("kafka consumer")?;
    consumer
        .subscribe(&[&cfg.kafka.traffic_topic, &cfg.kafka.effects_topic])
        .context("subscribing to the input topics")?;
    tracing::info!(group = %cfg.speed.group_id, brokers = %cfg.kafka.brokers, "speed layer consuming");

    let mut d = Dispatcher {
        shared,
        running: HashMap::new(),
        tasks: JoinSet::new(),
        drain: CancellationToken::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            msg = consumer.recv() => {
                // Then what librdkafka already holds, up to a burst, without waiting.
                let mut next = Some(msg);
                let mut taken = 0;
                let mut failed = None;
                while let Some(msg) = next.take() {
                    // A rebalance happens inside `recv`: apply it before the message,
                    // which may be the first of a newly assigned partition (what was
                    // staged before it goes to its tasks first).
                    if has_changes(&changes) {
                        d.hand_over().await;
                        if let Err(e) = d.apply_changes(&changes, &consumer).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    match msg {
                        Ok(m) => d.stage(&cfg, &m),
                        Err(e) => {
                            // librdkafka's fatal errors (a static member fenced by its own
                            // rejoin after a broker outage) leave the consumer unusable:
                            // exit; a restart resumes from the offsets stored in Redis.
                            if let Some((code, reason)) = consumer.client().fatal_error() {
                                failed = Some(anyhow::anyhow!("fatal Kafka consumer error {code:?}: {reason} (the speed layer must be restarted)"));
                            } else {
                                tracing::warn!(error = %e, "kafka consumer error");
                            }
                            break;
                        }
                    }
                    taken += 1;
                    if taken < DISPATCH_BURST {
                        next = consumer.recv().now_or_never();
                    }
                }
                d.hand_over().await;
                if let Some(e) = failed {
                    break Err(e);
                }
            }
            _ = tick.tick() => {
                if let Err(e) = d.apply_changes(&changes, &consumer).await {
                    break Err(e);
                }
            }
            Some(done) = d.tasks.join_next() => {
                match done {
                    Ok((p, Ok(ended))) => {
                        tracing::info!(partition = p, ?ended, "partition task ended");
                        if ended == Ended::Fenced { d.running.remove(&p); }
                    }
                    Ok((p, Err(e))) => break Err(anyhow::anyhow!(e).context(format!("partition {p}"))),
                    Err(e) => break Err(anyhow::anyhow!("partition task panicked: {e}")),
                }
            }
        }
    };
    d.drain(cfg.speed.shutdown_timeout).await;
    consumer.unsubscribe();
    result
}

/// Whether the rebalance callback recorded changes not applied yet.
fn has_changes(changes: &Mutex<Vec<Change>>) -> bool {
    !changes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_empty()
}

impl Dispatcher {
    /// Keeps a message for its partition's task (dropped when the partition is not
    /// running here: revoked, or fenced).
    fn stage<M: Message>(&mut self, cfg: &Config, m: &M) {
        let Some(topic) = cfg.kafka.topic_kind(m.topic()) else {
            return;
        };
        if let Some(r) = self.running.get_mut(&m.partition()) {
            r.staged.push(Inbound {
                topic,
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            });
        }
    }

    /// Hands each partition's staged messages to its task, in order (waits while a
    /// task's queue holds `speed.partition_queue` messages: backpressure).
    ///
    /// The queue is bounded in messages, not bursts: while one partition's task waits
    /// (for MySQL, say) the dispatcher goes on feeding the others until that
    /// partition's queue is full, as with a queue of single messages. (Bounded in
    /// bursts, a few slow, small bursts blocked every partition at once; a starved
    /// partition's watermark then followed the clock and ended effect waits whose
    /// clicks were still in Kafka.)
    async fn hand_over(&mut self) {
        let queue = self.shared.cfg.speed.partition_queue.max(1);
        for r in self.running.values_mut() {
            if r.staged.is_empty() {
                continue;
            }
            let messages = std::mem::take(&mut r.staged);
            let n = u32::try_from(messages.len().min(queue)).unwrap_or(u32::MAX);
            // The semaphore is never closed.
            let Ok(room) = Arc::clone(&r.room).acquire_many_owned(n).await else {
                continue;
            };
            // A closed channel means the task ended; its outcome is reaped by the
            // dispatcher's loop.
            let _ = r.tx.send(Burst { messages, room });
        }
    }

    /// Applies the rebalances recorded since the last call, in order.
    async fn apply_changes(
        &mut self,
        changes: &Mutex<Vec<Change>>,
        consumer: &StreamConsumer<SpeedContext>,
    ) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut *changes.lock().unwrap_or_else(PoisonError::into_inner));
        let last_revoke = pending
            .iter()
            .rposition(|c| matches!(c, Change::Revoked(_)));
        for (i, c) in pending.into_iter().enumerate() {
            match c {
                Change::Revoked(parts) => {
                    for p in parts {
                        if let Some(r) = self.running.remove(&p) {
                            r.stop.cancel();
                        }
                    }
                }
                // Revoked again before it was applied: nothing to start.
                Change::Assigned(_) if last_revoke.is_some_and(|r| r > i) => {}
                Change::Assigned(parts) => self.assign(parts, consumer).await?,
                Change::Failed(why) => anyhow::bail!("rebalance failed: {why}"),
            }
        }
        Ok(())
    }

    /// Takes ownership of the assigned partitions in Redis, assigns them locally at the
    /// offsets stored there (the beginning when none are), and starts their tasks.
    async fn assign(
        &mut self,
        parts: Vec<(String, i32)>,
        consumer: &StreamConsumer<SpeedContext>,
    ) -> anyhow::Result<()> {
        let numbers = partition_numbers(parts.iter().map(|(_, p)| *p));
        let mut owned = Vec::with_capacity(numbers.len());
        for &p in &numbers {
            let acquire = || {
                let mut conn = self.shared.redis.clone();
                let keys = self.shared.keys.clone();
                async move { state::acquire(&mut conn, &keys, p).await }
            };
            let own = acquire
                .retry(partition::backoff().with_max_times(10))
                .when(StateError::is_retriable)
                .notify(|e, d| tracing::warn!(partition = p, error = %e, retry_in = ?d, "taking ownership failed; retrying"))
                .await
                .with_context(|| format!("taking ownership of partition {p} in Redis"))?;
            owned.push(own);
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, p) in &parts {
            let Some(kind) = self.shared.cfg.kafka.topic_kind(topic) else {
                continue;
            };
            let own = owned
                .iter()
                .find(|o| o.partition == *p)
                .expect("every assigned partition was acquired");
            let offset = own.next_offsets[kind.index()].map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(topic, *p, offset)
                .context("assignment list")?;
        }
        // Eager protocol: `parts` is the complete assignment, so it replaces the (empty)
        // local one.
        consumer
            .assign(&tpl)
            .context("assigning partitions at the offsets stored in Redis")?;
        tracing::info!(partitions = ?numbers, "partitions assigned at offsets stored in Redis");
        for own in owned {
            self.start(own);
        }
        Ok(())
    }

    fn start(&mut self, own: Ownership) {
        let p = own.partition;
        if let Some(old) = self.running.remove(&p) {
            old.stop.cancel();
        }
        // Bounded by `room`, in messages.
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(self.shared.cfg.speed.partition_queue.max(1)));
        let stop = CancellationToken::new();
        let (s, st, dr) = (self.shared.clone(), stop.clone(), self.drain.clone());
        self.tasks
            .spawn(async move { (p, partition::run(s, own, rx, st, dr).await) });
        self.running.insert(
            p,
            Running {
                tx,
                room,
                stop,
                staged: Vec::new(),
            },
        );
    }

    /// Shutdown: every running partition closes its windows and writes them with their
    /// offsets, within `timeout` (after it, the rest resume from their last flush).
    async fn drain(mut self, timeout: Duration) {
        self.drain.cancel();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => {
                    tracing::error!("shutdown timeout: some partitions did not flush; they resume from their last flush");
                    self.tasks.abort_all();
                    break;
                }
                done = self.tasks.join_next() => match done {
                    None => break,
                    Some(Ok((p, Ok(ended)))) => tracing::info!(partition = p, ?ended, "partition drained"),
                    Some(Ok((p, Err(e)))) => tracing::error!(partition = p, error = %e, "partition failed while draining"),
                    Some(Err(e)) => tracing::error!(error = %e, "partition task panicked while draining"),
                }
            }
        }
    }
}
