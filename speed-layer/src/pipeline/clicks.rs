//! Attribution state: the clicks of the lookback (default 14 days) per (user,
//! advertiser), so an effect can find its last click.
//!
//! Clicks older than the lookback plus a day of slack behind the partition's traffic
//! watermark are pruned. Clicks added since the last flush are handed to the flush,
//! which appends them to Redis, so the state survives restarts and follows its
//! partition to another instance.

use std::collections::BTreeMap;

use common::attribution::ClickRef;
use common::event::DAY_MS;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// A click with its owner, as persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredClick {
    /// `id_hash(user_id)`.
    pub user: u64,
    /// The ad's advertiser.
    pub advertiser_id: i64,
    /// The click.
    pub click: ClickRef,
}

/// Bytes one tracked click costs in memory, for the state benchmark: the click plus its
/// share of the map entry and the day index.
pub const APPROX_BYTES_PER_CLICK: usize =
    std::mem::size_of::<ClickRef>() + std::mem::size_of::<(u64, i64)>();

/// The clicks of one partition.
#[derive(Debug, Default)]
pub struct ClickIndex {
    retain_ms: i64,
    by_user: FxHashMap<(u64, i64), Vec<ClickRef>>,
    /// Users with clicks per UTC day, to prune without scanning everything.
    by_day: BTreeMap<i64, Vec<(u64, i64)>>,
    added: Vec<StoredClick>,
    len: usize,
}

impl ClickIndex {
    /// Empty, keeping clicks for `lookback_ms` plus one day of slack for late effects.
    pub fn new(lookback_ms: i64) -> Self {
        ClickIndex {
            retain_ms: lookback_ms + DAY_MS,
            ..ClickIndex::default()
        }
    }

    /// Adds a click (a new event, recorded for the next flush).
    pub fn insert(&mut self, c: StoredClick) {
        self.restore(c);
        self.added.push(c);
    }

    /// Adds a click loaded from Redis (no flush delta).
    pub fn restore(&mut self, c: StoredClick) {
        let key = (c.user, c.advertiser_id);
        self.by_user.entry(key).or_default().push(c.click);
        self.by_day
            .entry(c.click.ts.div_euclid(DAY_MS))
            .or_default()
            .push(key);
        self.len += 1;
    }

    /// The clicks of a user on ads of an advertiser, in arrival order.
    pub fn clicks(&self, user: u64, advertiser_id: i64) -> &[ClickRef] {
        self.by_user
            .get(&(user, advertiser_id))
            .map_or(&[], Vec::as_slice)
    }

    /// Drops clicks older than the retention behind `traffic_watermark`.
    pub fn prune(&mut self, traffic_watermark: i64) {
        let cutoff = traffic_watermark.saturating_sub(self.retain_ms);
        let keep = self.by_day.split_off(&cutoff.div_euclid(DAY_MS));
        for keys in std::mem::replace(&mut self.by_day, keep).into_values() {
            for key in keys {
                if let Some(v) = self.by_user.get_mut(&key) {
                    let before = v.len();
                    v.retain(|c| c.ts >= cutoff.div_euclid(DAY_MS) * DAY_MS);
                    self.len -= before - v.len();
                    if v.is_empty() {
                        self.by_user.remove(&key);
                    }
                }
            }
        }
    }

    /// Clicks added since the last call.
    pub fn take_added(&mut self) -> Vec<StoredClick> {
        std::mem::take(&mut self.added)
    }

    /// Clicks held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no click is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(user: u64, ts: i64) -> StoredClick {
        StoredClick {
            user,
            advertiser_id: 1,
            click: ClickRef {
                ts,
                seq: ts,
                ad_id: 10,
                campaign_id: 1,
                product_id: 5,
                day: 0,
            },
        }
    }

    #[test]
    fn old_clicks_are_pruned_by_day() {
        let mut idx = ClickIndex::new(14 * DAY_MS);
        idx.insert(stored(1, 0));
        idx.insert(stored(1, 3 * DAY_MS));
        idx.insert(stored(2, 3 * DAY_MS));
        assert_eq!(idx.clicks(1, 1).len(), 2);
        idx.prune(15 * DAY_MS);
        assert_eq!(
            idx.len(),
            3,
            "14 days of lookback plus a day of slack keep day 0 on day 15"
        );
        idx.prune(16 * DAY_MS);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.clicks(1, 1).len(), 1);
        assert_eq!(idx.take_added().len(), 3);
    }
}
