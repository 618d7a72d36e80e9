//! The attribution rules, shared by the speed layer and the batch recompute so the two
//! paths cannot drift apart (the design brief, "Metrics"; `../shared/data/README.md`).
//!
//! Last click wins:
//!
//! - **direct**: the user clicked an ad for the *same product* on the *same day* (the
//!   advertiser's day) at or before the effect's time; the latest such click wins;
//! - **indirect**: otherwise, the user clicked *any ad of the same advertiser* within
//!   the lookback (default 14 days) at or before the effect's time; the latest wins;
//! - **unattributed**: otherwise; the effect is counted for the advertiser but earns
//!   no ad.
//!
//! "At or before": a click whose `ts` equals the effect's counts as before it. Among
//! clicks with the same `ts`, the one that arrived later (higher `seq`, the Kafka
//! offset within the user's partition, or the row number of the source file) wins.
//! The lookback is inclusive: a click exactly `lookback_ms` before the effect counts.

use serde::{Deserialize, Serialize};

use crate::day::DayNum;

/// A click as attribution sees it: where and when, and which ad it would credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickRef {
    /// Click time, ms since the Unix epoch, UTC.
    pub ts: i64,
    /// Tie-break among equal `ts`: arrival order (Kafka offset in the user's partition).
    pub seq: i64,
    /// The clicked ad.
    pub ad_id: i64,
    /// The ad's campaign.
    pub campaign_id: i64,
    /// The product the ad advertises.
    pub product_id: i64,
    /// The click's day in the advertiser's time zone.
    pub day: DayNum,
}

impl ClickRef {
    fn order_key(&self) -> (i64, i64) {
        (self.ts, self.seq)
    }
}

/// Which rule credited the effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributionKind {
    /// Same product, same day.
    Direct,
    /// Same advertiser within the lookback.
    Indirect,
    /// No qualifying click.
    Unattributed,
}

impl AttributionKind {
    /// 0, 1, 2: offset of the split within a family of measures.
    pub fn offset(self) -> usize {
        match self {
            AttributionKind::Direct => 0,
            AttributionKind::Indirect => 1,
            AttributionKind::Unattributed => 2,
        }
    }

    /// `direct`, `indirect`, `none` (the ClickHouse enum value).
    pub fn as_str(self) -> &'static str {
        match self {
            AttributionKind::Direct => "direct",
            AttributionKind::Indirect => "indirect",
            AttributionKind::Unattributed => "none",
        }
    }
}

/// The outcome: the rule and the winning click (none when unattributed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    /// Which rule applied.
    pub kind: AttributionKind,
    /// The click that earns the effect.
    pub click: Option<ClickRef>,
}

impl Attribution {
    /// No qualifying click.
    pub const UNATTRIBUTED: Attribution = Attribution {
        kind: AttributionKind::Unattributed,
        click: None,
    };
}

/// Parameters of the rules (config section `[attribution]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Indirect lookback, ms (default 14 days, the design brief).
    pub lookback_ms: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            lookback_ms: 14 * crate::event::DAY_MS,
        }
    }
}

/// Attributes an effect at `effect_ts` on `effect_product`, on the advertiser-local day
/// `effect_day`, given `clicks`: the user's clicks on ads of the effect's advertiser,
/// in any order (clicks after the effect are ignored).
///
/// ```
/// use common::attribution::{attribute, AttributionKind, ClickRef, Rules};
/// let click = |ts, seq, ad, product, day| ClickRef { ts, seq, ad_id: ad, campaign_id: 1, product_id: product, day };
/// let clicks = [click(1_000, 1, 10, 7, 0), click(2_000, 2, 11, 8, 0)];
/// // Same product, same day: direct, even though a later click on another product exists.
/// let a = attribute(&clicks, 3_000, 7, 0, &Rules::default());
/// assert_eq!((a.kind, a.click.unwrap().ad_id), (AttributionKind::Direct, 10));
/// // Another product: the last click of the advertiser, indirect.
/// let a = attribute(&clicks, 3_000, 9, 0, &Rules::default());
/// assert_eq!((a.kind, a.click.unwrap().ad_id), (AttributionKind::Indirect, 11));
/// ```
pub fn attribute<'c>(
    clicks: impl IntoIterator<Item = &'c ClickRef>,
    effect_ts: i64,
    effect_product: i64,
    effect_day: DayNum,
    rules: &Rules,
) -> Attribution {
    let mut direct: Option<&ClickRef> = None;
    let mut indirect: Option<&ClickRef> = None;
    let earliest = effect_ts.saturating_sub(rules.lookback_ms);
    for c in clicks {
        if c.ts > effect_ts {
            continue;
        }
        if c.product_id == effect_product
            && c.day == effect_day
            && direct.is_none_or(|d| c.order_key() > d.order_key())
        {
            direct = Some(c);
        }
        if c.ts >= earliest && indirect.is_none_or(|d| c.order_key() > d.order_key()) {
            indirect = Some(c);
        }
    }
    match (direct, indirect) {
        (Some(c), _) => Attribution {
            kind: AttributionKind::Direct,
            click: Some(*c),
        },
        (None, Some(c)) => Attribution {
            kind: AttributionKind::Indirect,
            click: Some(*c),
        },
        (None, None) => Attribution::UNATTRIBUTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DAY_MS;
    use proptest::prelude::*;

    const D: i64 = 20_000 * DAY_MS; // some midnight UTC

    fn click(ts: i64, seq: i64, ad: i64, product: i64) -> ClickRef {
        #[allow(clippy::cast_possible_truncation)]
        let day = ts.div_euclid(DAY_MS) as DayNum;
        ClickRef {
            ts,
            seq,
            ad_id: ad,
            campaign_id: ad / 10,
            product_id: product,
            day,
        }
    }

    fn attr(clicks: &[ClickRef], ts: i64, product: i64) -> (AttributionKind, Option<i64>) {
        #[allow(clippy::cast_possible_truncation)]
        let day = ts.div_euclid(DAY_MS) as DayNum;
        let a = attribute(clicks, ts, product, day, &Rules::default());
        (a.kind, a.click.map(|c| c.ad_id))
    }

    #[test]
    fn click_before_midnight_is_indirect_after_it() {
        let c = [click(D - 1_000, 1, 10, 7)];
        assert_eq!(attr(&c, D - 1, 7), (AttributionKind::Direct, Some(10)));
        assert_eq!(
            attr(&c, D + 1_000, 7),
            (AttributionKind::Indirect, Some(10))
        );
    }

    #[test]
    fn lookback_edges() {
        let c = [click(D, 1, 10, 7)];
        let lb = 14 * DAY_MS;
        assert_eq!(attr(&c, D + lb - 1_000, 8).0, AttributionKind::Indirect);
        assert_eq!(
            attr(&c, D + lb, 8).0,
            AttributionKind::Indirect,
            "inclusive at exactly 14 days"
        );
        assert_eq!(
            attr(&c, D + lb + 1_000, 8),
            (AttributionKind::Unattributed, None)
        );
    }

    #[test]
    fn equal_ts_counts_as_before_and_later_arrival_wins() {
        let c = [click(D + 5_000, 2, 11, 7), click(D + 5_000, 1, 10, 7)];
        assert_eq!(attr(&c, D + 5_000, 7), (AttributionKind::Direct, Some(11)));
        assert_eq!(attr(&c, D + 4_999, 7).0, AttributionKind::Unattributed);
    }

    #[test]
    fn last_click_wins() {
        let c = [
            click(D + 1_000, 1, 10, 7),
            click(D + 2_000, 2, 11, 7),
            click(D + 9_000, 3, 12, 7),
        ];
        assert_eq!(attr(&c, D + 5_000, 7), (AttributionKind::Direct, Some(11)));
    }

    /// A naive restatement of the rules, checked against `attribute` on random histories.
    fn reference(
        clicks: &[ClickRef],
        ts: i64,
        product: i64,
        day: DayNum,
    ) -> Option<(AttributionKind, i64, i64)> {
        let mut sorted: Vec<_> = clicks.iter().filter(|c| c.ts <= ts).collect();
        sorted.sort_by_key(|c| (c.ts, c.seq));
        if let Some(c) = sorted
            .iter()
            .rev()
            .find(|c| c.product_id == product && c.day == day)
        {
            return Some((AttributionKind::Direct, c.ts, c.seq));
        }
        sorted
            .iter()
            .rev()
            .find(|c| ts - c.ts <= 14 * DAY_MS)
            .map(|c| (AttributionKind::Indirect, c.ts, c.seq))
    }

    proptest! {
        #[test]
        fn agrees_with_reference(
            raw in proptest::collection::vec((0_i64..20 * DAY_MS, 0_i64..3), 0..12),
            effect in 0_i64..20 * DAY_MS,
            product in 0_i64..3,
        ) {
            let clicks: Vec<_> = raw.iter().enumerate()
                .map(|(i, (ts, p))| click(D + ts / 60_000 * 60_000, i as i64, i as i64, *p)).collect();
            let ts = D + effect / 60_000 * 60_000;
            #[allow(clippy::cast_possible_truncation)]
            let day = ts.div_euclid(DAY_MS) as DayNum;
            let got = attribute(&clicks, ts, product, day, &Rules::default());
            let want = reference(&clicks, ts, product, day);
            match want {
                None => prop_assert_eq!(got, Attribution::UNATTRIBUTED),
                Some((k, cts, seq)) => {
                    prop_assert_eq!(got.kind, k);
                    let c = got.click.unwrap();
                    prop_assert_eq!((c.ts, c.seq), (cts, seq));
                }
            }
        }
    }
}
