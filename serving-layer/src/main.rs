//! `serving-layer`: the advertiser API server and its key management.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use common::config::Config;
use serving_layer::auth::Principal;
use serving_layer::tools::keys;

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
    platform::telemetry::init_tracing();
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            serving_layer::service::run(cfg, platform::shutdown::on_signal()).await?;
        }
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
            println!("{}", keys::create(&cfg, principal, &label).await?);
        }
        Command::Keys {
            action: KeysAction::Revoke { key_id },
        } => {
            let id = keys::revoke(&cfg, &key_id).await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}
