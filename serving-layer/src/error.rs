//! The API's one error shape: `{"error": {"code": "...", "message": "...", "parameter": "..."}}`.
//!
//! 400 names the bad parameter; 401 means no valid key; 404 covers both "no such
//! advertiser" and "not yours" (no leak of existence), and unknown routes; 405 a
//! method other than GET; 429 carries `Retry-After`; 5xx hide internals (logged once,
//! here). Messages never echo more than a few dozen characters of client input.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// A parameter is malformed or out of range.
    #[error("{message}")]
    BadParameter {
        /// Which parameter.
        parameter: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No key, an unknown key, or a revoked key.
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// The resource does not exist for this key.
    #[error("not found")]
    NotFound,
    /// No route has this path.
    #[error("no such route; see /openapi.json")]
    NoRoute,
    /// The route exists but not for this method.
    #[error("method not allowed; this API answers GET")]
    MethodNotAllowed,
    /// Too many requests for this key.
    #[error("rate limit exceeded; retry in {retry_after_s} s")]
    RateLimited {
        /// Seconds until a request would be admitted.
        retry_after_s: u64,
    },
    /// A backing store failed.
    #[error("{0}")]
    Unavailable(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A bad parameter.
    pub fn bad(parameter: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadParameter {
            parameter,
            message: message.into(),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        ApiError::Unavailable(format!("redis: {e}"))
    }
}

impl From<mysql_async::Error> for ApiError {
    fn from(e: mysql_async::Error) -> Self {
        ApiError::Unavailable(format!("mysql: {e}"))
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, parameter) = match &self {
            ApiError::BadParameter { parameter, .. } => {
                (StatusCode::BAD_REQUEST, "bad_parameter", Some(*parameter))
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::NotFound | ApiError::NoRoute => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        };
        let message = match &self {
            ApiError::Unavailable(detail) => {
                tracing::error!(error = %detail, "backing store unavailable");
                "a backing store is unavailable; retry later".to_owned()
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut resp = (
            status,
            Json(Body {
                error: Inner {
                    code,
                    message,
                    parameter,
                },
            }),
        )
            .into_response();
        if let ApiError::RateLimited { retry_after_s } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
