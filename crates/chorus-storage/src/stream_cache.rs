//! The write thread's copy of the stream records it applied last.
//!
//! Every post reads its stream's record (message count, access levels) and writes it back; the
//! read was a RocksDB point lookup plus a JSON decode per entry per stream, ~6 % of a loaded
//! node's CPU. The write thread is the only writer of stream records (through `apply`) apart
//! from snapshot installs, so it can keep them: a record read from RocksDB is kept as read, a
//! record written is kept once its `WriteBatch` is written, a failed write forgets everything,
//! and a snapshot install forgets its shard before that shard applies again.

use std::cell::RefCell;
use std::collections::HashMap;

use chorus_streams::{DedupeRecord, StateRead};
use chorus_types::{
    ClientMsgId, MessageRecord, ParticipantRecord, ShardId, StreamKey, StreamRecord, UserId,
};

use crate::error::{Result, StorageError};
use crate::rocks_state::RocksState;

/// Most records kept; past it the cache starts over (cheaper than tracking recency, and a
/// working set this large gains little from a cache anyway).
const CAPACITY: usize = 16_384;

/// Owned by the write thread (hence `RefCell`: reads go through `&self`).
#[derive(Default)]
pub struct StreamCache {
    /// By shard, then stream: a lookup borrows the key (a post's hot path allocates nothing
    /// here) and a snapshot install drops one shard's map.
    records: RefCell<HashMap<ShardId, HashMap<StreamKey, StreamRecord>>>,
    /// Records held over all shards.
    len: std::cell::Cell<usize>,
}

impl StreamCache {
    fn get(&self, shard: ShardId, key: &StreamKey) -> Option<StreamRecord> {
        self.records.borrow().get(&shard)?.get(key).cloned()
    }

    /// Keeps `record` as the current state of its stream.
    pub fn keep(&self, shard: ShardId, record: StreamRecord) {
        let mut records = self.records.borrow_mut();
        if self.len.get() >= CAPACITY {
            records.clear();
            self.len.set(0);
        }
        if records.entry(shard).or_default().insert(record.key(), record).is_none() {
            self.len.set(self.len.get() + 1);
        }
    }

    pub fn forget_shard(&self, shard: ShardId) {
        if let Some(gone) = self.records.borrow_mut().remove(&shard) {
            self.len.set(self.len.get() - gone.len());
        }
    }

    pub fn clear(&self) {
        self.records.borrow_mut().clear();
        self.len.set(0);
    }
}

/// A shard's state as `apply` reads it: stream records from the cache when there, everything
/// else from RocksDB.
pub struct CachedState<'a> {
    pub rocks: RocksState<'a>,
    pub cache: &'a StreamCache,
}

impl StateRead for CachedState<'_> {
    type Error = StorageError;

    fn stream(&self, key: &StreamKey) -> Result<Option<StreamRecord>> {
        if let Some(record) = self.cache.get(self.rocks.shard, key) {
            return Ok(Some(record));
        }
        let record = self.rocks.stream(key)?;
        if let Some(r) = &record {
            self.cache.keep(self.rocks.shard, r.clone());
        }
        Ok(record)
    }

    fn participant(&self, key: &StreamKey, user: &UserId) -> Result<Option<ParticipantRecord>> {
        self.rocks.participant(key, user)
    }

    fn dedupe(&self, key: &StreamKey, by: &str, id: &ClientMsgId) -> Result<Option<DedupeRecord>> {
        self.rocks.dedupe(key, by, id)
    }

    fn message(&self, key: &StreamKey, ordinal: u64) -> Result<Option<MessageRecord>> {
        self.rocks.message(key, ordinal)
    }
}
