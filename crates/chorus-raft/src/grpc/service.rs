//! The receiving side of `Peer`: routes each call to the local group it names.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chorus_proto::pb;
use chorus_proto::pb::peer_server::Peer;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::liveness::Liveness;
use crate::Raft;

/// The groups this node runs, by group id. Groups join as they start (and, with placement
/// changes, as replicas move here).
#[derive(Default)]
pub struct GroupTable {
    groups: RwLock<HashMap<u16, Raft>>,
}

impl GroupTable {
    pub fn insert(&self, group: u16, raft: Raft) {
        self.groups.write().unwrap_or_else(|p| p.into_inner()).insert(group, raft);
    }

    pub fn get(&self, group: u16) -> Option<Raft> {
        self.groups.read().unwrap_or_else(|p| p.into_inner()).get(&group).cloned()
    }

    pub fn all(&self) -> Vec<(u16, Raft)> {
        let g = self.groups.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = g.iter().map(|(k, r)| (*k, r.clone())).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }
}

/// The `Peer` gRPC service.
pub struct PeerService {
    me: u64,
    groups: Arc<GroupTable>,
    /// Told of every batch received, so a busy leader counts as alive even when a ping
    /// reply is slow.
    liveness: Option<Arc<Liveness>>,
}

impl PeerService {
    pub fn new(me: u64, groups: Arc<GroupTable>, liveness: Option<Arc<Liveness>>) -> Self {
        PeerService { me, groups, liveness }
    }
}

fn reply<T: Serialize>(value: &T) -> pb::RaftReply {
    match serde_json::to_vec(value) {
        Ok(payload) => pb::RaftReply { payload, error: String::new() },
        Err(e) => pb::RaftReply { payload: Vec::new(), error: format!("encoding reply: {e}") },
    }
}

fn refuse(message: String) -> pb::RaftReply {
    pb::RaftReply { payload: Vec::new(), error: message }
}

async fn handle(groups: &GroupTable, call: pb::RaftCall) -> pb::RaftReply {
    let Ok(group) = u16::try_from(call.group) else {
        return refuse(format!("no group {}", call.group));
    };
    let Some(raft) = groups.get(group) else {
        return refuse(format!("group {group} does not run on this node"));
    };
    match pb::RaftKind::try_from(call.kind) {
        Ok(pb::RaftKind::Append) => {
            match serde_json::from_slice::<AppendEntriesRequest<chorus_storage::TypeConfig>>(
                &call.payload,
            ) {
                Ok(req) if req.entries.is_empty() => reply(&raft.append_entries(req).await),
                Ok(req) => {
                    let started = std::time::Instant::now();
                    let r = reply(&raft.append_entries(req).await);
                    crate::metrics::observe_append(started.elapsed().as_secs_f64());
                    r
                }
                Err(e) => refuse(format!("bad append: {e}")),
            }
        }
        Ok(pb::RaftKind::Vote) => match serde_json::from_slice::<VoteRequest<u64>>(&call.payload) {
            Ok(req) => reply(&raft.vote(req).await),
            Err(e) => refuse(format!("bad vote: {e}")),
        },
        _ => refuse(format!("unknown call kind {}", call.kind)),
    }
}

/// Runs every call of `batch` (concurrently: each waits on its own group).
async fn run_batch(
    groups: &GroupTable,
    liveness: Option<&Liveness>,
    batch: pb::RaftBatch,
) -> pb::RaftBatchReply {
    if let Some(l) = liveness {
        l.heard(batch.from);
    }
    let replies =
        futures_util::future::join_all(batch.calls.into_iter().map(|c| handle(groups, c))).await;
    pb::RaftBatchReply { replies }
}

type ReplyFrames = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<pb::RaftBatchReplyFrame, Status>> + Send>,
>;

#[tonic::async_trait]
impl Peer for PeerService {
    async fn batch(
        &self,
        request: Request<pb::RaftBatch>,
    ) -> Result<Response<pb::RaftBatchReply>, Status> {
        let reply = run_batch(&self.groups, self.liveness.as_deref(), request.into_inner()).await;
        Ok(Response::new(reply))
    }

    type BatchesStream = ReplyFrames;

    /// Each frame runs as its own task, as a unary call would: an append waiting on this
    /// node's disk must not hold up the batches behind it (the sender keeps a few in flight).
    async fn batches(
        &self,
        request: Request<tonic::Streaming<pb::RaftBatchFrame>>,
    ) -> Result<Response<Self::BatchesStream>, Status> {
        let mut frames = request.into_inner();
        // Replies wait here only while the connection is slower than the batches finish.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let groups = Arc::clone(&self.groups);
        let liveness = self.liveness.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = frames.message().await {
                let Some(batch) = frame.batch else { continue };
                let (tx, groups, liveness) = (tx.clone(), Arc::clone(&groups), liveness.clone());
                tokio::spawn(async move {
                    let work = tokio::spawn(async move {
                        run_batch(&groups, liveness.as_deref(), batch).await
                    });
                    // Every frame is answered: a batch whose task died (a panic) gets a reply
                    // without a body, which fails it at the sender. Without one its sender
                    // would wait as long as the stream lives, holding one of the lane's slots.
                    let reply = work.await.ok();
                    let frame = pb::RaftBatchReplyFrame { id: frame.id, reply };
                    // The sender gone: it has failed this batch already.
                    let _ = tx.send(Ok(frame)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::SnapshotChunk>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let chunk = request.into_inner();
        let Some(raft) = u16::try_from(chunk.group).ok().and_then(|g| self.groups.get(g)) else {
            return Ok(Response::new(refuse(format!("no group {} here", chunk.group))));
        };
        let mut req: InstallSnapshotRequest<chorus_storage::TypeConfig> =
            serde_json::from_slice(&chunk.meta)
                .map_err(|e| Status::invalid_argument(format!("bad snapshot chunk: {e}")))?;
        req.data = chunk.data;
        Ok(Response::new(reply(&raft.install_snapshot(req).await)))
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingReply>, Status> {
        if let Some(l) = &self.liveness {
            l.heard(request.get_ref().from);
        }
        let leading = self
            .groups
            .all()
            .into_iter()
            .filter(|(_, raft)| raft.metrics().borrow().state == openraft::ServerState::Leader)
            .map(|(g, _)| u32::from(g))
            .collect();
        Ok(Response::new(pb::PingReply { node_id: self.me, leading }))
    }
}
