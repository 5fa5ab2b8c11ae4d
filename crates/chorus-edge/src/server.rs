//! Serving the router with a graceful shutdown that also closes WebSocket sessions.
//!
//! axum's graceful shutdown waits for HTTP connections, but an upgraded WebSocket is no longer
//! one of them. So [`serve`] hands every session a stop signal (a request extension) that
//! flips with the shutdown signal; sessions then close with 1001 "going away", and `serve`
//! waits for them to let go before it returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long [`serve`] waits for WebSocket sessions to close after the HTTP side has stopped.
const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The stop signal of WebSocket sessions: `true` once the server is shutting down.
#[derive(Clone)]
pub(crate) struct SessionStop(pub(crate) watch::Receiver<bool>);

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight HTTP requests finish, closes WebSocket sessions and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_sender, stop_receiver) = watch::channel(false);
    let stop_sender = Arc::new(stop_sender);
    let router = router.layer(Extension(SessionStop(stop_receiver)));
    let signal_sender = Arc::clone(&stop_sender);
    let signal = async move {
        shutdown.await;
        tracing::info!("edge shutting down");
        signal_sender.send_replace(true);
    };
    let served = axum::serve(listener, router).with_graceful_shutdown(signal).await;
    // Also when serving failed before the signal: sessions must not outlive `serve`.
    stop_sender.send_replace(true);
    // Every session holds a receiver; all are gone once the last session has closed.
    if tokio::time::timeout(SESSION_DRAIN_TIMEOUT, stop_sender.closed()).await.is_err() {
        tracing::warn!(
            sessions = crate::metrics::SESSIONS.get(),
            "websocket sessions still open after drain timeout"
        );
    }
    served
}
