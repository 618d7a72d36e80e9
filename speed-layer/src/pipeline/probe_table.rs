//! The compact hash table under the dedup set and the click index: open addressing
//! with linear probing over plain fixed-size slots, so a remembered id costs its
//! 8 bytes and a tracked click its 24, plus the table's free slots and nothing else
//! (no per-entry allocation, no control bytes).
//!
//! Keys are 64-bit hashes already (XXH3 of an id), so the home slot is the key scaled
//! to the table length (Lemire's multiply-shift), with no further hashing.
//!
//! Why not `hashbrown`: its capacity doubles, so right after growing a table is 44 %
//! full and an 8-byte id costs 20 bytes; issue 19 bounds the dedup state at 16 bytes
//! per id and the click index at 48 per click. This table grows by a quarter and is
//! never fuller than [`MAX_LOAD_PERCENT`]. Entries are removed only when it is that
//! full ([`ProbeTable::make_room`]): the owners then drop what has expired (hours of
//! dedup ids, days of clicks) in one sequential pass instead of one by one, and the
//! table grows only if that did not free enough, so it holds its live entries at
//! 52..65 % of its slots right after, and up to 80 % until room is made again.

/// A fixed-size entry with a 64-bit key; key 0 marks an empty slot.
pub trait Slot: Copy + Default {
    /// The key this slot is found by (nonzero when occupied).
    fn key(&self) -> u64;
}

/// Owners free expired entries once they are one in this many of a table's entries:
/// rarely enough that the pass costs little (a 24 h dedup horizon passes every 4 hours
/// of event time), often enough that they hold no more than a sixth on top of the live
/// ones.
pub const EXPIRED_SHARE: usize = 6;

/// [`ProbeTable::insert`] without a bound on the slots of one key.
pub const UNBOUNDED: usize = usize::MAX;

/// Fullest a table gets before room is made, percent of its slots.
pub const MAX_LOAD_PERCENT: usize = 80;
/// How full a table may be after room was made, percent: above it, it grows.
const ROOMY_LOAD_PERCENT: usize = 65;
/// Below this fill the table shrinks (so memory follows a shrinking state).
const SHRINK_LOAD_PERCENT: usize = 20;
const MIN_SLOTS: usize = 1024;

/// An open-addressing table of `T` slots.
#[derive(Debug, Clone, Default)]
pub struct ProbeTable<T> {
    slots: Vec<T>,
    len: usize,
}

impl<T: Slot> ProbeTable<T> {
    /// The slot index where the probe for `key` starts. Monotonic in `key`, so the
    /// table is ordered by key apart from collisions, and a rebuild writes the new
    /// table front to back.
    fn home(&self, key: u64) -> usize {
        // `slots.len()` fits a u64 and the product's high half is below it.
        #[allow(clippy::cast_possible_truncation)]
        let i = ((u128::from(key) * self.slots.len() as u128) >> 64) as usize;
        i
    }

    /// The occupied slots from `key`'s home up to the first empty slot, in probe
    /// order: every slot with `key` is among them.
    pub fn probe(&self, key: u64) -> impl Iterator<Item = &T> {
        let n = self.slots.len();
        let start = if n == 0 { 0 } else { self.home(key) };
        (0..n)
            .map(move |k| &self.slots[(start + k) % n])
            .take_while(|s| s.key() != 0)
    }

    /// Reads the home slots of `keys` and returns a value made from them, to pass to
    /// `std::hint::black_box`: a software prefetch in safe code. The loads do not
    /// depend on each other, so the CPU has many cache misses in flight at once, and
    /// the inserts that follow find their slots cached (a batch of 1 024 slots' lines
    /// is 64 KiB, well inside L2) instead of each waiting for its miss in turn.
    pub fn warm(&self, keys: impl Iterator<Item = u64>) -> u64 {
        if self.slots.is_empty() {
            return 0;
        }
        keys.fold(0, |acc, k| acc ^ self.slots[self.home(k)].key())
    }

    /// True when the next insert needs [`ProbeTable::make_room`] first.
    pub fn is_full(&self) -> bool {
        (self.len + 1) * 100 > self.slots.len() * MAX_LOAD_PERCENT
    }

    /// Puts `slot` in the first free slot of its probe, unless `max_with_key` slots
    /// with its key are found on the way: then refuses it (false). 1 makes the table a
    /// set (a second copy of a key is refused), [`UNBOUNDED`] a multi-map. The caller
    /// has made room ([`ProbeTable::is_full`] false).
    pub fn insert(&mut self, slot: T, max_with_key: usize) -> bool {
        debug_assert!(!self.is_full() && slot.key() != 0);
        let n = self.slots.len();
        let key = slot.key();
        let mut i = self.home(key);
        let mut with_key = 0;
        loop {
            let here = self.slots[i].key();
            if here == 0 {
                self.slots[i] = slot;
                self.len += 1;
                return true;
            }
            if here == key {
                with_key += 1;
                if with_key >= max_with_key {
                    return false;
                }
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Drops the slots `keep` refuses, then resizes so the next inserts fit: grown by
    /// a quarter at a time while over `ROOMY_LOAD_PERCENT` full, halved while under
    /// `SHRINK_LOAD_PERCENT`.
    pub fn make_room(&mut self, keep: impl FnMut(&T) -> bool) {
        self.retain(keep);
        let mut n = self.slots.len().max(MIN_SLOTS);
        while (self.len + 1) * 100 > n * ROOMY_LOAD_PERCENT {
            n += n / 4;
        }
        while n > MIN_SLOTS && self.len * 100 < n * SHRINK_LOAD_PERCENT {
            n /= 2;
        }
        if n != self.slots.len() {
            let old = std::mem::replace(&mut self.slots, vec![T::default(); n]);
            self.len = 0;
            for s in old {
                if s.key() != 0 {
                    self.insert(s, UNBOUNDED);
                }
            }
        }
    }

    /// Removes, in place, the slots `keep` refuses: one pass from an empty slot, each
    /// survivor moved back to the first free slot of its probe (never past where it
    /// was), so every probe still ends at the first empty slot. A survivor with no
    /// free slot between its home and itself stays where it is, which is most of them.
    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let n = self.slots.len();
        let Some(start) = self.slots.iter().position(|s| s.key() == 0) else {
            return; // empty table (a table with slots is never full)
        };
        // Positions are counted from `start`, where no cluster crosses.
        let from_start = |i: usize| (i + n - start) % n;
        let mut last_free = 0;
        // Whether a slot was freed since the last slot that was empty before the pass:
        // no probe crosses such a slot, so until then nothing can move back.
        let mut freed_in_cluster = false;
        for k in 1..n {
            let i = (start + k) % n;
            let s = self.slots[i];
            if s.key() == 0 {
                last_free = k;
                freed_in_cluster = false;
                continue;
            }
            if !keep(&s) {
                self.slots[i] = T::default();
                self.len -= 1;
                last_free = k;
                freed_in_cluster = true;
            } else if freed_in_cluster && last_free >= from_start(self.home(s.key())) {
                // A slot freed in this pass lies on its probe: move it back.
                self.slots[i] = T::default();
                self.len -= 1;
                self.insert(s, UNBOUNDED);
                last_free = k;
            }
        }
    }

    /// Occupied slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every occupied slot, in table order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter(|s| s.key() != 0)
    }

    /// Bytes the slots take (the whole table, free slots included).
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    struct Id(u64, u32);

    impl Slot for Id {
        fn key(&self) -> u64 {
            self.0
        }
    }

    fn fill(t: &mut ProbeTable<Id>, key: u64, tag: u32, unique: bool) -> bool {
        if t.is_full() {
            t.make_room(|_| true);
        }
        t.insert(Id(key, tag), if unique { 1 } else { UNBOUNDED })
    }

    #[test]
    fn unique_inserts_find_every_key_again_across_growth() {
        let mut t = ProbeTable::default();
        let keys: Vec<u64> = (1..=50_000_u64)
            .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
            .collect();
        for &k in &keys {
            assert!(fill(&mut t, k, 0, true));
        }
        for &k in &keys {
            assert!(!fill(&mut t, k, 1, true), "a second copy is refused");
            assert!(t.probe(k).any(|s| s.0 == k));
        }
        assert_eq!(t.len(), keys.len());
        let load = t.len() * 100 / (t.bytes() / std::mem::size_of::<Id>());
        assert!((40..=MAX_LOAD_PERCENT).contains(&load), "load {load} %");
    }

    #[test]
    fn a_key_can_hold_several_slots_and_making_room_drops_what_it_is_told() {
        let mut t = ProbeTable::default();
        for tag in 0..5 {
            fill(&mut t, 42, tag, false);
            fill(&mut t, u64::MAX - u64::from(tag), tag, false);
        }
        let mut tags: Vec<u32> = t.probe(42).filter(|s| s.0 == 42).map(|s| s.1).collect();
        tags.sort_unstable();
        assert_eq!(tags, vec![0, 1, 2, 3, 4]);
        t.make_room(|s| s.1 >= 3);
        assert_eq!(t.len(), 4);
        assert_eq!(t.probe(42).filter(|s| s.0 == 42).count(), 2);
        // The probe wraps around the end of the table.
        assert_eq!(
            t.probe(u64::MAX - 4)
                .filter(|s| s.0 == u64::MAX - 4)
                .count(),
            1
        );
    }

    #[test]
    fn making_room_shrinks_an_emptied_table() {
        let mut t = ProbeTable::default();
        for k in 1..=100_000_u64 {
            fill(&mut t, k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, 0, true);
        }
        let big = t.bytes();
        t.make_room(|s| s.0 % 100 == 1);
        assert!(t.bytes() * 4 < big, "{} of {big} bytes", t.bytes());
    }
}
