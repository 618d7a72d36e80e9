//! An independent computation of the platform's metrics over raw events: plain code,
//! written from the rules of the design brief and `../shared/data/README.md`, sharing
//! nothing with the pipelines but the event type. Tests compare what the layers
//! produce against it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::event::{DAY_MS, Event, EventKind};

/// Expected metrics of one (advertiser, UTC day, ad); ad 0 holds unattributed effects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Exposures.
    pub exposures: i64,
    /// Clicks.
    pub clicks: i64,
    /// Sum of click cost, micros.
    pub cost_micros: i64,
    /// Effect counts by kind name and split (`orders_direct`, ...), GMV included.
    pub effects: BTreeMap<String, i64>,
    /// Distinct users with an exposure or click.
    pub users: BTreeSet<String>,
}

/// Key of [`Expected`]: (advertiser, day number UTC, ad).
pub type Key = (i64, i64, i64);

/// Computes expected metrics for events (in arrival order; `event_id` duplicates are
/// counted once, first copy wins). Days are UTC (the data set's advertisers are UTC).
pub fn compute(events: &[Event<'_>]) -> BTreeMap<Key, Expected> {
    let lookback = 14 * DAY_MS;
    let mut seen = BTreeSet::new();
    let unique: Vec<(usize, &Event<'_>)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| seen.insert(e.event_id.to_string()))
        .collect();
    // Clicks per (user, advertiser), with their arrival position for ties.
    let mut clicks: HashMap<(String, i64), Vec<(i64, usize, i64, i64)>> = HashMap::new();
    for (pos, e) in &unique {
        if e.kind == EventKind::Click {
            clicks
                .entry((e.user_id.to_string(), e.advertiser_id))
                .or_default()
                .push((e.ts, *pos, e.ad_id.unwrap_or(0), e.product_id.unwrap_or(0)));
        }
    }
    let mut out: BTreeMap<Key, Expected> = BTreeMap::new();
    for (_, e) in &unique {
        let day = e.ts.div_euclid(DAY_MS);
        match e.kind {
            EventKind::Exposure | EventKind::Click => {
                let x = out
                    .entry((e.advertiser_id, day, e.ad_id.unwrap_or(0)))
                    .or_default();
                if e.kind == EventKind::Click {
                    x.clicks += 1;
                    x.cost_micros += e.cost_micros.unwrap_or(0);
                } else {
                    x.exposures += 1;
                }
                x.users.insert(e.user_id.to_string());
            }
            _ => {
                let empty = Vec::new();
                let cands = clicks
                    .get(&(e.user_id.to_string(), e.advertiser_id))
                    .unwrap_or(&empty);
                let before = cands.iter().filter(|c| c.0 <= e.ts);
                let direct = before
                    .clone()
                    .filter(|c| c.3 == e.product_id.unwrap_or(0) && c.0.div_euclid(DAY_MS) == day)
                    .max_by_key(|c| (c.0, c.1));
                let indirect = before
                    .filter(|c| e.ts - c.0 <= lookback)
                    .max_by_key(|c| (c.0, c.1));
                let (split, ad) = match (direct, indirect) {
                    (Some(c), _) => ("direct", c.2),
                    (None, Some(c)) => ("indirect", c.2),
                    (None, None) => ("unattributed", 0),
                };
                let family = match e.kind {
                    EventKind::Consultation => "consultations",
                    EventKind::PrivateMessage => "private_messages",
                    EventKind::Order => "orders",
                    _ => "payments",
                };
                let x = out.entry((e.advertiser_id, day, ad)).or_default();
                *x.effects.entry(format!("{family}_{split}")).or_default() += 1;
                if e.kind == EventKind::Payment {
                    *x.effects.entry(format!("gmv_micros_{split}")).or_default() +=
                        e.gmv_micros.unwrap_or(0);
                }
            }
        }
    }
    out
}

/// Sums expected rows per (advertiser, day), with the day's distinct users.
pub fn per_day(expected: &BTreeMap<Key, Expected>) -> BTreeMap<(i64, i64), Expected> {
    let mut out: BTreeMap<(i64, i64), Expected> = BTreeMap::new();
    for ((adv, day, _), x) in expected {
        let d = out.entry((*adv, *day)).or_default();
        d.exposures += x.exposures;
        d.clicks += x.clicks;
        d.cost_micros += x.cost_micros;
        for (k, v) in &x.effects {
            *d.effects.entry(k.clone()).or_default() += v;
        }
        d.users.extend(x.users.iter().cloned());
    }
    out
}
