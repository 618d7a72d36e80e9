//! `serving-layer`: the advertiser API server and its key management.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use common::config::Config;
use common::redis_keys::Keys;
use common::speed_results::SpeedReader;
use serving_layer::auth::{self, Principal};
use serving_layer::routes::app;
use serving_layer::state::AppState;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

#[derive(Parser)]
#[command(
    version,
    about = "Serving layer of the ad-metrics platform: the advertiser API"
)]
struct Cli {
    /// Configuration file (TOML); `ADMETRICS__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "ADMETRICS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API.
    Serve,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print it (it is stored hashed and cannot be shown again).
    Create {
        /// The advertiser the key belongs to.
        #[arg(
            long,
            conflicts_with = "internal",
            required_unless_present = "internal"
        )]
        advertiser: Option<i64>,
        /// A key of the internal role, which reads every advertiser.
        #[arg(long)]
        internal: bool,
        /// A note on who holds the key.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Revoke a key by its id (`amk_<id>_...`).
    Revoke {
        /// The key id, or the whole key.
        key_id: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init_tracing();
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    let pool = common::db::pool(&cfg.mysql)?;
    common::db::migrate(&pool).await.context("MySQL schema")?;
    let result = match cli.command {
        Command::Serve => serve(cfg, pool.clone()).await,
        Command::Keys {
            action:
                KeysAction::Create {
                    advertiser,
                    internal,
                    label,
                },
        } => {
            let principal = if internal {
                Principal::Internal
            } else {
                Principal::Advertiser(advertiser.unwrap_or_default())
            };
            let key = auth::create(&pool, principal, &label).await?;
            println!("{key}");
            Ok(())
        }
        Command::Keys {
            action: KeysAction::Revoke { key_id },
        } => {
            let id = key_id
                .strip_prefix("amk_")
                .map_or(key_id.as_str(), |r| r.split('_').next().unwrap_or(r));
            anyhow::ensure!(auth::revoke(&pool, id).await?, "no active key with id {id}");
            println!("revoked {id}");
            Ok(())
        }
    };
    pool.disconnect().await.ok();
    result
}

async fn serve(cfg: Config, pool: mysql_async::Pool) -> anyhow::Result<()> {
    // Bind first: a taken port fails the start before any poller runs.
    let addr = common::telemetry::listen_addr("serving.listen", &cfg.serving.listen)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let prometheus = common::telemetry::install_prometheus()?;
    let conn = common::redis_conn::RedisConn::connect(&cfg.redis)
        .await
        .context("connecting to Redis (redis.url / redis.cluster_nodes)")?;
    let speed = SpeedReader::new(conn, Keys::new(&cfg.redis.key_prefix), cfg.kafka.partitions);
    let shutdown = common::shutdown::on_signal();
    let state = AppState::new(
        cfg.serving.clone(),
        pool,
        speed,
        Some(prometheus),
        &shutdown,
    );
    let router = app(state)
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            cfg.serving.request_timeout,
        ))
        .layer(TraceLayer::new_for_http());
    tracing::info!(%addr, "serving");
    serving_layer::server::serve(listener, router, cfg.serving.header_read_timeout, shutdown).await
}
