//! The batch layer: the source of truth. It keeps every raw event forever and turns
//! each finished day into final, exact numbers.
//!
//! ```text
//!  ad-traffic ─┐                   object store (local dir, S3, GCS, Azure)
//!              ├─> archiver ─────> topic=<t>/date=<d>/hour=<h>/p<P>-<first>-<last>.parquet
//!  ad-effects ─┘  (commit after       │
//!                  upload)            v
//!              cron 02:30 / backfill ─> recompute day D ─> MySQL daily_ad_metrics, daily_uv,
//!                                      (exact, bounded      batch_runs (one transaction)
//!                                       memory, all cores)
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
//! - Late events land in their own event date; the next scheduled run notices that a
//!   final day's input changed and recomputes it as `revised` (see [`schedule`]).
//!
//! # Layout
//!
//! - [`archive`]: Parquet schema, file layout, object store.
//! - [`archiver`]: the Kafka -> Parquet consumer.
//! - [`recompute`]: the daily computation ([`recompute::compute`] is the core).
//! - [`runs`]: the `batch_runs` table. [`schedule`]: cron and late-data revisions.
//! - [`bench`]: throughput on the standard load.

pub mod archive;
pub mod archiver;
pub mod bench;
pub mod recompute;
pub mod runs;
pub mod schedule;
