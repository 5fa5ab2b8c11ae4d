//! Serving the router with a graceful shutdown that also closes WebSocket sessions, and with a
//! bound on slow clients.
//!
//! A graceful shutdown waits for HTTP connections, but an upgraded WebSocket is no longer one
//! of them. So [`serve`] hands every session a stop signal (a request extension) that flips
//! with the shutdown signal; sessions then close with 1001 "going away", and `serve` waits for
//! them to let go before it returns.
//!
//! The accept loop is hyper's own rather than `axum::serve`, which sets no timer and so no
//! header-read timeout: a client could hold a connection (and its file descriptor) forever by
//! sending its request headers a byte at a time (slowloris), or by opening a connection and
//! never sending a request. An HTTP/1 connection must now deliver each request's headers within
//! [`HEADER_READ_TIMEOUT`], which also closes keep-alive connections idle that long; HTTP/2
//! connections are pinged and closed when the ping goes unanswered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower_http::add_extension::AddExtension;

/// How long [`serve`] waits for WebSocket sessions to close after the HTTP side has stopped.
const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an HTTP/1 client may take to send a request's headers, counted from when the
/// connection is ready for the next request (so it also bounds idle keep-alive connections).
/// Browsers and SDKs send a request at once; 20 s leaves room for slow mobile links.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 keep-alive: a ping every interval, the connection closed when one goes unanswered.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// How long [`serve`] waits for in-flight HTTP requests after it stops accepting.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections (HTTP and WebSocket) an edge holds at once. At the cap it stops accepting
/// until one closes, so further clients wait in the kernel's accept queue (and time out there)
/// instead of each taking a task, buffers and a descriptor. Well above the 100,000 sessions an
/// edge is built to hold; the process's descriptor limit (`ulimit -n`) must allow it too.
pub const MAX_CONNECTIONS: usize = 262_144;

/// One of the [`MAX_CONNECTIONS`] an edge holds at once (a request extension).
#[derive(Clone)]
pub(crate) struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

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
    let served = accept_loop(listener, router, signal, MAX_CONNECTIONS).await;
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

/// Accepts connections until `signal` resolves, then lets in-flight requests finish (at most
/// [`HTTP_DRAIN_TIMEOUT`]).
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    signal: impl Future<Output = ()> + Send + 'static,
    max_connections: usize,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(signal);
    let slots = Arc::new(Semaphore::new(max_connections));
    // Logged when the edge reaches the limit, not for every connection accepted while at it.
    let mut at_limit = false;
    loop {
        let full = slots.available_permits() == 0;
        if full && !at_limit {
            tracing::warn!(limit = max_connections, "connection limit reached; accepting waits");
        }
        at_limit = full;
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut signal => break,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: the listener itself is fine, and
                // connections that close free what the next accept needs.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (builder, watcher, router) = (Arc::clone(&builder), graceful.watcher(), router.clone());
        tokio::spawn(async move {
            // hyper reads the first bytes to tell HTTP/1 from HTTP/2 before any of its timers
            // run, so a connection that never sends a byte is bounded here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            // The slot is held by the connection's service, and by the WebSocket session an
            // upgrade starts (hyper's connection ends at the upgrade), so it is freed when
            // the last of them ends.
            let slot = ConnectionSlot { _permit: Arc::new(slot) };
            let service = TowerToHyperService::new(AddExtension::new(router, slot));
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(error = %error, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(HTTP_DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("http requests still in flight after the drain timeout");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn get(conn: &mut TcpStream) -> String {
        conn.write_all(b"GET /x HTTP/1.1\r\nHost: edge\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = conn.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// At the limit the edge accepts nothing more until a connection closes; the waiting
    /// client is then served.
    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/x", axum::routing::get(|| async { "hello" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(accept_loop(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            2,
        ));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut first).await.starts_with("HTTP/1.1 200"));
        assert!(get(&mut second).await.starts_with("HTTP/1.1 200"));

        let mut third = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::spawn(async move { get(&mut third).await });
        // However long it waits, nothing answers it while both slots are held.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served beyond the limit");
        drop(first);
        let answer = tokio::time::timeout(Duration::from_secs(30), waiting).await.unwrap();
        assert!(answer.unwrap().starts_with("HTTP/1.1 200"));
        assert!(get(&mut second).await.starts_with("HTTP/1.1 200"), "the others stay served");
        let _ = stop.send(());
        drop(second);
        tokio::time::timeout(Duration::from_secs(30), server).await.unwrap().unwrap().unwrap();
    }
}
