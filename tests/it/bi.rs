//! The BI path on the real ClickHouse: after a replay of the data set (plus hand-made
//! consultation -> order -> payment chains, which the data set lacks), the detail
//! table holds every event exactly once, and every example query of `docs/bi.md`
//! answers what plain code computes from the raw events. ClickHouse down (whole, one
//! shard) and a full journal disk lose and double nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use admetrics_tests::clickhouse_shards::{CLUSTER, ClickHouseShards};
use admetrics_tests::tmpfs::Tmpfs;
use admetrics_tests::{TestEnv, clickhouse_query as ch_at, free_port, reference, wait_until};
use common::event::{DAY_MS, Event, EventKind, TopicKind};
use mysql_async::prelude::Queryable;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const ROWS: usize = 10_000;
/// Hand-made users; user `i` goes `i % 4 + 1` steps down the funnel.
const CHAIN_USERS: i64 = 24;

/// Runs `sql` on this test's ClickHouse database and returns the `data` rows.
async fn ch(env: &TestEnv, sql: &str) -> Vec<Value> {
    env.clickhouse(sql).await
}

/// A number from ClickHouse JSON (64-bit integers come quoted).
fn n(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The named query of `docs/bi.md`, with `{from}` and `{to}` filled in.
fn doc_query(name: &str, from: &str, to: &str) -> String {
    let doc = include_str!("../../docs/bi.md");
    let marker = format!("-- name: {name}\n");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/bi.md has no query {name}"))
        + marker.len();
    let end = start + doc[start..].find("```").expect("end of the SQL block");
    doc[start..end].replace("{from}", from).replace("{to}", to)
}

/// Consultation -> order -> payment chains after a click, on an ad of the slice.
fn chains(base: &Event<'_>, t0: i64) -> Vec<Event<'static>> {
    let mut out = Vec::new();
    for i in 0..CHAIN_USERS {
        let user = format!("bi-user-{i}");
        let ts = t0 + i * 1_000;
        let mk = |kind: EventKind, step: i64| Event {
            v: 1,
            kind,
            event_id: format!("bi-{i}-{step}").into(),
            ts: ts + step * 60_000,
            user_id: user.clone().into(),
            ad_id: (kind == EventKind::Click).then_some(base.ad_id.unwrap()),
            advertiser_id: base.advertiser_id,
            product_id: base.product_id,
            cost_micros: (kind == EventKind::Click).then_some(200_000),
            gmv_micros: (kind == EventKind::Payment).then_some(5_000_000 + i * 1_000),
        };
        let steps = [
            EventKind::Click,
            EventKind::Consultation,
            EventKind::Order,
            EventKind::Payment,
        ];
        for (step, kind) in steps.iter().enumerate().take((i % 4 + 1) as usize) {
            out.push(mk(*kind, step as i64));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_analyst_queries_of_docs_bi_md_answer_from_the_raw_events() {
    let mut env = TestEnv::new(2).await;
    env.cfg.clickhouse.batch_interval = Duration::from_secs(1);
    let r = env.replay(ROWS).await;
    // The chains start at the slice's last click, so they are the newest traffic.
    let base = r
        .events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::Click)
        .unwrap()
        .clone();
    let extra = chains(&base, base.ts - 10 * 60_000);
    let producer: FutureProducer = platform::kafka::producer_config(&env.cfg.kafka)
        .create()
        .unwrap();
    for e in &extra {
        let topic = env.cfg.kafka.topic(e.kind.topic());
        producer
            .send(
                FutureRecord::to(topic)
                    .key(e.user_id.as_bytes())
                    .payload(&e.to_json()),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let mut events = r.events.clone();
    events.extend(extra);
    env.spawn("speed", "speed-layer", &["run"]);
    if let Err(e) =
        speed_layer::tools::status::wait_settled(&env.cfg, Duration::from_secs(180)).await
    {
        panic!("{e}\n{}", env.log("speed"));
    }
    let unique: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_ref()).collect();
    wait_until(
        Duration::from_secs(60),
        "every event in ClickHouse",
        || async {
            let rows = ch(&env, "SELECT count() AS c FROM events FINAL").await;
            rows.first()
                .is_some_and(|r| n(&r["c"]) as usize >= unique.len())
        },
    )
    .await;
    let rows = ch(
        &env,
        "SELECT count() AS c, uniqExact(event_id) AS u FROM events FINAL",
    )
    .await;
    assert_eq!(n(&rows[0]["c"]) as usize, unique.len(), "one row per event");
    assert_eq!(n(&rows[0]["u"]) as usize, unique.len());

    let day = |ts: i64| common::day::date_of(ts.div_euclid(DAY_MS) as i32).to_string();
    let from = day(events.iter().map(|e| e.ts).min().unwrap());
    let to = day(events.iter().map(|e| e.ts).max().unwrap());
    let expected = reference::compute(&events);

    // Daily metrics from the rollup: every (day, advertiser, ad) exactly.
    let got = ch(&env, &doc_query("daily_metrics", &from, &to)).await;
    let mut got_keys = BTreeSet::new();
    for row in &got {
        let adv = n(&row["advertiser_id"]) as i64;
        let ad = n(&row["ad_id"]) as i64;
        let d = common::day::day_num(common::day::parse_date(row["day"].as_str().unwrap()).unwrap())
            as i64;
        let want = expected.get(&(adv, d, ad)).cloned().unwrap_or_default();
        let effect = |name: &str| want.effects.get(name).copied().unwrap_or(0) as f64;
        let ctx = format!("{} adv {adv} ad {ad}", row["day"]);
        assert_eq!(n(&row["clicks"]), want.clicks as f64, "{ctx}");
        assert_eq!(n(&row["cost_micros"]), want.cost_micros as f64, "{ctx}");
        assert_eq!(n(&row["exposures"]), want.exposures as f64, "{ctx}");
        for m in ["orders_direct", "orders_indirect", "orders_unattributed"] {
            assert_eq!(n(&row[m]), effect(m), "{ctx} {m}");
        }
        assert_eq!(
            n(&row["payments_attributed"]),
            effect("payments_direct") + effect("payments_indirect"),
            "{ctx}"
        );
        assert_eq!(
            n(&row["gmv_micros_attributed"]),
            effect("gmv_micros_direct") + effect("gmv_micros_indirect"),
            "{ctx}"
        );
        got_keys.insert((adv, d, ad));
    }
    let want_keys: BTreeSet<(i64, i64, i64)> = expected.keys().copied().collect();
    assert_eq!(got_keys, want_keys, "the rollup has one row per ad-day");

    // Funnel: the deepest step per (user, advertiser), as windowFunnel defines it.
    let got: BTreeMap<i64, i64> = ch(&env, &doc_query("funnel", &from, &to))
        .await
        .iter()
        .map(|r| (n(&r["level"]) as i64, n(&r["users"]) as i64))
        .collect();
    assert_eq!(got, funnel_levels(&events), "funnel");
    assert!(got.get(&4).copied().unwrap_or(0) >= CHAIN_USERS / 4);

    // 7-day retention of converting users.
    let got: Vec<(String, i64, i64)> = ch(&env, &doc_query("retention_7d", &from, &to))
        .await
        .iter()
        .map(|r| {
            (
                r["first_order_day"].as_str().unwrap().to_owned(),
                n(&r["converters"]) as i64,
                n(&r["retained_7d"]) as i64,
            )
        })
        .collect();
    assert_eq!(got, retention(&events), "retention");
    assert!(!got.is_empty());

    // Top categories by ROAS, with categories from the dimension tables.
    let got: Vec<(i64, i64, i64)> = ch(&env, &doc_query("top_categories_by_roas", &from, &to))
        .await
        .iter()
        .map(|r| {
            (
                n(&r["category_id"]) as i64,
                n(&r["cost_micros"]) as i64,
                n(&r["gmv_micros_attributed"]) as i64,
            )
        })
        .collect();
    assert_eq!(got, top_categories(&env, &events).await, "top categories");
    assert!(got[0].2 > 0, "the chains' category leads");
}

/// windowFunnel(86400) over (user, advertiser): events by (second, step), a chain
/// starts at a click and each next step must come within 24 h of its chain's start.
fn funnel_levels(events: &[Event<'_>]) -> BTreeMap<i64, i64> {
    let mut by_user: HashMap<(&str, i64), Vec<(i64, usize)>> = HashMap::new();
    let mut seen = BTreeSet::new();
    for e in events {
        if !seen.insert(e.event_id.as_ref()) {
            continue;
        }
        let step = match e.kind {
            EventKind::Click => Some(0),
            EventKind::Consultation => Some(1),
            EventKind::Order => Some(2),
            EventKind::Payment => Some(3),
            _ => None,
        };
        let list = by_user
            .entry((e.user_id.as_ref(), e.advertiser_id))
            .or_default();
        if let Some(s) = step {
            list.push((e.ts.div_euclid(1_000), s));
        }
    }
    let mut out = BTreeMap::new();
    for (_, mut list) in by_user {
        list.sort_unstable();
        let mut start: [Option<i64>; 4] = [None; 4];
        for (t, s) in list {
            if s == 0 {
                start[0] = Some(t);
            } else if let Some(s0) = start[s - 1].filter(|s0| t <= s0 + 86_400) {
                start[s] = Some(s0);
            }
        }
        let level = start.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
        *out.entry(level as i64).or_insert(0) += 1;
    }
    out
}

/// Users by the day of their first order, and those with any event in the 7 days after.
fn retention(events: &[Event<'_>]) -> Vec<(String, i64, i64)> {
    let mut days: HashMap<&str, (Option<i64>, BTreeSet<i64>)> = HashMap::new();
    for e in events {
        let d = e.ts.div_euclid(DAY_MS);
        let x = days.entry(e.user_id.as_ref()).or_default();
        x.1.insert(d);
        if e.kind == EventKind::Order {
            x.0 = Some(x.0.map_or(d, |f: i64| f.min(d)));
        }
    }
    let mut out: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (first, all) in days.values() {
        if let Some(f) = first {
            let x = out.entry(*f).or_default();
            x.0 += 1;
            x.1 += i64::from(all.range(f + 1..=f + 7).next().is_some());
        }
    }
    out.into_iter()
        .map(|(d, (c, r))| (common::day::date_of(d as i32).to_string(), c, r))
        .collect()
}

/// Cost and attributed GMV per product category, top 10 by ROAS then category.
async fn top_categories(env: &TestEnv, events: &[Event<'_>]) -> Vec<(i64, i64, i64)> {
    let pool = env.mysql();
    let mut c = pool.get_conn().await.unwrap();
    let product_category: HashMap<i64, i64> = c
        .query("SELECT product_id, category_id FROM products")
        .await
        .unwrap()
        .into_iter()
        .collect();
    let ad_product: HashMap<i64, i64> = c
        .query("SELECT ad_id, product_id FROM ads")
        .await
        .unwrap()
        .into_iter()
        .collect();
    drop(c);
    pool.disconnect().await.ok();
    // Attributed payments: those the reference credits to an ad.
    let attributed_gmv: i64 = reference::compute(events)
        .iter()
        .filter(|((_, _, ad), _)| *ad != 0)
        .map(|(_, x)| {
            x.effects.get("gmv_micros_direct").copied().unwrap_or(0)
                + x.effects.get("gmv_micros_indirect").copied().unwrap_or(0)
        })
        .sum();
    let mut per: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for e in events {
        if !seen.insert(e.event_id.as_ref()) {
            continue;
        }
        let product = match e.kind {
            EventKind::Click => ad_product.get(&e.ad_id.unwrap()).copied(),
            EventKind::Payment => e.product_id,
            _ => None,
        };
        let Some(cat) = product.and_then(|p| product_category.get(&p)).copied() else {
            continue;
        };
        let x = per.entry(cat).or_default();
        x.0 += e.cost_micros.unwrap_or(0);
        x.1 += e.gmv_micros.unwrap_or(0);
    }
    // Every payment of the test is attributed (each chain starts with its click).
    let total: i64 = per.values().map(|x| x.1).sum();
    assert_eq!(total, attributed_gmv, "all GMV of the test is attributed");
    let mut rows: Vec<(i64, i64, i64)> = per
        .into_iter()
        .filter(|(_, (cost, _))| *cost > 0)
        .map(|(cat, (cost, gmv))| (cat, cost, gmv))
        .collect();
    rows.sort_by(|a, b| {
        let ra = a.2 as f64 / a.1 as f64;
        let rb = b.2 as f64 / b.1 as f64;
        rb.total_cmp(&ra).then(a.0.cmp(&b.0))
    });
    rows.truncate(10);
    rows
}

/// A ClickHouse server of this test's own (the shared one keeps serving the other
/// tests), on free ports, with its data under the test's state directory so that a
/// restart finds it again.
struct OwnClickHouse {
    config: std::path::PathBuf,
    http_port: u16,
    child: Option<tokio::process::Child>,
}

impl OwnClickHouse {
    fn new(env: &TestEnv) -> OwnClickHouse {
        let state = env.state_dir.join("ch");
        std::fs::create_dir_all(state.join("logs")).unwrap();
        std::fs::create_dir_all(state.join("clickhouse")).unwrap();
        let http_port = admetrics_tests::free_port();
        let template = include_str!("../../deploy/local/clickhouse.xml");
        let config = state.join("config.xml");
        std::fs::write(
            &config,
            template
                .replace("@STATE@", state.to_str().unwrap())
                .replace("@HTTP_PORT@", &http_port.to_string())
                .replace("@TCP_PORT@", &admetrics_tests::free_port().to_string()),
        )
        .unwrap();
        OwnClickHouse {
            config,
            http_port,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    async fn start(&mut self) {
        let child = tokio::process::Command::new("clickhouse-server")
            .arg(format!("--config-file={}", self.config.display()))
            .current_dir(self.config.parent().unwrap())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("clickhouse-server (deploy/local/up.sh installs it)");
        self.child = Some(child);
        let ping = format!("{}/ping", self.url());
        wait_until(Duration::from_secs(60), "own ClickHouse", || async {
            reqwest::get(&ping)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.ok();
        }
    }
}

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_past_the_retries_spills_and_replay_spill_loads_every_event_once() {
    let mut env = TestEnv::new(2).await;
    let mut own = OwnClickHouse::new(&env);
    own.start().await;
    env.cfg.clickhouse.url = own.url();
    env.cfg.clickhouse.batch_interval = Duration::from_millis(500);
    env.cfg.clickhouse.max_attempts = 2;
    env.cfg.clickhouse.retry_min_delay = Duration::from_millis(100);
    env.cfg.clickhouse.retry_max_delay = Duration::from_millis(200);
    speed_layer::clickhouse_sink::migrate(&env.cfg.clickhouse)
        .await
        .expect("schema on the own server");
    env.spawn("speed", "speed-layer", &["run"]);
    // A paced replay (~25 s) with ClickHouse gone in the middle of it: once the sink
    // has written rows (the speed layer is consuming), whatever the machine's load.
    let events = env.spawn_paced_replay(4_000, 10_000);
    env.wait_partitions_taken("speed", 0).await;
    wait_until(
        Duration::from_secs(60),
        "detail rows in ClickHouse",
        || async {
            ch(&env, "SELECT count() AS c FROM events")
                .await
                .first()
                .is_some_and(|r| n(&r["c"]) > 0.0)
        },
    )
    .await;
    assert!(
        env.running("replay"),
        "ClickHouse goes away during the replay"
    );
    own.kill().await;
    let spill = env.state_dir.join("clickhouse/spill");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while files_in(&spill) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no batch spilled 60 s after ClickHouse went away:\n{}",
            env.log("speed")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    own.start().await;
    env.wait_replay_done(Duration::from_secs(120)).await;
    if let Err(e) =
        speed_layer::tools::status::wait_settled(&env.cfg, Duration::from_secs(120)).await
    {
        panic!("{e}\n{}", env.log("speed"));
    }
    // The sink has written what came after the restart; the spilled batches wait.
    env.terminate("speed", Duration::from_secs(30)).await;
    let spilled = files_in(&spill);
    assert!(
        spilled > 0,
        "batches were spilled while ClickHouse was down"
    );
    let out = env
        .run("speed-layer", &["replay-spill"])
        .await
        .expect("replay-spill");
    assert_eq!(
        files_in(&spill),
        0,
        "every spilled file is deleted once written: {out}"
    );
    let rows = ch(
        &env,
        "SELECT count() AS c, uniqExact(event_id) AS u FROM events FINAL",
    )
    .await;
    assert_eq!(
        n(&rows[0]["u"]) as usize,
        events.len(),
        "every event is in ClickHouse"
    );
    assert_eq!(n(&rows[0]["c"]) as usize, events.len(), "exactly once");
}

/// `table FINAL` on the server at `url` holds exactly one row for each of `events`
/// events (distinct `event_id`s and rows both equal it).
async fn assert_each_event_once(url: &str, db: &str, table: &str, events: usize) {
    let sql = format!("SELECT count() AS c, uniqExact(event_id) AS u FROM {table} FINAL");
    let all = ch_at(url, db, &sql).await;
    assert_eq!(n(&all[0]["u"]) as usize, events, "every event in {table}");
    assert_eq!(
        n(&all[0]["c"]) as usize,
        events,
        "exactly one row per event in {table}"
    );
}

/// Per (day, advertiser, ad): every rollup measure summed, and the merged uniq UV.
async fn rollups(url: &str, db: &str, suffix: &str) -> BTreeMap<String, (Vec<i64>, f64)> {
    let names: Vec<&str> = common::counters::Measure::ALL
        .iter()
        .map(|m| m.name())
        .collect();
    let sums: Vec<String> = names
        .iter()
        .map(|m| format!("toInt64(sum({m})) AS {m}"))
        .collect();
    let rows = ch_at(
        url,
        db,
        &format!(
            "SELECT toString(day) AS d, advertiser_id AS a, ad_id AS ad, {} FROM daily_ad{suffix} GROUP BY d, a, ad",
            sums.join(", ")
        ),
    )
    .await;
    let uv = ch_at(
        url,
        db,
        &format!("SELECT toString(day) AS d, advertiser_id AS a, ad_id AS ad, uniqMerge(uv) AS uv FROM daily_ad_uv{suffix} GROUP BY d, a, ad"),
    )
    .await;
    let key = |r: &Value| format!("{} {} {}", r["d"], r["a"], r["ad"]);
    let mut out: BTreeMap<String, (Vec<i64>, f64)> = rows
        .iter()
        .map(|r| {
            (
                key(r),
                (names.iter().map(|m| n(&r[*m]) as i64).collect(), 0.0),
            )
        })
        .collect();
    for r in &uv {
        out.entry(key(r)).or_default().1 = n(&r["uv"]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clickhouse_shards_hold_every_event_once_with_the_same_rollups_as_one_server() {
    let mut env = TestEnv::new(4).await;
    let shards = ClickHouseShards::start(&env.state_dir.join("ch-shards"), 2);
    env.cfg.clickhouse.batch_interval = Duration::from_secs(1);
    let mut sharded = env.cfg.clickhouse.clone();
    sharded.shards = shards.urls.clone();
    sharded.cluster = CLUSTER.into();
    let r = env.replay(ROWS).await;
    let events = r.events;
    // Two speed layers read the same topics: one into the shared server, one into the
    // shards (its own consumer group, Redis prefix and state directory).
    env.spawn("speed-single", "speed-layer", &["run"]);
    let sharded_state = env.state_dir.join("sharded");
    env.spawn_with_env(
        "speed-sharded",
        "speed-layer",
        &["run"],
        &[
            (
                "ADMETRICS__CLICKHOUSE__SHARDS",
                serde_json::to_string(&shards.urls).unwrap(),
            ),
            ("ADMETRICS__CLICKHOUSE__CLUSTER", CLUSTER.to_owned()),
            (
                "ADMETRICS__SPEED__GROUP_ID",
                format!("{}-sharded", env.cfg.speed.group_id),
            ),
            (
                "ADMETRICS__REDIS__KEY_PREFIX",
                format!("{}s", env.cfg.redis.key_prefix),
            ),
            ("ADMETRICS__STATE_DIR", sharded_state.display().to_string()),
            ("ADMETRICS__KAFKA__GROUP_INSTANCE_ID", "sharded".to_owned()),
            (
                "ADMETRICS__SPEED__METRICS_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
        ],
    );
    let db = env.cfg.clickhouse.database.clone();
    let (single_url, shard0) = (env.cfg.clickhouse.url.clone(), shards.urls[0].clone());
    let total = |url: String, table: &'static str| {
        let db = db.clone();
        async move {
            let rows = ch_at(&url, &db, &format!("SELECT count() AS c FROM {table}")).await;
            rows.first().map_or(0, |r| n(&r["c"]) as usize)
        }
    };
    let what = format!("{} rows in both ClickHouse paths", events.len());
    wait_until(Duration::from_secs(180), &what, || {
        let (a, b) = (
            total(single_url.clone(), "events"),
            total(shard0.clone(), "events_all"),
        );
        let want = events.len();
        async move { a.await >= want && b.await >= want }
    })
    .await;

    // Exactly one row per event, through the Distributed table with FINAL.
    assert_each_event_once(&shard0, &db, "events_all", events.len()).await;
    // Each shard holds the events whose sipHash64(event_id) % 2 is its number, which is
    // also the Distributed table's sharding key.
    for (i, url) in shards.urls.iter().enumerate() {
        let rows = ch_at(
            url,
            &db,
            &format!("SELECT count() AS c, countIf(sipHash64(event_id) % 2 != {i}) AS wrong FROM events FINAL"),
        )
        .await;
        assert!(n(&rows[0]["c"]) > 0.0, "shard {i} holds events");
        assert_eq!(
            n(&rows[0]["wrong"]),
            0.0,
            "shard {i} holds only its own events"
        );
    }
    // The rollups over the shards equal the single server's.
    let one = rollups(&single_url, &db, "").await;
    let two = rollups(&shard0, &db, "_all").await;
    assert!(one.len() > 100, "the rollups cover the data set");
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        two.keys().collect::<Vec<_>>()
    );
    for (k, (sums, uv)) in &one {
        let (sums2, uv2) = &two[k];
        assert_eq!(sums, sums2, "{k}: rollup sums");
        assert!(
            (uv - uv2).abs() <= (uv * 0.02).max(1.0),
            "{k}: uv {uv} vs {uv2}"
        );
    }
}

/// Lines (rows) of every file in `dir`.
fn rows_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .map(|f| rowbinary_rows(&std::fs::read(f.path()).unwrap_or_default()).len())
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_is_down_spills_only_its_own_rows_and_replay_spill_loads_them() {
    let mut env = TestEnv::new(2).await;
    let mut shards = ClickHouseShards::start(&env.state_dir.join("ch-shards"), 2);
    let c = &mut env.cfg.clickhouse;
    c.shards = shards.urls.clone();
    c.cluster = CLUSTER.into();
    c.batch_interval = Duration::from_millis(500);
    c.max_attempts = 2;
    c.retry_min_delay = Duration::from_millis(100);
    c.retry_max_delay = Duration::from_millis(200);
    env.spawn("speed", "speed-layer", &["run"]);
    env.wait_partitions_taken("speed", 0).await; // schema created on both shards
    shards.kill_server(1);
    let events = env.replay(4_000).await.events;
    if let Err(e) =
        speed_layer::tools::status::wait_settled(&env.cfg, Duration::from_secs(120)).await
    {
        panic!("{e}\n{}", env.log("speed"));
    }
    let of_shard = |i: usize| {
        events
            .iter()
            .filter(|e| speed_layer::clickhouse_sink::shard_of(&e.event_id, 2) == i)
            .count()
    };
    let (want0, want1) = (of_shard(0), of_shard(1));
    assert!(want0 > 0 && want1 > 0, "both shards get rows");
    let state_dir = env.state_dir.clone();
    let spill = |i: usize| state_dir.join(format!("clickhouse/shard-{i}/spill"));
    let (db, url0) = (env.cfg.clickhouse.database.clone(), shards.urls[0].clone());
    wait_until(
        Duration::from_secs(90),
        "shard 0 written and shard 1 spilled",
        || {
            let (spilled, db, url0) = (rows_in(&spill(1)), db.clone(), url0.clone());
            async move {
                let rows = ch_at(&url0, &db, "SELECT count() AS c FROM events").await;
                spilled == want1 && n(&rows[0]["c"]) as usize == want0
            }
        },
    )
    .await;
    assert_eq!(files_in(&spill(0)), 0, "the healthy shard spilled nothing");

    env.terminate("speed", Duration::from_secs(30)).await;
    shards.start_server(1);
    let out = env
        .run("speed-layer", &["replay-spill"])
        .await
        .expect("replay-spill");
    assert_eq!(
        files_in(&spill(1)),
        0,
        "spilled files loaded and deleted: {out}"
    );
    assert_each_event_once(&url0, &db, "events_all", events.len()).await;
}

/// (kind, partition, offset) of each whole row of a journal or spill file, decoded here
/// from the columns of `deploy/sql/clickhouse.sql` (RowBinary: a `String` is its
/// LEB128 length and bytes; integers little-endian), not with the sink's reader. A
/// torn last row (the write that failed) is not a row.
fn rowbinary_rows(mut b: &[u8]) -> Vec<(String, i32, i64)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn string(b: &mut &[u8]) -> Option<String> {
        let (mut len, mut shift) = (0_usize, 0);
        loop {
            let byte = take(b, 1)?[0];
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        Some(String::from_utf8(take(b, len)?.to_vec()).expect("UTF-8"))
    }
    fn row(b: &mut &[u8]) -> Option<(String, i32, i64)> {
        string(b)?; // event_id
        let kind = string(b)?;
        take(b, 8 + 4 + 2)?; // ts_ms, event_time, day
        string(b)?; // user_id
        take(b, 7 * 8)?; // advertiser, campaign, ad, product, category, cost, gmv
        string(b)?; // attribution
        take(b, 8)?; // click_ts_ms
        let partition = i32::from_le_bytes(take(b, 4)?.try_into().unwrap());
        let offset = i64::from_le_bytes(take(b, 8)?.try_into().unwrap());
        take(b, 8)?; // version
        Some((kind, partition, offset))
    }
    let mut out = Vec::new();
    while let Some(r) = row(&mut b) {
        out.push(r);
    }
    out
}

/// (topic, partition, offset) of every whole row of the journal files in `dir`.
fn journaled_positions(dir: &std::path::Path) -> BTreeSet<(TopicKind, i32, i64)> {
    let mut out = BTreeSet::new();
    for f in std::fs::read_dir(dir).expect("journal directory").flatten() {
        let bytes = std::fs::read(f.path()).expect("journal file");
        for (kind, partition, offset) in rowbinary_rows(&bytes) {
            let kind = EventKind::parse(&kind).expect("a kind");
            out.insert((kind.topic(), partition, offset));
        }
    }
    out
}

/// The speed layer's ClickHouse journal on a disk that fills up during a paced replay
/// (a 512 KiB tmpfs at the instance's `<state_dir>/clickhouse`, ClickHouse up): the
/// failed journal write stops the speed layer at its partitions' next barrier, before
/// they store offsets for rows that are not on disk, and it exits non-zero naming the
/// journal file and "No space left on device". With room again (the tmpfs remounted
/// bigger), a restart leaves Redis exact and ClickHouse `FINAL` with every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_disk_stops_the_speed_layer_before_it_stores_unjournaled_offsets_and_loses_nothing()
 {
    // About 26 s of replay at this pace; the journal (RowBinary, some 120 bytes a row)
    // grows by some 50 KB/s and the disk is full after about 4 000 rows.
    const ROWS: usize = 10_000;
    const SPEED: u32 = 3_000;
    let mut env = TestEnv::new(2).await;
    // No batch is sealed (and deleted once inserted) while the disk fills: the journal
    // only grows, and the disk is full within its first batch.
    env.cfg.clickhouse.batch_rows = 10_000_000;
    env.cfg.clickhouse.batch_interval = Duration::from_secs(3_600);
    let sink_dir = env.state_dir.join("speed/clickhouse");
    let journal = sink_dir.join("journal");
    let disk = Tmpfs::mount(&sink_dir, "512k");
    let events = env.spawn_paced_replay(ROWS, SPEED);
    let span = events.last().unwrap().ts - events.first().unwrap().ts;
    let replay = Duration::from_millis(u64::try_from(span).unwrap() / u64::from(SPEED));
    env.start_speed_as("speed");

    // 512 KiB of rows arrives well within the replay.
    wait_until(
        replay + Duration::from_secs(30),
        "the journal write to fail for the full disk",
        || {
            let n = env.log_count("speed", "ClickHouse journal write failed");
            async move { n > 0 }
        },
    )
    .await;
    let failed = std::time::Instant::now();
    // Each partition's next flush (every `speed.min_flush_interval` while events
    // arrive) meets the failed barrier and stops; the drain is bounded by
    // `speed.shutdown_timeout`.
    let s = &env.cfg.speed;
    let bound = s.min_flush_interval.max(s.early_fire_interval) + s.shutdown_timeout;
    wait_until(bound, "the speed layer to stop", || {
        let running = env.running("speed");
        async move { !running }
    })
    .await;
    let stopped_in = failed.elapsed();
    assert!(
        env.running("replay"),
        "the speed layer stopped while events were still coming"
    );
    assert!(
        env.exit_status("speed").is_some_and(|s| !s.success()),
        "the speed layer exits non-zero (a supervisor restarts it)"
    );
    let why = env.exit_error("speed");
    assert!(
        why.contains("No space left on device") && why.contains(journal.to_str().unwrap()),
        "the exit error says the disk is full and where:\n{why}"
    );

    // Nothing acknowledged exists only in memory: every message below the offsets
    // stored in Redis has its row in the journal on the full disk (or in ClickHouse).
    let stored = env.speed_next_offsets().await;
    let mut on_disk = journaled_positions(&journal);
    for r in ch(
        &env,
        "SELECT kind, kafka_partition, kafka_offset FROM events",
    )
    .await
    {
        let kind = EventKind::parse(r["kind"].as_str().unwrap()).unwrap();
        on_disk.insert((
            kind.topic(),
            n(&r["kafka_partition"]) as i32,
            n(&r["kafka_offset"]) as i64,
        ));
    }
    let mut acknowledged = 0;
    for (&(topic, p), &next) in &stored {
        let missing: Vec<i64> = (0..next)
            .filter(|o| !on_disk.contains(&(topic, p, *o)))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "{topic:?}/{p}: offsets {missing:?} are stored in Redis (next {next}) but their rows are not on disk"
        );
        acknowledged += next;
    }
    assert!(
        acknowledged > 0,
        "flushes stored offsets before the disk filled (else the check above checks nothing)"
    );
    assert!(
        acknowledged < events.len() as i64,
        "the speed layer stopped before it had acknowledged everything"
    );
    eprintln!(
        "journal full: stopped {:.1} s after the failed write; {acknowledged} of {} events acknowledged, all {} journaled rows whole",
        stopped_in.as_secs_f64(),
        events.len(),
        on_disk.len()
    );

    // Room again: the restart recovers the journal and consumes from the stored offsets.
    disk.resize("64m");
    env.cfg.clickhouse.batch_rows = 10_000;
    env.cfg.clickhouse.batch_interval = Duration::from_millis(500);
    env.start_speed_as("speed");
    env.wait_replay_succeeded(Duration::from_secs(180)).await;
    env.settle_and_check(&events, &["speed", "replay"]).await;
    // The drain inserts the last batch.
    env.terminate("speed", Duration::from_secs(60)).await;
    let (url, db) = (&env.cfg.clickhouse.url, &env.cfg.clickhouse.database);
    assert_each_event_once(url, db, "events", events.len()).await;
    assert_eq!(
        files_in(&sink_dir.join("spill")),
        0,
        "nothing spilled: the recovered journal's torn row was cut, not sent as a bad file"
    );
}
