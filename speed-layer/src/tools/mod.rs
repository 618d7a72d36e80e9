//! The speed layer's operator commands and benchmarks (subcommands of `speed-layer`
//! other than `run`); none of them is on the service's path.

pub mod bench;
pub mod bench_e2e;
pub mod bench_sink;
pub mod dlq_admin;
pub mod migrate;
pub mod replay;
pub mod status;
