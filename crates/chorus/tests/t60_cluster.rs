//! Three real `chorus node` processes over real gRPC: a post is acknowledged only when a
//! quorum has it, so SIGKILL of a shard leader under load loses nothing acknowledged, and
//! ordinals stay gap-free on every replica; a restarted node catches up from the log, or from
//! a snapshot when it fell behind the purged log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::enc;
use serde_json::{Value, json};

const FAST_RAFT: &str = "[raft]\nheartbeat_ms = 50\nelection_min_ms = 300\nelection_max_ms = 600\n";

fn stream_name(s: usize) -> String {
    format!("Chat/load/{s}")
}

async fn create_streams(cluster: &Cluster, n: usize) {
    let app = cluster.api(0, None);
    for s in 0..n {
        let (status, body) = app
            .call(
                "POST",
                "/v1/streams",
                Some(json!({"publisherId": "alice", "name": stream_name(s), "type": "Chat/room"})),
            )
            .await;
        assert_eq!(status, 201, "create: {body}");
    }
}

/// Posts `count` messages to stream `s` one after another (a sequential client), each with
/// its own clientMsgId and retried with the same id on any failure, against whichever nodes
/// are up. Returns clientMsgId → acknowledged ordinal.
/// One sequential writer per stream, posting to the members other than `down`.
fn spawn_writers(
    cluster: &Cluster,
    down: usize,
    streams: usize,
    per_stream: usize,
) -> Vec<tokio::task::JoinHandle<BTreeMap<String, u64>>> {
    let nodes: Vec<(String, bool)> = cluster
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("http://{}", m.api), i != down))
        .collect();
    let nodes = Arc::new(Mutex::new(nodes));
    let acked = Arc::new(AtomicUsize::new(0));
    (0..streams)
        .map(|s| tokio::spawn(sequential_writer(nodes.clone(), s, per_stream, acked.clone())))
        .collect()
}

async fn sequential_writer(
    cluster: Arc<Mutex<Vec<(String, bool)>>>,
    s: usize,
    count: usize,
    acked: Arc<AtomicUsize>,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let path = format!("/v1/streams/alice/{}/messages", enc(&stream_name(s)));
    let mut node = s;
    for k in 0..count {
        let id = format!("w{s}-{k}");
        let target = |n: usize| {
            let nodes = cluster.lock().unwrap();
            let (base, up) = nodes[n % nodes.len()].clone();
            up.then_some(base)
        };
        let (_, ordinal) =
            common::cluster::post_until_acked(target, &mut node, &path, &id, &k.to_string()).await;
        out.insert(id, ordinal);
        acked.fetch_add(1, Ordering::SeqCst);
    }
    out
}

/// Waits until member `i` holds every stream's `Streams/created` plus `count` posts, then checks
/// its copy: ordinals gap-free from 1, every acknowledged post once at its ordinal, each
/// writer's posts in the order it sent them.
async fn check_replica(
    cluster: &Cluster,
    i: usize,
    acked: &[BTreeMap<String, u64>],
    posts: usize,
) -> Vec<Vec<Value>> {
    let count = posts + 1;
    let mut copies = Vec::new();
    for (s, acks) in acked.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (n, messages) = loop {
            let (n, messages) = cluster.local_messages(i, "alice", &stream_name(s)).await;
            if messages.len() >= count || Instant::now() > deadline {
                break (n, messages);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let node = cluster.members[i].id;
        assert_eq!(messages.len(), count, "node {node} stream {s}: {} messages", messages.len());
        assert_eq!(n, count as u64, "node {node} stream {s}: messageCount");
        let mut seen = BTreeMap::new();
        assert_eq!(messages[0]["type"], json!("Streams/created"));
        for (idx, m) in messages.iter().enumerate() {
            assert_eq!(m["ordinal"], json!(idx as u64 + 1), "node {node} stream {s}: gap");
            if idx == 0 {
                continue;
            }
            let id = m["clientMsgId"].as_str().expect("clientMsgId").to_owned();
            assert!(seen.insert(id.clone(), idx as u64 + 1).is_none(), "duplicate {id}");
            // The writer is sequential: its k-th post (from 0) has ordinal k+2.
            assert_eq!(m["content"], json!((idx - 1).to_string()), "node {node} stream {s}: order");
        }
        for (id, ordinal) in acks {
            assert_eq!(seen.get(id), Some(ordinal), "node {node}: acked {id} missing or moved");
        }
        copies.push(messages);
    }
    copies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_shard_leader_under_load_loses_nothing_acknowledged() {
    const STREAMS: usize = 6;
    const PER_STREAM: usize = 40;
    let mut cluster = Cluster::start(3, 8, FAST_RAFT);
    create_streams(&cluster, STREAMS).await;
    let nodes: Vec<(String, bool)> =
        cluster.members.iter().map(|m| (format!("http://{}", m.api), true)).collect();
    let nodes = Arc::new(Mutex::new(nodes));
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..STREAMS)
        .map(|s| tokio::spawn(sequential_writer(nodes.clone(), s, PER_STREAM, acked.clone())))
        .collect();

    // Once a third is acknowledged, SIGKILL the leader of stream 0's shard.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < STREAMS * PER_STREAM / 3 {
        assert!(Instant::now() < deadline, "posts are not flowing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = cluster.status(0).await;
    let busiest = status.groups.iter().max_by_key(|g| g.last_log_index).expect("groups");
    let victim = cluster.index_of(busiest.leader);
    nodes.lock().unwrap()[victim].1 = false;
    cluster.kill(victim);
    let acked_at_kill = acked.load(Ordering::SeqCst);

    let mut results = Vec::new();
    for w in writers {
        results.push(w.await.expect("writer"));
    }
    assert!(acked.load(Ordering::SeqCst) > acked_at_kill, "writes continued after the kill");

    // Every acknowledged post is on both survivors, once, in order.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let a = check_replica(&cluster, survivors[0], &results, PER_STREAM).await;
    let b = check_replica(&cluster, survivors[1], &results, PER_STREAM).await;
    assert_eq!(a, b, "survivors differ");

    // The killed node comes back and catches up from the log.
    cluster.spawn(victim);
    cluster.wait_ready(victim);
    let c = check_replica(&cluster, victim, &results, PER_STREAM).await;
    assert_eq!(a, c, "restarted node differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_purged_log_catches_up_from_a_snapshot() {
    const STREAMS: usize = 4;
    const PER_STREAM: usize = 250;
    let config = format!("{FAST_RAFT}snapshot_every_logs = 100\n");
    let mut cluster = Cluster::start(3, 4, &config);
    create_streams(&cluster, STREAMS).await;
    let before = cluster.status(2).await;
    let behind: BTreeMap<u32, u64> =
        before.groups.iter().map(|g| (g.group, g.last_log_index)).collect();
    cluster.kill(2);

    let writers = spawn_writers(&cluster, 2, STREAMS, PER_STREAM);
    let mut results = Vec::new();
    for w in writers {
        results.push(w.await.expect("writer"));
    }

    // Some shard's leader has purged its log past where node 3 stopped: only a snapshot can
    // bring node 3 back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status(0).await;
        let purged_past = status
            .groups
            .iter()
            .any(|g| g.leader != 0 && g.purged > behind.get(&g.group).copied().unwrap_or(0));
        let leaders_purged = {
            let mut any = purged_past;
            for i in 0..2 {
                let st = cluster.status(i).await;
                any |= st.groups.iter().any(|g| {
                    g.leader == st.node_id && g.purged > behind.get(&g.group).copied().unwrap_or(0)
                });
            }
            any
        };
        if leaders_purged {
            break;
        }
        assert!(Instant::now() < deadline, "no leader purged its log: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster.spawn(2);
    cluster.wait_ready(2);
    let a = check_replica(&cluster, 0, &results, PER_STREAM).await;
    let c = check_replica(&cluster, 2, &results, PER_STREAM).await;
    assert_eq!(a, c, "node 3 differs after catching up");
    let st = cluster.status(2).await;
    assert!(st.groups.iter().any(|g| g.snapshot > 0), "node 3 installed no snapshot");
}

/// A dead node is replaced: its data is gone, a new node joins, and `chorus admin
/// replace-node` moves every shard's replica to it (learner, catch-up, voter change) while
/// writes go on. Nothing acknowledged is lost and the new node holds identical copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_is_replaced_by_a_new_one_without_losing_writes() {
    const STREAMS: usize = 4;
    const PER_STREAM: usize = 60;
    let mut cluster = Cluster::start(3, 4, FAST_RAFT);
    create_streams(&cluster, STREAMS).await;

    // Node 3 dies for good: killed, data deleted.
    cluster.kill(2);
    std::fs::remove_dir_all(&cluster.members[2].data).unwrap();
    let writers = spawn_writers(&cluster, 2, STREAMS, PER_STREAM);

    // Node 4 joins and takes node 3's place in every shard while the writers run.
    let new = cluster.add_member(4);
    let peers = cluster.peers_of(&[0, 1, new]);
    cluster.spawn_with(new, &peers, &["--join"]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["admin", "--node", &cluster.members[0].peer, "replace-node"])
        .args(["--old", "3", "--new", "4", "--addr", &cluster.members[new].peer])
        .output()
        .await
        .expect("chorus admin replace-node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replace-node failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("node 4 replaced node 3 in every shard"), "{text}");
    cluster.wait_ready(new);

    let mut results = Vec::new();
    for w in writers {
        results.push(w.await.expect("writer"));
    }
    let a = check_replica(&cluster, 0, &results, PER_STREAM).await;
    let b = check_replica(&cluster, 1, &results, PER_STREAM).await;
    let d = check_replica(&cluster, new, &results, PER_STREAM).await;
    assert_eq!(a, b, "survivors differ");
    assert_eq!(a, d, "the new node differs");
    for i in [0, 1, new] {
        let status = cluster.status(i).await;
        for g in &status.groups {
            assert_eq!(g.voters, vec![1, 2, 4], "node {} group {}", status.node_id, g.group);
        }
    }
}

/// SIGTERM stops a node while its peers still run (their Raft and call streams to it must not
/// hold it up), the two left keep serving, and then they stop too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_while_its_peers_run() {
    let mut cluster = Cluster::start(3, 4, FAST_RAFT);
    create_streams(&cluster, 4).await;
    let stopped = cluster.terminate(2, Duration::from_secs(20));
    assert!(stopped.is_some_and(|s| s.success()), "node 3 did not exit cleanly: {stopped:?}");
    let bases: Vec<String> =
        cluster.members[..2].iter().map(|m| format!("http://{}", m.api)).collect();
    let mut cursor = 0;
    for s in 0..4 {
        let path = format!("/v1/streams/alice/{}/messages", enc(&stream_name(s)));
        let target = |c: usize| Some(bases[c % 2].clone());
        let (_, ordinal) = common::cluster::post_until_acked(
            target,
            &mut cursor,
            &path,
            &format!("t{s}"),
            "after",
        )
        .await;
        assert!(ordinal >= 1, "stream {s}");
    }
    for i in [0, 1] {
        let stopped = cluster.terminate(i, Duration::from_secs(20));
        assert!(stopped.is_some_and(|s| s.success()), "node {} did not exit: {stopped:?}", i + 1);
    }
}
