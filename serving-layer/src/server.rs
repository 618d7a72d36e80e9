//! The HTTP/1.1 server loop: hyper with the timeouts a public endpoint needs, which
//! `axum::serve` does not expose.
//!
//! - `serving.header_read_timeout` (default 10 s) bounds both how long a client may
//!   take to send a request's headers (a client sending one byte every few seconds is
//!   cut off) and how long an idle keep-alive connection waits for its next request
//!   (hyper arms the same timer when it starts reading the next request's headers).
//! - `serving.request_timeout` bounds a handler (a JSON 503), as a layer around the
//!   router ([`crate::routes::app`] callers add it).
//! - The client's address reaches handlers as `ConnectInfo<SocketAddr>` (the throttle
//!   on failed authentications keys on it).
//! - On shutdown the listener closes, open connections finish their request in
//!   flight, and whatever is left after `DRAIN` is dropped.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long connections may take to finish after shutdown began.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` is cancelled. Accept errors (out
/// of file descriptors, a reset before accept) are logged and the loop goes on.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    loop {
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        stream.set_nodelay(true).ok();
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
            router.clone().oneshot(req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %addr, "connection closed with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!("connections still open {DRAIN:?} after shutdown began; dropping them");
        }
    }
}
