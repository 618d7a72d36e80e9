//! The HTTP API (axum). Routes:
//!
//! | route | answers |
//! |---|---|
//! | `GET /v1/me` | the key's role and advertiser |
//! | `GET /v1/advertisers/{id}/metrics?from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=day\|ad\|campaign` | metrics per day (and ad or campaign), each row marked final or revised (batch; a revised row says when and, by day, what the totals were) or provisional (speed) |
//! | `GET /v1/advertisers/{id}/realtime?minutes=N` | today's 10-second series ([`crate::live`]) |
//! | `GET /v1/advertisers/{id}/freshness` | last speed write, last final day, last batch run |
//! | `GET /v1/advertisers/{id}/reconciliation?from=YYYY-MM-DD&to=YYYY-MM-DD` | internal keys only (an advertiser key gets 404): speed vs batch of each reconciled advertiser-day ([`crate::reconciliation`]) |
//! | `GET /openapi.json` | the OpenAPI 3.0 description of these routes |
//! | `GET /` | the advertiser dashboard (static page, `serving-layer/static/`) |
//! | `GET /healthz` | 200 when Redis answers |
//! | `GET /readyz` | 200 when Redis and MySQL answer |
//! | `GET /metrics` | Prometheus text |
//!
//! Every `/v1` route needs `Authorization: Bearer <key>`; see [`crate::auth`].

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, RawQuery, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::telemetry::{HTTP_REQUEST_DURATION, HTTP_REQUESTS};
use mysql_async::prelude::Queryable;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::{self, Auth};
use crate::error::ApiError;
use crate::live;
use crate::params::{AdvertiserSegment, Range};
use crate::reconciliation;
use crate::state::AppState;

/// `Content-Security-Policy` of every answer: the dashboard loads its script, styles
/// and data from this origin only, and no page may frame it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The router (tests call it without a socket). Every answer carries the security
/// headers (CSP, `X-Content-Type-Options`, `X-Frame-Options`, `Referrer-Policy`);
/// `/v1` answers, which hold tenant data, also `Cache-Control: no-store`. Unknown
/// routes answer a JSON 404, other methods than GET a JSON 405.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/me", get(me))
        .route("/v1/advertisers/{id}/metrics", get(metrics_handler))
        .route("/v1/advertisers/{id}/realtime", get(live::realtime))
        .route("/v1/advertisers/{id}/freshness", get(live::freshness))
        .route(
            "/v1/advertisers/{id}/reconciliation",
            get(reconciliation::reconciliation),
        )
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    let security = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    Router::new()
        .merge(v1)
        .route("/openapi.json", get(openapi))
        .route("/", get(dashboard))
        .route("/dashboard.js", get(dashboard_js))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(record_request))
        .layer(security(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(security(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(security(header::X_FRAME_OPTIONS, "DENY"))
        .layer(security(header::REFERRER_POLICY, "no-referrer"))
        .with_state(state)
}

async fn record_request(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => resp.status().as_u16().to_string()).increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// `GET /v1/me`: whom the presented key belongs to, so the dashboard knows which
/// advertiser to show: `{"key_id": "...", "role": "advertiser", "advertiser_id": 12}`
/// or `{"key_id": "...", "role": "internal"}`.
async fn me(Auth(key): Auth) -> Json<serde_json::Value> {
    Json(match key.principal {
        auth::Principal::Advertiser(a) => {
            serde_json::json!({"key_id": key.key_id, "role": "advertiser", "advertiser_id": a})
        }
        auth::Principal::Internal => {
            serde_json::json!({"key_id": key.key_id, "role": "internal"})
        }
    })
}

/// The OpenAPI 3.0 description of this API (`serving-layer/static/openapi.json`).
pub const OPENAPI: &str = include_str!("../static/openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../static/index.html"))
}

async fn dashboard_js() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/javascript; charset=utf-8",
        )],
        include_str!("../static/dashboard.js"),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    match s.speed.ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => ApiError::Unavailable(format!("redis: {e}")).into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    s.speed.ping().await?;
    let mut conn = s.pool.get_conn().await?;
    conn.query_drop("SELECT 1").await?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

async fn prometheus(State(s): State<AppState>) -> Response {
    match &s.prometheus {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

/// `GET /v1/advertisers/{id}/metrics?from&to&group_by`: the answer
/// ([`crate::merge::MetricsAnswer`]) from the cached read path ([`crate::read_path`]).
///
/// # Errors
///
/// 400 naming the parameter; 401/404/429 as every `/v1` route; 503 when a store fails.
async fn metrics_handler(
    State(s): State<AppState>,
    Auth(key): Auth,
    AdvertiserSegment(id): AdvertiserSegment,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    // Parameters first: a 400 says nothing about whether the advertiser exists.
    let range = Range::parse(q.as_deref(), s.cfg.max_range_days)?;
    let adv = s.advertiser_of_key(&key, &id).await?;
    let body = s
        .read
        .metrics(&adv, range.from, range.to, range.group_by)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
