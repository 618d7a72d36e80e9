//! Dedup by `event_id` within a horizon of event time.
//!
//! Ids are kept as 64-bit hashes, listed by the event hour of their first copy; hours older than the horizon
//! (behind the partition's newest event time) are forgotten. Ids added since the last
//! flush are handed to the flush so the set survives restarts (a Redis list of id blobs per hour).

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;

const HOUR_MS: i64 = 3_600_000;

/// The set of recently seen event ids of one partition.
#[derive(Debug, Default)]
pub struct Dedup {
    horizon_hours: i64,
    seen: FxHashSet<u64>,
    by_hour: BTreeMap<i64, Vec<u64>>,
    added: Vec<(i64, u64)>,
}

impl Dedup {
    /// Empty, remembering ids for `horizon_ms` of event time.
    pub fn new(horizon_ms: i64) -> Self {
        Dedup {
            horizon_hours: (horizon_ms + HOUR_MS - 1) / HOUR_MS,
            ..Dedup::default()
        }
    }

    /// Hour bucket of an event time.
    pub fn hour_of(ts: i64) -> i64 {
        ts.div_euclid(HOUR_MS)
    }

    /// Records `id` at `ts`; false when it was already seen (a duplicate).
    /// A re-sent event is a duplicate whatever time it carries.
    pub fn insert(&mut self, id: u64, ts: i64) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        let hour = Self::hour_of(ts);
        self.by_hour.entry(hour).or_default().push(id);
        self.added.push((hour, id));
        true
    }

    /// Restores ids loaded from Redis (no flush delta).
    pub fn restore(&mut self, hour: i64, ids: impl IntoIterator<Item = u64>) {
        let list = self.by_hour.entry(hour).or_default();
        for id in ids {
            if self.seen.insert(id) {
                list.push(id);
            }
        }
    }

    /// Forgets hours older than the horizon before `newest_ts`.
    pub fn expire(&mut self, newest_ts: i64) {
        let oldest_kept = Self::hour_of(newest_ts) - self.horizon_hours;
        let kept = self.by_hour.split_off(&oldest_kept);
        for ids in std::mem::replace(&mut self.by_hour, kept).into_values() {
            for id in ids {
                self.seen.remove(&id);
            }
        }
    }

    /// Ids added since the last call, as (hour, id).
    pub fn take_added(&mut self) -> Vec<(i64, u64)> {
        std::mem::take(&mut self.added)
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Hours the horizon spans.
    pub fn horizon_hours(&self) -> i64 {
        self.horizon_hours
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_across_hours_until_they_expire() {
        let mut d = Dedup::new(2 * HOUR_MS);
        assert!(d.insert(1, 0));
        assert!(!d.insert(1, 0));
        assert!(!d.insert(1, HOUR_MS + 5), "same id, another hour");
        assert!(d.insert(2, HOUR_MS));
        d.expire(3 * HOUR_MS);
        assert_eq!(d.len(), 1, "hour 0 is beyond the 2 h horizon of hour 3");
        assert!(d.insert(1, 3 * HOUR_MS));
        assert_eq!(d.take_added().len(), 3);
    }
}
