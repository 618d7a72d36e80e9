//! Logs and metrics set-up for the binaries: the tracing subscriber and the Prometheus
//! exporter (metric names live in [`common::telemetry`]).

use std::net::SocketAddr;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the tracing subscriber: `RUST_LOG` filter (default `info`), JSON lines
/// when `ADMETRICS_LOG_JSON=1`, human-readable otherwise. Logs go to stderr.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ADMETRICS_LOG_JSON").is_ok_and(|v| v == "1");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init in the same process (tests) is harmless; keep the first.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the Prometheus recorder and returns its handle; the caller serves
/// `handle.render()` on its own HTTP endpoint.
///
/// # Errors
///
/// When a recorder is already installed in this process.
pub fn install_prometheus() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])?
        .install_recorder()?;
    Ok(handle)
}

/// Installs the Prometheus recorder with its own HTTP listener serving `/metrics` on
/// `listen` (`key` names the setting or option in errors): what the speed layer, the
/// archiver and the scheduler expose.
///
/// # Errors
///
/// When `listen` is not `host:port`, or a recorder is already installed.
pub fn serve_prometheus(key: &str, listen: &str) -> anyhow::Result<()> {
    let addr = listen_addr(key, listen)?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("prometheus exporter: {e}"))
}

/// Parses a listen address, naming the config key in the error.
///
/// # Errors
///
/// When `addr` is not `host:port`.
pub fn listen_addr(key: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    addr.parse()
        .map_err(|e| anyhow::anyhow!("{key} `{addr}` is not host:port: {e}"))
}
