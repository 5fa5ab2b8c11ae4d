//! One WebSocket session: a reader loop that parses frames and spawns a task per request, a
//! writer task (see [`outbound`](super::outbound)), and a forwarder task per listen.
//!
//! ```text
//!            ┌──────────── reader loop ────────────┐
//!  socket ──▶│ parse frame ─▶ spawn request task   │──reply──▶ queue ──▶ writer ──▶ socket
//!            │ listen: supersede, spawn listen task │
//!            └──────────────────────────────────────┘
//!  listen task: service.listen ─▶ queue `ok` ─▶ start forwarder ──events──▶ queue
//! ```
//!
//! Shutdown: when the socket closes, the server stops, or the writer fails, the loop ends; the
//! request tasks, then the forwarders are aborted and awaited; dropping the last sender lets
//! the writer flush what is queued and close the socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chorus_api::{Caller, ServiceError, StreamService};
use chorus_types::{ApiError, ErrorCode, StreamKey};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::instrument;

use crate::fanout::{Fanout, Joined, Listener};
use crate::metrics::{GaugeGuard, SESSIONS, Transport, record_request, record_timed_request};
use crate::ops::{OpName, ReplyBody, Request, dispatch};
use crate::ws::client_io::ClientIo;
use crate::ws::frame::{
    Command, Frame, FrameError, error_frame, ok_frame, ok_frame_text, parse_frame,
};
use crate::ws::listen::{FeedListen, ListenRegistry, stop_forwarder};
use crate::ws::order::StreamOrder;
use crate::ws::outbound::{Outbound, write_loop};

/// Requests of one session running at once. The reader stops reading while this many are in
/// flight, which pushes back on the client through TCP instead of spawning without bound.
const MAX_REQUESTS_IN_FLIGHT: usize = 64;

/// How long a closing session waits for the writer to flush before dropping the socket.
const WRITER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a new session needs, resolved before the upgrade.
pub(crate) struct SessionSetup {
    pub(crate) id: u64,
    pub(crate) caller: Caller,
    pub(crate) service: Arc<dyn StreamService>,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) queue_len: usize,
    /// Flips to `true` when the server shuts down; `None` when served without [`crate::serve`].
    pub(crate) stop: Option<watch::Receiver<bool>>,
    /// When the session's token expires; the session is closed then.
    pub(crate) expires: Option<std::time::SystemTime>,
    /// Limits for reading client frames.
    pub(crate) config: WebSocketConfig,
}

/// Close code for a client message over the size limit (RFC 6455 §7.4.1).
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code when the server shuts down.
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a frame that breaks RFC 6455 (unmasked, bad opcode, bad fragments …).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text message that is not UTF-8.
const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code when the session's token expires (policy violation); the client reconnects with
/// a fresh token and resumes its listens with `since`.
const CLOSE_POLICY: u16 = 1008;
/// How long a session the server closed reads on, discarding, before it drops the socket.
const LINGER: Duration = Duration::from_secs(1);

/// What request tasks share.
struct Session {
    id: u64,
    /// The authenticated caller, with `session` set to this session's id.
    caller: Caller,
    service: Arc<dyn StreamService>,
    fanout: Arc<Fanout>,
    out: Outbound,
    listens: Arc<ListenRegistry>,
    /// Requests on one stream take effect in the order sent.
    order: Arc<StreamOrder>,
}

/// Why the reader loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    ClientGone,
    /// The client broke a limit or the protocol; the server closed with a code.
    Refused,
    WriterGone,
    ServerStopping,
}

/// Runs a session on the socket of a completed upgrade; `prefix` holds any bytes the client
/// sent past the upgrade request.
#[instrument(skip_all, fields(session = setup.id))]
pub(crate) async fn run(socket: TcpStream, prefix: Bytes, setup: SessionSetup) {
    let _open = GaugeGuard::hold(&SESSIONS);
    tracing::debug!("websocket session opened");
    // Every frame is one write of a whole frame; waiting for ACKs would only add latency.
    if let Err(error) = socket.set_nodelay(true) {
        tracing::debug!(%error, "websocket socket: TCP_NODELAY not set");
    }
    let (read, write) = socket.into_split();
    let (out, receivers) = Outbound::channel(setup.queue_len, write);
    let io = ClientIo::new(prefix, read, out.control());
    let mut stream = WebSocketStream::from_raw_socket(io, Role::Server, Some(setup.config)).await;
    let mut writer = tokio::spawn(write_loop(receivers));
    let session = Arc::new(Session {
        id: setup.id,
        caller: setup.caller,
        service: setup.service,
        fanout: setup.fanout,
        out,
        listens: Arc::new(ListenRegistry::default()),
        order: Arc::default(),
    });
    let mut requests = JoinSet::new();
    let in_flight = Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
    let stop = stop_requested(setup.stop);
    tokio::pin!(stop);
    let expired = expiry(setup.expires);
    tokio::pin!(expired);

    let end = loop {
        tokio::select! {
            biased;
            () = &mut stop => break End::ServerStopping,
            () = &mut expired => {
                session.out.try_close(CLOSE_POLICY, "token expired");
                break End::Refused;
            }
            _ = &mut writer => break End::WriterGone,
            Some(joined) = requests.join_next(), if !requests.is_empty() => log_panic(joined),
            message = stream.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(WsError::Capacity(_))) => {
                        session.out.try_close(CLOSE_TOO_BIG, "message larger than the limit");
                        break End::Refused;
                    }
                    Some(Err(WsError::Protocol(error))) => {
                        tracing::debug!(%error, "websocket protocol error");
                        session.out.try_close(CLOSE_PROTOCOL_ERROR, "websocket protocol error");
                        break End::Refused;
                    }
                    Some(Err(WsError::Utf8(_))) => {
                        session.out.try_close(CLOSE_INVALID_DATA, "text frame is not UTF-8");
                        break End::Refused;
                    }
                    Some(Err(_)) | None => break End::ClientGone,
                };
                if let Message::Close(_) = message {
                    // tungstenite has queued its reply; this hands it to the writer.
                    let _client_gone_anyway = stream.flush().await;
                    break End::ClientGone;
                }
                // Handling a frame may wait for queue room or a request permit while the
                // client is not reading; a server stop must still get through.
                tokio::select! {
                    biased;
                    () = &mut stop => break End::ServerStopping,
                    keep_going = on_message(&session, &mut requests, &in_flight, message) => {
                        if !keep_going {
                            break End::ClientGone;
                        }
                    }
                }
            }
        }
    };
    tracing::debug!(reason = ?end, "websocket session closing");

    // Request tasks may still start forwarders, so they go first.
    requests.abort_all();
    while let Some(joined) = requests.join_next().await {
        log_panic(joined);
    }
    for forwarder in session.listens.take_all() {
        stop_forwarder(Some(forwarder)).await;
    }
    if end == End::ServerStopping {
        session.out.try_close(CLOSE_GOING_AWAY, "server shutting down");
    }
    // The last senders go with the session: the writer flushes what is queued and closes.
    drop(session);
    if end != End::WriterGone {
        drain_writer(writer).await;
    }
    if matches!(end, End::Refused | End::ServerStopping) {
        // Closing with unread bytes in the socket makes the kernel send a reset, which may
        // reach the client before the close frame it has not read yet: read until the
        // client closes too (its close reply, or the rest of an oversize message), briefly.
        let io = stream.get_mut();
        let _best_effort = tokio::time::timeout(LINGER, async {
            // On the heap: an array here would sit in every session's future for its life.
            let mut scratch = vec![0u8; 4096];
            while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Handles one frame; `false` ends the session.
///
/// Cancel-safe: it only waits before it changes anything (queue room for a reply, a request
/// permit); registering a listen and spawning its task happen without an `.await` between.
async fn on_message(
    session: &Arc<Session>,
    requests: &mut JoinSet<()>,
    in_flight: &Arc<Semaphore>,
    message: Message,
) -> bool {
    match message {
        Message::Text(text) => match parse_frame(text.as_str()) {
            Ok(frame) => start_request(session, requests, in_flight, frame).await,
            Err(bad) => reply_frame_error(session, bad).await,
        },
        Message::Binary(_) => reply_frame_error(session, FrameError::binary()).await,
        // Pongs to pings are queued by the protocol layer itself.
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => true,
        Message::Close(_) => false,
    }
}

async fn reply_frame_error(session: &Session, bad: FrameError) -> bool {
    record_request(Transport::Ws, bad.op, Some(bad.error.code));
    session.out.reply(error_frame(&bad.re, &ServiceError::from(bad.error))).await
}

/// Runs a request; `false` when the session is gone. Listen and unlisten take their epoch
/// here, in the order the client sent them, before any task runs.
async fn start_request(
    session: &Arc<Session>,
    requests: &mut JoinSet<()>,
    in_flight: &Arc<Semaphore>,
    frame: Frame,
) -> bool {
    let Frame { id, command } = frame;
    if let Command::Ping = command {
        record_request(Transport::Ws, OpName::Ping, None);
        return session.out.reply(ok_frame(&id, json!({}))).await;
    }
    // The semaphore is never closed; failing to acquire would mean the session is broken.
    let Ok(permit) = Arc::clone(in_flight).acquire_owned().await else {
        return false;
    };
    let session = Arc::clone(session);
    match command {
        // Answered above, without a task.
        Command::Ping => {}
        Command::Call(request) => {
            let at_actor = request.queues_at_actor();
            let turn =
                request.order_key(&session.caller).map(|key| session.order.queue(key, at_actor));
            // One `call` site: a `call` in each arm of a match made the task hold two of its
            // futures (2.9 against 2.2 KB, copied into every request's task).
            requests.spawn(async move {
                let _permit = permit;
                let mut turn = turn;
                let caller = match &mut turn {
                    Some(turn) => {
                        StreamOrder::wait(turn).await;
                        Some(Caller { order: turn.hold(), ..session.caller.clone() })
                    }
                    None => None,
                };
                call(&session, caller.as_ref().unwrap_or(&session.caller), id, request).await;
                if let Some(turn) = turn {
                    session.order.finish(turn);
                }
            });
        }
        Command::Listen { key, since } => {
            let Some((epoch, replaced)) = session.listens.supersede(&key) else {
                let error = ServiceError::from(ApiError::too_large(format!(
                    "a session listens to at most {} streams",
                    super::listen::MAX_LISTENS
                )));
                return session.out.reply(error_frame(&id, &error)).await;
            };
            // Aborted now, not when the task first runs: a session closing before then would
            // drop the task and with it the only handle, detaching the old listen for good.
            if let Some(old) = &replaced {
                old.abort();
            }
            requests.spawn(async move {
                let _permit = permit;
                stop_forwarder(replaced).await;
                listen(&session, id, key, since, epoch).await;
            });
        }
        Command::Unlisten(key) => {
            let forwarder = session.listens.retire(&key);
            if let Some(old) = &forwarder {
                old.abort();
            }
            requests.spawn(async move {
                let _permit = permit;
                stop_forwarder(forwarder).await;
                record_request(Transport::Ws, OpName::Unlisten, None);
                session.out.reply(ok_frame(&id, json!({}))).await;
            });
        }
    }
    true
}

async fn call(session: &Session, caller: &Caller, id: Value, request: Request) {
    // The answer is built in its own future: its locals (the request, the outcome) end there
    // instead of taking room beside the reply's await.
    let frame = answer(session, caller, &id, request).await;
    session.out.reply(frame).await;
}

async fn answer(session: &Session, caller: &Caller, id: &Value, request: Request) -> String {
    let (op, started) = (request.op(), std::time::Instant::now());
    let outcome = dispatch(session.service.as_ref(), caller, request).await;
    let failure = outcome.as_ref().err().map(|error| error.error.code);
    record_timed_request(Transport::Ws, op, failure, started);
    match outcome {
        Ok(reply) => match reply.body {
            ReplyBody::Value(body) => ok_frame(id, body),
            ReplyBody::Text(body) => ok_frame_text(id, &body),
        },
        Err(error) => error_frame(id, &error),
    }
}

#[instrument(skip_all, fields(op = "listen", stream = %key))]
async fn listen(session: &Session, id: Value, key: StreamKey, since: Option<u64>, epoch: u64) {
    let started = std::time::Instant::now();
    // The stream's feed must be open at the owner before the `ok`, so that every ephemeral
    // sent after it reaches this session. It is taken before the authorisation: an access
    // change the feed hears of in between makes the listen authorise again.
    let mut feed = session.fanout.acquire(&key);
    let who = Listener { caller: &session.caller, session: session.id, out: &session.out };
    let still_current = || session.listens.is_current(&key, epoch);
    // One budget for the whole listen (waiting for the feed, the authorisation, attaching),
    // so no step adds its own wait to the others'.
    let deadline = tokio::time::Instant::now() + session.fanout.listen_timeout;
    let outcome: Result<u64, ServiceError> = loop {
        // A stream that does not exist (or that the caller cannot see) fails to open: the
        // caller's own authorisation then says why (`not_found`), not the feed. An owner that
        // did not answer in time would not answer the authorisation either.
        let opened = feed.opened(deadline).await;
        if let Err(error) = &opened
            && !feed.refused()
        {
            break Err(error.clone().into());
        }
        let generation = feed.access_generation();
        let authorize = session.service.authorize_listen(&session.caller, &key);
        let authorized = tokio::time::timeout_at(deadline, authorize).await.unwrap_or_else(|_| {
            Err(ApiError::new(ErrorCode::Unavailable, "the stream's owner did not answer in time")
                .into())
        });
        let count = match (authorized, opened) {
            (Ok(count), Ok(())) => count,
            (Err(error), _) => break Err(error),
            (Ok(_), Err(error)) => break Err(error.into()),
        };
        // From `since` when the stream has it; from now without `since` or beyond the end.
        let (last, recovered) = match since {
            None => (count, true),
            Some(s) if s <= count => (s, true),
            Some(_) => (count, false),
        };
        let ok = ok_frame(&id, json!({"recovered": recovered, "messageCount": count}));
        match feed.join(&who, ok, still_current, generation, deadline).await {
            Joined::Yes => break Ok(last),
            Joined::AccessChanged => continue,
            Joined::SessionGone => return,
            Joined::Superseded => {
                break Err(ApiError::new(
                    ErrorCode::Conflict,
                    "a later listen or unlisten of this stream superseded this listen",
                )
                .into());
            }
            Joined::Failed(error) => break Err(error.into()),
        }
    };
    let last = match outcome {
        Ok(last) => last,
        Err(error) => {
            record_timed_request(Transport::Ws, OpName::Listen, Some(error.error.code), started);
            session.listens.finished(&key, epoch);
            session.out.reply(error_frame(&id, &error)).await;
            return;
        }
    };
    record_timed_request(Transport::Ws, OpName::Listen, None, started);
    let task = FeedListen {
        feed,
        out: session.out.clone(),
        caller: session.caller.clone(),
        session_id: session.id,
        key: key.clone(),
        epoch,
        registry: Arc::clone(&session.listens),
    };
    let started = session.listens.install(&key, epoch, || tokio::spawn(task.run(last)));
    if !started {
        tracing::debug!("listen superseded before it started");
    }
}

/// Resolves when the token expires; never for a token without `exp`.
async fn expiry(expires: Option<std::time::SystemTime>) {
    let Some(expires) = expires else {
        return std::future::pending().await;
    };
    // Wall-clock `exp` turned into the monotonic clock once; a later clock step does not move it.
    let left = expires.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left).await;
}

/// Resolves when the server stops; never without a stop signal.
async fn stop_requested(stop: Option<watch::Receiver<bool>>) {
    let Some(mut stop) = stop else {
        return std::future::pending().await;
    };
    // An error means the server is gone altogether, which is a stop as well.
    let _stopped_or_gone = stop.wait_for(|stopping| *stopping).await;
}

async fn drain_writer(mut writer: JoinHandle<()>) {
    if tokio::time::timeout(WRITER_DRAIN_TIMEOUT, &mut writer).await.is_err() {
        tracing::debug!("websocket writer did not drain in time");
        writer.abort();
        log_panic(writer.await);
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!(%error, "websocket task panicked");
    }
}
