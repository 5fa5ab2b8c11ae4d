//! The meta group's replicated record: which nodes are in the cluster and which three nodes
//! hold each shard. Pure data plus the changes the admin commands and the rebalancer make to
//! it; no I/O (see [`super::store`] for how it is read and written through Raft).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Replicas per shard: a shard survives the loss of one voter.
pub const REPLICAS: usize = 3;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Takes its share of replicas.
    Active,
    /// Being removed: gets no new replica; the rebalancer moves its replicas away, then drops
    /// it from the record.
    Draining,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Active => "active",
            NodeStatus::Draining => "draining",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The node's peer (gRPC) address.
    pub addr: String,
    pub status: NodeStatus,
}

/// One replica of `shard` moving from node `from` to node `to`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub shard: u16,
    pub from: u64,
    pub to: u64,
}

/// The whole meta record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub nodes: BTreeMap<u64, NodeEntry>,
    /// Per shard (index = shard id): the voter node ids, as last recorded.
    pub placement: Vec<BTreeSet<u64>>,
    /// The move the rebalancer started and has not recorded as done (at most one: moves go
    /// one shard at a time). Informational: a new meta leader re-derives what to do from the
    /// shards' real voter sets, not from this.
    pub moving: Option<Move>,
}

/// Why an admin change to the record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaChangeError {
    #[error("node ids start at 1")]
    ZeroId,
    #[error("node {id} is already in the cluster at {addr}")]
    AlreadyMember { id: u64, addr: String },
    #[error("node {0} is not in the cluster")]
    NotMember(u64),
    #[error(
        "removing node {id} would leave {remaining} active nodes; every shard needs {REPLICAS}"
    )]
    TooFewNodes { id: u64, remaining: usize },
}

impl MetaState {
    /// The record of a cluster started with `--peers`: every node holds every shard.
    pub fn initial(nodes: &BTreeMap<u64, String>, shards: u16) -> MetaState {
        let entries = nodes
            .iter()
            .map(|(id, addr)| (*id, NodeEntry { addr: addr.clone(), status: NodeStatus::Active }))
            .collect();
        let all: BTreeSet<u64> = nodes.keys().copied().collect();
        MetaState {
            nodes: entries,
            placement: (0..shards).map(|_| all.clone()).collect(),
            moving: None,
        }
    }

    /// Replicas per node in the recorded placement (every recorded node, with 0 when none).
    pub fn replica_counts(&self) -> BTreeMap<u64, usize> {
        let mut counts: BTreeMap<u64, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for voters in &self.placement {
            for id in voters {
                *counts.entry(*id).or_default() += 1;
            }
        }
        counts
    }

    pub fn active_ids(&self) -> BTreeSet<u64> {
        let active = self.nodes.iter().filter(|(_, n)| n.status == NodeStatus::Active);
        active.map(|(id, _)| *id).collect()
    }

    /// `chorus admin add-node`. Adding a node again with the same address is a no-op, so a
    /// retried command succeeds.
    pub fn add_node(&mut self, id: u64, addr: &str) -> Result<(), MetaChangeError> {
        if id == 0 {
            return Err(MetaChangeError::ZeroId);
        }
        if let Some(existing) = self.nodes.get(&id) {
            if existing.addr == addr && existing.status == NodeStatus::Active {
                return Ok(());
            }
            return Err(MetaChangeError::AlreadyMember { id, addr: existing.addr.clone() });
        }
        self.nodes.insert(id, NodeEntry { addr: addr.to_owned(), status: NodeStatus::Active });
        Ok(())
    }

    /// `chorus admin remove-node`: refused unless [`REPLICAS`] other active nodes remain to
    /// take its replicas.
    pub fn drain_node(&mut self, id: u64) -> Result<(), MetaChangeError> {
        let remaining = self.active_ids().into_iter().filter(|n| *n != id).count();
        let entry = self.nodes.get_mut(&id).ok_or(MetaChangeError::NotMember(id))?;
        if remaining < REPLICAS {
            return Err(MetaChangeError::TooFewNodes { id, remaining });
        }
        entry.status = NodeStatus::Draining;
        Ok(())
    }
}
