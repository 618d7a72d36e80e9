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
//! in the transaction that records success.
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

/// Marks a run of `day` as started.
///
/// # Errors
///
/// MySQL errors.
pub async fn start(pool: &Pool, day: NaiveDate) -> Result<(), mysql_async::Error> {
    let mut c = pool.get_conn().await?;
    c.exec_drop(
        "INSERT INTO batch_runs (day, finality, run_status, attempts, started_at, code_version) \
         VALUES (?, 'none', 'running', 1, CURRENT_TIMESTAMP(3), ?) \
         ON DUPLICATE KEY UPDATE run_status = 'running', attempts = attempts + 1, \
         started_at = CURRENT_TIMESTAMP(3), finished_at = NULL, error = NULL",
        (day, CODE_VERSION),
    )
    .await
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
