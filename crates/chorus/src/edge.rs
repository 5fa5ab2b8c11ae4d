//! `chorus edge`: client sessions and fan-out in front of a cluster. It keeps no durable state:
//! every operation goes to a node over gRPC ([`RemoteService`]), and each stream that local
//! sessions listen to is followed once, whatever the number of sessions.

use std::time::Duration;

use anyhow::Context;
use chorus_config::Config;
use chorus_edge::EdgeConfig;
use chorus_node::cluster::RemoteService;

use crate::cli::EdgeArgs;
use crate::dev::shutdown_signal;
use crate::{logging, process_metrics, secrets};

/// How much longer than a node's own request timeout an edge waits for an answer, so that
/// the node's reply (even its `timeout`) arrives before the edge gives up.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(2);
/// How much longer than one call's budget a listen through the edge may take.
const LISTEN_MARGIN: Duration = Duration::from_secs(3);

pub async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    config.listen = args.listen;
    let config = config.validate()?;
    logging::init(config.log_format, &config.log_filter)?;
    process_metrics::register();
    secrets::check_given(&args.jwt_secret, &args.api_key)?;
    let nodes: Vec<String> =
        args.nodes.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    if let Some(bad) = nodes.iter().find(|n| !n.contains(':')) {
        anyhow::bail!("--nodes: expected host:port, got {bad:?}");
    }
    let timeout = Duration::from_millis(config.actors.request_timeout_ms) + TIMEOUT_MARGIN;
    let service = RemoteService::new(&nodes, timeout).context("--nodes")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let router = chorus_edge::router(
        service,
        EdgeConfig {
            jwt_secret: args.jwt_secret.clone(),
            api_key: args.api_key.clone(),
            session_queue_len: args.session_queue,
            cors_origins: config.cors_origins.clone(),
            // Longer than one call's budget, so the stream's feed can move to another node
            // before a waiting listen gives up.
            listen_timeout: (timeout + LISTEN_MARGIN).max(chorus_edge::DEFAULT_LISTEN_TIMEOUT),
            ..EdgeConfig::default()
        },
    );
    crate::announce!(
        "chorus edge serving http://{} (nodes {})",
        listener.local_addr()?,
        nodes.join(",")
    );
    chorus_edge::serve(listener, router, shutdown_signal()).await?;
    Ok(())
}
