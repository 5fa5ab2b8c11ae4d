//! The rebalancer's learner housekeeping: feeding a leader that removed itself the log it
//! was committing, and dropping learners no move waits for.

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_proto::pb;

use super::{Actual, FEED_TIMEOUT, RebalanceError, Rebalancer};
use crate::meta::state::{MetaState, Move};

impl Rebalancer {
    /// Drops learners that no move is waiting for: a move interrupted between adding its
    /// learner and the voter change (the meta leader died) may be planned differently by
    /// the next leader, and a learner keeps its group awake (no hibernation). Only a learner
    /// that has applied the leader's commit index goes: one still catching up may belong to
    /// a move a previous meta leader still has in flight.
    pub(super) async fn drop_caught_up_learners(
        &mut self,
        state: &MetaState,
        actual: &BTreeMap<u16, Actual>,
    ) -> Result<bool, RebalanceError> {
        let mut dropped = false;
        for (shard, a) in actual {
            for learner in &a.learners {
                let moving_here =
                    state.moving.is_some_and(|m| m.shard == *shard && m.to == *learner);
                let caught_up = a.applied.get(learner).is_some_and(|m| *m >= a.committed);
                if moving_here || !caught_up {
                    continue;
                }
                let leader =
                    state.nodes.get(&a.leader).ok_or(RebalanceError::UnknownNode(a.leader))?;
                let mut client = self.client(&leader.addr)?;
                let request = pb::RemoveLearnerRequest { group: u32::from(*shard), node: *learner };
                client.remove_learner(request).await.map_err(|status| RebalanceError::Learner {
                    shard: *shard,
                    node: *learner,
                    status,
                })?;
                tracing::info!(shard, node = learner, "learner dropped");
                dropped = true;
            }
        }
        Ok(dropped)
    }

    /// The shard's leader just removed itself: it stepped down holding writes it proposed
    /// and will only answer once it applies them, which needs a log nobody sends it any more.
    /// The new leader adds it back as a learner until it has caught up, then drops it, so
    /// those writes get their (committed) answer within an election instead of the request
    /// timeout. Best effort: a failure only costs those writes a `timeout` answer, and a
    /// leftover learner is dropped by a later round.
    pub(super) async fn feed_old_leader(&mut self, state: &MetaState, m: Move) {
        let Some(old) = state.nodes.get(&m.from) else { return };
        let deadline = tokio::time::Instant::now() + FEED_TIMEOUT;
        let new_leader = loop {
            let actual = self.actual_voters(state).await;
            if let Some(a) = actual.get(&m.shard).filter(|a| a.leader != m.from) {
                break a.leader;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(shard = m.shard, "no new leader to feed the old one");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let Some(leader) = state.nodes.get(&new_leader) else { return };
        let Ok(mut client) = self.client(&leader.addr) else { return };
        let group = u32::from(m.shard);
        let mut add = tonic::Request::new(pb::AddLearnerRequest {
            group,
            node: m.from,
            addr: old.addr.clone(),
        });
        add.set_timeout(FEED_TIMEOUT);
        if let Err(status) = client.add_learner(add).await {
            tracing::warn!(shard = m.shard, %status, "feeding the old leader failed");
        }
        // Caught up is not yet applied: it applies once it hears the commit index.
        loop {
            let actual = self.actual_voters(state).await;
            let applied = actual
                .get(&m.shard)
                .is_some_and(|a| a.applied.get(&m.from).is_some_and(|done| *done >= a.committed));
            if applied || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let remove = pb::RemoveLearnerRequest { group, node: m.from };
        if let Err(status) = client.remove_learner(remove).await {
            tracing::warn!(shard = m.shard, %status, "dropping the old leader failed");
        }
    }
}
