//! A sealed batch inserted in one RowBinary INSERT (the file's bytes as they are) with
//! retries; once they are spent the
//! file moves to the spill directory and the operator is alerted.

use std::path::{Path, PathBuf};

use backon::{ExponentialBuilder, Retryable};
use common::config::ClickHouseConfig;
use common::telemetry::{
    CLICKHOUSE_INSERT_ERRORS, CLICKHOUSE_ROWS_SPILLED, CLICKHOUSE_ROWS_WRITTEN,
};
use tokio::sync::mpsc;

use super::error::SinkError;
use super::journal::{count_rows, read_batch};
use super::schema::DETAIL_TABLE;

/// The shard's inserter task: recovered journal files first, then each sealed batch
/// as it comes, each inserted or spilled.
pub(super) async fn inserter(
    client: clickhouse::Client,
    cfg: ClickHouseConfig,
    spill_dir: PathBuf,
    recovered: Vec<PathBuf>,
    mut sealed: mpsc::Receiver<PathBuf>,
) {
    for p in recovered {
        tracing::info!(file = %p.display(), "inserting journal left by an earlier run");
        insert_or_spill(&client, &cfg, &spill_dir, &p).await;
    }
    while let Some(p) = sealed.recv().await {
        insert_or_spill(&client, &cfg, &spill_dir, &p).await;
    }
}

/// Inserts one sealed file and deletes it; once the retries are spent, moves it to
/// `spill_dir` and alerts (`alert="clickhouse_spill"`).
pub(super) async fn insert_or_spill(
    client: &clickhouse::Client,
    cfg: &ClickHouseConfig,
    spill_dir: &Path,
    file: &Path,
) {
    match insert_file(client, cfg, file).await {
        Ok(n) => {
            metrics::counter!(CLICKHOUSE_ROWS_WRITTEN).increment(n as u64);
            if let Err(e) = tokio::fs::remove_file(file).await {
                tracing::warn!(file = %file.display(), error = %e, "inserted batch could not be deleted; it may be inserted again (deduplicated by FINAL)");
            }
        }
        Err(e) => {
            let name = file
                .file_name()
                .map(std::ffi::OsStr::to_os_string)
                .unwrap_or_default();
            let target = spill_dir.join(name);
            let rows = count_rows(file).await.unwrap_or(0);
            match tokio::fs::rename(file, &target).await {
                Ok(()) => {
                    metrics::counter!(CLICKHOUSE_ROWS_SPILLED).increment(rows as u64);
                    tracing::error!(alert = "clickhouse_spill", file = %target.display(), rows, error = %e,
                        "ClickHouse insert retries spent; batch spilled to disk. Run `speed-layer replay-spill` once ClickHouse is back");
                }
                Err(mv) => {
                    tracing::error!(alert = "clickhouse_spill", file = %file.display(), error = %e, move_error = %mv,
                    "ClickHouse insert retries spent and the batch could not be moved to the spill directory; it stays in the journal");
                }
            }
        }
    }
}

/// Inserts one file's rows in one INSERT, retrying with exponential backoff up to
/// `cfg.max_attempts` attempts while the error is retriable
/// ([`SinkError::is_retriable`]). Returns the row count.
///
/// # Errors
///
/// The last error once attempts are spent, the first one that is not retriable, or
/// [`SinkError::BadFile`] when the file is unreadable.
pub async fn insert_file(
    client: &clickhouse::Client,
    cfg: &ClickHouseConfig,
    file: &Path,
) -> Result<usize, SinkError> {
    let (body, rows) = read_batch(file).await?;
    if rows == 0 {
        return Ok(0);
    }
    let sql = format!("INSERT INTO {DETAIL_TABLE} FORMAT RowBinary");
    with_retries(cfg, file, || async {
        let mut ins = client.insert_formatted_with(sql.as_str());
        // `Bytes` clones share the buffer: a retry sends the same bytes again.
        ins.send(body.clone()).await?;
        ins.end().await
    })
    .await?;
    Ok(rows)
}

/// Runs `attempt` until it succeeds, its error is not retriable, or
/// `cfg.max_attempts` attempts are spent; counts and logs each failure.
async fn with_retries<F, Fut>(
    cfg: &ClickHouseConfig,
    file: &Path,
    attempt: F,
) -> Result<(), SinkError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), clickhouse::error::Error>>,
{
    let mut attempt = attempt;
    (|| {
        let once = attempt();
        async move { once.await.map_err(SinkError::from) }
    })
    .retry(
        ExponentialBuilder::default()
            .with_min_delay(cfg.retry_min_delay)
            .with_max_delay(cfg.retry_max_delay)
            .with_max_times(cfg.max_attempts.saturating_sub(1))
            .with_jitter(),
    )
    .when(SinkError::is_retriable)
    .notify(|e, d| {
        metrics::counter!(CLICKHOUSE_INSERT_ERRORS).increment(1);
        tracing::warn!(error = %e, retry_in = ?d, file = %file.display(), "ClickHouse insert failed; retrying");
    })
    .await
    .inspect_err(|e| {
        metrics::counter!(CLICKHOUSE_INSERT_ERRORS).increment(1);
        if !e.is_retriable() {
            tracing::error!(error = %e, file = %file.display(), "ClickHouse refused the insert with an error a retry cannot cure; not retrying");
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use clickhouse::error::Error as Ch;

    use super::*;

    /// How many attempts `with_retries` makes when every attempt fails with `error`.
    async fn attempts_on(error: fn() -> Ch) -> usize {
        let cfg = ClickHouseConfig {
            max_attempts: 4,
            retry_min_delay: Duration::from_millis(1),
            retry_max_delay: Duration::from_millis(2),
            ..ClickHouseConfig::default()
        };
        let n = AtomicUsize::new(0);
        let r = with_retries(&cfg, Path::new("batch.jsonl"), || {
            n.fetch_add(1, Ordering::Relaxed);
            async move { Err(error()) }
        })
        .await;
        assert!(r.is_err());
        n.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn a_schema_error_is_tried_once_and_a_timeout_until_attempts_are_spent() {
        let schema = || {
            Ch::BadResponse(
                "Code: 60, e.displayText() = DB::Exception: Table admetrics.events doesn't exist."
                    .into(),
            )
        };
        assert_eq!(
            attempts_on(schema).await,
            1,
            "a schema error is not retried"
        );
        assert_eq!(
            attempts_on(|| Ch::TimedOut).await,
            4,
            "a timeout is retried"
        );
    }
}
