//! A session's outbound path: one bounded queue of frames, a small overflow lane for `resync`
//! events, and the writer task that drains both into the socket.
//!
//! ```text
//!  request tasks ──reply (waits)──────┐
//!  forwarders ────event (try, or end)─┼─▶ queue (session_queue_len) ─┐
//!  forwarders ────resync (waits)──────┴─▶ overflow (small) ───────────┴─▶ writer ─▶ socket
//! ```
//!
//! A listen that finds the queue full ends and reports it with a `resync` through the overflow
//! lane, which lets that one frame through even though the queue is full. The writer sends,
//! before a resync, every frame queued ahead of it, so it never overtakes the listen's earlier
//! messages.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Resync frames waiting beside a full queue. Each listen sends at most one, and a listen
/// starts only after its `ok` reply got into the queue, so this stays small; senders wait
/// when it is full rather than drop a resync.
const OVERFLOW_LEN: usize = 64;

/// One outbound frame.
#[derive(Debug)]
pub(crate) enum OutFrame {
    /// An event frame rendered once per edge and shared (reference-counted bytes) by every
    /// session that gets it.
    Shared(Utf8Bytes),
    /// A reply or a resync, rendered for this session.
    Owned(String),
    /// Close the socket with this code and reason; nothing after it is sent.
    Close { code: u16, reason: &'static str },
}

/// What became of an event offered to a full-or-not queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    Queued,
    Full,
    SessionClosed,
}

/// The sending side, cloned into request tasks and listen forwarders.
#[derive(Clone)]
pub(crate) struct Outbound {
    queue: mpsc::Sender<OutFrame>,
    overflow: mpsc::Sender<OutFrame>,
}

/// The writer's side.
pub(crate) struct OutboundReceivers {
    queue: mpsc::Receiver<OutFrame>,
    overflow: mpsc::Receiver<OutFrame>,
}

impl Outbound {
    pub(crate) fn channel(queue_len: usize) -> (Outbound, OutboundReceivers) {
        let (queue_tx, queue_rx) = mpsc::channel(queue_len.max(1));
        let (overflow_tx, overflow_rx) = mpsc::channel(OVERFLOW_LEN);
        let outbound = Outbound { queue: queue_tx, overflow: overflow_tx };
        (outbound, OutboundReceivers { queue: queue_rx, overflow: overflow_rx })
    }

    /// Queues a reply, waiting for room: replies are bounded by the session's in-flight
    /// request limit. `false` when the session is gone.
    pub(crate) async fn reply(&self, frame: String) -> bool {
        self.queue.send(OutFrame::Owned(frame)).await.is_ok()
    }

    /// Offers an event without waiting: a slow session must not hold up the stream's feed.
    pub(crate) fn offer(&self, frame: &Utf8Bytes) -> Offered {
        match self.queue.try_send(OutFrame::Shared(frame.clone())) {
            Ok(()) => Offered::Queued,
            Err(TrySendError::Full(_)) => Offered::Full,
            Err(TrySendError::Closed(_)) => Offered::SessionClosed,
        }
    }

    /// Queues an event, waiting for room: for a listen's backlog, which holds up nobody but
    /// this session. `false` when the session is gone.
    pub(crate) async fn push(&self, frame: Utf8Bytes) -> bool {
        self.queue.send(OutFrame::Shared(frame)).await.is_ok()
    }

    /// Frames the queue can take now without waiting.
    pub(crate) fn room(&self) -> usize {
        self.queue.capacity()
    }

    /// Sends a resync even when the queue is full. `false` when the session is gone.
    pub(crate) async fn resync(&self, frame: String) -> bool {
        self.overflow.send(OutFrame::Owned(frame)).await.is_ok()
    }

    /// Asks the writer to close the socket after what is queued, if there is room to ask.
    pub(crate) fn try_close(&self, code: u16, reason: &'static str) {
        // A full queue means the client is not reading; the writer closes without a code
        // once the queue is dropped.
        let _ignored_when_full = self.queue.try_send(OutFrame::Close { code, reason });
    }
}

enum Flow {
    Continue,
    Stop,
}

/// Drains the queues into the socket until both senders are gone or the socket fails.
pub(crate) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut receivers: OutboundReceivers,
) {
    loop {
        let frame = tokio::select! {
            biased;
            Some(resync) = receivers.overflow.recv() => {
                // Everything queued ahead of the resync was queued before it (the listen
                // queued its messages, then found the queue full), so send that first.
                let queued_ahead = receivers.queue.len();
                for _ in 0..queued_ahead {
                    let Ok(frame) = receivers.queue.try_recv() else { break };
                    if let Flow::Stop = feed(&mut sink, frame).await {
                        return;
                    }
                }
                resync
            }
            Some(frame) = receivers.queue.recv() => frame,
            else => break,
        };
        if let Flow::Stop = feed(&mut sink, frame).await {
            return;
        }
        // Batch writes while frames are waiting; flush once the queues run dry.
        if receivers.queue.is_empty()
            && receivers.overflow.is_empty()
            && sink.flush().await.is_err()
        {
            return;
        }
    }
    let _closing_a_dead_socket_may_fail = sink.close().await;
}

async fn feed(sink: &mut SplitSink<WebSocket, Message>, frame: OutFrame) -> Flow {
    let message = match frame {
        OutFrame::Shared(text) => Message::Text(text),
        OutFrame::Owned(text) => Message::Text(Utf8Bytes::from(text)),
        OutFrame::Close { code, reason } => {
            let close = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
            let _closing_a_dead_socket_may_fail = sink.send(Message::Close(Some(close))).await;
            return Flow::Stop;
        }
    };
    match sink.feed(message).await {
        Ok(()) => Flow::Continue,
        Err(error) => {
            tracing::debug!(%error, "websocket write failed");
            Flow::Stop
        }
    }
}
