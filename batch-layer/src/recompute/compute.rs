//! The exact computation of one day over one group of users (a Kafka partition, or a
//! user-hash slice of one): dedup by `event_id`, last-click attribution with the shared
//! rules ([`common::attribution`]), counters per ad, exact distinct users.
//!
//! Records are sorted by user, so each user's history is contiguous: attribution and
//! distinct counts need only that user's records at a time, and users of different
//! groups never meet (both topics are keyed by `user_id`).

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use common::attribution::{ClickRef, Rules, attribute};
use common::counters::{Counters, UNATTRIBUTED_AD};
use common::day::{DayNum, local_day};
use common::dims::{Dimensions, StaticDimensions};
use common::event::EventKind;

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
    let mut out = Totals::default();
    let input_rows = recs.len() as u64;
    // Copies of an event are adjacent, the first arrival (lowest offset) first.
    recs.sort_unstable_by_key(|r| (r.user, r.id, r.seq));
    let mut user = UserScratch::default();
    let mut start = 0;
    while start < recs.len() {
        let id = recs[start].user;
        // A user has few records: a linear scan (a binary search over the rest of the
        // slice would miss the cache at every step).
        let end = start
            + recs[start..]
                .iter()
                .position(|r| r.user != id)
                .unwrap_or(recs.len() - start);
        // Dedup by event id: the first arrival wins.
        user.recs.clear();
        let mut last = None;
        for r in &recs[start..end] {
            if last == Some(r.id) {
                out.duplicates += 1;
            } else {
                user.recs.push(*r);
                last = Some(r.id);
            }
        }
        user_day(&mut user, day, dims, rules, &mut out);
        start = end;
    }
    DayResult {
        by_ad: out.by_ad.into_iter().collect(),
        uv_ad: out.uv_ad.into_iter().collect(),
        uv_campaign: out.uv_campaign.into_iter().collect(),
        uv_advertiser: out.uv_advertiser.into_iter().collect(),
        input_rows,
        duplicates: out.duplicates,
        unknown_dimension: out.unknown_dimension,
    }
}

/// [`DayResult`]'s sums while a slice is computed: hash maps (a B-tree lookup per
/// counted event was a tenth of the recompute), ordered once at the end.
#[derive(Default)]
struct Totals {
    by_ad: FxHashMap<(i64, i64), Counters>,
    uv_ad: FxHashMap<(i64, i64), i64>,
    uv_campaign: FxHashMap<(i64, i64), i64>,
    uv_advertiser: FxHashMap<i64, i64>,
    duplicates: u64,
    unknown_dimension: u64,
}

/// One user's working set, kept across users so that its buffers are allocated once
/// per slice, not once per user.
#[derive(Default)]
struct UserScratch {
    /// The user's records, deduplicated.
    recs: Vec<Rec>,
    /// The user's clicks that may earn credit: (advertiser, click), by advertiser,
    /// then in (ts, seq) order.
    clicks: Vec<(i64, ClickRef)>,
    /// (advertiser, ad), (advertiser, campaign) and advertisers the user saw that day,
    /// each once after `sort` and `dedup` (a user sees few: vectors beat hash sets).
    ads: Vec<(i64, i64)>,
    campaigns: Vec<(i64, i64)>,
    advertisers: Vec<i64>,
}

/// One user's records of the day and history: first the click history (every click
/// up to the day's end, so clicks with the effect's `ts` count whatever their
/// arrival), then the day's traffic and effects.
fn user_day(
    user: &mut UserScratch,
    day: DayNum,
    dims: &StaticDimensions,
    rules: &Rules,
    out: &mut Totals,
) {
    use common::counters::Measure;
    let UserScratch {
        recs,
        clicks,
        ads,
        campaigns,
        advertisers,
    } = user;
    recs.sort_unstable_by_key(|r| (r.ts, r.seq));
    clicks.clear();
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
            clicks.push((r.advertiser, c));
        }
    }
    // By advertiser, each advertiser's clicks in (ts, seq) order as they came.
    clicks.sort_unstable_by_key(|(adv, c)| (*adv, c.ts, c.seq));
    ads.clear();
    campaigns.clear();
    advertisers.clear();
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
            ads.push((r.advertiser, ad.ad_id));
            campaigns.push((r.advertiser, ad.campaign_id));
            advertisers.push(r.advertiser);
        } else {
            let from = clicks.partition_point(|(a, _)| *a < r.advertiser);
            let to = clicks.partition_point(|(a, _)| *a <= r.advertiser);
            let history = clicks[from..to].iter().map(|(_, c)| c);
            let a = attribute(history, r.ts, r.product, local, rules);
            let ad = a.click.map_or(UNATTRIBUTED_AD, |c| c.ad_id);
            out.by_ad
                .entry((r.advertiser, ad))
                .or_default()
                .add_effect(r.kind, r.gmv, a.kind);
        }
    }
    for set in [&mut *ads, &mut *campaigns] {
        set.sort_unstable();
        set.dedup();
    }
    advertisers.sort_unstable();
    advertisers.dedup();
    for k in ads.drain(..) {
        *out.uv_ad.entry(k).or_default() += 1;
    }
    for k in campaigns.drain(..) {
        *out.uv_campaign.entry(k).or_default() += 1;
    }
    for a in advertisers.drain(..) {
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
