//! The `Owner` gRPC service: a non-leader node (or an edge) forwards stream operations here,
//! to the node that leads the stream's shard.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chorus_api::{ListenEvent, StreamService};
use chorus_proto::pb;
use chorus_proto::pb::owner_server::Owner;
use chorus_types::{ApiError, ErrorCode, MessageRecord, StreamKey};
use futures_core::Stream;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::Router;
use super::call::{CallEnvelope, OwnerCall, OwnerReply, WireCaller, execute};
use crate::node::Node;

/// The body of `Owner.Listen`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenCall {
    pub caller: WireCaller,
    pub key: StreamKey,
    pub since: Option<u64>,
    /// Set by edges: open the listen on the stream's leader, wherever it is, and carry it
    /// across leader changes (the relay). Unset between nodes: open it here or fail.
    #[serde(default)]
    pub route: bool,
}

/// One item of an `Owner.Listen` stream: first `Started` (or `Failed`), then events.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenItem {
    Started {
        recovered: bool,
        message_count: u64,
    },
    Failed {
        error: ApiError,
    },
    Message {
        message: MessageRecord,
    },
    Ephemeral {
        origin: Option<u64>,
        frame: String,
    },
    Resync {
        from: u64,
    },
    /// The stream's access changed here; listens must be checked again
    /// (`ListenEvent::AccessChanged`).
    AccessChanged,
    /// The listen ended without a resync (its node is stopping): listen again from the last
    /// ordinal held. Only on `Owner.Subscribe`, where a subscription's end is not a stream's.
    Ended,
}

impl ListenItem {
    pub(super) fn from_event(ev: ListenEvent) -> ListenItem {
        match ev {
            ListenEvent::Message(d) => ListenItem::Message { message: d.record.clone() },
            ListenEvent::Ephemeral(r) => {
                ListenItem::Ephemeral { origin: r.origin, frame: r.frame.to_string() }
            }
            ListenEvent::Resync { from } => ListenItem::Resync { from },
            ListenEvent::AccessChanged => ListenItem::AccessChanged,
        }
    }
}

pub struct OwnerService {
    node: Node,
    /// Routes what edges send (`route: true`) to the stream's leader.
    router: Arc<Router>,
}

impl OwnerService {
    pub fn new(node: Node, router: Arc<Router>) -> Self {
        OwnerService { node, router }
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(format!("encoding: {e}")))
}

fn item(i: &ListenItem) -> Result<pb::OwnerEvent, Status> {
    Ok(pb::OwnerEvent { event: encode(i)? })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::OwnerEvent, Status>> + Send>>;

/// Runs one call: here (`route: false`, this node leads the shard) or routed to the leader.
async fn run(node: &Node, router: &Router, env: CallEnvelope) -> OwnerReply {
    let caller: chorus_api::Caller = env.caller.into();
    if let OwnerCall::AccessNotice { keys } = &env.call {
        if caller.principal != chorus_api::Principal::App {
            let e = crate::error::err(ErrorCode::Forbidden, "access notices come from nodes");
            return OwnerReply::from(e);
        }
        node.inner.hub.remote_access_notice(keys);
        return OwnerReply::Done;
    }
    if env.route {
        execute(router, &caller, env.call).await
    } else {
        execute(node, &caller, env.call).await
    }
}

/// The reply frame's body for a call on `Owner.Calls`: the call's reply, or an error reply
/// when the frame is unreadable (the stream and the other calls on it go on).
async fn run_frame(node: &Node, router: &Router, body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<CallEnvelope>(body) {
        Ok(env) => reply_body(&run(node, router, env).await),
        Err(e) => failure_reply(ErrorCode::InvalidArgument, &format!("bad owner call: {e}")),
    }
}

/// Why a stopping node runs no more calls.
pub(super) const STOPPING: &str = "the node is stopping";

/// Metadata a unary `Owner.Call` refusal carries: the call was not run (see
/// [`Node::begin_stopping`](crate::Node::begin_stopping)).
pub(super) const NOT_RUN_HEADER: &str = "chorus-not-run";

fn refused_status() -> Status {
    let mut status = Status::unavailable(STOPPING);
    status.metadata_mut().insert(NOT_RUN_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    status
}

/// Callers read `refused`; the body is for callers from before it existed (a rolling
/// upgrade), which then see a retryable `unavailable` instead of an undecodable reply.
fn refused_frame(id: u64) -> pb::CallFrame {
    let body = failure_reply(ErrorCode::Unavailable, "the node is stopping; not run");
    pb::CallFrame { id, body, refused: true, ..pb::CallFrame::default() }
}

fn failure_reply(code: ErrorCode, message: &str) -> Vec<u8> {
    reply_body(&OwnerReply::from(crate::error::err(code, message)))
}

fn reply_body(reply: &OwnerReply) -> Vec<u8> {
    // An encoding failure leaves an empty body, which the caller reads as an internal error.
    serde_json::to_vec(reply).unwrap_or_default()
}

/// Calls of one `Owner.Calls` stream running at once; more wait, and the stream is not read
/// meanwhile, which holds the caller back through HTTP/2 flow control.
const STREAM_CALLS: usize = 1024;
/// Replies waiting to be written to one `Owner.Calls` stream.
const STREAM_REPLIES: usize = 1024;

type CallStream = Pin<Box<dyn Stream<Item = Result<pb::CallFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Owner for OwnerService {
    async fn call(
        &self,
        request: Request<pb::OwnerRequest>,
    ) -> Result<Response<pb::OwnerResponse>, Status> {
        let Some(_running) = self.node.admit_peer_call() else {
            return Err(refused_status());
        };
        let env: CallEnvelope = serde_json::from_slice(&request.into_inner().call)
            .map_err(|e| Status::invalid_argument(format!("bad owner call: {e}")))?;
        let reply = run(&self.node, &self.router, env).await;
        Ok(Response::new(pb::OwnerResponse { reply: encode(&reply)? }))
    }

    type CallsStream = CallStream;

    /// Each frame runs in its own task, so a slow call (a post waiting for its commit) holds
    /// up no other. Unlike a unary call, a call whose caller goes away runs to its end.
    async fn calls(
        &self,
        request: Request<tonic::Streaming<pb::CallFrame>>,
    ) -> Result<Response<CallStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_REPLIES);
        let (node, router) = (self.node.clone(), Arc::clone(&self.router));
        tokio::spawn(async move {
            let running = Arc::new(tokio::sync::Semaphore::new(STREAM_CALLS));
            while let Ok(Some(frame)) = incoming.message().await {
                let received = tokio::time::Instant::now();
                let Ok(permit) = Arc::clone(&running).acquire_owned().await else { break };
                let (node, router, tx) = (node.clone(), Arc::clone(&router), tx.clone());
                tokio::spawn(async move {
                    let Some(_running) = node.admit_peer_call() else {
                        let _ = tx.send(Ok(refused_frame(frame.id))).await;
                        drop(permit);
                        return;
                    };
                    let expired = frame.deadline_ms > 0
                        && received.elapsed() >= Duration::from_millis(frame.deadline_ms);
                    let body = if expired {
                        // The caller gave up before the call could start: run nothing, so a
                        // retry it made meanwhile is not followed by this stale attempt.
                        failure_reply(
                            ErrorCode::Timeout,
                            "the call waited past its deadline; not run",
                        )
                    } else {
                        // A panic must still answer, or the caller would wait on a live stream.
                        AssertUnwindSafe(run_frame(&node, &router, &frame.body))
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|_| {
                                failure_reply(
                                    ErrorCode::Internal,
                                    "the call failed on the node; its outcome is unknown",
                                )
                            })
                    };
                    let reply = pb::CallFrame { id: frame.id, body, ..pb::CallFrame::default() };
                    let _ = tx.send(Ok(reply)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type ListenStream = EventStream;

    async fn listen(
        &self,
        request: Request<pb::OwnerRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let call: ListenCall = serde_json::from_slice(&request.into_inner().call)
            .map_err(|e| Status::invalid_argument(format!("bad listen call: {e}")))?;
        let caller = call.caller.into();
        let opened = if self.node.is_stopping() {
            Err(crate::error::err(ErrorCode::Unavailable, STOPPING))
        } else if call.route {
            self.router.listen(&caller, &call.key, call.since).await
        } else {
            self.node.listen(&caller, &call.key, call.since).await
        };
        let stream: EventStream = match opened {
            Err(e) => {
                let first = item(&ListenItem::Failed { error: e.error });
                Box::pin(futures_util::stream::iter([first]))
            }
            Ok(listening) => {
                let first = item(&ListenItem::Started {
                    recovered: listening.recovered,
                    message_count: listening.message_count,
                });
                let events = listening.events.map(|ev| item(&ListenItem::from_event(ev)));
                Box::pin(futures_util::stream::iter([first]).chain(events))
            }
        };
        Ok(Response::new(stream))
    }

    type SubscribeStream = super::subscribe::SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let stream = super::subscribe::serve(
            self.node.clone(),
            Arc::clone(&self.router),
            request.into_inner(),
        );
        Ok(Response::new(stream))
    }
}
