//! Event-time tumbling windows (default 10 s) holding additive counters per
//! (advertiser, ad, day) and the users seen per UV scope.
//!
//! A window `[start, start + len)` closes when the partition's watermark passes its
//! end; its contents are then handed to the flush. An event whose window already
//! closed is *late*: it reopens its window, which closes again at the next flush, so
//! late events still count toward their own day and series bucket (the design brief:
//! "Late events (after their window closed) still count toward their day").

use std::collections::BTreeMap;

use common::counters::Counters;
use common::day::DayNum;
use common::redis_keys::UvScope;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

/// Where a counter delta belongs: the advertiser's day and the ad (0 = unattributed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AdDay {
    /// Advertiser.
    pub advertiser_id: i64,
    /// Ad, or [`common::counters::UNATTRIBUTED_AD`].
    pub ad_id: i64,
    /// Advertiser-local day.
    pub day: DayNum,
}

/// A user seen in a UV scope on a day (user as its 64-bit id hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UvEntry {
    /// Scope (ad, campaign or advertiser).
    pub scope: UvScope,
    /// Advertiser-local day.
    pub day: DayNum,
    /// `id_hash(user_id)`.
    pub user: u64,
}

/// One window's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Counters per (advertiser, ad, day).
    #[serde(with = "map_as_vec")]
    pub counters: FxHashMap<AdDay, Counters>,
    /// Distinct (scope, day, user) seen in the window.
    #[serde(with = "set_as_vec")]
    pub users: FxHashSet<UvEntry>,
}

/// The open windows of one partition, by start (ms UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Windows {
    len_ms: i64,
    open: BTreeMap<i64, Window>,
    /// End of the newest window ever closed: events before it are late.
    closed_through: i64,
}

impl Windows {
    /// Empty, with windows of `len_ms`.
    pub fn new(len_ms: i64) -> Self {
        Windows {
            len_ms,
            open: BTreeMap::new(),
            closed_through: i64::MIN,
        }
    }

    /// Start of the window holding `ts`.
    pub fn start_of(&self, ts: i64) -> i64 {
        ts - ts.rem_euclid(self.len_ms)
    }

    /// Window length, ms.
    pub fn len_ms(&self) -> i64 {
        self.len_ms
    }

    /// True when `ts` falls in a window that has already closed.
    pub fn is_late(&self, ts: i64) -> bool {
        self.start_of(ts) < self.closed_through
    }

    /// The window holding `ts`, created if needed.
    pub fn window_mut(&mut self, ts: i64) -> &mut Window {
        let start = self.start_of(ts);
        self.open.entry(start).or_default()
    }

    /// Removes and returns every window whose end is at or before `watermark`.
    pub fn close_through(&mut self, watermark: i64) -> Vec<(i64, Window)> {
        let len = self.len_ms;
        // Windows starting before `watermark - len + 1` end at or before `watermark`.
        let keep = self.open.split_off(&(watermark.saturating_sub(len) + 1));
        let closed = std::mem::replace(&mut self.open, keep);
        // Every window ending at or before the watermark is closed, with events or not.
        self.closed_through = self.closed_through.max(self.start_of(watermark));
        closed.into_iter().collect()
    }

    /// Removes and returns every window (graceful shutdown).
    pub fn close_all(&mut self) -> Vec<(i64, Window)> {
        if let Some((&start, _)) = self.open.iter().next_back() {
            self.closed_through = self.closed_through.max(start + self.len_ms);
        }
        std::mem::take(&mut self.open).into_iter().collect()
    }

    /// True when the oldest open window ends at or before `watermark`.
    pub fn has_closable(&self, watermark: i64) -> bool {
        self.open
            .keys()
            .next()
            .is_some_and(|s| s + self.len_ms <= watermark)
    }

    /// Number of open windows.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}

/// Serde for maps with struct keys as a list of pairs (JSON needs string keys).
mod map_as_vec {
    use std::hash::Hash;

    use rustc_hash::FxHashMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        m: &FxHashMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub(super) fn deserialize<'de, K, V, D>(d: D) -> Result<FxHashMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

mod set_as_vec {
    use std::hash::Hash;

    use rustc_hash::FxHashSet;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<K: Serialize, S: Serializer>(
        m: &FxHashSet<K>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub(super) fn deserialize<'de, K, D>(d: D) -> Result<FxHashSet<K>, D::Error>
    where
        K: Deserialize<'de> + Eq + Hash,
        D: Deserializer<'de>,
    {
        Ok(Vec::<K>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_close_when_the_watermark_passes_their_end() {
        let mut w = Windows::new(10_000);
        w.window_mut(1_000);
        w.window_mut(12_000);
        assert!(w.close_through(9_999).is_empty());
        let closed = w.close_through(10_000);
        assert_eq!(closed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0]);
        assert!(w.is_late(5_000));
        assert!(!w.is_late(12_000));
        // A late event reopens its window; it closes at the next flush.
        w.window_mut(5_000);
        let closed = w.close_through(10_500);
        assert_eq!(closed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.open_count(), 1);
    }

    #[test]
    fn an_empty_stretch_still_advances_lateness() {
        let mut w = Windows::new(10_000);
        assert!(w.close_through(35_000).is_empty());
        assert!(w.is_late(25_000));
        assert!(!w.is_late(30_000));
    }

    #[test]
    fn snapshot_round_trips() {
        let mut w = Windows::new(10_000);
        let win = w.window_mut(1_000);
        win.counters
            .entry(AdDay {
                advertiser_id: 1,
                ad_id: 2,
                day: 3,
            })
            .or_default()
            .0[0] = 7;
        win.users.insert(UvEntry {
            scope: UvScope::Ad(2),
            day: 3,
            user: 99,
        });
        let json = serde_json::to_string(&w).unwrap();
        let back: Windows = serde_json::from_str(&json).unwrap();
        assert_eq!(back, w);
    }
}
