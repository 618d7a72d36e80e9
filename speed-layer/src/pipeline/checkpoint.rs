//! The checkpoint: what a partition restarts from, as `crate::state` loads it from
//! Redis and as every [`super::processor::Flush`] extends it.
//!
//! The open windows and the watermarks are one snapshot, rewritten whole by each
//! flush. The click index, the waiting effects and the dedup ids are logs, appended to
//! (and, for effects, trimmed) by each flush; a restart reads the days and hours of them
//! that can still matter, which [`Snapshot::click_days`] and [`Snapshot::seen_hours`]
//! tell, so the loader needs to know nothing of the stages' internals.

use std::ops::RangeInclusive;

use common::event::{DAY_MS, TopicKind};
use serde::{Deserialize, Serialize};

use super::clicks::StoredClick;
use super::dedup::Dedup;
use super::effect_wait::PendingEffect;
use super::windows::Windows;

/// What survives in Redis besides deltas: the open windows and the watermarks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Windows not yet closed.
    pub windows: Windows,
    /// Newest event time seen per topic (traffic, effects), ms UTC.
    pub max_ts: [i64; 2],
}

impl Snapshot {
    /// UTC days (days since 1970-01-01) whose click lists a restart loads: the
    /// lookback plus two days of slack before the newest traffic, and the day after
    /// (a click may carry a time slightly ahead). `None` before any traffic.
    pub fn click_days(&self, lookback_ms: i64) -> Option<RangeInclusive<i64>> {
        let newest = self.max_ts[TopicKind::Traffic.index()];
        (newest > i64::MIN).then(|| {
            let last = newest.div_euclid(DAY_MS);
            (last - lookback_ms / DAY_MS - 2)..=(last + 1)
        })
    }

    /// Event hours whose dedup ids a restart loads: the horizon before the newest
    /// event of either topic, an hour of slack each side. `None` before any event.
    pub fn seen_hours(&self, dedup_horizon_ms: i64) -> Option<RangeInclusive<i64>> {
        let newest = self.max_ts[0].max(self.max_ts[1]);
        (newest > i64::MIN).then(|| {
            let last = Dedup::hour_of(newest);
            (last - Dedup::horizon_hours_of(dedup_horizon_ms) - 1)..=(last + 1)
        })
    }
}

/// Everything a processor restarts from.
#[derive(Debug, Default)]
pub struct Checkpoint {
    /// The open windows and watermarks; `None` for a partition never flushed.
    pub snapshot: Option<Snapshot>,
    /// The clicks of the lookback.
    pub clicks: Vec<StoredClick>,
    /// The effects still waiting.
    pub pending: Vec<PendingEffect>,
    /// Dedup ids by event hour.
    pub seen: Vec<(i64, Vec<u64>)>,
    /// Next offset to consume per topic (traffic, effects).
    pub next_offsets: [Option<i64>; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_reads_the_lookback_and_the_dedup_horizon_around_the_newest_event() {
        let s = Snapshot {
            windows: Windows::new(10_000),
            max_ts: [20 * DAY_MS + 5, 21 * DAY_MS],
        };
        assert_eq!(s.click_days(14 * DAY_MS), Some(4..=21));
        let hour = 21 * 24;
        assert_eq!(s.seen_hours(DAY_MS), Some((hour - 25)..=(hour + 1)));
        let empty = Snapshot {
            max_ts: [i64::MIN; 2],
            ..s
        };
        assert_eq!(empty.click_days(14 * DAY_MS), None);
        assert_eq!(empty.seen_hours(DAY_MS), None);
    }
}
