//! Consumer groups on the real broker during a paced replay of the data set: one of
//! two archivers SIGKILLed for good fails over to the other with every event archived
//! exactly once, and a second speed-layer instance that joins and gracefully leaves
//! the group ten times leaves every total exact.

use std::path::Path;
use std::time::{Duration, Instant};

use admetrics_tests::{FAILOVER, TestEnv, archive, wait_until};
use rand::Rng;

const ROWS: usize = 30_000;
/// The slice spans about 72 hours of event time; at this factor it plays in ~86 s.
const SPEED: u32 = 3000;

/// Rows of the archive files of `parts` ((topic, partition), from the file paths
/// `topic=<topic>/.../p<PPP>-...`), footers only.
fn rows_of(dir: &Path, parts: &[(String, i32)]) -> i64 {
    archive::files(dir)
        .iter()
        .filter(|f| {
            let path = f.to_string_lossy();
            let partition = f
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix('p'))
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<i32>().ok());
            parts
                .iter()
                .any(|(t, p)| path.contains(&format!("topic={t}/")) && partition == Some(*p))
        })
        .filter_map(|f| std::fs::File::open(f).ok())
        .filter_map(|f| {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).ok()
        })
        .map(|b| b.metadata().file_metadata().num_rows())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_archiver_fails_over_to_the_survivor_with_every_event_once() {
    let mut env = TestEnv::new(4).await;
    env.cfg.batch.archive_max_rows = 2_000;
    env.cfg.batch.archive_max_age = Duration::from_millis(300);
    let all_parts = 2 * usize::try_from(env.cfg.kafka.partitions).expect("partitions");
    let dir = env.state_dir.join("archive");
    let events = env.spawn_paced_replay(ROWS, SPEED);
    env.start_archiver_as("archiver-a");
    wait_until(FAILOVER, "archiver-a to be assigned partitions", || {
        let n = env.archiver_assignments("archiver-a");
        async move { n > 0 }
    })
    .await;
    // b joins: the group rebalances and a keeps half of the partitions.
    env.start_archiver_as("archiver-b");
    wait_until(FAILOVER, "archiver-b to be assigned partitions", || {
        let n = env.archiver_assignments("archiver-b");
        async move { n > 0 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(
        rand::rng().random_range(1_000..4_000),
    ))
    .await;
    let a_parts = env.archiver_partitions("archiver-a");
    assert!(
        !a_parts.is_empty() && a_parts.len() < all_parts,
        "a owns a share of the partitions: {a_parts:?}\n{}",
        env.log("archiver-a")
    );
    // Kill a while it works: at a random moment of its flush cycle (every 500 ms) after
    // it uploaded a file, with the replay feeding it.
    let a_rows = rows_of(&dir, &a_parts);
    wait_until(
        Duration::from_secs(10),
        "archiver-a to upload a file",
        || {
            let n = rows_of(&dir, &a_parts);
            async move { n > a_rows }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..500))).await;
    assert!(env.running("replay"), "the kill happens during the replay");
    let before = env.archiver_assignments("archiver-b");
    env.kill("archiver-a").await;
    let killed = Instant::now();
    // a stays dead: b takes its partitions once the broker expires a's session.
    wait_until(
        FAILOVER,
        "the survivor to take the dead archiver's partitions",
        || {
            let n = env.archiver_assignments("archiver-b");
            async move { n > before }
        },
    )
    .await;
    let failover = killed.elapsed();
    let b_parts = env.archiver_partitions("archiver-b");
    eprintln!(
        "survivor archived the dead member's partitions {failover:?} after the kill ({} partitions; \
         uncommitted batches cleaned: {})",
        b_parts.len(),
        env.log_count(
            "archiver-b",
            "removing files of a batch that was not committed"
        )
    );
    assert_eq!(
        b_parts.len(),
        all_parts,
        "the survivor owns every partition of both topics: {b_parts:?}"
    );
    env.wait_replay_succeeded(Duration::from_secs(180)).await;
    env.wait_archived(events.len(), Duration::from_secs(120), &["archiver-b"])
        .await;
    // Whatever is still to come would be a duplicate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    archive::assert_exactly_once(&dir, &events, "a SIGKILLed archiver's failover");
    assert!(!env.running("archiver-a"));
    assert!(
        env.running("archiver-b"),
        "the survivor runs:\n{}",
        env.log("archiver-b")
    );
}

/// Join-and-leave cycles of b: about 30 s here alone, well within the replay's ~86 s.
const CYCLES: usize = 10;
const LOADED: &str = "partition state loaded";
/// How long the staying member may take to own a leaving member's partitions: the
/// leaver's LeaveGroup starts the rebalance at once, the stayer hears of it with its
/// next heartbeat (1 s) and loads the partitions' state from Redis. Below the session
/// timeout (10 s): within this bound b left, it did not expire.
const HAND_BACK: Duration = Duration::from_secs(8);

// a is a StatefulSet-like member (static id). b joins and leaves like a Deployment's
// pod scaled out and in: dynamic membership, so its graceful leave (SIGTERM: drain,
// flush, LeaveGroup) hands its partitions back at once. (A static member does not
// leave the group on shutdown, KIP-345: its partitions wait for its session to expire,
// 10 s, which would make each cycle that long.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_and_leaving_ten_times_during_a_replay_leaves_totals_exact() {
    let mut env = TestEnv::new(4).await;
    let events = env.spawn_paced_replay(ROWS, SPEED);
    env.start_speed_as("speed-a");
    env.wait_partitions_taken("speed-a", 0).await;
    let drain = env.cfg.speed.shutdown_timeout + Duration::from_secs(10);
    let mut rng = rand::rng();
    let started = Instant::now();
    for cycle in 1..=CYCLES {
        let joined = Instant::now();
        let b_before = env.log_count("speed-b", LOADED);
        let mut b = env.speed_instance("speed-b");
        b.retain(|(k, _)| *k != "ADMETRICS__KAFKA__GROUP_INSTANCE_ID");
        b.push(("ADMETRICS__KAFKA__GROUP_INSTANCE_ID", "none".to_owned()));
        env.spawn_with_env("speed-b", "speed-layer", &["run"], &b);
        env.wait_partitions_taken("speed-b", b_before).await;
        let join = joined.elapsed();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_000))).await;
        let a_before = env.log_count("speed-a", LOADED);
        let left = Instant::now();
        let status = env.terminate("speed-b", drain).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "cycle {cycle}: speed-b exits cleanly on SIGTERM within {drain:?} ({status:?}):\n{}",
            env.log("speed-b")
        );
        let exit = left.elapsed();
        wait_until(
            HAND_BACK,
            "speed-a to take speed-b's partitions back",
            || {
                let n = env.log_count("speed-a", LOADED);
                async move { n > a_before }
            },
        )
        .await;
        eprintln!(
            "cycle {cycle}: b owned partitions {join:?} after its start; exited {exit:?} after SIGTERM; \
             a owned them again {:?} after SIGTERM",
            left.elapsed()
        );
    }
    eprintln!("{CYCLES} join/leave cycles in {:?}", started.elapsed());
    assert!(
        env.running("replay"),
        "the {CYCLES} cycles happened during the replay (slow the replay down if this fails)"
    );
    env.wait_replay_succeeded(Duration::from_secs(180)).await;
    env.settle_and_check(&events, &["speed-a", "speed-b", "replay"])
        .await;
    assert!(
        env.log_count("speed-a", "partitions revoked") >= CYCLES,
        "a gave partitions away at every join"
    );
    assert!(env.running("speed-a"), "{}", env.log("speed-a"));
}
