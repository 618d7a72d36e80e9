//! Shared foundation of the ad-metrics platform: the event schema and its validation,
//! the attribution rules both paths apply, the metric counters, days and time zones,
//! configuration, the Redis key layout, MySQL schema and dimension access, telemetry
//! names, and (feature `kafka`) Kafka plumbing.
//!
//! ```text
//!             ad-traffic ─┐                ┌─> Redis (provisional, 10 s windows) ─┐
//!  producers ─┤           ├─> speed layer ─┤                                      ├─> serving layer ─> dashboard
//!             ad-effects ─┘        │       └─> ClickHouse (BI detail rows)        │
//!                 │                └─> ad-dlq (rejected messages)                  │
//!                 └─> archiver ─> Parquet archive ─> nightly recompute ─> MySQL (final)
//! ```
//!
//! # Layout
//!
//! - [`event`]: the wire schema (one place, versioned) and ids.
//! - [`decode`]: payload -> validated [`event::Event`] or a [`decode::Rejection`] with a stable reason.
//! - [`attribution`]: last-click direct / indirect / unattributed rules.
//! - [`counters`]: the additive metrics and derived ratios.
//! - [`day`]: advertiser-local days.
//! - [`config`]: TOML + environment configuration.
//! - [`redis_keys`]: where the speed layer's results and state live in Redis (one hash
//!   tag per Kafka partition).
//! - [`redis_conn`]: one Redis or a Redis Cluster behind one connection type; why a
//!   window flush stays atomic on a cluster; reads pipelined per slot.
//! - [`db`], [`dims`]: MySQL schema and the dimension tables.
//! - [`dataset`]: the TalkingData sample and its mapping onto events.
//! - [`telemetry`]: metric names, logging, Prometheus.
//! - `kafka` (feature `kafka`): client settings, topics, dead-letter records.

pub mod attribution;
pub mod config;
pub mod counters;
pub mod dataset;
pub mod day;
pub mod db;
pub mod decode;
pub mod dims;
pub mod event;
pub mod flat_json;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod redis_conn;
pub mod redis_keys;
pub mod shutdown;
pub mod speed_results;
pub mod telemetry;
