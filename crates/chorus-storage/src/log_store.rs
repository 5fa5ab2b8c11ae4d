//! `RaftLogStorage` for one shard over the shared database and log writer.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use chorus_types::ShardId;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::db::{Cf, Db, to_json};
use crate::error::{Result, StorageError, blocking};
use crate::keys::{self, RaftMeta};
use crate::log_writer::LogWriter;
use crate::raft_types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};

/// One shard's Raft log and vote. Cheap to clone (it is also its own log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    shard: ShardId,
    writer: LogWriter,
}

impl LogStore {
    pub fn new(db: Db, shard: ShardId, writer: LogWriter) -> Self {
        LogStore { db, shard, writer }
    }

    fn read_range(db: &Db, shard: ShardId, start: u64, end: Option<u64>) -> Result<Vec<Entry>> {
        let cf = db.cf(Cf::RaftLog)?;
        let mut ro = ReadOptions::default();
        let upper = match end {
            Some(e) => keys::log_entry(shard, e).to_vec(),
            None => keys::shard_range(shard).1,
        };
        ro.set_iterate_upper_bound(upper);
        let from = keys::log_entry(shard, start);
        let iter = db.raw().iterator_cf_opt(cf, ro, IteratorMode::From(&from, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item?;
            out.push(serde_json::from_slice(&v).map_err(StorageError::corrupt("raft log entry"))?);
        }
        Ok(out)
    }

    fn last_entry(db: &Db, shard: ShardId) -> Result<Option<Entry>> {
        let cf = db.cf(Cf::RaftLog)?;
        let mut ro = ReadOptions::default();
        let (start, end) = keys::shard_range(shard);
        ro.set_iterate_lower_bound(start);
        ro.set_iterate_upper_bound(end);
        let mut iter = db.raw().iterator_cf_opt(cf, ro, IteratorMode::End);
        match iter.next() {
            Some(item) => {
                let (_, v) = item?;
                Ok(Some(
                    serde_json::from_slice(&v).map_err(StorageError::corrupt("raft log entry"))?,
                ))
            }
            None => Ok(None),
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, what: RaftMeta) -> Result<Option<T>> {
        self.db.get_json(Cf::RaftMeta, &keys::raft_meta(self.shard, what), "raft meta")
    }

    async fn write_meta_durable<T: serde::Serialize>(&self, what: RaftMeta, v: &T) -> Result<()> {
        let db = self.db.clone();
        let key = keys::raft_meta(self.shard, what);
        let bytes = to_json(v)?;
        blocking(move || {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(db.cf(Cf::RaftMeta)?, key, bytes);
            db.raw().write_opt(batch, &wo)?;
            Ok(())
        })
        .await
    }
}

fn read_err(e: StorageError) -> RaftStorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: StorageError) -> RaftStorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => Some(e.saturating_add(1)),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let (db, shard) = (self.db.clone(), self.shard);
        blocking(move || LogStore::read_range(&db, shard, start, end)).await.map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged: Option<LogId> = self.read_meta(RaftMeta::LastPurged).map_err(read_err)?;
        let (db, shard) = (self.db.clone(), self.shard);
        let last = blocking(move || LogStore::last_entry(&db, shard)).await.map_err(read_err)?;
        let last_log_id = last.map(|e| e.log_id).or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        self.write_meta_durable(RaftMeta::Vote, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        self.read_meta(RaftMeta::Vote).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        // Not synced: a lost `committed` only means re-deriving it after restart.
        let key = keys::raft_meta(self.shard, RaftMeta::Committed);
        let bytes = to_json(&committed).map_err(write_err)?;
        let db = self.db.clone();
        blocking(move || {
            db.raw().put_cf(db.cf(Cf::RaftMeta)?, key, bytes)?;
            Ok(())
        })
        .await
        .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(self.read_meta::<Option<LogId>>(RaftMeta::Committed).map_err(read_err)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((e.log_id.index, to_json(&e).map_err(write_err)?));
        }
        self.writer.append(self.shard, encoded, callback).await.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.writer.truncate(self.shard, log_id.index).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let purged = to_json(&log_id).map_err(write_err)?;
        self.writer.purge(self.shard, log_id.index, purged).await.map_err(write_err)
    }
}
