//! `RaftStateMachine` for one shard: committed entries go through the pure
//! [`chorus_streams::apply_entry`], and its writes, with the applied log id, go to RocksDB in
//! one batch.
//!
//! The batch is not synced: the Raft log is, and after a crash the state is a consistent
//! prefix (state and applied id are written together), from which openraft re-applies the
//! committed rest of the log.

use std::sync::Arc;

use chorus_types::{MessageRecord, ShardId, StreamKey};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{OptionalSend, RaftSnapshotBuilder, StorageIOError};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::applier::Applier;
use crate::db::Db;
use crate::error::{Result, StorageError, blocking};
use crate::raft_types::{
    Entry, LogId, RaftStorageError, ShardResponse, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::snapshot::{self, AppliedState};

/// What an applied batch may have changed for access checks; the most of its commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum AccessChange {
    /// Posts only.
    #[default]
    Nothing,
    /// Participants (joins, leaves, subscriptions). Not an input of the access calculation,
    /// but stream actors conservatively read their context again.
    Participants,
    /// Stream records or access rows (create, update, close, set access): inputs of this
    /// stream's context and, as a `<type>*` rule, template or parent, of other streams'.
    Sources,
}

/// Told of every applied batch, in commit order per shard.
pub trait ApplyObserver: Send + Sync + 'static {
    /// `messages` were committed (in ordinal order); `access` says which cached access
    /// contexts may be stale, and `access_keys` names the streams (or rule pseudo-streams)
    /// whose records or access rows changed, whose listeners must be checked again before
    /// they get any of these messages.
    fn committed(
        &self,
        shard: ShardId,
        messages: Vec<MessageRecord>,
        access: AccessChange,
        access_keys: &[StreamKey],
    );
}

/// One shard's state machine.
pub struct StateMachine {
    db: Db,
    shard: ShardId,
    /// Cached copy of what is stored under `RaftMeta::Applied`.
    applied: AppliedState,
    /// The apply side of the node's write thread, shared by every shard.
    applier: Applier,
    observer: Option<Arc<dyn ApplyObserver>>,
}

fn sm_read_err(e: StorageError) -> RaftStorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: StorageError) -> RaftStorageError {
    StorageIOError::write_state_machine(&e).into()
}

impl StateMachine {
    pub async fn open(
        db: Db,
        shard: ShardId,
        applier: Applier,
        observer: Option<Arc<dyn ApplyObserver>>,
    ) -> Result<StateMachine> {
        let d = db.clone();
        let applied = blocking(move || snapshot::read_applied(&d, shard)).await?;
        Ok(StateMachine { db, shard, applied, applier, observer })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok(self.applied.clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ShardResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let out = self
            .applier
            .apply(self.shard, self.applied.clone(), entries)
            .await
            .map_err(sm_write_err)?;
        self.applied = out.applied;
        if let Some(observer) = &self.observer
            && (!out.messages.is_empty() || out.access_change != AccessChange::Nothing)
        {
            observer.committed(self.shard, out.messages, out.access_change, &out.access_keys);
        }
        Ok(out.responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), shard: self.shard }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        let path =
            self.db.snapshot_dir().join(format!("recv-{}-{}.tmp", self.shard, std::process::id()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        let signature = Some(meta.signature());
        let mut bytes = Vec::new();
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .and(Ok(()))
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        snapshot
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        let (db, shard, m) = (self.db.clone(), self.shard, meta.clone());
        blocking(move || snapshot::install(&db, shard, &m, &bytes))
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        // The applier may hold this shard's old stream records.
        self.applier
            .forget(self.shard)
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        self.applied = (meta.last_log_id, meta.last_membership.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let (db, shard) = (self.db.clone(), self.shard);
        let Some(pointer) =
            blocking(move || snapshot::read_pointer(&db, shard)).await.map_err(sm_read_err)?
        else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(snapshot::pointer_path(&self.db, &pointer))
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(pointer.meta.signature()), &e))?;
        Ok(Some(Snapshot { meta: pointer.meta, snapshot: Box::new(file) }))
    }
}

/// Builds a shard snapshot from a consistent RocksDB snapshot, concurrently with `apply`.
pub struct SnapshotBuilder {
    db: Db,
    shard: ShardId,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let (db, shard) = (self.db.clone(), self.shard);
        let pointer = blocking(move || snapshot::export(&db, shard))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let file = tokio::fs::File::open(snapshot::pointer_path(&self.db, &pointer))
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(pointer.meta.signature()), &e))?;
        Ok(Snapshot { meta: pointer.meta, snapshot: Box::new(file) })
    }
}
