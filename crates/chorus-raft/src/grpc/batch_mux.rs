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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::pin::Pin;

    use chorus_proto::pb::peer_server::{Peer, PeerServer};
    use tokio::net::TcpListener;
    use tonic::{Request, Response, Status};

    use super::*;

    /// Answers each batch with one reply per call naming the call's group; `streams: false`
    /// plays an older node without `Batches`. A call for group 666 is never answered on the
    /// stream, and one for group 999 ends the stream.
    struct Echo {
        streams: bool,
    }

    fn echo(batch: &pb::RaftBatch) -> pb::RaftBatchReply {
        let replies = batch
            .calls
            .iter()
            .map(|c| pb::RaftReply {
                payload: c.group.to_string().into_bytes(),
                error: String::new(),
            })
            .collect();
        pb::RaftBatchReply { replies }
    }

    type Frames =
        Pin<Box<dyn futures_util::Stream<Item = Result<pb::RaftBatchReplyFrame, Status>> + Send>>;

    #[tonic::async_trait]
    impl Peer for Echo {
        async fn batch(
            &self,
            request: Request<pb::RaftBatch>,
        ) -> Result<Response<pb::RaftBatchReply>, Status> {
            Ok(Response::new(echo(request.get_ref())))
        }

        type BatchesStream = Frames;

        async fn batches(
            &self,
            request: Request<tonic::Streaming<pb::RaftBatchFrame>>,
        ) -> Result<Response<Frames>, Status> {
            if !self.streams {
                return Err(Status::unimplemented("an older node"));
            }
            let mut incoming = request.into_inner();
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                while let Ok(Some(frame)) = incoming.message().await {
                    let Some(batch) = frame.batch else { continue };
                    match batch.calls.first().map(|c| c.group) {
                        Some(666) => {}
                        Some(999) => {
                            let _ = tx.send(Err(Status::internal("broken"))).await;
                            return;
                        }
                        _ => {
                            let reply =
                                pb::RaftBatchReplyFrame { id: frame.id, reply: Some(echo(&batch)) };
                            let _ = tx.send(Ok(reply)).await;
                        }
                    }
                }
            });
            Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
        }

        async fn install_snapshot(
            &self,
            _: Request<pb::SnapshotChunk>,
        ) -> Result<Response<pb::RaftReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn ping(
            &self,
            _: Request<pb::PingRequest>,
        ) -> Result<Response<pb::PingReply>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    async fn serve(streams: bool) -> PeerClient<Channel> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(Echo { streams }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        client(&addr.to_string())
    }

    fn client(addr: &str) -> PeerClient<Channel> {
        PeerClient::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy())
    }

    fn batch(groups: &[u32]) -> pb::RaftBatch {
        let calls = groups
            .iter()
            .map(|g| pb::RaftCall {
                group: *g,
                kind: pb::RaftKind::Append.into(),
                payload: Vec::new(),
            })
            .collect();
        pb::RaftBatch { from: 1, calls }
    }

    fn groups(reply: &pb::RaftBatchReply) -> Vec<String> {
        reply.replies.iter().map(|r| String::from_utf8(r.payload.clone()).unwrap()).collect()
    }

    #[tokio::test]
    async fn batches_share_a_stream_and_a_break_fails_those_in_flight() {
        let mux = Arc::new(BatchMux::new(serve(true).await));
        let reply = mux.call(batch(&[1, 2])).await.unwrap();
        assert_eq!(groups(&reply), ["1", "2"]);

        let hanging = {
            let mux = Arc::clone(&mux);
            tokio::spawn(async move { mux.call(batch(&[666])).await })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let open = mux.open.lock().await.clone();
            let waiting = open.map_or(0, |o| lock(&o.waiting).as_ref().map_or(0, HashMap::len));
            if waiting == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the unanswered batch was never sent");
            tokio::task::yield_now().await;
        }
        let broke = mux.call(batch(&[999])).await;
        assert_eq!(broke.unwrap_err().code(), tonic::Code::Unknown);
        let hung = hanging.await.unwrap();
        assert_eq!(hung.unwrap_err().code(), tonic::Code::Unknown, "in flight when it broke");

        // The next batch opens a new stream.
        assert_eq!(groups(&mux.call(batch(&[3])).await.unwrap()), ["3"]);
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_unary_batches() {
        let mux = BatchMux::new(serve(false).await);
        assert_eq!(groups(&mux.call(batch(&[7])).await.unwrap()), ["7"]);
        assert!(lock(&mux.unary_until).is_some(), "unary for a while, not a stream per batch");
        assert_eq!(groups(&mux.call(batch(&[8])).await.unwrap()), ["8"]);
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_unavailable() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let failed = BatchMux::new(client(&addr)).call(batch(&[1])).await;
        assert_eq!(failed.unwrap_err().code(), tonic::Code::Unavailable);
    }
}
