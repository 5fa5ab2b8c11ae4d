//! `chorus dev`: one node and one edge in one process, on the same code path as a cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chorus_config::{Config, LogFormat, env};
use chorus_edge::EdgeConfig;
use chorus_node::{ActorSettings, Node, NodeConfig};

use crate::cli::DevArgs;
use crate::{logging, process_metrics, secrets, token};

pub(crate) fn raft_config(c: &Config) -> openraft::Config {
    openraft::Config {
        cluster_name: "chorus".into(),
        heartbeat_interval: c.raft.heartbeat_ms,
        election_timeout_min: c.raft.election_min_ms,
        election_timeout_max: c.raft.election_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(c.raft.snapshot_every_logs),
        // Entries kept behind a snapshot for followers that lag a little; beyond that they get
        // the snapshot.
        max_in_snapshot_log_to_keep: c.raft.snapshot_every_logs.min(1000),
        ..Default::default()
    }
}

pub(crate) fn actor_settings(config: &Config) -> ActorSettings {
    ActorSettings {
        mailbox: config.actors.mailbox,
        max_batch: config.actors.max_batch,
        idle: Duration::from_millis(config.actors.idle_ms),
        request_timeout: Duration::from_millis(config.actors.request_timeout_ms),
    }
}

fn load_config(args: &DevArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data) = &args.data {
        config.data_dir = data.clone();
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if let Ok(format) = std::env::var(env::LOG_FORMAT) {
        config.log_format = match format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => anyhow::bail!("{}: expected text or json, got {other}", env::LOG_FORMAT),
        };
    }
    Ok(config.validate()?)
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    logging::init(config.log_format, &config.log_filter)?;
    process_metrics::register();
    let secrets = secrets::load_or_create(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let node = Node::start(NodeConfig {
        node_id: config.node_id,
        shards: config.shards,
        data_dir: config.data_dir.clone(),
        advertise: addr.to_string(),
        limits: config.limits.clone(),
        ephemerals: config.ephemerals.clone(),
        actors: actor_settings(&config),
        raft: raft_config(&config),
        cluster: None,
    })
    .await
    .context("starting the node")?;
    if !node.wait_ready(Duration::from_secs(30)).await {
        tracing::warn!("not every shard has a leader yet; serving anyway");
    }
    let router = chorus_edge::router(
        Arc::new(node.clone()),
        EdgeConfig {
            jwt_secret: secrets.jwt_secret.clone(),
            api_key: secrets.api_key.clone(),
            cors_origins: config.cors_origins.clone(),
            ..EdgeConfig::default()
        },
    );
    let alice = token::mint(&secrets.jwt_secret, "alice", &[], 7 * 86_400)?;
    let data = config.data_dir.display();
    let banner = format!(
        "chorus dev listening on http://{addr}\n\
         data dir {data} ({shards} shards); secrets in {data}/{file}\n\n\
         a token for user alice (7 days; more with `chorus token --data {data} --user NAME`):\n\
         \x20 export TOKEN={alice}\n\n\
         try:\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" -d '{{\"type\":\"Chat/room\",\"name\":\"Chat/room/1\",\"readLevel\":35,\"writeLevel\":20}}' http://{addr}/v1/streams\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" -d '{{\"type\":\"Chat/message\",\"content\":\"hello\"}}' http://{addr}/v1/streams/alice/Chat%2Froom%2F1/messages\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" 'http://{addr}/v1/streams/alice/Chat%2Froom%2F1/messages?limit=10'\n\
         \x20 chorus post alice/Chat/room/1 'hi from the cli' --as alice --url http://{addr} --data {data}\n\
         \x20 chorus tail alice/Chat/room/1 --since 0 --url http://{addr} --data {data}\n",
        shards = node.shard_count(),
        file = secrets::FILE,
    );
    // A closed stdout (`chorus dev | head -1`) must not stop the server.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), banner.as_bytes());
    chorus_edge::serve(listener, router, shutdown_signal()).await?;
    node.shutdown().await;
    Ok(())
}
