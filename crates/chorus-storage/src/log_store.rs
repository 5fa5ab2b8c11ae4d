//! `RaftLogStorage` for one shard over the shared database and log writer.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chorus_types::ShardId;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions};

use crate::db::{Cf, Db, to_json};
use crate::error::{Result, StorageError, blocking};
use crate::keys::{self, RaftMeta};
use crate::log_writer::LogWriter;
use crate::raft_types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};

/// Recent entries kept in memory per shard (the ones about to be applied or replicated).
const TAIL_CAP: usize = 4096;

/// One shard's Raft log and vote. Cheap to clone (it is also its own log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    shard: ShardId,
    writer: LogWriter,
    /// The newest appended entries, shared with the log readers. `append` returns once the
    /// entries are here, without waiting for the write thread: they are readable at once,
    /// which is all openraft asks of `append`, and apply and replication read them without a
    /// trip to RocksDB. Entries leave on truncate and purge, and old ones at the next append
    /// (openraft 0.9 waits for each append's flush before the next, so they are on disk).
    tail: Arc<Mutex<BTreeMap<u64, Entry>>>,
    /// The highest log index openraft reported committed (0 before the first). Kept in memory
    /// only, for the commit-index and apply-lag gauges: openraft recovers the committed index
    /// from the log on restart, so persisting it would add a write per commit for nothing.
    committed: Arc<AtomicU64>,
}

impl LogStore {
    pub fn new(db: Db, shard: ShardId, writer: LogWriter) -> Self {
        LogStore { db, shard, writer, tail: Arc::default(), committed: Arc::default() }
    }

    /// The committed index as openraft reports it, shared with the metrics collector.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries `[start, end)` from the tail, when the tail holds all of them.
    fn read_tail(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let tail = self.tail();
        let (&first, _) = tail.first_key_value()?;
        let (&last, _) = tail.last_key_value()?;
        if start < first {
            return None;
        }
        let end = end.unwrap_or(last + 1).min(last + 1);
        Some(tail.range(start..end).map(|(_, e)| e.clone()).collect())
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

    /// A point read, but off the async workers all the same: a RocksDB read may hit the disk.
    async fn read_meta<T>(&self, what: RaftMeta) -> Result<Option<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let (db, key) = (self.db.clone(), keys::raft_meta(self.shard, what));
        blocking(move || db.get_json(Cf::RaftMeta, &key, "raft meta")).await
    }

    async fn write_meta_durable<T: serde::Serialize>(&self, what: RaftMeta, v: &T) -> Result<()> {
        let db = self.db.clone();
        let key = keys::raft_meta(self.shard, what);
        let bytes = to_json(v)?;
        blocking(move || {
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(db.cf(Cf::RaftMeta)?, key, bytes);
            db.write_synced(batch)?;
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
        if let Some(entries) = self.read_tail(start, end) {
            return Ok(entries);
        }
        let (db, shard) = (self.db.clone(), self.shard);
        tracing::trace!(%shard, start, ?end, "log read from rocksdb");
        blocking(move || LogStore::read_range(&db, shard, start, end)).await.map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged: Option<LogId> =
            self.read_meta(RaftMeta::LastPurged).await.map_err(read_err)?;
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
        self.read_meta(RaftMeta::Vote).await.map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        let index = committed.map_or(0, |log_id| log_id.index);
        self.committed.fetch_max(index, Ordering::Relaxed);
        Ok(())
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
        let mut fresh = Vec::new();
        for e in entries {
            encoded.push((e.log_id.index, to_json(&e).map_err(write_err)?));
            fresh.push(e);
        }
        {
            let mut tail = self.tail();
            while tail.len() >= TAIL_CAP {
                tail.pop_first();
            }
            for e in fresh {
                tail.insert(e.log_id.index, e);
            }
        }
        tracing::trace!(shard = %self.shard, entries = encoded.len(), "log append");
        self.writer.append(self.shard, encoded, callback).map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        drop(self.tail().split_off(&log_id.index));
        self.writer.truncate(self.shard, log_id.index).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let purged = to_json(&log_id).map_err(write_err)?;
        {
            let mut tail = self.tail();
            *tail = tail.split_off(&(log_id.index + 1));
        }
        self.writer.purge(self.shard, log_id.index, purged).await.map_err(write_err)
    }
}
