//! Attribution state: the clicks of the lookback (default 14 days) per (user,
//! advertiser), so an effect can find its last click.
//!
//! Clicks older than the lookback plus a day of slack behind the partition's traffic
//! watermark are pruned. Clicks added since the last flush are handed to the flush,
//! which appends them to Redis, so the state survives restarts and follows its
//! partition to another instance.
//!
//! # What a tracked click costs
//!
//! One 24-byte slot of a [`ProbeTable`] kept 52..80 % full: 30-46 bytes per click
//! with the free slots (issue 19 bounds it at 48); 37 bytes measured by
//! `speed-layer bench pipeline` as resident memory growth on the standard load. The slot holds the (user, advertiser) key, the click time, the low
//! 32 bits of its offset and the index of its *target*: the (ad, campaign, product,
//! advertiser, day offset) it credits, interned once per partition, since a few
//! thousand ads receive millions of clicks. The click's advertiser-local day is
//! stored as its offset (-1, 0, +1) from the UTC day of its time, so no time zone is
//! needed to read it back.
//!
//! Two approximations, both far below what anyone could observe:
//! - the (user, advertiser) key is 64 bits (the user's XXH3 hash mixed with the
//!   advertiser), and the target's advertiser is compared too, so two users of one
//!   advertiser share clicks only if their hashes collide (n²/2⁶⁵);
//! - ties of click time are broken by the low 32 bits of the offset: wrong only for
//!   two clicks of one user in the same millisecond 4 billion messages apart.

use std::collections::BTreeMap;

use common::attribution::ClickRef;
use common::day::DayNum;
use common::event::{DAY_MS, EventKind};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::enrich::Enriched;
use super::probe_table::{EXPIRED_SHARE, ProbeTable, Slot};

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

impl StoredClick {
    /// The click an enriched event is, with its ad's campaign and its own product;
    /// `None` unless the event is a click.
    pub fn of_click(x: &Enriched<'_, '_>) -> Option<StoredClick> {
        let e = x.msg.event;
        let ad = x.ad.filter(|_| e.kind == EventKind::Click)?;
        Some(StoredClick {
            user: x.user,
            advertiser_id: ad.advertiser_id,
            click: ClickRef {
                ts: e.ts,
                seq: x.msg.offset,
                ad_id: ad.ad_id,
                campaign_id: ad.campaign_id,
                product_id: e.product_id.unwrap_or_default(),
                day: x.day,
            },
        })
    }
}

/// What a click credits, interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Target {
    ad_id: i64,
    campaign_id: i64,
    product_id: i64,
    advertiser_id: i64,
    /// Advertiser-local day minus UTC day of the click time.
    day_offset: i8,
}

/// One tracked click (24 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ClickSlot {
    key: u64,
    ts: i64,
    seq: u32,
    target: u32,
}

impl Slot for ClickSlot {
    fn key(&self) -> u64 {
        self.key
    }
}

/// Bytes one tracked click takes in its slot (the table's free slots come on top).
pub const CLICK_SLOT_BYTES: usize = std::mem::size_of::<ClickSlot>();

/// Clicks of one (user, advertiser) pair kept in the table itself; a pair's further
/// clicks go to a list of its own. Equal keys sit side by side in a linear-probing
/// table, so without this bound a user with thousands of clicks (a bot, a shared
/// address) would make every insert and lookup of that pair scan thousands of slots.
const INLINE_PER_PAIR: usize = 4;

/// The table key of a (user, advertiser) pair; never 0.
fn pair_key(user: u64, advertiser_id: i64) -> u64 {
    #[allow(clippy::cast_sign_loss)] // bits are mixed, not read as a number
    let k = user ^ (advertiser_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    k.max(1)
}

fn utc_day(ts: i64) -> i64 {
    ts.div_euclid(DAY_MS)
}

/// The clicks of one partition.
#[derive(Debug, Default)]
pub struct ClickIndex {
    retain_ms: i64,
    table: ProbeTable<ClickSlot>,
    targets: Vec<Target>,
    target_ids: FxHashMap<Target, u32>,
    /// Clicks per UTC day, to count the live ones.
    per_day: BTreeMap<i64, usize>,
    /// Clicks before this time (a UTC day start) are pruned.
    cutoff: i64,
    /// The clicks of a pair beyond the first [`INLINE_PER_PAIR`] in the table.
    overflow: FxHashMap<u64, Vec<ClickSlot>>,
    /// Clicks in `overflow`.
    overflow_len: usize,
    added: Vec<StoredClick>,
}

impl ClickIndex {
    /// Empty, keeping clicks for `lookback_ms` plus one day of slack for late effects.
    pub fn new(lookback_ms: i64) -> Self {
        ClickIndex {
            retain_ms: lookback_ms + DAY_MS,
            cutoff: i64::MIN,
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
        if c.click.ts < self.cutoff {
            return;
        }
        if self.table.is_full() {
            self.forget_pruned();
        }
        let day_offset = i64::from(c.click.day) - utc_day(c.click.ts);
        let target = self.intern(Target {
            ad_id: c.click.ad_id,
            campaign_id: c.click.campaign_id,
            product_id: c.click.product_id,
            advertiser_id: c.advertiser_id,
            day_offset: i8::try_from(day_offset).unwrap_or(0),
        });
        let key = pair_key(c.user, c.advertiser_id);
        let slot = ClickSlot {
            key,
            ts: c.click.ts,
            // Low 32 bits: a tie-break only (see the module docs).
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            seq: c.click.seq as u32,
            target,
        };
        if !self.table.insert(slot, INLINE_PER_PAIR) {
            let list = self.overflow.entry(key).or_default();
            if list.len() == list.capacity() {
                // Grow by half, not double, so a heavy pair's list stays within the
                // per-click bound.
                list.reserve_exact(list.len() / 2 + 4);
            }
            list.push(slot);
            self.overflow_len += 1;
        }
        *self.per_day.entry(utc_day(c.click.ts)).or_default() += 1;
    }

    fn intern(&mut self, t: Target) -> u32 {
        if let Some(&i) = self.target_ids.get(&t) {
            return i;
        }
        let i = u32::try_from(self.targets.len()).unwrap_or(u32::MAX);
        self.targets.push(t);
        self.target_ids.insert(t, i);
        i
    }

    /// The clicks of a user on ads of an advertiser, in no particular order, into
    /// `out` (cleared first).
    pub fn clicks_into(&self, user: u64, advertiser_id: i64, out: &mut Vec<ClickRef>) {
        out.clear();
        let key = pair_key(user, advertiser_id);
        let overflow = self.overflow.get(&key).map_or(&[][..], Vec::as_slice);
        for s in self.table.probe(key).chain(overflow) {
            if s.key != key || s.ts < self.cutoff {
                continue;
            }
            let t = self.targets[s.target as usize];
            if t.advertiser_id != advertiser_id {
                continue;
            }
            #[allow(clippy::cast_possible_truncation)] // days since 1970 fit an i32
            let day = (utc_day(s.ts) + i64::from(t.day_offset)) as DayNum;
            out.push(ClickRef {
                ts: s.ts,
                seq: i64::from(s.seq),
                ad_id: t.ad_id,
                campaign_id: t.campaign_id,
                product_id: t.product_id,
                day,
            });
        }
    }

    /// Drops clicks older than the retention behind `traffic_watermark` (from the
    /// start of their UTC day): they are no longer found, and their slots are freed
    /// once they are a sixth of the table's entries (or when it needs room), in one
    /// pass, so the table holds at most about a day of pruned clicks.
    pub fn prune(&mut self, traffic_watermark: i64) {
        let cutoff = traffic_watermark.saturating_sub(self.retain_ms);
        self.cutoff = self.cutoff.max(utc_day(cutoff) * DAY_MS);
        // Slots held, pruned or not, in the table and the heavy pairs' lists.
        let held = self.table.len() + self.overflow_len;
        if held.saturating_sub(self.len()) * EXPIRED_SHARE >= held.max(1) {
            self.forget_pruned();
        }
    }

    fn forget_pruned(&mut self) {
        let cutoff = self.cutoff;
        self.table.make_room(|s| s.ts >= cutoff);
        let mut overflow_len = 0;
        self.overflow.retain(|_, list| {
            list.retain(|s| s.ts >= cutoff);
            overflow_len += list.len();
            if list.len() * 2 < list.capacity() {
                list.shrink_to_fit();
            }
            !list.is_empty()
        });
        self.overflow_len = overflow_len;
        if cutoff > i64::MIN {
            self.per_day = self.per_day.split_off(&utc_day(cutoff));
        }
    }

    /// Clicks added since the last call.
    pub fn take_added(&mut self) -> Vec<StoredClick> {
        std::mem::take(&mut self.added)
    }

    /// Clicks held (not pruned).
    pub fn len(&self) -> usize {
        if self.cutoff == i64::MIN {
            return self.per_day.values().sum();
        }
        self.per_day
            .range(utc_day(self.cutoff)..)
            .map(|(_, n)| n)
            .sum()
    }

    /// True when no click is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the table (free slots included), the heavy pairs' lists and the
    /// interned targets.
    pub fn bytes(&self) -> usize {
        self.table.bytes()
            + self
                .overflow
                .values()
                .map(|l| l.capacity() * CLICK_SLOT_BYTES)
                .sum::<usize>()
            + self.overflow.capacity() * (std::mem::size_of::<(u64, Vec<ClickSlot>)>() + 1)
            + self.targets.capacity() * std::mem::size_of::<Target>()
            + self.target_ids.capacity() * (std::mem::size_of::<(Target, u32)>() + 1)
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
                day: i32::try_from(ts / DAY_MS).unwrap(),
            },
        }
    }

    fn clicks(idx: &ClickIndex, user: u64, advertiser: i64) -> Vec<ClickRef> {
        let mut out = Vec::new();
        idx.clicks_into(user, advertiser, &mut out);
        out.sort_by_key(|c| c.ts);
        out
    }

    #[test]
    fn old_clicks_are_pruned_by_day() {
        let mut idx = ClickIndex::new(14 * DAY_MS);
        idx.insert(stored(1, 0));
        idx.insert(stored(1, 3 * DAY_MS));
        idx.insert(stored(2, 3 * DAY_MS));
        assert_eq!(clicks(&idx, 1, 1).len(), 2);
        idx.prune(15 * DAY_MS);
        assert_eq!(
            idx.len(),
            3,
            "14 days of lookback plus a day of slack keep day 0 on day 15"
        );
        idx.prune(16 * DAY_MS);
        assert_eq!(idx.len(), 2);
        assert_eq!(clicks(&idx, 1, 1).len(), 1);
        assert_eq!(idx.take_added().len(), 3);
    }

    #[test]
    fn a_click_reads_back_as_stored_with_its_local_day() {
        let mut idx = ClickIndex::new(14 * DAY_MS);
        let mut c = stored(7, 5 * DAY_MS + 23 * 3_600_000);
        c.click.day = 6; // east of UTC: the next local day
        c.click.seq = (1 << 33) + 12;
        idx.insert(c);
        let other_advertiser = StoredClick {
            advertiser_id: 2,
            ..stored(7, 5 * DAY_MS)
        };
        idx.insert(other_advertiser);
        let got = clicks(&idx, 7, 1);
        assert_eq!(
            got.len(),
            1,
            "another advertiser's clicks are not the user's here"
        );
        assert_eq!(
            got[0],
            ClickRef { seq: 12, ..c.click },
            "all but the offset's high bits"
        );
    }

    #[test]
    fn pruned_slots_are_reused_so_the_table_follows_the_lookback() {
        let mut idx = ClickIndex::new(2 * DAY_MS);
        let per_day = 20_000_u64;
        for day in 0..30_i64 {
            for i in 0..per_day {
                #[allow(clippy::cast_sign_loss)]
                let user = (day as u64 * per_day + i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                idx.insert(stored(user, day * DAY_MS + 1));
            }
            idx.prune(day * DAY_MS + 1);
            let _ = idx.take_added();
        }
        assert_eq!(
            idx.len(),
            4 * 20_000,
            "days 26..=29 (2 days + 1 of slack + today)"
        );
        assert!(
            idx.bytes() <= idx.len() * 48,
            "{} bytes for {} clicks",
            idx.bytes(),
            idx.len()
        );
    }

    #[test]
    fn a_heavy_user_keeps_every_click_without_long_probes() {
        let mut idx = ClickIndex::new(14 * DAY_MS);
        for i in 0..5_000_i64 {
            let mut c = stored(9, 2 * DAY_MS + i);
            c.click.seq = i;
            idx.insert(c);
        }
        idx.insert(stored(10, 2 * DAY_MS));
        let got = clicks(&idx, 9, 1);
        assert_eq!(got.len(), 5_000);
        assert_eq!(got.last().map(|c| c.seq), Some(4_999));
        assert_eq!(clicks(&idx, 10, 1).len(), 1);
        assert!(
            idx.table.probe(pair_key(9, 1)).count() < 64,
            "the pair's slots in the table are bounded"
        );
        // Pruning counts the heavy pair's list too, and frees it.
        idx.prune(2 * DAY_MS + 15 * DAY_MS);
        assert_eq!(idx.len(), 5_001, "nothing pruned yet");
        idx.prune(18 * DAY_MS);
        assert_eq!(idx.len(), 0);
        assert!(idx.overflow.is_empty(), "pruned lists are dropped");
        assert_eq!(idx.overflow_len, 0);
    }
}
