//! `speed-layer bench e2e`: throughput and freshness through the real path, producer ->
//! Kafka -> speed layer -> Redis, next to a bare rdkafka consumer on the same topic.
//!
//! The run works in a namespace of its own (topics, Redis key prefix, consumer groups
//! ClickHouse database and state directory named `bench-e2e-<ms>`), removed at the end, so it can run
//! beside anything else on the same services. Its events are live clicks (event time =
//! when produced) of the data set's busiest advertiser, on its users and ads, so every
//! partition is busy and every click passes the dimension join.
//!
//! 1. **Throughput.** `events` clicks are produced first (as fast as the producer
//!    goes), then read twice from the same topic:
//!    - by a bare consumer (`StreamConsumer`, its own group, reads and drops), timed from
//!      `subscribe` to the last message;
//!    - by the speed layer itself ([`crate::service::run_without_exporter`] in this process, the code
//!      `speed-layer run` runs, ClickHouse detail rows included when enabled), timed from
//!      its start to the moment Redis holds every click.
//!
//!    Both include joining the group; the speed layer also its connections, loading
//!    its partitions' state and its last flush.
//! 2. **Freshness** at each fixed rate: clicks produced at that rate for a while, with
//!    the speed layer running and caught up; the k-th click produced is visible at the
//!    first poll (every 20 ms) where Redis holds k clicks more than before, and its
//!    freshness is that time minus the time it was handed to the producer. Day counters
//!    fire early (every `speed.early_fire_interval`), so freshness is not bounded by the
//!    10-second window.
//! 3. **CPU per click** of both reading phases, of this process and of the whole
//!    machine (`/proc`). When the machine's cores are busy in both phases (on a small
//!    machine, where broker, Redis, ClickHouse and the speed layer share them), the
//!    throughput ratio cannot exceed the ratio of machine CPU per click
//!    (`cpu_bound_ratio`): that figure says how much of a shortfall is work the path
//!    does (ClickHouse's inserts, Redis's script, the speed layer) rather than waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::config::Config;
use common::day::{now_ms, today};
use common::event::{Event, EventKind};
use common::redis_keys::{Keys, field};
use fixtures::dataset;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Debug, Clone)]
pub struct E2eOptions {
    /// The data set (its busiest advertiser's users and ads are used).
    pub data: std::path::PathBuf,
    /// Clicks for the throughput phase.
    pub events: usize,
    /// Fixed rates of the freshness phases, clicks per second.
    pub rates: Vec<u64>,
    /// How long each freshness phase produces.
    pub rate_duration: Duration,
    /// Longest wait for the clicks of a phase to show up in Redis.
    pub timeout: Duration,
}

/// Figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct E2eFigures {
    /// Clicks of the throughput phase.
    pub events: usize,
    /// Partitions of the topic.
    pub partitions: i32,
    /// Clicks per second handed to Kafka (acknowledged, `acks=all`) while preloading.
    pub producer_events_per_second: f64,
    /// Seconds the bare consumer took to read them all.
    pub bare_consumer_seconds: f64,
    /// Clicks per second read by the bare consumer.
    pub bare_consumer_events_per_second: f64,
    /// Seconds from the speed layer's start to every click counted in Redis.
    pub speed_layer_seconds: f64,
    /// Clicks per second through the speed layer into Redis.
    pub speed_layer_events_per_second: f64,
    /// Speed layer / bare consumer throughput.
    pub ratio_to_bare_consumer: f64,
    /// Cores of this machine (everything of the run shares them: broker, Redis,
    /// ClickHouse, MySQL and this process).
    pub machine_cores: usize,
    /// CPU per click while the bare consumer read.
    pub bare_consumer_cpu: CpuPerEvent,
    /// CPU per click while the speed layer counted.
    pub speed_layer_cpu: CpuPerEvent,
    /// Bare consumer's machine CPU per click / the speed layer's: the throughput
    /// ratio a machine whose cores are all busy in both phases allows at most.
    pub cpu_bound_ratio: f64,
    /// Freshness at each fixed rate.
    pub freshness: Vec<Freshness>,
}

/// CPU time per click of one phase, µs (core-microseconds: 2 cores busy for 1 s are
/// 2 000 000).
#[derive(Debug, Clone, Serialize)]
pub struct CpuPerEvent {
    /// Of this process (the reading consumer; in the speed-layer phase the whole
    /// speed layer, and the benchmark's Redis poll every 20 ms).
    pub process_us: f64,
    /// Of the whole machine (every process, the kernel included).
    pub machine_us: f64,
}

/// CPU seconds used so far, from `/proc` (Linux; ticks of `USER_HZ`, 100 on Linux).
#[derive(Debug, Clone, Copy)]
struct CpuClock {
    process_s: f64,
    machine_s: f64,
}

impl CpuClock {
    const USER_HZ: f64 = 100.0;

    /// Now; zeros where `/proc` cannot be read (the figures then say 0).
    fn now() -> CpuClock {
        let ticks = |s: Option<f64>| s.unwrap_or(0.0) / Self::USER_HZ;
        // /proc/self/stat: utime and stime are fields 14 and 15; the name in field 2
        // may hold spaces, so count after its closing parenthesis.
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            });
        // /proc/stat's first line: user nice system idle iowait irq softirq steal ...
        let machine = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            let f: Vec<f64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum())
        });
        CpuClock {
            process_s: ticks(process),
            machine_s: ticks(machine),
        }
    }

    /// CPU per event since `self`.
    fn per_event(self, events: usize) -> CpuPerEvent {
        let now = CpuClock::now();
        #[allow(clippy::cast_precision_loss)]
        let us = |s: f64| s * 1e6 / events.max(1) as f64;
        CpuPerEvent {
            process_us: us(now.process_s - self.process_s),
            machine_us: us(now.machine_s - self.machine_s),
        }
    }
}

/// Freshness (produced -> visible in Redis) at one fixed rate, seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    /// Target rate, clicks per second.
    pub rate: u64,
    /// Clicks produced.
    pub events: usize,
    /// Rate reached by the producer, clicks per second.
    pub achieved_rate: f64,
    /// Median.
    pub p50_s: f64,
    /// 99th percentile.
    pub p99_s: f64,
    /// Maximum.
    pub max_s: f64,
}

/// The clicks the benchmark produces: the busiest advertiser's users and ads.
struct Clicks {
    advertiser: i64,
    ads: Vec<i64>,
    /// (user, ad, product) of each of its rows.
    rows: Vec<(String, i64, i64)>,
    cost_micros: Option<i64>,
    /// Unique per run, so that no click is a duplicate of an earlier run's.
    run_id: i64,
}

impl Clicks {
    fn of_busiest_advertiser(rows: &[dataset::Row]) -> anyhow::Result<Clicks> {
        let mut per_app = std::collections::HashMap::<i64, usize>::new();
        for r in rows {
            *per_app.entry(r.app).or_default() += 1;
        }
        let app = per_app
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(a, _)| a)
            .context("empty data set")?;
        let mine: Vec<&dataset::Row> = rows.iter().filter(|r| r.app == app).collect();
        let template = mine[0].click(0);
        let ads: std::collections::BTreeSet<i64> = mine.iter().map(|r| r.ad_id()).collect();
        Ok(Clicks {
            advertiser: template.advertiser_id,
            ads: ads.into_iter().collect(),
            rows: mine
                .iter()
                .map(|r| {
                    let c = r.click(0);
                    (
                        c.user_id.into_owned(),
                        c.ad_id.unwrap_or(0),
                        c.product_id.unwrap_or(0),
                    )
                })
                .collect(),
            cost_micros: template.cost_micros,
            run_id: now_ms(),
        })
    }

    /// Click number `i`, at the current time: (key, JSON payload).
    fn click(&self, i: usize) -> (&str, Vec<u8>) {
        let (user, ad, product) = &self.rows[i % self.rows.len()];
        let e = Event {
            v: 1,
            kind: EventKind::Click,
            event_id: format!("e2e-{}-{i}", self.run_id).into(),
            ts: now_ms(),
            user_id: user.as_str().into(),
            ad_id: Some(*ad),
            advertiser_id: self.advertiser,
            product_id: Some(*product),
            cost_micros: self.cost_micros,
            gmv_micros: None,
        };
        (user.as_str(), e.to_json())
    }
}

/// The configuration of this run's namespace.
fn isolated(base: &Config, id: &str) -> Config {
    let mut cfg = base.clone();
    cfg.kafka.traffic_topic = format!("{id}-ad-traffic");
    cfg.kafka.effects_topic = format!("{id}-ad-effects");
    cfg.kafka.dlq_topic = format!("{id}-ad-dlq");
    cfg.redis.key_prefix = id.to_owned();
    cfg.speed.group_id = format!("{id}-speed");
    cfg.clickhouse.database = format!("{}_{}", base.clickhouse.database, id.replace('-', "_"));
    // The ClickHouse sink's journal and spill files: never another instance's.
    cfg.state_dir = base.state_dir.join(id);
    cfg
}

/// Runs the benchmark.
///
/// # Errors
///
/// When the data set, MySQL, Kafka, Redis or ClickHouse fail, or the clicks of a phase
/// do not all show up in Redis within `opts.timeout`.
pub async fn run(base: &Config, opts: &E2eOptions) -> anyhow::Result<E2eFigures> {
    let id = format!("bench-e2e-{}", now_ms());
    let cfg = Arc::new(isolated(base, &id));
    let rows =
        dataset::read(&opts.data).with_context(|| format!("reading {}", opts.data.display()))?;
    let pool = platform::db::pool(&cfg.mysql)?;
    crate::tools::replay::load_dimensions(&pool, &rows).await?;
    pool.disconnect().await.ok();
    let clicks = Clicks::of_busiest_advertiser(&rows)?;
    drop(rows);
    let k = &cfg.kafka;
    platform::kafka::create_topics(
        k,
        &[&k.traffic_topic, &k.effects_topic, &k.dlq_topic],
        k.partitions,
    )
    .await
    .context("creating the benchmark's topics")?;
    let result = phases(&cfg, &clicks, opts).await;
    if let Err(e) = clean_up(&cfg).await {
        tracing::warn!(error = %e, namespace = %id, "could not remove the benchmark's namespace");
    }
    result
}

async fn phases(
    cfg: &Arc<Config>,
    clicks: &Clicks,
    opts: &E2eOptions,
) -> anyhow::Result<E2eFigures> {
    let producer: FutureProducer = platform::kafka::producer_config(&cfg.kafka)
        .create()
        .context("kafka producer")?;
    let visible = Visible::connect(cfg, clicks).await?;

    eprintln!("producing {} clicks", opts.events);
    let started = Instant::now();
    produce(
        &producer,
        &cfg.kafka.traffic_topic,
        clicks,
        0..opts.events,
        0,
        None,
    )
    .await?;
    let producer_seconds = started.elapsed().as_secs_f64();

    eprintln!("bare consumer reading them");
    let cpu = CpuClock::now();
    let bare_seconds = bare_consumer(cfg, opts.events, opts.timeout).await?;
    let bare_cpu = cpu.per_event(opts.events);

    eprintln!("speed layer counting them");
    let shutdown = CancellationToken::new();
    let cpu = CpuClock::now();
    let started = Instant::now();
    let service = tokio::spawn(crate::service::run_without_exporter(
        Arc::clone(cfg),
        shutdown.clone(),
    ));
    visible
        .wait_for(i64::try_from(opts.events)?, opts.timeout, &service)
        .await?;
    let speed_seconds = started.elapsed().as_secs_f64();
    let speed_cpu = cpu.per_event(opts.events);

    let mut freshness = Vec::new();
    let mut next = opts.events;
    for &rate in &opts.rates {
        eprintln!("freshness at {rate} clicks/s for {:?}", opts.rate_duration);
        #[allow(clippy::cast_possible_truncation)]
        let n = (rate as f64 * opts.rate_duration.as_secs_f64()) as usize;
        freshness.push(
            fresh_at(
                &producer,
                cfg,
                clicks,
                &visible,
                next..next + n,
                rate,
                opts.timeout,
                &service,
            )
            .await?,
        );
        next += n;
    }
    shutdown.cancel();
    service.await.context("speed layer task")??;

    #[allow(clippy::cast_precision_loss)]
    let per_s = |secs: f64| opts.events as f64 / secs.max(1e-9);
    Ok(E2eFigures {
        events: opts.events,
        partitions: cfg.kafka.partitions,
        producer_events_per_second: per_s(producer_seconds),
        bare_consumer_seconds: bare_seconds,
        bare_consumer_events_per_second: per_s(bare_seconds),
        speed_layer_seconds: speed_seconds,
        speed_layer_events_per_second: per_s(speed_seconds),
        ratio_to_bare_consumer: bare_seconds / speed_seconds.max(1e-9),
        machine_cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu_bound_ratio: bare_cpu.machine_us / speed_cpu.machine_us.max(1e-9),
        bare_consumer_cpu: bare_cpu,
        speed_layer_cpu: speed_cpu,
        freshness,
    })
}

/// Produces clicks `range` at `rate` per second (0 = unpaced), reporting the instant
/// each was handed to the producer to `sent`; returns once Kafka acknowledged all.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    clicks: &Clicks,
    range: std::ops::Range<usize>,
    rate: u64,
    sent: Option<&tokio::sync::mpsc::UnboundedSender<Instant>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let first = range.start;
    let mut inflight = Vec::new();
    for i in range {
        if rate > 0 {
            #[allow(clippy::cast_precision_loss)]
            let due = Duration::from_secs_f64((i - first) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let (key, payload) = clicks.click(i);
        if let Some(s) = sent {
            let _ = s.send(Instant::now());
        }
        match producer.send_result(FutureRecord::to(topic).key(key).payload(&payload)) {
            Ok(f) => inflight.push(f),
            Err((err, _)) => anyhow::bail!("producing: {err}"),
        }
        if inflight.len() >= 50_000 {
            for f in inflight.drain(..) {
                f.await
                    .context("delivery")?
                    .map_err(|(e, _)| e)
                    .context("delivery")?;
            }
        }
    }
    for f in inflight {
        f.await
            .context("delivery")?
            .map_err(|(e, _)| e)
            .context("delivery")?;
    }
    Ok(())
}

/// Seconds a bare consumer in a group of its own takes from `subscribe` to its
/// `events`-th message of the traffic topic.
async fn bare_consumer(cfg: &Config, events: usize, timeout: Duration) -> anyhow::Result<f64> {
    let group = format!("{}-bare", cfg.speed.group_id);
    let consumer: StreamConsumer = platform::kafka::consumer_config(&cfg.kafka, &group)
        .create()
        .context("bare kafka consumer")?;
    let started = Instant::now();
    consumer
        .subscribe(&[&cfg.kafka.traffic_topic])
        .context("subscribing the bare consumer")?;
    let mut n = 0usize;
    let read = async {
        while n < events {
            consumer.recv().await.context("bare consumer")?;
            n += 1;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .with_context(|| {
            format!("the bare consumer read only {n} of {events} messages in {timeout:?}")
        })??;
    let secs = started.elapsed().as_secs_f64();
    consumer.unsubscribe();
    Ok(secs)
}

/// Freshness of clicks `range` produced at `rate`.
#[allow(clippy::too_many_arguments)]
async fn fresh_at(
    producer: &FutureProducer,
    cfg: &Config,
    clicks: &Clicks,
    visible: &Visible,
    range: std::ops::Range<usize>,
    rate: u64,
    timeout: Duration,
    service: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<Freshness> {
    let events = range.len();
    let before = visible.count().await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let started = Instant::now();
    let produced = produce(
        producer,
        &cfg.kafka.traffic_topic,
        clicks,
        range,
        rate,
        Some(&tx),
    );
    tokio::pin!(produced);
    let mut sent: Vec<Instant> = Vec::with_capacity(events);
    let mut seen_at: Vec<Instant> = Vec::with_capacity(events);
    let mut produced_for = None;
    let deadline = Instant::now() + timeout + Duration::from_secs_f64(events as f64 / rate as f64);
    while seen_at.len() < events {
        anyhow::ensure!(
            !service.is_finished(),
            "the speed layer stopped (see its log above)"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {events} clicks visible in Redis in time",
            seen_at.len()
        );
        tokio::select! {
            r = &mut produced, if produced_for.is_none() => {
                r?;
                produced_for = Some(started.elapsed());
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        while let Ok(t) = rx.try_recv() {
            sent.push(t);
        }
        let seen = usize::try_from(visible.count().await? - before).unwrap_or(0);
        let now = Instant::now();
        while seen_at.len() < seen.min(sent.len()) {
            seen_at.push(now);
        }
    }
    let mut fresh: Vec<f64> = sent
        .iter()
        .zip(&seen_at)
        .map(|(s, v)| v.duration_since(*s).as_secs_f64())
        .collect();
    fresh.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((fresh.len() as f64 - 1.0) * p).round() as usize;
        fresh.get(i).copied().unwrap_or(0.0)
    };
    #[allow(clippy::cast_precision_loss)]
    Ok(Freshness {
        rate,
        events,
        achieved_rate: events as f64
            / produced_for
                .unwrap_or_else(|| started.elapsed())
                .as_secs_f64()
                .max(1e-9),
        p50_s: pct(0.5),
        p99_s: pct(0.99),
        max_s: fresh.last().copied().unwrap_or(0.0),
    })
}

/// Reads how many of the benchmark's clicks Redis counts today.
struct Visible {
    conn: redis::aio::MultiplexedConnection,
    fields: Vec<(String, String)>,
}

impl Visible {
    async fn connect(cfg: &Config, clicks: &Clicks) -> anyhow::Result<Visible> {
        let client = redis::Client::open(cfg.redis.url.expose()).context("redis.url")?;
        let conn = client.get_multiplexed_async_connection().await?;
        let keys = Keys::new(&cfg.redis.key_prefix);
        let day = today(now_ms(), chrono_tz::UTC);
        let mut fields = Vec::new();
        for p in 0..cfg.kafka.partitions {
            for ad in &clicks.ads {
                fields.push((
                    keys.metrics(p, clicks.advertiser, day),
                    field(*ad, "clicks"),
                ));
            }
        }
        Ok(Visible { conn, fields })
    }

    async fn count(&self) -> anyhow::Result<i64> {
        let mut pipe = redis::pipe();
        for (k, f) in &self.fields {
            pipe.hget(k, f);
        }
        let v: Vec<Option<i64>> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(v.into_iter().flatten().sum())
    }

    /// Waits until Redis counts `want` clicks.
    async fn wait_for(
        &self,
        want: i64,
        timeout: Duration,
        service: &tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count().await?;
            if n >= want {
                return Ok(());
            }
            anyhow::ensure!(
                !service.is_finished(),
                "the speed layer stopped (see its log above)"
            );
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {n} of {want} clicks in Redis after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Removes the run's topics, Redis keys and ClickHouse database.
async fn clean_up(cfg: &Config) -> anyhow::Result<()> {
    let k = &cfg.kafka;
    let admin: AdminClient<DefaultClientContext> = platform::kafka::client_config(k).create()?;
    admin
        .delete_topics(
            &[&k.traffic_topic, &k.effects_topic, &k.dlq_topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    std::fs::remove_dir_all(&cfg.state_dir).ok();
    let client = redis::Client::open(cfg.redis.url.expose())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{}:*", cfg.redis.key_prefix);
    let mut keys: Vec<String> = Vec::new();
    {
        let mut iter: redis::AsyncIter<'_, String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter_async(&mut conn)
            .await?;
        while let Some(k) = futures::StreamExt::next(&mut iter).await {
            keys.push(k?);
        }
    }
    for chunk in keys.chunks(1000) {
        let () = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut conn)
            .await?;
    }
    if cfg.clickhouse.enabled {
        crate::clickhouse_sink::server_client(&cfg.clickhouse)
            .query(&format!(
                "DROP DATABASE IF EXISTS {}",
                crate::clickhouse_sink::ident(&cfg.clickhouse.database)
            ))
            .execute()
            .await?;
    }
    Ok(())
}
