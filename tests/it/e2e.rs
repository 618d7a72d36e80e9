//! The walking skeleton end to end on the real data set: replay -> Kafka -> speed layer
//! -> Redis -> serving layer, checked against the data set file itself.

use std::time::Duration;

use admetrics_tests::{TestEnv, check, get_json};

const ROWS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_slice_matches_the_data_set_for_every_advertiser_and_day() {
    let mut env = TestEnv::new(4).await;
    env.cfg.serving.rate_limit_per_second = 10_000;
    env.cfg.serving.rate_limit_burst = 10_000;
    // The replay's events, rebuilt straight from the file with the data README's
    // mapping (TestEnv::replay checks their count against the replay's summary).
    let events = env.replay(ROWS).await.events;
    env.spawn("speed", "speed-layer", &["run"]);
    if let Err(e) =
        speed_layer::tools::status::wait_settled(&env.cfg, Duration::from_secs(180)).await
    {
        panic!("{e}\nspeed layer log:\n{}", env.log("speed"));
    }
    env.start_server().await;
    let key = env.api_key(&["--internal"]).await;

    check::speed_matches_reference(&env, &key, &events).await;

    // What the operator on call reads: the speed layer's Prometheus endpoint. The lag
    // gauge comes with librdkafka's statistics (every second).
    let scrape = || async {
        reqwest::get(format!("http://{}/metrics", env.cfg.speed.metrics_listen))
            .await
            .expect("speed /metrics")
            .text()
            .await
            .unwrap()
    };
    admetrics_tests::wait_until(
        Duration::from_secs(10),
        "the consumer lag gauge",
        || async { scrape().await.contains(common::telemetry::CONSUMER_LAG) },
    )
    .await;
    let text = scrape().await;
    let value = |name: &str, label: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        value(common::telemetry::EVENTS_CONSUMED, ""),
        events.len() as f64,
        "events consumed\n{text}"
    );
    assert!(
        value(common::telemetry::DIM_CACHE_LOOKUPS, "hit") > 0.0,
        "{text}"
    );
    assert!(
        value(common::telemetry::DIM_MYSQL_QUERIES, "") < events.len() as f64 / 10.0,
        "the dimension cache saves most MySQL queries\n{text}"
    );
    for name in [
        common::telemetry::WINDOW_FLUSH_DURATION,
        common::telemetry::CONSUMER_LAG,
    ] {
        assert!(text.contains(name), "{name} is exported\n{text}");
    }
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
