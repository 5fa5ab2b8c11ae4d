//! The rebalancer: one task per node that acts only while its node leads the meta group.
//!
//! Each round it
//! 1. makes sure every recorded node holds the meta group (as a learner at least), so every
//!    node has the map;
//! 2. asks every recorded node for its status and takes each shard's **real** voter set from
//!    the shard's leader; where it differs from the record (a move finished but was not
//!    recorded: the previous meta leader died in between) the record is corrected;
//! 3. asks the pure [`planner`](super::planner) for the next move and makes it on the
//!    shard's leader with `Admin.ReplaceVoter` (learner, catch-up, one joint voter change),
//!    then records the new placement;
//! 4. when nothing is left to move, retires drained nodes: a meta voter is replaced by an
//!    active node first, then the node leaves the meta group and the record.
//!
//! Nothing lives only in memory: a new meta leader (failover, restart) starts from step 1 and
//! reaches the same plan. Every step is idempotent — `ReplaceVoter` with the new voter already
//! in place only re-commits the same voters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chorus_proto::pb;
use chorus_proto::pb::admin_client::AdminClient;
use chorus_raft::grpc::peers::endpoint;
use chorus_storage::Db;
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use tonic::transport::Channel;

mod learners;

use super::planner::next_move;
use super::state::{MetaState, Move, NodeStatus};
use super::store::{self, MetaError};

/// Time between rounds while there is nothing to do.
const ROUND: Duration = Duration::from_millis(500);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// A move includes a learner catching up (possibly by snapshot).
const MOVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a leader that removed itself is waited for to be fed the log it was committing.
const FEED_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RebalanceError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("changing the meta group's membership: {0}")]
    MetaMembership(Box<RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>>),
    #[error("shard {shard} has no known leader")]
    NoLeader { shard: u16 },
    #[error("node {0} is not in the meta record")]
    UnknownNode(u64),
    #[error("moving shard {shard} from {from} to {to}: {status}")]
    Move { shard: u16, from: u64, to: u64, status: tonic::Status },
    #[error("dropping learner {node} from shard {shard}: {status}")]
    Learner { shard: u16, node: u64, status: tonic::Status },
    #[error("bad node address: {0}")]
    Address(#[from] chorus_raft::grpc::PeerError),
    #[error("changing the meta group's membership: {0}")]
    Timeout(#[from] crate::quorum::QuorumTimeout),
}

/// A shard's voters as its leader reports them.
#[derive(Clone, Debug)]
struct Actual {
    leader: u64,
    term: u64,
    voters: BTreeSet<u64>,
    joint: bool,
    learners: BTreeSet<u64>,
    /// The leader's commit index, and what each learner has applied (as it reports).
    committed: u64,
    applied: BTreeMap<u64, u64>,
}

pub struct Rebalancer {
    /// This node's id: the rebalancer works only while it is the meta leader.
    me: u64,
    db: Db,
    /// The meta group on this node.
    meta: chorus_raft::Raft,
    shards: u16,
    /// Admin clients by peer address, reused across rounds.
    clients: HashMap<String, AdminClient<Channel>>,
}

impl Rebalancer {
    pub fn new(me: u64, db: Db, meta: chorus_raft::Raft, shards: u16) -> Rebalancer {
        Rebalancer { me, db, meta, shards, clients: HashMap::new() }
    }

    /// Runs rounds until the task is aborted (node shutdown).
    pub async fn run(mut self) {
        loop {
            tokio::time::sleep(ROUND).await;
            if self.meta.metrics().borrow().current_leader != Some(self.me) {
                continue;
            }
            // A round that moved something goes again at once; errors wait a round and retry
            // from a fresh view.
            loop {
                match self.round().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "rebalance round failed");
                        break;
                    }
                }
            }
        }
    }

    /// One round; true when it changed something (so another round may follow at once).
    async fn round(&mut self) -> Result<bool, RebalanceError> {
        let Some((_, state)) = store::read(&self.db).await? else {
            self.bootstrap().await?;
            return Ok(true);
        };
        if self.meta.metrics().borrow().current_leader != Some(self.me) {
            return Ok(false);
        }
        self.ensure_meta_replicas(&state).await?;
        let actual = self.actual_voters(&state).await;
        if self.record_actual(&state, &actual).await? {
            return Ok(true);
        }
        if self.drop_caught_up_learners(&state, &actual).await? {
            return Ok(true);
        }
        // A joint change left over by a previous leader is finished by re-running its move.
        let planned = match state.moving {
            Some(m) if actual.get(&m.shard).is_some_and(|a| a.joint) => Some(m),
            _ => {
                let leaders = actual.iter().map(|(shard, a)| (*shard, a.leader)).collect();
                next_move(&state, &leaders)
            }
        };
        if let Some(m) = planned {
            self.make_move(&state, &actual, m).await?;
            return Ok(true);
        }
        self.retire_drained(&state).await
    }

    async fn bootstrap(&self) -> Result<(), RebalanceError> {
        Ok(store::bootstrap(&self.db, &self.meta, self.shards).await?)
    }

    /// Every recorded node gets the meta group, as a learner unless it is a voter.
    async fn ensure_meta_replicas(&self, state: &MetaState) -> Result<(), RebalanceError> {
        let membership = self.meta.metrics().borrow().membership_config.clone();
        // A draining node needs no map, and one that was just taken out must stay out.
        let active = state.nodes.iter().filter(|(_, n)| n.status == NodeStatus::Active);
        for (id, node) in active {
            if membership.membership().get_node(id).is_some() {
                continue;
            }
            let addr = openraft::BasicNode { addr: node.addr.clone() };
            crate::quorum::bounded(self.meta.add_learner(*id, addr, false))
                .await?
                .map_err(|e| RebalanceError::MetaMembership(Box::new(e)))?;
            tracing::info!(node = id, "meta group learner added");
        }
        Ok(())
    }

    fn client(&mut self, addr: &str) -> Result<AdminClient<Channel>, RebalanceError> {
        if let Some(c) = self.clients.get(addr) {
            return Ok(c.clone());
        }
        let client = AdminClient::new(endpoint(addr)?.connect_lazy());
        self.clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Each shard's voters as reported by its leader (the newest term wins). Shards whose
    /// leader did not answer are missing.
    async fn actual_voters(&mut self, state: &MetaState) -> BTreeMap<u16, Actual> {
        let mut actual: BTreeMap<u16, Actual> = BTreeMap::new();
        // (shard, node) → what that node's replica has applied.
        let mut applied: BTreeMap<(u16, u64), u64> = BTreeMap::new();
        for node in state.nodes.values() {
            let Ok(mut client) = self.client(&node.addr) else { continue };
            let mut request = tonic::Request::new(pb::StatusRequest {});
            request.set_timeout(STATUS_TIMEOUT);
            let Ok(reply) = client.status(request).await else { continue };
            let reply = reply.into_inner();
            for g in &reply.groups {
                if let Ok(shard) = u16::try_from(g.group) {
                    applied.insert((shard, reply.node_id), g.applied);
                }
            }
            for g in reply.groups.iter().filter(|g| g.leader == reply.node_id) {
                let Ok(shard) = u16::try_from(g.group) else { continue };
                let seen = Actual {
                    leader: g.leader,
                    term: g.term,
                    voters: g.voters.iter().copied().collect(),
                    joint: g.joint,
                    learners: g.learners.iter().copied().collect(),
                    committed: g.committed,
                    applied: BTreeMap::new(),
                };
                match actual.get(&shard) {
                    Some(known) if known.term >= seen.term => {}
                    _ => {
                        actual.insert(shard, seen);
                    }
                }
            }
        }
        for (shard, a) in &mut actual {
            for learner in &a.learners {
                if let Some(done) = applied.get(&(*shard, *learner)) {
                    a.applied.insert(*learner, *done);
                }
            }
        }
        actual
    }

    /// Corrects the record where a shard's settled voter set differs from it. True when it
    /// wrote.
    async fn record_actual(
        &self,
        state: &MetaState,
        actual: &BTreeMap<u16, Actual>,
    ) -> Result<bool, RebalanceError> {
        let mut fixed = state.placement.clone();
        for (shard, a) in actual {
            let Some(slot) = fixed.get_mut(usize::from(*shard)) else { continue };
            if !a.joint && !a.voters.is_empty() && *slot != a.voters {
                tracing::info!(shard, recorded = ?slot, actual = ?a.voters, "placement corrected");
                *slot = a.voters.clone();
            }
        }
        if fixed == state.placement {
            return Ok(false);
        }
        store::update(&self.db, &self.meta, |s| {
            s.placement = fixed.clone();
            if s.moving.is_some_and(|m| fixed[usize::from(m.shard)].contains(&m.to)) {
                s.moving = None;
            }
            Ok(())
        })
        .await?;
        Ok(true)
    }

    /// Records `m` as under way, makes it on the shard's leader, records the new voters.
    async fn make_move(
        &mut self,
        state: &MetaState,
        actual: &BTreeMap<u16, Actual>,
        m: Move,
    ) -> Result<(), RebalanceError> {
        let leader = actual.get(&m.shard).ok_or(RebalanceError::NoLeader { shard: m.shard })?;
        let leader_addr =
            state.nodes.get(&leader.leader).ok_or(RebalanceError::UnknownNode(leader.leader))?;
        let to_addr = state.nodes.get(&m.to).ok_or(RebalanceError::UnknownNode(m.to))?;
        store::update(&self.db, &self.meta, |s| {
            s.moving = Some(m);
            Ok(())
        })
        .await?;
        tracing::info!(shard = m.shard, from = m.from, to = m.to, "moving replica");
        let mut client = self.client(&leader_addr.addr)?;
        let mut request = tonic::Request::new(pb::ReplaceVoterRequest {
            group: u32::from(m.shard),
            old: m.from,
            new: m.to,
            new_addr: to_addr.addr.clone(),
        });
        request.set_timeout(MOVE_TIMEOUT);
        let voters: BTreeSet<u64> = client
            .replace_voter(request)
            .await
            .map_err(|status| RebalanceError::Move {
                shard: m.shard,
                from: m.from,
                to: m.to,
                status,
            })?
            .into_inner()
            .voters
            .into_iter()
            .collect();
        store::update(&self.db, &self.meta, |s| {
            if let Some(slot) = s.placement.get_mut(usize::from(m.shard)) {
                *slot = voters.clone();
            }
            s.moving = None;
            Ok(())
        })
        .await?;
        tracing::info!(shard = m.shard, ?voters, "replica moved");
        if leader.leader == m.from {
            self.feed_old_leader(state, m).await;
        }
        Ok(())
    }

    /// Takes drained nodes (draining, no replica left) out of the meta group and the record.
    /// True when it changed something.
    async fn retire_drained(&self, state: &MetaState) -> Result<bool, RebalanceError> {
        let counts = state.replica_counts();
        let Some(gone) = state.nodes.iter().find_map(|(id, n)| {
            (n.status == NodeStatus::Draining && counts.get(id).copied().unwrap_or(0) == 0)
                .then_some(*id)
        }) else {
            return Ok(false);
        };
        let membership = self.meta.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
        if voters.contains(&gone) {
            // Keep three meta voters: an active non-voter takes its place, in one joint
            // change (it is already a learner, so it has the record).
            let replacement = state.active_ids().into_iter().find(|id| !voters.contains(id));
            let mut next = voters.clone();
            next.remove(&gone);
            if let Some(r) = replacement {
                next.insert(r);
            }
            crate::quorum::bounded(self.meta.change_membership(next.clone(), false))
                .await?
                .map_err(|e| RebalanceError::MetaMembership(Box::new(e)))?;
            tracing::info!(node = gone, ?next, "meta voter replaced");
            // This node may have removed itself; the next meta leader continues.
            return Ok(true);
        }
        if membership.membership().get_node(&gone).is_some() {
            let remove = ChangeMembers::RemoveNodes(BTreeSet::from([gone]));
            crate::quorum::bounded(self.meta.change_membership(remove, false))
                .await?
                .map_err(|e| RebalanceError::MetaMembership(Box::new(e)))?;
        }
        store::update(&self.db, &self.meta, |s| {
            s.nodes.remove(&gone);
            Ok(())
        })
        .await?;
        tracing::info!(node = gone, "node removed from the cluster");
        Ok(true)
    }
}
