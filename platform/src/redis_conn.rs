//! Connections to the product's Redis: one server (`redis.url`) or a Redis Cluster
//! (`redis.cluster_nodes`, a list of seed nodes), behind one type each for async and
//! blocking use, so the speed and serving layers do not care which.
//!
//! # Why the speed layer's writes stay atomic on a cluster
//!
//! Every key of one Kafka partition carries the hash tag `{<prefix>:p<N>}`
//! ([`common::redis_keys`]), so it hashes to one slot, owned by one master. A window
//! flush (result deltas, state, consumed offsets, fencing epoch) touches keys of one
//! partition only and runs as one Lua script, which Redis Cluster executes atomically on
//! that master like a single Redis does. Nothing ever needs a cross-slot transaction.
//!
//! # Reads across slots
//!
//! The serving layer reads one key per partition for each advertiser-day. A cluster
//! refuses a pipeline whose keys span slots, so [`query_by_partition`] sends one pipeline
//! per partition (one slot), all in flight at once over the multiplexed connection of
//! each node: a node sees back-to-back pipelines, and a request costs about one round
//! trip, never one per key. On a single Redis it is one pipeline.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

use common::config::RedisConfig;

/// How long a connection attempt or a reply may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(5);

/// An async connection to a single Redis or a Redis Cluster; cheap to clone (both
/// variants are multiplexed and reconnect by themselves).
#[derive(Clone)]
pub enum RedisConn {
    /// One server (`redis.url`).
    Single(ConnectionManager),
    /// A cluster (`redis.cluster_nodes`): commands are routed by their key's slot, and
    /// `MOVED`/`ASK` redirections are followed.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisConn {
    /// Connects as `cfg` says.
    ///
    /// # Errors
    ///
    /// When the URL(s) do not parse or no server answers.
    pub async fn connect(cfg: &RedisConfig) -> RedisResult<RedisConn> {
        if cfg.cluster_nodes.is_empty() {
            let client = redis::Client::open(cfg.url.expose())?;
            let conf = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(TIMEOUT))
                .set_response_timeout(Some(TIMEOUT));
            Ok(RedisConn::Single(
                ConnectionManager::new_with_config(client, conf).await?,
            ))
        } else {
            Ok(RedisConn::Cluster(
                cluster_client(cfg)?.get_async_connection().await?,
            ))
        }
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

fn cluster_client(cfg: &RedisConfig) -> RedisResult<ClusterClient> {
    ClusterClientBuilder::new(cfg.cluster_nodes.iter().map(|n| n.expose().to_owned()))
        .connection_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
        .build()
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs `cmds`, each tagged with the Kafka partition whose keys (one hash slot) it
/// reads, and returns the replies in the order of `cmds`: one pipeline on a single
/// Redis; one pipeline per partition, all at once, on a cluster (see the module docs).
///
/// # Errors
///
/// The first Redis error, or a reply that does not convert to `T`.
pub async fn query_by_partition<T: FromRedisValue>(
    conn: &RedisConn,
    cmds: Vec<(i32, Cmd)>,
) -> RedisResult<Vec<T>> {
    if cmds.is_empty() {
        return Ok(Vec::new()); // Redis refuses an empty pipeline
    }
    if !conn.is_cluster() {
        let mut pipe = redis::pipe();
        for (_, c) in cmds {
            pipe.add_command(c);
        }
        return pipe.query_async(&mut conn.clone()).await;
    }
    // partition -> (pipeline, positions of its commands in `cmds`)
    let mut groups: BTreeMap<i32, (Pipeline, Vec<usize>)> = BTreeMap::new();
    for (i, (p, c)) in cmds.into_iter().enumerate() {
        let g = groups
            .entry(p)
            .or_insert_with(|| (redis::pipe(), Vec::new()));
        g.0.add_command(c);
        g.1.push(i);
    }
    let total = groups.values().map(|g| g.1.len()).sum();
    let replies = futures::future::try_join_all(groups.into_values().map(|(pipe, at)| {
        let mut c = conn.clone();
        async move {
            let values: Vec<Value> = pipe.query_async(&mut c).await?;
            Ok::<_, redis::RedisError>((values, at))
        }
    }))
    .await?;
    let mut ordered: Vec<Option<Value>> = vec![None; total];
    for (values, at) in replies {
        for (v, i) in values.into_iter().zip(at) {
            ordered[i] = Some(v);
        }
    }
    ordered
        .into_iter()
        .map(|v| T::from_redis_value(v.unwrap_or(Value::Nil)).map_err(redis::RedisError::from))
        .collect()
}
