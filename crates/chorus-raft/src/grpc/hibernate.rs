//! Hibernating idle groups: a shard with no writes costs no heartbeats.
//!
//! With 64 groups per node each leader heartbeating two followers every tick, an idle cluster
//! spent ~12 % of a core per node on wake-ups alone. Here one controller per node looks at
//! every group [`CHECK_EVERY`] and switches openraft's ticker (which drives both the leader's
//! heartbeats and the follower's election timer) on only where it is needed:
//!
//! - **Leader**: ticking while the group is busy — its log grew within [`IDLE`], a live
//!   follower lags, its membership is changing, a reader waits on its read barrier, or a peer
//!   came back up within [`IDLE`] (so a restarted follower learns its leader before its own
//!   election timer fires). Otherwise it stops: followers already hold every entry and its
//!   commit index (the ticks during [`IDLE`] carried it). A write needs no wake-up: openraft
//!   replicates new entries at once, ticker or not, and the controller sees the log grow.
//! - **Follower**: no ticker while its leader's node is up and, at its last ping, named the
//!   group among those it leads ([`Liveness::leads`]); the ticker (and so Raft's election
//!   timeout) comes back as soon as that stops being true. Safety never depends on this:
//!   it only decides when a node may campaign, and every election is an ordinary Raft vote.
//! - **Fast failover**: once the leader's node has been silent for the leader lease (the
//!   time its followers keep rejecting votes), one follower — the lowest live voter id, so
//!   the two do not split the vote — campaigns at once rather than waiting out a randomized
//!   election timeout on top of the lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_proto::pb;
use openraft::ServerState;
use tokio::task::JoinHandle;

use super::liveness::{Liveness, PING_EVERY, PING_TIMEOUT};
use super::{GroupTable, PeerPool};

/// How often every group is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// A leader keeps ticking this long after its log last grew.
const IDLE: Duration = Duration::from_secs(2);

/// One group's controller state.
struct Watch {
    last_log: u64,
    grew: Instant,
    ticking: Option<bool>,
    campaigned: Option<Instant>,
}

/// What the controller reads from a group's metrics each round.
struct Seen {
    leader: bool,
    current_leader: Option<u64>,
    last_log: u64,
    /// Followers (by id) whose matched index is behind the last log index.
    lagging: Vec<u64>,
    changing: bool,
    voters: Vec<u64>,
}

fn see(raft: &crate::Raft) -> Seen {
    let m = raft.metrics();
    let m = m.borrow();
    let last_log = m.last_log_index.unwrap_or(0);
    let lagging = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(_, matched)| matched.map_or(0, |l| l.index) < last_log)
                .map(|(id, _)| *id)
                .collect()
        })
        .unwrap_or_default();
    let membership = m.membership_config.membership();
    Seen {
        leader: m.state == ServerState::Leader,
        current_leader: m.current_leader,
        last_log,
        lagging,
        changing: membership.get_joint_config().len() > 1
            || membership.learner_ids().next().is_some(),
        voters: membership.voter_ids().collect(),
    }
}

/// Starts the pingers and the controller for this node's groups. `lease` is openraft's leader
/// lease (`election_timeout_max`). Abort the handle to stop both.
pub fn start(
    me: u64,
    table: Arc<GroupTable>,
    pool: Arc<PeerPool>,
    lease: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut pingers = Pingers::default();
        let mut watches: HashMap<u16, Watch> = HashMap::new();
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let groups = table.all();
            let current = peers(me, &groups);
            // A node no group names any more (removed from the cluster) is no longer pinged.
            pingers.0.retain(|id, p| {
                let keep = current.contains_key(id);
                if !keep {
                    p.abort();
                }
                keep
            });
            for (id, addr) in current {
                let addr = pool.address_of(id, &addr).to_owned();
                pingers
                    .0
                    .entry(id)
                    .or_insert_with(|| tokio::spawn(ping(me, id, addr, pool.clone())));
            }
            let now = Instant::now();
            for (group, raft) in &groups {
                let seen = see(raft);
                let w = watches.entry(*group).or_insert(Watch {
                    last_log: seen.last_log,
                    grew: now,
                    ticking: None,
                    campaigned: None,
                });
                if seen.last_log != w.last_log {
                    w.last_log = seen.last_log;
                    w.grew = now;
                }
                let tick = want_tick(me, *group, &seen, w, pool.liveness(), pool.is_hot(*group));
                if w.ticking != Some(tick) {
                    raft.runtime_config().tick(tick);
                    w.ticking = Some(tick);
                }
                if fast_failover(me, &seen, w, pool.liveness(), lease) {
                    w.campaigned = Some(now);
                    let raft = raft.clone();
                    tokio::spawn(async move {
                        if let Err(e) = raft.trigger().elect().await {
                            tracing::debug!(error = %e, "campaign refused");
                        }
                    });
                    tracing::info!(group, leader = ?seen.current_leader, "leader's node is down; campaigning");
                }
            }
            crate::metrics::set_hibernating(
                watches.values().filter(|w| w.ticking == Some(false)).count(),
            );
        }
    })
}

/// The pinger of each peer, by node id; stopped with the controller (aborted at shutdown).
#[derive(Default)]
struct Pingers(HashMap<u64, JoinHandle<()>>);

impl Drop for Pingers {
    fn drop(&mut self) {
        for (_, p) in self.0.drain() {
            p.abort();
        }
    }
}

fn want_tick(me: u64, group: u16, seen: &Seen, w: &Watch, liveness: &Liveness, hot: bool) -> bool {
    if seen.leader {
        // A leader that a committed membership change removed steps down on a tick, so it
        // must keep ticking until it has.
        return !seen.voters.contains(&me)
            || w.grew.elapsed() < IDLE
            || seen.lagging.iter().any(|id| liveness.is_alive(*id))
            || seen.changing
            || hot
            || liveness.revived_within(IDLE);
    }
    if !seen.voters.contains(&me) {
        // A learner never campaigns.
        return false;
    }
    // A leader outside the voters is on its way out (removed by a membership change): the
    // followers' election timers must run.
    let trusted = seen
        .current_leader
        .is_some_and(|l| l != me && seen.voters.contains(&l) && liveness.leads(l, group));
    !trusted
}

/// Whether this node should campaign now for a group whose leader's node went silent.
fn fast_failover(me: u64, seen: &Seen, w: &Watch, liveness: &Liveness, lease: Duration) -> bool {
    let Some(leader) = seen.current_leader else { return false };
    if seen.leader || leader == me || !seen.voters.contains(&me) {
        return false;
    }
    if liveness.silent_for(leader).is_none_or(|s| s < lease) {
        return false;
    }
    if w.campaigned.is_some_and(|t| t.elapsed() < lease) {
        return false;
    }
    // The lowest live voter other than the silent leader goes first; the others keep their
    // (now ticking) election timers as the fallback.
    let first = seen
        .voters
        .iter()
        .copied()
        .filter(|id| *id != leader && (*id == me || liveness.is_alive(*id)))
        .min();
    first == Some(me)
}

/// Every other node in any group's membership, with the address Raft membership gives it.
fn peers(me: u64, groups: &[(u16, crate::Raft)]) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for (_, raft) in groups {
        let m = raft.metrics();
        let m = m.borrow();
        for (id, node) in m.membership_config.membership().nodes() {
            if *id != me {
                out.entry(*id).or_insert_with(|| node.addr.clone());
            }
        }
    }
    out
}

async fn ping(me: u64, id: u64, addr: String, pool: Arc<PeerPool>) {
    let mut every = tokio::time::interval(PING_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Ok(conn) = pool.get(&addr) else { continue };
        let mut client = conn.client();
        let reply =
            tokio::time::timeout(PING_TIMEOUT, client.ping(pb::PingRequest { from: me })).await;
        if let Ok(Ok(reply)) = reply {
            let reply = reply.into_inner();
            let leading = reply.leading.iter().filter_map(|g| u16::try_from(*g).ok()).collect();
            pool.liveness().pinged(id, leading);
        }
    }
}
