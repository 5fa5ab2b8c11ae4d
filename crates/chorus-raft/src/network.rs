//! The transport of single-node mode: there are no peers, so every RPC is refused as
//! unreachable. A group with one voter never calls it; if it ever did (a misconfigured
//! membership), the refusal surfaces as an unreachable peer in openraft's metrics rather than
//! as a hang.

use chorus_storage::TypeConfig;
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

type NodeId = u64;

#[derive(Debug, thiserror::Error)]
#[error("node {target} is not reachable: this node runs without peers")]
pub struct NoPeers {
    target: NodeId,
}

/// Refuses every peer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalOnly;

/// The connection to one (absent) peer.
pub struct NoConnection {
    target: NodeId,
}

impl NoConnection {
    fn refuse<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoPeers { target: self.target }))
    }
}

impl RaftNetworkFactory<TypeConfig> for LocalOnly {
    type Network = NoConnection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> NoConnection {
        NoConnection { target }
    }
}

impl RaftNetwork<TypeConfig> for NoConnection {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.refuse())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.refuse())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.refuse())
    }
}
