//! The replicated stream state in RocksDB: point reads for `apply`, and turning its writes into
//! a `WriteBatch`.

use chorus_streams::{DedupeRecord, StateRead, Write};
use chorus_types::{
    ClientMsgId, MessageRecord, ParticipantRecord, ShardId, StreamKey, StreamRecord, UserId,
};
use rocksdb::WriteBatch;

use crate::db::{Cf, Db, to_json};
use crate::error::{Result, StorageError};
use crate::keys;

/// One shard's state as `apply` reads it.
pub struct RocksState<'a> {
    pub db: &'a Db,
    pub shard: ShardId,
}

impl StateRead for RocksState<'_> {
    type Error = StorageError;

    fn stream(&self, key: &StreamKey) -> Result<Option<StreamRecord>> {
        self.db.get_json(Cf::Streams, &keys::stream_prefix(self.shard, key), "stream")
    }

    fn participant(&self, key: &StreamKey, user: &UserId) -> Result<Option<ParticipantRecord>> {
        self.db.get_json(Cf::Participants, &keys::participant(self.shard, key, user), "participant")
    }

    fn dedupe(&self, key: &StreamKey, by: &str, id: &ClientMsgId) -> Result<Option<DedupeRecord>> {
        self.db.get_json(Cf::Dedupe, &keys::dedupe(self.shard, key, by, id), "dedupe")
    }

    fn message(&self, key: &StreamKey, ordinal: u64) -> Result<Option<MessageRecord>> {
        self.db.get_json(Cf::Messages, &keys::message(self.shard, key, ordinal), "message")
    }
}

/// Adds `apply`'s writes to `batch`, in order.
pub fn write_batch(
    db: &Db,
    shard: ShardId,
    batch: &mut WriteBatch,
    writes: &[Write],
) -> Result<()> {
    for w in writes {
        match w {
            Write::Stream(s) => {
                batch.put_cf(
                    db.cf(Cf::Streams)?,
                    keys::stream_prefix(shard, &s.key()),
                    to_json(s)?,
                );
            }
            Write::Message(m) => {
                let key = keys::message(shard, &m.stream_key(), m.ordinal);
                batch.put_cf(db.cf(Cf::Messages)?, key, to_json(m)?);
            }
            Write::Participant { key, prev, record } => {
                let bytes = to_json(record)?;
                let index = db.cf(Cf::ParticipantIndex)?;
                if let Some(prev) = prev {
                    batch.delete_cf(
                        index,
                        keys::participant_index(shard, key, *prev, &record.user_id),
                    );
                }
                batch.put_cf(
                    index,
                    keys::participant_index(shard, key, record.state, &record.user_id),
                    &bytes,
                );
                batch.put_cf(
                    db.cf(Cf::Participants)?,
                    keys::participant(shard, key, &record.user_id),
                    bytes,
                );
            }
            Write::Dedupe { key, by, id, record } => {
                batch.put_cf(
                    db.cf(Cf::Dedupe)?,
                    keys::dedupe(shard, key, by, id),
                    to_json(record)?,
                );
            }
            Write::Access { key, rows } => {
                let k = keys::stream_prefix(shard, key);
                if rows.is_empty() {
                    batch.delete_cf(db.cf(Cf::Access)?, k);
                } else {
                    batch.put_cf(db.cf(Cf::Access)?, k, to_json(rows)?);
                }
            }
        }
    }
    Ok(())
}
