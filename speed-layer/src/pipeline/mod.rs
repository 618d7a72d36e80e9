//! The broker-free core of the speed layer, one module per stage: decode and
//! validate (`common::decode`) -> dimension join ([`enrich`]) -> dedup ([`dedup`]) ->
//! attribution ([`clicks`], [`effect_wait`]) -> window aggregation ([`windows`]) ->
//! flush; [`processor`] runs them in turn. No I/O happens here, so the same code runs
//! under Kafka and Redis in production and over a file in the benchmark.

pub mod checkpoint;
pub mod clicks;
pub mod dedup;
pub mod detail;
pub mod effect_wait;
pub mod enrich;
pub mod probe_table;
pub mod processor;
pub mod watermark;
pub mod windows;
