//! Idle shard groups hibernate (no heartbeats, no election timers) on three real `chorus node`
//! processes, and still fail over: SIGKILL of the node leading hibernating groups gets every
//! one of them a new leader through node liveness, and writes to them then succeed on both
//! survivors; a write to a hibernating group on a live leader needs no wake-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::enc;
use serde_json::json;

const FAST_RAFT: &str = "[raft]\nheartbeat_ms = 50\nelection_min_ms = 300\nelection_max_ms = 600\n";
const SHARDS: u16 = 8;
const STREAMS: usize = 16;

fn name(s: usize) -> String {
    format!("Chat/idle/{s}")
}

async fn hibernating(cluster: &Cluster, i: usize) -> Option<f64> {
    let url = format!("http://{}/metrics", cluster.members[i].api);
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("chorus_raft_hibernating_groups "))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until every listed member reports all its groups hibernating.
async fn wait_all_hibernate(cluster: &Cluster, members: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &i in members {
        loop {
            // Every shard group, and the meta group (idle too: it changes only with
            // membership).
            if hibernating(cluster, i).await == Some(f64::from(SHARDS + 1)) {
                break;
            }
            assert!(Instant::now() < deadline, "node {} did not hibernate its groups", i + 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn post(cluster: &Cluster, i: usize, s: usize, id: &str) -> u64 {
    let path = format!("/v1/streams/alice/{}/messages", enc(&name(s)));
    let body = json!({"type": "Chat/text", "content": id, "clientMsgId": id});
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, reply) =
            cluster.api(i, Some("alice")).call("POST", &path, Some(body.clone())).await;
        if status == 200 || status == 201 {
            return reply["ordinal"].as_u64().expect("ordinal");
        }
        assert!(Instant::now() < deadline, "post {id} to stream {s} kept failing: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_groups_hibernate_and_still_fail_over() {
    let mut cluster = Cluster::start(3, SHARDS, FAST_RAFT);
    let app = cluster.api(0, None);
    for s in 0..STREAMS {
        let (status, body) = app
            .call(
                "POST",
                "/v1/streams",
                Some(json!({"publisherId": "alice", "name": name(s), "type": "Chat/room"})),
            )
            .await;
        assert_eq!(status, 201, "create: {body}");
        assert_eq!(post(&cluster, s % 3, s, &format!("a{s}")).await, 2);
    }

    // With no traffic every group stops ticking on every node.
    wait_all_hibernate(&cluster, &[0, 1, 2]).await;

    // A write to a hibernating group commits at once (replication needs no ticker).
    assert_eq!(post(&cluster, 0, 0, "b0").await, 3);

    // SIGKILL the node leading the most groups while they hibernate.
    wait_all_hibernate(&cluster, &[0, 1, 2]).await;
    let status = cluster.status(0).await;
    let mut led = std::collections::BTreeMap::<u64, usize>::new();
    for g in &status.groups {
        *led.entry(g.leader).or_default() += 1;
    }
    let (&victim_id, _) = led.iter().max_by_key(|(_, n)| **n).expect("leaders");
    assert_ne!(victim_id, 0, "every group had a leader");
    let orphaned: BTreeSet<u32> =
        status.groups.iter().filter(|g| g.leader == victim_id).map(|g| g.group).collect();
    let victim = cluster.index_of(victim_id);
    cluster.kill(victim);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();

    // Every group it led gets a surviving leader, as both survivors see it.
    let deadline = Instant::now() + Duration::from_secs(15);
    for &i in &survivors {
        loop {
            let status = cluster.status(i).await;
            let stuck: Vec<u32> = status
                .groups
                .iter()
                .filter(|g| g.leader == 0 || g.leader == victim_id)
                .map(|g| g.group)
                .collect();
            if stuck.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "groups {stuck:?} (of {orphaned:?} led by node {victim_id}) found no new leader"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Every stream takes a write on the survivors, and both hold identical copies.
    for s in 0..STREAMS {
        let expected = if s == 0 { 4 } else { 3 };
        assert_eq!(post(&cluster, survivors[s % 2], s, &format!("c{s}")).await, expected);
    }
    for s in 0..STREAMS {
        let want = if s == 0 { 4 } else { 3 };
        let deadline = Instant::now() + Duration::from_secs(15);
        let copies = loop {
            let a = cluster.local_messages(survivors[0], "alice", &name(s)).await;
            let b = cluster.local_messages(survivors[1], "alice", &name(s)).await;
            if (a.1.len() == want && b.1.len() == want) || Instant::now() > deadline {
                break (a, b);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(copies.0.1.len(), want, "stream {s} on node {}", survivors[0] + 1);
        assert_eq!(copies.0, copies.1, "stream {s}: survivors differ");
    }

    // Idle again, the survivors hibernate again with the victim still down.
    wait_all_hibernate(&cluster, &survivors).await;
}
