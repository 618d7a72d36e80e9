//! API keys and tenancy.
//!
//! A key looks like `amk_<key_id>_<secret>`; MySQL (`api_keys`) stores its id, the
//! SHA-256 of the whole key, and whom it belongs to: one advertiser, or the internal
//! role that may read every advertiser. Keys are created and revoked with
//! `serving-layer keys ...`; the plain key is shown once, at creation.
//!
//! Tenancy never comes from the path or query: a handler asks [`Principal::may_read`]
//! with the advertiser of the URL, and anything but a yes is a 404.

use mysql_async::Pool;
use mysql_async::prelude::Queryable;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// An advertiser's key: sees only that advertiser.
    Advertiser(i64),
    /// The internal role: sees everything.
    Internal,
}

impl Principal {
    /// True when this principal may read `advertiser_id`'s data.
    pub fn may_read(self, advertiser_id: i64) -> bool {
        match self {
            Principal::Internal => true,
            Principal::Advertiser(a) => a == advertiser_id,
        }
    }
}

/// A verified key: its id (the rate-limit key) and its principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    /// Public id of the key.
    pub key_id: String,
    /// Whom it belongs to.
    pub principal: Principal,
}

fn hash_hex(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0_u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `amk_<id>_<secret>` into its id.
fn key_id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("amk_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty() && id.len() <= 32).then_some(id)
}

/// Compares two equal-length strings without an early exit.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0_u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Looks a presented key up and checks it.
///
/// # Errors
///
/// MySQL errors; an unknown, malformed or revoked key is `Ok(None)`.
pub async fn verify(
    pool: &Pool,
    presented: &str,
) -> Result<Option<VerifiedKey>, mysql_async::Error> {
    let Some(key_id) = key_id_of(presented) else {
        return Ok(None);
    };
    let mut conn = pool.get_conn().await?;
    let row: Option<(String, Option<i64>, String)> = conn
        .exec_first(
            "SELECT key_hash, advertiser_id, role FROM api_keys WHERE key_id = ? AND revoked_at IS NULL",
            (key_id,),
        )
        .await?;
    let Some((stored_hash, advertiser, role)) = row else {
        return Ok(None);
    };
    if !constant_time_eq(&stored_hash, &hash_hex(presented)) {
        return Ok(None);
    }
    let principal = match (role.as_str(), advertiser) {
        ("internal", _) => Principal::Internal,
        ("advertiser", Some(a)) => Principal::Advertiser(a),
        _ => return Ok(None),
    };
    Ok(Some(VerifiedKey {
        key_id: key_id.to_owned(),
        principal,
    }))
}

/// Creates a key for `principal` and returns the plain key (shown once).
///
/// # Errors
///
/// MySQL errors, or an advertiser that does not exist.
pub async fn create(pool: &Pool, principal: Principal, label: &str) -> anyhow::Result<String> {
    let key_id = random_hex(6);
    let key = format!("amk_{key_id}_{}", random_hex(16));
    let mut conn = pool.get_conn().await?;
    let (advertiser, role) = match principal {
        Principal::Advertiser(a) => {
            let exists: Option<i64> = conn
                .exec_first(
                    "SELECT advertiser_id FROM advertisers WHERE advertiser_id = ?",
                    (a,),
                )
                .await?;
            anyhow::ensure!(exists.is_some(), "advertiser {a} does not exist");
            (Some(a), "advertiser")
        }
        Principal::Internal => (None, "internal"),
    };
    conn.exec_drop(
        "INSERT INTO api_keys (key_id, key_hash, advertiser_id, role, label) VALUES (?, ?, ?, ?, ?)",
        (&key_id, hash_hex(&key), advertiser, role, label),
    )
    .await?;
    Ok(key)
}

/// Revokes a key by its id (the part after `amk_`); true when one was revoked.
///
/// # Errors
///
/// MySQL errors.
pub async fn revoke(pool: &Pool, key_id: &str) -> Result<bool, mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    conn.exec_drop("UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP(3) WHERE key_id = ? AND revoked_at IS NULL", (key_id,))
        .await?;
    Ok(conn.affected_rows() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_parse_and_hashes_compare() {
        assert_eq!(key_id_of("amk_ab12_secret"), Some("ab12"));
        assert_eq!(key_id_of("amk__secret"), None);
        assert_eq!(key_id_of("Bearer x"), None);
        let h = hash_hex("amk_ab12_secret");
        assert_eq!(h.len(), 64);
        assert!(constant_time_eq(&h, &hash_hex("amk_ab12_secret")));
        assert!(!constant_time_eq(&h, &hash_hex("amk_ab12_secreT")));
        assert!(Principal::Advertiser(3).may_read(3));
        assert!(!Principal::Advertiser(3).may_read(4));
        assert!(Principal::Internal.may_read(4));
    }
}
