//! API keys and tenancy.
//!
//! A key looks like `amk_<key_id>_<secret>`; MySQL (`api_keys`) stores its id, the
//! SHA-256 of the whole key, and whom it belongs to: one advertiser, or the internal
//! role that may read every advertiser. Keys are created and revoked with
//! `serving-layer keys ...`; the plain key is shown once, at creation.
//!
//! Tenancy never comes from the path or query: a handler asks [`Principal::may_read`]
//! with the advertiser of the URL, and anything but a yes is a 404.
//!
//! # Admission of a request ([`Authenticator`], the [`Auth`] extractor)
//!
//! 1. `Authorization: Bearer <key>` (scheme case-insensitive, RFC 9110 §11.1); no
//!    header or another scheme is 401, two `Authorization` headers are 400.
//! 2. The key's SHA-256 is looked up in an in-process cache of verified keys (bounded,
//!    entries live `serving.key_cache_ttl`, default 5 s): a hit costs no database
//!    round trip. So a revoked key is refused at most `key_cache_ttl` after
//!    `keys revoke`.
//! 3. A miss asks MySQL, but only while the key id and the client address each have
//!    attempts left (`serving.auth_attempts_per_minute`, default 60): someone guessing
//!    secrets misses the cache every time and is answered 429 after a minute's worth,
//!    without MySQL seeing those guesses.
//! 4. The verified key's own rate limit (`serving.rate_limit_per_second`, burst
//!    `rate_limit_burst`): 429 with `Retry-After`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mysql_async::Pool;
use mysql_async::prelude::Queryable;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

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

/// Verifies keys with a cache in front of MySQL and applies the per-key rate limit
/// and the throttle on uncached verifications (module docs).
pub struct Authenticator {
    pool: Pool,
    verified: moka::future::Cache<[u8; 32], VerifiedKey>,
    per_key: DefaultKeyedRateLimiter<String>,
    uncached_attempts: DefaultKeyedRateLimiter<String>,
}

impl Authenticator {
    /// An authenticator over the keys in `pool`, with the limits of `cfg`.
    pub fn new(pool: Pool, cfg: &common::config::ServingConfig) -> Self {
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Authenticator {
            pool,
            verified: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cfg.key_cache_ttl)
                .build(),
            per_key: RateLimiter::keyed(
                Quota::per_second(nz(cfg.rate_limit_per_second))
                    .allow_burst(nz(cfg.rate_limit_burst)),
            ),
            uncached_attempts: RateLimiter::keyed(Quota::per_minute(nz(
                cfg.auth_attempts_per_minute
            ))),
        }
    }

    /// Admits the request whose headers are `parts`: the verified key, or why not.
    ///
    /// # Errors
    ///
    /// [`ApiError::Unauthorized`] (no, unknown, malformed or revoked key),
    /// [`ApiError::BadParameter`] naming `Authorization` (more than one header),
    /// [`ApiError::RateLimited`] (the key's rate, or too many uncached attempts),
    /// [`ApiError::Unavailable`] when MySQL fails.
    pub async fn admit(&self, parts: &Parts) -> Result<VerifiedKey, ApiError> {
        let presented = bearer_token(parts)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Concurrent first requests with one key wait for a single verification.
        let key = self
            .verified
            .try_get_with(digest, async {
                let key_id = key_id_of(presented).unwrap_or("malformed");
                self.spend_attempt(&format!("id:{key_id}"))?;
                if let Some(ConnectInfo(client)) = parts.extensions.get::<ConnectInfo<SocketAddr>>()
                {
                    let ip = client.ip();
                    self.spend_attempt(&format!("ip:{ip}"))?;
                }
                verify(&self.pool, presented)
                    .await?
                    .ok_or(ApiError::Unauthorized)
            })
            .await
            .map_err(|e| (*e).clone())?;
        if let Err(not_until) = self.per_key.check_key(&key.key_id) {
            return Err(rate_limited(&not_until));
        }
        Ok(key)
    }

    fn spend_attempt(&self, who: &str) -> Result<(), ApiError> {
        self.uncached_attempts
            .check_key(&who.to_owned())
            .map_err(|not_until| rate_limited(&not_until))
    }
}

type Instant = <governor::clock::DefaultClock as governor::clock::Clock>::Instant;

fn rate_limited(not_until: &governor::NotUntil<Instant>) -> ApiError {
    let wait = not_until.wait_time_from(governor::clock::Clock::now(
        &governor::clock::DefaultClock::default(),
    ));
    ApiError::RateLimited {
        retry_after_s: wait.as_secs().max(1),
    }
}

/// The token of the one `Authorization: Bearer <token>` header.
fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(ApiError::Unauthorized)?;
    if values.next().is_some() {
        return Err(ApiError::bad(
            "Authorization",
            "send exactly one Authorization header",
        ));
    }
    let value = value.to_str().map_err(|_| ApiError::Unauthorized)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(ApiError::Unauthorized)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::Unauthorized);
    }
    Ok(token)
}

/// An authenticated, rate-limited caller (an axum extractor over any state that holds
/// an `Arc<Authenticator>`).
pub struct Auth(pub VerifiedKey);

impl<S> FromRequestParts<S> for Auth
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = Arc::<Authenticator>::from_ref(state);
        auth.admit(parts).await.map(Auth)
    }
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

    fn parts(values: &[&str]) -> Parts {
        let mut b = axum::http::Request::builder();
        for v in values {
            b = b.header(AUTHORIZATION, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_one_header_only() {
        for v in [
            "Bearer amk_a_b",
            "bearer amk_a_b",
            "BEARER  amk_a_b ",
            "BeArEr amk_a_b",
        ] {
            assert_eq!(bearer_token(&parts(&[v])).unwrap(), "amk_a_b", "{v}");
        }
        for v in ["Basic amk_a_b", "Bearer", "Bearer ", "amk_a_b"] {
            assert!(
                matches!(bearer_token(&parts(&[v])), Err(ApiError::Unauthorized)),
                "{v}"
            );
        }
        assert!(matches!(
            bearer_token(&parts(&[])),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            bearer_token(&parts(&["Bearer amk_a_b", "Bearer amk_a_b"])),
            Err(ApiError::BadParameter {
                parameter: "Authorization",
                ..
            })
        ));
    }
}
