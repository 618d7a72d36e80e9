//! Exactly-once results through crashes: the speed layer is SIGKILLed at random
//! moments of a paced replay of the data set (one instance restarted five times; two
//! instances in one group, one killed for good), and afterwards every advertiser, day
//! and ad in Redis equals the independent computation over the raw events.

use std::time::Duration;

use admetrics_tests::redis_server::RedisServer;
use admetrics_tests::{TestEnv, wait_until};
use rand::Rng;

const ROWS: usize = 30_000;
/// The slice spans about 66 hours of event time; at this factor it plays in ~80 s.
const SPEED: u32 = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_during_a_replay_loses_and_doubles_nothing() {
    let mut env = TestEnv::new(4).await;
    let events = env.spawn_paced_replay(ROWS, SPEED);
    // Kill while it processes: after it took its partitions, at a random moment.
    env.run_speed_with_kills("speed", &[], 5).await;
    assert!(
        env.running("replay"),
        "the kills happened during the replay (slow the replay down if this fails)"
    );
    env.wait_replay_done(Duration::from_secs(180)).await;
    env.settle_and_check(&events, &["speed", "replay"]).await;
}

// The killed instance is restarted with its static id, as a Kubernetes StatefulSet pod
// is: it takes its partitions back at once. The next test lets it stay dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_partitions_through_a_join_and_a_kill() {
    let mut env = TestEnv::new(4).await;
    let events = env.spawn_paced_replay(ROWS, SPEED);
    let mut rng = rand::rng();
    env.start_speed_as("speed-a");
    env.wait_partitions_taken("speed-a", 0).await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..4_000))).await;
    // b joins: the group rebalances and half of a's partitions move, state included.
    env.start_speed_as("speed-b");
    env.wait_partitions_taken("speed-b", 0).await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..4_000))).await;
    assert!(env.running("replay"), "the kill happens during the replay");
    let before = env.log_count("speed-a", "partition state loaded");
    env.kill("speed-a").await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_000))).await;
    env.start_speed_as("speed-a");
    env.wait_partitions_taken("speed-a", before).await;
    env.wait_replay_done(Duration::from_secs(180)).await;
    env.settle_and_check(&events, &["speed-a", "speed-b", "replay"])
        .await;
    assert!(
        env.log_count("speed-a", "partitions revoked") > 0,
        "a gave partitions away when b joined"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_instance_fails_over_to_the_survivor_with_exact_totals() {
    let mut env = TestEnv::new(4).await;
    let events = env.spawn_paced_replay(ROWS, SPEED);
    env.start_speed_as("speed-a");
    env.wait_partitions_taken("speed-a", 0).await;
    env.start_speed_as("speed-b");
    env.wait_partitions_taken("speed-b", 0).await;
    tokio::time::sleep(Duration::from_millis(
        rand::rng().random_range(1_000..4_000),
    ))
    .await;
    assert!(env.running("replay"), "the kill happens during the replay");
    let before = env.log_count("speed-b", "partition state loaded");
    env.kill("speed-a").await;
    // a stays dead: b takes its partitions once the broker expires a's session.
    let killed = std::time::Instant::now();
    admetrics_tests::wait_until(
        admetrics_tests::FAILOVER,
        "the survivor to take the dead member's partitions",
        || {
            let now = env.log_count("speed-b", "partition state loaded");
            async move { now > before }
        },
    )
    .await;
    eprintln!(
        "survivor owned the dead member's partitions {:?} after the kill",
        killed.elapsed()
    );
    env.wait_replay_done(Duration::from_secs(180)).await;
    env.settle_and_check(&events, &["speed-b", "replay"]).await;
    assert!(!env.running("speed-a"));
}

/// The product's Redis SIGKILLed mid-replay and restarted from its AOF 3 s later
/// (`redis-check-aof --fix` first, as the runbook says): the speed layer's flushes fail
/// and are retried until Redis answers again, nothing is half applied (each flush is one
/// script with its offsets), and the totals are exact. While Redis is down the
/// freshness alert (`SpeedLayerNotFresh`) and `ComponentDown` for Redis are what fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkilled_mid_replay_and_restarted_from_its_aof_leaves_totals_exact() {
    let mut env = TestEnv::new(2).await;
    let mut redis = RedisServer::start(&env.state_dir.join("redis"));
    env.cfg.redis.url = redis.url.as_str().into();
    let events = env.spawn_paced_replay(ROWS, SPEED);
    env.spawn("speed", "speed-layer", &["run"]);
    wait_until(
        Duration::from_secs(60),
        "a first flush into Redis",
        || async { env.speed_offsets_stored().await > 0 },
    )
    .await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let check = redis.restart_from_aof();
    assert!(
        env.running("replay"),
        "Redis died during the replay (check: {check})"
    );
    env.wait_replay_succeeded(Duration::from_secs(180)).await;
    env.settle_and_check(&events, &["speed", "replay"]).await;
    assert!(
        env.running("speed"),
        "the speed layer rode out the outage:\n{}",
        env.log("speed")
    );
    assert!(
        env.log_count("speed", "flush failed; retrying") > 0,
        "the outage was seen and retried"
    );
}
