//! Helpers of the integration tests: a private namespace per test on the real services
//! that `deploy/local/up.sh` starts (Kafka topics, Redis key prefix, MySQL and
//! ClickHouse databases, a state directory), the project's binaries run as child
//! processes, and an independent reference computation of the metrics.
//!
//! A missing service fails the test with a message naming `deploy/local/up.sh`; no
//! test skips.

pub mod archive;
pub mod check;
pub mod clickhouse_shards;
pub mod kafka_broker;
pub mod redis_cluster;
pub mod redis_server;
pub mod reference;
pub mod tcp_proxy;
pub mod tmpfs;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::config::Config;
use mysql_async::prelude::Queryable;
use rand::Rng;
use tokio::process::{Child, Command};

/// One test's namespace and the processes it started (killed on drop).
pub struct TestEnv {
    /// Unique id (`t` + 10 hex digits).
    pub id: String,
    /// The configuration every process of this test uses.
    pub cfg: Config,
    /// This test's state directory.
    pub state_dir: PathBuf,
    /// `n > 0`: [`TestEnv::replay`] shifts the data to end on the day `n` days before
    /// today at the latest (every replayed day has closed and may turn final); 0 (the
    /// default): at most now.
    pub data_ends_days_ago: i64,
    /// Some: [`TestEnv::replay`] shifts the data to end on this UTC day at the latest
    /// (takes precedence over [`TestEnv::data_ends_days_ago`]); for a test that places
    /// two replays on days that must not meet, from one reading of the clock.
    pub data_ends_on: Option<chrono::NaiveDate>,
    children: Vec<(String, Child)>,
}

/// The directory of the workspace's built binaries (next to the test executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-<hash> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// Path of one of the project's binaries; panics with a hint when it is not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` (deploy/local/test.sh does)",
        p.display()
    );
    p
}

fn missing(service: &str, detail: &str) -> ! {
    panic!(
        "{service} is not reachable ({detail}). Start the local stack with deploy/local/up.sh (deploy/local/test.sh does it for you)."
    );
}

/// A free TCP port on 127.0.0.1, for a child process to listen on.
///
/// Picked at random below the kernel's ephemeral range (`ip_local_port_range`,
/// 32768-60999 by default), then checked by binding it: a port the kernel handed out
/// for `bind(0)` is also where it puts the local end of outgoing connections (Kafka,
/// Redis, MySQL clients of every parallel test), so one of those could take it before
/// the child binds it. Ports in 20000-32767 are only ever taken by a listener.
pub fn free_port() -> u16 {
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(20_000..32_768);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in 20000-32767 on 127.0.0.1 after 1000 tries")
}

impl TestEnv {
    /// Creates a namespace: topics with `partitions` partitions, a Redis prefix, MySQL
    /// and ClickHouse databases with the schema. Fails loudly when a service is down.
    pub async fn new(partitions: i32) -> TestEnv {
        Self::create(partitions, None).await
    }

    /// [`TestEnv::new`] on the Kafka broker(s) `brokers` (`bootstrap.servers`, e.g. a
    /// [`kafka_broker::KafkaBroker`]'s) instead of the shared one from the
    /// environment: the topics are created there and every child process uses it.
    pub async fn with_brokers(partitions: i32, brokers: &str) -> TestEnv {
        Self::create(partitions, Some(brokers)).await
    }

    async fn create(partitions: i32, brokers: Option<&str>) -> TestEnv {
        let base = Config::load(None).expect("configuration from ADMETRICS__* variables");
        let id = format!("t{:010x}", rand::rng().random::<u64>() & 0xff_ffff_ffff);
        let mut cfg = base.clone();
        if let Some(b) = brokers {
            cfg.kafka.brokers = b.to_owned();
        }
        cfg.kafka.partitions = partitions;
        cfg.kafka.traffic_topic = format!("{id}-ad-traffic");
        cfg.kafka.effects_topic = format!("{id}-ad-effects");
        cfg.kafka.dlq_topic = format!("{id}-ad-dlq");
        cfg.redis.key_prefix = id.clone();
        cfg.speed.group_id = format!("{id}-speed");
        cfg.batch.group_id = format!("{id}-archiver");
        cfg.speed.metrics_listen = format!("127.0.0.1:{}", free_port());
        cfg.serving.listen = format!("127.0.0.1:{}", free_port());
        let db = format!("admetrics_{id}");
        cfg.mysql.url = replace_db(base.mysql.url.expose(), &db).as_str().into();
        cfg.clickhouse.database = db.clone();
        let state_dir = std::env::temp_dir().join(format!("admetrics-it/{id}"));
        std::fs::create_dir_all(&state_dir).expect("state dir");
        cfg.state_dir = state_dir.clone();
        cfg.batch.archive_url = state_dir.join("archive").display().to_string();
        // A replayed day may turn final as soon as it has ended (tests of the late
        // allowance set their own): the data ends today or yesterday, and a test run
        // shortly after midnight must still find yesterday closed.
        cfg.batch.late_allowance = Duration::ZERO;

        // Redis
        let r = redis::Client::open(cfg.redis.url.expose()).expect("redis url");
        let mut rc = match tokio::time::timeout(
            Duration::from_secs(5),
            r.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => missing("Redis", &format!("{}: {e}", cfg.redis.url.expose())),
            Err(_) => missing("Redis", "timeout"),
        };
        let _: String = redis::cmd("PING")
            .query_async(&mut rc)
            .await
            .unwrap_or_else(|e| missing("Redis", &e.to_string()));
        // MySQL: create this test's database through the main one.
        let admin = mysql_async::Pool::new(base.mysql.url.expose());
        let mut conn = match tokio::time::timeout(Duration::from_secs(5), admin.get_conn()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => missing("MySQL", &e.to_string()),
            Err(_) => missing("MySQL", "timeout"),
        };
        conn.query_drop(format!("CREATE DATABASE `{db}`"))
            .await
            .expect("create test database");
        drop(conn);
        admin.disconnect().await.ok();
        let pool = platform::db::pool(&cfg.mysql).expect("pool");
        platform::db::migrate(&pool).await.expect("schema");
        pool.disconnect().await.ok();
        // ClickHouse
        if let Err(e) = speed_layer::clickhouse_sink::migrate(&cfg.clickhouse).await {
            missing("ClickHouse", &format!("{}: {e}", cfg.clickhouse.url));
        }
        // Kafka
        let k = &cfg.kafka;
        match tokio::time::timeout(
            Duration::from_secs(20),
            platform::kafka::create_topics(
                k,
                &[&k.traffic_topic, &k.effects_topic, &k.dlq_topic],
                partitions,
            ),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => missing("Kafka", &format!("{}: {e}", k.brokers)),
            Err(_) => missing("Kafka", &format!("{}: timeout", k.brokers)),
        }
        TestEnv {
            id,
            cfg,
            state_dir,
            data_ends_days_ago: 0,
            data_ends_on: None,
            children: Vec::new(),
        }
    }

    /// `ADMETRICS__*` variables that give a child process this test's configuration.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        flatten(
            "ADMETRICS",
            &serde_json::to_value(&self.cfg).expect("config serialises"),
            &mut out,
        );
        out
    }

    /// A command for one of the project's binaries with this test's configuration
    /// (inherited `ADMETRICS__*` variables are replaced).
    pub fn command(&self, binary: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin(binary));
        c.args(args);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ADMETRICS__")) {
            c.env_remove(k);
        }
        c.env_remove("ADMETRICS_CONFIG");
        c.envs(self.env_vars());
        c.env(
            "RUST_LOG",
            std::env::var("IT_CHILD_LOG").unwrap_or_else(|_| "info".into()),
        );
        c.kill_on_drop(true);
        c
    }

    /// Runs a binary to completion and returns its stdout.
    pub async fn run(&self, binary: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command(binary, args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {binary}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{binary} {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running binary; its output goes to `<state_dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str, binary: &str, args: &[&str]) -> u32 {
        self.spawn_with_env(name, binary, args, &[])
    }

    /// [`TestEnv::spawn`] with extra environment variables (e.g. a second instance's
    /// `ADMETRICS__KAFKA__GROUP_INSTANCE_ID` and metrics port).
    pub fn spawn_with_env(
        &mut self,
        name: &str,
        binary: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> u32 {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.join(format!("{name}.log")))
            .expect("log file");
        let child = self
            .command(binary, args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn");
        let pid = child.id().unwrap_or(0);
        self.children.push((name.to_owned(), child));
        pid
    }

    /// Sends SIGKILL to the named child and waits for it.
    pub async fn kill(&mut self, name: &str) {
        if let Some(pos) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(pos);
            c.kill().await.ok();
        }
    }

    /// Sends SIGTERM to the named child and waits for it to exit (graceful shutdown).
    pub async fn terminate(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let pos = self.children.iter().position(|(n, _)| n == name)?;
        let (_, mut c) = self.children.remove(pos);
        let pid = c.id()?;
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .ok()?;
        match tokio::time::timeout(timeout, c.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                c.kill().await.ok();
                None
            }
        }
    }

    /// The log of a child, for failure messages.
    pub fn log(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.state_dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The error a child exited with, as its log shows it: the last `Error: ` line (a
    /// binary's `main` returning an error) and its `Caused by:` chain, without the
    /// backtrace; the log's last lines when there is none.
    pub fn exit_error(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.state_dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        match lines.iter().rposition(|l| l.starts_with("Error: ")) {
            Some(i) => lines[i..]
                .iter()
                .take_while(|l| !l.starts_with("Stack backtrace"))
                .copied()
                .collect::<Vec<_>>()
                .join("\n"),
            None => self.log(name),
        }
    }

    /// How many lines of the named child's log (all its runs) contain `needle`.
    pub fn log_count(&self, name: &str, needle: &str) -> usize {
        std::fs::read_to_string(self.state_dir.join(format!("{name}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// True while the named child runs.
    pub fn running(&mut self, name: &str) -> bool {
        self.children
            .iter_mut()
            .any(|(n, c)| n == name && matches!(c.try_wait(), Ok(None)))
    }

    /// The exit status of the named child (its latest run) once it has exited; `None`
    /// while it runs or when there is no such child.
    pub fn exit_status(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.children
            .iter_mut()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    /// A MySQL pool on this test's database.
    pub fn mysql(&self) -> mysql_async::Pool {
        platform::db::pool(&self.cfg.mysql).expect("pool")
    }

    /// A Redis connection.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.cfg.redis.url.expose())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// Base URL of this test's serving layer.
    pub fn api_base(&self) -> String {
        format!("http://{}", self.cfg.serving.listen)
    }

    /// Starts the serving layer and waits until `/healthz` answers.
    pub async fn start_server(&mut self) {
        self.start_server_as("serving").await;
    }

    /// [`TestEnv::start_server`] as child `name` (a second server with another
    /// configuration: set `cfg.serving.listen` first).
    ///
    /// The port of `cfg.serving.listen` was free when the test picked it, but another
    /// process may take it before the server binds it (seen once: another test's
    /// metrics endpoint, whose 200s the test then read as this server's). The server
    /// exits on a taken port; it is started again on a new free port, up to 3 times.
    pub async fn start_server_as(&mut self, name: &str) {
        for _ in 0..3 {
            self.spawn(name, "serving-layer", &["serve"]);
            let url = format!("{}/healthz", self.api_base());
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if !self.running(name) {
                    break;
                }
                // This server's own answer, not just any 200 on the port.
                let ours = match reqwest::get(&url).await {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|b| b["status"] == "ok"),
                    _ => false,
                };
                if ours && self.running(name) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out after 30s waiting for serving layer /healthz\n{}",
                    self.log(name)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let log = self.log(name);
            assert!(
                log.contains("Address already in use"),
                "the serving layer exited at start:\n{log}"
            );
            self.cfg.serving.listen = format!("127.0.0.1:{}", free_port());
        }
        panic!(
            "the serving layer found its port taken 3 times:\n{}",
            self.log(name)
        );
    }

    /// Starts the batch layer's archiver (child `archiver`) with a metrics port of its
    /// own.
    pub fn start_archiver(&mut self) {
        let listen = format!("127.0.0.1:{}", free_port());
        self.spawn(
            "archiver",
            "batch-layer",
            &["archive", "--metrics-listen", &listen],
        );
    }

    /// Starts one archiver instance of several in this test's group: child `name`, its
    /// own metrics port and `name` as its static membership id
    /// (`ADMETRICS__KAFKA__GROUP_INSTANCE_ID`; two members with one id fence each
    /// other).
    pub fn start_archiver_as(&mut self, name: &str) {
        let listen = format!("127.0.0.1:{}", free_port());
        self.spawn_with_env(
            name,
            "batch-layer",
            &["archive", "--metrics-listen", &listen],
            &[("ADMETRICS__KAFKA__GROUP_INSTANCE_ID", name.to_owned())],
        );
    }

    /// Waits until the local archive (`<state_dir>/archive`) holds at least `want`
    /// rows; after `timeout` panics with the row count and the logs of the children
    /// `logs`.
    pub async fn wait_archived(&self, want: usize, timeout: Duration, logs: &[&str]) {
        let dir = self.state_dir.join("archive");
        let want = i64::try_from(want).expect("row count");
        let deadline = Instant::now() + timeout;
        loop {
            let n = archive::rows(&dir);
            if n >= want {
                return;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = logs
                    .iter()
                    .map(|l| format!("--- {l}:\n{}", self.log(l)))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {want} rows in the archive ({n})\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// How many times archiver child `name` was assigned partitions (its log's
    /// "archiving partitions" lines, one per assignment, all its runs).
    pub fn archiver_assignments(&self, name: &str) -> usize {
        self.log_count(name, "archiving partitions")
    }

    /// The partitions of archiver child `name`'s last assignment, as (topic,
    /// partition), from its log's last "archiving partitions" line; empty before the
    /// first.
    pub fn archiver_partitions(&self, name: &str) -> Vec<(String, i32)> {
        let text =
            std::fs::read_to_string(self.state_dir.join(format!("{name}.log"))).unwrap_or_default();
        let Some(line) = text
            .lines()
            .rev()
            .find(|l| l.contains("archiving partitions"))
        else {
            return Vec::new();
        };
        // `partitions=[("<topic>", <p>), ...]`
        line.split("(\"")
            .skip(1)
            .filter_map(|item| {
                let (topic, rest) = item.split_once("\", ")?;
                let p = rest.split(')').next()?.trim().parse().ok()?;
                Some((topic.to_owned(), p))
            })
            .collect()
    }

    /// Runs `batch-layer recompute --from FROM --to TO` and returns its output.
    ///
    /// # Panics
    ///
    /// When the command fails.
    pub async fn recompute(&self, from: chrono::NaiveDate, to: chrono::NaiveDate) -> String {
        let (from, to) = (from.to_string(), to.to_string());
        self.run("batch-layer", &["recompute", "--from", &from, "--to", &to])
            .await
            .expect("recompute")
    }

    /// Creates an API key (`--advertiser N` or `--internal`).
    pub async fn api_key(&self, args: &[&str]) -> String {
        let mut a = vec!["keys", "create"];
        a.extend_from_slice(args);
        self.run("serving-layer", &a)
            .await
            .expect("key created")
            .trim()
            .to_owned()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            c.start_kill().ok();
        }
    }
}

fn replace_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i)
            if url[..i].contains("://") && url[..i].len() > url.find("://").unwrap_or(0) + 2 =>
        {
            format!("{}/{db}", &url[..i])
        }
        _ => format!("{url}/{db}"),
    }
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{prefix}__{}", k.to_uppercase()), v, out);
            }
        }
        serde_json::Value::Null => {}
        serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// What a replay produced: its JSON summary and the same events, rebuilt from the
/// file with the data README's mapping and the replay's date shift.
pub struct Replayed {
    /// The replay command's summary.
    pub summary: serde_json::Value,
    /// The events, in replay order.
    pub events: Vec<common::event::Event<'static>>,
}

impl TestEnv {
    /// Environment of one speed-layer instance of several in one group, as a
    /// StatefulSet pod has it: `name` as its static membership id
    /// (`ADMETRICS__KAFKA__GROUP_INSTANCE_ID`; two members with one id fence each
    /// other), a metrics port and a state directory (`<state_dir>/<name>`: the
    /// ClickHouse journal) of its own. For [`TestEnv::spawn_with_env`].
    ///
    /// Instances sharing one state directory destroy each other's journal files (seen:
    /// one drained at SIGTERM, the other's sink then failed with "No such file or
    /// directory" and the process exited).
    pub fn speed_instance(&self, name: &str) -> Vec<(&'static str, String)> {
        vec![
            ("ADMETRICS__KAFKA__GROUP_INSTANCE_ID", name.to_owned()),
            (
                "ADMETRICS__SPEED__METRICS_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            ),
            (
                "ADMETRICS__STATE_DIR",
                self.state_dir.join(name).display().to_string(),
            ),
        ]
    }

    /// Starts speed-layer instance `name` ([`TestEnv::speed_instance`]: its own static
    /// id, metrics port and state directory) as child `name`.
    pub fn start_speed_as(&mut self, name: &str) {
        let vars = self.speed_instance(name);
        self.spawn_with_env(name, "speed-layer", &["run"], &vars);
    }

    /// Waits until speed-layer child `name` has taken partitions more often than
    /// `before` times (its log's "partition state loaded" lines).
    pub async fn wait_partitions_taken(&self, name: &str, before: usize) {
        wait_until(
            Duration::from_secs(60),
            "the partitions to be taken",
            || {
                let now = self.log_count(name, "partition state loaded");
                async move { now > before }
            },
        )
        .await;
    }

    /// Runs speed-layer child `name` (with `extra` environment) and `kills` times:
    /// once it has taken its partitions, SIGKILLs it at a random moment 0.3-3 s later
    /// and starts it again 0-1 s after. Returns with the instance running.
    pub async fn run_speed_with_kills(
        &mut self,
        name: &str,
        extra: &[(&str, String)],
        kills: usize,
    ) {
        let mut rng = rand::rng();
        for _ in 0..kills {
            let before = self.log_count(name, "partition state loaded");
            self.spawn_with_env(name, "speed-layer", &["run"], extra);
            self.wait_partitions_taken(name, before).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..3_000))).await;
            self.kill(name).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_000))).await;
        }
        self.spawn_with_env(name, "speed-layer", &["run"], extra);
    }
}

impl TestEnv {
    /// Replays the first `rows` rows of the data set into this test's topics and MySQL,
    /// shifted by whole days so that the last event is at most now (or, with
    /// [`TestEnv::data_ends_days_ago`], before the day that many days ago ends).
    pub async fn replay(&self, rows: usize) -> Replayed {
        let data = dataset_path();
        let mut args = vec![
            "replay".to_owned(),
            "--data".to_owned(),
            data.to_str().unwrap_or_default().to_owned(),
            "--limit".to_owned(),
            rows.to_string(),
        ];
        let day_ms = common::event::DAY_MS;
        let last_day = match self.data_ends_on {
            Some(day) => Some(i64::from(common::day::day_num(day))),
            None if self.data_ends_days_ago > 0 => {
                Some(common::day::now_ms().div_euclid(day_ms) - self.data_ends_days_ago)
            }
            None => None,
        };
        if let Some(last_day) = last_day {
            let mut r = fixtures::dataset::read(&data).expect("data set");
            r.truncate(rows);
            let end = (last_day + 1) * day_ms - 1;
            let shift = fixtures::dataset::shift_days(&r, end, false);
            args.extend(["--shift".to_owned(), shift.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run("speed-layer", &args).await.expect("replay");
        let summary: serde_json::Value =
            serde_json::from_str(&out).expect("replay prints a JSON summary");
        let shift = summary["shift_days"].as_i64().expect("shift_days");
        let mut r = fixtures::dataset::read(&data).expect("data set");
        r.truncate(rows);
        let events = fixtures::dataset::events(&r, shift);
        assert_eq!(summary["events"].as_u64(), Some(events.len() as u64));
        Replayed { summary, events }
    }
}

impl TestEnv {
    /// Replays the first `rows` rows, runs the speed layer and the archiver (flushing
    /// files after 500 ms) until both hold every event.
    pub async fn replay_through_pipeline(&mut self, rows: usize) -> Replayed {
        self.cfg.batch.archive_max_age = Duration::from_millis(500);
        let r = self.replay(rows).await;
        self.spawn("speed", "speed-layer", &["run"]);
        self.start_archiver();
        if let Err(e) =
            speed_layer::tools::status::wait_settled(&self.cfg, Duration::from_secs(180)).await
        {
            panic!("{e}\n{}", self.log("speed"));
        }
        let dir = self.state_dir.join("archive");
        let n = i64::try_from(r.events.len()).expect("event count");
        wait_until(Duration::from_secs(120), "archive", || async {
            archive::rows(&dir) >= n
        })
        .await;
        self.wait_archive_complete(Duration::from_secs(60)).await;
        r
    }

    /// Waits until the archiver's progress records say every partition of both topics
    /// is archived up to its end offset (what a recompute checks before a day may turn
    /// final); panics after `timeout`.
    pub async fn wait_archive_complete(&self, timeout: Duration) {
        let archive = batch_layer::archive::store::open(&self.cfg.batch).expect("archive");
        let cfg = self.cfg.clone();
        wait_until(
            timeout,
            "the archive progress to reach every end offset",
            || {
                let (cfg, archive) = (cfg.clone(), archive.clone());
                async move {
                    batch_layer::finality::archive_completeness(
                        &cfg,
                        &archive,
                        batch_layer::recompute::Shard::WHOLE,
                        common::day::now_ms(),
                    )
                    .await
                    .is_ok_and(|c| {
                        c.partitions
                            .iter()
                            .all(|p| p.archived_offset >= p.end_offset)
                    })
                }
            },
        )
        .await;
    }
}

/// The advertiser with clicks on the most days of `events` (ties: most events).
pub fn busiest_advertiser(events: &[common::event::Event<'_>]) -> i64 {
    let mut days: std::collections::BTreeMap<i64, (std::collections::BTreeSet<i64>, usize)> =
        Default::default();
    for e in events {
        let x = days.entry(e.advertiser_id).or_default();
        x.0.insert(e.ts.div_euclid(common::event::DAY_MS));
        x.1 += 1;
    }
    days.into_iter()
        .max_by_key(|(_, (d, n))| (d.len(), *n))
        .map(|(a, _)| a)
        .expect("events")
}

impl TestEnv {
    /// The earliest UTC day a [`TestEnv::spawn_paced_replay`] of `rows` rows started
    /// from now on can hold: its shift is the largest that keeps the data at or before
    /// the clock, so it only grows as time passes.
    pub fn paced_replay_first_day(rows: usize) -> chrono::NaiveDate {
        let mut r = fixtures::dataset::read(&dataset_path()).expect("data set");
        r.truncate(rows);
        let shift = fixtures::dataset::shift_days(&r, common::day::now_ms(), false);
        days_of(&fixtures::dataset::events(&r, shift)).0
    }

    /// Starts a replay of the first `rows` rows of the data set paced at `speed` times
    /// event time, in the background (child `replay`), and returns the events it
    /// produces, rebuilt from the file with the same date shift.
    pub fn spawn_paced_replay(
        &mut self,
        rows: usize,
        speed: u32,
    ) -> Vec<common::event::Event<'static>> {
        let data = dataset_path();
        let mut r = fixtures::dataset::read(&data).expect("data set");
        r.truncate(rows);
        let shift = fixtures::dataset::shift_days(&r, common::day::now_ms(), false);
        self.spawn(
            "replay",
            "speed-layer",
            &[
                "replay",
                "--data",
                data.to_str().unwrap_or_default(),
                "--limit",
                &rows.to_string(),
                "--speed",
                &speed.to_string(),
                "--shift",
                &shift.to_string(),
            ],
        );
        fixtures::dataset::events(&r, shift)
    }

    /// Waits until the child `replay` has exited; panics after `timeout`.
    pub async fn wait_replay_done(&mut self, timeout: Duration) {
        wait_until(timeout, "the replay to finish", || {
            let running = self.running("replay");
            async move { !running }
        })
        .await;
    }

    /// [`TestEnv::wait_replay_done`], then asserts that the replay exited successfully
    /// (its log in the message otherwise).
    pub async fn wait_replay_succeeded(&mut self, timeout: Duration) {
        self.wait_replay_done(timeout).await;
        assert!(
            self.exit_status("replay").is_some_and(|s| s.success()),
            "the replay succeeded:\n{}",
            self.log("replay")
        );
    }

    /// Waits until the speed layer has settled (every partition caught up and written,
    /// at most 240 s; on timeout panics with the logs of the children `logs`), starts
    /// the serving layer and asserts [`check::speed_matches_reference`] for `events`.
    pub async fn settle_and_check(
        &mut self,
        events: &[common::event::Event<'static>],
        logs: &[&str],
    ) {
        if let Err(e) =
            speed_layer::tools::status::wait_settled(&self.cfg, Duration::from_secs(240)).await
        {
            let logs: Vec<String> = logs
                .iter()
                .map(|n| format!("--- {n}:\n{}", self.log(n)))
                .collect();
            panic!("{e}\n{}", logs.join("\n"));
        }
        self.cfg.serving.rate_limit_per_second = 10_000;
        self.cfg.serving.rate_limit_burst = 10_000;
        self.start_server().await;
        let key = self.api_key(&["--internal"]).await;
        check::speed_matches_reference(self, &key, events).await;
    }

    /// The sum over partitions and both input topics of the next offsets the speed
    /// layer stored in Redis with its results (messages reflected in Redis); grows as
    /// it consumes and flushes.
    pub async fn speed_offsets_stored(&self) -> i64 {
        self.speed_next_offsets().await.values().sum()
    }

    /// The next offset the speed layer stored in Redis for each (input topic,
    /// partition) it has flushed: every message below it is reflected in Redis.
    pub async fn speed_next_offsets(
        &self,
    ) -> std::collections::BTreeMap<(common::event::TopicKind, i32), i64> {
        let keys = common::redis_keys::Keys::new(&self.cfg.redis.key_prefix);
        let mut conn = self.redis().await;
        let mut out = std::collections::BTreeMap::new();
        for p in 0..self.cfg.kafka.partitions {
            let off: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
                .arg(keys.offsets(p))
                .query_async(&mut conn)
                .await
                .expect("offsets hash");
            for t in common::event::TopicKind::ALL {
                if let Some(n) = off.get(t.as_str()) {
                    out.insert((t, p), *n);
                }
            }
        }
        out
    }

    /// The offsets the archiver group (`batch.group_id`) has committed in Kafka, per
    /// (topic name, partition), partitions without a commit left out: what the
    /// archiver acknowledged as archived.
    pub fn archiver_committed_offsets(&self) -> std::collections::BTreeMap<(String, i32), i64> {
        use rdkafka::consumer::Consumer as _;
        // A plain client of the group: an offset fetch joins no group.
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.cfg.kafka.brokers)
            .set("group.id", &self.cfg.batch.group_id)
            .create()
            .expect("kafka client");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for topic in [&self.cfg.kafka.traffic_topic, &self.cfg.kafka.effects_topic] {
            for p in 0..self.cfg.kafka.partitions {
                tpl.add_partition(topic, p);
            }
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("the archiver group's committed offsets");
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                _ => None,
            })
            .collect()
    }
}

/// The UTC dates of the first and the last of `events` (in replay order).
pub fn days_of(events: &[common::event::Event<'_>]) -> (chrono::NaiveDate, chrono::NaiveDate) {
    let d = |ts: i64| {
        common::day::date_of(i32::try_from(ts.div_euclid(common::event::DAY_MS)).expect("a date"))
    };
    (
        d(events.first().expect("events").ts),
        d(events.last().expect("events").ts),
    )
}

/// How long a surviving group member may take to own a dead member's partitions: the
/// broker expires the member after `session.timeout.ms` (10 s,
/// `platform::kafka::consumer_config`), then the group rebalances (the survivor hears of
/// it with its next heartbeat, 1 s) and the survivor loads the partitions' state.
pub const FAILOVER: Duration = Duration::from_secs(30);

/// Polls `check` until it is true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET with a bearer key; returns status and JSON body.
pub async fn get_json(url: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// The data set file (`../shared/data/` beside the repository, or `ADMETRICS_DATASET`).
/// Panics with the places it looked when it is missing.
pub fn dataset_path() -> PathBuf {
    let name = "talkingdata_train_sample.csv";
    let mut candidates: Vec<PathBuf> = std::env::var_os("ADMETRICS_DATASET")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data")
            .join(name),
    );
    candidates.push(PathBuf::from("/work/shared/data").join(name));
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!("the data set {name} is missing; looked at {candidates:?}. Set ADMETRICS_DATASET to its path.")
    })
}

/// Runs `sql` on database `db` of the ClickHouse server at `url` (HTTP) and returns the
/// `data` rows of its JSON answer; panics when ClickHouse refuses it.
pub async fn clickhouse_query(url: &str, db: &str, sql: &str) -> Vec<serde_json::Value> {
    let resp = reqwest::Client::new()
        .post(format!("{url}/?database={db}"))
        .body(format!("{sql} FORMAT JSON"))
        .send()
        .await
        .expect("ClickHouse answers");
    let status = resp.status();
    let text = resp.text().await.expect("ClickHouse answer body");
    assert!(status.is_success(), "{sql}\n{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    v["data"].as_array().cloned().unwrap_or_default()
}

impl TestEnv {
    /// Runs `sql` on this test's ClickHouse database ([`clickhouse_query`]).
    pub async fn clickhouse(&self, sql: &str) -> Vec<serde_json::Value> {
        clickhouse_query(&self.cfg.clickhouse.url, &self.cfg.clickhouse.database, sql).await
    }
}
