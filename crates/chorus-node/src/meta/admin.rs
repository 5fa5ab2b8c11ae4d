//! `Admin.AddNode` / `Admin.RemoveNode` and the meta part of `Admin.Status`. A node that does
//! not lead the meta group forwards the change to the one that does, so the CLI may ask any
//! node.

use chorus_proto::pb;
use chorus_proto::pb::admin_client::AdminClient;
use chorus_raft::grpc::peers::endpoint;
use tonic::Status;

use super::state::{MetaChangeError, MetaState};
use super::store::{self, MetaError};
use crate::node::Node;

/// A membership change asked of the meta group.
#[derive(Clone, Debug)]
pub enum Change {
    Add { id: u64, addr: String },
    Remove { id: u64 },
}

fn status_of(e: MetaError) -> Status {
    match e {
        MetaError::Change(MetaChangeError::NotMember(_)) => Status::not_found(e.to_string()),
        MetaError::Change(MetaChangeError::ZeroId) => Status::invalid_argument(e.to_string()),
        MetaError::Change(_) => Status::failed_precondition(e.to_string()),
        MetaError::NotLeader { .. } | MetaError::Uninitialised | MetaError::Contended => {
            Status::unavailable(e.to_string())
        }
        MetaError::Raft(_) => Status::unavailable(e.to_string()),
        MetaError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        MetaError::Storage(_)
        | MetaError::Malformed(_)
        | MetaError::Refused(_)
        | MetaError::UnexpectedOutcome
        | MetaError::Key(_) => Status::internal(e.to_string()),
    }
}

/// Runs `change` on the meta leader: here, or forwarded.
pub async fn apply(node: &Node, change: Change) -> Result<pb::MembershipReply, Status> {
    let meta = node.meta_raft().ok_or_else(|| Status::failed_precondition("not a cluster node"))?;
    let leader = meta.metrics().borrow().current_leader;
    match leader {
        Some(l) if l == node.node_id() => {}
        Some(l) => return forward(&meta, l, change).await,
        None => return Err(Status::unavailable("the meta group has no leader yet")),
    }
    // A change may arrive on a fresh cluster before the rebalancer's first round.
    store::bootstrap(node.db(), &meta, node.shard_count()).await.map_err(status_of)?;
    let next = match &change {
        Change::Add { id, addr } => {
            let (id, addr) = (*id, addr.clone());
            let next = store::update(node.db(), &meta, |s| s.add_node(id, &addr)).await;
            let next = next.map_err(status_of)?;
            // Give it the map now; the rebalancer would also do it on its next round.
            let learner = meta.add_learner(id, openraft::BasicNode { addr: addr.clone() }, false);
            let failure = match crate::quorum::bounded(learner).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = failure {
                tracing::warn!(node = id, %error, "adding a meta learner failed");
            }
            tracing::info!(node = id, %addr, "node added");
            next
        }
        Change::Remove { id } => {
            let id = *id;
            let next = store::update(node.db(), &meta, |s| s.drain_node(id)).await;
            tracing::info!(node = id, "node draining");
            next.map_err(status_of)?
        }
    };
    Ok(pb::MembershipReply { nodes: meta_nodes(&next) })
}

async fn forward(
    meta: &chorus_raft::Raft,
    leader: u64,
    change: Change,
) -> Result<pb::MembershipReply, Status> {
    let addr = meta
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone())
        .ok_or_else(|| Status::unavailable(format!("no address for meta leader {leader}")))?;
    let channel = endpoint(&addr).map_err(|e| Status::unavailable(e.to_string()))?.connect_lazy();
    let mut client = AdminClient::new(channel);
    // The leader bounds its own waits; this covers a leader that stopped answering.
    let patience = crate::quorum::PATIENCE * 2;
    let reply = match change {
        Change::Add { id, addr } => {
            let mut request = tonic::Request::new(pb::AddNodeRequest { id, addr });
            request.set_timeout(patience);
            client.add_node(request).await?
        }
        Change::Remove { id } => {
            let mut request = tonic::Request::new(pb::RemoveNodeRequest { id });
            request.set_timeout(patience);
            client.remove_node(request).await?
        }
    };
    Ok(reply.into_inner())
}

pub fn meta_nodes(state: &MetaState) -> Vec<pb::MetaNode> {
    let counts = state.replica_counts();
    state
        .nodes
        .iter()
        .map(|(id, n)| pb::MetaNode {
            id: *id,
            peer_addr: n.addr.clone(),
            status: n.status.as_str().to_owned(),
            replicas: u32::try_from(counts.get(id).copied().unwrap_or(0)).unwrap_or(u32::MAX),
        })
        .collect()
}

/// The meta group as this node's replica sees it (`None` on a single node).
pub async fn status(node: &Node) -> Option<pb::MetaStatus> {
    let meta = node.meta_raft()?;
    let metrics = meta.metrics().borrow().clone();
    let voters = metrics.membership_config.membership().voter_ids().collect();
    let state = match store::read(node.db()).await {
        Ok(state) => state.map(|(_, s)| s).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the meta record failed");
            MetaState::default()
        }
    };
    let moving = state
        .moving
        .iter()
        .map(|m| pb::ReplicaMove { shard: u32::from(m.shard), from: m.from, to: m.to })
        .collect();
    Some(pb::MetaStatus {
        leader: metrics.current_leader.unwrap_or(0),
        nodes: meta_nodes(&state),
        moving,
        voters,
    })
}
