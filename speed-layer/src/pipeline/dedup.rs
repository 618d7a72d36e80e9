//! Dedup by `event_id` within a horizon of event time (default 24 h).
//!
//! # What a seen event costs
//!
//! One 8-byte slot of a [`ProbeTable`] (52..80 % full), about 12-15 bytes per id
//! with the free slots (issue 19 bounds it at 16): 12.7 bytes measured by
//! `speed-layer bench pipeline` as resident memory growth on the standard load.
//! The slot is the id's 64-bit hash (XXH3, [`common::event::id_hash`]) with its low
//! byte replaced by the event hour of its first copy modulo 256, so the ids of an
//! hour can be forgotten without a list per hour. Two ids are taken for the same when
//! their top 56 bits agree: about n²/2⁵⁷ false duplicates among n ids of a
//! partition's horizon (7·10⁻⁶ for a million, 7·10⁻⁴ for ten million), which the
//! batch layer's exact recompute corrects in the final numbers.
//!
//! Hours older than the horizon (behind the partition's newest event time) are
//! forgotten when the table fills up, in one pass, rather than on the hour: until then
//! they cost nothing extra, as the table has the room. Ids added since the last flush
//! are handed to the flush, so the set survives restarts (a Redis list of id blobs per
//! hour, see `crate::state`).

use super::probe_table::{EXPIRED_SHARE, ProbeTable, Slot};

const HOUR_MS: i64 = 3_600_000;
const TAG_BITS: u32 = 8;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Hours after the newest an id may carry and still be told apart from the oldest.
const FUTURE_HOURS: i64 = 8;
/// Longest horizon the hour tags tell apart (the configuration refuses longer ones,
/// at 240 h).
pub const MAX_HORIZON_HOURS: i64 = (1 << TAG_BITS) - FUTURE_HOURS - 1;

/// An id's top 56 bits and its hour tag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SeenId(u64);

impl Slot for SeenId {
    fn key(&self) -> u64 {
        self.0 & !TAG_MASK
    }
}

impl SeenId {
    fn tag(self) -> usize {
        #[allow(clippy::cast_possible_truncation)] // 8 bits
        let t = (self.0 & TAG_MASK) as usize;
        t
    }
}

/// The 56-bit key of an id hash (never 0, which marks an empty slot).
fn key_of(id: u64) -> u64 {
    match id & !TAG_MASK {
        0 => 1 << TAG_BITS,
        k => k,
    }
}

fn tag_of(hour: i64) -> u64 {
    #[allow(clippy::cast_sign_loss)] // rem_euclid is never negative
    let t = hour.rem_euclid(1 << TAG_BITS) as u64;
    t
}

/// The set of recently seen event ids of one partition.
#[derive(Debug, Default)]
pub struct Dedup {
    horizon_hours: i64,
    table: ProbeTable<SeenId>,
    /// Ids per hour tag, to know how many are inside the horizon.
    per_tag: Vec<u32>,
    /// First hour inside the horizon (set by [`Dedup::expire`]).
    oldest_kept: i64,
    added: Vec<(i64, u64)>,
}

impl Dedup {
    /// Empty, remembering ids for `horizon_ms` of event time (at most
    /// [`MAX_HORIZON_HOURS`]).
    pub fn new(horizon_ms: i64) -> Self {
        Dedup {
            horizon_hours: Self::horizon_hours_of(horizon_ms),
            per_tag: vec![0; 1 << TAG_BITS],
            oldest_kept: i64::MIN,
            ..Dedup::default()
        }
    }

    /// Whole hours a horizon of `horizon_ms` spans (rounded up, at most
    /// [`MAX_HORIZON_HOURS`]).
    pub fn horizon_hours_of(horizon_ms: i64) -> i64 {
        ((horizon_ms + HOUR_MS - 1) / HOUR_MS).min(MAX_HORIZON_HOURS)
    }

    /// Hour bucket of an event time.
    pub fn hour_of(ts: i64) -> i64 {
        ts.div_euclid(HOUR_MS)
    }

    /// Records `id` (an id hash) at `ts`; false when it was already seen (a
    /// duplicate). A re-sent event is a duplicate whatever time it carries.
    pub fn insert(&mut self, id: u64, ts: i64) -> bool {
        let hour = self.hour_kept(ts);
        if !self.remember(id, hour) {
            return false;
        }
        self.added.push((hour, id));
        true
    }

    /// Brings the table slots of `ids` (id hashes) into the cache before a batch of
    /// [`Dedup::insert`]s (see [`ProbeTable::warm`]); changes nothing.
    pub fn warm(&self, ids: impl Iterator<Item = u64>) {
        std::hint::black_box(self.table.warm(ids.map(key_of)));
    }

    /// The hour an id of `ts` is remembered as: an event older than the horizon as of
    /// its first hour, one far in the future as of the last hour the tags tell apart.
    fn hour_kept(&self, ts: i64) -> i64 {
        let hour = Self::hour_of(ts);
        if self.oldest_kept == i64::MIN {
            return hour;
        }
        hour.clamp(
            self.oldest_kept,
            self.oldest_kept + self.horizon_hours + FUTURE_HOURS,
        )
    }

    fn remember(&mut self, id: u64, hour: i64) -> bool {
        if self.table.is_full() {
            self.forget_expired();
        }
        let tag = tag_of(hour);
        let fresh = self.table.insert(SeenId(key_of(id) | tag), 1);
        if fresh {
            #[allow(clippy::cast_possible_truncation)] // 8 bits
            let t = tag as usize;
            self.per_tag[t] += 1;
        }
        fresh
    }

    /// Restores ids loaded from Redis (no flush delta).
    pub fn restore(&mut self, hour: i64, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.remember(id, hour);
        }
    }

    /// Hours older than the horizon before `newest_ts` are expired: their ids are
    /// forgotten once they are a sixth of the table's entries (or when it needs
    /// room), in one pass, so the table holds at most about a sixth more than its
    /// horizon.
    pub fn expire(&mut self, newest_ts: i64) {
        self.oldest_kept = self
            .oldest_kept
            .max(Self::hour_of(newest_ts) - self.horizon_hours);
        let held = self.table.len();
        if held.saturating_sub(self.len()) * EXPIRED_SHARE >= held.max(1) {
            self.forget_expired();
        }
    }

    /// The hour tags inside the horizon: `oldest_kept` up to the newest hour plus
    /// `FUTURE_HOURS`; every tag before the first expiry.
    fn kept_tags(&self) -> [bool; 1 << TAG_BITS] {
        if self.oldest_kept == i64::MIN {
            return [true; 1 << TAG_BITS];
        }
        let mut kept = [false; 1 << TAG_BITS];
        for h in 0..=self.horizon_hours + FUTURE_HOURS {
            #[allow(clippy::cast_possible_truncation)] // 8 bits
            let t = tag_of(self.oldest_kept + h) as usize;
            kept[t] = true;
        }
        kept
    }

    /// Makes room in a full table by forgetting the hours behind the horizon.
    fn forget_expired(&mut self) {
        let kept = self.kept_tags();
        self.table.make_room(|s| kept[s.tag()]);
        for (t, n) in self.per_tag.iter_mut().enumerate() {
            if !kept[t] {
                *n = 0;
            }
        }
    }

    /// Ids added since the last call, as (hour, id).
    pub fn take_added(&mut self) -> Vec<(i64, u64)> {
        std::mem::take(&mut self.added)
    }

    /// Number of remembered ids inside the horizon.
    pub fn len(&self) -> usize {
        let kept = self.kept_tags();
        self.per_tag
            .iter()
            .enumerate()
            .filter(|(t, _)| kept[*t])
            .map(|(_, n)| *n as usize)
            .sum()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the table (free slots included).
    pub fn bytes(&self) -> usize {
        self.table.bytes()
    }

    /// Hours the horizon spans.
    pub fn horizon_hours(&self) -> i64 {
        self.horizon_hours
    }
}

#[cfg(test)]
mod tests {
    use common::event::id_hash;

    use super::*;

    #[test]
    fn duplicates_are_found_across_hours_until_they_expire() {
        let (one, two) = (id_hash("e1"), id_hash("e2"));
        let mut d = Dedup::new(2 * HOUR_MS);
        assert!(d.insert(one, 0));
        assert!(!d.insert(one, 0));
        assert!(!d.insert(one, HOUR_MS + 5), "same id, another hour");
        assert!(d.insert(two, HOUR_MS));
        d.expire(3 * HOUR_MS);
        assert_eq!(d.len(), 1, "hour 0 is beyond the 2 h horizon of hour 3");
        assert!(d.insert(one, 3 * HOUR_MS));
        assert!(!d.insert(two, 3 * HOUR_MS), "hour 1 is kept");
        assert_eq!(d.take_added().len(), 3);
    }

    #[test]
    fn a_full_table_forgets_expired_hours_instead_of_growing() {
        let mut d = Dedup::new(2 * HOUR_MS);
        let id = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Many hours of 10 000 ids each: the table stays at about three hours' worth.
        for hour in 0..40_i64 {
            for i in 0..10_000_u64 {
                #[allow(clippy::cast_sign_loss)]
                let n = hour as u64 * 10_000 + i;
                assert!(d.insert(id(n), hour * HOUR_MS));
            }
            d.expire(hour * HOUR_MS);
        }
        assert_eq!(d.len(), 30_000, "hours 37, 38, 39");
        assert!(!d.insert(id(39 * 10_000), 39 * HOUR_MS));
        assert!(
            d.bytes() <= 30_000 * 16 * 2,
            "{} bytes for 30 000 ids in the horizon",
            d.bytes()
        );
    }

    #[test]
    fn ids_differing_only_in_the_low_byte_are_one_id() {
        // The documented cost of the hour tag: the low byte of the hash is not compared.
        let mut d = Dedup::new(HOUR_MS);
        assert!(d.insert(0xABCD_0001, 0));
        assert!(!d.insert(0xABCD_00FF, 0));
    }
}
