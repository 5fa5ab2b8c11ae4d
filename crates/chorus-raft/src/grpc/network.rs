//! openraft's `RaftNetwork` over the peer connections: every group of this node shares one
//! [`PeerPool`]; a call names its group so the receiver can route it.

// openraft's `RPCError` is the error type its `RaftNetwork` trait dictates; boxing it here
// would only be unboxed again at the trait boundary.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use chorus_proto::pb;
use chorus_storage::TypeConfig;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::peers::{PeerConn, PeerError, PeerPool};
use crate::metrics::CallKind;

type NodeId = u64;
type RpcErr<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

/// The network factory of one group.
#[derive(Clone)]
pub struct GrpcNetwork {
    group: u16,
    pool: Arc<PeerPool>,
}

impl GrpcNetwork {
    pub fn new(group: u16, pool: Arc<PeerPool>) -> Self {
        GrpcNetwork { group, pool }
    }
}

/// How a call travels: `urgent` leaves at once (else it may linger for company), and
/// `carries_entries` picks the appends' batcher over the control one.
#[derive(Clone, Copy)]
struct Lane {
    urgent: bool,
    carries_entries: bool,
}

/// One group's view of one peer.
pub struct GrpcConn {
    group: u16,
    pool: Arc<PeerPool>,
    /// The commit index last sent to this peer. An append without entries that moves it is a
    /// commit notification, not a heartbeat: openraft replicates to a peer one call at a time,
    /// so one that waits for its reply leaves at once (lingering would hold up the group's next
    /// entries); most are answered without waiting ([`GrpcConn::commit_notice`]).
    last_commit: Option<openraft::LogId<NodeId>>,
    /// The last log id the peer confirmed holding in a reply on this connection; `None` after
    /// any other answer. See [`GrpcConn::commit_notice`].
    acked: Option<openraft::LogId<NodeId>>,
    target: NodeId,
    peer: Result<PeerConn, String>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcConn {
        let addr = self.pool.address_of(target, &node.addr);
        let peer = self.pool.get(addr).map_err(|e| e.to_string());
        GrpcConn {
            group: self.group,
            pool: self.pool.clone(),
            last_commit: None,
            acked: None,
            target,
            peer,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

fn unreachable<E: std::error::Error>(m: impl Into<String>) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&Msg(m.into())))
}

fn network<E: std::error::Error>(m: impl Into<String>) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&Msg(m.into())))
}

fn peer_failure<E: std::error::Error>(e: PeerError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        PeerError::Unreachable { .. } | PeerError::Address { .. } => unreachable(e.to_string()),
        PeerError::Failed { .. } => network(e.to_string()),
    }
}

impl GrpcConn {
    fn peer<E: std::error::Error>(&self) -> Result<&PeerConn, RPCError<NodeId, BasicNode, E>> {
        self.peer.as_ref().map_err(|m| unreachable(m.clone()))
    }

    fn timeout<E: std::error::Error>(
        &self,
        action: RPCTypes,
        ttl: Duration,
    ) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Timeout(Timeout { action, id: 0, target: self.target, timeout: ttl })
    }

    async fn batched<Req, Resp, E>(
        &self,
        kind: pb::RaftKind,
        action: RPCTypes,
        req: &Req,
        lane: Lane,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let peer = self.peer()?;
        let payload = serde_json::to_vec(req).map_err(|e| network(e.to_string()))?;
        let call = pb::RaftCall { group: u32::from(self.group), kind: kind as i32, payload };
        let ttl = option.hard_ttl();
        let reply =
            match tokio::time::timeout(ttl, peer.call(call, lane.urgent, lane.carries_entries))
                .await
            {
                Ok(r) => r.map_err(peer_failure)?,
                Err(_) => return Err(self.timeout(action, ttl)),
            };
        decode(self.target, &reply)
    }

    /// Sends a commit notice without waiting for its reply, when that is safe; false when the
    /// call must travel as usual.
    ///
    /// After a quorum acknowledges an entry, openraft tells each follower the new commit index
    /// in an append of its own (an empty one at `prev_log_id` = what the follower already
    /// confirmed) and sends that follower nothing else until the reply is back. Half of all
    /// Raft calls were these notices, each a round trip on the leader's critical path to the
    /// slower follower. Such a notice carries no entries and asks the follower to confirm only
    /// what it confirmed on this connection before, and openraft reads the reply of a
    /// replication heartbeat for its metrics clock only, so "success" is known without asking.
    /// The notice itself still goes (the follower applies up to the new commit index) with the
    /// next batch of the control lane to that peer, or after the linger.
    ///
    /// Not taken for: a connection's first call (nothing confirmed yet: the read barrier's
    /// heartbeats are each sent on a new connection, so they always wait for their quorum),
    /// appends carrying entries, heartbeats that move no commit index, or a `prev_log_id` other
    /// than the confirmed one (a probe for the follower's log). A higher vote or a conflict in
    /// the ignored reply reaches the leader on its next real call.
    fn commit_notice(&self, rpc: &AppendEntriesRequest<TypeConfig>, commit_moved: bool) -> bool {
        if !rpc.entries.is_empty() || !commit_moved || rpc.prev_log_id.is_none() {
            return false;
        }
        if rpc.prev_log_id != self.acked {
            // A probe at another log id, or nothing confirmed on this connection yet.
            return false;
        }
        let Ok(peer) = self.peer.as_ref() else { return false };
        let Ok(payload) = serde_json::to_vec(rpc) else { return false };
        let call = pb::RaftCall {
            group: u32::from(self.group),
            kind: pb::RaftKind::Append as i32,
            payload,
        };
        peer.notify(call)
    }
}

/// A reply's payload: `Result<Resp, RaftError<E>>` as JSON, or a routing error.
fn decode<Resp, E>(target: NodeId, reply: &pb::RaftReply) -> Result<Resp, RpcErr<E>>
where
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    if !reply.error.is_empty() {
        // The peer has no such group (yet): as good as unreachable for this group.
        return Err(unreachable(reply.error.clone()));
    }
    let result: Result<Resp, RaftError<NodeId, E>> =
        serde_json::from_slice(&reply.payload).map_err(|e| network(e.to_string()))?;
    result.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}

impl RaftNetwork<TypeConfig> for GrpcConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let commit_moved = rpc.leader_commit != self.last_commit;
        self.last_commit = rpc.leader_commit;
        if self.commit_notice(&rpc, commit_moved) {
            crate::metrics::count_call(CallKind::Commit);
            return Ok(AppendEntriesResponse::Success);
        }
        crate::metrics::count_call(if !rpc.entries.is_empty() {
            CallKind::Entries
        } else if commit_moved {
            CallKind::Commit
        } else {
            CallKind::Heartbeat
        });
        let carries_entries = !rpc.entries.is_empty();
        let urgent = carries_entries || commit_moved || self.pool.is_hot(self.group);
        let lane = Lane { urgent, carries_entries };
        let reply: Result<AppendEntriesResponse<NodeId>, _> =
            self.batched(pb::RaftKind::Append, RPCTypes::AppendEntries, &rpc, lane, &option).await;
        self.acked = match &reply {
            Ok(AppendEntriesResponse::Success) => {
                rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id)
            }
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => *matching,
            _ => None,
        };
        reply
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        crate::metrics::count_call(CallKind::Vote);
        let lane = Lane { urgent: true, carries_entries: false };
        self.batched(pb::RaftKind::Vote, RPCTypes::Vote, &rpc, lane, &option).await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let mut client = self.peer()?.client();
        let data = std::mem::take(&mut rpc.data);
        let meta = serde_json::to_vec(&rpc).map_err(|e| network(e.to_string()))?;
        let chunk = pb::SnapshotChunk { group: u32::from(self.group), meta, data };
        let ttl = option.hard_ttl();
        let reply = match tokio::time::timeout(ttl, client.install_snapshot(chunk)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                let addr = self.peer.as_ref().map(|p| p.addr().to_owned()).unwrap_or_default();
                return Err(peer_failure(PeerError::from_status(&addr, &status)));
            }
            Err(_) => return Err(self.timeout(RPCTypes::InstallSnapshot, ttl)),
        };
        decode(self.target, &reply)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn notice(prev: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            leader_commit: Some(log_id(commit)),
            entries: Vec::new(),
        }
    }

    /// Only a commit notice at the log id the peer confirmed on this connection is answered
    /// without waiting: never a connection's first call (the read barrier's heartbeats), nor
    /// a probe elsewhere, nor anything that moves no commit index or carries entries.
    #[tokio::test]
    async fn only_confirmed_commit_notices_skip_the_wait() {
        let pool = PeerPool::new(1, HashMap::from([(2, "127.0.0.1:9".to_owned())]), 4);
        let mut net = GrpcNetwork::new(0, pool);
        let mut conn = net.new_client(2, &BasicNode { addr: "127.0.0.1:9".into() }).await;
        assert!(!conn.commit_notice(&notice(5, 5), true), "nothing confirmed yet");
        conn.acked = Some(log_id(5));
        assert!(conn.commit_notice(&notice(5, 5), true));
        assert!(!conn.commit_notice(&notice(5, 5), false), "a heartbeat travels as usual");
        assert!(!conn.commit_notice(&notice(4, 5), true), "a probe at another log id");
        let mut with_entries = notice(5, 5);
        with_entries
            .entries
            .push(openraft::Entry { log_id: log_id(6), payload: openraft::EntryPayload::Blank });
        assert!(!conn.commit_notice(&with_entries, true), "entries wait for their reply");
    }
}
