//! The `Owner` gRPC service: a non-leader node (or an edge) forwards stream operations here,
//! to the node that leads the stream's shard.

use std::pin::Pin;
use std::sync::Arc;

use chorus_api::{ListenEvent, StreamService};
use chorus_proto::pb;
use chorus_proto::pb::owner_server::Owner;
use chorus_types::{ApiError, MessageRecord, StreamKey};
use futures_core::Stream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::Router;
use super::call::{CallEnvelope, OwnerReply, WireCaller, execute};
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

#[tonic::async_trait]
impl Owner for OwnerService {
    async fn call(
        &self,
        request: Request<pb::OwnerRequest>,
    ) -> Result<Response<pb::OwnerResponse>, Status> {
        let env: CallEnvelope = serde_json::from_slice(&request.into_inner().call)
            .map_err(|e| Status::invalid_argument(format!("bad owner call: {e}")))?;
        let caller = env.caller.into();
        let reply: OwnerReply = if env.route {
            execute(&*self.router, &caller, env.call).await
        } else {
            execute(&self.node, &caller, env.call).await
        };
        Ok(Response::new(pb::OwnerResponse { reply: encode(&reply)? }))
    }

    type ListenStream = EventStream;

    async fn listen(
        &self,
        request: Request<pb::OwnerRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let call: ListenCall = serde_json::from_slice(&request.into_inner().call)
            .map_err(|e| Status::invalid_argument(format!("bad listen call: {e}")))?;
        let caller = call.caller.into();
        let opened = if call.route {
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
