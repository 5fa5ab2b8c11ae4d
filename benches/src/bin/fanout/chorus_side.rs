//! The Chorus side: three `chorus node` processes (few shards, to keep idle CPU low), the room
//! with its participants, as many `chorus edge` processes as the fd limit asks for, the
//! listening sessions in client processes, and an HTTP publisher.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chorus_bench::cluster::{API_KEY, NodeCluster, chorus_binary, chorus_command, wait_ready};
use chorus_bench::procs::{Proc, free_port, rss_kib_of};
use futures_util::{TryStreamExt, stream};
use serde_json::{Value, json};

use crate::client::{Mode, PUBLISHER, STREAM};
use crate::clients::{Clients, Plan};
use crate::ladder::{CpuGroups, Ladder, Publisher, StepResult};
use crate::{Args, Via, hard_fd_limit};

/// What the Chorus side prints at the end.
pub struct Outcome {
    pub setup: Vec<String>,
    pub steps: Vec<StepResult>,
}

/// Whether this `chorus` binary has the `edge` subcommand.
fn has_edge_command(bin: &Path) -> bool {
    std::process::Command::new(bin)
        .args(["edge", "--help"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub async fn run(args: &Args) -> anyhow::Result<Outcome> {
    let bin = chorus_binary(args.chorus.as_deref())?;
    let use_edges = match args.via {
        Via::Edges => true,
        Via::Nodes => false,
        Via::Auto => has_edge_command(&bin),
    };
    let mut setup = Vec::new();
    let mut say = |line: String| {
        println!("{line}");
        setup.push(line);
    };

    let nodes = NodeCluster::start(&bin, args.shards).await.context("starting 3 chorus nodes")?;
    say(format!("chorus: 3 nodes ready ({} shards each, every shard on all three)", args.shards));

    let setup_started = Instant::now();
    let http = reqwest::Client::new();
    create_room(&http, &nodes.api[0]).await?;
    let how = join_participants(&http, &nodes.api, args.participants).await?;
    let count = participant_count(&http, &nodes.api[0]).await?;
    say(format!(
        "chorus: room {PUBLISHER}/{STREAM} created, {count} participants joined ({how}) in {:.1} s",
        setup_started.elapsed().as_secs_f64()
    ));

    let holders: Vec<Proc>;
    let targets: Vec<SocketAddr>;
    if use_edges {
        let edge_count = args.sessions.div_ceil(args.per_edge);
        let (edges, addrs) = start_edges(&bin, &nodes, edge_count, nodes.dir.path()).await?;
        say(format!(
            "chorus: {edge_count} edge processes for {} sessions, at most {} each: the number of \
             edges is forced by the hard limit of {} open files per process on this machine \
             (ulimit -Hn), not chosen for speed",
            args.sessions,
            args.per_edge,
            hard_fd_limit().map_or("?".to_owned(), |n| n.to_string()),
        ));
        holders = edges;
        targets = addrs;
    } else {
        if args.sessions > 3 * args.per_edge {
            bail!("--via nodes holds sessions in the 3 nodes: at most 3 x --per-edge sessions");
        }
        say("chorus: sessions connect to the nodes' own API ports (--via nodes: no edges)".into());
        holders = Vec::new();
        targets = nodes.api.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    }
    let holder_pids: Vec<u32> = if use_edges {
        holders.iter().filter_map(Proc::pid).collect()
    } else {
        nodes.procs.iter().filter_map(Proc::pid).collect()
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before: u64 = holder_pids.iter().filter_map(|p| rss_kib_of(*p)).sum();
    let connect_started = Instant::now();
    let plan = Plan {
        mode: Mode::Ws,
        sessions: args.sessions,
        per_process: args.per_edge,
        targets,
        users: args.participants.max(1),
        connect_concurrency: args.connect_concurrency,
    };
    let mut clients = Clients::start(&plan, Duration::from_secs(600)).await?;
    say(format!(
        "chorus: {} sessions listening ({} failed, {} listens retried on the server's request) \
         from {} client processes in {:.1} s",
        clients.connected,
        clients.failed,
        clients.listen_retries,
        clients.pids().len(),
        connect_started.elapsed().as_secs_f64()
    ));
    if clients.connected == 0 {
        bail!("no chorus session could connect");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after: u64 = holder_pids.iter().filter_map(|p| rss_kib_of(*p)).sum();
    let client_rss: u64 = clients.pids().iter().filter_map(|p| rss_kib_of(*p)).sum();
    let per_session = rss_after.saturating_sub(rss_before) as f64 / clients.connected as f64;
    let holder_name = if use_edges { "edges" } else { "nodes" };
    say(format!(
        "chorus: memory of the {holder_name}: RSS {:.0} MiB before the sessions, {:.0} MiB with \
         {} idle sessions: {per_session:.1} KiB per session (target <= 10 KiB); client processes \
         {:.1} KiB per session",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        clients.connected,
        client_rss as f64 / clients.connected as f64,
    ));

    let node_rss: Vec<String> = nodes
        .procs
        .iter()
        .filter_map(Proc::pid)
        .map(|p| rss_kib_of(p).map_or("?".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0)))
        .collect();
    say(format!("chorus: RSS of the nodes (MiB): {}", node_rss.join(" / ")));

    let mut groups = vec![("nodes", nodes.procs.iter().filter_map(Proc::pid).collect())];
    if use_edges {
        groups.push(("edges", holder_pids.clone()));
    }
    groups.push(("clients", clients.pids()));
    let ladder = Ladder {
        system: "chorus",
        rates: &args.rates,
        seconds: args.seconds,
        drain: Duration::from_secs(args.drain_seconds),
        p99_limit_ms: args.p99_limit_ms,
        cpu: CpuGroups { groups },
    };
    let mut publisher = Publisher::Chorus { http, addr: nodes.api[0].clone() };
    let mut steps = ladder.run(&mut publisher, &mut clients).await?;
    if args.access_change {
        replace_rows(&reqwest::Client::new(), &nodes.api[0]).await?;
        say("chorus: the room's access rows replaced (every listener keeps read access): each \
             edge checks its listeners again before the next message"
            .into());
        let after = Ladder { system: "chorus+acl", rates: &[1.0], seconds: 5, ..ladder };
        steps.extend(after.run(&mut publisher, &mut clients).await?);
    }
    clients.quit().await;
    drop(holders);
    drop(nodes);
    Ok(Outcome { setup, steps })
}

async fn start_edges(
    bin: &Path,
    nodes: &NodeCluster,
    count: usize,
    log_dir: &Path,
) -> anyhow::Result<(Vec<Proc>, Vec<SocketAddr>)> {
    let mut procs = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for i in 0..count {
        let addr = format!("127.0.0.1:{}", free_port()?);
        procs.push(Proc::spawn_logged(
            chorus_command(bin).args(["edge", "--listen", &addr, "--nodes", &nodes.peer.join(",")]),
            &log_dir.join(format!("edge{}.log", i + 1)),
        )?);
        addrs.push(addr.parse()?);
    }
    for a in &addrs {
        wait_ready(&a.to_string(), Duration::from_secs(60)).await?;
    }
    Ok((procs, addrs))
}

async fn create_room(http: &reqwest::Client, addr: &str) -> anyhow::Result<()> {
    let response = http
        .post(format!("http://{addr}/v1/streams"))
        .bearer_auth(API_KEY)
        .json(&json!({"publisherId": PUBLISHER, "name": STREAM, "type": "Bench/room",
                      "readLevel": 40, "writeLevel": 40}))
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        bail!("creating the room: {status} {}", response.text().await.unwrap_or_default());
    }
    Ok(())
}

/// Replaces the room's rows with one for a user who is not listening: an access change for
/// every listening session that takes nobody's access away.
async fn replace_rows(http: &reqwest::Client, addr: &str) -> anyhow::Result<()> {
    let request = http
        .put(format!("http://{addr}{}/access", room_path()))
        .bearer_auth(API_KEY)
        .json(&json!({"rows": [{"ofUserId": "auditor", "readLevel": 40}]}));
    succeeded(request, "replacing the room's access rows").await
}

fn room_path() -> String {
    format!("/v1/streams/{PUBLISHER}/{}", STREAM.replace('/', "%2F"))
}

async fn participant_count(http: &reqwest::Client, addr: &str) -> anyhow::Result<u64> {
    let stream: Value = http
        .get(format!("http://{addr}{}", room_path()))
        .bearer_auth(API_KEY)
        .send()
        .await?
        .json()
        .await?;
    stream["participantCount"].as_u64().context("stream without participantCount")
}

/// Joins users `u1..=u{count}`: by the app-only batch route when the server has it, else one
/// join per user (acting as the user), many in flight. Answers which way it went.
async fn join_participants(
    http: &reqwest::Client,
    nodes: &[String],
    count: usize,
) -> anyhow::Result<&'static str> {
    const BATCH: usize = 1000;
    let users: Vec<String> = (1..=count).map(|i| format!("u{i}")).collect();
    let batch_url = |addr: &str| format!("http://{addr}{}/participants/batch", room_path());
    let Some(first) = users.chunks(BATCH).next() else { return Ok("none asked") };
    let probe = http
        .post(batch_url(&nodes[0]))
        .bearer_auth(API_KEY)
        .json(&json!({"join": first}))
        .send()
        .await?;
    let status = probe.status();
    let body = probe.text().await.unwrap_or_default();
    if status.is_success() {
        let rest: Vec<(usize, &[String])> = users.chunks(BATCH).enumerate().skip(1).collect();
        stream::iter(rest.into_iter().map(Ok::<_, anyhow::Error>))
            .try_for_each_concurrent(4, |(i, chunk)| async move {
                let request = http
                    .post(batch_url(&nodes[i % nodes.len()]))
                    .bearer_auth(API_KEY)
                    .json(&json!({"join": chunk}));
                succeeded(request, "batch join").await
            })
            .await?;
        return Ok("batch route, 1000 per call");
    }
    // An unknown route answers 404 "no such route" (or, from a bare router, no JSON body).
    let route_missing = (status.as_u16() == 404 || status.as_u16() == 405)
        && (body.contains("no such route") || !body.contains("\"error\""));
    if !route_missing {
        bail!("batch join: {status} {body}");
    }
    stream::iter(users.iter().enumerate().map(Ok::<_, anyhow::Error>))
        .try_for_each_concurrent(256, |(i, user)| async move {
            let request = http
                .post(format!("http://{}{}/join", nodes[i % nodes.len()], room_path()))
                .bearer_auth(API_KEY)
                .header("X-Chorus-As-User", user);
            succeeded(request, "join").await
        })
        .await?;
    Ok("one join per user: the batch route is not on this server")
}

/// Sends `request`; a non-success status is an error naming `what`, the status and the body.
async fn succeeded(request: reqwest::RequestBuilder, what: &str) -> anyhow::Result<()> {
    let response = request.send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!("{what}: {status} {}", response.text().await.unwrap_or_default());
    }
    Ok(())
}
