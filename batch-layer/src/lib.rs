//! The batch layer: the source of truth. It keeps every raw event forever and turns
//! each finished day into final, exact numbers.
//!
//! ```text
//!  ad-traffic ─┐                   object store (local dir, S3, GCS, Azure)
//!              ├─> archiver ─────> topic=<t>/date=<d>/hour=<h>/p<P>-<first>-<last>.parquet
//!  ad-effects ─┘  (commit after       │
//!                  upload)            v
//!              every 15 min / backfill ─> recompute day D ─> MySQL daily_ad_metrics, daily_uv,
//!              (zones whose D closed,     (exact, bounded      day_finality, day_revisions,
//!               archive complete)          memory, all cores)  batch_runs (one transaction)
//!                                               └─> reconciliation: speed (Redis) vs batch
//! ```
//!
//! # Guarantees
//!
//! - The archive holds every event exactly once: file names derive from partition and
//!   offset range, uncommitted batches are cleaned before re-consuming (see
//!   [`archiver`]).
//! - A day's results are replaced atomically with its `batch_runs` record; a failed run
//!   changes neither (see [`runs`]).
//! - A day split across N workers (`--shard i/N`, by Kafka partition = hash of the
//!   user) turns final only when its last part is written, with the same rows as one
//!   worker (see [`recompute::output`]).
//! - A day turns final per time zone, only once it has ended there plus
//!   `batch.late_allowance` and the archive holds every event up to that instant; a
//!   day still open is refused, one whose archive lags waits (see [`finality`]).
//! - Every advertiser-day that turns final is reconciled with the speed layer's
//!   numbers (see [`reconcile`]); a revision keeps the previous totals.
//! - Late events land in their own event date; the next scheduled run notices that a
//!   final day's input changed and recomputes it as `revised` (see [`schedule`]).
//!
//! # Layout
//!
//! - [`archive`]: Parquet schema, file layout, object store.
//! - [`archiver`]: the Kafka -> Parquet consumer.
//! - [`recompute`]: the daily computation ([`recompute::compute`] is the core).
//! - [`finality`]: when a day may turn final. [`reconcile`]: speed vs batch.
//! - [`runs`]: the `batch_runs` table. [`schedule`]: cron and late-data revisions.
//! - [`totals`]: advertiser-day totals (revisions, reconciliation).
//! - [`service`]: the entry points of the archiver and the scheduler.
//! - [`tools`]: the operator commands (recompute by hand, archive status,
//!   reconcile) and the benchmark ([`tools::bench`]).

pub mod archive;
pub mod archiver;
pub mod finality;
pub mod recompute;
pub mod reconcile;
pub mod runs;
pub mod schedule;
pub mod service;
pub mod tools;
pub mod totals;
