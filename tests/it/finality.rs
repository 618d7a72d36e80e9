//! Finality that never lies, on the real data set: a day still open is refused and
//! nothing is written; a day turns final per time zone, once it has ended there plus
//! the late allowance (a clock the test controls: `--as-of`); a day whose archive lags
//! waits and turns final as soon as the archiver catches up; every final
//! advertiser-day is reconciled with the speed layer, and a lost event shows.

use std::collections::BTreeMap;
use std::time::Duration;

use admetrics_tests::{TestEnv, busiest_advertiser, days_of, get_json, wait_until};
use chrono::NaiveDate;
use mysql_async::prelude::Queryable;

/// `day_finality` of a day: zone -> status.
async fn zone_status(env: &TestEnv, day: NaiveDate) -> BTreeMap<String, String> {
    let pool = env.mysql();
    let mut c = pool.get_conn().await.unwrap();
    let rows: Vec<(String, String)> = c
        .exec(
            "SELECT time_zone, status FROM day_finality WHERE day = ?",
            (day,),
        )
        .await
        .unwrap();
    drop(c);
    pool.disconnect().await.ok();
    rows.into_iter().collect()
}

/// A single number from MySQL.
async fn count(env: &TestEnv, sql: &str, day: NaiveDate) -> i64 {
    let pool = env.mysql();
    let mut c = pool.get_conn().await.unwrap();
    let n: Option<i64> = c.exec_first(sql, (day,)).await.unwrap();
    drop(c);
    pool.disconnect().await.ok();
    n.unwrap_or(0)
}

/// `advertisers.final_through` of `adv`.
async fn final_through(env: &TestEnv, adv: i64) -> Option<NaiveDate> {
    let pool = env.mysql();
    let mut c = pool.get_conn().await.unwrap();
    let d: Option<Option<NaiveDate>> = c
        .exec_first(
            "SELECT final_through FROM advertisers WHERE advertiser_id = ?",
            (adv,),
        )
        .await
        .unwrap();
    drop(c);
    pool.disconnect().await.ok();
    d.flatten()
}

/// The `status` of `day`'s row in the API answer of `adv` (`final`, `provisional`, ...).
async fn api_status(env: &TestEnv, key: &str, adv: i64, day: NaiveDate) -> String {
    let url = format!(
        "{}/v1/advertisers/{adv}/metrics?from={day}&to={day}",
        env.api_base()
    );
    let (s, body) = get_json(&url, Some(key)).await;
    assert_eq!(s, 200, "{body}");
    body["rows"][0]["status"]
        .as_str()
        .unwrap_or("none")
        .to_owned()
}

async fn wait_api_status(env: &TestEnv, key: &str, adv: i64, day: NaiveDate, want: &str) {
    let what = format!("advertiser {adv}'s {day} to be {want} on the API");
    wait_until(Duration::from_secs(10), &what, || async {
        api_status(env, key, adv, day).await == want
    })
    .await;
}

async fn schedule_once(env: &TestEnv, as_of: &str) -> String {
    let out = env
        .run("batch-layer", &["schedule", "--once", "--as-of", as_of])
        .await
        .unwrap_or_else(|e| panic!("schedule --once --as-of {as_of}: {e}"));
    assert!(
        !out.contains("FAILED"),
        "a tick at {as_of} failed a day:\n{out}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn today_is_refused_and_a_day_turns_final_per_time_zone_after_the_allowance() {
    let mut env = TestEnv::new(2).await;
    // Two days back, so that the next day's 09:00 UTC is in the past for `--as-of`.
    env.data_ends_days_ago = 2;
    env.cfg.batch.late_allowance = Duration::from_secs(3600);
    env.cfg.batch.archive_max_age = Duration::from_millis(300);
    let r = env.replay(2_000).await;
    let (day, _) = days_of(&r.events);
    let west = busiest_advertiser(&r.events);
    let east = r
        .events
        .iter()
        .map(|e| e.advertiser_id)
        .find(|a| *a != west)
        .expect("a second advertiser");
    // The busiest advertiser reports on UTC-8 (Etc/GMT+8: no daylight saving time).
    let pool = env.mysql();
    pool.get_conn()
        .await
        .unwrap()
        .exec_drop(
            "UPDATE advertisers SET time_zone = 'Etc/GMT+8' WHERE advertiser_id = ?",
            (west,),
        )
        .await
        .unwrap();
    pool.disconnect().await.ok();
    env.start_archiver();
    env.wait_archived(r.events.len(), Duration::from_secs(120), &["archiver"])
        .await;
    env.wait_archive_complete(Duration::from_secs(60)).await;

    // Today is open everywhere: refused, non-zero exit, nothing written.
    let today = common::day::today(common::day::now_ms(), chrono_tz::UTC);
    let err = env
        .run("batch-layer", &["recompute", "--day", &today.to_string()])
        .await
        .expect_err("a recompute of today must fail")
        .to_string();
    assert!(
        err.contains(&format!("{today} is still open")) && err.contains("closes at"),
        "{err}"
    );
    for table in [
        "batch_runs",
        "day_finality",
        "daily_ad_metrics",
        "batch_run_parts",
    ] {
        let n = count(
            &env,
            &format!("SELECT COUNT(*) FROM {table} WHERE day = ?"),
            today,
        )
        .await;
        assert_eq!(n, 0, "{table} has rows of today after a refused run");
    }

    env.start_server().await;
    let east_key = env.api_key(&["--advertiser", &east.to_string()]).await;
    let west_key = env.api_key(&["--advertiser", &west.to_string()]).await;
    let next = day.succ_opt().unwrap();

    // 02:30 UTC the next day: the UTC day has closed (00:00 + 1 h), the UTC-8 one has
    // not (it ends at 08:00 UTC, closes at 09:00).
    let out = schedule_once(&env, &format!("{next}T02:30:00Z")).await;
    let zones = zone_status(&env, day).await;
    assert_eq!(zones.get("UTC").map(String::as_str), Some("final"), "{out}");
    assert_eq!(zones.get("Etc/GMT+8"), None, "{out}");
    assert_eq!(final_through(&env, east).await, Some(day));
    assert!(final_through(&env, west).await.is_none_or(|d| d < day));
    wait_api_status(&env, &east_key, east, day, "final").await;
    assert_eq!(api_status(&env, &west_key, west, day).await, "provisional");

    // 08:59: still inside the UTC-8 advertiser's allowance.
    schedule_once(&env, &format!("{next}T08:59:00Z")).await;
    assert_eq!(zone_status(&env, day).await.get("Etc/GMT+8"), None);

    // 09:00: closed; final.
    let out = schedule_once(&env, &format!("{next}T09:00:00Z")).await;
    let zones = zone_status(&env, day).await;
    assert_eq!(
        zones.get("Etc/GMT+8").map(String::as_str),
        Some("final"),
        "{out}"
    );
    assert_eq!(final_through(&env, west).await, Some(day));
    wait_api_status(&env, &west_key, west, day, "final").await;

    // An instant in the future is no clock of a run.
    let tomorrow = today.succ_opt().unwrap();
    let err = env
        .run(
            "batch-layer",
            &[
                "schedule",
                "--once",
                "--as-of",
                &format!("{tomorrow}T12:00:00Z"),
            ],
        )
        .await
        .expect_err("--as-of in the future")
        .to_string();
    assert!(err.contains("is in the future"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_waits_for_a_lagging_archiver_and_turns_final_when_it_catches_up() {
    let mut env = TestEnv::new(2).await;
    env.data_ends_days_ago = 1;
    env.cfg.batch.archive_max_age = Duration::from_millis(300);
    let r = env.replay(2_000).await;
    let (_, last) = days_of(&r.events);
    env.start_archiver();
    env.wait_archived(r.events.len(), Duration::from_secs(120), &["archiver"])
        .await;
    env.wait_archive_complete(Duration::from_secs(60)).await;
    env.terminate("archiver", Duration::from_secs(30)).await;

    // Traffic arrives while the archiver is down: the archive is behind the end of
    // `last` on the partitions that receive it.
    let producer: rdkafka::producer::FutureProducer =
        platform::kafka::producer_config(&env.cfg.kafka)
            .create()
            .unwrap();
    let (adv, ad) = (r.events[0].advertiser_id, r.events[0].ad_id.unwrap());
    for i in 0..20 {
        let payload = format!(
            r#"{{"kind":"click","event_id":"lag-{i}","ts":{},"user_id":"lag-user-{i}","ad_id":{ad},"advertiser_id":{adv},"product_id":{adv},"cost_micros":1000}}"#,
            common::day::now_ms()
        );
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&env.cfg.kafka.traffic_topic)
                    .key(&format!("lag-user-{i}"))
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let err = env
        .run("batch-layer", &["recompute", "--day", &last.to_string()])
        .await
        .expect_err("a day whose archive lags must not turn final")
        .to_string();
    assert!(
        err.contains("waiting for the archive") && err.contains("archived to offset"),
        "{err}"
    );
    assert_eq!(
        zone_status(&env, last).await.get("UTC").map(String::as_str),
        Some("waiting")
    );
    let reason: String = {
        let pool = env.mysql();
        let mut c = pool.get_conn().await.unwrap();
        let r: Option<String> = c
            .exec_first(
                "SELECT reason FROM day_finality WHERE day = ? AND time_zone = 'UTC'",
                (last,),
            )
            .await
            .unwrap();
        drop(c);
        pool.disconnect().await.ok();
        r.unwrap_or_default()
    };
    assert!(reason.contains(&env.cfg.kafka.traffic_topic), "{reason}");
    let rows = count(
        &env,
        "SELECT COUNT(*) FROM daily_ad_metrics WHERE day = ?",
        last,
    )
    .await;
    assert_eq!(rows, 0, "no result of a waiting day");

    // The archiver catches up; the next tick finalizes the day.
    env.start_archiver();
    env.wait_archive_complete(Duration::from_secs(60)).await;
    let out = env
        .run("batch-layer", &["schedule", "--once"])
        .await
        .expect("tick");
    assert!(out.contains(&format!("{last}: final")), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
    assert_eq!(
        zone_status(&env, last).await.get("UTC").map(String::as_str),
        Some("final")
    );
    let rows = count(
        &env,
        "SELECT COUNT(*) FROM daily_ad_metrics WHERE day = ?",
        last,
    )
    .await;
    assert!(rows > 0, "the final day has its rows");
}

/// `reconciliation` rows: (day, advertiser) -> measure -> (speed, batch, diff).
type Reconciliation = BTreeMap<(NaiveDate, i64), BTreeMap<String, (i64, i64, i64)>>;

async fn reconciliation(env: &TestEnv) -> Reconciliation {
    let pool = env.mysql();
    let mut c = pool.get_conn().await.unwrap();
    let rows: Vec<(NaiveDate, i64, String, i64, i64, i64)> = c
        .query("SELECT day, advertiser_id, measure, speed, batch, diff FROM reconciliation")
        .await
        .unwrap();
    drop(c);
    pool.disconnect().await.ok();
    let mut out = Reconciliation::new();
    for (d, a, m, s, b, x) in rows {
        out.entry((d, a)).or_default().insert(m, (s, b, x));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_final_day_reconciles_to_zero_and_a_lost_event_is_reported() {
    let mut env = TestEnv::new(2).await;
    env.data_ends_days_ago = 1;
    let r = env.replay_through_pipeline(6_000).await;
    let (first, last) = days_of(&r.events);
    let adv = busiest_advertiser(&r.events);
    let click = r
        .events
        .iter()
        .find(|e| e.advertiser_id == adv && e.kind == common::event::EventKind::Click)
        .expect("a click of the busiest advertiser");
    let lost_day = days_of(std::slice::from_ref(click)).0;
    let ad = click.ad_id.unwrap();

    // Lose one click in Redis: decrement it in the partition hash that holds it.
    let mut redis = env.redis().await;
    let keys = common::redis_keys::Keys::new(&env.cfg.redis.key_prefix);
    let field = common::redis_keys::field(ad, common::counters::Measure::Clicks.name());
    let mut lost = false;
    for p in 0..env.cfg.kafka.partitions {
        let key = keys.metrics(p, adv, lost_day);
        let n: Option<i64> = redis::cmd("HGET")
            .arg(&key)
            .arg(&field)
            .query_async(&mut redis)
            .await
            .unwrap();
        if n.is_some_and(|n| n > 0) {
            let _: i64 = redis::cmd("HINCRBY")
                .arg(&key)
                .arg(&field)
                .arg(-1)
                .query_async(&mut redis)
                .await
                .unwrap();
            lost = true;
            break;
        }
    }
    assert!(lost, "found the click in Redis");

    let out = env.recompute(first, last).await;
    assert!(out.contains("reconciliation of"), "{out}");
    let rec = reconciliation(&env).await;
    let days: std::collections::BTreeSet<NaiveDate> = rec.keys().map(|(d, _)| *d).collect();
    assert_eq!(
        days,
        first.iter_days().take_while(|d| *d <= last).collect(),
        "every day reconciled"
    );
    for ((d, a), measures) in &rec {
        for (m, (speed, batch, diff)) in measures {
            if m == "uv" {
                let rel = batch_layer::reconcile::uv_relative_error(*speed, *batch);
                assert!(
                    rel.abs() <= 0.02,
                    "{d} advertiser {a}: UV {speed} vs {batch}"
                );
            } else if (*d, *a, m.as_str()) == (lost_day, adv, "clicks") {
                assert_eq!(*diff, -1, "{d} advertiser {a}: the lost click");
            } else {
                assert_eq!(
                    *diff, 0,
                    "{d} advertiser {a} {m}: speed {speed}, batch {batch}"
                );
            }
        }
    }

    // The internal endpoint reports it; an advertiser's key cannot read it.
    env.start_server().await;
    let internal = env.api_key(&["--internal"]).await;
    let url = format!(
        "{}/v1/advertisers/{adv}/reconciliation?from={first}&to={last}",
        env.api_base()
    );
    let (s, body) = get_json(&url, Some(&internal)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["days_with_difference"], 1, "{body}");
    let day = body["days"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["day"] == lost_day.to_string())
        .expect("the day of the lost click");
    assert_eq!(day["ok"], false, "{day}");
    assert_eq!(day["measures"]["clicks"]["diff"], -1, "{day}");
    let own = env.api_key(&["--advertiser", &adv.to_string()]).await;
    let (s, body) = get_json(&url, Some(&own)).await;
    assert!(s == 403 || s == 404, "{s} {body}");

    // The scheduler exports it to Prometheus (from the table, at start and each tick).
    let listen = format!("127.0.0.1:{}", admetrics_tests::free_port());
    env.spawn(
        "scheduler",
        "batch-layer",
        &["schedule", "--metrics-listen", &listen],
    );
    let metrics_url = format!("http://{listen}/metrics");
    let scrape = |url: String| async move {
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    wait_until(Duration::from_secs(30), "the scheduler's gauges", || {
        let s = scrape(metrics_url.clone());
        async move {
            let t = s.await;
            t.contains("admetrics_reconciliation_days_with_difference")
                && t.contains("admetrics_batch_runs_failed")
        }
    })
    .await;
    let text = scrape(metrics_url.clone()).await;
    let gauge = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(
        gauge("admetrics_reconciliation_days_with_difference "),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        gauge("admetrics_reconciliation_diff{measure=\"clicks\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        gauge("admetrics_reconciliation_diff{measure=\"cost_micros\"}"),
        Some(0.0),
        "{text}"
    );
    // Every day of the data set is final: nothing waits, no run failed.
    assert_eq!(gauge("admetrics_batch_days_waiting "), Some(0.0), "{text}");
    assert_eq!(gauge("admetrics_batch_runs_failed "), Some(0.0), "{text}");
}
