//! The `batch_runs` table: one row per day saying whether its batch results are final
//! (what the serving layer reads), and how its last run went.
//!
//! | column | meaning |
//! |---|---|
//! | `finality` | `none` (never succeeded), `final`, `revised` (recomputed after late data) |
//! | `run_status` | `running`, `succeeded`, `failed` (the last attempt) |
//! | `attempts` | runs started for the day |
//! | `archive_rows` | rows of the input files when the day was computed: a later count that differs means late data arrived |
//!
//! A failed run never changes `finality` or the day's results: they are replaced only
//! in the transaction that records success. A run holds a MySQL named lock while it
//! runs ([`RunLease`]); a `running` row whose lock is free was left by a killed
//! process, and the scheduler records it failed ([`fail_abandoned`]) before it looks
//! for due days, so `BatchRunFailed` fires and the next run retries the day.
//!
//! `batch_run_parts` holds one row per written part of a day (`shard` of `shards`; a
//! single worker writes part 0 of 1): see [`crate::recompute::output`].

use chrono::NaiveDate;
use mysql_async::prelude::Queryable;
use mysql_async::{IsolationLevel, Pool, TxOpts};

/// The code version recorded with each run.
pub const CODE_VERSION: &str = concat!("batch-layer ", env!("CARGO_PKG_VERSION"));

/// A day's run record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    /// The day.
    pub day: NaiveDate,
    /// `none`, `final` or `revised`.
    pub finality: String,
    /// `running`, `succeeded` or `failed`.
    pub run_status: String,
    /// Runs started.
    pub attempts: i64,
    /// Input rows counted at the last success.
    pub archive_rows: i64,
    /// Error of the last failure.
    pub error: Option<String>,
}

/// The columns of [`SELECT_RUNS`], in order.
type RunTuple = (NaiveDate, String, String, i64, i64, Option<String>);

/// Reads [`RunRow`]s; callers add the `WHERE` clause.
const SELECT_RUNS: &str =
    "SELECT day, finality, run_status, attempts, archive_rows, error FROM batch_runs";

impl From<RunTuple> for RunRow {
    fn from((day, finality, run_status, attempts, archive_rows, error): RunTuple) -> Self {
        RunRow {
            day,
            finality,
            run_status,
            attempts,
            archive_rows,
            error,
        }
    }
}

/// The MySQL named lock part `part` of a run of `day` holds while it runs (each part
/// of a split run its own: parts of one day run at once, e.g. the indexes of a
/// Kubernetes Indexed Job, and finish at different times). The server releases it
/// when the run's session ends, also when the process is killed, so a `running` row
/// whose locks are all free was left by runs that stopped without an outcome.
fn lease_name(day: NaiveDate, part: u32) -> String {
    format!("admetrics:batch-run:{day}/{part}")
}

/// A running part's lease: a session of its own holding [`lease_name`]. End it with
/// [`RunLease::release`]; a killed process's session ends by itself.
#[derive(Debug)]
pub struct RunLease {
    /// The session holding the lock; `None` when another process runs the same part
    /// (two schedulers started by mistake).
    session: Option<mysql_async::Conn>,
}

impl RunLease {
    /// Releases the lock by closing its session.
    pub async fn release(self) {
        if let Some(c) = self.session {
            c.disconnect().await.ok();
        }
    }
}

/// Marks a run of part `part` of `day` as started and takes its lease.
///
/// # Errors
///
/// MySQL errors.
pub async fn start(pool: &Pool, day: NaiveDate, part: u32) -> Result<RunLease, mysql_async::Error> {
    // The lock first: a sweep of abandoned runs that finds it free may only mark a row
    // whose `started_at` it read before this run began (see `fail_abandoned`).
    let mut session = pool.get_conn().await?;
    let got: Option<Option<i64>> = session
        .exec_first("SELECT GET_LOCK(?, 0)", (lease_name(day, part),))
        .await?;
    let mut c = pool.get_conn().await?;
    c.exec_drop(
        "INSERT INTO batch_runs (day, finality, run_status, attempts, started_at, code_version) \
         VALUES (?, 'none', 'running', 1, CURRENT_TIMESTAMP(3), ?) \
         ON DUPLICATE KEY UPDATE run_status = 'running', attempts = attempts + 1, \
         started_at = CURRENT_TIMESTAMP(3), finished_at = NULL, error = NULL",
        (day, CODE_VERSION),
    )
    .await?;
    Ok(RunLease {
        session: (got.flatten() == Some(1)).then_some(session),
    })
}

/// Records as failed the runs from `from` on that are `running` while no session
/// holds their lease: their process stopped without recording an outcome (killed,
/// out of memory, node lost). Their results and finality stay as they were (the
/// results are replaced only in the transaction that records success). Returns the
/// days and when their run had started.
///
/// # Errors
///
/// MySQL errors.
pub async fn fail_abandoned(
    pool: &Pool,
    from: NaiveDate,
) -> Result<Vec<(NaiveDate, String)>, mysql_async::Error> {
    let mut c = pool.get_conn().await?;
    let running: Vec<(NaiveDate, String)> = c
        .exec(
            "SELECT day, DATE_FORMAT(started_at, '%Y-%m-%dT%H:%i:%s.%fZ') FROM batch_runs \
             WHERE day >= ? AND run_status = 'running' ORDER BY day",
            (from,),
        )
        .await?;
    let mut failed = Vec::new();
    for (day, started) in running {
        // Any part still running holds its lock (COALESCE: the first holder, NULL
        // when every part's lock is free).
        let probes = vec!["IS_USED_LOCK(?)"; crate::recompute::MAX_PARTS as usize].join(", ");
        let names: Vec<String> = (0..crate::recompute::MAX_PARTS)
            .map(|part| lease_name(day, part))
            .collect();
        let holder: Option<Option<i64>> = c
            .exec_first(format!("SELECT COALESCE({probes})"), names)
            .await?;
        if holder.flatten().is_some() {
            continue; // still running somewhere
        }
        let error = format!(
            "the run started at {started} stopped without recording an outcome (process killed?)"
        );
        // Only the run read above: one that started since holds the lease.
        c.exec_drop(
            "UPDATE batch_runs SET run_status = 'failed', finished_at = CURRENT_TIMESTAMP(3), error = ? \
             WHERE day = ? AND run_status = 'running' \
             AND DATE_FORMAT(started_at, '%Y-%m-%dT%H:%i:%s.%fZ') = ?",
            (&error, day, &started),
        )
        .await?;
        if c.affected_rows() == 1 {
            metrics::counter!(common::telemetry::BATCH_RUNS_ABANDONED).increment(1);
            tracing::error!(%day, %error, "abandoned batch run recorded failed");
            failed.push((day, started));
        }
    }
    Ok(failed)
}

/// Records a failed run (results and finality stay as they were).
///
/// # Errors
///
/// MySQL errors.
pub async fn fail(pool: &Pool, day: NaiveDate, error: &str) -> Result<(), mysql_async::Error> {
    let mut c = pool.get_conn().await?;
    c.exec_drop(
        "UPDATE batch_runs SET run_status = 'failed', finished_at = CURRENT_TIMESTAMP(3), error = ? WHERE day = ?",
        (error, day),
    )
    .await
}

/// Every run record from `from` on, by day.
///
/// # Errors
///
/// MySQL errors.
pub async fn since(pool: &Pool, from: NaiveDate) -> Result<Vec<RunRow>, mysql_async::Error> {
    let mut c = pool.get_conn().await?;
    let rows: Vec<RunTuple> = c
        .exec(
            format!("{SELECT_RUNS} WHERE day >= ? ORDER BY day"),
            (from,),
        )
        .await?;
    Ok(rows.into_iter().map(RunRow::from).collect())
}

/// The parts `shard` (of `shards`) has written from `from` on: day -> archive rows
/// counted when the part was computed.
///
/// # Errors
///
/// MySQL errors.
pub async fn parts_since(
    pool: &Pool,
    from: NaiveDate,
    shard: u32,
    shards: u32,
) -> Result<std::collections::BTreeMap<NaiveDate, i64>, mysql_async::Error> {
    let mut c = pool.get_conn().await?;
    let rows: Vec<(NaiveDate, i64)> = c
        .exec(
            "SELECT day, archive_rows FROM batch_run_parts WHERE day >= ? AND shard = ? AND shards = ?",
            (from, shard, shards),
        )
        .await?;
    Ok(rows.into_iter().collect())
}

/// Starts the transaction that replaces a day's (part's) results, READ COMMITTED.
///
/// Parts of one day serialise on the day's `batch_runs` row (`SELECT ... FOR UPDATE`),
/// which is all they need; under InnoDB's default REPEATABLE READ the range `DELETE`s
/// by day also take gap locks reaching into the neighbouring day, and two workers on
/// different days then deadlocked (seen in the split-run test: ERROR 1213).
///
/// # Errors
///
/// MySQL errors.
pub async fn begin(
    conn: &mut mysql_async::Conn,
) -> Result<mysql_async::Transaction<'_>, mysql_async::Error> {
    let mut opts = TxOpts::default();
    opts.with_isolation_level(IsolationLevel::ReadCommitted);
    conn.start_transaction(opts).await
}
