//! The `Admin` gRPC service: cluster status for `chorus admin status`, and a replica's own
//! copy of a stream's log for verifying replicas against each other.

use chorus_proto::pb;
use chorus_proto::pb::admin_server::Admin;
use chorus_storage::reads;
use chorus_types::{PublisherId, StreamKey, StreamName};
use tonic::{Request, Response, Status};

use crate::node::Node;

pub struct AdminService {
    node: Node,
}

impl AdminService {
    pub fn new(node: Node) -> Self {
        AdminService { node }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let nodes = self
            .node
            .cluster()
            .map(|c| {
                c.peers
                    .iter()
                    .map(|(id, addr)| pb::NodeInfo {
                        id: *id,
                        peer_addr: addr.clone(),
                        api_addr: String::new(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let groups = self
            .node
            .group_table()
            .all()
            .into_iter()
            .map(|(group, raft)| {
                let m = raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
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
                pb::GroupStatus {
                    group: u32::from(group),
                    leader: m.current_leader.unwrap_or(0),
                    term: m.current_term,
                    last_log_index: m.last_log_index.unwrap_or(0),
                    committed: m.last_applied.map(|l| l.index).unwrap_or(0),
                    applied: m.last_applied.map(|l| l.index).unwrap_or(0),
                    voters,
                    learners,
                    matched,
                    state: format!("{:?}", m.state),
                    snapshot: m.snapshot.map(|l| l.index).unwrap_or(0),
                    purged: m.purged.map(|l| l.index).unwrap_or(0),
                }
            })
            .collect();
        Ok(Response::new(pb::StatusReply { node_id: self.node.node_id(), nodes, groups }))
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
            let Some(stream) = reads::stream(&db, shard, &key)? else {
                return Ok(None);
            };
            let messages = reads::messages(&db, shard, &key, 1, u64::MAX, usize::MAX, false)?;
            Ok(Some((stream.message_count, messages)))
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
