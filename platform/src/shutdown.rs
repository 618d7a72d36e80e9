//! Process shutdown: one root [`CancellationToken`] per process, cancelled by the
//! first SIGTERM or SIGINT. Each service takes child tokens of it (a partition task, a
//! poller), drains in order when it fires, and bounds the whole drain by one deadline
//! (`speed.shutdown_timeout` for the speed layer). A second signal exits at once with
//! status 130, for an operator who does not want to wait: what was not flushed is
//! recovered from the durable state (offsets in Redis, the ClickHouse journal), as
//! after a crash.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal (128 + SIGINT, as shells report an interrupt).
pub const FORCED_EXIT_STATUS: i32 = 130;

/// Returns a root token cancelled on the first SIGINT or SIGTERM; a second signal
/// exits the process at once with [`FORCED_EXIT_STATUS`].
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining (a second signal exits at once)");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: exiting without draining");
        std::process::exit(FORCED_EXIT_STATUS);
    });
    token
}

/// Runs `work` to its end, but once `shutdown` has fired gives it at most `deadline`
/// more: `None` when the deadline passed first (the work is dropped).
pub async fn drain_within<F: Future>(
    shutdown: &CancellationToken,
    deadline: Duration,
    work: F,
) -> Option<F::Output> {
    let expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        out = work => Some(out),
        () = expired => None,
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_shutdown_not_from_the_start() {
        let shutdown = CancellationToken::new();
        // Work that outlives the deadline, but finishes before shutdown + deadline.
        let work = tokio::time::sleep(Duration::from_secs(50));
        let s = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(40)).await;
            s.cancel();
        });
        assert_eq!(
            drain_within(&shutdown, Duration::from_secs(30), work).await,
            Some(())
        );
        // Work that never ends is cut at the deadline after the shutdown.
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(
            drain_within(&shutdown, Duration::from_secs(30), never).await,
            None
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
