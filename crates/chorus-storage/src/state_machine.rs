//! `RaftStateMachine` for one shard: committed entries go through the pure
//! [`chorus_streams::apply_entry`], and its writes, with the applied log id, go to RocksDB in
//! one batch.
//!
//! The batch is not synced: the Raft log is, and after a crash the state is a consistent
//! prefix (state and applied id are written together), from which openraft re-applies the
//! committed rest of the log.

use std::sync::Arc;
use std::time::Instant;

use chorus_streams::{Overlay, Write, apply_entry};
use chorus_types::{MessageRecord, ShardId};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::WriteBatch;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::db::{Cf, Db, to_json};
use crate::error::{Result, StorageError, blocking};
use crate::keys::{self, RaftMeta};
use crate::raft_types::{
    Entry, LogId, RaftStorageError, ShardResponse, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::rocks_state::{RocksState, write_batch};
use crate::snapshot::{self, AppliedState};

/// Told of every message as it is committed, in commit order per shard.
pub trait ApplyObserver: Send + Sync + 'static {
    fn committed(&self, shard: ShardId, messages: Vec<MessageRecord>);
}

/// One shard's state machine.
pub struct StateMachine {
    db: Db,
    shard: ShardId,
    /// Cached copy of what is stored under `RaftMeta::Applied`.
    applied: AppliedState,
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
        observer: Option<Arc<dyn ApplyObserver>>,
    ) -> Result<StateMachine> {
        let d = db.clone();
        let applied = blocking(move || snapshot::read_applied(&d, shard)).await?;
        Ok(StateMachine { db, shard, applied, observer })
    }

    fn apply_blocking(
        db: &Db,
        shard: ShardId,
        mut applied: AppliedState,
        entries: Vec<Entry>,
    ) -> Result<(Vec<ShardResponse>, AppliedState, Vec<MessageRecord>)> {
        let state = RocksState { db, shard };
        let mut overlay = Overlay::new(&state);
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            applied.0 = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(ShardResponse::default()),
                EntryPayload::Normal(req) => {
                    let outcomes = apply_entry(&mut overlay, &req.envelopes)?;
                    responses.push(ShardResponse { outcomes });
                }
                EntryPayload::Membership(m) => {
                    applied.1 = StoredMembership::new(Some(entry.log_id), m);
                    responses.push(ShardResponse::default());
                }
            }
        }
        let writes = overlay.into_writes();
        let mut batch = WriteBatch::default();
        write_batch(db, shard, &mut batch, &writes)?;
        batch.put_cf(
            db.cf(Cf::RaftMeta)?,
            keys::raft_meta(shard, RaftMeta::Applied),
            to_json(&applied)?,
        );
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(false);
        db.raw().write_opt(batch, &wo)?;
        let messages = writes
            .into_iter()
            .filter_map(|w| match w {
                Write::Message(m) => Some(m),
                _ => None,
            })
            .collect();
        Ok((responses, applied, messages))
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
        let started = Instant::now();
        let (db, shard, applied) = (self.db.clone(), self.shard, self.applied.clone());
        let (responses, applied, messages) =
            blocking(move || StateMachine::apply_blocking(&db, shard, applied, entries))
                .await
                .map_err(sm_write_err)?;
        self.applied = applied;
        crate::metrics::APPLY_SECONDS.observe(started.elapsed().as_secs_f64());
        if let Some(observer) = &self.observer
            && !messages.is_empty()
        {
            observer.committed(self.shard, messages);
        }
        Ok(responses)
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
