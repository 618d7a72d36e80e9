//! Poison messages go to the dead-letter topic with their reason and original bytes,
//! and the consumer keeps going; `speed-layer dlq` lists them by reason and re-drives a
//! fixed one, which is then counted once.

use std::time::Duration;

use admetrics_tests::{TestEnv, dataset_path, wait_until};
use mysql_async::prelude::Queryable;
use platform::kafka::header_str;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_land_in_the_dlq_with_their_reason_and_processing_continues() {
    let mut env = TestEnv::new(1).await;
    // Dimensions and a few real clicks from the data set (last day near now).
    let data = dataset_path();
    let out = env
        .run(
            "speed-layer",
            &["replay", "--data", data.to_str().unwrap(), "--limit", "50"],
        )
        .await
        .expect("replay");
    let shift = serde_json::from_str::<serde_json::Value>(&out).unwrap()["shift_days"]
        .as_i64()
        .unwrap();
    let now = common::day::now_ms();
    let good = |id: &str| {
        format!(
            r#"{{"kind":"click","event_id":"{id}","ts":{now},"user_id":"u-good","ad_id":12497,"advertiser_id":12,"product_id":12,"cost_micros":1000}}"#
        )
    };
    let ten_years = now + 10 * 365 * 86_400_000;
    let poison: Vec<(&str, String)> = vec![
        ("not_json", "this is not json".to_owned()),
        (
            "missing_field",
            r#"{"kind":"click","event_id":"p2","user_id":"u1","ad_id":12497,"advertiser_id":12}"#
                .to_owned(),
        ),
        (
            "wrong_type",
            good("p3").replace(&format!(r#""ts":{now}"#), r#""ts":"yesterday""#),
        ),
        (
            "ts_in_future",
            good("p4").replace(&format!(r#""ts":{now}"#), &format!(r#""ts":{ten_years}"#)),
        ),
        ("unknown_ad", good("p5").replace("12497", "99999999")),
    ];
    let producer: FutureProducer = platform::kafka::producer_config(&env.cfg.kafka)
        .create()
        .unwrap();
    let topic = env.cfg.kafka.traffic_topic.clone();
    for (_, payload) in &poison {
        producer
            .send(
                FutureRecord::to(&topic).key("u-poison").payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // Valid events after the poison must still be counted.
    for id in ["g1", "g2"] {
        producer
            .send(
                FutureRecord::to(&topic).key("u-good").payload(&good(id)),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    env.spawn("speed", "speed-layer", &["run"]);
    if let Err(e) =
        speed_layer::tools::status::wait_settled(&env.cfg, Duration::from_secs(120)).await
    {
        panic!("{e}\n{}", env.log("speed"));
    }
    assert!(
        env.running("speed"),
        "the consumer survived the poison:\n{}",
        env.log("speed")
    );

    // Every poison message is in the DLQ, byte for byte, with its reason.
    let consumer = dlq_reader(&env);
    let mut got = Vec::new();
    while got.len() < poison.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("DLQ message")
            .unwrap();
        let h = m.headers().expect("DLQ headers");
        got.push((
            header_str(h, "dlq.reason").unwrap().to_owned(),
            String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
            header_str(h, "dlq.topic").unwrap().to_owned(),
            header_str(h, "dlq.detail").unwrap().to_owned(),
        ));
    }
    for ((reason, payload), (got_reason, got_payload, src, detail)) in poison.iter().zip(&got) {
        assert_eq!(got_reason, reason, "{detail}");
        assert_eq!(got_payload, payload);
        assert_eq!(src, &topic);
        assert!(!detail.is_empty());
    }
    // The two good clicks were counted besides the replayed ones.
    let day = common::day::today(now, chrono_tz::UTC);
    let mut rows = fixtures::dataset::read(&data).unwrap();
    rows.truncate(50);
    let replayed: i64 = fixtures::dataset::events(&rows, shift)
        .iter()
        .filter(|e| e.ad_id == Some(12_497) && common::day::today(e.ts, chrono_tz::UTC) == day)
        .count() as i64;
    let keys = common::redis_keys::Keys::new(&env.cfg.redis.key_prefix);
    let mut r = env.redis().await;
    let clicks: Option<i64> = redis::cmd("HGET")
        .arg(keys.metrics(0, 12, day))
        .arg("12497:clicks")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        clicks.unwrap_or(0),
        replayed + 2,
        "good clicks after the poison are counted"
    );
}

/// A consumer of this test's dead-letter topic, from its start.
fn dlq_reader(env: &TestEnv) -> StreamConsumer {
    let consumer: StreamConsumer =
        platform::kafka::consumer_config(&env.cfg.kafka, &format!("{}-dlq-reader", env.id))
            .create()
            .unwrap();
    consumer.subscribe(&[&env.cfg.kafka.dlq_topic]).unwrap();
    consumer
}

/// Clicks of `ad` (advertiser 12) today in Redis (one partition).
async fn clicks_today(env: &TestEnv, ad: i64) -> i64 {
    let day = common::day::today(common::day::now_ms(), chrono_tz::UTC);
    let keys = common::redis_keys::Keys::new(&env.cfg.redis.key_prefix);
    let mut r = env.redis().await;
    let clicks: Option<i64> = redis::cmd("HGET")
        .arg(keys.metrics(0, 12, day))
        .arg(format!("{ad}:clicks"))
        .query_async(&mut r)
        .await
        .unwrap();
    clicks.unwrap_or(0)
}

async fn settle(env: &TestEnv) {
    if let Err(e) =
        speed_layer::tools::status::wait_settled(&env.cfg, Duration::from_secs(120)).await
    {
        panic!("{e}\n{}", env.log("speed"));
    }
}

/// The JSON lines `speed-layer dlq ...` printed.
async fn dlq(env: &TestEnv, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["dlq"];
    a.extend_from_slice(args);
    let out = env.run("speed-layer", &a).await.expect("speed-layer dlq");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_poison_message_is_redriven_from_the_dlq_and_counted_once() {
    let mut env = TestEnv::new(1).await;
    env.cfg.speed.dims_cache_ttl = Duration::from_secs(1);
    let data = dataset_path();
    env.run(
        "speed-layer",
        &["replay", "--data", data.to_str().unwrap(), "--limit", "50"],
    )
    .await
    .expect("replay");
    // A click on an ad MySQL does not know yet: the ad was created after the click.
    const NEW_AD: i64 = 99_999_999;
    let now = common::day::now_ms();
    let click = format!(
        r#"{{"kind":"click","event_id":"late-ad-1","ts":{now},"user_id":"u-late","ad_id":{NEW_AD},"advertiser_id":12,"product_id":12,"cost_micros":2500}}"#
    );
    let producer: FutureProducer = platform::kafka::producer_config(&env.cfg.kafka)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&env.cfg.kafka.traffic_topic)
                .key("u-late")
                .payload(&click),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    env.spawn("speed", "speed-layer", &["run"]);
    settle(&env).await;
    assert_eq!(clicks_today(&env, NEW_AD).await, 0, "rejected, not counted");

    let listed = dlq(&env, &["list"]).await;
    let summary = listed.last().unwrap();
    assert_eq!(summary["by_reason"]["unknown_ad"], 1, "{listed:?}");
    let record = listed
        .iter()
        .find(|r| r["reason"] == "unknown_ad")
        .expect("the record");
    assert_eq!(record["payload"], click.as_str(), "original bytes");
    let at = record["at"].as_str().unwrap().to_owned();

    // The fix: the ad now exists. Re-drive exactly that record.
    let pool = env.mysql();
    let mut c = pool.get_conn().await.unwrap();
    c.exec_drop(
        "INSERT INTO ads (ad_id, campaign_id, advertiser_id, product_id, cpc_micros, name) \
         SELECT ?, campaign_id, advertiser_id, product_id, 2500, 'created late' FROM ads WHERE ad_id = 12497",
        (NEW_AD,),
    )
    .await
    .unwrap();
    drop(c);
    pool.disconnect().await.ok();
    tokio::time::sleep(Duration::from_secs(2)).await; // past the dimension cache TTL
    let dry = dlq(&env, &["redrive", "--at", &at, "--dry-run"]).await;
    assert_eq!(
        dry.last().unwrap()["redriven"],
        0,
        "a dry run sends nothing"
    );
    let sent = dlq(&env, &["redrive", "--at", &at]).await;
    assert_eq!(sent.last().unwrap()["redriven"], 1, "{sent:?}");
    settle(&env).await;
    assert_eq!(clicks_today(&env, NEW_AD).await, 1, "re-driven and counted");

    // Re-driving it again (an operator's slip) does not count it twice.
    dlq(&env, &["redrive", "--reason", "unknown_ad"]).await;
    settle(&env).await;
    assert_eq!(clicks_today(&env, NEW_AD).await, 1, "counted once");
    // The DLQ still holds the record: re-drive moves a copy, nothing is lost.
    let listed = dlq(&env, &["list", "--summary"]).await;
    assert_eq!(listed[0]["by_reason"]["unknown_ad"], 1, "{listed:?}");
}

/// Poison of 11 kinds at about 1 % of a full replay of the data set, produced while the
/// replay runs: every poison message lands in the DLQ with its reason and its bytes,
/// no valid event is lost or doubled (exact against the independent computation), and
/// the consumer never restarts. The alert that fires: `DeadLetterRate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_at_one_percent_of_a_full_replay_is_all_dead_lettered_and_no_event_is_lost() {
    const ROWS: usize = 100_000;
    let mut env = TestEnv::new(2).await;
    let data = dataset_path();
    let mut rows = fixtures::dataset::read(&data).unwrap();
    rows.truncate(ROWS);
    let now = common::day::now_ms();
    let shift = fixtures::dataset::shift_days(&rows, now, false);
    let events = fixtures::dataset::events(&rows, shift);
    // A real ad, and an advertiser other than its own, from the replayed dimensions.
    let click = events
        .iter()
        .find(|e| e.kind == common::event::EventKind::Click)
        .unwrap();
    let ad = click.ad_id.unwrap();
    let advertiser = click.advertiser_id;
    let other = events
        .iter()
        .map(|e| e.advertiser_id)
        .find(|a| *a != advertiser)
        .unwrap();
    let product = click.product_id.unwrap();
    let good = |i: usize| {
        format!(
            r#"{{"kind":"click","event_id":"poison-{i}","ts":{now},"user_id":"u-poison","ad_id":{ad},"advertiser_id":{advertiser},"product_id":{product},"cost_micros":1000}}"#
        )
    };
    let ts = format!(r#""ts":{now}"#);
    let kinds: [(&str, &dyn Fn(usize) -> String); 11] = [
        ("not_json", &|i| format!("not json {i}")),
        ("missing_field", &|i| good(i).replace(&format!("{ts},"), "")),
        ("wrong_type", &|i| {
            good(i).replace(&ts, r#""ts":"yesterday""#)
        }),
        ("unknown_kind", &|i| {
            good(i).replace(r#""click""#, r#""purchase""#)
        }),
        ("unsupported_version", &|i| {
            good(i).replacen('{', r#"{"v":2,"#, 1)
        }),
        ("invalid_value", &|i| {
            good(i).replace(r#""cost_micros":1000"#, r#""cost_micros":-5"#)
        }),
        ("wrong_topic", &|i| {
            good(i).replace(r#""click""#, r#""order""#)
        }),
        ("ts_in_future", &|i| {
            good(i).replace(&ts, &format!(r#""ts":{}"#, now + 10 * 365 * 86_400_000))
        }),
        ("ts_too_old", &|i| {
            good(i).replace(&ts, &format!(r#""ts":{}"#, now - 30 * 86_400_000))
        }),
        ("unknown_advertiser", &|i| {
            good(i).replace(
                &format!(r#""advertiser_id":{advertiser}"#),
                r#""advertiser_id":987654321"#,
            )
        }),
        ("dimension_mismatch", &|i| {
            good(i).replace(
                &format!(r#""advertiser_id":{advertiser}"#),
                &format!(r#""advertiser_id":{other}"#),
            )
        }),
    ];
    let poison: Vec<(&str, String)> = (0..ROWS / 100)
        .map(|i| {
            let (reason, make) = kinds[i % kinds.len()];
            (reason, make(i))
        })
        .collect();

    env.spawn("speed", "speed-layer", &["run"]);
    env.spawn(
        "replay",
        "speed-layer",
        &[
            "replay",
            "--data",
            data.to_str().unwrap(),
            "--limit",
            &ROWS.to_string(),
            "--shift",
            &shift.to_string(),
        ],
    );
    // Poison naming real ads only once the replay has written the dimensions (a
    // lookup before would be cached as "absent" and turn valid events away too).
    wait_until(
        Duration::from_secs(60),
        "the replay to have written the dimensions",
        || {
            let started = env.log_count("replay", "replaying") > 0;
            async move { started }
        },
    )
    .await;
    let producer: FutureProducer = platform::kafka::producer_config(&env.cfg.kafka)
        .create()
        .unwrap();
    let topic = env.cfg.kafka.traffic_topic.clone();
    for (i, (_, payload)) in poison.iter().enumerate() {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&format!("u-poison-{i}"))
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    env.wait_replay_succeeded(Duration::from_secs(180)).await;
    env.settle_and_check(&events, &["speed", "replay"]).await;
    assert!(
        env.running("speed"),
        "the consumer never stopped:\n{}",
        env.log("speed")
    );

    // The DLQ holds every poison message, with its reason and its bytes, and nothing else.
    let consumer = dlq_reader(&env);
    let mut got = std::collections::BTreeMap::new();
    while got.len() < poison.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {} poison messages in the DLQ",
                    got.len(),
                    poison.len()
                )
            })
            .unwrap();
        let reason = header_str(m.headers().expect("DLQ headers"), "dlq.reason")
            .unwrap()
            .to_owned();
        let payload = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
        assert!(
            got.insert(payload.clone(), reason).is_none(),
            "dead-lettered twice: {payload}"
        );
    }
    for (reason, payload) in &poison {
        assert_eq!(
            got.get(payload).map(String::as_str),
            Some(*reason),
            "{payload}"
        );
    }
    let more = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await;
    assert!(more.is_err(), "no valid event was dead-lettered");
}
