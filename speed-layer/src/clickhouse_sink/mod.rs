//! The ClickHouse sink of enriched detail rows (the design brief, "ClickHouse sink").
//!
//! ```text
//!  partition tasks ──push──> sink task ──append──> journal/current.rowbinary
//!                  ─barrier─>   │ seal at 10 000 rows (at most 1/s) or 15 s
//!                               v
//!                journal/batch-<n>.rowbinary ──> inserter: the file's bytes as one
//!                                                  INSERT ... FORMAT RowBinary, retried
//!                                                   ├─ ok: delete the file
//!                                                   └─ retries spent, or an error a retry
//!                                                      cannot cure: move to spill/, alert
//! ```
//!
//! Rows arrive encoded in ClickHouse's RowBinary by the partition tasks
//! ([`crate::pipeline::detail`]): the journal appends those bytes and the inserter sends
//! a sealed file as it is, so a row is encoded once and never parsed again (a JSON
//! journal, serialised and parsed back before each insert, was a third of the
//! speed layer's CPU in `bench e2e`). Journal files of JSON lines left by an earlier
//! version are still inserted and replayed.
//!
//! Rows are journaled on local disk as they arrive, and a partition task's `barrier`
//! (before it stores offsets in Redis) makes them durable, so rows of events whose
//! offsets are stored are never only in memory. A journal that cannot be written (a
//! full disk) takes no rows after its first failure and fails every barrier, so the
//! partition tasks stop and the process exits naming the file and the system's error
//! (`journal`, "A write that fails"). A sealed batch is a file: its rows
//! and their order never change between retries. After a crash, leftover journal
//! files are inserted at start. Spilled files are loaded by `speed-layer replay-spill`,
//! which deletes each file only after ClickHouse acknowledged it. Duplicates from
//! re-inserts collapse in the `ReplacingMergeTree` table (read with `FINAL`).
//!
//! Writes go to the local table named in config, never through a `Distributed` table.
//!
//! # Shards
//!
//! With `clickhouse.shards` (one HTTP URL per shard) each shard has its own local
//! tables, rollups (materialized views fire on the shard's own inserts) and its own
//! journal, retries and spill directory (`<state_dir>/clickhouse/shard-<i>/`), so a
//! shard that is down delays or spills only its rows. A row goes to shard
//! `sipHash64(event_id) % shards` ([`shard_of`]), the sharding key of the
//! `events_all` `Distributed` table: an event's duplicates always meet on one shard,
//! where `FINAL` collapses them. BI reads the `*_all` tables.
//!
//! # Layout
//!
//! - [`schema`]: the DDL, clients and the shard of a row.
//! - `journal`: rows appended to local files and sealed into batches.
//! - `error`: [`SinkError`], and which ClickHouse errors are retried (by server code).
//! - `insert`: a sealed batch inserted with retries, or spilled.
//! - [`spill`]: loading spilled files back (`speed-layer replay-spill`).

mod error;
mod insert;
mod journal;
pub mod schema;
pub mod spill;

use std::path::{Path, PathBuf};

use common::config::ClickHouseConfig;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::pipeline::detail::{DetailRows, EncodedRows};

use insert::inserter;
use journal::{Batcher, batch_seq, cut_torn_tail, is_open_journal, list_journal, sealed_name};

pub use error::{SinkError, server_code};
pub use insert::insert_file;
pub use schema::{
    DETAIL_TABLE, SCHEMA_SQL, client, ident, migrate, schema_statements, server_client, shard_of,
};
pub use spill::replay_spill;

enum SinkMsg {
    Rows(EncodedRows),
    Barrier(oneshot::Sender<Result<(), SinkError>>),
}

/// Handle partition tasks use to hand rows to the sink (one channel per shard).
#[derive(Clone, Debug)]
pub struct SinkHandle {
    shards: Vec<mpsc::Sender<SinkMsg>>,
}

impl SinkHandle {
    /// Hands rows to the sink (waits when the sink is behind: backpressure).
    ///
    /// # Errors
    ///
    /// When the sink task has stopped.
    /// `rows` were split by shard when they were made, for as many shards as this
    /// handle has (`clickhouse.shards`).
    pub async fn push(&self, rows: DetailRows) -> Result<(), SinkError> {
        let split = rows.into_shards();
        debug_assert_eq!(
            split.len(),
            self.shards.len(),
            "rows split for another shard count"
        );
        for (tx, rows) in self.shards.iter().zip(split) {
            if rows.rows > 0 {
                tx.send(SinkMsg::Rows(rows))
                    .await
                    .map_err(|_| SinkError::Stopped)?;
            }
        }
        Ok(())
    }

    /// Returns once every row pushed so far is durable (journaled on disk).
    ///
    /// # Errors
    ///
    /// When the journal cannot be written or the sink has stopped.
    pub async fn barrier(&self) -> Result<(), SinkError> {
        let stopped = || SinkError::Stopped;
        let mut acks = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (tx, rx) = oneshot::channel();
            shard
                .send(SinkMsg::Barrier(tx))
                .await
                .map_err(|_| stopped())?;
            acks.push(rx);
        }
        for rx in acks {
            rx.await.map_err(|_| stopped())??;
        }
        Ok(())
    }
}

/// Directories under the state directory.
#[derive(Debug, Clone)]
pub struct SinkDirs {
    /// Rows not yet acknowledged by ClickHouse.
    pub journal: PathBuf,
    /// Batches whose retries were spent.
    pub spill: PathBuf,
}

impl SinkDirs {
    /// `<state_dir>/clickhouse/{journal,spill}` of an unsharded deployment, else
    /// `<state_dir>/clickhouse/shard-<shard>/{journal,spill}`.
    pub fn of_shard(state_dir: &Path, shard: usize, shards: usize) -> Self {
        let base = if shards <= 1 {
            state_dir.join("clickhouse")
        } else {
            state_dir.join(format!("clickhouse/shard-{shard}"))
        };
        SinkDirs {
            journal: base.join("journal"),
            spill: base.join("spill"),
        }
    }
}

/// Each shard's configuration with its journal and spill directories.
fn shard_sinks(cfg: &ClickHouseConfig, state_dir: &Path) -> Vec<(ClickHouseConfig, SinkDirs)> {
    let shards = cfg.per_shard();
    let n = shards.len();
    shards
        .into_iter()
        .enumerate()
        .map(|(i, shard)| (shard, SinkDirs::of_shard(state_dir, i, n)))
        .collect()
}

/// Starts the sink of every shard ([`start_shard`]); the handle routes each row to its
/// shard.
///
/// # Errors
///
/// When the directories cannot be created.
pub async fn start(
    cfg: &ClickHouseConfig,
    state_dir: &Path,
    shutdown: &CancellationToken,
) -> std::io::Result<(SinkHandle, tokio::task::JoinSet<()>)> {
    let mut set = tokio::task::JoinSet::new();
    let mut handle = SinkHandle { shards: Vec::new() };
    for (shard, dirs) in shard_sinks(cfg, state_dir) {
        let tx = start_shard(shard, dirs, shutdown.clone(), &mut set).await?;
        handle.shards.push(tx);
    }
    Ok((handle, set))
}

/// Starts one shard's sink: a task batching rows into journal files, and an inserter
/// task.
/// Journal files left by an earlier run are inserted first. Both tasks end after
/// `shutdown` fires and the last batch was inserted or spilled.
///
/// # Errors
///
/// When the directories cannot be created.
async fn start_shard(
    cfg: ClickHouseConfig,
    dirs: SinkDirs,
    shutdown: CancellationToken,
    set: &mut tokio::task::JoinSet<()>,
) -> std::io::Result<mpsc::Sender<SinkMsg>> {
    tokio::fs::create_dir_all(&dirs.journal).await?;
    tokio::fs::create_dir_all(&dirs.spill).await?;
    let (tx, rx) = mpsc::channel(64);
    let (sealed_tx, sealed_rx) = mpsc::channel::<PathBuf>(4);
    // Leftovers of a previous run: sealed batches and the open journal (of this
    // version, or JSON lines of an earlier one), which is sealed here.
    let mut leftovers = list_journal(&dirs.journal).await?;
    leftovers.sort();
    let mut next_seq = leftovers
        .iter()
        .filter_map(|p| batch_seq(p))
        .max()
        .map_or(0, |s| s + 1);
    let mut recovered = Vec::new();
    for p in leftovers {
        if is_open_journal(&p) {
            let cut = cut_torn_tail(&p).await?;
            if cut > 0 {
                tracing::warn!(file = %p.display(), bytes = cut,
                    "the journal ended in a row whose write did not complete (a full disk?); cut it: no offset covers it, its event is consumed again from Kafka");
            }
            let sealed = sealed_name(&dirs.journal, next_seq, &p);
            next_seq += 1;
            tokio::fs::rename(&p, &sealed).await?;
            recovered.push(sealed);
        } else {
            recovered.push(p);
        }
    }
    let client = client(&cfg);
    let ins_cfg = cfg.clone();
    let spill_dir = dirs.spill.clone();
    set.spawn(async move { inserter(client, ins_cfg, spill_dir, recovered, sealed_rx).await });
    set.spawn(async move {
        Batcher::new(cfg, dirs, next_seq, sealed_tx)
            .run(rx, shutdown)
            .await;
    });
    Ok(tx)
}
