//! What an edge knows of the cluster's shard leaders, so that it sends each operation and
//! listen straight to the node that leads the stream's shard.
//!
//! Every second the edge asks each node it knows for its status (`Admin.Status`): the node's id (so the
//! edge knows which of its `--nodes` addresses is which node) and, per shard, the leader and
//! term as that node sees them; the highest term wins. Knowing is only a shortcut: calls still
//! carry `route: true`, so a stale entry costs one forwarding hop on the node, never a wrong
//! answer. Until the first refresh, or for a shard without a known leader, calls go to the
//! node that answered last.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, Weak};

use super::remote::RemoteService;
use std::time::Duration;

use chorus_proto::pb;
use chorus_proto::pb::admin_client::AdminClient;
use chorus_types::StreamKey;
use chorus_types::shard::shard_of;
use tonic::transport::Channel;

const REFRESH: Duration = Duration::from_secs(1);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Map {
    shards: u16,
    /// Per shard: (leader node id, term); id 0 when unknown.
    leaders: Vec<(u64, u64)>,
    /// Node id → index into the edge's node list.
    index_of: HashMap<u64, usize>,
}

#[derive(Default)]
pub(super) struct Topology {
    map: RwLock<Map>,
    /// Bumped whenever a shard's leader changes, for listens that follow their leader.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Topology {
    /// The index of the node that leads `key`'s shard, when known.
    pub(super) fn leader_of(&self, key: &StreamKey) -> Option<usize> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        if map.shards == 0 {
            return None;
        }
        let shard = usize::from(shard_of(key, map.shards).0);
        let (leader, _) = map.leaders.get(shard).copied()?;
        map.index_of.get(&leader).copied()
    }

    /// Folds one node's status in: its id, and leaders with a newer term.
    fn learn(&self, index: usize, status: &pb::StatusReply) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        map.index_of.insert(status.node_id, index);
        let shards = status.groups.len();
        let Ok(count) = u16::try_from(shards) else { return };
        if map.shards != count {
            map.shards = count;
            map.leaders = vec![(0, 0); shards];
        }
        let mut moved = false;
        for g in &status.groups {
            let Some(slot) = map.leaders.get_mut(g.group as usize) else { continue };
            if g.leader != 0 && (g.term > slot.1 || (g.term == slot.1 && slot.0 == 0)) {
                moved |= slot.0 != g.leader;
                *slot = (g.leader, g.term);
            }
        }
        drop(map);
        if moved {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// The node the topology shows leading `key`'s shard once it is another than `was` (the
    /// node a call or listen went to; `None`: the first leader learned counts as `was`).
    /// Wakes only when some shard's leader changes; never returns while the leader stays.
    pub(super) async fn leader_other_than(&self, key: &StreamKey, mut was: Option<usize>) -> usize {
        let mut rx = self.changed.subscribe();
        loop {
            match (was, self.leader_of(key)) {
                (Some(w), Some(now)) if now != w => return now,
                (None, now) => was = now,
                _ => {}
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Refreshes the service's topology from its nodes, and its node list from the meta record
/// they report, until the service is gone. Each node is asked on its own clock: a node that
/// does not answer (paused, cut off) must not delay what the others say about the leaders
/// elected in its place.
pub(super) async fn refresh(service: Weak<RemoteService>) {
    let mut polled = 0;
    loop {
        let Some(known) = service.upgrade().map(|s| s.nodes()) else { return };
        for node in known.iter().skip(polled) {
            tokio::spawn(poll(service.clone(), polled, AdminClient::new(node.channel.clone())));
            polled += 1;
        }
        drop(known);
        tokio::time::sleep(REFRESH).await;
    }
}

/// Asks node `index` for its status every [`REFRESH`] until the service is gone.
async fn poll(service: Weak<RemoteService>, index: usize, mut client: AdminClient<Channel>) {
    loop {
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(STATUS_TIMEOUT);
        let reply = client.status(request).await;
        let Some(service) = service.upgrade() else { return };
        if let Ok(reply) = reply {
            let reply = reply.into_inner();
            service.topology().learn(index, &reply);
            service.learn_nodes(&reply);
        }
        drop(service);
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use chorus_types::{PublisherId, StreamName};

    use super::*;

    fn group(group: u32, leader: u64, term: u64) -> pb::GroupStatus {
        pb::GroupStatus { group, leader, term, ..Default::default() }
    }

    #[test]
    fn newest_term_wins_and_ids_map_to_addresses() {
        let t = Topology::default();
        let key = StreamKey::new(PublisherId::new("a").unwrap(), StreamName::new("x").unwrap());
        assert_eq!(t.leader_of(&key), None);
        let shard = shard_of(&key, 2).0 as u32;
        let status = |node_id, leader, term| pb::StatusReply {
            node_id,
            nodes: Vec::new(),
            groups: vec![group(shard, leader, term), group(1 - shard, 0, 0)],
            meta: None,
        };
        // Node 7 is the edge's address #2 and says node 9 leads in term 3.
        t.learn(2, &status(7, 9, 3));
        assert_eq!(t.leader_of(&key), None, "node 9's address is not known yet");
        t.learn(0, &status(9, 9, 3));
        assert_eq!(t.leader_of(&key), Some(0));
        // A stale view (term 2) does not override; a newer one does.
        t.learn(2, &status(7, 7, 2));
        assert_eq!(t.leader_of(&key), Some(0));
        t.learn(2, &status(7, 7, 4));
        assert_eq!(t.leader_of(&key), Some(2));
    }
}
