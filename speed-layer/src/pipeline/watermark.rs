//! The partition's watermarks: how far event time has surely progressed.
//!
//! The partition tracks the newest event time of each topic. The *event watermark*
//! (newest time of either topic minus the out-of-orderness bound) closes windows. The
//! *traffic watermark* (newest traffic time minus the bound) tells when every click at
//! or before a time has been seen, since a user's traffic arrives in order within its
//! partition; it times the effect wait ([`super::effect_wait`]).
//!
//! A quiet topic lets its watermark follow the wall clock ([`Watermarks::advance_idle`]),
//! so windows close and waits end on a live stream without traffic.

use common::event::TopicKind;

/// Newest event times and idle floors of the two topics (ms UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    out_of_orderness_ms: i64,
    max_ts: [i64; 2],
    idle_floor: [i64; 2],
}

impl Watermarks {
    /// Nothing seen yet; `out_of_orderness_ms` is the watermark delay.
    pub fn new(out_of_orderness_ms: i64) -> Self {
        Watermarks {
            out_of_orderness_ms,
            max_ts: [i64::MIN; 2],
            idle_floor: [i64::MIN; 2],
        }
    }

    /// Restores the newest times of a checkpoint (traffic, effects).
    pub fn restored(out_of_orderness_ms: i64, max_ts: [i64; 2]) -> Self {
        Watermarks {
            max_ts,
            ..Watermarks::new(out_of_orderness_ms)
        }
    }

    /// Records an accepted event of `topic` at `ts`.
    pub fn observe(&mut self, topic: TopicKind, ts: i64) {
        let t = topic.index();
        self.max_ts[t] = self.max_ts[t].max(ts);
    }

    /// Nothing older than `floor_ms` is expected from the idle `topic` any more.
    pub fn advance_idle(&mut self, topic: TopicKind, floor_ms: i64) {
        let t = topic.index();
        self.idle_floor[t] = self.idle_floor[t].max(floor_ms);
    }

    /// Traffic watermark: every click at or before it has been seen.
    pub fn traffic(&self) -> i64 {
        let t = TopicKind::Traffic.index();
        self.max_ts[t]
            .saturating_sub(self.out_of_orderness_ms)
            .max(self.idle_floor[t])
    }

    /// Event watermark: windows ending at or before it are complete.
    pub fn event(&self) -> i64 {
        let newest = self.max_ts[0]
            .max(self.max_ts[1])
            .saturating_sub(self.out_of_orderness_ms);
        newest.max(self.idle_floor[0].min(self.idle_floor[1]))
    }

    /// Newest event time seen on `topic`, `i64::MIN` before the first.
    pub fn newest(&self, topic: TopicKind) -> i64 {
        self.max_ts[topic.index()]
    }

    /// Newest event time of either topic, `i64::MIN` before the first.
    pub fn newest_any(&self) -> i64 {
        self.max_ts[0].max(self.max_ts[1])
    }

    /// Newest times per topic (traffic, effects), as a checkpoint stores them.
    pub fn max_ts(&self) -> [i64; 2] {
        self.max_ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_running_ahead_do_not_move_the_traffic_watermark() {
        let mut w = Watermarks::new(2_000);
        w.observe(TopicKind::Traffic, 10_000);
        w.observe(TopicKind::Effects, 50_000);
        assert_eq!(w.traffic(), 8_000);
        assert_eq!(w.event(), 48_000, "windows close on either topic");
        assert_eq!(w.newest_any(), 50_000);
    }

    #[test]
    fn an_idle_topic_follows_the_wall_clock() {
        let mut w = Watermarks::new(2_000);
        w.observe(TopicKind::Traffic, 10_000);
        w.advance_idle(TopicKind::Traffic, 30_000);
        assert_eq!(w.traffic(), 30_000);
        assert_eq!(w.event(), 8_000, "both topics must be idle past a time");
        w.advance_idle(TopicKind::Effects, 25_000);
        assert_eq!(w.event(), 25_000);
    }
}
