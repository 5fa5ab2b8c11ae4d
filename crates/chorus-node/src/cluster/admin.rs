//! The `Admin` gRPC service: cluster status for `chorus admin status`, and a replica's own
//! copy of a stream's log for verifying replicas against each other.

use chorus_proto::pb;
use chorus_proto::pb::admin_server::Admin;
use chorus_storage::reads;
use chorus_types::{PublisherId, StreamKey, StreamName};
use tonic::{Request, Response, Status};

use super::learner::add_caught_up_learner;
use crate::meta::admin::Change;
use crate::node::Node;

pub struct AdminService {
    node: Node,
}

impl AdminService {
    pub fn new(node: Node) -> Self {
        AdminService { node }
    }
}

impl AdminService {
    /// The group `group`, which this node must lead (membership changes go to the leader).
    fn led_group(&self, group: u32) -> Result<(u16, chorus_raft::Raft), Status> {
        let group = u16::try_from(group)
            .map_err(|_| Status::invalid_argument(format!("no group {group}")))?;
        let raft = self
            .node
            .group_table()
            .get(group)
            .ok_or_else(|| Status::not_found(format!("group {group} is not on this node")))?;
        let me = self.node.node_id();
        let leader = raft.metrics().borrow().current_leader;
        if leader != Some(me) {
            return Err(Status::failed_precondition(format!(
                "node {me} does not lead group {group}; leader: {}",
                leader.map_or("unknown".into(), |l| l.to_string())
            )));
        }
        Ok((group, raft))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        // The nodes this node was started with, and any that joined since (from the Raft
        // membership of its groups).
        let mut known: std::collections::BTreeMap<u64, String> =
            self.node.cluster().map(|c| c.peers.clone()).unwrap_or_default();
        for (_, raft) in self.node.group_table().all() {
            let m = raft.metrics().borrow().membership_config.clone();
            for (id, n) in m.membership().nodes() {
                known.entry(*id).or_insert_with(|| n.addr.clone());
            }
        }
        let nodes = known
            .into_iter()
            .map(|(id, addr)| pb::NodeInfo { id, peer_addr: addr, api_addr: String::new() })
            .collect();
        let shard_count = self.node.shard_count();
        let me = self.node.node_id();
        let groups = self
            .node
            .group_table()
            .all()
            .into_iter()
            // The meta group is reported in `meta`: edges take `groups` as the shard list.
            .filter(|(group, _)| *group < shard_count)
            .map(|(group, raft)| {
                let m = raft.metrics().borrow().clone();
                let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
                let membership = m.membership_config.membership();
                let joint = membership.get_joint_config().len() > 1;
                let voters: Vec<u64> = membership.voter_ids().collect();
                let learners: Vec<u64> = membership.learner_ids().collect();
                let matched = m
                    .replication
                    .as_ref()
                    .map(|r| {
                        r.iter()
                            .map(|(id, log)| (*id, log.as_ref().map(|l| l.index).unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default();
                // A node that stepped down (a leader that removed itself from the group) keeps
                // its own vote, so openraft still names it; it leads nothing.
                let leader = match m.current_leader {
                    Some(l) if l == me && m.state != openraft::ServerState::Leader => 0,
                    other => other.unwrap_or(0),
                };
                pb::GroupStatus {
                    group: u32::from(group),
                    leader,
                    term: m.current_term,
                    last_log_index: m.last_log_index.unwrap_or(0),
                    committed: self
                        .node
                        .committed_index(chorus_types::ShardId(group))
                        .unwrap_or(0)
                        .max(applied),
                    applied,
                    voters,
                    learners,
                    matched,
                    state: format!("{:?}", m.state),
                    snapshot: m.snapshot.map(|l| l.index).unwrap_or(0),
                    purged: m.purged.map(|l| l.index).unwrap_or(0),
                    joint,
                }
            })
            .collect();
        let meta = crate::meta::admin::status(&self.node).await;
        Ok(Response::new(pb::StatusReply { node_id: self.node.node_id(), nodes, groups, meta }))
    }

    async fn init(
        &self,
        request: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitReply>, Status> {
        let voters: std::collections::BTreeMap<u64, String> =
            request.into_inner().voters.into_iter().collect();
        let initialised = self.node.initialize(&voters).await.map_err(|e| match e {
            crate::error::NodeError::Config(m) => Status::invalid_argument(m),
            other => Status::internal(other.to_string()),
        })?;
        Ok(Response::new(pb::InitReply { initialised }))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let req = request.into_inner();
        if req.addr.is_empty() {
            return Err(Status::invalid_argument("the new node's peer address is required"));
        }
        let change = Change::Add { id: req.id, addr: req.addr };
        Ok(Response::new(crate::meta::admin::apply(&self.node, change).await?))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let change = Change::Remove { id: request.into_inner().id };
        Ok(Response::new(crate::meta::admin::apply(&self.node, change).await?))
    }

    async fn replace_voter(
        &self,
        request: Request<pb::ReplaceVoterRequest>,
    ) -> Result<Response<pb::ReplaceVoterReply>, Status> {
        let req = request.into_inner();
        let (group, raft) = self.led_group(req.group)?;
        if req.new == 0 || req.new_addr.is_empty() {
            return Err(Status::invalid_argument("new node id and address are required"));
        }
        let voters: std::collections::BTreeSet<u64> =
            raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if !voters.contains(&req.new) {
            // Waits until the learner has caught up (by log or snapshot), so the voter change
            // below never puts a node that lacks the log into the group's quorum.
            add_caught_up_learner(&raft, req.new, &req.new_addr).await?;
        }
        let mut next = voters;
        next.remove(&req.old);
        next.insert(req.new);
        // A leader that replaces itself leaves the group here and steps down once the change
        // is applied. openraft 0.9 answers a proposal only when the proposing node applies it,
        // and nothing replicates to a node outside the group, so the rebalancer then has the
        // new leader feed it the log as a learner (`AddLearner`, then `RemoveLearner`) to
        // answer what it was committing. (Keeping it as a learner here instead does not work:
        // in 0.9 a learner may stay leader.)
        crate::quorum::bounded(raft.change_membership(next.clone(), false))
            .await
            .map_err(|e| Status::deadline_exceeded(format!("changing voters: {e}")))?
            .map_err(|e| Status::unavailable(format!("changing voters: {e}")))?;
        tracing::info!(group, old = req.old, new = req.new, "voter replaced");
        Ok(Response::new(pb::ReplaceVoterReply { voters: next.into_iter().collect() }))
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AddLearnerReply>, Status> {
        let req = request.into_inner();
        let (group, raft) = self.led_group(req.group)?;
        if req.node == 0 || req.addr.is_empty() {
            return Err(Status::invalid_argument("node id and address are required"));
        }
        let voter = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == req.node);
        if !voter {
            add_caught_up_learner(&raft, req.node, &req.addr).await?;
            tracing::info!(group, node = req.node, "learner added");
        }
        Ok(Response::new(pb::AddLearnerReply {}))
    }

    async fn remove_learner(
        &self,
        request: Request<pb::RemoveLearnerRequest>,
    ) -> Result<Response<pb::RemoveLearnerReply>, Status> {
        let req = request.into_inner();
        let (group, raft) = self.led_group(req.group)?;
        let membership = raft.metrics().borrow().membership_config.clone();
        if membership.membership().voter_ids().any(|v| v == req.node) {
            return Err(Status::failed_precondition(format!(
                "node {} is a voter of group {group}",
                req.node
            )));
        }
        if membership.membership().get_node(&req.node).is_some() {
            let gone = std::collections::BTreeSet::from([req.node]);
            let change = raft.change_membership(openraft::ChangeMembers::RemoveNodes(gone), false);
            crate::quorum::bounded(change)
                .await
                .map_err(|e| Status::deadline_exceeded(format!("removing learner: {e}")))?
                .map_err(|e| Status::unavailable(format!("removing learner {}: {e}", req.node)))?;
            tracing::info!(group, node = req.node, "learner removed");
        }
        Ok(Response::new(pb::RemoveLearnerReply {}))
    }

    async fn local_messages(
        &self,
        request: Request<pb::LocalMessagesRequest>,
    ) -> Result<Response<pb::LocalMessagesReply>, Status> {
        let req = request.into_inner();
        let publisher = PublisherId::new(req.publisher_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let name =
            StreamName::new(req.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = StreamKey::new(publisher, name);
        let shard = self.node.shard_of(&key);
        let db = self.node.db().clone();
        let result = chorus_storage::error::blocking(move || {
            // The record and the messages are two reads while this replica may be applying:
            // the pair is consistent when the count did not move around the messages' read
            // (a post writes its message and the count in one batch, and counts only grow).
            let mut tries = 0;
            loop {
                let Some(before) = reads::stream(&db, shard, &key)? else {
                    return Ok(None);
                };
                let messages = reads::messages_within(
                    &db,
                    shard,
                    &key,
                    (1, u64::MAX),
                    usize::MAX,
                    false,
                    usize::MAX,
                )?;
                let after = reads::stream(&db, shard, &key)?.map_or(0, |s| s.message_count);
                tries += 1;
                if after == before.message_count || tries == 100 {
                    return Ok(Some((before.message_count, messages)));
                }
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let reply = match result {
            None => pb::LocalMessagesReply { message_count: 0, exists: false, messages: vec![] },
            Some((count, messages)) => pb::LocalMessagesReply {
                message_count: count,
                exists: true,
                messages: messages
                    .iter()
                    .map(serde_json::to_vec)
                    .collect::<Result<_, _>>()
                    .map_err(|e| Status::internal(e.to_string()))?,
            },
        };
        Ok(Response::new(reply))
    }
}
