//! `chorus admin`: cluster status from any node's `Admin` service.

use crate::say;
use anyhow::Context;
use chorus_proto::pb;
use chorus_proto::pb::admin_client::AdminClient;

use crate::cli::{AdminArgs, AdminCommand};

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::Init { peers } = &args.command {
        return init(peers).await;
    }
    let node = peer_addr(&args.node);
    let mut client = connect(&node).await.with_context(|| format!("connecting to {node}"))?;
    match args.command {
        AdminCommand::Status { shards } => {
            let status = client
                .status(pb::StatusRequest {})
                .await
                .map_err(|status| explain(&node, &status))
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
            say!("node {id} added; replicas move to it in the background");
            print_meta_nodes(&reply.nodes);
        }
        // Handled before connecting: it talks to each voter.
        AdminCommand::Init { .. } => {}
        AdminCommand::RemoveNode { id } => {
            let reply = client
                .remove_node(pb::RemoveNodeRequest { id })
                .await
                .map_err(|s| anyhow::anyhow!("remove-node: {}", s.message()))?
                .into_inner();
            say!("node {id} draining; it leaves the cluster once its replicas have moved");
            print_meta_nodes(&reply.nodes);
        }
    }
    Ok(())
}

/// A client whose calls give up: a node that accepts the connection but never answers (or a
/// cluster without a quorum, whose nodes bound their own waits at 30 s) must not hang the
/// command.
async fn connect(addr: &str) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(75))
        .connect()
        .await?;
    Ok(AdminClient::new(channel))
}

/// Sends `Admin.Init` to each of the three voters, so each initialises the groups it is the
/// preferred leader of. Every voter must be reachable: a cluster formed from part of them
/// would start with some shards leaderless.
async fn init(peers: &[String]) -> anyhow::Result<()> {
    let voters = crate::node::parse_peers(peers)?;
    if voters.len() != 3 {
        anyhow::bail!("--peers: a cluster starts with exactly 3 voters, got {}", voters.len());
    }
    let mut total = 0;
    for (id, addr) in &voters {
        let mut client =
            connect(addr).await.with_context(|| format!("connecting to node {id} at {addr}"))?;
        let reply = client
            .init(pb::InitRequest { voters: voters.clone().into_iter().collect() })
            .await
            .map_err(|s| anyhow::anyhow!("init on node {id}: {}", s.message()))?
            .into_inner();
        say!("node {id}: initialised {} groups", reply.initialised);
        total += reply.initialised;
    }
    if total == 0 {
        say!("the cluster was already formed; nothing changed");
    } else {
        say!("cluster formed; `chorus admin status` shows the leaders as they are elected");
    }
    Ok(())
}

/// Replaces node `old` by node `new` through the meta group: `new` is added and `old` drained,
/// so the rebalancer moves each of `old`'s replicas to the least loaded node — `new`, which
/// holds none — shard by shard (learner, catch-up, one joint voter change on the shard's
/// leader). Waits until `old` holds no replica and has left the meta group.
async fn replace_node(ask: &str, old: u64, new: u64, new_addr: &str) -> anyhow::Result<()> {
    let mut client = connect(ask).await.with_context(|| format!("connecting to {ask}"))?;
    client
        .add_node(pb::AddNodeRequest { id: new, addr: new_addr.to_owned() })
        .await
        .map_err(|s| anyhow::anyhow!("adding node {new}: {}", s.message()))?;
    match client.remove_node(pb::RemoveNodeRequest { id: old }).await {
        Ok(_) => {}
        // Already gone: a repeated command only waits for the shards below.
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => anyhow::bail!("draining node {old}: {}", s.message()),
    }
    let mut reported = std::collections::BTreeSet::new();
    let mut last_progress = std::time::Instant::now();
    loop {
        let status = match client.status(pb::StatusRequest {}).await {
            Ok(status) => status.into_inner(),
            Err(s) => {
                eprintln!("status: {}; retrying", s.message());
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        for g in status.groups.iter().filter(|g| !g.voters.contains(&old)) {
            if reported.insert(g.group) {
                say!("shard {}: voters {:?}", g.group, g.voters);
                last_progress = std::time::Instant::now();
            }
        }
        let in_meta = status.meta.as_ref().is_some_and(|m| m.nodes.iter().any(|n| n.id == old));
        if reported.len() == status.groups.len() && !in_meta {
            break;
        }
        if last_progress.elapsed() > std::time::Duration::from_secs(300) {
            anyhow::bail!("no shard moved off node {old} for 5 minutes; see `chorus admin status`");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    say!("node {new} replaced node {old} in every shard");
    Ok(())
}

fn print_meta_nodes(nodes: &[pb::MetaNode]) {
    for n in nodes {
        say!("  {:>3}  {:<24} {:<9} {} replicas", n.id, n.peer_addr, n.status, n.replicas);
    }
}

fn print_meta(meta: &pb::MetaStatus) {
    let leader = if meta.leader == 0 { "unknown".to_owned() } else { meta.leader.to_string() };
    say!("meta group: leader {leader}, voters {:?}", meta.voters);
    say!("placement:");
    print_meta_nodes(&meta.nodes);
    for m in &meta.moving {
        say!("moving: shard {} from node {} to node {}", m.shard, m.from, m.to);
    }
    if meta.moving.is_empty() {
        say!("moving: nothing");
    }
}

/// `--node` as a `host:port`, also when given as a URL.
fn peer_addr(node: &str) -> String {
    let node =
        node.strip_prefix("http://").or_else(|| node.strip_prefix("https://")).unwrap_or(node);
    node.trim_end_matches('/').to_owned()
}

/// A gRPC failure, with a hint when the address answered plain HTTP (a node's API port).
fn explain(node: &str, status: &tonic::Status) -> anyhow::Error {
    let text = status.message();
    if text.contains("compression flag") || text.contains("404") || text.contains("content-type") {
        return anyhow::anyhow!(
            "{node} answered, but not as a node's peer (gRPC) port: `--node` takes the address \
             given as --peer-listen, not the HTTP API's --listen ({text})"
        );
    }
    anyhow::anyhow!("{}: {text}", status.code())
}

fn print_status(s: &pb::StatusReply, per_shard: bool) {
    say!("asked node {}", s.node_id);
    if let Some(meta) = &s.meta {
        print_meta(meta);
    }
    say!("nodes:");
    for n in &s.nodes {
        let led = s.groups.iter().filter(|g| g.leader == n.id).count();
        say!("  {:>3}  {:<24} leads {led} shards", n.id, n.peer_addr);
    }
    // A group with no voters is not a replica on this node (a joined node holds only its
    // share of the shards).
    let leaderless = s.groups.iter().filter(|g| g.leader == 0 && !g.voters.is_empty()).count();
    let max_lag = s
        .groups
        .iter()
        .flat_map(|g| g.matched.values().map(move |m| g.last_log_index.saturating_sub(*m)))
        .max()
        .unwrap_or(0);
    say!(
        "shards: {} ({} without a leader); largest follower lag seen from this node: {max_lag}",
        s.groups.len(),
        leaderless
    );
    if !s.groups.is_empty() && s.groups.iter().all(|g| g.voters.is_empty()) {
        say!(
            "this node holds no initialised shard: the cluster is not formed yet. Nodes started \
             with --peers form it once they all run; nodes started with --join wait for \
             `chorus admin init --peers ID=HOST:PORT,...`"
        );
    }
    if per_shard {
        say!("shard  leader  term  last_log  applied  state      voters    lag");
        for g in &s.groups {
            let voters: Vec<String> = g.voters.iter().map(u64::to_string).collect();
            let lag: Vec<String> = g
                .matched
                .iter()
                .filter(|(id, _)| **id != s.node_id)
                .map(|(id, m)| format!("{id}:{}", g.last_log_index.saturating_sub(*m)))
                .collect();
            say!(
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
