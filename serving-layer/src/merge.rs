//! The merge, pure: an advertiser's final days (batch) and provisional days (speed)
//! in, the rows and totals of one answer out. No I/O and no JSON round trip: metrics
//! stay typed [`Counters`] until the answer is serialized.
//!
//! Rules (design brief, "Serving layer" and "Finality"):
//!
//! - a day that is final for the advertiser (its time zone's day is `final` in
//!   `day_finality`; the caller decides, [`Inputs::batch`]) comes from the batch
//!   results, wholly (`source: batch`, `provisional: false`, `status` = `finality` =
//!   `final`, or `revised` when `day_revisions` holds a revision of the
//!   advertiser-day: then the row also carries `revised_at` and `revisions`, and by
//!   day `previous`, the totals before the latest revision; [`Revision`]);
//! - any other day comes from the speed layer (`source: speed`, `provisional: true`),
//!   and a past one says `awaiting_batch: true`;
//! - rows group by day, by day and ad, or by day and campaign; ad `0` and campaign `0`
//!   hold effects no click earned (unattributed), which have no users: their UV is 0
//!   on both paths;
//! - totals add the counters of every row (UV is not additive and is left out); the
//!   ratios (CTR, CPC, CVR, CPA, ROAS) are derived from the sums.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use common::counters::UvScope;
use common::counters::{Counters, Derived, Measure, UNATTRIBUTED_AD};
use common::day::rfc3339_ms;
use serde::Serialize;
use serde::ser::SerializeMap;

/// Grouping of metric rows (`group_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    /// One row per day.
    Day,
    /// One row per day and ad.
    Ad,
    /// One row per day and campaign.
    Campaign,
}

impl GroupBy {
    /// `day`, `ad` or `campaign`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Ad => "ad",
            GroupBy::Campaign => "campaign",
        }
    }
}

/// Finality of a batch advertiser-day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Finality {
    /// Batch results are final and no run has changed them since.
    Final,
    /// Final, then recomputed because late data arrived, and the recomputation changed
    /// the advertiser's totals (a `day_revisions` row).
    Revised,
}

impl Finality {
    /// `final` or `revised`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finality::Final => "final",
            Finality::Revised => "revised",
        }
    }
}

/// One ad-day of batch results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAd {
    /// The ad's campaign (0 for the unattributed pseudo-ad).
    pub campaign_id: i64,
    /// Counters.
    pub counters: Counters,
    /// Exact distinct users of the ad that day.
    pub uv: i64,
}

/// The latest revision of an advertiser-day (`day_revisions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// How many revisions the advertiser-day has had (1 = revised once).
    pub revisions: u32,
    /// When the latest revision was written, ms UTC.
    pub revised_at: i64,
    /// The advertiser-day totals before the latest revision, as stored
    /// (`previous_totals`): [`Measure`] name -> value (money in micros), plus `uv`, the
    /// advertiser's distinct users.
    pub previous: BTreeMap<String, i64>,
}

/// One final (or revised) day of an advertiser, as one batch run wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDay {
    /// When the batch run that last wrote the day's rows finished, ms UTC
    /// (`day_finality.computed_at`); also the version of the day (a new run has a
    /// later one).
    pub computed_at: i64,
    /// The latest revision, read with the rows (`None`: never revised).
    pub revision: Option<Revision>,
    /// Rows per ad.
    pub by_ad: BTreeMap<i64, BatchAd>,
    /// Exact UV per campaign (key 0 = the whole advertiser, from `daily_uv`).
    pub uv: BTreeMap<i64, i64>,
}

impl BatchDay {
    /// Revised when the day has a revision, else final.
    pub fn finality(&self) -> Finality {
        if self.revision.is_some() {
            Finality::Revised
        } else {
            Finality::Final
        }
    }
}

pub use platform::speed_results::SpeedDay;

/// The UV scopes a grouping shows for one speed day of `advertiser`: the advertiser
/// (by day), every attributed ad (by ad), every campaign of an attributed ad (by
/// campaign; `campaigns` maps ad -> campaign).
pub fn uv_scopes(
    group_by: GroupBy,
    advertiser: i64,
    by_ad: &BTreeMap<i64, Counters>,
    campaigns: &BTreeMap<i64, i64>,
) -> Vec<UvScope> {
    let mut scopes: Vec<UvScope> = match group_by {
        GroupBy::Day => vec![UvScope::Advertiser(advertiser)],
        GroupBy::Ad => by_ad
            .keys()
            .filter(|a| **a != UNATTRIBUTED_AD)
            .map(|a| UvScope::Ad(*a))
            .collect(),
        GroupBy::Campaign => by_ad
            .keys()
            .filter(|a| **a != UNATTRIBUTED_AD)
            .filter_map(|a| campaigns.get(a))
            .map(|c| UvScope::Campaign(*c))
            .collect(),
    };
    scopes.sort_unstable();
    scopes.dedup();
    scopes
}

/// The additive metrics of a row (money in micros) and, on rows, its UV. Serializes as
/// one flat object: `{"exposures": 10, "clicks": 2, ..., "uv": 7}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// The counters.
    pub counters: Counters,
    /// Distinct users (rows only; totals leave it out).
    pub uv: Option<i64>,
}

impl Serialize for Metrics {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Measure::ALL.len() + 1))?;
        for x in Measure::ALL {
            m.serialize_entry(x.name(), &self.counters[x])?;
        }
        if let Some(uv) = self.uv {
            m.serialize_entry("uv", &uv)?;
        }
        m.end()
    }
}

/// One row of the answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsRow {
    /// The advertiser-local day.
    pub day: NaiveDate,
    /// The ad (group_by=ad); 0 = effects no click earned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<i64>,
    /// The campaign (group_by=ad or campaign); 0 = unattributed effects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<i64>,
    /// `batch` or `speed`.
    pub source: &'static str,
    /// True for speed numbers (may still change).
    pub provisional: bool,
    /// `final`, `revised` or `provisional`.
    pub status: &'static str,
    /// Batch rows only: `final`, or `revised` when a batch run changed the
    /// advertiser-day's totals after it was final (then `revised_at` and `revisions`
    /// are set). Absent on speed rows (`status` says `provisional`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finality: Option<&'static str>,
    /// Revised batch rows only (every grouping): when the latest revision was written
    /// (RFC 3339, ms, UTC). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revised_at: Option<String>,
    /// Revised batch rows only (every grouping): how many revisions the
    /// advertiser-day has had (1 = revised once). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revisions: Option<u32>,
    /// Revised batch rows grouped by day only: the advertiser-day totals before the
    /// latest revision, as the batch layer stored them: measure name -> value (money
    /// in micros) and `uv`. Absent otherwise (by ad or campaign the totals are the
    /// advertiser's, not the row's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<BTreeMap<String, i64>>,
    /// A past day still on speed numbers because its batch run has not finished.
    pub awaiting_batch: bool,
    /// Last speed-layer write (RFC 3339), speed rows only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
    /// Batch run finish time (RFC 3339), batch rows only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub computed_at: Option<String>,
    /// The additive metrics (money in micros) and `uv`.
    pub metrics: Metrics,
    /// CTR, CPC, CVR, CPA, ROAS from the sums.
    pub derived: Derived,
}

/// Totals over the whole answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Totals {
    /// True when any row is provisional.
    pub provisional: bool,
    /// Sums of the additive metrics (UV is not additive and is left out).
    pub metrics: Metrics,
    /// Ratios of the sums.
    pub derived: Derived,
}

/// The answer of the metrics route.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsAnswer {
    /// The advertiser.
    pub advertiser_id: i64,
    /// Its reporting time zone (IANA name).
    pub time_zone: String,
    /// Latest day whose batch results are final for it (null: none yet).
    pub final_through: Option<NaiveDate>,
    /// First day.
    pub from: NaiveDate,
    /// Last day.
    pub to: NaiveDate,
    /// `day`, `ad` or `campaign`.
    pub group_by: &'static str,
    /// Rows, by day then id.
    pub rows: Vec<MetricsRow>,
    /// Totals over the rows.
    pub totals: Totals,
}

/// What one answer is made of.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The advertiser.
    pub advertiser_id: i64,
    /// Its reporting time zone.
    pub time_zone: &'a str,
    /// Its `final_through`.
    pub final_through: Option<NaiveDate>,
    /// First and last day, inclusive.
    pub from: NaiveDate,
    /// Last day, inclusive.
    pub to: NaiveDate,
    /// Grouping.
    pub group_by: GroupBy,
    /// Today in the advertiser's zone (earlier speed days await their batch run).
    pub today: NaiveDate,
    /// Final advertiser-days: exactly the days whose (day, advertiser's time zone) is
    /// final, each as read at its version; a day here is served from batch.
    pub batch: &'a BTreeMap<NaiveDate, &'a BatchDay>,
    /// Speed days (days missing from both maps have no data: zero rows by day).
    pub speed: &'a BTreeMap<NaiveDate, &'a SpeedDay>,
    /// Ad -> campaign of the advertiser's ads (groupings by ad and campaign).
    pub campaigns: &'a BTreeMap<i64, i64>,
}

/// Merges `inputs` into the answer.
pub fn answer(inputs: &Inputs<'_>) -> MetricsAnswer {
    let empty = SpeedDay::default();
    let mut rows = Vec::new();
    for day in inputs.from.iter_days().take_while(|d| *d <= inputs.to) {
        match inputs.batch.get(&day) {
            Some(b) => batch_rows(&mut rows, day, b, inputs.group_by),
            None => {
                let sd = inputs.speed.get(&day).copied().unwrap_or(&empty);
                speed_rows(&mut rows, day, sd, inputs, day < inputs.today);
            }
        }
    }
    let mut sum = Counters::ZERO;
    for r in &rows {
        sum += &r.metrics.counters;
    }
    MetricsAnswer {
        advertiser_id: inputs.advertiser_id,
        time_zone: inputs.time_zone.to_owned(),
        final_through: inputs.final_through,
        from: inputs.from,
        to: inputs.to,
        group_by: inputs.group_by.as_str(),
        totals: Totals {
            provisional: rows.iter().any(|r| r.provisional),
            derived: Derived::of(&sum),
            metrics: Metrics {
                counters: sum,
                uv: None,
            },
        },
        rows,
    }
}

/// The campaign an ad's speed counters roll up to (0 for the unattributed pseudo-ad
/// and for an ad the dimensions do not know yet).
fn campaign_of(ad: i64, campaigns: &BTreeMap<i64, i64>) -> i64 {
    if ad == UNATTRIBUTED_AD {
        0
    } else {
        campaigns.get(&ad).copied().unwrap_or(0)
    }
}

fn speed_rows(
    out: &mut Vec<MetricsRow>,
    day: NaiveDate,
    sd: &SpeedDay,
    i: &Inputs<'_>,
    past: bool,
) {
    let as_of = sd.as_of.map(rfc3339_ms);
    let row = |ad_id, campaign_id, counters: Counters, uv: i64| MetricsRow {
        day,
        ad_id,
        campaign_id,
        source: "speed",
        provisional: true,
        status: "provisional",
        finality: None,
        revised_at: None,
        revisions: None,
        previous: None,
        awaiting_batch: past,
        as_of: as_of.clone(),
        computed_at: None,
        derived: Derived::of(&counters),
        metrics: Metrics {
            counters,
            uv: Some(uv),
        },
    };
    let uv = |scope| sd.uv.get(&scope).copied().unwrap_or(0);
    match i.group_by {
        GroupBy::Day => {
            let mut sum = Counters::ZERO;
            for c in sd.by_ad.values() {
                sum += c;
            }
            out.push(row(
                None,
                None,
                sum,
                uv(UvScope::Advertiser(i.advertiser_id)),
            ));
        }
        GroupBy::Ad => out.extend(sd.by_ad.iter().map(|(ad, c)| {
            let u = if *ad == UNATTRIBUTED_AD {
                0
            } else {
                uv(UvScope::Ad(*ad))
            };
            row(Some(*ad), Some(campaign_of(*ad, i.campaigns)), *c, u)
        })),
        GroupBy::Campaign => {
            let mut by_c: BTreeMap<i64, Counters> = BTreeMap::new();
            for (ad, c) in &sd.by_ad {
                *by_c.entry(campaign_of(*ad, i.campaigns)).or_default() += c;
            }
            out.extend(by_c.into_iter().map(|(camp, c)| {
                let u = if camp == 0 {
                    0
                } else {
                    uv(UvScope::Campaign(camp))
                };
                row(None, Some(camp), c, u)
            }));
        }
    }
}

fn batch_rows(out: &mut Vec<MetricsRow>, day: NaiveDate, b: &BatchDay, group_by: GroupBy) {
    let computed_at = rfc3339_ms(b.computed_at);
    let finality = b.finality().as_str();
    let revised_at = b.revision.as_ref().map(|r| rfc3339_ms(r.revised_at));
    let row = |ad_id, campaign_id, counters: Counters, uv: i64| MetricsRow {
        day,
        ad_id,
        campaign_id,
        source: "batch",
        provisional: false,
        status: finality,
        finality: Some(finality),
        revised_at: revised_at.clone(),
        revisions: b.revision.as_ref().map(|r| r.revisions),
        previous: None,
        awaiting_batch: false,
        as_of: None,
        computed_at: Some(computed_at.clone()),
        derived: Derived::of(&counters),
        metrics: Metrics {
            counters,
            uv: Some(uv),
        },
    };
    match group_by {
        GroupBy::Day => {
            let mut sum = Counters::ZERO;
            for a in b.by_ad.values() {
                sum += &a.counters;
            }
            out.push(MetricsRow {
                previous: b.revision.as_ref().map(|r| r.previous.clone()),
                ..row(None, None, sum, b.uv.get(&0).copied().unwrap_or(0))
            });
        }
        GroupBy::Ad => out.extend(
            b.by_ad
                .iter()
                .map(|(ad, a)| row(Some(*ad), Some(a.campaign_id), a.counters, a.uv)),
        ),
        GroupBy::Campaign => {
            let mut by_c: BTreeMap<i64, Counters> = BTreeMap::new();
            for a in b.by_ad.values() {
                *by_c.entry(a.campaign_id).or_default() += &a.counters;
            }
            // `daily_uv` keys the whole advertiser under campaign 0; the unattributed
            // pseudo-campaign 0 has no users (as on the speed path), never that UV.
            out.extend(by_c.into_iter().map(|(camp, c)| {
                let u = if camp == 0 {
                    0
                } else {
                    b.uv.get(&camp).copied().unwrap_or(0)
                };
                row(None, Some(camp), c, u)
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, day).unwrap()
    }

    fn counters(pairs: &[(Measure, i64)]) -> Counters {
        let mut c = Counters::ZERO;
        for (m, v) in pairs {
            c[*m] = *v;
        }
        c
    }

    /// When day 1 was revised the second time.
    const REVISED_AT: i64 = 1_764_050_000_123;

    /// Day 1 final and revised twice (ads 11 and 12 of campaign 1, ad 0
    /// unattributed), day 2 provisional, day 3 without data; today is day 3.
    fn fixture() -> (BatchDay, SpeedDay, BTreeMap<i64, i64>) {
        let batch = BatchDay {
            computed_at: 1_764_000_000_000,
            revision: Some(Revision {
                revisions: 2,
                revised_at: REVISED_AT,
                previous: BTreeMap::from([("clicks".to_owned(), 3), ("uv".to_owned(), 5)]),
            }),
            by_ad: BTreeMap::from([
                (
                    0,
                    BatchAd {
                        campaign_id: 0,
                        counters: counters(&[(Measure::OrdersUnattributed, 2)]),
                        uv: 0,
                    },
                ),
                (
                    11,
                    BatchAd {
                        campaign_id: 1,
                        counters: counters(&[(Measure::Clicks, 3), (Measure::CostMicros, 300)]),
                        uv: 5,
                    },
                ),
                (
                    12,
                    BatchAd {
                        campaign_id: 1,
                        counters: counters(&[(Measure::Clicks, 1), (Measure::OrdersDirect, 1)]),
                        uv: 2,
                    },
                ),
            ]),
            uv: BTreeMap::from([(0, 6), (1, 6)]),
        };
        let speed = SpeedDay {
            by_ad: BTreeMap::from([
                (0, counters(&[(Measure::PaymentsUnattributed, 4)])),
                (
                    11,
                    counters(&[(Measure::Exposures, 10), (Measure::Clicks, 2)]),
                ),
            ]),
            as_of: Some(1_764_100_000_000),
            uv: HashMap::from([
                (UvScope::Advertiser(7), 9),
                (UvScope::Ad(11), 8),
                (UvScope::Campaign(1), 8),
            ]),
        };
        (batch, speed, BTreeMap::from([(11, 1), (12, 1)]))
    }

    fn merged(group_by: GroupBy) -> MetricsAnswer {
        let (b, s, campaigns) = fixture();
        let batch = BTreeMap::from([(d(1), &b)]);
        let speed = BTreeMap::from([(d(2), &s)]);
        answer(&Inputs {
            advertiser_id: 7,
            time_zone: "UTC",
            final_through: Some(d(1)),
            from: d(1),
            to: d(3),
            group_by,
            today: d(3),
            batch: &batch,
            speed: &speed,
            campaigns: &campaigns,
        })
    }

    #[test]
    fn days_come_from_batch_when_final_and_from_speed_otherwise() {
        let a = merged(GroupBy::Day);
        let flags: Vec<_> = a
            .rows
            .iter()
            .map(|r| (r.day, r.source, r.status, r.provisional, r.awaiting_batch))
            .collect();
        assert_eq!(
            flags,
            [
                (d(1), "batch", "revised", false, false),
                (d(2), "speed", "provisional", true, true),
                (d(3), "speed", "provisional", true, false),
            ]
        );
        assert_eq!(a.rows[0].metrics.counters[Measure::Clicks], 4);
        assert_eq!(a.rows[0].metrics.uv, Some(6));
        assert_eq!(a.rows[1].metrics.counters[Measure::Clicks], 2);
        assert_eq!(a.rows[1].metrics.uv, Some(9));
        assert!(a.rows[0].computed_at.is_some() && a.rows[0].as_of.is_none());
        assert!(a.rows[1].as_of.is_some() && a.rows[1].computed_at.is_none());
        assert_eq!(a.rows[2].metrics.counters, Counters::ZERO);
        assert!(a.totals.provisional);
        assert_eq!(a.totals.metrics.counters[Measure::Clicks], 6);
        assert_eq!(a.totals.metrics.counters[Measure::PaymentsUnattributed], 4);
        assert_eq!(a.totals.metrics.uv, None);
    }

    #[test]
    fn groupings_keep_the_sums_and_unattributed_rows_have_no_users() {
        let by_day = merged(GroupBy::Day).totals;
        for g in [GroupBy::Ad, GroupBy::Campaign] {
            let a = merged(g);
            assert_eq!(a.totals, by_day, "{g:?} totals equal the daily totals");
            for r in a.rows.iter().filter(|r| r.campaign_id == Some(0)) {
                assert_eq!(r.metrics.uv, Some(0), "{g:?} {}: unattributed UV", r.day);
            }
        }
        let by_campaign = merged(GroupBy::Campaign);
        let batch_c1 = &by_campaign.rows[1];
        assert_eq!((batch_c1.day, batch_c1.campaign_id), (d(1), Some(1)));
        assert_eq!(batch_c1.metrics.uv, Some(6));
        let by_ad = merged(GroupBy::Ad);
        let speed_ad = by_ad
            .rows
            .iter()
            .find(|r| r.day == d(2) && r.ad_id == Some(11))
            .unwrap();
        assert_eq!(
            (speed_ad.campaign_id, speed_ad.metrics.uv),
            (Some(1), Some(8))
        );
    }

    fn row_json(a: &MetricsAnswer, i: usize) -> serde_json::Value {
        serde_json::to_value(&a.rows[i]).unwrap()
    }

    #[test]
    fn a_revised_day_says_when_and_what_it_was() {
        let by_day = merged(GroupBy::Day);
        let revised = row_json(&by_day, 0);
        assert_eq!(revised["status"], "revised");
        assert_eq!(revised["finality"], "revised");
        assert_eq!(revised["revised_at"], "2025-11-25T05:53:20.123Z");
        assert_eq!(revised["revised_at"], rfc3339_ms(REVISED_AT));
        assert_eq!(revised["revisions"], 2);
        assert_eq!(
            revised["previous"],
            serde_json::json!({"clicks": 3, "uv": 5})
        );
        assert_eq!(revised["computed_at"], rfc3339_ms(1_764_000_000_000));
        // Speed rows carry none of it.
        let speed = row_json(&by_day, 1);
        for field in [
            "finality",
            "revised_at",
            "revisions",
            "previous",
            "computed_at",
        ] {
            assert!(speed.get(field).is_none(), "speed row has {field}: {speed}");
        }
        // By ad or campaign every batch row of the day says it is revised and when, but
        // not the advertiser's previous totals.
        for g in [GroupBy::Ad, GroupBy::Campaign] {
            let a = merged(g);
            let batch: Vec<_> = (0..a.rows.len())
                .filter(|i| a.rows[*i].source == "batch")
                .map(|i| row_json(&a, i))
                .collect();
            assert!(!batch.is_empty());
            for r in batch {
                assert_eq!(
                    (&r["finality"], &r["revised_at"], &r["revisions"]),
                    (
                        &serde_json::json!("revised"),
                        &serde_json::json!(rfc3339_ms(REVISED_AT)),
                        &serde_json::json!(2)
                    ),
                    "{g:?}: {r}"
                );
                assert!(r.get("previous").is_none(), "{g:?}: {r}");
            }
        }
    }

    #[test]
    fn a_final_day_without_revision_has_no_revision_fields() {
        let (mut b, _, campaigns) = fixture();
        b.revision = None;
        assert_eq!(b.finality(), Finality::Final);
        let batch = BTreeMap::from([(d(1), &b)]);
        for g in [GroupBy::Day, GroupBy::Ad, GroupBy::Campaign] {
            let a = answer(&Inputs {
                advertiser_id: 7,
                time_zone: "UTC",
                final_through: Some(d(1)),
                from: d(1),
                to: d(1),
                group_by: g,
                today: d(3),
                batch: &batch,
                speed: &BTreeMap::new(),
                campaigns: &campaigns,
            });
            for i in 0..a.rows.len() {
                let r = row_json(&a, i);
                assert_eq!(
                    (&r["status"], &r["finality"]),
                    (&serde_json::json!("final"), &serde_json::json!("final")),
                    "{g:?}: {r}"
                );
                for field in ["revised_at", "revisions", "previous"] {
                    assert!(r.get(field).is_none(), "{g:?}: {field} in {r}");
                }
            }
        }
    }

    #[test]
    fn metrics_serialize_flat_with_every_measure() {
        let m = Metrics {
            counters: counters(&[(Measure::GmvMicrosDirect, 5)]),
            uv: Some(3),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["gmv_micros_direct"], 5);
        assert_eq!(v["uv"], 3);
        assert_eq!(v.as_object().unwrap().len(), Measure::ALL.len() + 1);
        let t = serde_json::to_value(Metrics { uv: None, ..m }).unwrap();
        assert!(t.get("uv").is_none());
    }

    #[test]
    fn scopes_follow_the_grouping() {
        let (_, s, campaigns) = fixture();
        assert_eq!(
            uv_scopes(GroupBy::Day, 7, &s.by_ad, &campaigns),
            [UvScope::Advertiser(7)]
        );
        assert_eq!(
            uv_scopes(GroupBy::Ad, 7, &s.by_ad, &campaigns),
            [UvScope::Ad(11)]
        );
        assert_eq!(
            uv_scopes(GroupBy::Campaign, 7, &s.by_ad, &campaigns),
            [UvScope::Campaign(1)]
        );
    }
}
