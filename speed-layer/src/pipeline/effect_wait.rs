//! The effect wait: conversions held until attribution can be final.
//!
//! An effect waits in two stages, both timed by the traffic watermark
//! ([`super::watermark`]; never by the effects topic, which runs ahead of the traffic
//! when a backlog is caught up):
//!
//! 1. until the traffic watermark passes its time: then, if a click explains it, it is
//!    attributed with every earlier click known (the batch layer's answer);
//! 2. otherwise it waits for a late click (one that arrives after it, the design
//!    brief's "effects can arrive before the click that explains them") until the
//!    traffic watermark passes its time plus `effect_wait` (3 h); a click of its user
//!    and advertiser that arrives meanwhile attributes it at once. Then it is counted
//!    unattributed.
//!
//! Effects that start and end their wait between two flushes are never persisted; the
//! others are added to and removed from the partition's checkpoint by each flush.

use std::collections::BTreeMap;

use common::attribution::Attribution;
use common::day::DayNum;
use common::event::{Event, id_hash};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// An effect waiting for its click, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEffect {
    /// Kafka offset on the effects topic (unique within the partition).
    pub seq: i64,
    /// The event.
    #[serde(deserialize_with = "owned_event")]
    pub event: Event<'static>,
    /// Advertiser-local day of the effect.
    pub day: DayNum,
    /// Product category (0 if unknown), for the detail row.
    pub category_id: i64,
}

fn owned_event<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Event<'static>, D::Error> {
    Event::deserialize(d).map(Event::into_owned)
}

impl PendingEffect {
    fn pair(&self) -> (u64, i64) {
        (id_hash(&self.event.user_id), self.event.advertiser_id)
    }
}

/// An effect whose wait is over, with its final attribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The effect.
    pub effect: PendingEffect,
    /// Its attribution (unattributed when no click explained it in time).
    pub attribution: Attribution,
}

/// The waiting effects of one partition.
#[derive(Debug, Default)]
pub struct EffectWait {
    effect_wait_ms: i64,
    /// Stage 1: waiting for the traffic watermark to pass them, by (ts, seq).
    pending: BTreeMap<(i64, i64), PendingEffect>,
    /// Stage 2: no click explained them yet, by (deadline, seq).
    orphans: BTreeMap<(i64, i64), PendingEffect>,
    /// Stage-2 keys by (user hash, advertiser), for late clicks.
    orphans_by_user: FxHashMap<(u64, i64), Vec<(i64, i64)>>,
    /// Started waiting since the last flush, by seq.
    added: BTreeMap<i64, PendingEffect>,
    /// Persisted effects (by seq) that settled since the last flush.
    removed: Vec<i64>,
}

impl EffectWait {
    /// Empty; an unexplained effect waits `effect_wait_ms` of traffic time for a click.
    pub fn new(effect_wait_ms: i64) -> Self {
        EffectWait {
            effect_wait_ms,
            ..EffectWait::default()
        }
    }

    /// Restores an effect of the checkpoint (no flush delta).
    pub fn restore(&mut self, e: PendingEffect) {
        self.pending.insert((e.event.ts, e.seq), e);
    }

    /// A new effect starts waiting (recorded for the next flush).
    pub fn wait(&mut self, e: PendingEffect) {
        self.pending.insert((e.event.ts, e.seq), e.clone());
        self.added.insert(e.seq, e);
    }

    /// Moves waiting effects along their two stages now that the traffic watermark is
    /// `traffic_wm`; the ones that settle go to `out`, in order.
    pub fn advance(
        &mut self,
        traffic_wm: i64,
        attribute: impl Fn(&PendingEffect) -> Attribution,
        out: &mut Vec<Settled>,
    ) {
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 >= traffic_wm {
                break;
            }
            let ((ts, seq), p) = entry.remove_entry();
            let a = attribute(&p);
            if a.click.is_some() {
                self.settle(p, a, out);
            } else {
                let key = (ts.saturating_add(self.effect_wait_ms), seq);
                self.orphans_by_user.entry(p.pair()).or_default().push(key);
                self.orphans.insert(key, p);
            }
        }
        while let Some(entry) = self.orphans.first_entry() {
            if entry.key().0 > traffic_wm {
                break;
            }
            let (key, p) = entry.remove_entry();
            self.forget_orphan(&p, key);
            let a = attribute(&p);
            self.settle(p, a, out);
        }
    }

    /// A click of `user` on `advertiser_id` arrived: the effects of that pair waiting
    /// for a late click that it explains settle, into `out`.
    pub fn click_arrived(
        &mut self,
        user: u64,
        advertiser_id: i64,
        attribute: impl Fn(&PendingEffect) -> Attribution,
        out: &mut Vec<Settled>,
    ) {
        let Some(keys) = self.orphans_by_user.get(&(user, advertiser_id)) else {
            return;
        };
        for key in keys.clone() {
            let Some(p) = self.orphans.get(&key) else {
                continue;
            };
            let a = attribute(p);
            if a.click.is_none() {
                continue;
            }
            if let Some(p) = self.orphans.remove(&key) {
                self.forget_orphan(&p, key);
                self.settle(p, a, out);
            }
        }
    }

    fn forget_orphan(&mut self, p: &PendingEffect, key: (i64, i64)) {
        let pair = p.pair();
        if let Some(keys) = self.orphans_by_user.get_mut(&pair) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                self.orphans_by_user.remove(&pair);
            }
        }
    }

    fn settle(&mut self, effect: PendingEffect, attribution: Attribution, out: &mut Vec<Settled>) {
        if self.added.remove(&effect.seq).is_none() {
            self.removed.push(effect.seq);
        }
        out.push(Settled {
            effect,
            attribution,
        });
    }

    /// Effects that started waiting since the last call and still wait.
    pub fn take_added(&mut self) -> Vec<PendingEffect> {
        std::mem::take(&mut self.added).into_values().collect()
    }

    /// Persisted effects (by seq) that settled since the last call.
    pub fn take_removed(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.removed)
    }

    /// Effects waiting, in either stage.
    pub fn len(&self) -> usize {
        self.pending.len() + self.orphans.len()
    }

    /// True when no effect waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use common::attribution::{AttributionKind, ClickRef};
    use common::event::EventKind;

    use super::*;

    const HOUR: i64 = 3_600_000;

    fn effect(seq: i64, ts: i64) -> PendingEffect {
        PendingEffect {
            seq,
            event: Event {
                v: 1,
                kind: EventKind::Order,
                event_id: format!("o{seq}").into(),
                ts,
                user_id: "u1".into(),
                ad_id: None,
                advertiser_id: 1,
                product_id: Some(5),
                cost_micros: None,
                gmv_micros: None,
            },
            day: 0,
            category_id: 0,
        }
    }

    fn explained(ts: i64) -> Attribution {
        Attribution {
            kind: AttributionKind::Direct,
            click: Some(ClickRef {
                ts,
                seq: 0,
                ad_id: 10,
                campaign_id: 1,
                product_id: 5,
                day: 0,
            }),
        }
    }

    #[test]
    fn an_effect_settles_once_traffic_passes_it_or_its_wait() {
        let mut w = EffectWait::new(3 * HOUR);
        w.wait(effect(0, HOUR));
        w.wait(effect(1, 2 * HOUR));
        let mut out = Vec::new();
        w.advance(HOUR, |_| explained(0), &mut out);
        assert!(out.is_empty(), "the watermark must pass the effect's time");
        // o0 is explained; o1 is not and starts waiting for a late click.
        w.advance(
            2 * HOUR + 1,
            |p| {
                if p.seq == 0 {
                    explained(0)
                } else {
                    Attribution::UNATTRIBUTED
                }
            },
            &mut out,
        );
        assert_eq!(
            out.iter().map(|s| s.effect.seq).collect::<Vec<_>>(),
            vec![0]
        );
        assert_eq!(w.len(), 1);
        w.advance(5 * HOUR - 1, |_| Attribution::UNATTRIBUTED, &mut out);
        assert_eq!(out.len(), 1, "o1 waits 3 h of traffic time");
        w.advance(5 * HOUR, |_| Attribution::UNATTRIBUTED, &mut out);
        assert_eq!(out[1].attribution, Attribution::UNATTRIBUTED);
        assert!(w.is_empty());
        assert!(w.take_added().is_empty(), "came and went between flushes");
        assert!(w.take_removed().is_empty());
    }

    #[test]
    fn a_late_click_settles_an_orphan_of_its_pair_at_once() {
        let mut w = EffectWait::new(3 * HOUR);
        w.restore(effect(4, HOUR));
        let mut out = Vec::new();
        w.advance(HOUR + 1, |_| Attribution::UNATTRIBUTED, &mut out);
        w.click_arrived(id_hash("u2"), 1, |_| explained(HOUR - 5), &mut out);
        assert!(out.is_empty(), "another user's click");
        w.click_arrived(id_hash("u1"), 1, |_| explained(HOUR - 5), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            w.take_removed(),
            vec![4],
            "a restored effect leaves the checkpoint"
        );
    }
}
