//! The Chorus side: three `chorus node` processes on loopback, clients over WebSocket (W1) and
//! HTTP (W3), every post acknowledged only after a quorum fsynced it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chorus_proto::pb;
use chorus_proto::pb::admin_client::AdminClient;
use chorus_types::shard::shard_of;
use chorus_types::{PublisherId, StreamKey, StreamName};
use serde_json::{Value, json};

use crate::Args;
use chorus_bench::cluster::{API_KEY, NodeCluster, chorus_binary};
use chorus_bench::stats::{Failover, Window};

async fn leader_of(cluster: &NodeCluster, ask: usize, shard: u16) -> anyhow::Result<u64> {
    let mut c = AdminClient::connect(format!("http://{}", cluster.peer[ask])).await?;
    let st = c.status(pb::StatusRequest {}).await?.into_inner();
    Ok(st.groups.iter().find(|g| g.group == u32::from(shard)).map_or(0, |g| g.leader))
}

fn shard(name: &str, shards: u16) -> anyhow::Result<u16> {
    let key = StreamKey::new(PublisherId::new("bench")?, StreamName::new(name)?);
    Ok(shard_of(&key, shards).0)
}

async fn create(client: &reqwest::Client, addr: &str, name: &str) -> anyhow::Result<()> {
    let r = client
        .post(format!("http://{addr}/v1/streams"))
        .bearer_auth(API_KEY)
        .json(&json!({"publisherId": "bench", "type": "Bench/room", "name": name}))
        .send()
        .await?;
    if !(r.status().is_success() || r.status().as_u16() == 409) {
        bail!("creating {name}: {}", r.status());
    }
    Ok(())
}

async fn w1(cluster: &NodeCluster, args: &Args, in_flight: usize) -> anyhow::Result<String> {
    let streams: Arc<Vec<String>> =
        Arc::new((0..args.streams.max(1)).map(|i| format!("Bench/room/{i}")).collect());
    let window = Arc::new(Window::new(Duration::from_secs(2), Duration::from_secs(args.seconds))?);
    let body = Arc::new("x".repeat(args.size));
    // One connection per 16 in flight, spread over the three nodes (clients reach any node;
    // each node forwards to the shard's leader).
    let connections = in_flight.div_ceil(16).max(1);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let depth = in_flight / connections + usize::from(c < in_flight % connections);
        let addr = cluster.api[c % cluster.api.len()].clone();
        tasks.push(tokio::spawn(chorus_bench::ws_post::connection(
            addr,
            API_KEY.to_owned(),
            streams.clone(),
            c * 7,
            depth,
            body.clone(),
            window.clone(),
        )));
    }
    for t in tasks {
        t.await??;
    }
    Ok(window.summary(&format!("chorus  W1 in_flight={in_flight:<3}")))
}

/// Posts `id` to `stream` until acknowledged, moving to the next node on any failure.
async fn post_until_acked(
    client: reqwest::Client,
    nodes: Arc<Vec<String>>,
    start: usize,
    stream: String,
    id: String,
    body: Arc<String>,
    failover: Arc<Failover>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let path = format!("/v1/streams/bench/{}/messages", stream.replace('/', "%2F"));
    let mut n = start;
    while Instant::now() < deadline {
        let url = format!("http://{}{path}", nodes[n % nodes.len()]);
        let r = client
            .post(url)
            .bearer_auth(API_KEY)
            .timeout(Duration::from_secs(5))
            .json(&json!({"type": "Chat/message", "content": body.as_str(), "clientMsgId": id}))
            .send()
            .await;
        if let Ok(r) = r
            && r.status().is_success()
        {
            failover.ack(id, Instant::now());
            return;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    failover.unknown.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

async fn w3(mut cluster: NodeCluster, args: &Args) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    // Streams whose shards the victim leads, so every post feels the failover.
    let victim = leader_of(&cluster, 0, shard("W3/room/0", args.shards)?).await?;
    let mut streams = Vec::new();
    let mut i = 0;
    while streams.len() < 8 && i < 10_000 {
        let name = format!("W3/room/{i}");
        if leader_of(&cluster, 0, shard(&name, args.shards)?).await? == victim {
            create(&client, &cluster.api[0], &name).await?;
            streams.push(name);
        }
        i += 1;
    }
    let victim_idx = usize::try_from(victim)?.checked_sub(1).context("no leader")?;
    let nodes = Arc::new(cluster.api.clone());
    let failover = Arc::new(Failover::default());
    let body = Arc::new("x".repeat(args.size));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.w3_seconds);
    let kill_at = start + Duration::from_secs(args.w3_seconds / 3);
    let interval = Duration::from_secs_f64(1.0 / args.w3_rate.max(1) as f64);
    let mut tasks = Vec::new();
    let mut seq = 0usize;
    let mut killed_at = None;
    let mut tick = tokio::time::interval(interval);
    while Instant::now() < end {
        tick.tick().await;
        if killed_at.is_none() && Instant::now() >= kill_at {
            cluster.procs[victim_idx].kill();
            killed_at = Some(Instant::now());
        }
        let stream = streams[seq % streams.len()].clone();
        tasks.push(tokio::spawn(post_until_acked(
            client.clone(),
            nodes.clone(),
            seq,
            stream,
            format!("w3-{seq}"),
            body.clone(),
            failover.clone(),
        )));
        seq += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    let gap = failover.longest_gap(start + Duration::from_secs(1), end);
    // Read every stream back from a survivor.
    let reader = (0..3).find(|i| *i != victim_idx).context("a survivor")?;
    let mut stored = Vec::new();
    for s in &streams {
        let mut min = 1u64;
        loop {
            let url = format!(
                "http://{}/v1/streams/bench/{}/messages?min={min}&limit=1000",
                cluster.api[reader],
                s.replace('/', "%2F")
            );
            let v: Value = client.get(url).bearer_auth(API_KEY).send().await?.json().await?;
            let page = v["messages"].as_array().cloned().unwrap_or_default();
            for m in &page {
                if let Some(id) = m["clientMsgId"].as_str() {
                    stored.push(id.to_owned());
                }
                min = m["ordinal"].as_u64().unwrap_or(min) + 1;
            }
            // A page may be cut short by size: only an empty page ends the stream.
            if page.is_empty() {
                break;
            }
        }
    }
    let (missing, duplicated) = failover.verdict(&stored);
    Ok(format!(
        "chorus  W3 rate={}/s: sent {seq}, acked {}, unknown {}; longest gap with no ack {:.0} ms (leader node {victim} SIGKILLed); acked-but-missing {missing}, duplicated {duplicated}",
        args.w3_rate,
        failover.acked_ids().len(),
        failover.unknown.load(std::sync::atomic::Ordering::Relaxed),
        gap.as_secs_f64() * 1000.0,
    ))
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let bin = chorus_binary(args.chorus.as_deref())?;
    let cluster =
        NodeCluster::start(&bin, args.shards).await.context("starting the chorus cluster")?;
    let idle = chorus_bench::procs::idle_cpu(&cluster.procs, Duration::from_secs(10)).await;
    let line = format!(
        "chorus  idle CPU per node ({} shards x 3 replicas, no traffic): {idle}",
        args.shards
    );
    println!("{line}");
    out.push(line);
    let client = reqwest::Client::new();
    for i in 0..args.streams.max(1) {
        create(&client, &cluster.api[i % 3], &format!("Bench/room/{i}")).await?;
    }
    for &n in &args.in_flight {
        let line = w1(&cluster, args, n).await?;
        println!("{line}");
        out.push(line);
    }
    if !args.no_w3 {
        let line = w3(cluster, args).await?;
        println!("{line}");
        out.push(line);
    }
    Ok(out)
}
