//! Redis Cluster: the speed layer on a three-master cluster, SIGKILLed three times during
//! a paced replay, ends with the same exact numbers as a speed layer on a single Redis
//! reading the same topics, and the serving layer answers identically on both.

use std::time::Duration;

use admetrics_tests::redis_cluster::RedisCluster;
use admetrics_tests::{TestEnv, check, days_of, free_port, get_json};

const ROWS: usize = 30_000;
const SPEED: u32 = 3000;

/// The API body without the fields that say when it was computed.
fn without_times(mut v: serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, _| k != "as_of" && k != "generated_at");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_speed_layer_on_redis_cluster_matches_single_redis() {
    let mut env = TestEnv::new(4).await;
    let cluster = RedisCluster::start(&env.state_dir.join("redis-cluster"), 3);
    let events = env.spawn_paced_replay(ROWS, SPEED);
    // Two speed layers in two consumer groups read the same topics: one into the
    // single Redis, one into the cluster.
    env.spawn("speed-single", "speed-layer", &["run"]);
    let on_cluster = vec![
        ("ADMETRICS__REDIS__CLUSTER_NODES", cluster.nodes_env()),
        (
            "ADMETRICS__SPEED__GROUP_ID",
            format!("{}-cluster", env.cfg.speed.group_id),
        ),
        ("ADMETRICS__KAFKA__GROUP_INSTANCE_ID", "cluster".to_owned()),
        // The BI path is the other test's subject; its journal must not be shared.
        ("ADMETRICS__CLICKHOUSE__ENABLED", "false".to_owned()),
        (
            "ADMETRICS__STATE_DIR",
            env.state_dir.join("on-cluster").display().to_string(),
        ),
        (
            "ADMETRICS__SPEED__METRICS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
    ];
    env.run_speed_with_kills("speed-cluster", &on_cluster, 3)
        .await;
    assert!(
        env.running("replay"),
        "the kills happened during the replay"
    );
    env.wait_replay_done(Duration::from_secs(180)).await;

    let mut cluster_cfg = env.cfg.clone();
    cluster_cfg.redis.cluster_nodes = cluster.nodes.iter().map(|n| n.as_str().into()).collect();
    for (cfg, name) in [(&env.cfg, "speed-single"), (&cluster_cfg, "speed-cluster")] {
        if let Err(e) =
            speed_layer::tools::status::wait_settled(cfg, Duration::from_secs(240)).await
        {
            panic!("{name}: {e}\n{}", env.log(name));
        }
    }
    let per_master = cluster.keys_per_master();
    assert!(
        per_master.iter().all(|n| *n > 0),
        "every master holds keys: {per_master:?}"
    );

    env.cfg.serving.rate_limit_per_second = 10_000;
    env.cfg.serving.rate_limit_burst = 10_000;
    env.start_server_as("serving-single").await;
    let single = env.api_base();
    let key = env.api_key(&["--internal"]).await;
    check::speed_matches_reference(&env, &key, &events).await;

    env.cfg.redis.cluster_nodes = cluster_cfg.redis.cluster_nodes.clone();
    env.cfg.serving.listen = format!("127.0.0.1:{}", free_port());
    env.start_server_as("serving-cluster").await;
    let clustered = env.api_base();
    check::speed_matches_reference(&env, &key, &events).await;

    // Every advertiser's answers, whole and by ad, are identical on both.
    let advertisers: std::collections::BTreeSet<i64> =
        events.iter().map(|e| e.advertiser_id).collect();
    let (first, last) = days_of(&events);
    // Advertiser-local days may start a day before or end a day after the UTC ones.
    let from = first.pred_opt().unwrap();
    let to = last.succ_opt().unwrap();
    for adv in &advertisers {
        for query in ["", "&group_by=ad", "&group_by=campaign"] {
            let path = format!("/v1/advertisers/{adv}/metrics?from={from}&to={to}{query}");
            let (s1, a) = get_json(&format!("{single}{path}"), Some(&key)).await;
            let (s2, b) = get_json(&format!("{clustered}{path}"), Some(&key)).await;
            assert_eq!((s1, s2), (200, 200), "{path}: {a} / {b}");
            assert_eq!(without_times(a), without_times(b), "{path}");
        }
    }
}
