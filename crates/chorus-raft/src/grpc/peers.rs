//! One HTTP/2 connection per peer node, shared by every group, with Raft calls coalesced.
//!
//! Each peer has two batcher tasks, one for appends carrying entries and one for the rest (see
//! [`PeerConn`]). Calls queued while earlier batches are in flight leave
//! together in one batch (a frame on the lane's `Peer.Batches` stream), so the heartbeats of 64 idle shards cost one round trip,
//! and a busy shard's appends share the round trip of whatever else is going to that peer.
//! Replies come back in call order.
//!
//! A batch that holds only heartbeats (appends without entries that carry no new commit index)
//! or commit notices already answered to openraft ([`PeerConn::notify`]) lingers up to
//! [`LINGER`] for company; anything carrying entries, a commit index someone waits for, or a
//! vote leaves at once. Idle groups' heartbeats thus
//! share round trips without delaying a single write. openraft's read barrier
//! (`ensure_linearizable`) is itself a round of heartbeats, so a group whose reader waits is
//! marked hot ([`PeerPool::mark_hot`]) and its heartbeats leave at once too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_proto::pb;
use chorus_proto::pb::peer_client::PeerClient;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use super::batch_mux::BatchMux;
use super::liveness::Liveness;

/// Most calls in one batch.
const MAX_BATCH: usize = 256;
/// Batches in flight to one peer at a time, per lane (appends; everything else); more calls
/// wait and coalesce. Every batch costs
/// an HTTP/2 round trip on both nodes whatever it carries, so fewer, fuller batches leave more
/// CPU to the posts: `replicated` W1 at 256 in flight gave ~1,750–2,000/s with 8, ~1,960–2,240/s
/// with 2 (p99 lower too) and ~1,890/s with 1, where an append waiting for the peer's fsync
/// holds up every other group's calls.
const IN_FLIGHT: usize = 2;
/// How long a heartbeat-only batch waits for more calls. openraft replicates to a peer one call
/// at a time, so a lingering heartbeat holds up that group's next entries to the peer: 5 ms
/// keeps that under a typical fsync while idle groups still share round trips (measured with
/// `benches` `replicated`: 25 ms cut idle CPU from ~14 % to ~9 % per node but put p99 at 1 in
/// flight at 29 ms; 5 ms gives ~12 % and 10 ms).
const LINGER: Duration = Duration::from_millis(5);
/// How long a group stays hot after a read barrier asked for it.
const HOT: Duration = Duration::from_millis(200);
/// Largest gRPC message either way (Raft appends of big batches, snapshot chunks).
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Nothing was sent: the connection could not be made.
    #[error("peer {addr} unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// The call failed in transit or on the peer; it may or may not have been handled.
    #[error("call to peer {addr} failed: {message}")]
    Failed { addr: String, message: String },
    #[error("bad peer address {addr}: {message}")]
    Address { addr: String, message: String },
}

impl PeerError {
    pub fn from_status(addr: &str, status: &tonic::Status) -> PeerError {
        let message = status.message().to_owned();
        let addr = addr.to_owned();
        // tonic reports a failed connect as `unavailable` with the transport error as source.
        if status.code() == tonic::Code::Unavailable {
            PeerError::Unreachable { addr, message }
        } else {
            PeerError::Failed { addr, message }
        }
    }
}

type Reply = Result<pb::RaftReply, PeerError>;

struct Queued {
    call: pb::RaftCall,
    /// False for heartbeats, which may wait [`LINGER`] to travel with others.
    urgent: bool,
    reply: oneshot::Sender<Reply>,
}

/// A connection to one peer: the batching queues plus a client for direct calls (snapshots).
///
/// Two batchers share the connection: one for appends carrying entries, one for everything
/// else (votes, heartbeats, commit notices). An append waits for the peer's fsync, and with
/// [`IN_FLIGHT`] batches of those in flight a vote or a heartbeat must not wait behind them:
/// on a slow disk that would let followers' election timers fire.
#[derive(Clone)]
pub struct PeerConn {
    addr: String,
    entries: mpsc::UnboundedSender<Queued>,
    control: mpsc::UnboundedSender<Queued>,
    client: PeerClient<Channel>,
}

impl PeerConn {
    /// Sends one Raft call through a batcher; `urgent` is false only for heartbeats, and
    /// `carries_entries` picks the appends' batcher.
    pub async fn call(&self, call: pb::RaftCall, urgent: bool, carries_entries: bool) -> Reply {
        let (reply, rx) = oneshot::channel();
        let tx = if carries_entries { &self.entries } else { &self.control };
        if tx.send(Queued { call, urgent, reply }).is_err() {
            return Err(PeerError::Unreachable {
                addr: self.addr.clone(),
                message: "peer connection closed".into(),
            });
        }
        rx.await.unwrap_or_else(|_| {
            Err(PeerError::Failed { addr: self.addr.clone(), message: "batch dropped".into() })
        })
    }

    /// Queues a call whose reply nobody awaits: it leaves with the next batch of the control
    /// lane, or after [`LINGER`]. Not the appends' lane: there it could wait behind appends
    /// held up by the peer's disk, and a follower must learn commits even then. False when
    /// the connection is closed.
    pub fn notify(&self, call: pb::RaftCall) -> bool {
        let (reply, _) = oneshot::channel();
        self.control.send(Queued { call, urgent: false, reply }).is_ok()
    }

    /// A direct unary client on the same connection.
    pub fn client(&self) -> PeerClient<Channel> {
        self.client.clone()
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// The connections of this node to its peers, by address.
pub struct PeerPool {
    me: u64,
    /// How this node reaches each peer (its own `--peers`). Preferred over the address in Raft
    /// membership, which is the same for every node: a node may reach a peer by another
    /// route (a proxy, another interface), and an address can change without a membership
    /// change.
    book: HashMap<u64, String>,
    conns: Mutex<HashMap<String, PeerConn>>,
    /// Per group: until when (ms since `epoch`) its heartbeats are urgent.
    hot: Vec<AtomicU64>,
    epoch: Instant,
    liveness: Arc<Liveness>,
}

impl PeerPool {
    /// A pool for groups `0..groups`.
    pub fn new(me: u64, book: HashMap<u64, String>, groups: u16) -> Arc<PeerPool> {
        let hot = (0..groups).map(|_| AtomicU64::new(0)).collect();
        Arc::new(PeerPool {
            me,
            book,
            conns: Mutex::default(),
            hot,
            epoch: Instant::now(),
            liveness: Arc::default(),
        })
    }

    /// Which peers are up (pinged by [`super::hibernate`], fed by incoming batches).
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A reader waits on `group`'s read barrier: send its heartbeats without lingering for a
    /// while.
    pub fn mark_hot(&self, group: u16) {
        if let Some(h) = self.hot.get(usize::from(group)) {
            let until = self.now_ms().saturating_add(u64::try_from(HOT.as_millis()).unwrap_or(0));
            h.fetch_max(until, Ordering::Relaxed);
        }
    }

    pub fn is_hot(&self, group: u16) -> bool {
        self.hot.get(usize::from(group)).is_some_and(|h| h.load(Ordering::Relaxed) > self.now_ms())
    }

    /// The address to reach node `id` at: this node's own book, else `fallback`.
    pub fn address_of<'a>(&'a self, id: u64, fallback: &'a str) -> &'a str {
        self.book.get(&id).map_or(fallback, String::as_str)
    }

    /// The connection to `addr` (`host:port`), made lazily on first use.
    pub fn get(&self, addr: &str) -> Result<PeerConn, PeerError> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conns.get(addr) {
            return Ok(c.clone());
        }
        let channel = endpoint(addr)?.connect_lazy();
        let client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let (entries, rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(self.me, addr.to_owned(), client.clone(), rx, true));
        let (control, rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(self.me, addr.to_owned(), client.clone(), rx, false));
        let conn = PeerConn { addr: addr.to_owned(), entries, control, client };
        conns.insert(addr.to_owned(), conn.clone());
        Ok(conn)
    }
}

/// An endpoint with the settings every inter-node connection uses.
pub fn endpoint(addr: &str) -> Result<Endpoint, PeerError> {
    let e = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| PeerError::Address { addr: addr.to_owned(), message: e.to_string() })?;
    Ok(e.connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

async fn batcher(
    me: u64,
    addr: String,
    client: PeerClient<Channel>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    entries_lane: bool,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mux = Arc::new(BatchMux::new(client));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut urgent = batch[0].urgent;
        let linger = tokio::time::Instant::now() + LINGER;
        let mut open = true;
        while open && !urgent && batch.len() < MAX_BATCH {
            tokio::select! {
                q = rx.recv() => match q {
                    Some(q) => {
                        urgent |= q.urgent;
                        batch.push(q);
                    }
                    None => open = false,
                },
                () = tokio::time::sleep_until(linger) => break,
            }
        }
        // Wait for a slot: calls that arrive meanwhile join this batch.
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let mux = Arc::clone(&mux);
        let addr = addr.clone();
        tokio::spawn(async move {
            let (calls, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|q| (q.call, q.reply)).unzip();
            crate::metrics::count_batch();
            let sent = Instant::now();
            let result = mux.call(pb::RaftBatch { from: me, calls }).await;
            drop(permit);
            crate::metrics::observe_batch(entries_lane, sent.elapsed().as_secs_f64());
            match result {
                Ok(resp) => {
                    let mut got = resp.replies.into_iter();
                    for reply in replies {
                        let r = got.next().ok_or_else(|| PeerError::Failed {
                            addr: addr.clone(),
                            message: "short batch reply".into(),
                        });
                        let _ = reply.send(r);
                    }
                }
                Err(status) => {
                    for reply in replies {
                        let _ = reply.send(Err(PeerError::from_status(&addr, &status)));
                    }
                }
            }
        });
    }
}
