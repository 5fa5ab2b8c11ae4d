//! A session's outbound path: one bounded queue of frames, a small overflow lane for `resync`
//! events, and the writer task that drains both into the socket.
//!
//! ```text
//!  request tasks ──reply (waits)──────┐
//!  feeds ─────────event (try, or end)─┼─▶ queue (session_queue_len) ─┐
//!  listen tasks ──resync (waits)──────┴─▶ overflow (small) ───────────┴─▶ writer ─▶ socket
//! ```
//!
//! A listen that finds the queue full ends and reports it with a `resync` through the overflow
//! lane, which lets that one frame through even though the queue is full. The writer sends,
//! before a resync, every frame queued ahead of it, so it never overtakes the listen's earlier
//! messages.
//!
//! The queues are plain `VecDeque`s behind one lock with two `Notify`s rather than channels:
//! an idle session then holds no buffer at all (a bounded tokio channel allocates a block of
//! slots up front, twice per session with the overflow lane), which matters at 100,000
//! sessions per edge. The lock is held only to push or pop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::Notify;

/// Resync frames waiting beside a full queue. Each listen sends at most one; a session with
/// many listens falling behind at once may find it full, and then waits for the writer
/// rather than drop a resync.
const OVERFLOW_LEN: usize = 64;

/// Capacity a drained queue keeps; beyond it the buffer is given back.
const KEEP_CAPACITY: usize = 16;

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

#[derive(Default)]
struct Queues {
    main: VecDeque<OutFrame>,
    /// Each resync with the number of main-queue frames pushed before it.
    overflow: VecDeque<(u64, OutFrame)>,
    pushed: u64,
    popped: u64,
    /// The writer is gone: nothing will be sent any more.
    closed: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    /// Something was queued, or the last sender left.
    readable: Notify,
    /// Room was made, or the writer left.
    writable: Notify,
    capacity: usize,
    senders: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // Every update is a single push or pop, so a panicked holder leaves it consistent.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending side, cloned into request tasks, listen tasks and feeds.
pub(crate) struct Outbound {
    shared: Arc<Shared>,
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Outbound { shared: Arc::clone(&self.shared) }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.readable.notify_one();
        }
    }
}

/// The writer's side.
pub(crate) struct OutboundReceivers {
    shared: Arc<Shared>,
}

impl Drop for OutboundReceivers {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.closed = true;
        q.main.clear();
        q.overflow.clear();
        drop(q);
        self.shared.writable.notify_waiters();
    }
}

impl Outbound {
    pub(crate) fn channel(queue_len: usize) -> (Outbound, OutboundReceivers) {
        let shared = Arc::new(Shared {
            queues: Mutex::default(),
            readable: Notify::new(),
            writable: Notify::new(),
            capacity: queue_len.max(1),
            senders: AtomicUsize::new(1),
        });
        (Outbound { shared: Arc::clone(&shared) }, OutboundReceivers { shared })
    }

    /// Runs `try_push` under the lock until it takes the frame, waiting for the writer to
    /// make room in between. `false` when the session is gone.
    async fn push_waiting(&self, mut try_push: impl FnMut(&mut Queues) -> bool) -> bool {
        loop {
            let room = self.shared.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut q = self.shared.lock();
                if q.closed {
                    return false;
                }
                if try_push(&mut q) {
                    drop(q);
                    self.shared.readable.notify_one();
                    return true;
                }
            }
            room.await;
        }
    }

    /// Queues `frame` in the main queue, waiting for room. `false` when the session is gone.
    async fn send(&self, frame: OutFrame) -> bool {
        let capacity = self.shared.capacity;
        let mut frame = Some(frame);
        self.push_waiting(|q| {
            if q.main.len() >= capacity {
                return false;
            }
            if let Some(f) = frame.take() {
                q.main.push_back(f);
                q.pushed += 1;
            }
            true
        })
        .await
    }

    /// Queues a reply, waiting for room: replies are bounded by the session's in-flight
    /// request limit. `false` when the session is gone.
    pub(crate) async fn reply(&self, frame: String) -> bool {
        self.send(OutFrame::Owned(frame)).await
    }

    /// Queues a reply beyond the queue's bound if need be, without waiting: for a listen's
    /// `ok`, which must be queued under its feed's lock. One per request, so the excess is
    /// bounded by the session's in-flight requests. `false` when the session is gone.
    pub(crate) fn force(&self, frame: String) -> bool {
        let mut q = self.shared.lock();
        if q.closed {
            return false;
        }
        q.main.push_back(OutFrame::Owned(frame));
        q.pushed += 1;
        drop(q);
        self.shared.readable.notify_one();
        true
    }

    /// Offers an event without waiting: a slow session must not hold up the stream's feed.
    pub(crate) fn offer(&self, frame: &Utf8Bytes) -> Offered {
        let mut q = self.shared.lock();
        if q.closed {
            return Offered::SessionClosed;
        }
        if q.main.len() >= self.shared.capacity {
            return Offered::Full;
        }
        q.main.push_back(OutFrame::Shared(frame.clone()));
        q.pushed += 1;
        drop(q);
        self.shared.readable.notify_one();
        Offered::Queued
    }

    /// Queues an event, waiting for room: for a listen's backlog, which holds up nobody but
    /// this session. `false` when the session is gone.
    pub(crate) async fn push(&self, frame: Utf8Bytes) -> bool {
        self.send(OutFrame::Shared(frame)).await
    }

    /// Frames the queue can take now without waiting.
    pub(crate) fn room(&self) -> usize {
        self.shared.capacity.saturating_sub(self.shared.lock().main.len())
    }

    /// Sends a resync even when the queue is full. `false` when the session is gone.
    pub(crate) async fn resync(&self, frame: String) -> bool {
        let mut frame = Some(frame);
        self.push_waiting(|q| {
            if q.overflow.len() >= OVERFLOW_LEN {
                return false;
            }
            let after = q.pushed;
            if let Some(f) = frame.take() {
                q.overflow.push_back((after, OutFrame::Owned(f)));
            }
            true
        })
        .await
    }

    /// Asks the writer to close the socket after what is queued, if there is room to ask.
    pub(crate) fn try_close(&self, code: u16, reason: &'static str) {
        let mut q = self.shared.lock();
        // A full queue means the client is not reading; the writer closes without a code
        // once the last sender is gone.
        if !q.closed && q.main.len() < self.shared.capacity {
            q.main.push_back(OutFrame::Close { code, reason });
            q.pushed += 1;
            drop(q);
            self.shared.readable.notify_one();
        }
    }
}

impl OutboundReceivers {
    /// The next frame to write, or `None` once every sender is gone and the queues are empty.
    async fn next(&self) -> Option<OutFrame> {
        loop {
            let ready = self.shared.readable.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(frame) = self.try_next() {
                return Some(frame);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                // A sender may have queued just before leaving.
                return self.try_next();
            }
            ready.await;
        }
    }

    /// A resync once every frame queued before it went out; otherwise the main queue's head.
    fn try_next(&self) -> Option<OutFrame> {
        let mut q = self.shared.lock();
        let frame = match q.overflow.front() {
            Some((after, _)) if *after <= q.popped => q.overflow.pop_front().map(|(_, f)| f),
            _ => {
                let f = q.main.pop_front();
                if f.is_some() {
                    q.popped += 1;
                }
                f
            }
        };
        if frame.is_some() {
            if q.main.is_empty() && q.main.capacity() > KEEP_CAPACITY {
                q.main.shrink_to(KEEP_CAPACITY);
            }
            drop(q);
            self.shared.writable.notify_waiters();
        }
        frame
    }

    fn is_empty(&self) -> bool {
        let q = self.shared.lock();
        q.main.is_empty() && q.overflow.is_empty()
    }
}

enum Flow {
    Continue,
    Stop,
}

/// Drains the queues into the socket until every sender is gone or the socket fails.
pub(crate) async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    receivers: OutboundReceivers,
) {
    while let Some(frame) = receivers.next().await {
        if let Flow::Stop = feed(&mut sink, frame).await {
            return;
        }
        // Batch writes while frames are waiting; flush once the queues run dry.
        if receivers.is_empty() && sink.flush().await.is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: OutFrame) -> String {
        match frame {
            OutFrame::Shared(t) => t.to_string(),
            OutFrame::Owned(t) => t,
            OutFrame::Close { reason, .. } => format!("close {reason}"),
        }
    }

    #[tokio::test]
    async fn full_queue_refuses_events_but_lets_a_resync_through_after_what_was_ahead() {
        let (out, rx) = Outbound::channel(2);
        assert_eq!(out.offer(&Utf8Bytes::from_static("m1")), Offered::Queued);
        assert_eq!(out.offer(&Utf8Bytes::from_static("m2")), Offered::Queued);
        assert_eq!(out.offer(&Utf8Bytes::from_static("m3")), Offered::Full);
        assert_eq!(out.room(), 0);
        assert!(out.resync("resync".into()).await);
        assert_eq!(text(rx.next().await.unwrap()), "m1");
        // Room again: a later frame queues, but the resync goes before it.
        assert!(out.reply("later".into()).await);
        assert_eq!(text(rx.next().await.unwrap()), "m2");
        assert_eq!(text(rx.next().await.unwrap()), "resync");
        assert_eq!(text(rx.next().await.unwrap()), "later");
        drop(out);
        assert!(rx.next().await.is_none(), "all senders gone, queues empty");
    }

    #[tokio::test]
    async fn a_waiting_reply_gets_room_and_a_gone_writer_ends_waits() {
        let (out, rx) = Outbound::channel(1);
        assert!(out.reply("a".into()).await);
        let waiting = tokio::spawn({
            let out = out.clone();
            async move { out.reply("b".into()).await }
        });
        assert_eq!(text(rx.next().await.unwrap()), "a");
        assert!(waiting.await.unwrap());
        assert_eq!(text(rx.next().await.unwrap()), "b");
        assert!(out.reply("c".into()).await);
        let blocked = tokio::spawn({
            let out = out.clone();
            async move { out.reply("d".into()).await }
        });
        drop(rx);
        assert!(!blocked.await.unwrap(), "the writer left");
        assert_eq!(out.offer(&Utf8Bytes::from_static("e")), Offered::SessionClosed);
    }
}
