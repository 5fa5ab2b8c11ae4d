//! The caller's side of `Owner.Calls`: one gRPC stream per node carries every call a caller
//! forwards there (an edge's operations, or a node's for shards it does not lead), each frame
//! tagged with an id.
//!
//! A unary `Owner.Call` opens an HTTP/2 stream, encodes and decodes headers and runs the
//! server's service stack for every post; a frame on an open stream does none of that. A
//! reader task hands each reply to the call waiting for its id. When the stream breaks, every
//! call still waiting learns that its outcome is unknown (it may have run), as a unary call cut
//! off in flight would; the next call opens a new stream. A node that does not serve `Calls`
//! (an older version, during a rolling upgrade) is called with unary `Owner.Call` instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chorus_proto::pb;
use chorus_proto::pb::owner_client::OwnerClient;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::owner::{NOT_RUN_HEADER, STOPPING};
use super::router::is_connect_failure;

/// How long a node found without `Calls` is called with unary calls before trying again.
const UNSUPPORTED_RETRY: Duration = Duration::from_secs(60);
/// Longest wait for a node to accept the stream. A node that accepts connections but does not
/// answer (stopped, overloaded) must not hold forwarded calls for a keepalive timeout.
const OPEN_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed open, calls to that node fail at once (not run) for this long instead of
/// each waiting for an open of its own.
const FAILED_BACKOFF: Duration = Duration::from_millis(250);
/// Frames waiting to be written to one node's stream; beyond it a call is refused (not run)
/// rather than queued without bound behind a node that stopped reading.
const REQUEST_QUEUE: usize = 4096;

/// Calls waiting for their reply, by id; `None` once the stream broke.
type Waiting = Mutex<Option<HashMap<u64, oneshot::Sender<pb::CallFrame>>>>;

fn lock(waiting: &Waiting) -> MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<pb::CallFrame>>>> {
    // Every update is one insert, remove or take: a panicked holder leaves it consistent.
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a forwarded call has no reply.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// Surely not run: the node could not be reached, or the stream was gone before sending.
    #[error("not sent: {0}")]
    NotRun(String),
    /// Sent, and then the connection broke or the deadline passed: it may have run.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

struct CallMux {
    requests: mpsc::Sender<pb::CallFrame>,
    waiting: Arc<Waiting>,
    next_id: AtomicU64,
}

impl CallMux {
    async fn open(client: &OwnerClient<Channel>) -> Result<Arc<CallMux>, tonic::Status> {
        let (requests, rx) = mpsc::channel(REQUEST_QUEUE);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut replies = client.clone().calls(outbound).await?.into_inner();
        let waiting: Arc<Waiting> = Arc::new(Mutex::new(Some(HashMap::new())));
        let w = Arc::clone(&waiting);
        tokio::spawn(async move {
            while let Ok(Some(frame)) = replies.message().await {
                let waiter = lock(&w).as_mut().and_then(|m| m.remove(&frame.id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(frame);
                }
            }
            // Dropping the waiters tells every call still waiting that its outcome is unknown;
            // none is added after.
            lock(&w).take();
        });
        Ok(Arc::new(CallMux { requests, waiting, next_id: AtomicU64::new(1) }))
    }

    fn is_broken(&self) -> bool {
        lock(&self.waiting).is_none() || self.requests.is_closed()
    }

    async fn call(&self, body: Vec<u8>, deadline: Option<Instant>) -> Result<Vec<u8>, SendError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // The node skips a call whose caller has given up by the time it would start.
        let deadline_ms = deadline.map_or(0, |d| {
            let left = d.saturating_duration_since(Instant::now()).as_millis();
            u64::try_from(left).unwrap_or(u64::MAX).max(1)
        });
        let (tx, rx) = oneshot::channel();
        match lock(&self.waiting).as_mut() {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err(SendError::NotRun("the call stream to the node broke".into())),
        };
        // A call given up on (deadline, caller gone) leaves no waiter behind.
        let _forget = Forget { waiting: &self.waiting, id };
        if let Err(e) =
            self.requests.try_send(pb::CallFrame { id, body, deadline_ms, refused: false })
        {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "too many calls waiting for the node",
                mpsc::error::TrySendError::Closed(_) => "the call stream to the node broke",
            };
            return Err(SendError::NotRun(why.into()));
        }
        match rx.await {
            Ok(frame) if frame.refused => Err(SendError::NotRun(STOPPING.into())),
            Ok(frame) => Ok(frame.body),
            Err(_) => Err(SendError::Unknown("the connection to the node broke".into())),
        }
    }
}

struct Forget<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = lock(self.waiting).as_mut() {
            waiting.remove(&self.id);
        }
    }
}

enum Slot {
    Open(Arc<CallMux>),
    /// The node answered `Calls` with "unimplemented" at this time.
    Unsupported(Instant),
    /// Opening failed at this time.
    Failed(Instant, String),
}

/// How a caller reaches one node's `Owner` service: the call stream, kept open between calls.
#[derive(Default)]
pub(super) struct CallStream(tokio::sync::Mutex<Option<Slot>>);

enum Path {
    Stream(Arc<CallMux>),
    Unary,
}

impl CallStream {
    /// How to reach the node now. Every failure here is before anything was sent: not run.
    async fn path(
        &self,
        client: &OwnerClient<Channel>,
        deadline: Option<Instant>,
    ) -> Result<Path, SendError> {
        let open_by = Instant::now() + OPEN_TIMEOUT;
        let open_by = deadline.map_or(open_by, |d| d.min(open_by));
        let not_run = |why: &str| SendError::NotRun(why.to_owned());
        let mut slot = tokio::time::timeout_at(open_by, self.0.lock())
            .await
            .map_err(|_| not_run("the node's call stream is still opening"))?;
        match &*slot {
            Some(Slot::Open(mux)) if !mux.is_broken() => return Ok(Path::Stream(Arc::clone(mux))),
            Some(Slot::Unsupported(at)) if at.elapsed() < UNSUPPORTED_RETRY => {
                return Ok(Path::Unary);
            }
            Some(Slot::Failed(at, why)) if at.elapsed() < FAILED_BACKOFF => {
                return Err(not_run(why));
            }
            _ => {}
        }
        match tokio::time::timeout_at(open_by, CallMux::open(client)).await {
            Ok(Ok(mux)) => {
                *slot = Some(Slot::Open(Arc::clone(&mux)));
                Ok(Path::Stream(mux))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                *slot = Some(Slot::Unsupported(Instant::now()));
                Ok(Path::Unary)
            }
            Ok(Err(status)) => {
                let why = format!("the node could not be reached: {}", status.message());
                *slot = Some(Slot::Failed(Instant::now(), why.clone()));
                Err(SendError::NotRun(why))
            }
            Err(_) => {
                let why = "the node did not accept a call stream in time".to_owned();
                *slot = Some(Slot::Failed(Instant::now(), why.clone()));
                Err(SendError::NotRun(why))
            }
        }
    }

    /// Sends `body` (a JSON `CallEnvelope`) to the node and returns the reply's body, giving
    /// up at `deadline` when one is set. `bulk` calls (reads whose replies may be megabytes)
    /// go as unary calls, so they never hold up the small replies sharing the stream.
    pub(super) async fn send(
        &self,
        client: &OwnerClient<Channel>,
        body: Vec<u8>,
        deadline: Option<Instant>,
        bulk: bool,
    ) -> Result<Vec<u8>, SendError> {
        let path = if bulk { Path::Unary } else { self.path(client, deadline).await? };
        let attempt = async {
            match path {
                Path::Stream(mux) => mux.call(body, deadline).await,
                Path::Unary => unary(client, body, deadline).await,
            }
        };
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, attempt)
                .await
                .unwrap_or_else(|_| Err(SendError::Unknown("no reply before the deadline".into()))),
            None => attempt.await,
        }
    }
}

async fn unary(
    client: &OwnerClient<Channel>,
    body: Vec<u8>,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, SendError> {
    let mut request = tonic::Request::new(pb::OwnerRequest { call: body });
    if let Some(deadline) = deadline {
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    }
    match client.clone().call(request).await {
        Ok(response) => Ok(response.into_inner().reply),
        Err(status) => Err(classify(&status)),
    }
}

fn classify(status: &tonic::Status) -> SendError {
    if is_connect_failure(status) || status.metadata().get(NOT_RUN_HEADER).is_some() {
        SendError::NotRun(status.to_string())
    } else {
        SendError::Unknown(status.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use chorus_proto::pb::owner_server::{Owner, OwnerServer};
    use futures_core::Stream;
    use tokio::net::TcpListener;
    use tonic::{Request, Response, Status};

    use super::*;

    type Frames = Pin<Box<dyn Stream<Item = Result<pb::CallFrame, Status>> + Send>>;
    type Events<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    /// An `Owner` that echoes call bodies. On `Calls`, `hang` is never answered and `break`
    /// ends the stream with an error; `refuse` is refused as a stopping node refuses (on
    /// `Calls` and unary); with `streams: false` it does not serve `Calls`.
    struct Echo {
        streams: bool,
    }

    #[tonic::async_trait]
    impl Owner for Echo {
        async fn call(
            &self,
            request: Request<pb::OwnerRequest>,
        ) -> Result<Response<pb::OwnerResponse>, Status> {
            let call = request.into_inner().call;
            if call == b"refuse" {
                let mut status = Status::unavailable("stopping");
                status.metadata_mut().insert(NOT_RUN_HEADER, "1".parse().unwrap());
                return Err(status);
            }
            Ok(Response::new(pb::OwnerResponse { reply: call }))
        }

        type ListenStream = Events<pb::OwnerEvent>;

        async fn listen(
            &self,
            _: Request<pb::OwnerRequest>,
        ) -> Result<Response<Self::ListenStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        type SubscribeStream = Events<pb::SubscribeEvent>;

        async fn subscribe(
            &self,
            _: Request<tonic::Streaming<pb::SubscribeRequest>>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        type CallsStream = Frames;

        async fn calls(
            &self,
            request: Request<tonic::Streaming<pb::CallFrame>>,
        ) -> Result<Response<Frames>, Status> {
            if !self.streams {
                return Err(Status::unimplemented("an older node"));
            }
            let mut incoming = request.into_inner();
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                while let Ok(Some(frame)) = incoming.message().await {
                    match frame.body.as_slice() {
                        b"hang" => {}
                        b"break" => {
                            let _ = tx.send(Err(Status::internal("broken"))).await;
                            return;
                        }
                        b"refuse" => {
                            let reply = pb::CallFrame { id: frame.id, refused: true, ..frame };
                            let _ = tx.send(Ok(reply)).await;
                        }
                        _ => {
                            let reply = pb::CallFrame { id: frame.id, ..frame };
                            let _ = tx.send(Ok(reply)).await;
                        }
                    }
                }
            });
            Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
        }
    }

    async fn serve(streams: bool) -> OwnerClient<Channel> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(OwnerServer::new(Echo { streams }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        client(&addr.to_string())
    }

    fn client(addr: &str) -> OwnerClient<Channel> {
        OwnerClient::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy())
    }

    /// Calls waiting for a reply on the stream `stream` has open.
    async fn waiting_calls(stream: &CallStream) -> usize {
        match &*stream.0.lock().await {
            Some(Slot::Open(mux)) => lock(&mux.waiting).as_ref().map_or(0, HashMap::len),
            _ => 0,
        }
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(10))
    }

    #[tokio::test]
    async fn calls_share_a_stream_and_a_break_makes_calls_in_flight_unknown() {
        let client = serve(true).await;
        let stream = CallStream::default();
        let echoed = stream.send(&client, b"one".to_vec(), soon(), false).await.unwrap();
        assert_eq!(echoed, b"one");

        let stream = Arc::new(stream);
        let task = {
            let (client, s) = (client.clone(), Arc::clone(&stream));
            tokio::spawn(async move { s.send(&client, b"hang".to_vec(), None, false).await })
        };
        // `hang` must be on the stream before `break` ends it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while waiting_calls(&stream).await < 1 {
            assert!(Instant::now() < deadline, "the hanging call was never sent");
            tokio::task::yield_now().await;
        }
        // Sent after `hang` on the same stream: the node ends the stream, unanswered.
        let broke = stream.send(&client, b"break".to_vec(), soon(), false).await;
        assert!(matches!(broke, Err(SendError::Unknown(_))), "{broke:?}");
        let hung = task.await.unwrap();
        assert!(matches!(hung, Err(SendError::Unknown(_))), "in flight when it broke: {hung:?}");

        // The next call opens a new stream.
        let again = stream.send(&client, b"two".to_vec(), soon(), false).await.unwrap();
        assert_eq!(again, b"two");
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_reached_did_not_run_the_call() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let stream = CallStream::default();
        let failed = stream.send(&client(&addr), b"x".to_vec(), soon(), false).await;
        assert!(matches!(failed, Err(SendError::NotRun(_))), "{failed:?}");
        // Within the backoff the next call fails at once, also as not run.
        let again = stream.send(&client(&addr), b"x".to_vec(), soon(), false).await;
        assert!(matches!(again, Err(SendError::NotRun(_))), "{again:?}");
    }

    #[tokio::test]
    async fn a_node_without_the_stream_and_bulk_reads_use_unary_calls() {
        let old = serve(false).await;
        let stream = CallStream::default();
        assert_eq!(stream.send(&old, b"a".to_vec(), soon(), false).await.unwrap(), b"a");
        let new = serve(true).await;
        // `hang` would never be answered on the stream; a bulk call goes unary and is.
        let bulk = CallStream::default().send(&new, b"hang".to_vec(), soon(), true).await;
        assert_eq!(bulk.unwrap(), b"hang");
    }

    #[tokio::test]
    async fn a_refused_call_did_not_run_on_the_stream_or_unary() {
        let client = serve(true).await;
        let stream = CallStream::default();
        let refused = stream.send(&client, b"refuse".to_vec(), soon(), false).await;
        assert!(matches!(refused, Err(SendError::NotRun(_))), "{refused:?}");
        // The stream is still good for the next call.
        assert_eq!(stream.send(&client, b"b".to_vec(), soon(), false).await.unwrap(), b"b");
        let unary = CallStream::default().send(&client, b"refuse".to_vec(), soon(), true).await;
        assert!(matches!(unary, Err(SendError::NotRun(_))), "{unary:?}");
    }
}
