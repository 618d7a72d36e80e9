//! Event-time tumbling windows (default 10 s) for the 10-second series, and the day
//! counters, which fire early.
//!
//! A window `[start, start + len)` closes when the partition's watermark passes its
//! end; its counters then go to the series buckets. An event whose window already
//! closed is *late*: it reopens its window, which closes again at the next flush, so
//! late events still count toward their own day and series bucket (the design brief:
//! "Late events (after their window closed) still count toward their day").
//!
//! Day counters and UV do not wait for the window: every event also goes to
//! [`DayDeltas`], which every flush takes whole (an early-firing trigger on processing
//! time, as Flink's, with the same exactly-once write: the deltas, the series of closed
//! windows and the offsets go in one atomic script). The deltas are empty after each
//! flush, so the snapshot of open windows never needs them.

use std::collections::BTreeMap;

use common::counters::UvScope;
use common::counters::{Counters, Increment};
use common::day::DayNum;
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

/// What one event adds to its window and its day (the window-deltas stage's output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowDelta {
    /// Event time, ms UTC: picks the window.
    pub ts: i64,
    /// The counters it goes to.
    pub key: AdDay,
    /// What it adds.
    pub inc: Increment,
}

/// One window's contents: the counters its series bucket gets when it closes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Counters per (advertiser, ad, day).
    #[serde(with = "map_as_vec")]
    pub counters: FxHashMap<AdDay, Counters>,
    /// Users of a snapshot written before day counters fired early (they were counted
    /// when the window closed); moved to the day deltas on restore, never written.
    #[serde(
        rename = "users",
        deserialize_with = "set_from_vec",
        default,
        skip_serializing
    )]
    legacy_users: FxHashSet<UvEntry>,
}

impl Window {
    fn with_room(keys: usize) -> Self {
        Window {
            counters: FxHashMap::with_capacity_and_hasher(keys, rustc_hash::FxBuildHasher),
            legacy_users: FxHashSet::default(),
        }
    }
}

/// What the day counters and UV gained since the last flush.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayDeltas {
    /// Counter deltas per (advertiser, ad, day).
    pub counters: FxHashMap<AdDay, Counters>,
    /// (scope, day, user) seen, in arrival order, repeats included: adding a user to a
    /// HyperLogLog twice changes nothing, and the Redis writer sorts the entries by
    /// key and drops repeats anyway (`crate::uv_cache` drops those sent recently). A
    /// list, not a set: a set insert per entry cost a sixth of the core's time.
    pub users: Vec<UvEntry>,
}

impl DayDeltas {
    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.users.is_empty()
    }
}

/// The open windows of one partition, by start (ms UTC), and the day deltas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Windows {
    len_ms: i64,
    open: BTreeMap<i64, Window>,
    /// End of the newest window ever closed: events before it are late.
    closed_through: i64,
    /// False in a snapshot written before day counters fired early: its open windows'
    /// counters had not reached the day counters yet (see [`Windows::restored`]).
    #[serde(default)]
    early_day_counters: bool,
    /// Taken whole by every flush, so a snapshot (taken at a flush) never holds any.
    #[serde(skip)]
    days: DayDeltas,
    /// Keys the last closed window held: a new window starts with that much room.
    #[serde(skip)]
    window_room: usize,
}

impl Windows {
    /// Empty, with windows of `len_ms`.
    pub fn new(len_ms: i64) -> Self {
        Windows {
            len_ms,
            open: BTreeMap::new(),
            closed_through: i64::MIN,
            early_day_counters: true,
            days: DayDeltas::default(),
            window_room: 0,
        }
    }

    /// Brings a restored snapshot up to date: the open windows of a snapshot written
    /// before day counters fired early still owe their counters and users to the day
    /// counters, which the next flush then writes.
    #[must_use]
    pub fn restored(mut self) -> Self {
        if !self.early_day_counters {
            for w in self.open.values_mut() {
                for (k, c) in &w.counters {
                    *self.days.counters.entry(*k).or_default() += c;
                }
                self.days.users.extend(w.legacy_users.drain());
            }
            self.early_day_counters = true;
        }
        self
    }

    /// Start of the window holding `ts`; `i64::MIN` (the watermark of a partition
    /// that has accepted no event yet) for times before the first whole window.
    pub fn start_of(&self, ts: i64) -> i64 {
        // Saturating: `i64::MIN - r` overflowed (a panic in debug builds; in release it
        // wrapped to a time in the far future, which made every later event late).
        ts.saturating_sub(ts.rem_euclid(self.len_ms))
    }

    /// Window length, ms.
    pub fn len_ms(&self) -> i64 {
        self.len_ms
    }

    /// True when `ts` falls in a window that has already closed.
    pub fn is_late(&self, ts: i64) -> bool {
        self.start_of(ts) < self.closed_through
    }

    /// Adds each delta to the counters of its key in the window holding its time
    /// (created if needed) and in the day deltas, and empties `deltas`.
    ///
    /// One loop per map, over a whole batch: each lookup is a likely cache miss (the
    /// day deltas hold every ad-day since the last flush), and in a loop that does
    /// nothing else the CPU overlaps several of them, where one add per event among
    /// the other stages' work waited for each in turn.
    pub fn apply(&mut self, deltas: &mut Vec<WindowDelta>) {
        let mut rest = &deltas[..];
        // Deltas come in event-time order, mostly: look a window up once per run of
        // deltas that fall into it.
        while let Some(first) = rest.first() {
            let start = self.start_of(first.ts);
            let run = rest
                .iter()
                .position(|d| self.start_of(d.ts) != start)
                .unwrap_or(rest.len());
            let room = self.window_room;
            let window = self
                .open
                .entry(start)
                .or_insert_with(|| Window::with_room(room));
            for d in &rest[..run] {
                window.counters.entry(d.key).or_default().add(d.inc);
            }
            rest = &rest[run..];
        }
        for d in deltas.drain(..) {
            self.days.counters.entry(d.key).or_default().add(d.inc);
        }
    }

    /// Records a user seen in a UV scope on a day, for the next flush.
    pub fn add_user(&mut self, user: UvEntry) {
        self.days.users.push(user);
    }

    /// Takes what the day counters gained since the last call. The next deltas start
    /// with room for as many entries, so a steady stream does not regrow them from
    /// empty after every flush.
    pub fn take_day_deltas(&mut self) -> DayDeltas {
        let next = DayDeltas {
            counters: FxHashMap::with_capacity_and_hasher(
                self.days.counters.len(),
                rustc_hash::FxBuildHasher,
            ),
            users: Vec::with_capacity(self.days.users.len()),
        };
        std::mem::replace(&mut self.days, next)
    }

    /// Removes and returns every window whose end is at or before `watermark`.
    pub fn close_through(&mut self, watermark: i64) -> Vec<(i64, Window)> {
        let len = self.len_ms;
        // Windows starting before `watermark - len + 1` end at or before `watermark`.
        let keep = self.open.split_off(&(watermark.saturating_sub(len) + 1));
        let closed = std::mem::replace(&mut self.open, keep);
        if let Some(w) = closed.values().next_back() {
            self.window_room = w.counters.len();
        }
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

fn set_from_vec<'de, K, D>(d: D) -> Result<FxHashSet<K>, D::Error>
where
    K: Deserialize<'de> + Eq + std::hash::Hash,
    D: serde::Deserializer<'de>,
{
    Ok(Vec::<K>::deserialize(d)?.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::counters::Measure;

    /// Adds `n` exposures of `KEY` at `ts`.
    fn add(w: &mut Windows, ts: i64, n: i64) {
        w.apply(&mut vec![WindowDelta {
            ts,
            key: KEY,
            inc: Increment::one(Measure::Exposures, n),
        }]);
    }

    #[test]
    fn windows_close_when_the_watermark_passes_their_end() {
        let mut w = Windows::new(10_000);
        add(&mut w, 1_000, 1);
        add(&mut w, 12_000, 1);
        assert!(w.close_through(9_999).is_empty());
        let closed = w.close_through(10_000);
        assert_eq!(closed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0]);
        assert!(w.is_late(5_000));
        assert!(!w.is_late(12_000));
        // A late event reopens its window; it closes at the next flush.
        add(&mut w, 5_000, 1);
        let closed = w.close_through(10_500);
        assert_eq!(closed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0]);
        assert_eq!(w.open_count(), 1);
    }

    #[test]
    fn a_batch_of_deltas_lands_in_each_window_and_in_the_day() {
        let mut w = Windows::new(10_000);
        let other = AdDay { ad_id: 9, ..KEY };
        let delta = |ts, key, n| WindowDelta {
            ts,
            key,
            inc: Increment::one(Measure::Exposures, n),
        };
        // Out of order at the end: back to the first window after the second.
        let mut deltas = vec![
            delta(1_000, KEY, 1),
            delta(2_000, other, 2),
            delta(11_000, KEY, 4),
            delta(3_000, KEY, 8),
        ];
        w.apply(&mut deltas);
        assert!(deltas.is_empty(), "applied deltas are taken");
        let days = w.take_day_deltas();
        assert_eq!(days.counters[&KEY][Measure::Exposures], 13);
        assert_eq!(days.counters[&other][Measure::Exposures], 2);
        let closed = w.close_through(20_000);
        let exposures = |i: usize, k: &AdDay| closed[i].1.counters[k][Measure::Exposures];
        assert_eq!(closed[0].0, 0);
        assert_eq!((exposures(0, &KEY), exposures(0, &other)), (9, 2));
        assert_eq!((closed[1].0, exposures(1, &KEY)), (10_000, 4));
    }

    #[test]
    fn an_empty_stretch_still_advances_lateness() {
        let mut w = Windows::new(10_000);
        assert!(w.close_through(35_000).is_empty());
        assert!(w.is_late(25_000));
        assert!(!w.is_late(30_000));
    }

    const KEY: AdDay = AdDay {
        advertiser_id: 1,
        ad_id: 2,
        day: 3,
    };
    const USER: UvEntry = UvEntry {
        scope: UvScope::Ad(2),
        day: 3,
        user: 99,
    };

    #[test]
    fn day_deltas_fire_before_the_window_closes_and_only_once() {
        let mut w = Windows::new(10_000);
        add(&mut w, 1_000, 7);
        w.add_user(USER);
        let early = w.take_day_deltas();
        assert_eq!(early.counters[&KEY].0[0], 7);
        assert_eq!(early.users, vec![USER]);
        assert!(w.take_day_deltas().is_empty(), "taken once");
        // The window still holds the event for its series bucket.
        let closed = w.close_through(10_000);
        assert_eq!(closed[0].1.counters[&KEY].0[0], 7);
        assert!(
            w.take_day_deltas().is_empty(),
            "closing adds nothing to the days"
        );
    }

    #[test]
    fn snapshot_round_trips_without_day_deltas() {
        let mut w = Windows::new(10_000);
        add(&mut w, 1_000, 7);
        w.add_user(USER);
        let _ = w.take_day_deltas();
        let json = serde_json::to_string(&w).unwrap();
        let back: Windows = serde_json::from_str::<Windows>(&json).unwrap().restored();
        assert_eq!(back, w);
    }

    #[test]
    fn a_snapshot_from_before_early_firing_owes_its_windows_to_the_days() {
        // As the previous version wrote it: windows with their users, no
        // `early_day_counters` (its day counters were written when windows closed).
        let mut old = Windows::new(10_000);
        add(&mut old, 1_000, 7);
        let mut json = serde_json::to_value(&old).unwrap();
        json.as_object_mut().unwrap().remove("early_day_counters");
        json["open"]["0"]["users"] = serde_json::to_value([USER]).unwrap();
        let json = json.to_string();
        let mut w = serde_json::from_str::<Windows>(&json).unwrap().restored();
        let owed = w.take_day_deltas();
        assert_eq!(owed.counters[&KEY].0[0], 7);
        assert_eq!(owed.users, vec![USER]);
        assert_eq!(w.close_through(10_000)[0].1.counters[&KEY].0[0], 7);
    }

    #[test]
    fn a_flush_before_any_accepted_event_closes_nothing_and_makes_nothing_late() {
        let mut w = Windows::new(10_000);
        // The watermark of a partition that has accepted no event (only rejects).
        assert!(w.close_through(i64::MIN).is_empty());
        assert!(!w.is_late(1_700_000_000_000), "a current event is not late");
    }
}
