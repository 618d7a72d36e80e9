//! The serving layer: one HTTP API for the advertiser dashboard that merges the batch
//! layer's final days with the speed layer's provisional ones.
//!
//! ```text
//!                 ┌─ batch_runs: is day D final? ── yes ─> daily_ad_metrics (MySQL)  source=batch, provisional=false
//!  GET /v1/... ───┤
//!                 └─ no ─> Redis hashes of the speed layer (all partitions, pipelined) source=speed, provisional=true
//! ```
//!
//! Tenancy comes from the API key only ([`auth`]): another advertiser's id in the path
//! answers 404, whatever the parameters say.
//!
//! # Layout
//!
//! - [`api`]: routes, parameters, the merge and the answer's shape.
//! - [`auth`]: API keys (hashed in MySQL) and principals.
//! - [`live`]: today's 10-second series and freshness.
//! - [`speed`]: Redis reads. [`batch`]: MySQL reads.
//! - [`error`]: the one JSON error shape.

pub mod api;
pub mod auth;
pub mod batch;
pub mod error;
pub mod live;
pub mod speed;
