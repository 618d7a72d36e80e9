//! How far the archive is complete, per topic and Kafka partition: the *archive
//! progress* record the archiver writes after each committed batch, and the
//! recompute reads before it lets a day turn final ([`crate::finality`]).
//!
//! ```text
//! <root>/_progress/topic=<topic>/p<PPP>.json   {"next_offset": 1234, "max_event_ms": 1764633600000, "recorded_at_ms": ...}
//! ```
//!
//! Written only after the batch's Kafka commit succeeded: files of an uncommitted batch
//! may still be deleted by the next owner (the archiver's intents), so they do not
//! count. A record is therefore never ahead of what the archive durably holds; it may
//! lag it (a write that failed is retried on the next tick, and a new owner catches it
//! up to the committed offset on assignment).

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::store::Archive;

/// What the archive holds of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Every message below this offset is archived (or was invalid and skipped).
    pub next_offset: i64,
    /// The newest event time archived (ms UTC), each event's time capped at the
    /// archiver's clock when it was consumed; `None` while nothing valid was. The
    /// partition's event-time watermark: an event older than this that arrives later is
    /// late by at least the difference.
    pub max_event_ms: Option<i64>,
    /// When the record was written (ms UTC).
    pub recorded_at_ms: i64,
}

impl Progress {
    /// This record advanced by a committed batch ending before `next_offset` whose
    /// newest event is `max_event_ms`.
    pub fn advanced(self, next_offset: i64, max_event_ms: Option<i64>, now_ms: i64) -> Progress {
        Progress {
            next_offset: self.next_offset.max(next_offset),
            max_event_ms: self.max_event_ms.max(max_event_ms),
            recorded_at_ms: now_ms,
        }
    }
}

/// Where the record of `topic`/`partition` lives.
pub fn path(root: &Path, topic: &str, partition: i32) -> Path {
    let r = root.as_ref();
    let prefix = if r.is_empty() {
        String::new()
    } else {
        format!("{r}/")
    };
    Path::from(format!(
        "{prefix}_progress/topic={topic}/p{partition:03}.json"
    ))
}

/// Errors reading a record.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// The object store failed.
    #[error("archive progress: {0}")]
    Store(#[from] object_store::Error),
    /// The record is not JSON of [`Progress`].
    #[error("archive progress record {path}: {source}")]
    Corrupt {
        /// The record's path.
        path: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// The record of `topic`/`partition`; `None` when the partition was never archived.
///
/// # Errors
///
/// [`ProgressError`].
pub async fn read(
    archive: &Archive,
    topic: &str,
    partition: i32,
) -> Result<Option<Progress>, ProgressError> {
    let p = path(&archive.root, topic, partition);
    match archive.store.get(&p).await {
        Ok(r) => {
            let bytes = r.bytes().await?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ProgressError::Corrupt {
                    path: p.to_string(),
                    source,
                })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes the record of `topic`/`partition`.
///
/// # Errors
///
/// Object store errors.
pub async fn write(
    archive: &Archive,
    topic: &str,
    partition: i32,
    progress: &Progress,
) -> Result<(), object_store::Error> {
    let body = serde_json::to_vec(progress).unwrap_or_default();
    archive
        .store
        .put(
            &path(&archive.root, topic, partition),
            PutPayload::from(body),
        )
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_only_moves_forward() {
        let p = Progress {
            next_offset: 10,
            max_event_ms: Some(500),
            recorded_at_ms: 1,
        };
        let q = p.advanced(20, Some(400), 2);
        assert_eq!((q.next_offset, q.max_event_ms), (20, Some(500)));
        let r = q.advanced(15, None, 3);
        assert_eq!((r.next_offset, r.max_event_ms), (20, Some(500)));
        assert_eq!(
            path(&Path::from("a"), "ad-traffic", 3).as_ref(),
            "a/_progress/topic=ad-traffic/p003.json"
        );
    }
}
