//! The Kafka broker SIGKILLed and restarted mid-replay: a private single-node broker
//! (never the shared one the other tests use) dies while the replay produces into it
//! and the speed layer and the archiver consume from it, stays dead a few seconds and
//! comes back on the same data. The replay (idempotent producer, `acks=all`)
//! completes, the speed layer's totals equal the independent computation, and the
//! archive holds every event exactly once.

use std::time::{Duration, Instant};

use admetrics_tests::kafka_broker::KafkaBroker;
use admetrics_tests::{TestEnv, archive, wait_until};
use rand::Rng;

const ROWS: usize = 30_000;
/// The slice spans about 72 hours of event time; at this factor it plays in ~86 s.
const SPEED: u32 = 3000;
/// How long the broker stays dead before it is started again. The replay's producer
/// holds its messages up to `message.timeout.ms` (60 s, `platform::kafka::producer_config`)
/// across the outage and the broker's restart.
const DEAD: Duration = Duration::from_secs(5);
/// How long consumers may take to consume again once the broker answers: librdkafka
/// reconnects within `reconnect.backoff.max.ms` (10 s), and a member whose session
/// (`session.timeout.ms`, 10 s) lapsed during the outage rejoins the group.
const RESUME: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_broker_restarted_mid_replay_loses_and_doubles_nothing() {
    let mut broker = KafkaBroker::start().await;
    let mut env = TestEnv::with_brokers(4, &broker.brokers).await;
    env.cfg.batch.archive_max_rows = 2_000;
    env.cfg.batch.archive_max_age = Duration::from_millis(300);
    let dir = env.state_dir.join("archive");
    let events = env.spawn_paced_replay(ROWS, SPEED);
    env.spawn("speed", "speed-layer", &["run"]);
    env.start_archiver();
    env.wait_partitions_taken("speed", 0).await;
    wait_until(
        Duration::from_secs(60),
        "the archiver and the speed layer to write",
        || async { archive::rows(&dir) > 0 && env.speed_offsets_stored().await > 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(
        rand::rng().random_range(1_000..4_000),
    ))
    .await;
    assert!(env.running("replay"), "the broker dies during the replay");
    broker.kill().await;
    let killed = Instant::now();
    tokio::time::sleep(DEAD).await;
    assert!(
        env.running("replay"),
        "the replay waits for the broker:\n{}",
        env.log("replay")
    );
    broker.restart().await;
    let outage = killed.elapsed();
    let back = Instant::now();
    eprintln!("broker outage {outage:?} (dead {DEAD:?}, then restarted until it answered)");
    let stored = env.speed_offsets_stored().await;
    wait_until(RESUME, "the speed layer to consume again", || async {
        env.speed_offsets_stored().await > stored
    })
    .await;
    eprintln!(
        "speed layer consuming again {:?} after the broker answered",
        back.elapsed()
    );
    // The archiver rides out the outage, or, when librdkafka declared its consumer
    // fatally fenced (a static member fenced by its own rejoin after the session
    // expired during the outage; librdkafka requires a new consumer then), it exits
    // saying so and is started again, as its Deployment would. The fencing can come
    // up to a session timeout after the broker answers, so this is checked while
    // waiting, not once. Any other exit fails.
    let mut archiver_restarted = restart_if_fenced(&mut env);
    let archived = archive::rows(&dir);
    let deadline = Instant::now() + RESUME;
    while archive::rows(&dir) <= archived {
        archiver_restarted |= restart_if_fenced(&mut env);
        assert!(
            Instant::now() < deadline,
            "timed out after {RESUME:?} waiting for the archiver to archive again:\n{}",
            env.log("archiver")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "archiver archiving again {:?} after the broker answered{}",
        back.elapsed(),
        if archiver_restarted {
            " (it had exited on a fatal consumer error and was started again)"
        } else {
            ""
        }
    );
    env.wait_replay_succeeded(Duration::from_secs(180)).await;
    let want = i64::try_from(events.len()).expect("event count");
    let deadline = Instant::now() + Duration::from_secs(120);
    while archive::rows(&dir) < want {
        restart_if_fenced(&mut env);
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {want} rows in the archive ({}):\n{}",
            archive::rows(&dir),
            env.log("archiver")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Whatever is still to come would be a duplicate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    archive::assert_exactly_once(&dir, &events, "a broker SIGKILL and restart");
    env.settle_and_check(&events, &["speed", "replay"]).await;
    assert!(
        env.running("speed"),
        "the speed layer survived the outage:\n{}",
        env.log("speed")
    );
    assert!(
        env.running("archiver"),
        "the archiver survived the outage:\n{}",
        env.log("archiver")
    );
}

/// Starts the archiver again when it has exited on librdkafka's fatal fencing of a
/// static member (see the test); returns whether it did. Any other exit fails.
fn restart_if_fenced(env: &mut TestEnv) -> bool {
    if env.running("archiver") {
        return false;
    }
    let error = env.exit_error("archiver");
    assert!(
        error.contains("fatal Kafka consumer error"),
        "the archiver exited during the outage for another reason than a fatal consumer error:\n{error}"
    );
    eprintln!("the archiver exited on a fatal consumer error; starting it again:\n{error}");
    env.start_archiver();
    true
}
