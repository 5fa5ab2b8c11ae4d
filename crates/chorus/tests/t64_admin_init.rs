//! `chorus admin init` forms a cluster from three real `chorus node --join` processes, which
//! never initialise on their own: before it no shard has a leader and the nodes are not
//! ready; after it every shard is led by the three voters, writes go through
//! any node, and a second init changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use serde_json::json;

const SHARDS: u16 = 6;

fn admin_init(cluster: &Cluster) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["admin", "init", "--peers", &cluster.all_peers()])
        .output()
        .expect("run chorus admin init");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_init_forms_a_cluster_from_joining_nodes() {
    let mut cluster = Cluster::unstarted(3, SHARDS, "");
    let peers = cluster.all_peers();
    for i in 0..3 {
        cluster.spawn_with(i, &peers, &["--join"]);
    }
    // Nothing initialises on its own: no shard has a leader (none can: a group without state
    // has no voters to elect).
    let status = cluster.status(0).await;
    assert!(status.groups.iter().all(|g| g.leader == 0), "a group was led before init");
    let url = format!("http://{}/readyz", cluster.members[0].api);
    assert_ne!(common::plain_http_get(&url).unwrap(), 200, "ready before init");

    let (ok, text) = admin_init(&cluster);
    assert!(ok, "init failed: {text}");
    assert!(text.contains("cluster formed"), "{text}");
    for i in 0..3 {
        cluster.wait_ready(i);
    }

    // Every shard is led by one of the three voters (each node initialised, and usually
    // leads, its own share; elections decide, so the split is not asserted).
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = cluster.status(1).await;
        let shards = status.groups.iter().filter(|g| g.group < u32::from(SHARDS));
        if shards.clone().all(|g| g.leader != 0) || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for g in status.groups.iter().filter(|g| g.group < u32::from(SHARDS)) {
        assert_ne!(g.leader, 0, "shard {} has no leader", g.group);
        assert_eq!(g.voters, vec![1, 2, 3], "shard {} voters", g.group);
        *led.entry(g.leader).or_default() += 1;
    }
    assert_eq!(led.values().sum::<usize>(), usize::from(SHARDS));

    // Writes go through any node.
    let app = cluster.api(2, None);
    let body = json!({"publisherId": "alice", "name": "Chat/init/1", "type": "Chat/room"});
    let (status, reply) = app.call("POST", "/v1/streams", Some(body)).await;
    assert_eq!(status, 201, "create: {reply}");
    let path = format!("/v1/streams/alice/{}/messages", common::enc("Chat/init/1"));
    let post = json!({"type": "Chat/message", "content": "hello", "clientMsgId": "i1"});
    let (status, reply) = cluster.api(0, None).call("POST", &path, Some(post)).await;
    assert!(status == 200 || status == 201, "post: {reply}");

    // A second init is a no-op.
    let (ok, text) = admin_init(&cluster);
    assert!(ok && text.contains("already formed"), "second init: {text}");
    // And a wrong voter set is refused with a clear message.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["admin", "init", "--peers", &format!("1={}", cluster.members[0].peer)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly 3 voters"));
}
