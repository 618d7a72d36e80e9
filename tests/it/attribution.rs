//! Attribution at its edges, through the whole speed layer (Kafka -> speed layer ->
//! Redis -> API): day boundary, the 14-day lookback on both sides of its limit, an
//! effect that arrives before its click (within and after the wait for a late click,
//! 3 h by default, 20 min here so that the test's events stay near now), and the last
//! of two clicks. Each case is a user of its own, so the cases do not interact.
//! The run ends with SIGTERM, which must write the windows still open.

use std::collections::BTreeMap;
use std::time::Duration;

use admetrics_tests::{TestEnv, get_json, wait_until};
use common::event::DAY_MS;
use mysql_async::prelude::Queryable;
use rdkafka::producer::{FutureProducer, FutureRecord};

const ADV: i64 = 900_001;
const P1: i64 = 91;
const P2: i64 = 92;
/// Ads: A1 and A3 sell product P1, A2 sells P2.
const A1: i64 = 9_101;
const A2: i64 = 9_102;
const A3: i64 = 9_103;
const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;
const SECOND: i64 = 1_000;

fn click(id: &str, user: &str, ts: i64, ad: i64, product: i64) -> (bool, String, String) {
    let body = format!(
        r#"{{"kind":"click","event_id":"{id}","ts":{ts},"user_id":"{user}","ad_id":{ad},"advertiser_id":{ADV},"product_id":{product},"cost_micros":250000}}"#
    );
    (true, user.to_owned(), body)
}

fn order(id: &str, user: &str, ts: i64, product: i64) -> (bool, String, String) {
    let body = format!(
        r#"{{"kind":"order","event_id":"{id}","ts":{ts},"user_id":"{user}","advertiser_id":{ADV},"product_id":{product}}}"#
    );
    (false, user.to_owned(), body)
}

async fn produce(env: &TestEnv, producer: &FutureProducer, msgs: &[(bool, String, String)]) {
    for (traffic, key, body) in msgs {
        let topic = if *traffic {
            &env.cfg.kafka.traffic_topic
        } else {
            &env.cfg.kafka.effects_topic
        };
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(body),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }
}

/// Waits until the speed layer has stored offsets for everything produced.
async fn wait_consumed(env: &TestEnv) {
    wait_until(
        Duration::from_secs(60),
        "speed layer to consume",
        || async {
            speed_layer::tools::status::read(&env.cfg)
                .await
                .is_ok_and(|s| s.iter().all(|p| p.lag() == 0))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribution_edge_cases_through_the_speed_layer() {
    let mut env = TestEnv::new(1).await;
    // Clicks 14 days old must pass validation, and quiet partitions must not let the
    // wall clock resolve the waiting effects between the two phases.
    env.cfg.validation.max_age = Duration::from_secs(30 * 86_400);
    env.cfg.speed.idle_timeout = Duration::from_secs(3_600);
    env.cfg.attribution.effect_wait = Duration::from_secs(20 * 60);
    env.cfg.serving.rate_limit_per_second = 1_000;
    env.cfg.serving.rate_limit_burst = 1_000;

    let pool = env.mysql();
    let mut conn = pool.get_conn().await.unwrap();
    conn.exec_drop(
        "INSERT INTO advertisers (advertiser_id, name, time_zone) VALUES (?, 'edge cases', 'UTC')",
        (ADV,),
    )
    .await
    .unwrap();
    conn.exec_drop(
        "INSERT INTO campaigns (campaign_id, advertiser_id, name) VALUES (?, ?, 'c')",
        (9_001, ADV),
    )
    .await
    .unwrap();
    for p in [P1, P2] {
        conn.exec_drop(
            "INSERT INTO products (product_id, advertiser_id, category_id, name) VALUES (?, ?, 1, 'p')",
            (p, ADV),
        )
        .await
        .unwrap();
    }
    for (ad, p) in [(A1, P1), (A2, P2), (A3, P1)] {
        conn.exec_drop(
            "INSERT INTO ads (ad_id, campaign_id, advertiser_id, product_id, cpc_micros, name) VALUES (?, 9001, ?, ?, 250000, 'a')",
            (ad, ADV, p),
        )
        .await
        .unwrap();
    }
    drop(conn);
    pool.disconnect().await.ok();

    let now = common::day::now_ms() / SECOND * SECOND;
    // Midnight that starts yesterday (UTC, the advertiser's zone).
    let midnight = now.div_euclid(DAY_MS) * DAY_MS - DAY_MS;
    let o2 = now - 10 * MINUTE;
    let o3 = now - 30 * MINUTE;
    let o4 = now - 2 * HOUR;
    let o6 = now - 6 * HOUR;
    let o7 = now - HOUR;

    // (day, ad) -> (direct, indirect, unattributed) orders expected.
    let mut want: BTreeMap<(i64, i64), [i64; 3]> = BTreeMap::new();
    let mut expect = |ts: i64, ad: i64, split: usize| {
        want.entry((ts.div_euclid(DAY_MS), ad)).or_default()[split] += 1;
    };
    // Click at 23:59:59, order of the same product at 00:00:01: another day -> indirect.
    expect(midnight + SECOND, A1, 1);
    // Same product, same day -> direct (the control of the case above).
    expect(midnight + 2 * SECOND, A1, 0);
    // Two clicks on the same product: the last one wins.
    expect(midnight + 30 * MINUTE, A3, 0);
    // Click 14 days minus 1 s before the order: indirect; 14 days plus 1 s: none.
    expect(o2, A1, 1);
    expect(o3, 0, 2);
    // Order arrives before its click, which comes within the wait: indirect (the
    // click is on another product).
    expect(o4, A2, 1);
    // Order whose click comes after the wait: unattributed; one with no click at all.
    expect(o6, 0, 2);
    expect(o7, 0, 2);

    // Phase 1: the clicks that come first, then the orders (two steps, because the
    // consumer interleaves the two topics freely). Traffic stays at yesterday 00:20,
    // so every order after that waits.
    let clicks_first = vec![
        click("c3", "u3", o3 - 14 * DAY_MS - SECOND, A1, P1),
        click("c2", "u2", o2 - 14 * DAY_MS + SECOND, A1, P1),
        click("c1", "u1", midnight - SECOND, A1, P1),
        click("c1b", "u1b", midnight + SECOND, A1, P1),
        click("c5a", "u5", midnight + 10 * MINUTE, A1, P1),
        click("c5b", "u5", midnight + 20 * MINUTE, A3, P1),
    ];
    let orders = vec![
        order("o1", "u1", midnight + SECOND, P1),
        order("o1b", "u1b", midnight + 2 * SECOND, P1),
        order("o5", "u5", midnight + 30 * MINUTE, P1),
        order("o2", "u2", o2, P2),
        order("o3", "u3", o3, P2),
        order("o6", "u6", o6, P1),
        order("o4", "u4", o4, P1),
        order("o7", "u7", o7, P1),
    ];
    let producer: FutureProducer = platform::kafka::producer_config(&env.cfg.kafka)
        .create()
        .unwrap();
    produce(&env, &producer, &clicks_first).await;
    env.spawn("speed", "speed-layer", &["run"]);
    wait_consumed(&env).await;
    produce(&env, &producer, &orders).await;
    wait_consumed(&env).await;
    let s = speed_layer::tools::status::read(&env.cfg).await.unwrap();
    assert_eq!(
        s[0].pending_effects,
        6,
        "the orders after the traffic watermark (o5, o2, o3, o6, o4, o7) wait\n{}",
        env.log("speed")
    );

    // Phase 2: traffic passes o6 + wait (o6 ends unattributed) but not o4; then the
    // late clicks of o4 (within its wait) and o6 (after it); then traffic at `now`.
    let phase2 = vec![
        click("c8", "u8", now - 5 * HOUR, A1, P1),
        click("c4", "u4", o4 - MINUTE, A2, P2),
        click("c6", "u6", o6 - MINUTE, A1, P1),
        click("c9", "u9", now + MINUTE, A1, P1),
    ];
    produce(&env, &producer, &phase2).await;
    wait_consumed(&env).await;
    let s = speed_layer::tools::status::read(&env.cfg).await.unwrap();
    assert!(
        s[0].open_windows > 0,
        "the newest window is still open (idle timeout 1 h)"
    );
    assert_eq!(s[0].pending_effects, 0);

    // Graceful shutdown writes the open windows.
    let status = env.terminate("speed", Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "speed layer exits cleanly on SIGTERM: {status:?}\n{}",
        env.log("speed")
    );
    let s = speed_layer::tools::status::read(&env.cfg).await.unwrap();
    assert!(s[0].settled(), "everything written after SIGTERM: {s:?}");

    env.start_server().await;
    let key = env.api_key(&["--advertiser", &ADV.to_string()]).await;
    let from = common::day::date_of((now - 15 * DAY_MS).div_euclid(DAY_MS) as i32);
    let to = common::day::date_of((now + MINUTE).div_euclid(DAY_MS) as i32);
    let url = format!(
        "{}/v1/advertisers/{ADV}/metrics?from={from}&to={to}&group_by=ad",
        env.api_base()
    );
    let (status, body) = get_json(&url, Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let mut got: BTreeMap<(i64, i64), [i64; 3]> = BTreeMap::new();
    let mut clicks = 0;
    for row in body["rows"].as_array().unwrap() {
        let day =
            common::day::day_num(common::day::parse_date(row["day"].as_str().unwrap()).unwrap())
                as i64;
        let m = &row["metrics"];
        clicks += m["clicks"].as_i64().unwrap();
        let split = [
            m["orders_direct"].as_i64().unwrap(),
            m["orders_indirect"].as_i64().unwrap(),
            m["orders_unattributed"].as_i64().unwrap(),
        ];
        if split != [0, 0, 0] {
            got.insert((day, row["ad_id"].as_i64().unwrap()), split);
        }
    }
    assert_eq!(
        got, want,
        "orders per (day, ad) as [direct, indirect, unattributed]"
    );
    assert_eq!(clicks, 10, "every click is counted, late ones included");
}
