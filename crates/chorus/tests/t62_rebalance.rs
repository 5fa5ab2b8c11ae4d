//! The meta group and rebalancing with real `chorus node` processes: a 4th node joins and
//! `chorus admin add-node` gives it an even share of the shard replicas; `remove-node` drains
//! a node of every replica and takes it out of the meta group. Writers post the whole time,
//! and every acknowledged post ends up exactly once, at its acknowledged ordinal, on every
//! current replica of its stream, with identical copies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_types::shard::shard_of;
use chorus_types::{PublisherId, StreamKey, StreamName};
use common::cluster::{Cluster, admin_cli};
use common::edge::Edge;
use common::enc;
use serde_json::{Value, json};

const FAST_RAFT: &str = "[raft]\nheartbeat_ms = 50\nelection_min_ms = 300\nelection_max_ms = 600\n";
const SHARDS: u16 = 8;
const STREAMS: usize = 8;

fn stream_name(s: usize) -> String {
    format!("Chat/rebalance/{s}")
}

fn shard_of_stream(s: usize) -> u16 {
    let key = StreamKey::new(
        PublisherId::new("alice").unwrap(),
        StreamName::new(stream_name(s)).unwrap(),
    );
    shard_of(&key, SHARDS).0
}

/// Starts node 4 with `--join` (knowing only itself and node 2) and adds it through node 2,
/// which forwards to the meta leader. Returns its member index and peer address.
async fn join_node_4(cluster: &mut Cluster) -> (usize, String) {
    let new = cluster.add_member(4);
    let peers = cluster.peers_of(&[1, new]);
    cluster.spawn_with(new, &peers, &["--join"]);
    let new_addr = cluster.members[new].peer.clone();
    let (ok, text) =
        admin_cli(&cluster.members[1].peer, &["add-node", "--id", "4", "--addr", &new_addr]).await;
    assert!(ok, "add-node failed: {text}");
    (new, new_addr)
}

/// Each shard's voter set as its leader reports it (asking every running member), with
/// whether the leader is in a joint change. Shards without a known leader are missing.
async fn actual_voters(cluster: &Cluster) -> BTreeMap<u32, (BTreeSet<u64>, bool)> {
    let mut best: BTreeMap<u32, (u64, BTreeSet<u64>, bool)> = BTreeMap::new();
    for i in 0..cluster.members.len() {
        if !cluster.is_up(i) {
            continue;
        }
        let status = cluster.status(i).await;
        for g in status.groups.iter().filter(|g| g.leader == status.node_id) {
            let seen = (g.term, g.voters.iter().copied().collect(), g.joint);
            if best.get(&g.group).is_none_or(|b| b.0 < g.term) {
                best.insert(g.group, seen);
            }
        }
    }
    best.into_iter().map(|(g, (_, v, j))| (g, (v, j))).collect()
}

/// Replicas per node over the real voter sets, when every shard has a settled 3-voter set.
async fn settled_spread(cluster: &Cluster) -> Option<BTreeMap<u64, usize>> {
    let actual = actual_voters(cluster).await;
    if actual.len() != usize::from(SHARDS) {
        return None;
    }
    let mut spread = BTreeMap::new();
    for (voters, joint) in actual.values() {
        if *joint || voters.len() != 3 {
            return None;
        }
        for id in voters {
            *spread.entry(*id).or_insert(0) += 1;
        }
    }
    Some(spread)
}

/// The meta record as member `i` sees it: node → (status, replicas), and moves in progress.
async fn meta_view(cluster: &Cluster, i: usize) -> (BTreeMap<u64, (String, u32)>, usize, u64) {
    let meta = cluster.status(i).await.meta.unwrap_or_default();
    let nodes = meta.nodes.iter().map(|n| (n.id, (n.status.clone(), n.replicas))).collect();
    (nodes, meta.moving.len(), meta.leader)
}

/// Waits (up to 120 s) until the real placement gives each node the replicas in `want`, and
/// member `i`'s copy of the meta record agrees with nothing left moving.
async fn wait_for_spread(cluster: &Cluster, i: usize, want: &BTreeMap<u64, usize>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let spread = settled_spread(cluster).await;
        let (meta, moving, _) = meta_view(cluster, i).await;
        let recorded: BTreeMap<u64, usize> =
            meta.iter().map(|(id, (_, r))| (*id, *r as usize)).collect();
        if spread.as_ref() == Some(want) && recorded == *want && moving == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "placement did not settle to {want:?}: actual {spread:?}, recorded {meta:?}, moving {moving}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The API base URLs of members `via`, plus `extra` (an edge).
fn urls(cluster: &Cluster, via: &[usize], extra: &[&str]) -> Vec<String> {
    let nodes = via.iter().map(|i| format!("http://{}", cluster.members[*i].api));
    nodes.chain(extra.iter().map(|e| format!("http://{e}"))).collect()
}

/// Acknowledged posts by (target URL, stream).
type PerTarget = BTreeMap<(String, usize), usize>;

/// Writers post continuously, each to its own stream, until told to stop.
struct Writers {
    targets: Arc<Mutex<Vec<String>>>,
    acked: Arc<AtomicUsize>,
    /// Acknowledged posts per target URL: shows that each path (a joined node, an edge)
    /// really carried writes rather than failing over to another.
    by_target: Arc<Mutex<PerTarget>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
}

impl Writers {
    /// Writers posting through the APIs at `targets` (base URLs of nodes or edges).
    fn start(targets: Vec<String>) -> Writers {
        let targets = Arc::new(Mutex::new(targets));
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let by_target = Arc::new(Mutex::new(BTreeMap::new()));
        let tasks = (0..STREAMS)
            .map(|s| {
                let counts = (acked.clone(), by_target.clone());
                tokio::spawn(writer(targets.clone(), s, counts, stop.clone()))
            })
            .collect();
        Writers { targets, acked, by_target, stop, tasks }
    }

    fn route_via(&self, targets: Vec<String>) {
        *self.targets.lock().unwrap() = targets;
    }

    /// Waits until `more` posts beyond now are acknowledged.
    async fn wait_for_progress(&self, more: usize) {
        let goal = self.acked.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked.load(Ordering::SeqCst) < goal {
            assert!(Instant::now() < deadline, "posts are not flowing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Posts to stream `s` acknowledged through `target` (`host:port`).
    fn acked_via(&self, target: &str, s: usize) -> usize {
        let key = (format!("http://{target}"), s);
        self.by_target.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    /// Waits until every stream has had a post acknowledged through `target`.
    async fn wait_for_each_via(&self, target: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while (0..STREAMS).any(|s| self.acked_via(target, s) == 0) {
            assert!(Instant::now() < deadline, "posts through {target} are not flowing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Vec<BTreeMap<String, u64>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.expect("writer"));
        }
        out
    }
}

/// One sequential writer: its k-th post (from 0) has content `k` and clientMsgId `w{s}-{k}`,
/// and is retried with the same id, on the next node, until acknowledged. Returns
/// clientMsgId → acknowledged ordinal.
async fn writer(
    targets: Arc<Mutex<Vec<String>>>,
    s: usize,
    (acked, by_target): (Arc<AtomicUsize>, Arc<Mutex<PerTarget>>),
    stop: Arc<AtomicBool>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let path = format!("/v1/streams/alice/{}/messages", enc(&stream_name(s)));
    let mut node = s;
    for k in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let id = format!("w{s}-{k}");
        let target = |n: usize| {
            let targets = targets.lock().unwrap();
            Some(targets[n % targets.len()].clone())
        };
        let (base, ordinal) =
            common::cluster::post_until_acked(target, &mut node, &path, &id, &k.to_string()).await;
        out.insert(id, ordinal);
        acked.fetch_add(1, Ordering::SeqCst);
        *by_target.lock().unwrap().entry((base, s)).or_default() += 1;
    }
    out
}

/// Member `i`'s copy of stream `s` once it holds `count` messages (it may lag its leader by a
/// moment), checked: ordinals gap-free from 1, every acknowledged post once at its ordinal.
async fn checked_copy(
    cluster: &Cluster,
    i: usize,
    s: usize,
    acks: &BTreeMap<String, u64>,
) -> Vec<Value> {
    let count = acks.len() + 1;
    let node = cluster.members[i].id;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (n, messages) = loop {
        let (n, messages) = cluster.local_messages(i, "alice", &stream_name(s)).await;
        if messages.len() >= count || Instant::now() > deadline {
            break (n, messages);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(messages.len(), count, "node {node} stream {s}: {} messages", messages.len());
    assert_eq!(n, count as u64, "node {node} stream {s}: messageCount");
    assert_eq!(messages[0]["type"], json!("Streams/created"));
    let mut seen = BTreeMap::new();
    for (idx, m) in messages.iter().enumerate() {
        assert_eq!(m["ordinal"], json!(idx as u64 + 1), "node {node} stream {s}: gap");
        if idx == 0 {
            continue;
        }
        let id = m["clientMsgId"].as_str().expect("clientMsgId").to_owned();
        assert!(seen.insert(id.clone(), idx as u64 + 1).is_none(), "node {node}: duplicate {id}");
        assert_eq!(m["content"], json!((idx - 1).to_string()), "node {node} stream {s}: order");
    }
    for (id, ordinal) in acks {
        assert_eq!(seen.get(id), Some(ordinal), "node {node}: acked {id} missing or moved");
    }
    messages
}

/// A 3-node cluster (`--peers`) with the test's streams created.
async fn cluster_with_streams() -> Cluster {
    let cluster = Cluster::start(3, SHARDS, FAST_RAFT);
    let app = cluster.api(0, None);
    for s in 0..STREAMS {
        let body = json!({"publisherId": "alice", "name": stream_name(s), "type": "Chat/room"});
        let (status, body) = app.call("POST", "/v1/streams", Some(body)).await;
        assert_eq!(status, 201, "create: {body}");
    }
    cluster
}

/// Property: adding a node moves an even share of replicas to it (8 shards × 3 over 4 nodes
/// = 6 each) and removing one moves all of its replicas away (8 each on the other 3), one
/// shard at a time, while writes continue; nothing acknowledged is lost or duplicated, and
/// every current replica of a stream holds the same gap-free log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_and_removing_a_node_rebalances_replicas_without_losing_writes() {
    let mut cluster = cluster_with_streams().await;
    // A `--peers` cluster records every node holding every shard.
    let three = BTreeMap::from([(1, 8), (2, 8), (3, 8)]);
    wait_for_spread(&cluster, 2, &three).await;
    // An edge that knows only the first three nodes: it reaches shards led by node 4 through
    // them.
    let edge = Edge::start(&cluster, &[]);
    let edge_addr = edge.addr.clone();

    let writers = Writers::start(urls(&cluster, &[0, 1, 2], &[&edge_addr]));
    writers.wait_for_progress(30).await;

    // Node 4 joins (knowing only itself and node 2) and is added through node 2, which
    // forwards to the meta leader.
    let (new, new_addr) = join_node_4(&mut cluster).await;
    let four = BTreeMap::from([(1, 6), (2, 6), (3, 6), (4, 6)]);
    wait_for_spread(&cluster, new, &four).await;
    cluster.wait_ready(new);

    // Every stream is posted to through node 4: it leads some of their shards, follows
    // others, and holds no replica of the rest (it forwards those to a node that does).
    let actual = actual_voters(&cluster).await;
    let elsewhere =
        (0..STREAMS).filter(|s| !actual[&u32::from(shard_of_stream(*s))].0.contains(&4));
    assert!(elsewhere.count() > 0, "no stream on a shard node 4 does not hold");
    let api4 = cluster.members[new].api.clone();
    writers.route_via(urls(&cluster, &[new], &[]));
    writers.wait_for_each_via(&api4).await;
    writers.route_via(urls(&cluster, &[0, 1, 2, new], &[&edge_addr]));
    writers.wait_for_progress(40).await;

    // Node 1 (a meta voter, probably its leader) is drained and removed, asked through
    // node 4. Traffic moves off it first, as an operator would.
    writers.route_via(urls(&cluster, &[1, 2, new], &[&edge_addr]));
    let (ok, text) = admin_cli(&new_addr, &["remove-node", "--id", "1"]).await;
    assert!(ok, "remove-node failed: {text}");
    // A second removal would leave two active nodes: refused.
    let (ok, text) = admin_cli(&new_addr, &["remove-node", "--id", "2"]).await;
    assert!(!ok && text.contains("would leave 2 active nodes"), "second removal: {text}");
    let without_one = BTreeMap::from([(2, 8), (3, 8), (4, 8)]);
    wait_for_spread(&cluster, new, &without_one).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let meta = cluster.status(new).await.meta.unwrap_or_default();
        let voters: BTreeSet<u64> = meta.voters.iter().copied().collect();
        if voters == BTreeSet::from([2, 3, 4]) && meta.leader != 0 && meta.leader != 1 {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 still in the meta group: {meta:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writers.wait_for_progress(40).await;
    // Node 1 still runs, holding no replica: it forwards every stream to a node that does.
    let api1 = cluster.members[0].api.clone();
    writers.route_via(urls(&cluster, &[0], &[]));
    writers.wait_for_each_via(&api1).await;
    // And every stream through the edge, which knows only nodes 1-3 (1 now drained).
    writers.route_via(urls(&cluster, &[], &[&edge_addr]));
    writers.wait_for_each_via(&edge_addr).await;
    let acked = writers.stop().await;

    // `status` shows the meta leader, each node's status and replicas, and no moves.
    let (ok, text) = admin_cli(&cluster.members[2].peer, &["status"]).await;
    assert!(ok, "status failed: {text}");
    assert!(text.contains("meta group: leader"), "{text}");
    assert!(text.contains("moving: nothing"), "{text}");
    assert!(!text.contains("draining"), "node 1 is still listed: {text}");

    // Every stream, on every current replica of its shard.
    let actual = actual_voters(&cluster).await;
    for (s, acks) in acked.iter().enumerate() {
        assert!(!acks.is_empty(), "stream {s} got no posts");
        let (voters, _) = &actual[&u32::from(shard_of_stream(s))];
        assert!(!voters.contains(&1), "stream {s}: node 1 still holds it");
        let mut copies = Vec::new();
        for id in voters {
            copies.push(checked_copy(&cluster, cluster.index_of(*id), s, acks).await);
        }
        assert!(copies.windows(2).all(|w| w[0] == w[1]), "stream {s}: replicas differ");
    }
    let total: usize = acked.iter().map(BTreeMap::len).sum();
    assert!(total >= 110, "only {total} posts acknowledged");
}

/// Property: the rebalancer keeps no state of its own. Node 4 is added while it is not yet
/// running, so the first move hangs (recorded in the meta group as under way); the meta
/// leader is then killed. A new meta leader recomputes the plan from the record and the
/// shards' real voter sets and, once node 4 runs, finishes the rebalance; the old leader
/// rejoins as an ordinary member. Writes go on throughout and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_meta_leader_finishes_a_rebalance_the_old_one_started() {
    let mut cluster = cluster_with_streams().await;
    wait_for_spread(&cluster, 0, &BTreeMap::from([(1, 8), (2, 8), (3, 8)])).await;
    let writers = Writers::start(urls(&cluster, &[0, 1, 2], &[]));
    writers.wait_for_progress(20).await;

    let new = cluster.add_member(4);
    let new_addr = cluster.members[new].peer.clone();
    let (ok, text) =
        admin_cli(&cluster.members[0].peer, &["add-node", "--id", "4", "--addr", &new_addr]).await;
    assert!(ok, "add-node failed: {text}");
    // The first move waits for node 4 to catch up, which it cannot: it does not run. (A node
    // holding nothing must never be made a voter: the group would survive one failure fewer.)
    let deadline = Instant::now() + Duration::from_secs(30);
    let meta_leader = loop {
        let (meta, moving, leader) = meta_view(&cluster, 0).await;
        if moving == 1 && leader != 0 {
            break leader;
        }
        assert!(
            Instant::now() < deadline,
            "no move recorded as under way: moving {moving}, leader {leader}, nodes {meta:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (group, (voters, _)) in actual_voters(&cluster).await {
        assert!(!voters.contains(&4), "group {group} took node 4, which never ran, as a voter");
    }
    let victim = cluster.index_of(meta_leader);
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    writers.route_via(urls(&cluster, &others, &[]));
    cluster.kill(victim);

    // Another node takes over the meta group; node 4 starts, and the rebalance completes
    // without the old leader (its replicas are counted from the record until it is back).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, leader) = meta_view(&cluster, others[0]).await;
        if leader != 0 && leader != meta_leader {
            break;
        }
        assert!(Instant::now() < deadline, "no new meta leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peers = cluster.peers_of(&[others[0], new]);
    cluster.spawn_with(new, &peers, &["--join"]);
    writers.wait_for_progress(20).await;
    // It restarts with the `--peers` the cluster was formed with.
    let original = cluster.peers_of(&[0, 1, 2]);
    cluster.spawn_with(victim, &original, &[]);
    cluster.wait_ready(victim);
    writers.route_via(urls(&cluster, &[0, 1, 2, new], &[]));
    let four = BTreeMap::from([(1, 6), (2, 6), (3, 6), (4, 6)]);
    wait_for_spread(&cluster, victim, &four).await;
    writers.wait_for_progress(20).await;
    let acked = writers.stop().await;

    let actual = actual_voters(&cluster).await;
    for (s, acks) in acked.iter().enumerate() {
        let (voters, _) = &actual[&u32::from(shard_of_stream(s))];
        let mut copies = Vec::new();
        for id in voters {
            copies.push(checked_copy(&cluster, cluster.index_of(*id), s, acks).await);
        }
        assert!(copies.windows(2).all(|w| w[0] == w[1]), "stream {s}: replicas differ");
    }
}

/// Property: an edge learns the cluster's nodes from the meta record its nodes report (the
/// same path brings it a joined node). Started knowing only node 2, it keeps serving every
/// stream once node 2 is killed (after node 4 joined and took its share), through the nodes
/// it learned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_learns_the_nodes_from_the_meta_record() {
    let mut cluster = cluster_with_streams().await;
    // The record exists before the edge starts, so its first poll of node 2 (at start) finds
    // nodes 1 and 3 in it.
    wait_for_spread(&cluster, 1, &BTreeMap::from([(1, 8), (2, 8), (3, 8)])).await;
    let edge = Edge::start_with_nodes(&cluster.members[1].peer, &[]);
    join_node_4(&mut cluster).await;
    wait_for_spread(&cluster, 1, &BTreeMap::from([(1, 6), (2, 6), (3, 6), (4, 6)])).await;

    // Posts flow through the edge (so it is up and has polled node 2), then node 2 goes.
    let writers = Writers::start(urls(&cluster, &[], &[&edge.addr]));
    writers.wait_for_progress(STREAMS).await;
    cluster.kill(1);
    writers.wait_for_each_via(&edge.addr).await;
    let goal = STREAMS * 3;
    writers.wait_for_progress(goal).await;
    let acked = writers.stop().await;
    let total: usize = acked.iter().map(BTreeMap::len).sum();
    assert!(total >= goal, "only {total} posts acknowledged");
}
