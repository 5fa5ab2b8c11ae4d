//! A session's outbound path: one bounded queue of encoded frames, a small overflow lane for
//! `resync` events, written to the socket with non-blocking `writev`s.
//!
//! ```text
//!  feeds ─────────event (try) + kick ──┐                                   write now
//!  request tasks ──reply (waits)───────┼─▶ queue (session_queue_len) ─┐ ┌─▶ (kick: try_write)
//!  listen tasks ──backlog, resync ─────┴─▶ overflow (small) ──────────┴─┤
//!                                                                       └─▶ writer task: replies,
//!                                                                           backlogs, full sockets
//! ```
//!
//! Two ways to the socket, each where it is cheaper:
//! - **A fan-out writes at once** ([`Kick`]): the feed queues an event for every session under
//!   its lock and write tasks write them after it is released, one `writev` per session. Waking
//!   17,000 writer tasks for one message cost about a fifth of an edge's CPU per delivery.
//! - **Replies and backlogs go through the session's writer task**, which writes whatever
//!   queued up meanwhile in one `writev`: a client with 16 posts in flight gets its replies in
//!   a few writes rather than 16 (A/B on `loadgen`: 139–151 → 116–133 µs of server CPU per post).
//!   Woken, it first yields once: a Raft entry's callers are answered together, and the woken
//!   task runs next (tokio's LIFO slot), before the other request tasks have queued their
//!   replies. Yielding first cut the socket writes per post by a third (8 alternated pairs on
//!   `loadgen`: 27,911 → 30,350 posts/s).
//!
//! The writer task also takes over when a socket's buffer is full (it waits for the socket to
//! drain; producers keep queueing meanwhile, up to the bound), and at the end writes a close
//! frame and shuts the socket. Frames go out in queue order whoever writes them, always under
//! the queue's lock; a slow socket never holds a stream's feed.
//!
//! A listen that finds the queue full ends and reports it with a `resync` through the overflow
//! lane, which lets that one frame through even though the queue is full. A resync is sent
//! only after every frame queued ahead of it, so it never overtakes the listen's earlier
//! messages.
//!
//! The queues are plain `VecDeque`s behind one lock rather than channels: an idle session
//! then holds no buffer at all, which matters at 100,000 sessions per edge.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use super::wire;

/// Resync frames waiting beside a full queue. Each listen sends at most one; a session with
/// many listens falling behind at once may find it full, and then waits for room rather than
/// drop a resync.
const OVERFLOW_LEN: usize = 64;

/// Capacity a drained queue keeps; beyond it the buffer is given back.
const KEEP_CAPACITY: usize = 16;

/// Frames, and bytes, gathered into one `writev`.
const BATCH_FRAMES: usize = 64;
const BATCH_BYTES: usize = 64 * 1024;

/// Bytes one pump writes before it hands the rest to the session's writer task: a feed or a
/// request task writing a backlog to a fast client must not hold the session's lock (which
/// the stream's feed takes while it publishes) for long.
const PUMP_BUDGET: usize = 256 * 1024;

/// One encoded frame.
#[derive(Debug)]
enum OutFrame {
    Data(Bytes),
    /// tungstenite's answer to a ping; at most one waits at a time (RFC 6455 §5.5.3 lets a
    /// pong answer only the latest ping), so a client flooding pings queues nothing more.
    Pong(Bytes),
    /// A close frame: nothing after it is sent, and the socket shuts once it is out.
    Close(Bytes),
}

/// What became of an event offered to a full-or-not queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    Queued,
    Full,
    SessionClosed,
}

/// What a write attempt asks of others.
#[derive(Debug, PartialEq, Eq)]
enum Pump {
    /// Nothing: everything is written, or the writer task already has the socket (stalled
    /// before), or it closed before.
    Done,
    /// The socket just stopped taking bytes: the writer task must wait for it.
    Stalled,
    /// The socket just closed (written close frame, or a write error).
    Closed,
}

#[derive(Default)]
struct Queues {
    main: VecDeque<OutFrame>,
    /// Each resync with the number of main-queue frames pushed before it.
    overflow: VecDeque<(u64, OutFrame)>,
    pushed: u64,
    popped: u64,
    /// Frames taken from the queues, in order; the first is written up to `offset`.
    writing: VecDeque<Bytes>,
    offset: usize,
    /// A close frame is in `writing`: nothing more is taken.
    closing: bool,
    /// The socket took no more: the writer task waits for it to drain.
    stalled: bool,
    /// A sender waits for room.
    room_wanted: bool,
    /// A pong is in `main`, not yet taken.
    pong_pending: bool,
    /// Frames were queued for the writer task to write.
    flush_wanted: bool,
    /// `None` once closed: nothing will be sent any more.
    socket: Option<Arc<OwnedWriteHalf>>,
}

impl Queues {
    fn is_closed(&self) -> bool {
        self.socket.is_none()
    }

    /// Frames queued and not yet written, which the session's bound counts.
    fn queued(&self) -> usize {
        self.main.len() + self.writing.len()
    }

    fn push(&mut self, frame: OutFrame) {
        self.main.push_back(frame);
        self.pushed += 1;
    }

    /// A resync once every frame queued before it was taken; otherwise the main queue's head.
    fn take_next(&mut self) -> Option<OutFrame> {
        match self.overflow.front() {
            Some((after, _)) if *after <= self.popped => self.overflow.pop_front().map(|(_, f)| f),
            _ => {
                let frame = self.main.pop_front();
                if frame.is_some() {
                    self.popped += 1;
                    if let Some(OutFrame::Pong(_)) = frame {
                        self.pong_pending = false;
                    }
                } else if self.main.capacity() > KEEP_CAPACITY {
                    self.main.shrink_to(KEEP_CAPACITY);
                }
                frame
            }
        }
    }

    fn fill(&mut self) {
        let mut bytes = 0;
        while !self.closing && self.writing.len() < BATCH_FRAMES && bytes < BATCH_BYTES {
            match self.take_next() {
                Some(OutFrame::Data(frame) | OutFrame::Pong(frame)) => {
                    bytes += frame.len();
                    self.writing.push_back(frame);
                }
                Some(OutFrame::Close(frame)) => {
                    self.writing.push_back(frame);
                    self.closing = true;
                }
                None => break,
            }
        }
    }

    fn close_now(&mut self) {
        // Dropping the write half (the writer task's clone goes soon after) shuts it down.
        self.socket = None;
        self.main = VecDeque::new();
        self.overflow = VecDeque::new();
        self.writing = VecDeque::new();
        self.offset = 0;
        self.stalled = false;
        self.pong_pending = false;
    }

    /// Writes as much as the socket takes now, without waiting, up to about `budget` bytes;
    /// beyond that the rest is left to the writer task as if the socket were full.
    fn pump(&mut self, budget: usize) -> Pump {
        let mut written_total = 0;
        loop {
            if self.stalled {
                return Pump::Done;
            }
            self.fill();
            let written = match &self.socket {
                Some(socket) if !self.writing.is_empty() => {
                    write_some(socket, &self.writing, self.offset)
                }
                _ => return Pump::Done,
            };
            match written {
                Ok(0) => {
                    self.close_now();
                    return Pump::Closed;
                }
                Ok(n) => {
                    self.consume(n);
                    written_total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stalled = true;
                    return Pump::Stalled;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(%error, "websocket write failed");
                    self.close_now();
                    return Pump::Closed;
                }
            }
            if self.closing && self.writing.is_empty() {
                self.close_now();
                return Pump::Closed;
            }
            if written_total >= budget && !(self.writing.is_empty() && self.main.is_empty()) {
                self.stalled = true;
                return Pump::Stalled;
            }
        }
    }

    fn consume(&mut self, mut n: usize) {
        while let Some(head) = self.writing.front() {
            let left = head.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.writing.pop_front();
        }
    }
}

fn write_some(
    socket: &OwnedWriteHalf,
    writing: &VecDeque<Bytes>,
    offset: usize,
) -> io::Result<usize> {
    if writing.len() == 1
        && let Some(head) = writing.front()
    {
        return socket.try_write(&head[offset..]);
    }
    let slices: Vec<IoSlice<'_>> = writing
        .iter()
        .enumerate()
        .map(|(i, frame)| IoSlice::new(if i == 0 { &frame[offset..] } else { frame }))
        .collect();
    socket.try_write_vectored(&slices)
}

struct Shared {
    queues: Mutex<Queues>,
    /// The writer has work: the socket stalled, closed, or the last sender left.
    wake_writer: Notify,
    /// Room was made, or the session closed.
    room: Notify,
    capacity: usize,
    senders: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // Every update leaves the queues consistent, so a panicked holder leaves them usable.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes what is queued as far as the socket takes it, then wakes whoever must know.
    fn pump(&self, mut q: MutexGuard<'_, Queues>) {
        let before = q.queued();
        let outcome = q.pump(PUMP_BUDGET);
        let room = q.room_wanted && q.queued() < before;
        if room {
            q.room_wanted = false;
        }
        drop(q);
        if room || outcome == Pump::Closed {
            self.room.notify_waiters();
        }
        if matches!(outcome, Pump::Stalled | Pump::Closed) {
            self.wake_writer.notify_one();
        }
    }
}

/// The sending side, cloned into request tasks, listen tasks and feeds. The writer finishes
/// (and closes the socket) once every sender is gone.
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
            self.shared.wake_writer.notify_one();
        }
    }
}

/// Writes what a session has queued; taken under a feed's lock, run after releasing it.
pub(crate) struct Kick(Arc<Shared>);

impl Kick {
    pub(crate) fn run(self) {
        self.0.pump(self.0.lock());
    }
}

/// Bytes tungstenite writes on its own (pongs, the reply to a client's close), queued in
/// order with everything else. It is not a sender: it does not keep the session open.
pub(crate) struct Control(Arc<Shared>);

impl Control {
    pub(crate) fn raw(&self, bytes: &[u8]) {
        let mut q = self.0.lock();
        if q.is_closed() {
            return;
        }
        let frame = Bytes::copy_from_slice(bytes);
        if wire::holds_close(bytes) {
            q.push(OutFrame::Close(frame));
        } else if q.pong_pending {
            // Answer the latest ping only; the one waiting goes.
            if let Some(OutFrame::Pong(waiting)) =
                q.main.iter_mut().rev().find(|f| matches!(f, OutFrame::Pong(_)))
            {
                *waiting = frame;
            }
        } else {
            q.push(OutFrame::Pong(frame));
            q.pong_pending = true;
        }
        self.0.pump(q);
    }
}

/// The writer's side.
pub(crate) struct OutboundReceivers {
    shared: Arc<Shared>,
}

impl Drop for OutboundReceivers {
    fn drop(&mut self) {
        self.shared.lock().close_now();
        self.shared.room.notify_waiters();
    }
}

impl Outbound {
    pub(crate) fn channel(
        queue_len: usize,
        socket: OwnedWriteHalf,
    ) -> (Outbound, OutboundReceivers) {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues { socket: Some(Arc::new(socket)), ..Queues::default() }),
            wake_writer: Notify::new(),
            room: Notify::new(),
            capacity: queue_len.max(1),
            senders: AtomicUsize::new(1),
        });
        (Outbound { shared: Arc::clone(&shared) }, OutboundReceivers { shared })
    }

    pub(crate) fn kicker(&self) -> Kick {
        Kick(Arc::clone(&self.shared))
    }

    pub(crate) fn control(&self) -> Control {
        Control(Arc::clone(&self.shared))
    }

    /// Writes what is queued as far as the socket takes it now.
    pub(crate) fn kick(&self) {
        self.shared.pump(self.shared.lock());
    }

    /// Runs `try_push` under the lock until it takes the frame, waiting for room in between,
    /// then has the writer task write it. `false` when the session is gone.
    async fn push_waiting(&self, mut try_push: impl FnMut(&mut Queues) -> bool) -> bool {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut q = self.shared.lock();
                if q.is_closed() {
                    return false;
                }
                if try_push(&mut q) {
                    // The writer task writes it: replies and backlog frames that queue up
                    // meanwhile go out together in one `writev`, where writing each at once
                    // would be a send per reply. (A fan-out writes at once instead: it is
                    // one frame per session, and waking 17,000 writers costs more.)
                    let wake = !q.flush_wanted;
                    q.flush_wanted = true;
                    drop(q);
                    if wake {
                        self.shared.wake_writer.notify_one();
                    }
                    return true;
                }
                q.room_wanted = true;
            }
            room.await;
        }
    }

    /// Queues an encoded frame, waiting for room: for a listen's backlog, which holds up
    /// nobody but this session. `false` when the session is gone.
    pub(crate) async fn push(&self, frame: Bytes) -> bool {
        let capacity = self.shared.capacity;
        let mut frame = Some(frame);
        self.push_waiting(|q| {
            if q.queued() >= capacity {
                return false;
            }
            if let Some(f) = frame.take() {
                q.push(OutFrame::Data(f));
            }
            true
        })
        .await
    }

    /// Queues a reply, waiting for room: replies are bounded by the session's in-flight
    /// request limit. `false` when the session is gone.
    pub(crate) async fn reply(&self, frame: String) -> bool {
        self.push(wire::text(&frame)).await
    }

    /// Queues a reply beyond the queue's bound if need be, without waiting or writing: for a
    /// listen's `ok`, which must be queued under its feed's lock ([`kick`](Self::kick) after
    /// releasing it). One per request, so the excess is bounded by the session's in-flight
    /// requests. `false` when the session is gone.
    pub(crate) fn force(&self, frame: &str) -> bool {
        let mut q = self.shared.lock();
        if q.is_closed() {
            return false;
        }
        q.push(OutFrame::Data(wire::text(frame)));
        true
    }

    /// Offers an encoded event without waiting or writing: a slow session must not hold up
    /// the stream's feed. The caller kicks the session after releasing its own locks.
    pub(crate) fn offer(&self, frame: &Bytes) -> Offered {
        let mut q = self.shared.lock();
        if q.is_closed() {
            return Offered::SessionClosed;
        }
        if q.queued() >= self.shared.capacity {
            return Offered::Full;
        }
        q.push(OutFrame::Data(frame.clone()));
        Offered::Queued
    }

    /// Frames the queue can take now without waiting.
    pub(crate) fn room(&self) -> usize {
        self.shared.capacity.saturating_sub(self.shared.lock().queued())
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
                q.overflow.push_back((after, OutFrame::Data(wire::text(&f))));
            }
            true
        })
        .await
    }

    /// Closes the socket with `code` after what is queued, if there is room to ask.
    pub(crate) fn try_close(&self, code: u16, reason: &'static str) {
        let mut q = self.shared.lock();
        // A full queue means the client is not reading; the writer closes without a code
        // once the last sender is gone.
        if !q.is_closed() && q.queued() < self.shared.capacity {
            q.push(OutFrame::Close(wire::close(code, reason)));
            self.shared.pump(q);
        }
    }
}

/// Writes the replies and backlog frames queued for it, waits for a full socket to drain and
/// writes on; once every sender is gone, writes what is left and a close frame (unless one
/// went out) and shuts the socket. Returns when the socket is closed or broke.
pub(crate) async fn write_loop(receivers: OutboundReceivers) {
    let shared = &receivers.shared;
    let mut yielded = false;
    loop {
        let wake = shared.wake_writer.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let next = {
            let mut q = shared.lock();
            match &q.socket {
                None => return,
                Some(socket) if q.stalled => Next::Drain(Arc::clone(socket)),
                // The replies of one Raft entry are answered together: the request tasks woken
                // with this one queue theirs first, and they go out in one write.
                Some(_) if q.flush_wanted && !yielded => Next::Gather,
                Some(_) if q.flush_wanted => {
                    q.flush_wanted = false;
                    yielded = false;
                    shared.pump(q);
                    continue;
                }
                Some(_) if shared.senders.load(Ordering::Acquire) == 0 => {
                    q.push(OutFrame::Close(wire::close_empty()));
                    shared.pump(q);
                    continue;
                }
                Some(_) => Next::Sleep,
            }
        };
        match next {
            Next::Gather => {
                yielded = true;
                tokio::task::yield_now().await;
            }
            Next::Drain(socket) => {
                let ready = socket.writable().await;
                drop(socket);
                {
                    let mut q = shared.lock();
                    if let Err(error) = ready {
                        tracing::debug!(%error, "websocket socket failed");
                        q.close_now();
                        continue;
                    }
                    q.stalled = false;
                    shared.pump(q);
                }
                // A fast client may take budget after budget: let other tasks run between.
                tokio::task::yield_now().await;
            }
            Next::Sleep => wake.await,
        }
    }
}

/// What the writer task does next.
enum Next {
    /// Wait for the full socket to drain.
    Drain(Arc<OwnedWriteHalf>),
    /// Let the other ready tasks queue their replies before writing.
    Gather,
    /// Wait to be woken.
    Sleep,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    use super::*;

    /// A connected pair: the server's write half (the read half is kept open) and the client,
    /// with small socket buffers so that a few frames fill them.
    async fn pair() -> (OwnedWriteHalf, tokio::net::tcp::OwnedReadHalf, TcpStream) {
        let listen = tokio::net::TcpSocket::new_v4().unwrap();
        listen.set_send_buffer_size(4096).unwrap();
        listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listen.listen(1).unwrap();
        let connect = tokio::net::TcpSocket::new_v4().unwrap();
        connect.set_recv_buffer_size(4096).unwrap();
        let client = connect.connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        (write, read, client)
    }

    /// Reads one server frame: (opcode, payload).
    async fn read_frame(client: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        let len = match head[1] & 0x7f {
            126 => u64::from(client.read_u16().await.unwrap()),
            127 => client.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0; len as usize];
        client.read_exact(&mut payload).await.unwrap();
        (head[0] & 0x0f, payload)
    }

    async fn read_text(client: &mut TcpStream) -> String {
        let (op, payload) = read_frame(client).await;
        assert_eq!(op, 1, "a text frame");
        String::from_utf8(payload).unwrap()
    }

    #[tokio::test]
    async fn writes_in_queue_order_whoever_writes() {
        let (write, _read, mut client) = pair().await;
        let (out, rx) = Outbound::channel(8, write);
        let writer = tokio::spawn(write_loop(rx));
        assert!(out.reply("a".into()).await);
        assert_eq!(out.offer(&wire::text("b")), Offered::Queued);
        assert!(out.force("c"));
        out.kicker().run();
        assert!(out.push(wire::text("d")).await);
        for expected in ["a", "b", "c", "d"] {
            assert_eq!(read_text(&mut client).await, expected);
        }
        drop(out);
        assert_eq!(read_frame(&mut client).await, (8, vec![]), "a close frame at the end");
        writer.await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "then the server shuts its side");
    }

    #[tokio::test]
    async fn full_queue_refuses_events_but_lets_a_resync_through_after_what_was_ahead() {
        let (write, _read, mut client) = pair().await;
        let (out, rx) = Outbound::channel(2, write);
        let writer = tokio::spawn(write_loop(rx));
        // Not kicked: the frames stay queued, as under a feed's lock.
        assert_eq!(out.offer(&wire::text("m1")), Offered::Queued);
        assert_eq!(out.offer(&wire::text("m2")), Offered::Queued);
        assert_eq!(out.offer(&wire::text("m3")), Offered::Full);
        assert_eq!(out.room(), 0);
        assert!(out.resync("resync".into()).await, "through the overflow lane");
        assert!(out.reply("later".into()).await);
        for expected in ["m1", "m2", "resync", "later"] {
            assert_eq!(read_text(&mut client).await, expected);
        }
        writer.abort();
        assert!(writer.await.unwrap_err().is_cancelled());
        assert_eq!(out.offer(&wire::text("gone")), Offered::SessionClosed);
        assert!(!out.reply("gone".into()).await);
    }

    #[tokio::test]
    async fn a_full_socket_hands_over_to_the_writer_and_senders_wait_for_room() {
        let (write, _read, mut client) = pair().await;
        let (out, rx) = Outbound::channel(4, write);
        let writer = tokio::spawn(write_loop(rx));
        // Far more than the socket buffers take while the client does not read.
        let big = "x".repeat(1 << 20);
        for _ in 0..4 {
            assert!(out.push(wire::text(&big)).await);
        }
        let waiting = tokio::spawn({
            let out = out.clone();
            async move { out.reply("after".into()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the queue is full until the client reads");
        for _ in 0..4 {
            let (op, payload) = read_frame(&mut client).await;
            assert_eq!((op, payload.len()), (1, big.len()));
        }
        assert!(waiting.await.unwrap());
        assert_eq!(read_text(&mut client).await, "after");
        out.try_close(1001, "bye");
        let (op, payload) = read_frame(&mut client).await;
        assert_eq!((op, &payload[2..]), (8, &b"bye"[..]));
        drop(out);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn nothing_follows_a_close_from_tungstenite() {
        let (write, _read, mut client) = pair().await;
        let (out, rx) = Outbound::channel(4, write);
        let writer = tokio::spawn(write_loop(rx));
        out.control().raw(&[0x8a, 0]);
        out.control().raw(&wire::close(1000, ""));
        assert!(!out.reply("late".into()).await, "the session is closed");
        assert_eq!(read_frame(&mut client).await, (10, vec![]));
        assert_eq!(read_frame(&mut client).await, (8, vec![0x03, 0xe8]));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_ping_flood_keeps_one_pong_waiting_for_the_latest_ping() {
        let (write, _read, mut client) = pair().await;
        let (out, rx) = Outbound::channel(4, write);
        let writer = tokio::spawn(write_loop(rx));
        let big = "x".repeat(1 << 20);
        assert!(out.push(wire::text(&big)).await);
        out.kick(); // written now rather than by the writer: it fills the socket
        for payload in [b"p1", b"p2", b"p3"] {
            out.control().raw(&[0x8a, 2, payload[0], payload[1]]);
        }
        assert_eq!(out.room(), 2, "the big frame and one pong");
        let (op, payload) = read_frame(&mut client).await;
        assert_eq!((op, payload.len()), (1, big.len()));
        assert_eq!(read_frame(&mut client).await, (10, b"p3".to_vec()));
        assert!(out.reply("next".into()).await);
        assert_eq!(read_text(&mut client).await, "next");
        drop(out);
        writer.await.unwrap();
    }
}
