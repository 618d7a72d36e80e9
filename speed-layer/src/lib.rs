//! The speed layer: fresh, provisional metrics seconds after events happen.
//!
//! ```text
//!  ad-traffic p ─┐                                     ┌─> Redis: deltas + offsets + state, one Lua script per flush
//!                ├─> partition task p ─> Processor ────┤
//!  ad-effects p ─┘    (decode, validate,  (dedup, dims,└─> ClickHouse: enriched detail rows (batched, retried, spilled)
//!                      DLQ rejects)        attribution,
//!                                          10 s windows)
//! ```
//!
//! # Guarantees and how they hold
//!
//! - **Exactly-once counts and sums in Redis.** Each flush of partition `p` writes the
//!   day counters' deltas since the last flush (early firing, every
//!   `speed.early_fire_interval`), the closed windows' series buckets, the consumed
//!   offsets of both topics, and the changes of the attribution and dedup state in one
//!   Lua script, which Redis applies (and writes to its AOF) as one unit. On
//!   assignment the consumer starts at the offsets stored there. Whatever is killed when, an event is either in Redis with its
//!   offset, or neither.
//! - **No zombie writes.** A new owner of a partition increments the partition's epoch;
//!   the flush script refuses to run for an older epoch.
//! - **State survives and moves.** Clicks of the lookback, waiting effects, dedup ids
//!   and open windows live in Redis under the partition's hash tag, and are loaded by
//!   whichever instance is assigned the partition.
//! - **Nothing is dropped.** Invalid messages go to `ad-dlq` (delivery awaited before
//!   their offsets are stored); late events count toward their day.
//!
//! The Redis key layout is documented in [`common::redis_keys`].
//!
//! # Layout
//!
//! - [`service`]: the whole speed layer as one call (what `speed-layer run` runs).
//! - [`pipeline`]: the pure core ([`pipeline::processor::Processor`]).
//! - [`dims`]: MySQL dimensions behind bounded TTL caches.
//! - [`state`]: loading and flushing a partition's state in Redis; [`state_keys`]: its
//!   keys.
//! - [`uv_cache`]: the UV entries recently written, so a flush does not send them again.
//! - [`partition`]: the task that owns one partition.
//! - [`consumer`]: the Kafka consumer group, rebalances, dispatch.
//! - [`dlq`]: the dead-letter producer.
//! - [`clickhouse_sink`]: batched, retried, spilled ClickHouse writes.
//! - [`tools`]: the operator commands and benchmarks: [`tools::replay`] (the data
//!   set into MySQL and Kafka), [`tools::status`] (per-partition progress),
//!   [`tools::dlq_admin`] (list and re-drive dead letters), [`tools::migrate`], [`tools::bench`] (the
//!   pipeline), [`tools::bench_e2e`] (throughput and freshness through Kafka and
//!   Redis), [`tools::bench_sink`] (ClickHouse inserts).

pub mod clickhouse_sink;
pub mod consumer;
pub mod dims;
pub mod dlq;
pub mod partition;
pub mod pipeline;
pub mod service;
pub mod state;
pub mod state_keys;
pub mod tools;
pub mod uv_cache;
