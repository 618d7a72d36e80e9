//! The walking skeleton end to end on the real data set: replay -> Kafka -> speed layer
//! -> Redis -> serving layer, checked against the data set file itself.

use std::collections::BTreeMap;
use std::time::Duration;

use admetrics_tests::{TestEnv, dataset_path, get_json, reference};
use common::day::date_of;

const ROWS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_slice_matches_the_data_set_for_every_advertiser_and_day() {
    let mut env = TestEnv::new(4).await;
    env.cfg.serving.rate_limit_per_second = 10_000;
    env.cfg.serving.rate_limit_burst = 10_000;
    let data = dataset_path();
    let out = env
        .run(
            "speed-layer",
            &[
                "replay",
                "--data",
                data.to_str().unwrap(),
                "--limit",
                &ROWS.to_string(),
            ],
        )
        .await
        .expect("replay");
    let summary: serde_json::Value =
        serde_json::from_str(&out).expect("replay prints a JSON summary");
    let shift = summary["shift_days"].as_i64().unwrap();
    env.spawn("speed", "speed-layer", &["run"]);
    if let Err(e) = speed_layer::status::wait_settled(&env.cfg, Duration::from_secs(180)).await {
        panic!("{e}\nspeed layer log:\n{}", env.log("speed"));
    }
    env.start_server().await;
    let key = env.api_key(&["--internal"]).await;

    // Expected numbers straight from the file, with the data README's mapping and rules.
    let mut rows = common::dataset::read(&data).unwrap();
    rows.truncate(ROWS);
    let events = common::dataset::events(&rows, shift);
    assert_eq!(summary["events"].as_u64().unwrap() as usize, events.len());
    let expected = reference::compute(&events);
    let per_day = reference::per_day(&expected);
    let mut by_advertiser: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (adv, day) in per_day.keys() {
        by_advertiser.entry(*adv).or_default().push(*day);
    }
    assert!(
        by_advertiser.len() > 100,
        "the slice covers many advertisers"
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
        let (status, body) = get_json(&url, Some(&key)).await;
        assert_eq!(status, 200, "{body}");
        for row in body["rows"].as_array().unwrap() {
            let day = common::day::day_num(
                common::day::parse_date(row["day"].as_str().unwrap()).unwrap(),
            ) as i64;
            let want = per_day.get(&(*adv, day)).cloned().unwrap_or_default();
            let m = &row["metrics"];
            let ctx = format!("advertiser {adv} day {}", row["day"]);
            assert_eq!(row["source"], "speed", "{ctx}");
            assert_eq!(row["provisional"], true, "{ctx}");
            assert!(row["as_of"].is_string() || want.clicks == 0, "{ctx}: as_of");
            assert_eq!(m["clicks"].as_i64().unwrap(), want.clicks, "{ctx}: clicks");
            assert_eq!(
                m["cost_micros"].as_i64().unwrap(),
                want.cost_micros,
                "{ctx}: cost"
            );
            assert_eq!(
                m["exposures"].as_i64().unwrap(),
                0,
                "{ctx}: the data set has no exposures"
            );
            for split in ["direct", "indirect", "unattributed"] {
                let name = format!("orders_{split}");
                assert_eq!(
                    m[&name].as_i64().unwrap(),
                    want.effects.get(&name).copied().unwrap_or(0),
                    "{ctx}: {name}"
                );
            }
            let uv = m["uv"].as_i64().unwrap();
            let exact = want.users.len() as i64;
            assert!(
                (uv - exact).abs() as f64 <= (exact as f64 * 0.02).max(1.0),
                "{ctx}: uv {uv} vs exact {exact}"
            );
            checked_days += usize::from(want.clicks > 0);
        }
        // Per ad: the same numbers split by ad.
        let (status, body) = get_json(&format!("{url}&group_by=ad"), Some(&key)).await;
        assert_eq!(status, 200, "{body}");
        for row in body["rows"].as_array().unwrap() {
            let day = common::day::day_num(
                common::day::parse_date(row["day"].as_str().unwrap()).unwrap(),
            ) as i64;
            let ad = row["ad_id"].as_i64().unwrap();
            let want = expected.get(&(*adv, day, ad)).cloned().unwrap_or_default();
            let m = &row["metrics"];
            assert_eq!(
                m["clicks"].as_i64().unwrap(),
                want.clicks,
                "advertiser {adv} ad {ad} day {day}"
            );
            assert_eq!(
                m["cost_micros"].as_i64().unwrap(),
                want.cost_micros,
                "advertiser {adv} ad {ad} day {day}"
            );
            let orders: i64 = ["orders_direct", "orders_indirect", "orders_unattributed"]
                .iter()
                .map(|n| m[*n].as_i64().unwrap())
                .sum();
            let want_orders: i64 = want.effects.values().sum();
            assert_eq!(
                orders, want_orders,
                "advertiser {adv} ad {ad} day {day}: orders"
            );
            checked_ads += 1;
        }
    }
    let expected_ad_rows = expected.keys().count();
    assert_eq!(
        checked_ads, expected_ad_rows,
        "one API row per ad-day with data"
    );
    assert_eq!(
        checked_days,
        per_day.values().filter(|d| d.clicks > 0).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_advertiser_and_bad_dates_get_a_json_4xx() {
    let mut env = TestEnv::new(1).await;
    env.start_server().await;
    let key = env.api_key(&["--internal"]).await;
    let base = env.api_base();
    let (s, body) = get_json(
        &format!("{base}/v1/advertisers/999999/metrics?from=2026-11-01&to=2026-11-02"),
        Some(&key),
    )
    .await;
    assert_eq!(s, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (s, body) = get_json(
        &format!("{base}/v1/advertisers/1/metrics?from=2026-11-31&to=2026-12-02"),
        Some(&key),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["parameter"], "from");
    let (s, _) = get_json(
        &format!("{base}/v1/advertisers/1/metrics?from=2026-11-01&to=2026-11-02"),
        None,
    )
    .await;
    assert_eq!(s, 401);
}
