//! A throwaway local Redis Cluster for one test: three masters (Debian's
//! `redis-server` with `cluster-enabled yes`, each on a free port) joined by
//! `redis-cli --cluster create`, stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running cluster.
pub struct RedisCluster {
    /// `redis://127.0.0.1:<port>/` of every master: the seed nodes.
    pub nodes: Vec<String>,
    servers: Vec<Child>,
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let p = crate::free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

impl RedisCluster {
    /// Starts `masters` servers under `dir` and creates the cluster; panics (naming the
    /// package to install) when `redis-server` or `redis-cli` is missing.
    pub fn start(dir: &Path, masters: usize) -> RedisCluster {
        let ports: Vec<u16> = (0..masters).map(|_| cluster_port()).collect();
        let mut servers = Vec::new();
        for port in &ports {
            // One directory per node: their AOF files have the same names.
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child =
                crate::redis_server::server_command(*port, &node_dir, &format!("redis-{port}.log"))
                    .args([
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &format!("nodes-{port}.conf"),
                        "--cluster-node-timeout",
                        "5000",
                    ])
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("redis-server cannot start ({e}): install Debian's redis-server")
                    });
            servers.push(child);
        }
        let cluster = RedisCluster {
            nodes: ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}/"))
                .collect(),
            servers,
        };
        for port in &ports {
            cluster.wait(Duration::from_secs(10), "PING", *port, "PONG");
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create
            .output()
            .unwrap_or_else(|e| panic!("redis-cli cannot run ({e}): install Debian's redis-tools"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for port in &ports {
            cluster.wait(
                Duration::from_secs(30),
                "CLUSTER INFO",
                *port,
                "cluster_state:ok",
            );
        }
        cluster
    }

    /// Polls `redis-cli -p port <command>` until its output contains `want`.
    fn wait(&self, timeout: Duration, command: &str, port: u16, want: &str) {
        assert!(
            crate::redis_server::answers(port, command, want, timeout),
            "redis on port {port} did not answer {want} to {command}"
        );
    }

    /// The seed nodes as the `ADMETRICS__REDIS__CLUSTER_NODES` value.
    pub fn nodes_env(&self) -> String {
        serde_json::to_string(&self.nodes).expect("json")
    }

    /// Keys per master, to show that the data is spread over the cluster.
    pub fn keys_per_master(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                let port = n.trim_end_matches('/').rsplit(':').next().unwrap_or("0");
                let out = Command::new("redis-cli")
                    .args(["-p", port, "DBSIZE"])
                    .output()
                    .expect("redis-cli");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill().ok();
            s.wait().ok();
        }
    }
}
