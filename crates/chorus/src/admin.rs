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
    }
    Ok(())
}

fn print_status(s: &pb::StatusReply, per_shard: bool) {
    println!("asked node {}", s.node_id);
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
