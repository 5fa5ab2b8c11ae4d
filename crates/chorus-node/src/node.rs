//! Starting, serving and stopping a node.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_raft::{ShardGroup, start_groups};
use chorus_storage::Db;
use chorus_storage::metrics::Registered;
use chorus_streams::validate::Limits;
use chorus_types::{ShardId, StreamKey, shard::shard_of};

use crate::actors::ActorRegistry;
use crate::error::NodeError;
use crate::hub::Hub;
use crate::proposer::ShardProposer;

/// How stream actors behave.
#[derive(Clone, Debug)]
pub struct ActorSettings {
    /// Requests queued per actor; beyond it callers get `unavailable`.
    pub mailbox: usize,
    /// Most commands per Raft entry.
    pub max_batch: usize,
    /// An actor with nothing to do for this long stops.
    pub idle: Duration,
    /// A write not applied within this long answers `timeout` (outcome unknown).
    pub request_timeout: Duration,
}

impl Default for ActorSettings {
    fn default() -> Self {
        ActorSettings {
            mailbox: 4096,
            max_batch: 512,
            idle: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: u64,
    /// Shard count for a new data dir; an existing one keeps its own and must match.
    pub shards: u16,
    pub data_dir: PathBuf,
    /// The address peers would use to reach this node (recorded in Raft membership).
    pub advertise: String,
    pub limits: Limits,
    pub actors: ActorSettings,
    pub raft: openraft::Config,
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: NodeConfig,
    pub(crate) db: Db,
    pub(crate) shard_count: u16,
    /// Indexed by shard id.
    pub(crate) groups: Vec<ShardGroup>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) actors: ActorRegistry,
    /// One per shard, indexed by shard id; taken at shutdown.
    pub(crate) proposers: Vec<ShardProposer>,
    /// The scrape-time collectors reading this node's groups and database; emptied at
    /// shutdown so the registry lets go of the database.
    pub(crate) collectors: Mutex<Vec<Registered>>,
}

impl Node {
    /// Opens the data dir, recovers or initialises every shard group, and returns once they
    /// are started (leaders follow within an election timeout; see [`Node::wait_ready`]).
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let (dir, wanted) = (config.data_dir.clone(), config.shards);
        let (db, shard_count) = chorus_storage::error::blocking(move || {
            let db = Db::open(&dir)?;
            // S is fixed when the data dir is created; a restart keeps the stored count.
            let count = match db.stored_shard_count()? {
                Some(stored) => stored,
                None => db.shard_count(wanted)?,
            };
            Ok((db, count))
        })
        .await?;
        if shard_count != config.shards {
            tracing::info!(stored = shard_count, "data dir keeps its shard count");
        }
        tracing::info!(shards = shard_count, dir = %config.data_dir.display(), "storage opened");
        let hub = Arc::new(Hub::default());
        let groups = start_groups(
            config.node_id,
            config.advertise.clone(),
            shard_count,
            &db,
            config.raft.clone(),
            hub.clone(),
        )
        .await?;
        tracing::info!(groups = groups.len(), "shard groups started");
        crate::metrics::register();
        let collectors = Mutex::new(crate::metrics::register_collectors(&groups, &db));
        let actors = ActorRegistry::new(config.actors.clone());
        let proposers = groups
            .iter()
            .map(|g| {
                ShardProposer::start(
                    config.node_id,
                    g.shard,
                    g.raft.clone(),
                    config.actors.request_timeout,
                )
            })
            .collect();
        Ok(Node {
            inner: Arc::new(Inner {
                config,
                db,
                shard_count,
                groups,
                hub,
                actors,
                proposers,
                collectors,
            }),
        })
    }

    pub fn shard_count(&self) -> u16 {
        self.inner.shard_count
    }

    pub fn shard_of(&self, key: &StreamKey) -> ShardId {
        shard_of(key, self.inner.shard_count)
    }

    /// True when every shard group has a leader.
    pub fn is_ready(&self) -> bool {
        self.shards_without_leader() == 0
    }

    /// Local shard groups that know no leader (`/readyz` is not ready while any does).
    pub fn shards_without_leader(&self) -> usize {
        let groups = self.inner.groups.iter();
        groups.filter(|g| g.raft.metrics().borrow().current_leader.is_none()).count()
    }

    /// Waits until every shard has a leader, or the timeout passes.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        for g in &self.inner.groups {
            let mut rx = g.raft.metrics();
            loop {
                if rx.borrow().current_leader.is_some() {
                    break;
                }
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => {}
                    _ => return false,
                }
            }
        }
        true
    }

    /// Stops the actors, then every shard group. In-flight writes finish or fail first.
    pub async fn shutdown(&self) {
        self.inner.actors.shutdown().await;
        // Actors have drained, so no proposal is pending.
        for p in &self.inner.proposers {
            p.abort();
        }
        for g in &self.inner.groups {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(shard = %g.shard, error = %e, "shard shutdown failed");
            }
        }
        self.inner.collectors.lock().unwrap_or_else(|p| p.into_inner()).clear();
        tracing::info!("node stopped");
    }
}
