//! The additive metrics of the design brief ("Metrics") as a fixed array of integer
//! counters, and the ratios derived from them at read time.
//!
//! Every counter is a sum, so windows, partitions and days add up by plain addition;
//! UV (distinct users) is not additive and lives beside the counters, never in them.
//! Effect counters are split by attribution: `_direct`, `_indirect`, and
//! `_unattributed` (the latter are kept per advertiser and day under the pseudo-ad
//! [`UNATTRIBUTED_AD`]).
#![deny(clippy::float_arithmetic)]

use std::ops::{AddAssign, Index, IndexMut};

use serde::{Deserialize, Serialize};

use crate::attribution::AttributionKind;
use crate::event::{Event, EventKind};

/// The pseudo ad id under which an advertiser's unattributed effects are counted.
/// Real ad ids are positive.
pub const UNATTRIBUTED_AD: i64 = 0;

/// One additive measure. The discriminant is the index into [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)] // the names say it; units are in `name()`'s suffixes
pub enum Measure {
    Exposures,
    Clicks,
    CostMicros,
    ConsultationsDirect,
    ConsultationsIndirect,
    ConsultationsUnattributed,
    PrivateMessagesDirect,
    PrivateMessagesIndirect,
    PrivateMessagesUnattributed,
    OrdersDirect,
    OrdersIndirect,
    OrdersUnattributed,
    PaymentsDirect,
    PaymentsIndirect,
    PaymentsUnattributed,
    GmvMicrosDirect,
    GmvMicrosIndirect,
    GmvMicrosUnattributed,
}

/// Number of measures.
pub const N_MEASURES: usize = 18;

impl Measure {
    /// All measures in index order.
    pub const ALL: [Measure; N_MEASURES] = [
        Measure::Exposures,
        Measure::Clicks,
        Measure::CostMicros,
        Measure::ConsultationsDirect,
        Measure::ConsultationsIndirect,
        Measure::ConsultationsUnattributed,
        Measure::PrivateMessagesDirect,
        Measure::PrivateMessagesIndirect,
        Measure::PrivateMessagesUnattributed,
        Measure::OrdersDirect,
        Measure::OrdersIndirect,
        Measure::OrdersUnattributed,
        Measure::PaymentsDirect,
        Measure::PaymentsIndirect,
        Measure::PaymentsUnattributed,
        Measure::GmvMicrosDirect,
        Measure::GmvMicrosIndirect,
        Measure::GmvMicrosUnattributed,
    ];

    /// The stable snake_case name: JSON field, Redis hash field suffix, MySQL and
    /// ClickHouse column.
    pub fn name(self) -> &'static str {
        MEASURE_NAMES[self as usize]
    }

    /// Parses a name written by [`Measure::name`].
    pub fn parse(s: &str) -> Option<Measure> {
        MEASURE_NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Measure::ALL[i])
    }

    /// The measure an effect of `kind` increments under `attribution` (`None` for traffic).
    pub fn effect_count(kind: EventKind, attribution: AttributionKind) -> Option<Measure> {
        let base = match kind {
            EventKind::Consultation => Measure::ConsultationsDirect,
            EventKind::PrivateMessage => Measure::PrivateMessagesDirect,
            EventKind::Order => Measure::OrdersDirect,
            EventKind::Payment => Measure::PaymentsDirect,
            EventKind::Exposure | EventKind::Click => return None,
        };
        Some(Measure::ALL[base as usize + attribution.offset()])
    }

    /// True for the measures of the 10-second series (the dashboard's live chart):
    /// traffic, cost and attributed effects. Unattributed effects belong to no ad and
    /// settle up to the effect wait (3 h) after their time, long after their window
    /// was drawn, so they count in the day totals only.
    pub fn in_series(self) -> bool {
        !matches!(
            self,
            Measure::ConsultationsUnattributed
                | Measure::PrivateMessagesUnattributed
                | Measure::OrdersUnattributed
                | Measure::PaymentsUnattributed
                | Measure::GmvMicrosUnattributed
        )
    }

    /// The GMV measure for `attribution`.
    pub fn gmv(attribution: AttributionKind) -> Measure {
        Measure::ALL[Measure::GmvMicrosDirect as usize + attribution.offset()]
    }
}

const MEASURE_NAMES: [&str; N_MEASURES] = [
    "exposures",
    "clicks",
    "cost_micros",
    "consultations_direct",
    "consultations_indirect",
    "consultations_unattributed",
    "private_messages_direct",
    "private_messages_indirect",
    "private_messages_unattributed",
    "orders_direct",
    "orders_indirect",
    "orders_unattributed",
    "payments_direct",
    "payments_indirect",
    "payments_unattributed",
    "gmv_micros_direct",
    "gmv_micros_indirect",
    "gmv_micros_unattributed",
];

/// The additive metrics of one (ad, day) or any sum of them. Money in micros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters(pub [i64; N_MEASURES]);

impl Counters {
    /// All zero.
    pub const ZERO: Counters = Counters([0; N_MEASURES]);

    /// True when every counter is zero.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }

    /// Adds one traffic event (exposure or click with its cost).
    pub fn add_traffic(&mut self, e: &Event<'_>) {
        self.add(Increment::traffic(e));
    }

    /// Adds one effect under its attribution (count, and GMV for payments).
    pub fn add_effect(&mut self, kind: EventKind, gmv_micros: i64, attribution: AttributionKind) {
        self.add(Increment::effect(kind, gmv_micros, attribution));
    }

    /// Adds what one event contributes.
    #[inline]
    pub fn add(&mut self, inc: Increment) {
        for (m, v) in inc.0 {
            self[m] += v;
        }
    }

    /// Non-zero counters as `(name, value)` pairs, in index order.
    pub fn non_zero(&self) -> impl Iterator<Item = (Measure, i64)> + '_ {
        Measure::ALL
            .into_iter()
            .map(|m| (m, self[m]))
            .filter(|(_, v)| *v != 0)
    }

    /// All effects of one kind of attribution for a family, e.g. orders direct+indirect.
    pub fn attributed(&self, direct: Measure) -> i64 {
        self[direct] + self.0[direct as usize + 1]
    }
}

/// What one event adds to its counters: at most two measures (a click adds a click
/// and its cost; a payment its count and its GMV). An unused pair adds 0, which
/// changes nothing. A plain value, so the speed layer can record an event's
/// contribution first and add it to its window and its day later, in one tight loop
/// per map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Increment([(Measure, i64); 2]);

impl Increment {
    /// `value` of the single measure `m`.
    pub fn one(m: Measure, value: i64) -> Increment {
        Increment([(m, value), (m, 0)])
    }

    /// One exposure, or one click with its cost (micros); nothing for an effect.
    pub fn traffic(e: &Event<'_>) -> Increment {
        match e.kind {
            EventKind::Exposure => Increment([(Measure::Exposures, 1), (Measure::Clicks, 0)]),
            EventKind::Click => Increment([(Measure::Clicks, 1), (Measure::CostMicros, e.cost())]),
            _ => Increment([(Measure::Exposures, 0), (Measure::Clicks, 0)]),
        }
    }

    /// One effect of `kind` under `attribution`, and `gmv_micros` for a payment.
    pub fn effect(kind: EventKind, gmv_micros: i64, attribution: AttributionKind) -> Increment {
        let count =
            Measure::effect_count(kind, attribution).map_or((Measure::Exposures, 0), |m| (m, 1));
        let gmv = if kind == EventKind::Payment {
            (Measure::gmv(attribution), gmv_micros)
        } else {
            (Measure::Exposures, 0)
        };
        Increment([count, gmv])
    }
}

impl Index<Measure> for Counters {
    type Output = i64;
    fn index(&self, m: Measure) -> &i64 {
        &self.0[m as usize]
    }
}

impl IndexMut<Measure> for Counters {
    fn index_mut(&mut self, m: Measure) -> &mut i64 {
        &mut self.0[m as usize]
    }
}

impl AddAssign<&Counters> for Counters {
    fn add_assign(&mut self, rhs: &Counters) {
        for (a, b) in self.0.iter_mut().zip(rhs.0.iter()) {
            *a += *b;
        }
    }
}

/// Ratios derived at read time from sums (never averages of ratios): the design
/// brief's CTR, CPC, CVR, CPA, ROAS. `None` where the denominator is zero.
///
/// Conversions are attributed orders (direct + indirect), the platform's conversion
/// event; GMV is attributed GMV.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Derived {
    /// clicks / exposures.
    pub ctr: Option<f64>,
    /// cost / clicks, in micros.
    pub cpc_micros: Option<f64>,
    /// attributed orders / clicks.
    pub cvr: Option<f64>,
    /// cost / attributed orders, in micros.
    pub cpa_micros: Option<f64>,
    /// attributed GMV / cost.
    pub roas: Option<f64>,
}

#[allow(clippy::cast_precision_loss, clippy::float_arithmetic)] // ratios for display only
impl Derived {
    /// Computes the ratios of one row or sum of rows.
    pub fn of(c: &Counters) -> Derived {
        let ratio = |num: i64, den: i64| {
            if den == 0 {
                None
            } else {
                Some(num as f64 / den as f64)
            }
        };
        let orders = c.attributed(Measure::OrdersDirect);
        let gmv = c.attributed(Measure::GmvMicrosDirect);
        Derived {
            ctr: ratio(c[Measure::Clicks], c[Measure::Exposures]),
            cpc_micros: ratio(c[Measure::CostMicros], c[Measure::Clicks]),
            cvr: ratio(orders, c[Measure::Clicks]),
            cpa_micros: ratio(c[Measure::CostMicros], orders),
            roas: ratio(gmv, c[Measure::CostMicros]),
        }
    }
}

/// A scope unique users (UV) are counted in: one ad, one campaign or one advertiser.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum UvScope {
    /// One ad.
    Ad(i64),
    /// One campaign.
    Campaign(i64),
    /// One advertiser.
    Advertiser(i64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_carries_traffic_and_attributed_effects_only() {
        let series: Vec<&str> = Measure::ALL
            .into_iter()
            .filter(|m| m.in_series())
            .map(Measure::name)
            .collect();
        assert_eq!(series.len(), 13);
        assert!(series.iter().all(|n| !n.ends_with("_unattributed")));
        assert!(series.contains(&"gmv_micros_indirect") && series.contains(&"cost_micros"));
    }

    #[test]
    fn names_are_unique_and_parse_back() {
        for m in Measure::ALL {
            assert_eq!(Measure::parse(m.name()), Some(m));
            assert_eq!(Measure::ALL[m as usize], m);
        }
    }

    #[test]
    fn effects_land_in_their_split() {
        let mut c = Counters::ZERO;
        c.add_effect(EventKind::Payment, 5_000_000, AttributionKind::Indirect);
        c.add_effect(EventKind::Order, 0, AttributionKind::Direct);
        c.add_effect(EventKind::Consultation, 0, AttributionKind::Unattributed);
        assert_eq!(c[Measure::PaymentsIndirect], 1);
        assert_eq!(c[Measure::GmvMicrosIndirect], 5_000_000);
        assert_eq!(c[Measure::OrdersDirect], 1);
        assert_eq!(c[Measure::ConsultationsUnattributed], 1);
        assert_eq!(c.non_zero().count(), 4);
    }

    #[test]
    fn ratios_come_from_sums() {
        let mut c = Counters::ZERO;
        c[Measure::Exposures] = 200;
        c[Measure::Clicks] = 10;
        c[Measure::CostMicros] = 1_000_000;
        c[Measure::OrdersDirect] = 1;
        c[Measure::OrdersIndirect] = 1;
        c[Measure::GmvMicrosDirect] = 3_000_000;
        let d = Derived::of(&c);
        assert_eq!(d.ctr, Some(0.05));
        assert_eq!(d.cpc_micros, Some(100_000.0));
        assert_eq!(d.cvr, Some(0.2));
        assert_eq!(d.cpa_micros, Some(500_000.0));
        assert_eq!(d.roas, Some(3.0));
        assert_eq!(Derived::of(&Counters::ZERO).ctr, None);
    }
}
