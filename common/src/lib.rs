//! The contract of the ad-metrics platform, with no I/O: the event schema and its
//! validation, the attribution rules both paths apply, the metric counters, days and
//! time zones, configuration, the dimension types, the Redis key layout the speed
//! layer writes and the serving layer reads, and metric names. Connections to the
//! services are in the `platform` crate; the data sets of tools and tests in
//! `fixtures`.
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
//! - [`dims`]: the dimension rows (ad, advertiser, product) and their lookup trait.
//! - [`flat_json`]: the allocation-free scanner behind [`decode`].
//! - [`telemetry`]: metric names.

pub mod attribution;
pub mod config;
pub mod counters;
pub mod day;
pub mod decode;
pub mod dims;
pub mod event;
pub mod flat_json;
pub mod redis_keys;
pub mod telemetry;
