//! The batch layer on the real data set: the archive holds every event exactly once
//! (also across SIGKILLs of the archiver and a full disk), and the daily recompute equals an
//! independent computation of the rules, is repeatable, fails cleanly on bad input,
//! and revises a final day that receives late data.

use std::collections::BTreeMap;
use std::time::Duration;

use admetrics_tests::tmpfs::Tmpfs;
use admetrics_tests::{TestEnv, archive, days_of, reference, wait_until};
use common::counters::Measure;
use common::day::date_of;
use mysql_async::prelude::Queryable;
use rand::Rng;

async fn archive_all(env: &mut TestEnv, expected_rows: usize) {
    let dir = env.state_dir.join("archive");
    let timeout = Duration::from_secs(120);
    let what = format!("{expected_rows} rows in the archive");
    wait_until(timeout, &what, || async {
        archive::rows(&dir) >= expected_rows as i64
    })
    .await;
    env.wait_archive_complete(Duration::from_secs(60)).await;
}

type DbRow = (i64, i64, i64, Vec<i64>);

/// `daily_ad_metrics` of a day: (advertiser, ad) -> (campaign, uv, counters).
async fn db_rows(
    env: &TestEnv,
    day: chrono::NaiveDate,
) -> BTreeMap<(i64, i64), (i64, i64, Vec<i64>)> {
    let pool = env.mysql();
    let mut c = pool.get_conn().await.unwrap();
    let cols: Vec<&str> = Measure::ALL.iter().map(|m| m.name()).collect();
    let sql = format!(
        "SELECT advertiser_id, ad_id, campaign_id, uv, {} FROM daily_ad_metrics WHERE day = ?",
        cols.join(", ")
    );
    let rows: Vec<mysql_async::Row> = c.exec(sql, (day,)).await.unwrap();
    let out = rows
        .into_iter()
        .map(|r| {
            let v: Vec<i64> = (0..r.len()).map(|i| r.get::<i64, _>(i).unwrap()).collect();
            let row: DbRow = (v[0], v[1], v[2], v[3..].to_vec());
            ((row.0, row.1), (row.2, row.3[0], row.3[1..].to_vec()))
        })
        .collect();
    drop(c);
    pool.disconnect().await.ok();
    out
}

async fn run_row(
    env: &TestEnv,
    day: chrono::NaiveDate,
) -> Option<(String, String, Option<String>)> {
    let pool = env.mysql();
    let mut c = pool.get_conn().await.unwrap();
    let r = c
        .exec_first(
            "SELECT finality, run_status, error FROM batch_runs WHERE day = ?",
            (day,),
        )
        .await
        .unwrap();
    drop(c);
    pool.disconnect().await.ok();
    r
}

/// Recomputes every day of `events` and asserts that `daily_ad_metrics` and the
/// advertiser UV of `daily_uv` equal the independent computation over `events` (UV
/// exact), each day final; returns the rows compared.
async fn recompute_matches_reference(env: &TestEnv, events: &[common::event::Event<'_>]) -> usize {
    let (first, last) = days_of(events);
    let out = env.recompute(first, last).await;
    assert!(out.contains("0 failed"), "{out}");
    days_match_reference(env, events, first, last).await
}

/// Asserts that `daily_ad_metrics` and the advertiser UV of `daily_uv` of the days
/// `first..=last` equal the independent computation over `events` (UV exact), each
/// day final; returns the rows compared.
async fn days_match_reference(
    env: &TestEnv,
    events: &[common::event::Event<'_>],
    first: chrono::NaiveDate,
    last: chrono::NaiveDate,
) -> usize {
    let expected = reference::compute(events);
    let per_day = reference::per_day(&expected);
    let mut compared = 0;
    for d in first.iter_days().take_while(|d| *d <= last) {
        let rows = db_rows(env, d).await;
        let dn = i64::from(common::day::day_num(d));
        let want: BTreeMap<(i64, i64), &reference::Expected> = expected
            .iter()
            .filter(|((_, day, _), _)| *day == dn)
            .map(|((a, _, ad), x)| ((*a, *ad), x))
            .collect();
        assert_eq!(
            rows.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{d}: the same (advertiser, ad) rows"
        );
        for (k, (_, uv, c)) in &rows {
            let x = want[k];
            let get = |m: Measure| c[m as usize];
            assert_eq!(get(Measure::Clicks), x.clicks, "{d} {k:?} clicks");
            assert_eq!(get(Measure::CostMicros), x.cost_micros, "{d} {k:?} cost");
            assert_eq!(get(Measure::Exposures), x.exposures, "{d} {k:?} exposures");
            for m in Measure::ALL.iter().skip(3) {
                assert_eq!(
                    get(*m),
                    x.effects.get(m.name()).copied().unwrap_or(0),
                    "{d} {k:?} {}",
                    m.name()
                );
            }
            assert_eq!(*uv, x.users.len() as i64, "{d} {k:?} exact uv");
            compared += 1;
        }
        // Advertiser-level distinct users, exact.
        let pool = env.mysql();
        let mut c = pool.get_conn().await.unwrap();
        let uvs: Vec<(i64, i64)> = c
            .exec(
                "SELECT advertiser_id, uv FROM daily_uv WHERE day = ? AND campaign_id = 0",
                (d,),
            )
            .await
            .unwrap();
        drop(c);
        pool.disconnect().await.ok();
        for (adv, uv) in uvs {
            assert_eq!(
                uv,
                per_day[&(adv, dn)].users.len() as i64,
                "{d} advertiser {adv} uv"
            );
        }
        assert_eq!(run_row(env, d).await.map(|r| r.0), Some("final".into()));
    }
    compared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_is_exact_and_recompute_equals_an_independent_computation() {
    let mut env = TestEnv::new(4).await;
    env.data_ends_days_ago = 1;
    env.cfg.batch.archive_max_rows = 3_000;
    env.cfg.batch.archive_max_age = Duration::from_millis(500);
    let r = env.replay(20_000).await;
    env.start_archiver();
    archive_all(&mut env, r.events.len()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = archive::event_id_counts(&env.state_dir.join("archive"));
    assert_eq!(counts.len(), r.events.len(), "every event archived");
    assert!(counts.values().all(|c| *c == 1), "no event archived twice");
    assert!(
        r.events
            .iter()
            .all(|e| counts.contains_key(e.event_id.as_ref()))
    );

    let (_, last) = days_of(&r.events);
    let compared = recompute_matches_reference(&env, &r.events).await;
    assert!(compared > 500, "compared {compared} rows");

    // Recomputing a day gives identical rows.
    let before = db_rows(&env, last).await;
    env.run("batch-layer", &["recompute", "--day", &last.to_string()])
        .await
        .expect("second recompute");
    assert_eq!(db_rows(&env, last).await, before);
    assert_eq!(
        run_row(&env, last).await.map(|r| r.0),
        Some("final".into()),
        "same input: still final, not revised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_archiver_leaves_no_duplicate_and_no_gap() {
    let mut env = TestEnv::new(4).await;
    env.cfg.batch.archive_max_rows = 2_000;
    env.cfg.batch.archive_max_age = Duration::from_millis(300);
    let r = env.replay(60_000).await;
    let dir = env.state_dir.join("archive");
    let mut kills = 0;
    for _ in 0..4 {
        env.start_archiver();
        let wait = rand::rng().random_range(400..1_500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        env.kill("archiver").await;
        kills += 1;
        if archive::rows(&dir) >= r.events.len() as i64 {
            break;
        }
    }
    assert!(kills >= 1);
    // A restarted member takes its partitions back at once (static membership) and
    // archives the rest in seconds.
    env.start_archiver();
    env.wait_archived(r.events.len(), Duration::from_secs(120), &["archiver"])
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = archive::event_id_counts(&dir);
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicates after {kills} kills: {dups:?}");
    assert_eq!(
        counts.len(),
        r.events.len(),
        "missing events after {kills} kills"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_corrupt_input_fails_the_run_without_partial_results() {
    let mut env = TestEnv::new(2).await;
    env.data_ends_days_ago = 1;
    env.cfg.batch.archive_max_age = Duration::from_millis(300);
    let r = env.replay(3_000).await;
    env.start_archiver();
    archive_all(&mut env, r.events.len()).await;
    // Missing: nothing archived for that (closed) day.
    let err = env
        .run("batch-layer", &["recompute", "--day", "2026-01-05"])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no archive files for 2026-01-05"), "{err}");
    let run = run_row(&env, "2026-01-05".parse().unwrap()).await.unwrap();
    assert_eq!((run.0.as_str(), run.1.as_str()), ("none", "failed"));
    assert!(run.2.unwrap().contains("no archive files"));

    // Corrupt: a final day whose file is damaged keeps its final results.
    let (_, last) = days_of(&r.events);
    env.run("batch-layer", &["recompute", "--day", &last.to_string()])
        .await
        .expect("first run");
    let before = db_rows(&env, last).await;
    assert!(!before.is_empty());
    let victim = archive::files(&env.state_dir.join("archive"))
        .into_iter()
        .find(|f| f.to_string_lossy().contains(&format!("date={last}")))
        .unwrap();
    std::fs::write(&victim, b"PAR1 this is not parquet").unwrap();
    let err = env
        .run("batch-layer", &["recompute", "--day", &last.to_string()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt archive file"), "{err}");
    let run = run_row(&env, last).await.unwrap();
    assert_eq!(
        (run.0.as_str(), run.1.as_str()),
        ("final", "failed"),
        "the day stays final; the attempt is recorded as failed"
    );
    assert_eq!(db_rows(&env, last).await, before, "no partial results");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_data_for_a_final_day_is_archived_noticed_and_revised() {
    let mut env = TestEnv::new(2).await;
    env.data_ends_days_ago = 1;
    env.cfg.batch.archive_max_age = Duration::from_millis(300);
    let r = env.replay(3_000).await;
    env.start_archiver();
    archive_all(&mut env, r.events.len()).await;
    let (first, last) = days_of(&r.events);
    env.recompute(first, last).await;
    let before = db_rows(&env, first).await;
    // A late click for the first (final) day, on an ad of the data set.
    let late_ts = r.events[0].ts + 1;
    let (adv, ad) = (r.events[0].advertiser_id, r.events[0].ad_id.unwrap());
    let payload = format!(
        r#"{{"kind":"click","event_id":"late-1","ts":{late_ts},"user_id":"late-user","ad_id":{ad},"advertiser_id":{adv},"product_id":{adv},"cost_micros":4242}}"#
    );
    let producer: rdkafka::producer::FutureProducer =
        platform::kafka::producer_config(&env.cfg.kafka)
            .create()
            .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&env.cfg.kafka.traffic_topic)
                .key("late-user")
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    archive_all(&mut env, r.events.len() + 1).await;
    let out = env
        .run("batch-layer", &["schedule", "--once"])
        .await
        .expect("tick");
    assert!(out.contains(&format!("{first}: revised")), "{out}");
    let after = db_rows(&env, first).await;
    let clicks = |rows: &BTreeMap<(i64, i64), (i64, i64, Vec<i64>)>| {
        rows.get(&(adv, ad))
            .map_or(0, |r| r.2[Measure::Clicks as usize])
    };
    let cost = |rows: &BTreeMap<(i64, i64), (i64, i64, Vec<i64>)>| {
        rows.get(&(adv, ad))
            .map_or(0, |r| r.2[Measure::CostMicros as usize])
    };
    assert_eq!(clicks(&after), clicks(&before) + 1);
    assert_eq!(cost(&after), cost(&before) + 4242);
    assert_eq!(
        run_row(&env, first).await.map(|r| r.0),
        Some("revised".into())
    );

    // The API row of the revised day says when it was revised and what it was.
    env.start_server().await;
    let key = env.api_key(&["--advertiser", &adv.to_string()]).await;
    let url = format!(
        "{}/v1/advertisers/{adv}/metrics?from={first}&to={first}",
        env.api_base()
    );
    let (s, body) = admetrics_tests::get_json(&url, Some(&key)).await;
    assert_eq!(s, 200, "{body}");
    let row = &body["rows"][0];
    let total = |rows: &BTreeMap<(i64, i64), (i64, i64, Vec<i64>)>, m: Measure| -> i64 {
        rows.iter()
            .filter(|((a, _), _)| *a == adv)
            .map(|(_, r)| r.2[m as usize])
            .sum()
    };
    assert_eq!(row["status"], "revised", "{row}");
    assert!(row["revised_at"].is_string(), "{row}");
    assert_eq!(row["revisions"], 1, "{row}");
    assert_eq!(
        row["previous"]["clicks"],
        total(&before, Measure::Clicks),
        "{row}"
    );
    assert_eq!(
        row["previous"]["cost_micros"],
        total(&before, Measure::CostMicros),
        "{row}"
    );
    assert_eq!(
        row["metrics"]["clicks"],
        total(&after, Measure::Clicks),
        "{row}"
    );
    assert_eq!(
        row["metrics"]["cost_micros"],
        total(&after, Measure::CostMicros),
        "{row}"
    );
}

/// Every result row of `days`: `daily_ad_metrics` (as [`db_rows`]) and `daily_uv`.
type DayRows = (
    BTreeMap<(i64, i64), (i64, i64, Vec<i64>)>,
    Vec<(i64, i64, i64)>,
);

async fn day_rows(env: &TestEnv, day: chrono::NaiveDate) -> DayRows {
    let pool = env.mysql();
    let mut c = pool.get_conn().await.unwrap();
    let uv: Vec<(i64, i64, i64)> = c
        .exec(
            "SELECT advertiser_id, campaign_id, uv FROM daily_uv WHERE day = ? ORDER BY 1, 2",
            (day,),
        )
        .await
        .unwrap();
    drop(c);
    pool.disconnect().await.ok();
    (db_rows(env, day).await, uv)
}

async fn recompute_part(env: &TestEnv, days: (chrono::NaiveDate, chrono::NaiveDate), shard: &str) {
    let (from, to) = (days.0.to_string(), days.1.to_string());
    let out = env
        .run(
            "batch-layer",
            &["recompute", "--from", &from, "--to", &to, "--shard", shard],
        )
        .await
        .unwrap_or_else(|e| panic!("recompute --shard {shard}: {e}"));
    assert!(out.contains("0 failed"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_give_the_same_rows_as_one() {
    let mut env = TestEnv::new(4).await;
    env.data_ends_days_ago = 1;
    env.cfg.batch.archive_max_age = Duration::from_millis(500);
    let r = env.replay(20_000).await;
    env.start_archiver();
    archive_all(&mut env, r.events.len()).await;
    let days = days_of(&r.events);
    let all_days: Vec<_> = days.0.iter_days().take_while(|d| *d <= days.1).collect();

    // Two of three workers at once: the day must not turn final on a partial result.
    tokio::join!(
        recompute_part(&env, days, "0/3"),
        recompute_part(&env, days, "1/3")
    );
    for d in &all_days {
        let (f, _, _) = run_row(&env, *d).await.expect("run recorded");
        assert_eq!(f, "none", "{d} is not final with 2 of 3 parts");
        assert!(day_rows(&env, *d).await.0.is_empty(), "{d} has no rows yet");
    }
    recompute_part(&env, days, "2/3").await;
    let mut split = Vec::new();
    for d in &all_days {
        assert_eq!(run_row(&env, *d).await.unwrap().0, "final", "{d}");
        split.push(day_rows(&env, *d).await);
    }
    assert!(
        split.iter().map(|(ads, _)| ads.len()).sum::<usize>() > 100,
        "the split run wrote the data set's rows"
    );

    // The same days by one worker replace the rows: they must not change.
    recompute_part(&env, days, "0/1").await;
    for (d, rows) in all_days.iter().zip(&split) {
        assert_eq!(run_row(&env, *d).await.unwrap().0, "final", "{d}");
        assert_eq!(
            &day_rows(&env, *d).await,
            rows,
            "{d}: 3 workers == 1 worker"
        );
    }
}

/// moto's S3-compatible server on a free port (deploy/local/test.sh installs it and
/// sets `ADMETRICS_MOTO_SERVER`), killed on drop.
struct S3Server {
    endpoint: String,
    _child: tokio::process::Child,
}

impl S3Server {
    async fn start(bucket: &str) -> S3Server {
        let bin = std::env::var("ADMETRICS_MOTO_SERVER").unwrap_or_else(|_| {
            panic!("ADMETRICS_MOTO_SERVER is not set: run the tests with deploy/local/test.sh, which installs moto[server]")
        });
        let port = admetrics_tests::free_port();
        let child = tokio::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let endpoint = format!("http://127.0.0.1:{port}");
        let url = format!("{endpoint}/{bucket}");
        wait_until(Duration::from_secs(30), "the S3 server", || async {
            reqwest::Client::new()
                .put(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        S3Server {
            endpoint,
            _child: child,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_works_on_an_s3_compatible_store() {
    let mut env = TestEnv::new(4).await;
    env.data_ends_days_ago = 1;
    let s3 = S3Server::start("archive").await;
    env.cfg.batch.archive_url = "s3://archive/admetrics".into();
    env.cfg.batch.archive_max_age = Duration::from_millis(500);
    for (k, v) in [
        ("aws_endpoint", s3.endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
    ] {
        env.cfg.batch.archive_options.insert(k.to_owned(), v.into());
    }
    let r = env.replay(10_000).await;
    env.start_archiver();
    let store = batch_layer::archive::store::open(&env.cfg.batch).expect("S3 archive opens");
    let rows_in_s3 = || async {
        use futures::TryStreamExt as _;
        use object_store::ObjectStoreExt as _;
        let objects: Vec<_> = store
            .store
            .list(None)
            .try_collect()
            .await
            .unwrap_or_default();
        let mut rows = 0;
        for o in objects
            .iter()
            .filter(|o| o.location.as_ref().ends_with(".parquet"))
        {
            let bytes = store
                .store
                .get(&o.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            rows += batch_layer::recompute::input::row_count(o.location.as_ref(), bytes).unwrap();
        }
        rows
    };
    let want = r.events.len() as i64;
    wait_until(Duration::from_secs(120), "every event in S3", || async {
        rows_in_s3().await >= want
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rows_in_s3().await, want, "every event archived once");

    let (first, last) = days_of(&r.events);
    let out = env.recompute(first, last).await;
    assert!(out.contains("0 failed"), "{out}");
    let expected = reference::per_day(&reference::compute(&r.events));
    for d in first.iter_days().take_while(|d| *d <= last) {
        assert_eq!(run_row(&env, d).await.unwrap().0, "final", "{d}");
        let rows = db_rows(&env, d).await;
        let clicks: i64 = rows
            .values()
            .map(|(_, _, c)| c[Measure::Clicks as usize])
            .sum();
        let want: i64 = expected
            .iter()
            .filter(|((_, day), _)| date_of(i32::try_from(*day).unwrap()) == d)
            .map(|(_, e)| e.clicks)
            .sum();
        assert_eq!(clicks, want, "{d}: clicks recomputed from S3");
    }
}

/// 5 % of a replay's events sent a second time (same `event_id`, same bytes, same key),
/// as a producer retrying without idempotence would: each event counts once in Redis
/// (the speed layer's dedup), in MySQL (the recompute's dedup over the archive, which
/// keeps both copies as read) and in ClickHouse `FINAL` (the speed layer writes no
/// detail row for a duplicate; the table's ReplacingMergeTree by `event_id` would fold
/// one that a re-processing wrote).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_duplicate_event_ids_count_once_on_every_path() {
    let mut env = TestEnv::new(4).await;
    env.data_ends_days_ago = 1;
    env.cfg.batch.archive_max_age = Duration::from_millis(500);
    let r = env.replay(20_000).await;
    let producer: rdkafka::producer::FutureProducer =
        platform::kafka::producer_config(&env.cfg.kafka)
            .create()
            .unwrap();
    let duplicates: Vec<common::event::Event<'static>> =
        r.events.iter().step_by(20).cloned().collect();
    // Sent as the replay sends events: keyed by user, to the topic of their kind.
    speed_layer::tools::replay::produce(&env.cfg, &producer, &duplicates, 0.0, false, |_| {})
        .await
        .expect("duplicates produced");
    env.spawn("speed", "speed-layer", &["run"]);
    env.start_archiver();
    // Redis: exact, every duplicate dropped.
    env.settle_and_check(&r.events, &["speed"]).await;
    // The archive keeps what was read (both copies); the recompute counts each once.
    archive_all(&mut env, r.events.len() + duplicates.len()).await;
    let counts = archive::event_id_counts(&env.state_dir.join("archive"));
    assert_eq!(
        counts.values().filter(|c| **c == 2).count(),
        duplicates.len()
    );
    let compared = recompute_matches_reference(&env, &r.events).await;
    assert!(compared > 500, "compared {compared} rows");
    // ClickHouse: one detail row per event.
    let rows = env
        .clickhouse("SELECT count() AS c, uniqExact(event_id) AS u FROM events FINAL")
        .await;
    let get = |k: &str| rows[0][k].as_str().and_then(|v| v.parse::<usize>().ok());
    assert_eq!(get("u"), Some(r.events.len()), "{rows:?}");
    assert_eq!(
        get("c"),
        Some(r.events.len()),
        "one row per event under FINAL: {rows:?}"
    );
}

/// A recompute SIGKILLed in the middle of a day (issue 17): no half-written day is
/// visible at any moment, the scheduler's next tick records the run failed (what
/// `BatchRunFailed` alerts on) and recomputes the day exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recompute_sigkilled_mid_day_leaves_no_half_day_and_the_next_tick_is_exact() {
    let mut env = TestEnv::new(2).await;
    env.data_ends_days_ago = 1;
    env.cfg.batch.archive_max_age = Duration::from_millis(500);
    let r = env.replay(20_000).await;
    env.start_archiver();
    archive_all(&mut env, r.events.len()).await;
    let (_, day) = days_of(&r.events);
    let day_rows = |env: &TestEnv| {
        let pool = env.mysql();
        async move {
            let mut c = pool.get_conn().await.unwrap();
            let n: Option<i64> = c
                .exec_first(
                    "SELECT COUNT(*) FROM daily_ad_metrics WHERE day = ?",
                    (day,),
                )
                .await
                .unwrap();
            drop(c);
            pool.disconnect().await.ok();
            n.unwrap_or(0)
        }
    };

    // Killed while its run is recorded `running`; a reader meanwhile sees no row of
    // the day at all (the rows appear only in the transaction that records success).
    env.spawn(
        "recompute",
        "batch-layer",
        &["recompute", "--day", &day.to_string()],
    );
    let started = std::time::Instant::now();
    while run_row(&env, day).await.is_none_or(|r| r.1 != "running") {
        assert!(
            started.elapsed() < Duration::from_secs(60) && env.running("recompute"),
            "the run did not start, or ended before it could be killed: {:?}",
            run_row(&env, day).await
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(day_rows(&env).await, 0, "no half-written day while it runs");
    env.kill("recompute").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = run_row(&env, day).await.expect("a run row");
    assert_eq!(
        (left.0.as_str(), left.1.as_str()),
        ("none", "running"),
        "{left:?}"
    );
    assert_eq!(
        day_rows(&env).await,
        0,
        "nothing of the killed run is visible"
    );

    // The next tick finds the abandoned run, records it failed, and retries the day.
    let out = env
        .run("batch-layer", &["schedule", "--once"])
        .await
        .expect("schedule --once");
    assert!(
        out.contains(&format!("{day}: the run started at")) && out.contains("recorded failed"),
        "{out}"
    );
    assert!(out.contains(&format!("{day}: final")), "{out}");
    let compared = days_match_reference(&env, &r.events, day, day).await;
    assert!(compared > 100, "compared {compared} rows");
    let after = run_row(&env, day).await.expect("a run row");
    assert_eq!(after.1, "succeeded", "{after:?}");
}

/// The archive directory on a disk that fills up (a 1 MiB tmpfs) while the
/// archiver works through a replay already in Kafka: each write is retried on the
/// archiver's fixed schedule, then the archiver exits non-zero naming the file and
/// "No space left on device", having committed in Kafka only batches whose files are
/// all written. With room again (the tmpfs remounted bigger), a restart archives every
/// event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_archive_disk_stops_the_archiver_before_it_commits_unwritten_offsets_and_loses_nothing()
 {
    let mut env = TestEnv::new(2).await;
    // Batches of at most 2 000 rows, some 200 KB of files (one per event hour): a few
    // are committed before the disk is full.
    env.cfg.batch.archive_max_rows = 2_000;
    env.cfg.batch.archive_max_age = Duration::from_millis(300);
    let dir = env.state_dir.join("archive");
    let disk = Tmpfs::mount(&dir, "1m");
    let r = env.replay(20_000).await;
    env.start_archiver();

    // The replay's archive is megabytes: the disk is full after a few batches.
    wait_until(
        Duration::from_secs(60),
        "an archive write to fail for the full disk",
        || {
            let n = env.log_count("archiver", "archive write failed; retrying");
            async move { n > 0 }
        },
    )
    .await;
    let failed = std::time::Instant::now();
    // The write is retried for a fixed time, then the archiver stops (plus the
    // encoding and the attempts themselves, well under 10 s here).
    let bound = batch_layer::archiver::write_retry_budget() + Duration::from_secs(10);
    wait_until(bound, "the archiver to stop", || {
        let running = env.running("archiver");
        async move { !running }
    })
    .await;
    let stopped_in = failed.elapsed();
    assert!(
        env.exit_status("archiver").is_some_and(|s| !s.success()),
        "the archiver exits non-zero (a supervisor restarts it)"
    );
    let why = env.exit_error("archiver");
    let where_ = dir.canonicalize().unwrap();
    assert!(
        why.contains("No space left on device") && why.contains(where_.to_str().unwrap()),
        "the exit error says the disk is full and where:\n{why}"
    );

    // Nothing acknowledged is lost: every offset below each committed one is in a
    // file on the full disk.
    let committed = env.archiver_committed_offsets();
    let archived = archive::offsets(&dir);
    let mut acknowledged = 0;
    for ((topic, p), &next) in &committed {
        let have: std::collections::BTreeSet<i64> = archived
            .get(&(topic.clone(), *p))
            .map(|o| o.iter().copied().collect())
            .unwrap_or_default();
        let missing: Vec<i64> = (0..next).filter(|o| !have.contains(o)).take(5).collect();
        assert!(
            missing.is_empty(),
            "{topic}/{p}: offsets {missing:?} are committed (next {next}) but not archived"
        );
        acknowledged += next;
    }
    assert!(
        acknowledged > 0,
        "batches were committed before the disk filled (else the check above checks nothing)"
    );
    assert!(
        acknowledged < r.events.len() as i64,
        "the archiver stopped before it had committed everything"
    );
    eprintln!(
        "archive full: stopped {:.1} s after the first failed write; {acknowledged} of {} events committed, each archived ({} files on the disk)",
        stopped_in.as_secs_f64(),
        r.events.len(),
        archive::files(&dir).len()
    );

    // Room again: the restart deletes the failed batch's files by its intent and
    // archives the rest from the committed offsets.
    disk.resize("64m");
    env.start_archiver();
    env.wait_archived(r.events.len(), Duration::from_secs(120), &["archiver"])
        .await;
    env.wait_archive_complete(Duration::from_secs(60)).await;
    archive::assert_exactly_once(&dir, &r.events, "a full disk and a restart with room");
}

/// An archive written the way another writer would (Snappy is what pyarrow and Spark
/// write by default): the archiver set to `batch.archive_compression = "snappy"`
/// writes every file so, and the recompute of every day equals the independent
/// computation, as with the default codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_written_with_snappy_recomputes_exactly() {
    use parquet::basic::Compression;
    let mut env = TestEnv::new(4).await;
    env.data_ends_days_ago = 1;
    env.cfg.batch.archive_compression = common::config::ArchiveCompression::Snappy;
    env.cfg.batch.archive_max_age = Duration::from_millis(500);
    let r = env.replay(10_000).await;
    env.start_archiver();
    archive_all(&mut env, r.events.len()).await;
    let files = archive::files(&env.state_dir.join("archive"));
    assert!(!files.is_empty());
    for f in &files {
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(
            std::fs::File::open(f).expect("archive file"),
        )
        .expect("a Parquet file");
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        for rg in meta.row_groups() {
            for c in rg.columns() {
                assert_eq!(c.compression(), Compression::SNAPPY, "{}", f.display());
            }
        }
    }
    let compared = recompute_matches_reference(&env, &r.events).await;
    assert!(compared > 300, "compared {compared} rows");
}
