//! The exact computation of one day over one group of users (a Kafka partition, or a
//! user-hash slice of one): dedup by `event_id`, last-click attribution with the shared
//! rules ([`common::attribution`]), counters per ad, exact distinct users.
//!
//! Records are sorted by user, so each user's history is contiguous: attribution and
//! distinct counts need only that user's records at a time, and users of different
//! groups never meet (both topics are keyed by `user_id`).

use std::collections::BTreeMap;

use common::attribution::{ClickRef, Rules, attribute};
use common::counters::{Counters, UNATTRIBUTED_AD};
use common::day::{DayNum, local_day};
use common::dims::{Dimensions, StaticDimensions};
use common::event::EventKind;
use rustc_hash::{FxHashMap, FxHashSet};

/// One archived event as the recompute needs it. Ids are 128-bit hashes (XXH3):
/// distinct counts are exact unless two of the day's users collide (probability
/// below 10⁻²⁰ at the design's volumes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    /// `xxh3_128(user_id)`.
    pub user: u128,
    /// `xxh3_128(event_id)`.
    pub id: u128,
    /// Event time, ms UTC.
    pub ts: i64,
    /// Kafka offset (arrival order within the user's partition).
    pub seq: i64,
    /// Kind.
    pub kind: EventKind,
    /// Ad (traffic), 0 otherwise.
    pub ad: i64,
    /// Advertiser.
    pub advertiser: i64,
    /// Product.
    pub product: i64,
    /// Cost, micros.
    pub cost: i64,
    /// GMV, micros.
    pub gmv: i64,
    /// True for a click read only as attribution history (lookback dates).
    pub lookback: bool,
}

/// Results of one day for one group (or the sum of groups).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayResult {
    /// Counters per (advertiser, ad); ad 0 = unattributed effects.
    pub by_ad: BTreeMap<(i64, i64), Counters>,
    /// Exact distinct users per (advertiser, ad).
    pub uv_ad: BTreeMap<(i64, i64), i64>,
    /// Exact distinct users per (advertiser, campaign).
    pub uv_campaign: BTreeMap<(i64, i64), i64>,
    /// Exact distinct users per advertiser.
    pub uv_advertiser: BTreeMap<i64, i64>,
    /// Records read (the day's rows and the lookback clicks).
    pub input_rows: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Events of the day whose ad or advertiser is not in the dimension tables
    /// (the speed layer dead-letters them too).
    pub unknown_dimension: u64,
}

impl DayResult {
    /// Adds another group's result (groups hold disjoint users).
    pub fn merge(&mut self, other: DayResult) {
        for (k, c) in other.by_ad {
            *self.by_ad.entry(k).or_default() += &c;
        }
        for (k, v) in other.uv_ad {
            *self.uv_ad.entry(k).or_default() += v;
        }
        for (k, v) in other.uv_campaign {
            *self.uv_campaign.entry(k).or_default() += v;
        }
        for (k, v) in other.uv_advertiser {
            *self.uv_advertiser.entry(k).or_default() += v;
        }
        self.input_rows += other.input_rows;
        self.duplicates += other.duplicates;
        self.unknown_dimension += other.unknown_dimension;
    }
}

/// Computes day `day` (advertiser-local day number) over `recs` (any order).
pub fn compute(
    mut recs: Vec<Rec>,
    day: DayNum,
    dims: &StaticDimensions,
    rules: &Rules,
) -> DayResult {
    let mut out = DayResult {
        input_rows: recs.len() as u64,
        ..DayResult::default()
    };
    recs.sort_unstable_by_key(|r| (r.user, r.seq));
    let mut user_recs: Vec<Rec> = Vec::new();
    let mut seen: FxHashSet<u128> = FxHashSet::default();
    let mut start = 0;
    while start < recs.len() {
        let user = recs[start].user;
        let mut end = start;
        while end < recs.len() && recs[end].user == user {
            end += 1;
        }
        // Dedup by event id, the first arrival (lowest offset) wins.
        user_recs.clear();
        seen.clear();
        for r in &recs[start..end] {
            if seen.insert(r.id) {
                user_recs.push(*r);
            } else {
                out.duplicates += 1;
            }
        }
        user_day(&mut user_recs, day, dims, rules, &mut out);
        start = end;
    }
    out
}

/// One user's records of the day and history: first the click history (every click
/// up to the day's end, so clicks with the effect's `ts` count whatever their
/// arrival), then the day's traffic and effects.
fn user_day(
    recs: &mut [Rec],
    day: DayNum,
    dims: &StaticDimensions,
    rules: &Rules,
    out: &mut DayResult,
) {
    use common::counters::Measure;
    recs.sort_unstable_by_key(|r| (r.ts, r.seq));
    let mut clicks: FxHashMap<i64, Vec<ClickRef>> = FxHashMap::default();
    for r in recs.iter().filter(|r| r.kind == EventKind::Click) {
        let (Some(adv), Some(ad)) = (dims.advertiser(r.advertiser), dims.ad(r.ad)) else {
            continue;
        };
        let local = local_day(r.ts, adv.tz);
        if ad.advertiser_id == r.advertiser && local <= day {
            let c = ClickRef {
                ts: r.ts,
                seq: r.seq,
                ad_id: ad.ad_id,
                campaign_id: ad.campaign_id,
                product_id: r.product,
                day: local,
            };
            clicks.entry(r.advertiser).or_default().push(c);
        }
    }
    let mut ads = FxHashSet::default();
    let mut campaigns = FxHashSet::default();
    let mut advertisers = FxHashSet::default();
    for r in recs.iter().filter(|r| !r.lookback) {
        let Some(adv) = dims.advertiser(r.advertiser) else {
            out.unknown_dimension += 1;
            continue;
        };
        let local = local_day(r.ts, adv.tz);
        if local != day {
            continue;
        }
        if r.kind.is_traffic() {
            let Some(ad) = dims.ad(r.ad).filter(|a| a.advertiser_id == r.advertiser) else {
                out.unknown_dimension += 1;
                continue;
            };
            let c = out.by_ad.entry((r.advertiser, ad.ad_id)).or_default();
            if r.kind == EventKind::Click {
                c[Measure::Clicks] += 1;
                c[Measure::CostMicros] += r.cost;
            } else {
                c[Measure::Exposures] += 1;
            }
            ads.insert((r.advertiser, ad.ad_id));
            campaigns.insert((r.advertiser, ad.campaign_id));
            advertisers.insert(r.advertiser);
        } else {
            let history = clicks.get(&r.advertiser).map_or(&[][..], Vec::as_slice);
            let a = attribute(history, r.ts, r.product, local, rules);
            let ad = a.click.map_or(UNATTRIBUTED_AD, |c| c.ad_id);
            out.by_ad
                .entry((r.advertiser, ad))
                .or_default()
                .add_effect(r.kind, r.gmv, a.kind);
        }
    }
    for k in ads {
        *out.uv_ad.entry(k).or_default() += 1;
    }
    for k in campaigns {
        *out.uv_campaign.entry(k).or_default() += 1;
    }
    for a in advertisers {
        *out.uv_advertiser.entry(a).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::counters::Measure;
    use common::dims::{AdDim, AdvertiserDim};
    use common::event::DAY_MS;

    const D: i64 = 20_000;

    fn dims() -> StaticDimensions {
        let mut d = StaticDimensions::default();
        d.advertisers.insert(
            1,
            AdvertiserDim {
                advertiser_id: 1,
                tz: chrono_tz::UTC,
            },
        );
        for ad in [10, 11] {
            d.ads.insert(
                ad,
                AdDim {
                    ad_id: ad,
                    campaign_id: 5,
                    advertiser_id: 1,
                    product_id: ad * 10,
                    category_id: 0,
                },
            );
        }
        d
    }

    fn rec(user: u128, id: u128, ts: i64, seq: i64, kind: EventKind, ad: i64, product: i64) -> Rec {
        Rec {
            user,
            id,
            ts,
            seq,
            kind,
            ad,
            advertiser: 1,
            product,
            cost: if kind == EventKind::Click { 7 } else { 0 },
            gmv: 0,
            lookback: false,
        }
    }

    #[test]
    fn attributes_counts_and_dedups_per_user() {
        let t = D * DAY_MS;
        let recs = vec![
            rec(1, 1, t + 1_000, 0, EventKind::Click, 10, 100),
            rec(1, 1, t + 1_000, 5, EventKind::Click, 10, 100), // duplicate, later offset
            rec(1, 2, t + 2_000, 1, EventKind::Exposure, 11, 110),
            rec(1, 3, t + 3_000, 0, EventKind::Order, 0, 100),
            rec(2, 4, t + 3_000, 0, EventKind::Order, 0, 100),
            Rec {
                lookback: true,
                ..rec(3, 5, t - 2 * DAY_MS, 0, EventKind::Click, 11, 110)
            },
            rec(3, 6, t + 5_000, 1, EventKind::Order, 0, 999),
        ];
        let r = compute(recs, i32::try_from(D).unwrap(), &dims(), &Rules::default());
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.by_ad[&(1, 10)][Measure::Clicks], 1);
        assert_eq!(r.by_ad[&(1, 10)][Measure::CostMicros], 7);
        assert_eq!(r.by_ad[&(1, 10)][Measure::OrdersDirect], 1);
        assert_eq!(r.by_ad[&(1, 11)][Measure::Exposures], 1);
        assert_eq!(
            r.by_ad[&(1, 11)][Measure::OrdersIndirect],
            1,
            "a lookback click earns an indirect order"
        );
        assert_eq!(r.by_ad[&(1, 0)][Measure::OrdersUnattributed], 1);
        assert_eq!(r.uv_ad[&(1, 10)], 1);
        assert_eq!(
            r.uv_advertiser[&1], 1,
            "only user 1 saw or clicked an ad that day"
        );
        assert_eq!(r.input_rows, 7);
    }
}
