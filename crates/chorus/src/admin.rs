//! `chorus admin`: cluster status from any node's `Admin` service.

use anyhow::Context;
use chorus_proto::pb;
use chorus_proto::pb::admin_client::AdminClient;

use crate::cli::{AdminArgs, AdminCommand};

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(format!("http://{}", args.node))
        .await
        .with_context(|| format!("connecting to {}", args.node))?;
    match args.command {
        AdminCommand::Status { shards } => {
            let status = client
                .status(pb::StatusRequest {})
                .await
                .context("asking for status")?
                .into_inner();
            print_status(&status, shards);
        }
        AdminCommand::ReplaceNode { old, new, addr } => {
            replace_node(&args.node, old, new, &addr).await?;
        }
        AdminCommand::AddNode { id, addr } => {
            let reply = client
                .add_node(pb::AddNodeRequest { id, addr })
                .await
                .map_err(|s| anyhow::anyhow!("add-node: {}", s.message()))?
                .into_inner();
            println!("node {id} added; replicas move to it in the background");
            print_meta_nodes(&reply.nodes);
        }
        AdminCommand::RemoveNode { id } => {
            let reply = client
                .remove_node(pb::RemoveNodeRequest { id })
                .await
                .map_err(|s| anyhow::anyhow!("remove-node: {}", s.message()))?
                .into_inner();
            println!("node {id} draining; it leaves the cluster once its replicas have moved");
            print_meta_nodes(&reply.nodes);
        }
    }
    Ok(())
}

/// Moves every group's replica from `old` to `new`, one group at a time, each on its leader.
async fn replace_node(ask: &str, old: u64, new: u64, new_addr: &str) -> anyhow::Result<()> {
    let mut client = AdminClient::connect(format!("http://{ask}"))
        .await
        .with_context(|| format!("connecting to {ask}"))?;
    let status = client.status(pb::StatusRequest {}).await.context("asking for status")?;
    let groups: Vec<u32> = status.into_inner().groups.iter().map(|g| g.group).collect();
    for group in groups {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            // Ask afresh each time: leadership may move while replicas move.
            let result = match client.status(pb::StatusRequest {}).await {
                Ok(status) => {
                    let status = status.into_inner();
                    let g = status.groups.iter().find(|g| g.group == group);
                    let leader = g.map_or(0, |g| g.leader);
                    match status.nodes.iter().find(|n| n.id == leader && leader != 0) {
                        Some(n) => replace_on(&n.peer_addr, group, old, new, new_addr).await,
                        None => Err(anyhow::anyhow!("group {group} has no leader yet")),
                    }
                }
                Err(s) => Err(anyhow::anyhow!("status: {}", s.message())),
            };
            match result {
                Ok(voters) => {
                    println!("shard {group}: voters {voters:?}");
                    break;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("shard {group}: {e}; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context(format!("replacing node {old} in shard {group}"))),
            }
        }
    }
    println!("node {new} replaced node {old} in every shard");
    Ok(())
}

fn print_meta_nodes(nodes: &[pb::MetaNode]) {
    for n in nodes {
        println!("  {:>3}  {:<24} {:<9} {} replicas", n.id, n.peer_addr, n.status, n.replicas);
    }
}

fn print_meta(meta: &pb::MetaStatus) {
    let leader = if meta.leader == 0 { "unknown".to_owned() } else { meta.leader.to_string() };
    println!("meta group: leader {leader}, voters {:?}", meta.voters);
    println!("placement:");
    print_meta_nodes(&meta.nodes);
    for m in &meta.moving {
        println!("moving: shard {} from node {} to node {}", m.shard, m.from, m.to);
    }
    if meta.moving.is_empty() {
        println!("moving: nothing");
    }
}

fn print_status(s: &pb::StatusReply, per_shard: bool) {
    println!("asked node {}", s.node_id);
    if let Some(meta) = &s.meta {
        print_meta(meta);
    }
    println!("nodes:");
    for n in &s.nodes {
        let led = s.groups.iter().filter(|g| g.leader == n.id).count();
        println!("  {:>3}  {:<24} leads {led} shards", n.id, n.peer_addr);
    }
    let leaderless = s.groups.iter().filter(|g| g.leader == 0).count();
    let max_lag = s
        .groups
        .iter()
        .flat_map(|g| g.matched.values().map(move |m| g.last_log_index.saturating_sub(*m)))
        .max()
        .unwrap_or(0);
    println!(
        "shards: {} ({} without a leader); largest follower lag seen from this node: {max_lag}",
        s.groups.len(),
        leaderless
    );
    if per_shard {
        println!("shard  leader  term  last_log  applied  state      voters    lag");
        for g in &s.groups {
            let voters: Vec<String> = g.voters.iter().map(u64::to_string).collect();
            let lag: Vec<String> = g
                .matched
                .iter()
                .filter(|(id, _)| **id != s.node_id)
                .map(|(id, m)| format!("{id}:{}", g.last_log_index.saturating_sub(*m)))
                .collect();
            println!(
                "{:>5}  {:>6}  {:>4}  {:>8}  {:>7}  {:<9}  {:<8}  {}",
                g.group,
                g.leader,
                g.term,
                g.last_log_index,
                g.applied,
                g.state,
                voters.join(","),
                lag.join(" ")
            );
        }
    }
}

/// Asks `leader` to move `group`'s replica from `old` to `new`; the voters after the change.
async fn replace_on(
    leader: &str,
    group: u32,
    old: u64,
    new: u64,
    new_addr: &str,
) -> anyhow::Result<Vec<u64>> {
    let mut client = AdminClient::connect(format!("http://{leader}"))
        .await
        .with_context(|| format!("connecting to the leader at {leader}"))?;
    let req = pb::ReplaceVoterRequest { group, old, new, new_addr: new_addr.to_owned() };
    match client.replace_voter(req).await {
        Ok(r) => Ok(r.into_inner().voters),
        Err(s) => Err(anyhow::anyhow!("{}", s.message())),
    }
}
