//! Configuration: one TOML file plus environment overrides, with defaults that work on
//! the local stack (`deploy/local/up.sh`).
//!
//! Precedence, lowest first: the defaults in this module (mirrored, with comments, in
//! `config/default.toml`), the file given by `--config` (or `ADMETRICS_CONFIG`), the
//! secrets file named by `ADMETRICS_SECRETS_FILE` (same format; for a mounted
//! Kubernetes Secret holding URLs with passwords, SASL and S3 credentials), then
//! environment variables `ADMETRICS__SECTION__KEY` (double underscore = nesting), e.g.
//! `ADMETRICS__REDIS__URL=redis://10.0.0.5:6379/`. Durations are humantime strings
//! (`"10s"`, `"3h"`, `"14d"`). Each layer receives its own section (`&SpeedConfig`),
//! so tests can build any configuration in code.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::attribution::Rules;
use crate::decode::Limits;

/// A string that never prints: URLs with credentials, passwords, API keys.
///
/// Deserialises from any scalar, so `ADMETRICS__...=true` or `=5000` (which the
/// environment provider reads as a bool or a number) gives the string `"true"`/`"5000"`.
#[derive(Clone, PartialEq, Eq, Serialize, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarString).map(Secret)
    }
}

/// Accepts a string, bool or number as its text.
struct ScalarString;

impl serde::de::Visitor<'_> for ScalarString {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or bool")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// A map of librdkafka-style settings whose values may arrive as bools or numbers.
fn settings_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let m: BTreeMap<String, Secret> = BTreeMap::deserialize(d)?;
    Ok(m.into_iter().map(|(k, v)| (k, v.0)).collect())
}

impl Secret {
    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"****\"")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where local state lives: spill files, ClickHouse journal, archive (local store).
    pub state_dir: PathBuf,
    /// Kafka brokers, topics and client settings.
    pub kafka: KafkaConfig,
    /// The product's Redis (speed-layer results and state).
    pub redis: RedisConfig,
    /// MySQL: dimensions, batch results, API keys.
    pub mysql: MysqlConfig,
    /// ClickHouse (BI detail rows).
    pub clickhouse: ClickHouseConfig,
    /// Input validation limits.
    pub validation: ValidationConfig,
    /// Attribution rules.
    pub attribution: AttributionConfig,
    /// Speed layer.
    pub speed: SpeedConfig,
    /// Batch layer.
    pub batch: BatchConfig,
    /// Serving layer.
    pub serving: ServingConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("var"),
            kafka: KafkaConfig::default(),
            redis: RedisConfig::default(),
            mysql: MysqlConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            validation: ValidationConfig::default(),
            attribution: AttributionConfig::default(),
            speed: SpeedConfig::default(),
            batch: BatchConfig::default(),
            serving: ServingConfig::default(),
        }
    }
}

/// `[kafka]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`. Default `127.0.0.1:9092` (the local Apache Kafka broker).
    pub brokers: String,
    /// Traffic topic (exposures, clicks). Default `ad-traffic`.
    pub traffic_topic: String,
    /// Effects topic (consultations, messages, orders, payments). Default `ad-effects`.
    pub effects_topic: String,
    /// Dead-letter topic. Default `ad-dlq`.
    pub dlq_topic: String,
    /// Partition count of every topic (they must match: co-partitioning). Default 8.
    pub partitions: i32,
    /// Static group membership id (`group.instance.id`) of this process's consumers;
    /// empty = the host name; `none` = dynamic membership. A restarted instance with the same id takes its
    /// partitions back at once instead of waiting for its old session to expire. Two
    /// instances of one group on one host need different ids.
    pub group_instance_id: String,
    /// Extra librdkafka settings passed through verbatim to every client
    /// (`security.protocol`, `sasl.mechanisms`, `ssl.ca.location`, ...).
    #[serde(deserialize_with = "settings_map")]
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            traffic_topic: "ad-traffic".into(),
            effects_topic: "ad-effects".into(),
            dlq_topic: "ad-dlq".into(),
            partitions: 8,
            group_instance_id: String::new(),
            client: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The topic name of a topic kind.
    pub fn topic(&self, t: crate::event::TopicKind) -> &str {
        match t {
            crate::event::TopicKind::Traffic => &self.traffic_topic,
            crate::event::TopicKind::Effects => &self.effects_topic,
        }
    }

    /// The topic kind of a topic name, if it is one of the two inputs.
    pub fn topic_kind(&self, name: &str) -> Option<crate::event::TopicKind> {
        if name == self.traffic_topic {
            Some(crate::event::TopicKind::Traffic)
        } else if name == self.effects_topic {
            Some(crate::event::TopicKind::Effects)
        } else {
            None
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Connection URL. Default `redis://127.0.0.1:6390/` (the product's own Redis with
    /// AOF, started by `deploy/local/up.sh`; not the dev machine's 6379).
    pub url: Secret,
    /// Seed nodes of a Redis Cluster (`redis://host:port/` each); when non-empty the
    /// cluster is used and `url` is ignored. Default empty. Key layout and why writes
    /// stay atomic: [`crate::redis_conn`].
    pub cluster_nodes: Vec<Secret>,
    /// Prefix of every key the platform writes. Default `am`.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6390/".into(),
            cluster_nodes: Vec::new(),
            key_prefix: "am".into(),
        }
    }
}

/// `[mysql]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// Connection URL. Default `mysql://admetrics:admetrics@127.0.0.1:3306/admetrics`.
    pub url: Secret,
    /// Connection pool upper bound. Default 10.
    pub pool_max: usize,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        MysqlConfig {
            url: "mysql://admetrics:admetrics@127.0.0.1:3306/admetrics".into(),
            pool_max: 10,
        }
    }
}

/// `[clickhouse]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// Write enriched detail rows from the speed layer. Default true.
    pub enabled: bool,
    /// HTTP endpoint. Default `http://127.0.0.1:8123`.
    pub url: String,
    /// HTTP endpoints of the shards of a sharded deployment, one per shard, in the order
    /// of the shards in the cluster definition; when non-empty `url` is ignored, the
    /// speed layer writes each row to its shard's local tables, and `<table>_all`
    /// `Distributed` tables are created for reads. Default empty (one server).
    pub shards: Vec<String>,
    /// Name of the cluster (`<remote_servers>` in the servers' configuration) the
    /// `Distributed` tables read from. Default `admetrics`.
    pub cluster: String,
    /// Database. Default `admetrics`.
    pub database: String,
    /// User. Default `default`.
    pub user: String,
    /// Password. Default empty.
    pub password: Secret,
    /// Rows per insert batch (a batch is sent at this size or after `batch_interval`,
    /// whichever comes first). Default 10 000 (the design brief).
    pub batch_rows: usize,
    /// Longest time a row waits in a batch. Default 15 s (the design brief).
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Shortest time between two batches that `batch_rows` sealed: above
    /// `batch_rows` rows per this interval a batch grows until the interval has passed,
    /// so a shard gets at most about one INSERT per interval (ClickHouse's guidance
    /// for MergeTree tables: each INSERT makes a part in the table and in each rollup,
    /// merged later; at 280 000 rows/s, INSERTs of 10 000 rows cost ClickHouse 2.4x
    /// the CPU per row of INSERTs of 100 000 in `speed-layer bench e2e`). Default 1 s.
    #[serde(with = "humantime_serde")]
    pub min_insert_interval: Duration,
    /// Attempts per batch before it is spilled to disk. Default 5.
    pub max_attempts: usize,
    /// First retry delay; doubles per attempt with jitter. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub retry_min_delay: Duration,
    /// Cap of the retry delay. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            enabled: true,
            url: "http://127.0.0.1:8123".into(),
            shards: Vec::new(),
            cluster: "admetrics".into(),
            database: "admetrics".into(),
            user: "default".into(),
            password: Secret::default(),
            batch_rows: 10_000,
            batch_interval: Duration::from_secs(15),
            min_insert_interval: Duration::from_secs(1),
            max_attempts: 5,
            retry_min_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(10),
        }
    }
}

impl ClickHouseConfig {
    /// One configuration per shard (each with its shard's `url`); the configuration
    /// itself when not sharded.
    pub fn per_shard(&self) -> Vec<ClickHouseConfig> {
        if self.shards.is_empty() {
            return vec![self.clone()];
        }
        self.shards
            .iter()
            .map(|url| ClickHouseConfig {
                url: url.clone(),
                shards: Vec::new(),
                ..self.clone()
            })
            .collect()
    }
}

/// `[validation]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Largest accepted message, bytes. Default 65 536.
    pub max_message_bytes: usize,
    /// Producer clock skew tolerated ahead of the consumer's clock. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Oldest event the speed layer accepts (older ones go to the DLQ as `ts_too_old`;
    /// the archiver still keeps them for the batch layer). Default 7 days.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_message_bytes: 64 * 1024,
            max_future: Duration::from_secs(600),
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

impl ValidationConfig {
    /// The limits as the decoder takes them.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_future_ms: duration_ms(self.max_future),
            max_age_ms: duration_ms(self.max_age),
        }
    }
}

/// `[attribution]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Indirect attribution lookback. Default 14 days (the design brief).
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// How long the speed layer holds an effect waiting for the click that explains it,
    /// in event time of its partition. Default 3 h (the design brief).
    #[serde(with = "humantime_serde")]
    pub effect_wait: Duration,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            lookback: Duration::from_secs(14 * 86_400),
            effect_wait: Duration::from_secs(3 * 3_600),
        }
    }
}

impl AttributionConfig {
    /// The rules as `attribute` takes them.
    pub fn rules(&self) -> Rules {
        Rules {
            lookback_ms: duration_ms(self.lookback),
        }
    }
}

/// `[speed]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpeedConfig {
    /// Kafka consumer group. Default `admetrics-speed`.
    pub group_id: String,
    /// Tumbling window length. Default 10 s (the design brief).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Bounded out-of-orderness: the watermark trails the largest event time seen by
    /// this much, so a window closes this long after its end. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub out_of_orderness: Duration,
    /// When a partition has received nothing for this long, its watermark advances
    /// with the wall clock (from its newest event time, at most to the clock minus
    /// `out_of_orderness`), so quiet partitions still close windows; after ten times
    /// this (30 s) it follows the clock, so waits end when a stream stops. Default 3 s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Duplicates (same `event_id`) are dropped when their event times are within this
    /// horizon of each other. Default 24 h.
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// Least time between two result writes of one partition; closed windows wait at
    /// most this long. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub min_flush_interval: Duration,
    /// Day counters and UV fire early: what a partition consumed is written at most
    /// this long after it arrived, before its 10-second window closes (the series
    /// buckets still wait for their window). Never below `min_flush_interval`.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub early_fire_interval: Duration,
    /// Capacity of each dimension cache (ads, advertisers, products). Default 100 000.
    pub dims_cache_capacity: u64,
    /// Time a cached dimension row lives. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub dims_cache_ttl: Duration,
    /// Address of the Prometheus `/metrics` endpoint. Default `127.0.0.1:9101`.
    pub metrics_listen: String,
    /// Messages buffered per partition between the Kafka reader and its processor.
    /// A slow processor pauses the reader rather than growing memory. Default 4 096.
    pub partition_queue: usize,
    /// Longest wait for a graceful shutdown's final flush. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long provisional results stay in Redis after their last write. Default 40 days.
    #[serde(with = "humantime_serde")]
    pub result_ttl: Duration,
}

impl Default for SpeedConfig {
    fn default() -> Self {
        SpeedConfig {
            group_id: "admetrics-speed".into(),
            window: Duration::from_secs(10),
            out_of_orderness: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(3),
            dedup_horizon: Duration::from_secs(24 * 3_600),
            min_flush_interval: Duration::from_secs(1),
            early_fire_interval: Duration::from_secs(1),
            dims_cache_capacity: 100_000,
            dims_cache_ttl: Duration::from_secs(300),
            metrics_listen: "127.0.0.1:9101".into(),
            partition_queue: 4_096,
            shutdown_timeout: Duration::from_secs(30),
            result_ttl: Duration::from_secs(40 * 86_400),
        }
    }
}

/// Compression of the archive's Parquet files (`batch.archive_compression`).
///
/// Each archived day is read 15 times by the nightly recompute (as its own day, then
/// as lookback of the 14 days after it), so decoding speed weighs more than size:
/// measured on the standard load (`deploy/local/bench-recompute.sh`, 1 M events a
/// day), LZ4 files are 39 % larger than zstd level 3 and the recompute spends 2.3x
/// less CPU on them (zstd's decompression and the context it creates per column
/// chunk were 43 % of the recompute's time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveCompression {
    /// LZ4 (the raw block format of Parquet's `LZ4_RAW`). The default.
    #[default]
    Lz4,
    /// Zstandard, level 3: the smallest files.
    Zstd,
    /// Snappy: what pyarrow and Spark write by default.
    Snappy,
}

/// `[batch]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Archive location: a local path or an `object_store` URL (`file:///...`,
    /// `s3://bucket/prefix`, `gs://...`, `az://...`). Default `<state_dir>/archive`.
    pub archive_url: String,
    /// Options passed to the object store builder (credentials, region, endpoint).
    pub archive_options: BTreeMap<String, Secret>,
    /// Kafka consumer group of the archiver. Default `admetrics-archiver`.
    pub group_id: String,
    /// Rows per archive file before it is uploaded. Default 200 000.
    pub archive_max_rows: usize,
    /// Compression of the archive files the archiver writes (files of any codec are
    /// read). Default `lz4`.
    pub archive_compression: ArchiveCompression,
    /// Longest time an event waits in the archiver before upload. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub archive_max_age: Duration,
    /// When the scheduler looks for days that have closed and finalizes them (cron
    /// with seconds, in `platform_tz`). Default `0 */15 * * * *` (every 15 minutes: a
    /// zone's day turns final at most 15 minutes after it closes; zones at :30 and :45
    /// offsets included).
    pub schedule: String,
    /// When the scheduler also checks the final days of the last 35 days for late data
    /// (reads every input file's footer: nightly). Default `0 30 2 * * *` (02:30).
    pub late_data_schedule: String,
    /// How long after an advertiser's day has ended in its time zone the day may turn
    /// final: late events within this allowance are in the final numbers, later ones
    /// revise the day. Default 1 h (the design's "late data" rule; the seeds' platform
    /// showed real-time numbers after the day switch until the offline result was ready).
    #[serde(with = "humantime_serde")]
    pub late_allowance: Duration,
    /// Time zone of the schedule. Default `UTC`.
    pub platform_tz: String,
    /// Rows per in-memory group of the recompute: a Kafka partition whose files of the
    /// day hold more rows than this is processed in user-hash slices, bounding memory
    /// (the lookback clicks of the slice's converting users come on top). Default
    /// 4 000 000.
    pub max_rows_in_memory: usize,
    /// Worker threads of the recompute (0 = all cores). Default 0.
    pub threads: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            archive_url: String::new(),
            archive_compression: ArchiveCompression::default(),
            archive_options: BTreeMap::new(),
            group_id: "admetrics-archiver".into(),
            archive_max_rows: 200_000,
            archive_max_age: Duration::from_secs(60),
            schedule: "0 */15 * * * *".into(),
            late_data_schedule: "0 30 2 * * *".into(),
            late_allowance: Duration::from_secs(3600),
            platform_tz: "UTC".into(),
            max_rows_in_memory: 4_000_000,
            threads: 0,
        }
    }
}

/// `[serving]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServingConfig {
    /// HTTP listen address. Default `127.0.0.1:8080`.
    pub listen: String,
    /// Longest `from..to` range a request may ask for, days. Default 366.
    pub max_range_days: i64,
    /// Requests per second allowed per API key (token bucket). Default 50.
    pub rate_limit_per_second: u32,
    /// Burst size of the per-key rate limit. Default 100.
    pub rate_limit_burst: u32,
    /// Per-request timeout. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open waiting for the next request. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest time a day replaced by a new batch run may still be served from the old
    /// run after the run committed: the server polls `day_finality` (the final
    /// zone-days and their versions) every half of it and never uses a poll older than
    /// it. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub batch_staleness: Duration,
    /// Longest time an answer may lag the speed layer's last completed flush: the
    /// server polls the flush sequence numbers every half of it and never uses a poll
    /// older than it. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub speed_staleness: Duration,
    /// How long a verified API key is trusted without asking MySQL again: a revoked
    /// key is refused at most this long after `keys revoke`. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
    /// How long dimension lookups (an advertiser's time zone, its ads' campaigns) are
    /// kept. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub dimension_cache_ttl: Duration,
    /// Key verifications that miss the key cache (unknown keys, wrong secrets) allowed
    /// per minute per key id and per client address, so guessing secrets costs the
    /// guesser, not MySQL. Default 60.
    pub auth_attempts_per_minute: u32,
    /// Memory bound of the in-process caches (answers, advertiser-days), MiB.
    /// Default 256.
    pub cache_mib: u64,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            listen: "127.0.0.1:8080".into(),
            max_range_days: 366,
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            request_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            batch_staleness: Duration::from_secs(1),
            speed_staleness: Duration::from_secs(1),
            key_cache_ttl: Duration::from_secs(5),
            dimension_cache_ttl: Duration::from_secs(60),
            auth_attempts_per_minute: 60,
            cache_mib: 256,
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Errors of loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be parsed.
    #[error("cannot load configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// The values parsed but break rules; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Loads defaults, then `file` (if given), then `ADMETRICS__*` variables, and
    /// validates the result.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Load`] for a missing file or a malformed value,
    /// [`ConfigError::Invalid`] listing every rule the values break.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, "ADMETRICS__")
    }

    /// Environment variable naming the secrets file merged over the configuration file.
    pub const SECRETS_FILE_ENV: &str = "ADMETRICS_SECRETS_FILE";

    /// [`Config::load`] with another environment prefix (tests use one nobody sets).
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn load_with_env(file: Option<&Path>, env_prefix: &str) -> Result<Config, ConfigError> {
        let secrets = std::env::var_os(Self::SECRETS_FILE_ENV).map(PathBuf::from);
        Self::load_files(file, secrets.as_deref(), env_prefix)
    }

    /// [`Config::load_with_env`] with the secrets file given instead of read from
    /// `ADMETRICS_SECRETS_FILE`.
    ///
    /// # Errors
    ///
    /// As [`Config::load`]; also when `secrets` names a missing file.
    pub fn load_files(
        file: Option<&Path>,
        secrets: Option<&Path>,
        env_prefix: &str,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        for (f, what) in [(file, "config file"), (secrets, Self::SECRETS_FILE_ENV)] {
            let Some(f) = f else { continue };
            if !f.exists() {
                return Err(ConfigError::Invalid(vec![format!(
                    "{what} {} does not exist",
                    f.display()
                )]));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed(env_prefix).split("__"));
        let mut cfg: Config = fig.extract().map_err(Box::new)?;
        if cfg.batch.archive_url.is_empty() {
            cfg.batch.archive_url = cfg.state_dir.join("archive").display().to_string();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the rules between fields and reports all problems together.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] with one line per problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        if self.kafka.partitions < 1 {
            errs.push(format!(
                "kafka.partitions must be >= 1, got {}",
                self.kafka.partitions
            ));
        }
        let w = self.speed.window.as_millis();
        if w == 0 || 60_000 % w != 0 {
            errs.push(format!(
                "speed.window must divide one minute evenly, got {:?}",
                self.speed.window
            ));
        }
        if self.speed.idle_timeout.is_zero() {
            errs.push("speed.idle_timeout must be positive".into());
        }
        // The dedup set tells hours apart by an 8-bit tag (speed-layer's pipeline::dedup).
        if self.speed.dedup_horizon > Duration::from_secs(240 * 3_600) {
            errs.push(format!(
                "speed.dedup_horizon must be at most 240h (10 days), got {:?}",
                self.speed.dedup_horizon
            ));
        }
        if self.attribution.lookback < Duration::from_secs(86_400) {
            errs.push("attribution.lookback must be at least one day".into());
        }
        if self.clickhouse.batch_rows == 0 {
            errs.push("clickhouse.batch_rows must be positive".into());
        }
        if self.clickhouse.max_attempts == 0 {
            errs.push("clickhouse.max_attempts must be at least 1".into());
        }
        if self.clickhouse.retry_min_delay > self.clickhouse.retry_max_delay {
            errs.push("clickhouse.retry_min_delay must not exceed retry_max_delay".into());
        }
        if self.batch.platform_tz.parse::<chrono_tz::Tz>().is_err() {
            errs.push(format!(
                "batch.platform_tz `{}` is not an IANA time zone",
                self.batch.platform_tz
            ));
        }
        for (key, expr) in [
            ("schedule", &self.batch.schedule),
            ("late_data_schedule", &self.batch.late_data_schedule),
        ] {
            if let Err(e) = cron_schedule(expr) {
                errs.push(format!(
                    "batch.{key} `{expr}` is not a cron expression: {e}"
                ));
            }
        }
        if self.serving.max_range_days < 1 {
            errs.push("serving.max_range_days must be >= 1".into());
        }
        if self.serving.rate_limit_per_second == 0 || self.serving.rate_limit_burst == 0 {
            errs.push("serving.rate_limit_per_second and rate_limit_burst must be positive".into());
        }
        if self.serving.auth_attempts_per_minute == 0 {
            errs.push("serving.auth_attempts_per_minute must be positive".into());
        }
        for (name, d) in [
            ("header_read_timeout", self.serving.header_read_timeout),
            ("batch_staleness", self.serving.batch_staleness),
            ("speed_staleness", self.serving.speed_staleness),
        ] {
            if d.is_zero() {
                errs.push(format!("serving.{name} must be positive"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

/// Parses a cron expression with seconds (`sec min hour day month weekday [year]`),
/// as the batch layer's scheduler reads `batch.schedule` and `batch.late_data_schedule`.
///
/// # Errors
///
/// The `cron` crate's error when the expression does not parse.
pub fn cron_schedule(expr: &str) -> Result<cron::Schedule, cron::error::Error> {
    <cron::Schedule as std::str::FromStr>::from_str(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems `validate` reports for `cfg`.
    fn problems(cfg: &Config) -> Vec<String> {
        match cfg.validate() {
            Err(ConfigError::Invalid(v)) => v,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_time_zone_is_refused_naming_its_key() {
        let mut c = Config::default();
        c.batch.platform_tz = "Mars/Olympus_Mons".into();
        let p = problems(&c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("batch.platform_tz `Mars/Olympus_Mons`"),
            "{p:?}"
        );
    }

    #[test]
    fn a_cron_expression_that_does_not_parse_is_refused_naming_its_key() {
        let mut c = Config::default();
        // Six fields (the old shape check let it through) but no 61st minute.
        c.batch.late_data_schedule = "0 61 2 * * *".into();
        c.batch.schedule = "every quarter hour".into();
        let p = problems(&c);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("batch.schedule `every quarter hour`"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("batch.late_data_schedule `0 61 2 * * *`"),
            "{p:?}"
        );
    }

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.speed.window, Duration::from_secs(10));
        assert_eq!(c.attribution.lookback, Duration::from_secs(14 * 86_400));
        assert_eq!(c.attribution.effect_wait, Duration::from_secs(3 * 3_600));
        assert_eq!(c.clickhouse.batch_rows, 10_000);
        assert_eq!(c.clickhouse.batch_interval, Duration::from_secs(15));
    }

    #[test]
    fn the_file_overrides_defaults_and_all_errors_are_listed() {
        let load = |f: &Path| Config::load_with_env(Some(f), "ADMETRICS_UNIT_TEST_UNSET__");
        let dir = std::env::temp_dir().join(format!("admetrics-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "[speed]\nwindow = \"5s\"\n[kafka]\npartitions = 0\n[serving]\nmax_range_days = 0\n",
        )
        .unwrap();
        match load(&f) {
            Err(ConfigError::Invalid(errs)) => {
                assert_eq!(errs.len(), 2, "{errs:?}");
            }
            other => panic!("expected invalid, got {other:?}"),
        }
        std::fs::write(&f, "[speed]\nwindow = \"5s\"\n").unwrap();
        let c = load(&f).unwrap();
        assert_eq!(c.speed.window, Duration::from_secs(5));
        std::fs::write(&f, "[speed]\nwindoww = \"5s\"\n").unwrap();
        assert!(
            matches!(load(&f), Err(ConfigError::Load(_))),
            "unknown keys are errors"
        );
    }

    #[test]
    fn the_documented_defaults_file_matches_the_code() {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/default.toml");
        let mut from_file = Config::load_with_env(Some(&f), "ADMETRICS_UNIT_TEST_UNSET__").unwrap();
        from_file.batch.archive_url = String::new();
        assert_eq!(from_file, Config::default());
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::default();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("admetrics:admetrics@"), "{dbg}");
    }
}
