//! The seeded fault schedule and how each fault is applied to and healed on the cluster.

use std::fmt;
use std::time::Duration;

use anyhow::Result;

use crate::cluster::{Cluster, NODES};
use crate::proxy::{Flow, LinkState};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, restarted when healed.
    Kill(usize),
    /// SIGSTOP, SIGCONT when healed.
    Pause(usize),
    /// Every link to and from the node cut.
    Partition(usize),
    /// Whoever leads shard `group` when the fault starts is partitioned.
    IsolateLeader { group: u32 },
    /// Both directions between two nodes delayed.
    Slow(usize, usize, u64),
    /// `from`'s bytes to `to` stalled (requests on from's link and answers on to's link);
    /// the other direction flows.
    OneWay { from: usize, to: usize },
    /// SIGKILL an edge (its client sessions drop), restarted on the same address when healed.
    KillEdge(usize),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(n) => write!(f, "kill node {}", n + 1),
            Fault::Pause(n) => write!(f, "pause node {}", n + 1),
            Fault::Partition(n) => write!(f, "partition node {}", n + 1),
            Fault::IsolateLeader { group } => write!(f, "isolate leader of shard {group}"),
            Fault::Slow(a, b, ms) => write!(f, "slow link {}<->{} by {ms} ms", a + 1, b + 1),
            Fault::OneWay { from, to } => write!(f, "cut {}->{} one way", from + 1, to + 1),
            Fault::KillEdge(e) => write!(f, "kill edge {}", e + 1),
        }
    }
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::Partition(_) => "partition",
            Fault::IsolateLeader { .. } => "isolate-leader",
            Fault::Slow(..) => "slow",
            Fault::OneWay { .. } => "one-way",
            Fault::KillEdge(_) => "kill-edge",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Step {
    /// Quiet time before the fault starts.
    pub gap_ms: u64,
    pub fault: Fault,
    /// How long it lasts before it is healed.
    pub hold_ms: u64,
}

/// One fault at a time, so a majority is always whole between faults (and, with two edges or
/// more, an edge is always up); each fault still hits leaders, followers and links at random.
/// With edges, `kill-edge` is one kind among seven, as likely as each of the others.
pub fn schedule(
    seed: u64,
    faults: usize,
    shards: u16,
    edges: usize,
    max_hold_ms: u64,
    max_gap_ms: u64,
) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let kinds = if edges > 0 { 7 } else { 6 };
    (0..faults)
        .map(|_| {
            let node = rng.below(NODES);
            let other = (node + 1 + rng.below(NODES - 1)) % NODES;
            let fault = match rng.below(kinds) {
                0 => Fault::Kill(node),
                1 => Fault::Pause(node),
                2 => Fault::Partition(node),
                3 => Fault::IsolateLeader { group: rng.below(shards as usize) as u32 },
                4 => Fault::Slow(node, other, rng.range(20, 250)),
                5 => Fault::OneWay { from: node, to: other },
                _ => Fault::KillEdge(rng.below(edges)),
            };
            Step {
                gap_ms: rng.range(300, max_gap_ms.max(301)),
                fault,
                hold_ms: rng.range(800, max_hold_ms.max(801)),
            }
        })
        .collect()
}

const CUT: LinkState = LinkState { cut: true, forward: Flow::Pass, backward: Flow::Pass };

/// Node `n` cut off from the other nodes and from every edge.
fn partition(cluster: &Cluster, n: usize) {
    for j in (0..NODES).filter(|j| *j != n) {
        cluster.set_pair(n, j, CUT);
    }
    cluster.set_edges_to(n, CUT);
}

/// Who leads `group`, asked of the nodes in turn (the first that knows).
async fn leader_of(cluster: &Cluster, group: u32) -> Option<usize> {
    for i in 0..NODES {
        if !cluster.is_up(i) || cluster.nodes[i].paused {
            continue;
        }
        if let Ok(st) = cluster.status(i).await
            && let Some(g) = st.groups.iter().find(|g| g.group == group && g.leader != 0)
        {
            return cluster.nodes.iter().position(|n| n.id == g.leader);
        }
    }
    None
}

/// Starts `fault`; returns the node it actually hit when that is decided now.
pub async fn inject(cluster: &mut Cluster, fault: Fault) -> Result<Option<usize>> {
    match fault {
        Fault::Kill(n) => cluster.kill(n).await?,
        Fault::Pause(n) => cluster.pause(n)?,
        Fault::Partition(n) => partition(cluster, n),
        Fault::IsolateLeader { group } => {
            let n = leader_of(cluster, group).await.unwrap_or(0);
            partition(cluster, n);
            return Ok(Some(n));
        }
        Fault::Slow(a, b, ms) => {
            let d = Flow::Delay(Duration::from_millis(ms));
            cluster.set_pair(a, b, LinkState { cut: false, forward: d, backward: d });
        }
        Fault::OneWay { from, to } => cluster.set_pair(
            from,
            to,
            LinkState { cut: false, forward: Flow::Stall, backward: Flow::Pass },
        ),
        Fault::KillEdge(e) => cluster.kill_edge(e).await?,
    }
    Ok(None)
}

/// Undoes every fault: links whole, stopped nodes continued, dead nodes and edges restarted.
pub async fn heal(cluster: &mut Cluster) -> Result<()> {
    cluster.heal_links();
    for i in 0..NODES {
        cluster.resume(i)?;
        if !cluster.is_up(i) {
            cluster.spawn(i).await?;
        }
    }
    for e in 0..cluster.edges.len() {
        if !cluster.edge_is_up(e) {
            cluster.spawn_edge(e).await?;
        }
    }
    Ok(())
}
