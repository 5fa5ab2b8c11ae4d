//! `Owner.Subscribe` on the node: an edge's subscriptions to many streams over one gRPC
//! stream. Each subscription is a listen (routed to the stream's leader when the edge asks,
//! carried across leader changes by the relay) whose items are tagged with its id and merged
//! into the one response stream, in order per subscription.
//!
//! The merge queue is bounded: an edge that reads slowly holds up its own subscriptions on
//! this node, whose listens then fall behind and catch up from storage (no message is lost or
//! reordered, see `listen.rs`); nobody else waits. When the edge closes its side, or the
//! connection breaks, every subscription ends.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use chorus_api::StreamService;
use chorus_proto::pb;
use chorus_types::ErrorCode;
use futures_core::Stream;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tonic::{Status, Streaming};

use super::Router;
use super::owner::{ListenCall, ListenItem, STOPPING};
use crate::node::Node;

/// Events waiting for the edge to read them, over all its subscriptions on this node.
const MERGE_QUEUE: usize = 4096;

pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeEvent, Status>> + Send>>;

type Events = mpsc::Sender<Result<pb::SubscribeEvent, Status>>;

/// Starts serving one edge's subscription stream.
pub(super) fn serve(
    node: Node,
    router: Arc<Router>,
    requests: Streaming<pb::SubscribeRequest>,
) -> SubscribeStream {
    let (tx, mut rx) = mpsc::channel(MERGE_QUEUE);
    tokio::spawn(run(node, router, requests, tx));
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

async fn run(
    node: Node,
    router: Arc<Router>,
    mut requests: Streaming<pb::SubscribeRequest>,
    tx: Events,
) {
    let mut subs: HashMap<u64, AbortHandle> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            request = requests.message() => match request {
                Ok(Some(r)) if r.listen.is_empty() => {
                    if let Some(task) = subs.remove(&r.id) {
                        task.abort();
                    }
                }
                Ok(Some(r)) => match serde_json::from_slice::<ListenCall>(&r.listen) {
                    Ok(call) => {
                        let task = tasks.spawn(forward(
                            node.clone(),
                            Arc::clone(&router),
                            r.id,
                            call,
                            tx.clone(),
                        ));
                        if let Some(old) = subs.insert(r.id, task) {
                            old.abort();
                        }
                    }
                    Err(e) => {
                        let error = chorus_types::ApiError::invalid(format!("bad subscribe: {e}"));
                        if !send(&tx, r.id, &ListenItem::Failed { error }).await {
                            break;
                        }
                    }
                },
                // The edge closed its side, or the connection broke.
                Ok(None) | Err(_) => break,
            },
            () = tx.closed() => break,
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                // A finished forwarder leaves its handle behind; forget it.
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                subs.retain(|_, task| task.id() != id);
            }
        }
    }
    tasks.abort_all();
}

async fn send(tx: &Events, id: u64, item: &ListenItem) -> bool {
    match serde_json::to_vec(item) {
        Ok(item) => tx.send(Ok(pb::SubscribeEvent { id, item })).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "encoding a subscription event");
            false
        }
    }
}

/// One subscription: open the listen, then pass its events on, tagged with `id`.
async fn forward(node: Node, router: Arc<Router>, id: u64, call: ListenCall, tx: Events) {
    let caller = call.caller.into();
    let opened = if node.is_stopping() {
        // `unavailable` makes the caller open the listen on another node.
        Err(crate::error::err(ErrorCode::Unavailable, STOPPING))
    } else if call.route {
        router.listen(&caller, &call.key, call.since).await
    } else {
        node.listen(&caller, &call.key, call.since).await
    };
    let mut listening = match opened {
        Ok(listening) => listening,
        Err(e) => {
            send(&tx, id, &ListenItem::Failed { error: e.error }).await;
            return;
        }
    };
    let started = ListenItem::Started {
        recovered: listening.recovered,
        message_count: listening.message_count,
    };
    if !send(&tx, id, &started).await {
        return;
    }
    while let Some(ev) = listening.events.next().await {
        let resync = matches!(ev, chorus_api::ListenEvent::Resync { .. });
        if !send(&tx, id, &ListenItem::from_event(ev)).await || resync {
            return;
        }
    }
    send(&tx, id, &ListenItem::Ended).await;
}
