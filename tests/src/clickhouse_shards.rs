//! Throwaway local ClickHouse servers acting as the shards of one cluster (each
//! server's `<remote_servers>` names all of them), stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The cluster name in the servers' `<remote_servers>` (config `clickhouse.cluster`).
pub const CLUSTER: &str = "admetrics_it";

/// Running shard servers.
pub struct ClickHouseShards {
    /// HTTP URL of every shard, in cluster order (config `clickhouse.shards`).
    pub urls: Vec<String>,
    configs: Vec<PathBuf>,
    servers: Vec<Option<Child>>,
}

impl ClickHouseShards {
    /// Starts `shards` servers under `dir`; panics (naming the package) when
    /// `clickhouse-server` is missing or a server does not answer within 60 s.
    pub fn start(dir: &std::path::Path, shards: usize) -> ClickHouseShards {
        let ports: Vec<(u16, u16)> = (0..shards)
            .map(|_| (crate::free_port(), crate::free_port()))
            .collect();
        let remote: String = ports
            .iter()
            .map(|(_, tcp)| {
                format!(
                    "<shard><replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard>"
                )
            })
            .collect();
        let mut configs = Vec::new();
        for (i, (http, tcp)) in ports.iter().enumerate() {
            let d_path = dir.join(format!("shard-{i}"));
            std::fs::create_dir_all(d_path.join("logs")).expect("shard dir");
            let d = d_path.to_str().expect("utf-8 dir");
            // The local stack's server configuration, plus the cluster definition.
            let config = include_str!("../../deploy/local/clickhouse.xml")
                .replace("@STATE@", d)
                .replace("@HTTP_PORT@", &http.to_string())
                .replace("@TCP_PORT@", &tcp.to_string())
                .replace(
                    "</yandex>",
                    &format!(
                        "  <remote_servers><{CLUSTER}>{remote}</{CLUSTER}></remote_servers>\n</yandex>"
                    ),
                );
            let file = d_path.join("config.xml");
            std::fs::write(&file, config).expect("shard config");
            configs.push(file);
        }
        let mut shards = ClickHouseShards {
            urls: ports
                .iter()
                .map(|(http, _)| format!("http://127.0.0.1:{http}"))
                .collect(),
            servers: configs.iter().map(|_| None).collect(),
            configs,
        };
        for i in 0..shards.urls.len() {
            shards.start_server(i);
        }
        shards
    }

    /// Starts (again) the server of shard `i` and waits until it listens.
    pub fn start_server(&mut self, i: usize) {
        let file = &self.configs[i];
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", file.display()))
            .current_dir(file.parent().expect("shard dir"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("clickhouse-server cannot start ({e}): install Debian's clickhouse-server")
            });
        self.servers[i] = Some(child);
        let addr = self.urls[i].trim_start_matches("http://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "ClickHouse shard {i} did not start (logs next to {})",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the server of shard `i` (SIGKILL) and waits for it to exit.
    pub fn kill_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

impl Drop for ClickHouseShards {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill_server(i);
        }
    }
}
