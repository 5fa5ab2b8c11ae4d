//! Starting the shard groups of a node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chorus_storage::{Applier, ApplyObserver, Db, LogStore, LogWriter, StateMachine};
use chorus_types::ShardId;
use openraft::BasicNode;
use openraft::error::{InitializeError, RaftError};

use crate::Raft;
use crate::network::LocalOnly;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Storage(#[from] chorus_storage::StorageError),
    #[error("raft config: {0}")]
    Config(#[from] openraft::ConfigError),
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
    let config = Arc::new(config.validate()?);
    let writer = LogWriter::start(db.clone())?;
    let applier = Applier::start(db.clone())?;
    let mut groups = Vec::with_capacity(usize::from(shard_count));
    for s in 0..shard_count {
        let shard = ShardId(s);
        let log = LogStore::new(db.clone(), shard, writer.clone());
        let committed = log.committed_index();
        let sm =
            StateMachine::open(db.clone(), shard, applier.clone(), Some(observer.clone())).await?;
        let raft = Raft::new(node_id, config.clone(), LocalOnly, log, sm)
            .await
            .map_err(|e| StartError::Raft { shard, message: e.to_string() })?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft { shard, message: e.to_string() })?;
        if initialized {
            tracing::debug!(%shard, "shard recovered");
        } else {
            let members = BTreeMap::from([(node_id, BasicNode { addr: address.clone() })]);
            match raft.initialize(members).await {
                Ok(()) => tracing::debug!(%shard, "shard initialised"),
                // A concurrent initialisation (impossible with one voter) is still fine.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(StartError::Raft { shard, message: e.to_string() }),
            }
        }
        groups.push(ShardGroup { shard, raft, committed });
    }
    Ok(groups)
}
