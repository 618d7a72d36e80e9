//! What an advertiser would check: the API's numbers for every advertiser, day and ad
//! against the independent [`crate::reference`] computation over the raw events.

use std::collections::BTreeMap;

use common::day::{date_of, day_num, parse_date};
use common::event::Event;

use crate::{TestEnv, get_json, reference};

/// Asserts that the serving layer (speed results, provisional) gives, for every
/// advertiser and day and for every ad and day of `events`, exactly the reference's
/// clicks, cost and orders split direct/indirect/unattributed, and UV within 2% of the
/// exact distinct count. `key` must be able to read every advertiser (internal).
///
/// # Panics
///
/// On the first difference, naming the advertiser, day, ad and measure.
pub async fn speed_matches_reference(env: &TestEnv, key: &str, events: &[Event<'_>]) {
    let expected = reference::compute(events);
    let per_day = reference::per_day(&expected);
    let mut by_advertiser: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (adv, day) in per_day.keys() {
        by_advertiser.entry(*adv).or_default().push(*day);
    }
    assert!(
        by_advertiser.len() > 10,
        "the events cover many advertisers"
    );
    let mut checked_days = 0;
    let mut checked_ads = 0;
    for (adv, days) in &by_advertiser {
        let from = date_of(i32::try_from(*days.first().unwrap()).unwrap());
        let to = date_of(i32::try_from(*days.last().unwrap()).unwrap());
        let url = format!(
            "{}/v1/advertisers/{adv}/metrics?from={from}&to={to}",
            env.api_base()
        );
        let (status, body) = get_json(&url, Some(key)).await;
        assert_eq!(status, 200, "{body}");
        for row in body["rows"].as_array().unwrap() {
            let day = day_of_row(row);
            let want = per_day.get(&(*adv, day)).cloned().unwrap_or_default();
            let m = &row["metrics"];
            let ctx = format!("advertiser {adv} day {}", row["day"]);
            assert_eq!(row["source"], "speed", "{ctx}");
            assert_eq!(row["provisional"], true, "{ctx}");
            assert!(row["as_of"].is_string() || want.clicks == 0, "{ctx}: as_of");
            assert_eq!(m["exposures"].as_i64().unwrap(), want.exposures, "{ctx}");
            assert_counts(m, &want, &ctx);
            let uv = m["uv"].as_i64().unwrap();
            let exact = want.users.len() as i64;
            assert!(
                (uv - exact).abs() as f64 <= (exact as f64 * 0.02).max(1.0),
                "{ctx}: uv {uv} vs exact {exact}"
            );
            checked_days += usize::from(want.clicks > 0);
        }
        let (status, body) = get_json(&format!("{url}&group_by=ad"), Some(key)).await;
        assert_eq!(status, 200, "{body}");
        for row in body["rows"].as_array().unwrap() {
            let day = day_of_row(row);
            let ad = row["ad_id"].as_i64().unwrap();
            let want = expected.get(&(*adv, day, ad)).cloned().unwrap_or_default();
            let m = &row["metrics"];
            let ctx = format!("advertiser {adv} ad {ad} day {}", row["day"]);
            assert_counts(m, &want, &ctx);
            checked_ads += 1;
        }
    }
    assert_eq!(
        checked_ads,
        expected.len(),
        "one API row per ad-day with data"
    );
    assert_eq!(
        checked_days,
        per_day.values().filter(|d| d.clicks > 0).count(),
        "one API row per advertiser-day with clicks"
    );
}

/// Clicks, cost and orders split direct/indirect/unattributed of one API row's
/// `metrics` equal the reference's.
fn assert_counts(m: &serde_json::Value, want: &reference::Expected, ctx: &str) {
    assert_eq!(m["clicks"].as_i64().unwrap(), want.clicks, "{ctx}: clicks");
    assert_eq!(
        m["cost_micros"].as_i64().unwrap(),
        want.cost_micros,
        "{ctx}: cost"
    );
    for split in ["direct", "indirect", "unattributed"] {
        let name = format!("orders_{split}");
        assert_eq!(
            m[&name].as_i64().unwrap(),
            want.effects.get(&name).copied().unwrap_or(0),
            "{ctx}: {name}"
        );
    }
}

fn day_of_row(row: &serde_json::Value) -> i64 {
    i64::from(day_num(
        parse_date(row["day"].as_str().expect("day")).expect("YYYY-MM-DD"),
    ))
}
