//! Kafka plumbing shared by the speed and batch layers (feature `kafka`): client
//! configuration, topic creation, and the dead-letter record format.
//!
//! # Dead-letter records (topic `ad-dlq`)
//!
//! The payload and key are the original message's bytes, unchanged, so a re-drive
//! produces them back as they were. The reason travels in headers:
//!
//! | header | value |
//! |---|---|
//! | `dlq.reason` | stable code of [`common::decode::RejectReason`] |
//! | `dlq.detail` | human-readable detail naming the field |
//! | `dlq.topic` | source topic |
//! | `dlq.partition` | source partition |
//! | `dlq.offset` | source offset |
//! | `dlq.stage` | who rejected it (`speed-layer`, ...) |
//! | `dlq.at_ms` | when, ms UTC |

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;

use common::config::KafkaConfig;
use common::decode::Rejection;

/// Base client settings: brokers plus every pass-through setting of `[kafka.client]`.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.client {
        c.set(k, v);
    }
    c
}

/// Producer settings: `acks=all` with idempotence on (the design brief, "Library and
/// server facts"), so a retried send after a broker hiccup is written once; exactly-once
/// of the results still rests on `event_id` dedup and offsets stored with them.
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "60000")
        .set("partitioner", "murmur2_random");
    c
}

/// Consumer settings for a group that stores offsets itself (auto commit off).
/// `range` assignment keeps partition `p` of both co-partitioned topics on the same
/// member, which attribution needs.
pub fn consumer_config(cfg: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut c = client_config(cfg);
    match cfg.group_instance_id.as_str() {
        "none" => {}
        "" => _ = c.set("group.instance.id", host_name()),
        id => _ = c.set("group.instance.id", id),
    }
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "65536")
        // librdkafka postpones a partition's next fetch by this long once its local
        // queue passes `queued.min.messages` (100 000); the default 1 s halved the
        // speed layer's throughput on a backlog (`speed-layer bench e2e`: 10.0 s ->
        // 5.3 s for 1 M clicks) while its queue was never empty for long.
        .set("fetch.queue.backoff.ms", "10");
    c
}

/// The partition numbers of `topic`, from the brokers' metadata (empty when the topic
/// does not exist).
///
/// # Errors
///
/// When the metadata request fails (within `timeout`).
pub fn topic_partitions<C: rdkafka::consumer::ConsumerContext>(
    client: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<Vec<i32>> {
    use rdkafka::consumer::Consumer as _;
    let md = client.fetch_metadata(Some(topic), timeout)?;
    Ok(md
        .topics()
        .iter()
        .flat_map(|t| {
            t.partitions()
                .iter()
                .map(rdkafka::metadata::MetadataPartition::id)
        })
        .collect())
}

/// The host name (for the default static group membership id).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "admetrics".to_owned())
}

/// Creates `topics` with `partitions` each; existing topics are left as they are.
///
/// # Errors
///
/// When the broker refuses for another reason than "already exists".
pub async fn create_topics(
    cfg: &KafkaConfig,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(new.iter(), &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Where a dead-lettered message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqSource<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Component that rejected it.
    pub stage: &'a str,
}

/// The headers of a dead-letter record.
pub fn dlq_headers(rejection: &Rejection, src: &DlqSource<'_>, at_ms: i64) -> OwnedHeaders {
    let partition = src.partition.to_string();
    let offset = src.offset.to_string();
    let at = at_ms.to_string();
    OwnedHeaders::new_with_capacity(7)
        .insert(Header {
            key: "dlq.reason",
            value: Some(rejection.reason.as_str()),
        })
        .insert(Header {
            key: "dlq.detail",
            value: Some(rejection.detail.as_str()),
        })
        .insert(Header {
            key: "dlq.topic",
            value: Some(src.topic),
        })
        .insert(Header {
            key: "dlq.partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "dlq.offset",
            value: Some(offset.as_str()),
        })
        .insert(Header {
            key: "dlq.stage",
            value: Some(src.stage),
        })
        .insert(Header {
            key: "dlq.at_ms",
            value: Some(at.as_str()),
        })
}

/// Reads one header as UTF-8.
pub fn header_str<'h, H: Headers>(headers: &'h H, key: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod passthrough_tests {
    use rdkafka::producer::BaseProducer;

    use common::config::Config;

    /// An operator's secured-cluster settings: TLS and SASL in the config file, the
    /// SASL credentials in the secrets file (a Kubernetes Secret).
    fn load(client: &str) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "admetrics-kafka-conf-{}-{}",
            std::process::id(),
            client.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("admetrics.toml");
        std::fs::write(
            &config,
            format!("[kafka]\nbrokers = \"127.0.0.1:1\"\n[kafka.client]\n{client}"),
        )
        .unwrap();
        let secrets = dir.join("secrets.toml");
        std::fs::write(
            &secrets,
            "[kafka.client]\n\"sasl.username\" = \"svc-admetrics\"\n\"sasl.password\" = \"s3cret\"\n",
        )
        .unwrap();
        Config::load_files(Some(&config), Some(&secrets), "ADMETRICS_UNSET_IN_TESTS__").unwrap()
    }

    #[test]
    fn tls_and_sasl_settings_from_config_and_secrets_reach_librdkafka() {
        let cfg = load(
            "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\"ssl.ca.location\" = \"probe\"\n\"ssl.endpoint.identification.algorithm\" = \"https\"\n",
        );
        assert_eq!(cfg.kafka.client["sasl.password"], "s3cret");
        assert_eq!(cfg.kafka.client["security.protocol"], "SASL_SSL");
        let c = super::producer_config(&cfg.kafka);
        assert_eq!(c.get("sasl.username"), Some("svc-admetrics"));
        // librdkafka checks every setting when the client is created: this fails on a
        // build without TLS or SASL support.
        c.create::<BaseProducer>()
            .expect("librdkafka accepts SASL_SSL with SCRAM (built with TLS and SASL)");
    }

    #[test]
    fn a_misspelled_librdkafka_setting_is_refused() {
        let cfg = load("\"security.protocoll\" = \"SSL\"\n");
        let err = super::producer_config(&cfg.kafka)
            .create::<BaseProducer>()
            .map(|_| ())
            .expect_err("unknown setting");
        assert!(err.to_string().contains("security.protocoll"), "{err}");
    }
}
