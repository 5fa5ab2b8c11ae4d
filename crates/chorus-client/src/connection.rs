//! The one WebSocket: connect with the app's token, reconnect with backoff, correlate replies
//! with requests, and route events to the stream feeds.
//!
//! ```text
//!  requests (mpsc) ──▶ ┌──────── connection task ────────┐ ──frames──▶ socket
//!                      │ id → pending reply (oneshot)     │
//!  socket ──frames──▶  │ "re": complete the pending reply │
//!                      │ "ev": routes[stream] ──▶ feed    │
//!                      └──────────────────────────────────┘
//!  link (watch): {epoch, connected}; epoch grows by one per successful connect
//! ```
//!
//! On loss every pending request fails with [`ClientError::Disconnected`] (its outcome is
//! unknown; callers that retry do so idempotently) and the task reconnects after a jittered
//! backoff; while it is down, new requests fail at once, and callers that must get through
//! wait on the link for the next epoch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::backoff::{Backoff, BackoffPolicy};
use crate::error::{ClientError, ServerError};
use crate::feed::FeedInput;
use crate::model::{Message, Stream, StreamId};
use crate::token::TokenProvider;
use crate::util::lock;

/// How long one connection attempt (TCP, upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A ping goes out after this much silence; twice this much silence means the link is dead
/// (a half-open TCP connection would otherwise look connected forever).
const KEEPALIVE: Duration = Duration::from_secs(15);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The state of the connection, as the app and the SDK's tasks watch it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionState {
    /// Successful connects so far; a new epoch means every listen must be resumed.
    pub epoch: u64,
    pub connected: bool,
}

/// Why the last connection attempt failed; cleared by the next successful connect. The
/// connection keeps retrying either way (a token provider may hand out a fresh token); an app
/// or a CLI that cannot fix a refusal by waiting reports it instead of waiting on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectFailure {
    /// The HTTP status of a refused upgrade (401: the token, 400: a bad `X-Chorus-As-User`,
    /// …); `None` when no HTTP answer came (connection refused, timeout).
    pub status: Option<u16>,
    /// The server's `code: message` when it sent its error body, else what went wrong.
    pub message: String,
}

impl ConnectFailure {
    /// The server answered and refused (a 4xx): retrying with the same token and user id
    /// will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self.status, Some(400..=499))
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => {
                write!(f, "the server refused the connection ({status}): {}", self.message)
            }
            None => write!(f, "{}", self.message),
        }
    }
}

impl From<&ConnectError> for ConnectFailure {
    fn from(error: &ConnectError) -> Self {
        let ConnectError::WebSocket(tungstenite::Error::Http(response)) = error else {
            return ConnectFailure { status: None, message: error.to_string() };
        };
        let body: Option<Value> =
            response.body().as_deref().and_then(|b| serde_json::from_slice(b).ok());
        let message = match body.as_ref().map(|b| &b["error"]) {
            Some(e) if e["code"].is_string() => {
                format!(
                    "{}: {}",
                    e["code"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                )
            }
            _ => response.status().canonical_reason().unwrap_or("refused").to_owned(),
        };
        ConnectFailure { status: Some(response.status().as_u16()), message }
    }
}

/// A request on its way to the connection task.
pub(crate) struct Outgoing {
    /// The frame without `id`, which the connection task assigns.
    pub(crate) frame: Map<String, Value>,
    pub(crate) reply: oneshot::Sender<Result<Value, ClientError>>,
}

/// Where events of each listened stream go: the stream's feed.
#[derive(Default)]
pub(crate) struct Routes {
    pub(crate) by_stream: Mutex<HashMap<StreamId, mpsc::UnboundedSender<FeedInput>>>,
}

impl Routes {
    fn deliver(&self, stream: &StreamId, input: FeedInput) {
        let routes = lock(&self.by_stream);
        if let Some(feed) = routes.get(stream)
            && feed.send(input).is_err()
        {
            // The feed is retiring; its unlisten is on the way.
            tracing::debug!(%stream, "event for a retired feed dropped");
        }
    }
}

/// What the connection task needs to (re)connect.
pub(crate) struct Dialer {
    pub(crate) ws_url: String,
    pub(crate) tokens: Arc<dyn TokenProvider>,
    pub(crate) as_user: Option<String>,
    pub(crate) backoff: BackoffPolicy,
}

/// Why one connection attempt failed; logged, then retried.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("token provider failed: {0}")]
    Token(crate::error::TokenError),
    #[error("token or user id is not a valid header value")]
    Header,
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("connect timed out")]
    Timeout,
}

impl Dialer {
    async fn connect(&self) -> Result<Socket, ConnectError> {
        // Asked before every attempt, so a provider can hand out a refreshed token after an
        // expiry made the previous upgrade fail with 401.
        let token = self.tokens.token().await.map_err(ConnectError::Token)?;
        let mut request = self.ws_url.as_str().into_client_request()?;
        let bearer =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ConnectError::Header)?;
        request.headers_mut().insert("Authorization", bearer);
        if let Some(user) = &self.as_user {
            let user = HeaderValue::from_str(user).map_err(|_| ConnectError::Header)?;
            request.headers_mut().insert("X-Chorus-As-User", user);
        }
        let connecting = tokio_tungstenite::connect_async(request);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(error)) => Err(ConnectError::WebSocket(error)),
            Err(_) => Err(ConnectError::Timeout),
        }
    }
}

/// Why a session ended.
enum SessionEnd {
    Lost,
    /// Every request sender is gone: the client was dropped.
    Shutdown,
}

/// The connection task: runs until the client is dropped.
pub(crate) async fn run(
    dialer: Dialer,
    mut requests: mpsc::Receiver<Outgoing>,
    link: watch::Sender<ConnectionState>,
    failure: watch::Sender<Option<ConnectFailure>>,
    routes: Arc<Routes>,
) {
    let mut backoff = Backoff::new(dialer.backoff);
    loop {
        match dialer.connect().await {
            Ok(socket) => {
                backoff.reset();
                failure.send_replace(None);
                link.send_modify(|state| {
                    state.epoch += 1;
                    state.connected = true;
                });
                tracing::debug!(epoch = link.borrow().epoch, "connected");
                let end = session(socket, &mut requests, &routes).await;
                link.send_modify(|state| state.connected = false);
                if let SessionEnd::Shutdown = end {
                    return;
                }
                tracing::debug!("connection lost");
            }
            Err(error) => {
                tracing::debug!(%error, "connect failed");
                failure.send_replace(Some(ConnectFailure::from(&error)));
            }
        }
        let delay = backoff.next_delay();
        if !refuse_until(Instant::now() + delay, &mut requests).await {
            return;
        }
    }
}

/// Answers requests with `Disconnected` until `deadline`; `false` when the client is gone.
async fn refuse_until(deadline: Instant, requests: &mut mpsc::Receiver<Outgoing>) -> bool {
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            request = requests.recv() => match request {
                Some(request) => complete(request.reply, Err(ClientError::Disconnected)),
                None => return false,
            },
        }
    }
}

async fn session(
    mut socket: Socket,
    requests: &mut mpsc::Receiver<Outgoing>,
    routes: &Routes,
) -> SessionEnd {
    let mut pending: HashMap<u64, oneshot::Sender<Result<Value, ClientError>>> = HashMap::new();
    let mut next_id: u64 = 1;
    let mut last_heard = Instant::now();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    let end = loop {
        tokio::select! {
            frame = socket.next() => {
                let text = match frame {
                    Some(Ok(Frame::Text(text))) => text,
                    Some(Ok(Frame::Close(_))) | Some(Err(_)) | None => break SessionEnd::Lost,
                    Some(Ok(_)) => {
                        last_heard = Instant::now();
                        continue;
                    }
                };
                last_heard = Instant::now();
                on_text(text.as_str(), &mut pending, routes);
            }
            request = requests.recv() => {
                let Some(Outgoing { mut frame, reply }) = request else {
                    // Best effort: the server cleans up either way.
                    let _closing = socket.close(None).await;
                    break SessionEnd::Shutdown;
                };
                let id = next_id;
                next_id += 1;
                frame.insert("id".into(), Value::from(id));
                let text = Value::Object(frame).to_string();
                if socket.send(Frame::text(text)).await.is_err() {
                    complete(reply, Err(ClientError::Disconnected));
                    break SessionEnd::Lost;
                }
                pending.insert(id, reply);
            }
            _ = keepalive.tick() => {
                if last_heard.elapsed() > 2 * KEEPALIVE {
                    tracing::debug!("no frame from the server in time; reconnecting");
                    break SessionEnd::Lost;
                }
                if socket.send(Frame::Ping(Default::default())).await.is_err() {
                    break SessionEnd::Lost;
                }
            }
        }
    };
    for (_, reply) in pending.drain() {
        complete(reply, Err(ClientError::Disconnected));
    }
    end
}

fn complete(
    reply: oneshot::Sender<Result<Value, ClientError>>,
    outcome: Result<Value, ClientError>,
) {
    if reply.send(outcome).is_err() {
        // The caller stopped waiting (its future was dropped); nothing to tell.
        tracing::trace!("reply for a caller that left");
    }
}

fn on_text(
    text: &str,
    pending: &mut HashMap<u64, oneshot::Sender<Result<Value, ClientError>>>,
    routes: &Routes,
) {
    let mut frame: Value = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::warn!(%error, "server sent a frame that is not JSON");
            return;
        }
    };
    if let Some(re) = frame.get("re") {
        let Some(reply) = re.as_u64().and_then(|id| pending.remove(&id)) else {
            tracing::warn!(%re, "reply to no pending request");
            return;
        };
        complete(reply, reply_outcome(&mut frame));
        return;
    }
    match frame.get("ev").and_then(Value::as_str) {
        Some("message") => match serde_json::from_value::<Message>(frame["message"].take()) {
            Ok(message) => routes.deliver(&message.stream(), FeedInput::Message(Box::new(message))),
            Err(error) => tracing::warn!(%error, "unreadable message event"),
        },
        Some("resync") => {
            let stream = serde_json::from_value::<StreamId>(frame["stream"].take());
            match (stream, frame["from"].as_u64()) {
                (Ok(stream), Some(from)) => routes.deliver(&stream, FeedInput::Resync { from }),
                _ => tracing::warn!("unreadable resync event"),
            }
        }
        // Ephemerals are not surfaced by this version of the SDK.
        _ => {}
    }
}

/// `{"ok": …}` → the body; `{"error": …, "stream"?: …}` → the server's refusal.
fn reply_outcome(frame: &mut Value) -> Result<Value, ClientError> {
    if let Some(ok) = frame.get_mut("ok") {
        return Ok(ok.take());
    }
    let error = serde_json::from_value(frame["error"].take())
        .map_err(|error| ClientError::Protocol(Arc::new(error)))?;
    let stream = match frame.get_mut("stream") {
        Some(stream) => serde_json::from_value::<Stream>(stream.take()).ok().map(Box::new),
        None => None,
    };
    Err(ClientError::Server(ServerError { error, stream }))
}

#[cfg(test)]
mod tests {
    use chorus_types::ErrorCode;
    use serde_json::json;

    use super::*;

    #[test]
    fn replies_and_refusals() {
        let mut ok = json!({"re": 1, "ok": {"ordinal": 3}});
        assert_eq!(reply_outcome(&mut ok).unwrap(), json!({"ordinal": 3}));
        let mut conflict = json!({"re": 2, "error": {"code": "conflict", "message": "m"},
            "stream": {"publisherId": "a", "name": "r", "messageCount": 9}});
        match reply_outcome(&mut conflict) {
            Err(ClientError::Server(error)) => {
                assert_eq!(error.code(), ErrorCode::Conflict);
                assert_eq!(error.stream.unwrap().message_count, Some(9));
            }
            other => panic!("{other:?}"),
        }
        let mut busy =
            json!({"re": 3, "error": {"code": "unavailable", "message": "m", "retryAfterMs": 5}});
        match reply_outcome(&mut busy) {
            Err(ClientError::Server(error)) => assert!(error.is_transient()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_are_routed_by_stream() {
        let routes = Routes::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&routes.by_stream).insert(StreamId::new("a", "r"), tx);
        let mut pending = HashMap::new();
        let event = json!({"ev": "message", "message": {"publisherId": "a", "streamName": "r",
            "ordinal": 4, "type": "Chat/message"}});
        on_text(&event.to_string(), &mut pending, &routes);
        on_text(
            r#"{"ev":"resync","stream":{"publisherId":"a","name":"r"},"from":9}"#,
            &mut pending,
            &routes,
        );
        on_text(
            r#"{"ev":"message","message":{"publisherId":"b","streamName":"r","ordinal":1,"type":"x"}}"#,
            &mut pending,
            &routes,
        );
        assert!(matches!(rx.try_recv(), Ok(FeedInput::Message(m)) if m.ordinal == 4));
        assert!(matches!(rx.try_recv(), Ok(FeedInput::Resync { from: 9 })));
        assert!(rx.try_recv().is_err(), "other streams are not routed here");
    }
}
