//! The API of a cluster, from any node: operations sent to a follower run on the shard's
//! leader; a `listen` held through a follower survives SIGKILL of the leader with every
//! ordinal delivered once, in order; ephemerals reach listeners on other nodes; the app's
//! batch join through a follower runs on the leader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::cluster::{API_KEY, Cluster};
use common::{enc, ws_connect_addr, ws_next, ws_reply, ws_send};
use serde_json::json;

const FAST_RAFT: &str = "[raft]\nheartbeat_ms = 50\nelection_min_ms = 300\nelection_max_ms = 600\n";
const NAME: &str = "Chat/room/failover";

/// Shard of `alice/Chat/room/failover` with 4 shards (FNV-1a, pinned in chorus-types).
fn shard() -> u32 {
    use chorus_types::{PublisherId, StreamKey, StreamName, shard::shard_of};
    let key = StreamKey::new(PublisherId::new("alice").unwrap(), StreamName::new(NAME).unwrap());
    u32::from(shard_of(&key, 4).0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_serves_everything_and_listen_survives_leader_kill() {
    let mut cluster = Cluster::start(3, 4, FAST_RAFT);
    let leader_id = cluster.leader_of(0, shard()).await;
    let leader = cluster.index_of(leader_id);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);

    // `chorus admin status` sees three nodes and every shard led.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["admin", "--node", &cluster.members[f1].peer, "status", "--shards"])
        .output()
        .expect("chorus admin");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "admin status failed: {text}");
    assert!(text.contains("shards: 4 (0 without a leader)"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("leads")).count(), 3, "{text}");

    // Every kind of operation through a follower.
    let alice = cluster.api(f1, Some("alice"));
    let (s, v) = alice
        .call(
            "POST",
            "/v1/streams",
            Some(json!({"type": "Chat/room", "name": NAME, "readLevel": 35, "writeLevel": 20})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let path = format!("/v1/streams/alice/{}", enc(NAME));
    let (s, v) = alice.call("GET", &path, None).await;
    assert_eq!((s, v["messageCount"].as_u64()), (200, Some(1)), "{v}");
    let bob = cluster.api(f2, Some("bob"));
    let (s, v) = bob.call("POST", &format!("{path}/join"), None).await;
    assert_eq!(s, 200, "join: {v}");
    let (s, v) = bob.call("GET", &format!("{path}/participants"), None).await;
    assert_eq!(s, 200, "{v}");
    // The app's batch join through a follower: one command on the leader, bob counted once.
    let app = cluster.api(f1, None);
    let batch = Some(json!({"join": ["bob", "carol", "dave", "carol"]}));
    let (s, v) = app.call("POST", &format!("{path}/participants/batch"), batch).await;
    assert_eq!((s, v.clone()), (200, json!({"joined": 2, "participantCount": 3})), "{v}");
    let (s, v) = alice.call("PATCH", &path, Some(json!({"title": "Failover"}))).await;
    assert_eq!((s, v["title"].as_str()), (200, Some("Failover")), "{v}");
    let (s, v) = bob
        .call(
            "POST",
            &format!("{path}/messages"),
            Some(json!({"type": "Chat/message", "content": "hi"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = bob.call("GET", &format!("{path}/messages?limit=10"), None).await;
    assert_eq!(s, 200, "{v}");
    let before = v["messages"].as_array().unwrap().len() as u64;
    assert!(before >= 5, "created, joined, batch joined, changed, hi: {v}");

    // A listener on f1 from the start; an ephemeral from a session on f2 reaches it.
    let stream = json!({"publisherId": "alice", "name": NAME});
    let mut listener = ws_connect_addr(&cluster.members[f1].api, API_KEY).await;
    ws_send(&mut listener, json!({"id": 1, "op": "listen", "stream": stream, "since": 0})).await;
    let ok = ws_reply(&mut listener, 1).await;
    assert_eq!(ok["ok"]["recovered"], true, "{ok}");
    let mut typist = ws_connect_addr(&cluster.members[f2].api, API_KEY).await;
    ws_send(&mut typist, json!({"id": 2, "op": "listen", "stream": stream})).await;
    ws_reply(&mut typist, 2).await;
    ws_send(&mut typist, json!({"id": 3, "op": "ephemeral", "stream": stream, "type": "Chat/typing", "payload": {"on": true}})).await;
    assert!(ws_reply(&mut typist, 3).await.get("ok").is_some());

    // Posts through f2 while the leader is killed half-way; each retried with its clientMsgId.
    const POSTS: u64 = 40;
    let poster = cluster.api(f2, None);
    let mut killed = false;
    for k in 0..POSTS {
        if k == POSTS / 2 {
            cluster.kill(leader);
            killed = true;
        }
        let body = json!({"type": "Chat/message", "content": format!("p{k}"), "clientMsgId": format!("p{k}")});
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match poster.try_call("POST", &format!("{path}/messages"), Some(body.clone())).await {
                Ok((200 | 201, _)) => break,
                other => {
                    assert!(Instant::now() < deadline, "post p{k} never acknowledged: {other:?}")
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(killed);

    // The listener saw the ephemeral and every ordinal exactly once, in order.
    let total = before + POSTS;
    let mut expected = 1;
    let mut saw_typing = false;
    while expected <= total {
        let ev = ws_next(&mut listener).await;
        match ev["ev"].as_str() {
            Some("message") => {
                assert_eq!(ev["message"]["ordinal"].as_u64(), Some(expected), "{ev}");
                expected += 1;
            }
            Some("ephemeral") => saw_typing = true,
            _ => panic!("unexpected frame {ev}"),
        }
    }
    assert!(saw_typing, "the ephemeral from another node's session arrived");

    // History from the surviving follower agrees.
    let (s, v) = poster.call("GET", &format!("{path}/messages?limit=1000"), None).await;
    assert_eq!(s, 200);
    let ordinals: Vec<u64> =
        v["messages"].as_array().unwrap().iter().map(|m| m["ordinal"].as_u64().unwrap()).collect();
    assert_eq!(ordinals, (1..=total).collect::<Vec<_>>());
}
