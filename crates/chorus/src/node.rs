//! `chorus node`: one storage node of a cluster. It serves the HTTP/WebSocket API (each
//! operation routed to the stream's shard leader) and gRPC for its peers.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use chorus_config::Config;
use chorus_edge::EdgeConfig;
use chorus_node::cluster::{self, Router};
use chorus_node::{ClusterSpec, Node, NodeConfig};

use crate::cli::NodeArgs;
use crate::dev::{actor_settings, raft_config, shutdown_signal};
use crate::{logging, process_metrics, secrets};

/// Parses `id=host:port,…`.
pub(crate) fn parse_peers(items: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for item in items.iter().filter(|i| !i.trim().is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .with_context(|| format!("--peers: expected id=host:port, got {item:?}"))?;
        let id: u64 =
            id.trim().parse().with_context(|| format!("--peers: bad node id in {item:?}"))?;
        let addr = addr.trim();
        if addr.is_empty() || !addr.contains(':') {
            anyhow::bail!("--peers: expected host:port for node {id}, got {addr:?}");
        }
        if peers.insert(id, addr.to_owned()).is_some() {
            anyhow::bail!("--peers: node {id} listed twice");
        }
    }
    Ok(peers)
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    config.listen = args.listen;
    config.data_dir = args.data.clone();
    config.node_id = args.id;
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    let config = config.validate()?;
    logging::init(config.log_format, &config.log_filter)?;
    process_metrics::register();
    secrets::check_given(&args.jwt_secret, &args.api_key)?;
    let peers = parse_peers(&args.peers)?;
    let cluster = ClusterSpec { peers, join: args.join };
    cluster.validate(args.id).map_err(anyhow::Error::msg)?;
    let advertise = cluster.peers.get(&args.id).cloned().unwrap_or_default();

    let api = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let peer_listener = tokio::net::TcpListener::bind(args.peer_listen)
        .await
        .with_context(|| format!("binding {}", args.peer_listen))?;
    let node = Node::start(NodeConfig {
        node_id: args.id,
        shards: config.shards,
        data_dir: config.data_dir.clone(),
        advertise,
        limits: config.limits.clone(),
        ephemerals: config.ephemerals.clone(),
        actors: actor_settings(&config),
        raft: raft_config(&config),
        cluster: Some(cluster),
    })
    .await
    .context("starting the node")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut peer_stop = stop_rx.clone();
    let router = Router::new(node.clone());
    let peers =
        tokio::spawn(cluster::serve(node.clone(), router.clone(), peer_listener, async move {
            let _ = peer_stop.wait_for(|s| *s).await;
        }));
    let router = chorus_edge::router(
        router,
        EdgeConfig {
            jwt_secret: args.jwt_secret.clone(),
            api_key: args.api_key.clone(),
            cors_origins: config.cors_origins.clone(),
            ..EdgeConfig::default()
        },
    );
    crate::announce!(
        "chorus node {} serving http://{} (peers on {}), {} shards",
        args.id,
        api.local_addr()?,
        args.peer_listen,
        node.shard_count()
    );
    let ready = node.clone();
    tokio::spawn(async move {
        if ready.wait_ready(Duration::from_secs(60)).await {
            tracing::info!("every shard has a leader");
        }
    });
    chorus_edge::serve(api, router, shutdown_signal()).await?;
    // Calls from edges and other nodes are refused (not run) from here on, so their callers
    // go to another node at once, as they would after a crash, instead of getting errors from
    // a node that still looks like the leader while it winds down. The calls already running
    // finish first, with the actors, proposers and Raft groups still at work.
    node.begin_stopping();
    let _ = stop_tx.send(true);
    if !node.peer_calls_finished(PEER_DRAIN).await {
        tracing::warn!("calls from edges or nodes still running after the drain timeout");
    }
    node.shutdown().await;
    // Every shard group has stopped, so the followers elect new leaders. The streams edges and
    // other nodes hold on the peer service (`Owner.Calls`, `Owner.Subscribe`, Raft batches)
    // never end by themselves; they close when the process exits, right after this pause,
    // which lets the connections write the last replies queued on them (the refusals sent
    // while the node stopped), so edges move their listens to the new leaders at once.
    tokio::time::sleep(PEER_FLUSH).await;
    drop(peers);
    Ok(())
}

/// Longest wait for the calls from edges and nodes still running when the node stops.
const PEER_DRAIN: Duration = Duration::from_secs(3);
/// Time the peer connections get to write the last replies before the process exits.
const PEER_FLUSH: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::parse_peers;

    #[test]
    fn peers_parse_and_reject() {
        let p = parse_peers(&["1=a:1".into(), "2=b:2".into(), "3=c:3".into()]).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "b:2");
        assert!(parse_peers(&["1=a:1".into(), "1=b:2".into()]).is_err());
        assert!(parse_peers(&["x=a:1".into()]).is_err());
        assert!(parse_peers(&["1=nohost".into()]).is_err());
    }
}
