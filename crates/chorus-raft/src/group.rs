//! Starting the shard groups of a node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chorus_storage::{
    Applier, ApplyObserver, Db, LogStore, LogWriter, StateMachine, TypeConfig, WriteThread,
};
use chorus_types::ShardId;
use openraft::BasicNode;
use openraft::error::{InitializeError, RaftError};
use openraft::network::RaftNetworkFactory;

use crate::Raft;
use crate::network::LocalOnly;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] chorus_storage::StorageError),
    #[error("raft config: {0}")]
    Config(#[from] Box<openraft::ConfigError>),
    #[error("starting shard {shard}: {message}")]
    Raft { shard: ShardId, message: String },
}

/// One shard's Raft group on this node.
#[derive(Clone)]
pub struct ShardGroup {
    pub shard: ShardId,
    pub raft: Raft,
    /// The committed log index as the log store last saw it (for metrics; see
    /// [`crate::metrics`]).
    pub committed: Arc<AtomicU64>,
}

/// What every group of a node shares: the DB and its write thread (log appends and applies).
#[derive(Clone)]
pub struct GroupHost {
    node_id: u64,
    db: Db,
    writer: LogWriter,
    applier: Applier,
    config: Arc<openraft::Config>,
    observer: Arc<dyn ApplyObserver>,
}

impl GroupHost {
    pub fn start(
        node_id: u64,
        db: &Db,
        config: openraft::Config,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<GroupHost, StartError> {
        let thread = WriteThread::start(db.clone())?;
        Ok(GroupHost {
            node_id,
            db: db.clone(),
            writer: thread.log_writer(),
            applier: thread.applier(),
            config: Arc::new(config.validate().map_err(Box::new)?),
            observer,
        })
    }

    /// Starts (or recovers) one shard's group. When the group has no state yet and `init` is
    /// given, it is initialised with those voters; otherwise a new replica waits to hear from
    /// its leader.
    pub async fn group<N>(
        &self,
        shard: ShardId,
        network: N,
        init: Option<BTreeMap<u64, BasicNode>>,
    ) -> Result<ShardGroup, StartError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        self.start_group(shard, network, init, Some(self.observer.clone())).await
    }

    /// Like [`GroupHost::group`], for the meta group: its commits are not stream messages
    /// anyone listens to, so no observer hears of them.
    pub async fn meta_group<N>(
        &self,
        group: ShardId,
        network: N,
        init: Option<BTreeMap<u64, BasicNode>>,
    ) -> Result<ShardGroup, StartError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        self.start_group(group, network, init, None).await
    }

    async fn start_group<N>(
        &self,
        shard: ShardId,
        network: N,
        init: Option<BTreeMap<u64, BasicNode>>,
        observer: Option<Arc<dyn ApplyObserver>>,
    ) -> Result<ShardGroup, StartError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let fail = |e: &dyn std::fmt::Display| StartError::Raft { shard, message: e.to_string() };
        let log = LogStore::new(self.db.clone(), shard, self.writer.clone());
        let committed = log.committed_index();
        let sm = StateMachine::open(self.db.clone(), shard, self.applier.clone(), observer).await?;
        let raft = Raft::new(self.node_id, self.config.clone(), network, log, sm)
            .await
            .map_err(|e| fail(&e))?;
        if raft.is_initialized().await.map_err(|e| fail(&e))? {
            tracing::debug!(%shard, "shard recovered");
        } else if let Some(members) = init {
            match raft.initialize(members).await {
                Ok(()) => tracing::debug!(%shard, "shard initialised"),
                // Another voter initialised it first: it will reach us.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(fail(&e)),
            }
        }
        Ok(ShardGroup { shard, raft, committed })
    }
}

/// Starts (or restarts from RocksDB) every shard group of a single-voter node. A fresh group
/// is initialised with this node as its only voter; a restarted one recovers its log, vote and
/// applied state and elects itself.
pub async fn start_groups(
    node_id: u64,
    address: String,
    shard_count: u16,
    db: &Db,
    config: openraft::Config,
    observer: Arc<dyn ApplyObserver>,
) -> Result<Vec<ShardGroup>, StartError> {
    let host = GroupHost::start(node_id, db, config, observer)?;
    let mut groups = Vec::with_capacity(usize::from(shard_count));
    for s in 0..shard_count {
        let members = BTreeMap::from([(node_id, BasicNode { addr: address.clone() })]);
        groups.push(host.group(ShardId(s), LocalOnly, Some(members)).await?);
    }
    Ok(groups)
}
