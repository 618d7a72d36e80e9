//! The serving layer: one HTTP API for the advertiser dashboard that merges the batch
//! layer's final days with the speed layer's provisional ones.
//!
//! ```text
//!                 ┌─ final day (day_finality: day x advertiser's zone) ──> daily_ad_metrics,
//!                 │        day_revisions (MySQL)                         source=batch, provisional=false
//!  GET /v1/... ───┤        cached per (advertiser, day, zone-day version)
//!                 └─ other day ──> speed layer's Redis hashes (all partitions)   source=speed, provisional=true
//!                          cached per (advertiser, day) while the flush generation stands
//! ```
//!
//! Tenancy comes from the API key only ([`auth`]): another advertiser's id in the path
//! answers 404, whatever the parameters say.
//!
//! # Layout (dependencies point down this list)
//!
//! - [`service`]: the entry point, `run(config, shutdown)`; [`tools`]: key management.
//! - [`server`]: the HTTP/1.1 loop and its timeouts.
//! - [`routes`]: the router, security headers, the handlers of the static and health
//!   routes and of `/metrics`; [`live`]: `/realtime` and `/freshness`;
//!   [`reconciliation`]: `/reconciliation` (internal keys).
//! - [`state`]: what handlers share; [`auth`]: API keys, their cache, rate limits;
//!   [`params`]: strict parameter parsing.
//! - [`read_path`]: the version-checked caches in front of the stores (its docs give
//!   the versions, the bounds and the cache keys).
//! - [`batch`]: MySQL reads; Redis reads are `platform::speed_results`.
//! - [`merge`]: pure: batch days + speed days -> answer rows and totals.
//! - [`error`]: the one JSON error shape.

pub mod auth;
pub mod batch;
pub mod error;
pub mod live;
pub mod merge;
pub mod params;
pub mod read_path;
pub mod reconciliation;
pub mod routes;
pub mod server;
pub mod service;
pub mod state;
pub mod tools;
