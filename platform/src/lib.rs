//! How the ad-metrics services reach the real components, apart from the contract in
//! `common` (which has no I/O): one Redis or a Redis Cluster behind one connection
//! type, the MySQL pool, schema and dimension fetch, Kafka client settings and
//! dead-letter records (feature `kafka`), the speed layer's results as the serving
//! and batch layers read them back, the tracing and Prometheus set-up, and process
//! shutdown.
//!
//! # Layout
//!
//! - [`redis_conn`]: one Redis or a Redis Cluster behind one connection type; why a
//!   window flush stays atomic on a cluster; reads pipelined per slot.
//! - [`speed_results`]: the speed layer's day counters and UV, read from Redis.
//! - [`db`], [`dims`]: the MySQL pool and schema; dimension rows fetched by id.
//! - `kafka` (feature `kafka`): client settings, topics, dead-letter records.
//! - [`telemetry`]: the tracing subscriber and the Prometheus exporter.
//! - [`shutdown`]: the root cancellation token and the signals that fire it.

pub mod db;
pub mod dims;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod redis_conn;
pub mod shutdown;
pub mod speed_results;
pub mod telemetry;
