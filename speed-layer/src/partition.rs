//! The task that owns one partition number `p` of both input topics: it decodes and
//! validates messages, dead-letters rejects, resolves dimensions, runs the
//! [`Processor`], and flushes closed windows with their offsets to Redis.
//!
//! It ends when the partition is revoked (without writing: the next owner resumes from
//! the offsets in Redis), when another instance fences it, or at shutdown (after a
//! final flush that closes every open window).

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use common::config::{Config, duration_ms};
use common::day::now_ms;
use common::decode::{Limits, RejectReason, Rejection, decode};
use common::event::TopicKind;
use common::redis_keys::Keys;
use common::telemetry::{
    CLICKS_TRACKED, DUPLICATES_DROPPED, EFFECTS_ATTRIBUTED, EFFECTS_PENDING, EVENTS_CONSUMED,
    EVENTS_PROCESSED, FLUSHES_FENCED, LATE_EVENTS, WATERMARK_LAG, WINDOW_FLUSH_DURATION,
    WINDOWS_CLOSED,
};
use platform::db::DbError;
use platform::kafka::DlqSource;
use rdkafka::producer::FutureProducer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clickhouse_sink::{SinkError, SinkHandle};
use crate::dims::DimCache;
use crate::dlq::{DeadLetters, DlqError};
use crate::pipeline::processor::{Message, Outcome, Processor, ProcessorConfig, Stats};
use crate::state::{self, Ownership, StateError, Ttls};
use crate::uv_cache::SentUsers;

/// A message handed from the consumer to its partition task.
#[derive(Debug)]
pub struct Inbound {
    /// Which input topic.
    pub topic: TopicKind,
    /// Offset in its partition.
    pub offset: i64,
    /// Message key (the user id).
    pub key: Option<Vec<u8>>,
    /// Payload; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
}

/// Messages of one partition handed over together, with their room in the
/// partition's queue (released when the burst is dropped, once handled).
#[derive(Debug)]
pub struct Burst {
    /// In offset order per topic.
    pub messages: Vec<Inbound>,
    /// A permit per message of the queue's bound (`speed.partition_queue`).
    pub room: tokio::sync::OwnedSemaphorePermit,
}

/// What every partition task of an instance shares.
#[derive(Clone)]
pub struct Shared {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Redis key builder.
    pub keys: Keys,
    /// Redis connection (single server or cluster; multiplexed, reconnecting).
    pub redis: platform::redis_conn::RedisConn,
    /// Dimension caches.
    pub dims: DimCache,
    /// Producer for dead letters.
    pub producer: FutureProducer,
    /// ClickHouse sink, when enabled.
    pub sink: Option<SinkHandle>,
}

/// Why a partition task stopped with an error. Each is fatal for the instance: the
/// process exits and restarts from the state in Redis (crash-only).
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Redis state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A dead letter could not be delivered.
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// The ClickHouse sink refused rows (its journal could not be written).
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// MySQL refused a dimension lookup with an error a retry cannot cure (a missing
    /// table or column, access denied): the operator must fix the database.
    #[error("dimension lookup: {0}")]
    Dimensions(#[source] DbError),
}

/// How a partition task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Revoked or its channel closed; nothing written after the last flush.
    Released,
    /// Another instance owns the partition now.
    Fenced,
    /// Shutdown: open windows were flushed.
    Drained,
}

struct Task {
    shared: Shared,
    own: Ownership,
    proc: Processor,
    dlq: DeadLetters,
    limits: Limits,
    ttl: Ttls,
    last_msg: [Instant; 2],
    last_flush: Instant,
    unflushed: usize,
    reported: Stats,
    sent_users: SentUsers,
    /// The flush being written, if any: the task goes on consuming meanwhile, and the
    /// next flush starts only after it (flushes are written in order, one at a time).
    in_flight: Option<tokio::task::JoinHandle<Result<Written, PartitionError>>>,
}

/// A flush that Redis has taken.
struct Written {
    /// The ownership after it (its flush sequence advanced).
    own: Ownership,
    /// How long the barrier and the write took, seconds.
    seconds: f64,
    /// Windows it closed.
    windows: usize,
    /// Its clock reading, ms UTC.
    now_ms: i64,
}

/// Runs the task of partition `own.partition` until revoked (`stop`), fenced, or
/// shut down (`shutdown`, with a final flush).
///
/// # Errors
///
/// [`PartitionError`] when state cannot be loaded or written, or a dead letter is
/// lost; the instance should exit and restart.
pub async fn run(
    shared: Shared,
    own: Ownership,
    mut rx: mpsc::UnboundedReceiver<Burst>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) -> Result<Ended, PartitionError> {
    let p = own.partition;
    let span = tracing::info_span!("partition", partition = p, epoch = own.epoch);
    async move {
        let pcfg = ProcessorConfig::from_config(p, &shared.cfg);
        let mut conn = shared.redis.clone();
        let load = || {
            let mut c = conn.clone();
            let keys = shared.keys.clone();
            async move { state::load(&mut c, &keys, &own, pcfg).await }
        };
        let proc = load.retry(backoff()).when(StateError::is_retriable).await?;
        tracing::info!(clicks = proc.clicks_len(), pending = proc.pending_len(), open_windows = proc.open_windows(),
            next_offsets = ?proc.next_offsets(), "partition state loaded");
        conn = shared.redis.clone();
        drop(conn);
        let mut task = Task {
            dlq: DeadLetters::new(shared.producer.clone(), &shared.cfg.kafka.dlq_topic, "speed-layer"),
            limits: shared.cfg.validation.limits(),
            ttl: Ttls::from_config(&shared.cfg),
            shared,
            own,
            proc,
            last_msg: [Instant::now(); 2],
            last_flush: Instant::now(),
            unflushed: 0,
            reported: Stats::default(),
            sent_users: SentUsers::default(),
            in_flight: None,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::with_capacity(2048);
        let mut bursts = Vec::with_capacity(8);
        let mut room = Vec::with_capacity(8);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    // The next owner resumes from what Redis holds; a write still in
                    // flight either lands first or is fenced by the new epoch.
                    if let Some(w) = task.in_flight.take() { w.abort(); }
                    return Ok(Ended::Released);
                }
                () = shutdown.cancelled() => {
                    let last = match task.flush(true).await {
                        Ok(()) => task.finish_in_flight().await,
                        Err(e) => Err(e),
                    };
                    return match last {
                        Err(PartitionError::State(StateError::Fenced(_))) => Ok(Ended::Fenced),
                        Err(e) => Err(e),
                        Ok(()) => Ok(Ended::Drained),
                    };
                }
                n = rx.recv_many(&mut bursts, 4) => {
                    if n == 0 {
                        return Ok(Ended::Released);
                    }
                    for b in bursts.drain(..) {
                        if buf.is_empty() { buf = b.messages; } else { buf.extend(b.messages); }
                        room.push(b.room);
                    }
                    task.handle(&mut buf).await?;
                    room.clear();
                }
                _ = tick.tick() => {}
            }
            match task.after_step().await {
                Err(PartitionError::State(StateError::Fenced(_))) => {
                    metrics::counter!(FLUSHES_FENCED).increment(1);
                    tracing::warn!("fenced: another instance owns this partition; stopping without writing");
                    return Ok(Ended::Fenced);
                }
                other => other?,
            }
        }
    }
    .instrument(span)
    .await
}

/// Retry schedule for Redis calls: 100 ms doubling to 5 s, jittered, without end.
pub(crate) fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(usize::MAX)
        .with_jitter()
}

impl Task {
    async fn handle(&mut self, buf: &mut Vec<Inbound>) -> Result<(), PartitionError> {
        let now = now_ms();
        self.proc.set_now(now);
        let next = self.proc.next_offsets();
        // Messages below the next offset were processed before (a re-fetch): skip.
        buf.retain(|m| next[m.topic.index()].is_none_or(|n| m.offset >= n));
        let decoded: Vec<Result<common::event::Event<'_>, Rejection>> = buf
            .iter()
            .map(|m| match &m.payload {
                Some(p) => decode(p, m.topic, now, &self.limits),
                None => Err(Rejection::new(
                    RejectReason::NotJson,
                    "empty message (tombstone)",
                )),
            })
            .collect();
        let dims = (|| {
            self.shared
                .dims
                .resolve(decoded.iter().filter_map(|d| d.as_ref().ok()))
        })
        .retry(backoff())
        .when(DbError::is_retriable)
        .notify(
            |e, d| tracing::warn!(error = %e, retry_in = ?d, "dimension lookup failed; retrying"),
        )
        .await
        .map_err(PartitionError::Dimensions)?;
        let p = self.own.partition;
        // The decoded events go through the core's stages as one batch; their
        // outcomes come back in order, to be merged with the decode rejections.
        let valid: Vec<Message<'_, '_>> = buf
            .iter()
            .zip(&decoded)
            .filter_map(|(m, d)| {
                d.as_ref().ok().map(|event| Message {
                    topic: m.topic,
                    offset: m.offset,
                    event,
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(valid.len());
        self.proc.process_batch(&valid, &dims, &mut outcomes);
        drop(valid);
        let mut outcomes = outcomes.into_iter();
        let mut consumed = [0_u64; 2];
        for (m, d) in buf.iter().zip(&decoded) {
            consumed[m.topic.index()] += 1;
            let outcome = match d {
                Ok(_) => outcomes
                    .next()
                    .expect("process_batch yields one outcome per message"),
                Err(r) => Outcome::Rejected(r.clone()),
            };
            if let Outcome::Rejected(r) = outcome {
                let topic = self.shared.cfg.kafka.topic(m.topic).to_owned();
                let src = DlqSource {
                    topic: &topic,
                    partition: p,
                    offset: m.offset,
                    stage: "speed-layer",
                };
                self.dlq
                    .send(
                        m.key.as_deref(),
                        m.payload.as_deref().unwrap_or_default(),
                        &r,
                        &src,
                        now,
                    )
                    .await?;
            }
            self.proc.consumed(m.topic, m.offset);
        }
        self.unflushed += buf.len();
        drop(decoded);
        buf.clear();
        // One clock read per batch and topic, not per message (a batch takes
        // milliseconds; the idle timeout is seconds).
        let arrived = Instant::now();
        for t in TopicKind::ALL {
            if consumed[t.index()] > 0 {
                self.last_msg[t.index()] = arrived;
                metrics::counter!(EVENTS_CONSUMED, "topic" => t.as_str())
                    .increment(consumed[t.index()]);
            }
        }
        if let Some(sink) = &self.shared.sink {
            let rows = self.proc.take_details();
            if !rows.is_empty() {
                sink.push(rows).await?;
            }
        }
        self.report();
        Ok(())
    }

    /// Publishes the processor's counters as metrics (deltas since the last report).
    fn report(&mut self) {
        let s = self.proc.stats();
        let r = self.reported;
        for t in TopicKind::ALL {
            let i = t.index();
            metrics::counter!(EVENTS_PROCESSED, "topic" => t.as_str())
                .increment(s.accepted[i] - r.accepted[i]);
        }
        metrics::counter!(DUPLICATES_DROPPED).increment(s.duplicates - r.duplicates);
        metrics::counter!(LATE_EVENTS).increment(s.late - r.late);
        for (i, name) in ["direct", "indirect", "none"].into_iter().enumerate() {
            metrics::counter!(EFFECTS_ATTRIBUTED, "attribution" => name)
                .increment(s.attributed[i] - r.attributed[i]);
        }
        self.reported = s;
    }

    /// After each message batch or tick: records a flush Redis has taken, and starts
    /// the next one when it is due.
    async fn after_step(&mut self) -> Result<(), PartitionError> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
        {
            self.finish_in_flight().await?;
        }
        self.maybe_flush().await
    }

    async fn maybe_flush(&mut self) -> Result<(), PartitionError> {
        let cfg = &self.shared.cfg.speed;
        let now = now_ms();
        let live_floor = now - duration_ms(cfg.out_of_orderness);
        for t in TopicKind::ALL {
            let quiet = self.last_msg[t.index()].elapsed();
            if quiet >= cfg.idle_timeout {
                // While nothing arrives, event time advances at most as fast as the wall
                // clock: a live stream's watermark follows the clock, but a partition
                // replaying or catching up on older data is not moved to now by a short
                // pause (a broker outage), which would end the effect wait of effects
                // whose clicks are still to come.
                // After ten times `idle_timeout` (30 s) of silence the stream has ended
                // or is live and quiet: the watermark follows the clock from then on.
                let newest = self.proc.newest_ts(t);
                let floor = if newest == i64::MIN || quiet >= cfg.idle_timeout * 10 {
                    live_floor
                } else {
                    live_floor.min(newest.saturating_add(duration_ms(quiet)))
                };
                self.proc.advance_idle(t, floor);
            }
        }
        let since = self.last_flush.elapsed();
        // A closed window is written within `min_flush_interval`; the day counters of
        // what arrived since the last flush within `early_fire_interval` (early
        // firing), whether or not a window closed.
        let due = (self.proc.has_closed_windows() && since >= cfg.min_flush_interval)
            || (self.unflushed > 0 && since >= cfg.early_fire_interval.max(cfg.min_flush_interval));
        if due { self.flush(false).await } else { Ok(()) }
    }

    /// Starts writing what was consumed since the last flush, after the flush in
    /// flight (if any) has been written. Returns once the write has started: the task
    /// consumes on while Redis (and the ClickHouse journal's sync) work, so their
    /// round trips no longer stop the partition, and a partition whose flush waits
    /// does not hold the others back through the dispatcher's queues.
    async fn flush(&mut self, close_all: bool) -> Result<(), PartitionError> {
        self.finish_in_flight().await?;
        let started = Instant::now();
        self.dlq.drain().await?;
        let mut flush = self.proc.take_flush(close_all);
        self.sent_users.filter(&mut flush.days.users);
        let windows = flush.closed.len();
        let now = now_ms();
        let (keys, ttl, own) = (self.shared.keys.clone(), self.ttl, self.own);
        let (conn, sink) = (self.shared.redis.clone(), self.shared.sink.clone());
        self.last_flush = Instant::now();
        self.unflushed = 0;
        let write = async move {
            if let Some(sink) = sink {
                // Detail rows of everything consumed so far (pushed before this
                // point) must be durable before the offsets that cover them are.
                sink.barrier().await?;
            }
            let flush_ref = &flush;
            let write = || {
                let mut c = conn.clone();
                let keys = keys.clone();
                let mut o = own;
                async move {
                    state::write_flush(&mut c, &keys, &mut o, flush_ref, now, ttl)
                        .await
                        .map(|()| o)
                }
            };
            let own = write
                .retry(backoff())
                .when(StateError::is_retriable)
                .notify(|e, d| tracing::warn!(error = %e, retry_in = ?d, "flush failed; retrying"))
                .await?;
            Ok(Written {
                own,
                seconds: started.elapsed().as_secs_f64(),
                windows,
                now_ms: now,
            })
        };
        self.in_flight = Some(tokio::spawn(write.in_current_span()));
        Ok(())
    }

    /// Waits for the flush in flight, if any, and records it.
    async fn finish_in_flight(&mut self) -> Result<(), PartitionError> {
        let Some(handle) = self.in_flight.take() else {
            return Ok(());
        };
        let w = match handle.await {
            Ok(r) => r?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Ok(()), // aborted at revocation
        };
        self.own = w.own;
        let secs = w.seconds;
        metrics::histogram!(WINDOW_FLUSH_DURATION).record(secs);
        metrics::counter!(WINDOWS_CLOSED).increment(w.windows as u64);
        let p = self.own.partition.to_string();
        #[allow(clippy::cast_precision_loss)] // gauges
        {
            metrics::gauge!(EFFECTS_PENDING, "partition" => p.clone())
                .set(self.proc.pending_len() as f64);
            metrics::gauge!(CLICKS_TRACKED, "partition" => p.clone())
                .set(self.proc.clicks_len() as f64);
            let lag_s = (w.now_ms - self.proc.watermark()) as f64 / 1000.0;
            metrics::gauge!(WATERMARK_LAG, "partition" => p).set(lag_s.max(0.0));
        }
        tracing::debug!(windows = w.windows, seconds = secs, "flushed");
        Ok(())
    }
}
