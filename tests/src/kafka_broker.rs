//! A private Apache Kafka broker for one test: one KRaft node (broker and controller in
//! one JVM, the properties of `deploy/local/up.sh`) on free ports, its storage under
//! `<temp dir>/admetrics-it/broker-<id>`, run as a child process that the test may
//! SIGKILL and start again on the same data directory and ports. Tests that kill the
//! broker use this one, never the shared broker on 127.0.0.1:9092 that the other tests
//! run against in parallel.
//!
//! The jars come from `ADMETRICS_KAFKA_HOME` (`$ADMETRICS_KAFKA_HOME/libs/*`), which
//! `deploy/local/test.sh` exports after `deploy/local/up.sh` installed them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::process::{Child, Command};

use crate::free_port;

/// Heap of the private broker's JVM (`-Xms`/`-Xmx`): smaller than the shared broker's
/// 512 MiB, since it holds one test's topics.
const HEAP: &str = "384m";

/// Longest wait for the broker to answer after a start or restart (JVM start, log
/// recovery after a SIGKILL, controller election), as `deploy/local/up.sh` allows.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One private single-node KRaft broker (killed on drop).
pub struct KafkaBroker {
    /// `bootstrap.servers` of this broker (`127.0.0.1:<port>`), for `cfg.kafka.brokers`.
    pub brokers: String,
    /// The broker's directory: `server.properties`, `data/` (log dirs and KRaft
    /// metadata), `kafka.log` (output of every run, appended).
    pub dir: PathBuf,
    kafka_home: PathBuf,
    child: Option<Child>,
}

/// `ADMETRICS_KAFKA_HOME`, checked: panics with a message naming
/// `deploy/local/test.sh` when it is unset or holds no Kafka jars.
pub fn kafka_home() -> PathBuf {
    let home = std::env::var_os("ADMETRICS_KAFKA_HOME").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "ADMETRICS_KAFKA_HOME is not set: run the tests with deploy/local/test.sh, which exports the \
             Apache Kafka installation deploy/local/up.sh made (or export it: ~/.cache/admetrics-kafka-<version>)"
        )
    });
    let libs = home.join("libs");
    let has_kafka = std::fs::read_dir(&libs).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("kafka_") && n.ends_with(".jar")
        })
    });
    assert!(
        has_kafka,
        "ADMETRICS_KAFKA_HOME={} has no Kafka jars in libs/: run deploy/local/up.sh (deploy/local/test.sh does), \
         which installs them",
        home.display()
    );
    home
}

impl KafkaBroker {
    /// Formats storage for a new single-node cluster on two free ports (broker and
    /// controller), starts the broker and waits until it answers (at most
    /// [`START_TIMEOUT`]). A port another process took in the meantime is retried with
    /// new ports, up to 3 times.
    ///
    /// # Panics
    ///
    /// When `ADMETRICS_KAFKA_HOME` is unusable ([`kafka_home`]), formatting fails, or
    /// the broker does not answer in time (the message holds its log).
    pub async fn start() -> KafkaBroker {
        let kafka_home = kafka_home();
        let id = format!("{:010x}", rand::rng().random::<u64>() & 0xff_ffff_ffff);
        let dir = std::env::temp_dir().join(format!("admetrics-it/broker-{id}"));
        for _ in 0..3 {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("data")).expect("broker directory");
            let (port, controller) = (free_port(), free_port());
            write_properties(&dir, port, controller);
            format_storage(&kafka_home, &dir).await;
            let mut broker = KafkaBroker {
                brokers: format!("127.0.0.1:{port}"),
                dir: dir.clone(),
                kafka_home: kafka_home.clone(),
                child: None,
            };
            broker.spawn();
            if broker.wait_ready().await {
                return broker;
            }
            let log = broker.log();
            assert!(
                log.contains("Address already in use"),
                "the private Kafka broker exited at start:\n{log}"
            );
        }
        panic!(
            "the private Kafka broker found its ports taken 3 times (log in {})",
            dir.display()
        );
    }

    /// SIGKILLs the broker and waits for the process to end (no clean shutdown: log
    /// recovery on the next start).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.ok();
        }
    }

    /// Starts the broker again on the same data directory and ports and waits until it
    /// answers with a leader for every partition (at most [`START_TIMEOUT`]).
    ///
    /// # Panics
    ///
    /// When it is still running, exits, or does not answer in time.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart() of a running broker");
        self.spawn();
        assert!(
            self.wait_ready().await,
            "the private Kafka broker exited at restart:\n{}",
            self.log()
        );
    }

    /// The last 40 lines of the broker's output (all its runs), for failure messages.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("kafka.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kafka.log"))
            .expect("broker log file");
        let child = java(&self.kafka_home, &format!("-Xmx{HEAP}"))
            .arg(format!("-Xms{HEAP}"))
            .arg("-XX:+UseG1GC")
            .arg("-Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info")
            .arg("kafka.Kafka")
            .arg(self.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting java for the private Kafka broker: {e}"));
        self.child = Some(child);
    }

    /// Polls a metadata request until the broker answers with itself and a leader for
    /// every partition of every topic. False when the process exited first; panics
    /// after [`START_TIMEOUT`].
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut()
                && !matches!(c.try_wait(), Ok(None))
            {
                self.child = None;
                return false;
            }
            let brokers = self.brokers.clone();
            let ready = tokio::task::spawn_blocking(move || answers(&brokers))
                .await
                .unwrap_or(false);
            if ready {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "the private Kafka broker {} did not answer within {START_TIMEOUT:?}:\n{}",
                self.brokers,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            c.start_kill().ok();
        }
    }
}

/// True when `brokers` answers a metadata request (2 s) listing a broker and a leader
/// for every partition, with no topic or partition error.
fn answers(brokers: &str) -> bool {
    let Ok(client) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create::<BaseConsumer>()
    else {
        return false;
    };
    let Ok(md) = client.fetch_metadata(None, Duration::from_secs(2)) else {
        return false;
    };
    !md.brokers().is_empty()
        && md.topics().iter().all(|t| {
            t.error().is_none()
                && t.partitions()
                    .iter()
                    .all(|p| p.error().is_none() && p.leader() >= 0)
        })
}

/// A `java` command with the Kafka jars on the class path and quiet logging.
fn java(kafka_home: &Path, heap: &str) -> Command {
    let mut c = Command::new("java");
    c.arg(heap)
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
        .arg("-cp")
        .arg(format!("{}/libs/*", kafka_home.display()))
        .kill_on_drop(true);
    c
}

/// `server.properties` of `deploy/local/up.sh` with this broker's ports and data dir.
fn write_properties(dir: &Path, port: u16, controller: u16) {
    let data = dir.join("data");
    let props = format!(
        "process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={}
num.partitions=8
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
",
        data.display()
    );
    std::fs::write(dir.join("server.properties"), props).expect("server.properties");
}

/// `kafka.tools.StorageTool format --standalone` with a new cluster id (a random UUID
/// in Kafka's URL-safe base64 form, never starting with `-`, as Kafka's own).
async fn format_storage(kafka_home: &Path, dir: &Path) {
    let cluster_id = loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(rand::rng().random::<[u8; 16]>());
        if !id.starts_with('-') {
            break id;
        }
    };
    let out = java(kafka_home, "-Xmx256m")
        .args(["kafka.tools.StorageTool", "format", "--standalone", "-t"])
        .arg(&cluster_id)
        .arg("-c")
        .arg(dir.join("server.properties"))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running java (Kafka StorageTool): {e}"));
    assert!(
        out.status.success(),
        "formatting the private Kafka broker's storage in {} failed ({}):\n{}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
