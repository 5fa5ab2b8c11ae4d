//! The sender's side of `Peer.Batches`: one long-lived gRPC stream per lane and peer carries
//! the batches a [`super::peers`] batcher sends, each frame tagged with an id.
//!
//! A unary `Peer.Batch` opens an HTTP/2 stream, encodes and decodes headers and runs the
//! receiver's service stack for every batch, on both nodes; a frame on an open stream does
//! none of that, and at a few hundred batches per second per peer pair that was a visible
//! share of a node's CPU. A reader task hands each reply to the batch waiting for its id.
//! When the stream breaks, every batch still waiting fails (as a unary call cut off in flight
//! would; openraft retries), and the next batch opens a new stream. A peer that does not serve
//! `Batches` (an older version, during a rolling upgrade) gets unary calls for a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chorus_proto::pb;
use chorus_proto::pb::peer_client::PeerClient;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

/// How long a peer found without `Batches` gets unary calls before the stream is tried again.
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(60);
/// Longest wait for a peer to accept the stream: one that accepts connections but does not
/// answer must not hold Raft's calls for a keepalive timeout.
const OPEN_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames waiting to be written; the batcher keeps at most a few batches in flight, so this
/// is only reached when the connection stopped moving.
const QUEUE: usize = 64;

/// Batches waiting for their reply, by id; `None` once the stream broke.
type Waiting = Mutex<Option<HashMap<u64, oneshot::Sender<pb::RaftBatchReply>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is one insert, remove, take or store: a panicked holder leaves it whole.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Open {
    frames: mpsc::Sender<pb::RaftBatchFrame>,
    waiting: Arc<Waiting>,
    broken: Arc<AtomicBool>,
    next_id: AtomicU64,
}

impl Open {
    async fn start(client: &PeerClient<Channel>) -> Result<Arc<Open>, tonic::Status> {
        let (frames, rx) = mpsc::channel(QUEUE);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut client = client.clone();
        let opening = client.batches(outbound);
        let mut replies = match tokio::time::timeout(OPEN_TIMEOUT, opening).await {
            Ok(opened) => opened?.into_inner(),
            Err(_) => return Err(tonic::Status::unavailable("peer did not accept the stream")),
        };
        let waiting: Arc<Waiting> = Arc::new(Mutex::new(Some(HashMap::new())));
        let broken = Arc::new(AtomicBool::new(false));
        let (w, b) = (Arc::clone(&waiting), Arc::clone(&broken));
        tokio::spawn(async move {
            while let Ok(Some(frame)) = replies.message().await {
                let waiter = lock(&w).as_mut().and_then(|m| m.remove(&frame.id));
                if let (Some(waiter), Some(reply)) = (waiter, frame.reply) {
                    let _ = waiter.send(reply);
                }
            }
            b.store(true, Ordering::Release);
            // Dropping the waiters fails every batch still waiting; none is added after.
            lock(&w).take();
        });
        Ok(Arc::new(Open { frames, waiting, broken, next_id: AtomicU64::new(1) }))
    }
}

/// One lane's stream to one peer, opened on first use and again after it breaks.
pub(super) struct BatchMux {
    client: PeerClient<Channel>,
    open: tokio::sync::Mutex<Option<Arc<Open>>>,
    unary_until: Mutex<Option<Instant>>,
}

impl BatchMux {
    pub(super) fn new(client: PeerClient<Channel>) -> BatchMux {
        BatchMux { client, open: tokio::sync::Mutex::new(None), unary_until: Mutex::new(None) }
    }

    /// Sends `batch` and waits for its reply. Errors as a unary call would give them: a
    /// stream that cannot be opened is `unavailable` (nothing was sent), one that breaks
    /// while the batch waits is `unknown`.
    pub(super) async fn call(
        &self,
        batch: pb::RaftBatch,
    ) -> Result<pb::RaftBatchReply, tonic::Status> {
        if lock(&self.unary_until).is_some_and(|until| Instant::now() < until) {
            return Ok(self.client.clone().batch(batch).await?.into_inner());
        }
        let open = match self.stream().await {
            Ok(open) => open,
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!("peer does not serve Peer.Batches; sending unary batches");
                *lock(&self.unary_until) = Some(Instant::now() + UNSUPPORTED_RETRY);
                return Ok(self.client.clone().batch(batch).await?.into_inner());
            }
            Err(status) => return Err(status),
        };
        let id = open.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&open.waiting).as_mut() {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err(tonic::Status::unavailable("batch stream closed before sending")),
        };
        if open.frames.send(pb::RaftBatchFrame { id, batch: Some(batch) }).await.is_err() {
            if let Some(waiting) = lock(&open.waiting).as_mut() {
                waiting.remove(&id);
            }
            open.broken.store(true, Ordering::Release);
            return Err(tonic::Status::unavailable("batch stream closed before sending"));
        }
        rx.await.map_err(|_| tonic::Status::unknown("batch stream broke; the batch may have run"))
    }

    /// The open stream, opened now when there is none or it broke.
    async fn stream(&self) -> Result<Arc<Open>, tonic::Status> {
        let mut slot = self.open.lock().await;
        if let Some(open) = slot.as_ref()
            && !open.broken.load(Ordering::Acquire)
        {
            return Ok(Arc::clone(open));
        }
        *slot = None;
        let open = Open::start(&self.client).await?;
        *slot = Some(Arc::clone(&open));
        Ok(open)
    }
}
