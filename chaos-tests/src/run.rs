//! One chaos run: start, load, faults, heal, liveness, read every replica, check, summarise.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use reqwest::Method;
use serde_json::json;
use tokio::time::Instant;

use crate::Args;
use crate::api::{self, PUBLISHER, Reply, stream_name, stream_path};
use crate::check::{self, Copy, Fetched};
use crate::cluster::{Cluster, NODES};
use crate::faults::{self, Fault};
use crate::history::{Event, History, Outcome, Post, Via};
use crate::workload::{self, Env};

/// After healing, the cluster must take a post on every stream within this bound.
const LIVENESS_BOUND: Duration = Duration::from_secs(30);

/// Returns the number of violations found.
pub async fn run(args: &Args, seed: u64, chorus: &Path) -> Result<usize> {
    let steps = faults::schedule(
        seed,
        args.faults,
        args.shards,
        args.edges,
        args.max_fault_ms,
        args.max_gap_ms,
    );
    println!(
        "chorus-chaos seed {seed}: {} faults, {} edges, chorus {}",
        steps.len(),
        args.edges,
        chorus.display()
    );
    for (k, s) in steps.iter().enumerate() {
        println!("  #{k:<4} after {:>4} ms: {} for {} ms", s.gap_ms, s.fault, s.hold_ms);
    }
    if args.wipe_all {
        println!("  then: wipe every node's data (not survivable by design)");
    }
    let dir = tempfile::Builder::new().prefix("chorus-chaos-").tempdir()?;
    println!("run directory: {}", dir.path().display());
    let mut cluster = Cluster::start(chorus, dir.path(), args.shards, args.edges).await?;
    cluster.sigterm = args.sigterm;

    let stop = Arc::new(AtomicBool::new(false));
    let env = Env {
        nodes: (0..NODES).map(|i| cluster.api_url(i)).collect(),
        edges: (0..args.edges).map(|e| cluster.edge_url(e)).collect(),
        streams: args.streams,
        recorder: crate::history::Recorder::new(),
        stop: stop.clone(),
    };
    workload::create_streams(&env).await?;
    let mut clients = Vec::new();
    for w in 0..args.writers {
        clients.push(tokio::spawn(workload::writer(env.clone(), w, seed ^ (w as u64 + 1) << 8)));
    }
    clients.push(tokio::spawn(workload::member(env.clone(), seed ^ 0xAAAA)));
    for l in 0..args.listeners {
        clients.push(tokio::spawn(workload::listener(env.clone(), l, seed ^ (l as u64 + 1) << 20)));
    }

    let mut injected: BTreeMap<&str, usize> = BTreeMap::new();
    let faults_start = env.recorder.now_ms();
    for (k, step) in steps.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(step.gap_ms)).await;
        let hit = faults::inject(&mut cluster, step.fault).await?;
        if let (Fault::IsolateLeader { .. }, Some(n)) = (step.fault, hit) {
            println!("  #{k}: leader is node {}", n + 1);
        }
        *injected.entry(step.fault.kind()).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(step.hold_ms)).await;
        faults::heal(&mut cluster).await?;
        if (k + 1) % 50 == 0 {
            // Long runs show they are alive (and how the acks go) as they proceed.
            println!("  .. {} faults done, {} posts acked", k + 1, env.recorder.acked());
        }
    }
    let faults_end = env.recorder.now_ms();

    if args.wipe_all {
        wipe_all(&mut cluster).await?;
    }

    // Quiet phase: everything healed; the cluster must be whole again within the bound.
    let healed_at = Instant::now();
    let mut violations = Vec::new();
    for i in 0..NODES {
        if let Err(e) = cluster.wait_ready(i, LIVENESS_BOUND).await {
            violations.push(format!("liveness: {e}"));
        }
    }
    for e in 0..args.edges {
        if let Err(e) = cluster.wait_edge_ready(e, LIVENESS_BOUND).await {
            violations.push(format!("liveness: {e}"));
        }
    }
    let probes_ok = probe(&env).await;
    let recovery = healed_at.elapsed();
    if !probes_ok {
        violations
            .push(format!("liveness: a stream took no post within {LIVENESS_BOUND:?} of healing"));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        // Each client finishes its operation in progress (bounded by its retry deadline).
        let _ = tokio::time::timeout(Duration::from_secs(40), c).await;
    }
    let history = env.recorder.take();

    let (copies, fetched) = read_all(&cluster, args.streams).await;
    let report = check::check(&history, &copies, &fetched);
    violations.extend(report.violations.iter().cloned());

    let (longest, at) = longest_unavailability(&history, faults_start, faults_end);
    println!("\n== summary (seed {seed})");
    let kinds: Vec<String> = injected.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults injected: {} ({})", steps.len(), kinds.join(", "));
    println!(
        "edges: {}, killed {} times",
        args.edges,
        injected.get("kill-edge").copied().unwrap_or(0)
    );
    let acked_via_edges =
        history.posts.iter().filter(|p| p.via_edge && matches!(p.outcome, Outcome::Ok(_))).count();
    println!(
        "posts: {} acked ({acked_via_edges} through edges), {} unknown outcome ({} of them \
         applied), {} refused",
        report.acked, report.unknown, report.unknown_applied, report.errors
    );
    println!("joins/leaves: {}", history.memberships.len());
    let on_edges: Vec<_> =
        history.sessions.iter().filter(|s| matches!(s.via, Via::Edge(_))).collect();
    let delivered_on_edges: usize = on_edges
        .iter()
        .map(|s| s.events.iter().filter(|e| matches!(e, Event::Message { .. })).count())
        .sum();
    println!(
        "listen sessions: {} ({} on edges), messages delivered {} ({delivered_on_edges} \
         received on edges), resyncs {}",
        report.listen_sessions,
        on_edges.len(),
        report.listened_messages,
        report.resyncs
    );
    println!("lost: {}, duplicated: {}", report.lost, report.duplicated);
    println!("longest unavailability (no post acked): {longest} ms, ending at {at} ms");
    println!("recovery after healing: {} ms", recovery.as_millis());
    println!("violations: {}", violations.len());
    for v in violations.iter().take(50) {
        println!("  VIOLATION {v}");
    }
    // Kept for diagnosis when the run did not go as expected.
    if violations.is_empty() == args.expect_violation || args.keep {
        let kept = dir.keep();
        std::fs::write(kept.join("history.txt"), format!("{history:#?}"))?;
        println!("kept {} (node logs, data, history.txt)", kept.display());
    }
    drop(cluster);
    Ok(violations.len())
}

/// Kills every node, deletes every replica's data and restarts them: the cluster forms anew,
/// and every acknowledged post is gone.
async fn wipe_all(cluster: &mut Cluster) -> Result<()> {
    for i in 0..NODES {
        cluster.kill(i).await?;
        cluster.wipe(i)?;
    }
    for i in 0..NODES {
        cluster.spawn(i).await?;
    }
    Ok(())
}

/// A post on every stream, retried until acknowledged or the liveness bound passes. Probes
/// are recorded like any post (client `usize::MAX`).
async fn probe(env: &Env) -> bool {
    let http = api::client();
    let deadline = Instant::now() + LIVENESS_BOUND;
    let mut all = true;
    for s in 0..env.streams {
        let id = format!("probe-{s}");
        let body = json!({"type": "Chat/message", "content": "probe", "clientMsgId": id});
        let path = format!("{}/messages", stream_path(s));
        let mut outcome = Outcome::Unknown;
        let mut node = s;
        while Instant::now() < deadline {
            let base = &env.nodes[node % NODES];
            match api::call(&http, base, Method::POST, &path, None, Some(body.clone())).await {
                Reply::Ok(v) => {
                    outcome = Outcome::Ok(api::ordinal(&v));
                    break;
                }
                Reply::Final(e) => {
                    outcome = Outcome::Error(e);
                    break;
                }
                Reply::Retry { .. } => {}
            }
            node += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        all &= matches!(outcome, Outcome::Ok(_));
        env.recorder.post(Post {
            client: usize::MAX,
            seq: s,
            stream: s,
            client_msg_id: id,
            via_edge: false,
            outcome,
            end_ms: env.recorder.now_ms(),
        });
    }
    all
}

/// Every replica's copy of every stream, once they agree on the length (or a bound passed:
/// then whatever they hold, and the checker reports the difference).
async fn read_all(cluster: &Cluster, streams: usize) -> (Vec<Vec<Copy>>, Vec<Fetched>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut copies = vec![vec![Copy::default(); streams]; NODES];
    loop {
        for (i, per_stream) in copies.iter_mut().enumerate() {
            for (s, copy) in per_stream.iter_mut().enumerate() {
                if let Ok((n, messages)) =
                    cluster.local_messages(i, PUBLISHER, &stream_name(s)).await
                {
                    *copy = Copy { message_count: n, messages };
                }
            }
        }
        let agree = (0..streams)
            .all(|s| copies.iter().all(|c| c[s].messages.len() == copies[0][s].messages.len()));
        if agree || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let http = api::client();
    let mut fetched = Vec::new();
    for s in 0..streams {
        let mut f = Fetched::default();
        for attempt in 0..50 {
            let base = cluster.api_url(attempt % NODES);
            if let Reply::Ok(v) =
                api::call(&http, &base, Method::GET, &stream_path(s), None, None).await
            {
                let st = if v.get("stream").is_some() { &v["stream"] } else { &v };
                f = Fetched {
                    message_count: st["messageCount"].as_u64().unwrap_or(0),
                    participant_count: st["participantCount"].as_u64().unwrap_or(0),
                };
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fetched.push(f);
    }
    (copies, fetched)
}

/// The longest stretch during the fault phase in which no post was acknowledged.
fn longest_unavailability(history: &History, start: u64, end: u64) -> (u64, u64) {
    let mut acks: Vec<u64> = history
        .posts
        .iter()
        .filter(|p| matches!(p.outcome, Outcome::Ok(_)))
        .map(|p| p.end_ms)
        .filter(|t| (start..=end).contains(t))
        .collect();
    acks.push(start);
    acks.push(end);
    acks.sort_unstable();
    acks.windows(2).map(|w| (w[1] - w[0], w[1])).max().unwrap_or((0, 0))
}
