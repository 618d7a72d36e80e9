//! The broker-free core of the speed layer: decode -> validate -> dedup -> dimension
//! join -> attribution -> window aggregation. No I/O happens here, so the same code
//! runs under Kafka and Redis in production and over a file in the benchmark.

pub mod clicks;
pub mod dedup;
pub mod detail;
pub mod probe_table;
pub mod processor;
pub mod windows;
