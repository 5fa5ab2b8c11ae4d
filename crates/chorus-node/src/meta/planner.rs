//! Which replica to move next: a pure function of the recorded placement and the nodes, so
//! the rebalancer can be restarted anywhere (a new meta leader) and reach the same plan.
//!
//! Rules, in order:
//! 1. A shard with a replica on a node that is draining or not in the record at all gives
//!    it up to the active node with the fewest replicas that does not hold the shard yet.
//! 2. Otherwise, while the most loaded active node holds 2 or more replicas more than the
//!    least loaded one, the lowest shard that the first holds and the second does not moves
//!    between them. With `S × 3` replicas over `n` nodes this ends with every node holding
//!    `⌊3S/n⌋` or `⌈3S/n⌉`.
//!
//! Ties go to the lowest node id, so the plan is deterministic. Among the shards a rule
//! could move, one whose leader is not the node giving up its replica goes first: a leader
//! that removes itself leaves its group leaderless for an election timeout (openraft 0.9 has
//! no leadership transfer).

use std::collections::BTreeMap;

use super::state::{MetaState, Move, REPLICAS};

/// The next move, given the recorded placement and each shard's current leader (shards
/// missing from `leaders` have none known).
pub fn next_move(state: &MetaState, leaders: &BTreeMap<u16, u64>) -> Option<Move> {
    let active = state.active_ids();
    let mut counts: BTreeMap<u64, usize> = active.iter().map(|id| (*id, 0)).collect();
    for voters in &state.placement {
        for id in voters {
            if let Some(c) = counts.get_mut(id) {
                *c += 1;
            }
        }
    }
    // The least loaded active node that may receive a replica of a shard held by `voters`.
    let receiver = |voters: &std::collections::BTreeSet<u64>| {
        counts.iter().filter(|(id, _)| !voters.contains(id)).min_by_key(|(id, c)| (**c, **id))
    };

    let mut drains = Vec::new();
    for (shard, voters) in state.placement.iter().enumerate() {
        let Ok(shard) = u16::try_from(shard) else { break };
        let Some(leaving) = voters.iter().copied().find(|id| !active.contains(id)) else {
            continue;
        };
        if let Some((to, _)) = receiver(voters) {
            drains.push(Move { shard, from: leaving, to: *to });
        }
    }
    if let Some(m) = prefer_followers(&drains, leaders) {
        return Some(m);
    }

    let (most, most_count) = counts.iter().max_by_key(|(id, c)| (**c, std::cmp::Reverse(**id)))?;
    let (least, least_count) = counts.iter().min_by_key(|(id, c)| (**c, **id))?;
    if most_count.saturating_sub(*least_count) < 2 {
        return None;
    }
    let mut candidates = Vec::new();
    for (shard, voters) in state.placement.iter().enumerate() {
        let Ok(shard) = u16::try_from(shard) else { break };
        if voters.contains(most) && !voters.contains(least) && voters.len() == REPLICAS {
            candidates.push(Move { shard, from: *most, to: *least });
        }
    }
    prefer_followers(&candidates, leaders)
}

/// The first move whose source does not lead the shard, else the first.
fn prefer_followers(moves: &[Move], leaders: &BTreeMap<u16, u64>) -> Option<Move> {
    let follower = moves.iter().find(|m| leaders.get(&m.shard) != Some(&m.from));
    follower.or(moves.first()).copied()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::meta::state::{MetaChangeError, NodeStatus};

    fn cluster(nodes: &[u64], shards: u16) -> MetaState {
        let book: BTreeMap<u64, String> =
            nodes.iter().take(3).map(|id| (*id, format!("h{id}:1"))).collect();
        let mut state = MetaState::initial(&book, shards);
        for id in nodes.iter().skip(3) {
            state.add_node(*id, &format!("h{id}:1")).unwrap();
        }
        state
    }

    /// Applies moves until the planner has none; returns how many it made.
    fn settle(state: &mut MetaState) -> usize {
        let mut moves = 0;
        while let Some(m) = next_move(state, &BTreeMap::new()) {
            let voters = &mut state.placement[usize::from(m.shard)];
            assert!(voters.remove(&m.from), "{m:?}: source does not hold the shard");
            assert!(voters.insert(m.to), "{m:?}: target already holds the shard");
            moves += 1;
            assert!(moves < 10_000, "planner does not converge");
        }
        moves
    }

    fn assert_valid(state: &MetaState) {
        for (shard, voters) in state.placement.iter().enumerate() {
            assert_eq!(voters.len(), REPLICAS, "shard {shard}: {voters:?}");
        }
    }

    #[test]
    fn three_nodes_holding_everything_is_balanced() {
        let state = cluster(&[1, 2, 3], 64);
        assert_eq!(next_move(&state, &BTreeMap::new()), None);
    }

    #[test]
    fn a_fourth_node_gets_an_even_share_with_the_fewest_moves() {
        // (shards, nodes) → replicas each node ends with.
        let table: &[(u16, &[u64], &[usize])] = &[
            (64, &[1, 2, 3, 4], &[48, 48, 48, 48]),
            (8, &[1, 2, 3, 4], &[6, 6, 6, 6]),
            (8, &[1, 2, 3, 4, 5], &[5, 5, 5, 5, 4]),
            (64, &[1, 2, 3, 4, 5, 6], &[32, 32, 32, 32, 32, 32]),
            (4, &[1, 2, 3, 9], &[3, 3, 3, 3]),
        ];
        for (shards, nodes, want) in table {
            let mut state = cluster(nodes, *shards);
            let moves = settle(&mut state);
            assert_valid(&state);
            let counts: Vec<usize> = state.replica_counts().values().copied().collect();
            let mut sorted = counts.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(&sorted, want, "{shards} shards over {nodes:?}");
            // Every move lands on a new node: no replica moves twice.
            let new_nodes_share: usize = counts.iter().skip(3).sum();
            assert_eq!(moves, new_nodes_share, "{shards} shards over {nodes:?}");
        }
    }

    #[test]
    fn a_draining_node_loses_every_replica_first() {
        let mut state = cluster(&[1, 2, 3, 4], 8);
        settle(&mut state);
        state.drain_node(1).unwrap();
        let first = next_move(&state, &BTreeMap::new()).unwrap();
        assert_eq!(first.from, 1, "draining goes before balancing");
        settle(&mut state);
        assert_valid(&state);
        let counts = state.replica_counts();
        assert_eq!(counts[&1], 0);
        assert_eq!(counts.values().sum::<usize>(), 24);
        assert!(counts.iter().filter(|(id, _)| **id != 1).all(|(_, c)| *c == 8));
    }

    #[test]
    fn a_replica_that_is_not_the_leader_moves_first() {
        let state = cluster(&[1, 2, 3, 4], 8);
        // Shard s is led by node s % 3 + 1, as a `--peers` cluster starts.
        let leaders: BTreeMap<u16, u64> = (0..8).map(|s| (s, u64::from(s % 3) + 1)).collect();
        let m = next_move(&state, &leaders).unwrap();
        assert_eq!(m.from, 1, "the most loaded node, lowest id");
        assert_eq!(m.to, 4);
        assert_eq!(m.shard, 1, "shard 0 is led by node 1; shard 1 is not");
        // When node 1 leads every shard, a leader's replica has to move.
        let all_one: BTreeMap<u16, u64> = (0..8).map(|s| (s, 1)).collect();
        assert_eq!(next_move(&state, &all_one).unwrap().shard, 0);
        // Draining prefers followers too.
        let mut draining = cluster(&[1, 2, 3, 4], 8);
        draining.drain_node(2).unwrap();
        let m = next_move(&draining, &leaders).unwrap();
        assert_eq!((m.from, m.shard), (2, 0), "shard 0 is led by node 1, not node 2");
    }

    #[test]
    fn a_node_missing_from_the_record_is_moved_off() {
        let mut state = cluster(&[1, 2, 3, 4], 4);
        state.nodes.remove(&3);
        settle(&mut state);
        assert_valid(&state);
        assert!(state.placement.iter().all(|v| !v.contains(&3)));
    }

    #[test]
    fn removal_is_refused_without_three_other_active_nodes() {
        let mut state = cluster(&[1, 2, 3], 8);
        assert!(matches!(state.drain_node(1), Err(MetaChangeError::TooFewNodes { .. })));
        let mut four = cluster(&[1, 2, 3, 4], 8);
        four.drain_node(4).unwrap();
        assert_eq!(four.nodes[&4].status, NodeStatus::Draining);
        assert!(four.drain_node(3).is_err(), "a second drain would leave two active nodes");
        assert_eq!(four.drain_node(9), Err(MetaChangeError::NotMember(9)));
    }

    #[test]
    fn nothing_to_do_when_no_receiver_exists() {
        let mut state = cluster(&[1, 2, 3], 2);
        state.nodes.get_mut(&1).unwrap().status = NodeStatus::Draining;
        assert_eq!(
            next_move(&state, &BTreeMap::new()),
            None,
            "no active node outside the shard can take it"
        );
    }
}
