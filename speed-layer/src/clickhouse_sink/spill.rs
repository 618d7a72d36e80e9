//! Spilled batches loaded back into ClickHouse (`speed-layer replay-spill`), each file
//! deleted only after its insert was acknowledged.

use std::path::Path;

use common::config::ClickHouseConfig;

use super::error::SinkError;
use super::insert::insert_file;
use super::journal::list_journal;
use super::schema::client;
use super::shard_sinks;

/// Loads every spilled file of every shard into its shard, deleting each only after
/// its insert was acknowledged. Returns (files, rows) loaded.
///
/// # Errors
///
/// The first file that still cannot be inserted (it and later ones stay in place).
pub async fn replay_spill(
    cfg: &ClickHouseConfig,
    state_dir: &Path,
) -> Result<(usize, usize), SinkError> {
    let (mut n_files, mut n_rows) = (0, 0);
    for (shard, dirs) in shard_sinks(cfg, state_dir) {
        let (f, r) = replay_shard_spill(&shard, &dirs.spill).await?;
        n_files += f;
        n_rows += r;
    }
    Ok((n_files, n_rows))
}

/// [`super::replay_spill`] for one shard's spill directory.
pub(super) async fn replay_shard_spill(
    cfg: &ClickHouseConfig,
    spill_dir: &Path,
) -> Result<(usize, usize), SinkError> {
    if !spill_dir.exists() {
        return Ok((0, 0));
    }
    let client = client(cfg);
    let mut files = list_journal(spill_dir)
        .await
        .map_err(|e| SinkError::journal(spill_dir, e))?;
    files.sort();
    let (mut n_files, mut n_rows) = (0, 0);
    for f in files {
        let n = insert_file(&client, cfg, &f).await?;
        tokio::fs::remove_file(&f)
            .await
            .map_err(|e| SinkError::journal(&f, e))?;
        tracing::info!(file = %f.display(), rows = n, "spilled batch loaded");
        n_files += 1;
        n_rows += n;
    }
    Ok((n_files, n_rows))
}
