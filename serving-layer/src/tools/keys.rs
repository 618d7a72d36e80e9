//! `serving-layer keys create|revoke`: API keys as an operator issues and revokes
//! them (stored hashed in MySQL's `api_keys`; see [`crate::auth`]).

use common::config::Config;

use crate::auth::{self, Principal};

/// Creates a key for `principal` with a note on who holds it, and returns it (it is
/// stored hashed and cannot be shown again).
///
/// # Errors
///
/// When MySQL is unreachable or refuses the insert.
pub async fn create(cfg: &Config, principal: Principal, label: &str) -> anyhow::Result<String> {
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool).await?;
    let key = auth::create(&pool, principal, label).await;
    pool.disconnect().await.ok();
    key
}

/// Revokes the key `key_or_id` (the whole key `amk_<id>_...` or its id) and returns
/// its id.
///
/// # Errors
///
/// When no active key has that id, or MySQL fails.
pub async fn revoke(cfg: &Config, key_or_id: &str) -> anyhow::Result<String> {
    let id = key_or_id
        .strip_prefix("amk_")
        .map_or(key_or_id, |r| r.split('_').next().unwrap_or(r))
        .to_owned();
    let pool = platform::db::pool(&cfg.mysql)?;
    platform::db::migrate(&pool).await?;
    let revoked = auth::revoke(&pool, &id).await;
    pool.disconnect().await.ok();
    anyhow::ensure!(revoked?, "no active key with id {id}");
    Ok(id)
}
