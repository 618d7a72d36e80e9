//! The serving layer's cached read path keeps every promise of the uncached one: a
//! final day replaced by a new batch run is served from the new run within
//! `serving.batch_staleness`; a provisional day's answer follows each speed-layer flush
//! within `serving.speed_staleness` and equals the sum of the per-partition hashes in
//! Redis, read here independently.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use admetrics_tests::{TestEnv, busiest_advertiser, days_of, get_json};
use chrono::NaiveDate;
use common::counters::{Counters, Measure};
use common::redis_keys::{AS_OF_FIELD, FLUSH_SEQ_FIELD, Keys, parse_field};
use mysql_async::prelude::Queryable;

/// Slack on top of a staleness bound: the test's own polling (every 20-25 ms) and the
/// time a request sent by the test takes to reach a handler on a loaded 2-core machine.
/// Lags are measured to when a request was sent, so answer times do not count.
const SLACK: Duration = Duration::from_millis(300);

/// Every partition's flush sequence number, read straight from Redis.
async fn flush_seqs(env: &TestEnv) -> Vec<Option<i64>> {
    let keys = Keys::new(&env.cfg.redis.key_prefix);
    let mut r = env.redis().await;
    let mut out = Vec::new();
    for p in 0..env.cfg.kafka.partitions {
        let v: Option<i64> = redis::cmd("HGET")
            .arg(keys.offsets(p))
            .arg(FLUSH_SEQ_FIELD)
            .query_async(&mut r)
            .await
            .expect("HGET flush_seq");
        out.push(v);
    }
    out
}

/// The counters of `adv` per day over `days`, summed over the per-partition hashes.
async fn partition_sums(
    env: &TestEnv,
    adv: i64,
    days: &[NaiveDate],
) -> BTreeMap<NaiveDate, Counters> {
    let keys = Keys::new(&env.cfg.redis.key_prefix);
    let mut r = env.redis().await;
    let mut out = BTreeMap::new();
    for d in days {
        let mut sum = Counters::ZERO;
        for p in 0..env.cfg.kafka.partitions {
            let h: BTreeMap<String, i64> = redis::cmd("HGETALL")
                .arg(keys.metrics(p, adv, *d))
                .query_async(&mut r)
                .await
                .expect("HGETALL");
            for (f, v) in h {
                if f == AS_OF_FIELD {
                    continue;
                }
                let (_, m) = parse_field(&f).expect("field <ad>:<measure>");
                sum[Measure::parse(m).expect("a measure")] += v;
            }
        }
        out.insert(*d, sum);
    }
    out
}

/// The API's counters per day of one answer.
fn api_sums(body: &serde_json::Value) -> BTreeMap<NaiveDate, Counters> {
    body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            let mut c = Counters::ZERO;
            for m in Measure::ALL {
                c[m] = row["metrics"][m.name()].as_i64().expect("a counter");
            }
            (row["day"].as_str().unwrap().parse().unwrap(), c)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisional_day_follows_each_flush_within_the_bound_and_equals_the_partition_sums() {
    let mut env = TestEnv::new(2).await;
    env.cfg.serving.rate_limit_per_second = 10_000;
    env.cfg.serving.rate_limit_burst = 10_000;
    // Flushes at least 5 s apart per partition, so one flush's answer can be awaited
    // (bound 1 s) before the next one lands.
    let slow_flushes = [("ADMETRICS__SPEED__MIN_FLUSH_INTERVAL", "5s".to_owned())];
    let events = env.spawn_paced_replay(20_000, 5_000);
    env.spawn_with_env("speed", "speed-layer", &["run"], &slow_flushes);
    env.start_server().await;
    let adv = busiest_advertiser(&events);
    // The paced replay writes the advertiser's dimensions as it goes: an internal key
    // needs none to exist yet.
    let key = env.api_key(&["--internal"]).await;
    let (first, last) = days_of(&events);
    let days: Vec<NaiveDate> = first.iter_days().take_while(|d| *d <= last).collect();
    let url = format!(
        "{}/v1/advertisers/{adv}/metrics?from={first}&to={last}",
        env.api_base()
    );
    let bound = env.cfg.serving.speed_staleness;

    let mut lags = Vec::new();
    let mut seen = flush_seqs(&env).await;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out; lags so far {lags:?}\n{}",
            env.log("speed")
        );
        let seqs = flush_seqs(&env).await;
        if seqs != seen {
            // A flush completed since the last look (at most ~25 ms ago).
            let flushed = Instant::now();
            let want = partition_sums(&env, adv, &days).await;
            if flush_seqs(&env).await == seqs {
                loop {
                    // Judged by when the request was sent: a stale answer is a fault
                    // only if it was asked for more than the bound after the flush.
                    let sent = flushed.elapsed();
                    let (s, body) = get_json(&url, Some(&key)).await;
                    assert_eq!(s, 200, "{body}");
                    if api_sums(&body) == want {
                        lags.push(sent);
                        break;
                    }
                    if flush_seqs(&env).await != seqs {
                        break; // another flush landed meanwhile: this sample is void
                    }
                    assert!(
                        sent < bound + SLACK,
                        "a request sent {sent:?} after a flush completed lacks it (bound {bound:?})"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            seen = seqs;
        }
        if !env.running("replay") && lags.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    eprintln!("first request that saw each flush, sent this long after it: {lags:?}");

    // Settled: every day of every grouping equals the partition sums exactly, and the
    // UV is the one the per-partition HyperLogLogs give.
    if let Err(e) =
        speed_layer::tools::status::wait_settled(&env.cfg, Duration::from_secs(180)).await
    {
        panic!("{e}\n{}", env.log("speed"));
    }
    tokio::time::sleep(bound + SLACK).await;
    let want = partition_sums(&env, adv, &days).await;
    for g in ["day", "ad", "campaign"] {
        let (s, body) = get_json(&format!("{url}&group_by={g}"), Some(&key)).await;
        assert_eq!(s, 200, "{body}");
        let mut per_day: BTreeMap<NaiveDate, Counters> = BTreeMap::new();
        for row in body["rows"].as_array().unwrap() {
            let d: NaiveDate = row["day"].as_str().unwrap().parse().unwrap();
            let e = per_day.entry(d).or_default();
            for m in Measure::ALL {
                e[m] += row["metrics"][m.name()].as_i64().unwrap();
            }
            assert_eq!(row["source"], "speed");
        }
        assert_eq!(
            per_day, want,
            "group_by={g}: the answer equals the partition sums"
        );
    }
    let mut r = env.redis().await;
    let keys = Keys::new(&env.cfg.redis.key_prefix);
    let (_, body) = get_json(&url, Some(&key)).await;
    for row in body["rows"].as_array().unwrap() {
        let d: NaiveDate = row["day"].as_str().unwrap().parse().unwrap();
        let mut hll = 0;
        for p in 0..env.cfg.kafka.partitions {
            let n: i64 = redis::cmd("PFCOUNT")
                .arg(keys.uv(p, d, common::counters::UvScope::Advertiser(adv)))
                .query_async(&mut r)
                .await
                .unwrap();
            hll += n;
        }
        assert_eq!(row["metrics"]["uv"].as_i64(), Some(hll), "{d} uv");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_day_replaced_by_a_new_run_is_served_from_it_within_the_bound() {
    let mut env = TestEnv::new(2).await;
    env.cfg.serving.rate_limit_per_second = 10_000;
    env.cfg.serving.rate_limit_burst = 10_000;
    env.data_ends_days_ago = 1;
    let r = env.replay_through_pipeline(3_000).await;
    let (first, _) = days_of(&r.events);
    env.recompute(first, first).await;
    env.start_server().await;
    let adv = busiest_advertiser(&r.events);
    let key = env.api_key(&["--advertiser", &adv.to_string()]).await;
    let url = format!(
        "{}/v1/advertisers/{adv}/metrics?from={first}&to={first}&group_by=ad",
        env.api_base()
    );
    let (s, before) = get_json(&url, Some(&key)).await;
    assert_eq!(s, 200, "{before}");
    let row = before["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ad_id"].as_i64() != Some(0))
        .expect("an ad row on the final day")
        .clone();
    assert_eq!(row["status"], "final", "{row}");
    let ad = row["ad_id"].as_i64().unwrap();
    let clicks = row["metrics"]["clicks"].as_i64().unwrap();
    // Served from the cache now (the same answer again).
    assert_eq!(get_json(&url, Some(&key)).await.1, before);

    // What a new run of the day writes, in one transaction: the day's rows, its
    // zone's `day_finality` version and, since a total changed, a revision (here: one
    // more click on one ad, a new finish time).
    let pool = env.mysql();
    let mut conn = pool.get_conn().await.unwrap();
    let mut tx = conn
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .unwrap();
    tx.exec_drop(
        "UPDATE daily_ad_metrics SET clicks = clicks + 1 WHERE advertiser_id = ? AND day = ? AND ad_id = ?",
        (adv, first, ad),
    )
    .await
    .unwrap();
    tx.exec_drop(
        "UPDATE day_finality SET computed_at = CURRENT_TIMESTAMP(3) + INTERVAL 1 SECOND, \
         revised_at = CURRENT_TIMESTAMP(3) WHERE day = ?",
        (first,),
    )
    .await
    .unwrap();
    tx.exec_drop(
        "INSERT INTO day_revisions (day, advertiser_id, revision, revised_at, previous_totals, new_totals) \
         VALUES (?, ?, 1, CURRENT_TIMESTAMP(3), JSON_OBJECT('clicks', ?), JSON_OBJECT('clicks', ?))",
        (first, adv, clicks, clicks + 1),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let committed = Instant::now();
    let bound = env.cfg.serving.batch_staleness;

    let mut lag = None;
    while committed.elapsed() < bound + Duration::from_secs(3) {
        let sent = committed.elapsed();
        let (s, body) = get_json(&url, Some(&key)).await;
        assert_eq!(s, 200, "{body}");
        let row = body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ad_id"].as_i64() == Some(ad))
            .unwrap()
            .clone();
        let new = row["status"] == "revised";
        if let Some(l) = lag {
            assert!(
                new,
                "a request sent {l:?} after the commit was served the new run; a later one the old: {row}"
            );
        } else if new {
            assert_eq!(row["metrics"]["clicks"].as_i64(), Some(clicks + 1), "{row}");
            assert_ne!(row["computed_at"], before["rows"][0]["computed_at"]);
            lag = Some(sent);
        } else {
            assert!(
                sent < bound + SLACK,
                "a request sent {sent:?} after the new run committed got the old one (bound {bound:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lag = lag.expect("the new run is served");
    eprintln!(
        "new batch run served to a request sent {lag:?} after it committed (bound {bound:?})"
    );
}
