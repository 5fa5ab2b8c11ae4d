//! Adding a learner to a group this node leads, and waiting until it really holds the log.
//!
//! openraft 0.9's blocking `add_learner` counts a learner as caught up once it is within
//! `replication_lag_threshold` (5,000 by default) entries of the leader's last log, and a
//! learner that never answered (nothing matched) counts as within it on any shorter log. A
//! replica move trusting that turned a node holding nothing — one not even running — into a
//! voter at once, and the group then survived one failure fewer until that node came back and
//! caught up. Here the learner must hold every entry the leader had once it was added, a fixed
//! target that a live learner reaches under any write load. How long to wait is the caller's
//! deadline (the rebalancer's `MOVE_TIMEOUT`, carried as the gRPC timeout).

use tonic::Status;

/// Adds `id` as a learner (a no-op when it is one already) and returns once its replica has
/// matched the leader's log up to the index the leader had after the addition.
pub async fn add_caught_up_learner(
    raft: &chorus_raft::Raft,
    id: u64,
    addr: &str,
) -> Result<(), Status> {
    let added = raft
        .add_learner(id, openraft::BasicNode { addr: addr.to_owned() }, false)
        .await
        .map_err(|e| Status::unavailable(format!("adding learner {id}: {e}")))?;
    let mut metrics = raft.metrics();
    // Fixed once the change shows: a moving target might never be reached under writes.
    let mut target = None;
    loop {
        {
            let m = metrics.borrow_and_update();
            // openraft answers the change before it publishes the metrics that show it: wait
            // for those, or the learner would look removed and the target too low.
            let published =
                m.membership_config.log_id().is_some_and(|l| l.index >= added.log_id.index);
            if published {
                let target = *target
                    .get_or_insert_with(|| added.log_id.index.max(m.last_log_index.unwrap_or(0)));
                let Some(replication) = m.replication.as_ref() else {
                    return Err(Status::unavailable(format!(
                        "this node stopped leading while learner {id} caught up"
                    )));
                };
                if m.membership_config.membership().get_node(&id).is_none() {
                    return Err(Status::aborted(format!(
                        "learner {id} was removed while catching up"
                    )));
                }
                // Missing from `replication`: its metrics were not reported yet.
                let matched = replication.get(&id).and_then(Option::as_ref).map_or(0, |l| l.index);
                if matched >= target {
                    return Ok(());
                }
            }
        }
        metrics.changed().await.map_err(|_| {
            Status::unavailable(format!("the group stopped while learner {id} caught up"))
        })?;
    }
}
