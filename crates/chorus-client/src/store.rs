//! The local store (redb, one file): the offline queue, and the cache of streams and recent
//! messages that lets an app started offline show what it showed last time.
//!
//! Tables:
//! - `outbox`: seq → queued post (JSON). A post is written here, durably, before `post()`
//!   returns; it leaves when the server acknowledged it. A post the server refused for good
//!   stays, marked failed, until the app discards it.
//! - `meta`: the next outbox seq (never reused, so a seq names one post for the store's life).
//! - `streams`: stream key → stream (JSON), the last value seen.
//! - `messages`: (stream key, ordinal) → message (JSON), the newest [`KEPT_MESSAGES`] of each.
//!
//! redb is synchronous; [`Store::run`] moves every call to the blocking pool so no async
//! worker waits on an fsync.

use std::path::Path;
use std::sync::Arc;

use chorus_types::ApiError;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::ClientError;
use crate::model::{Message, NewMessage, Stream, StreamId};

const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

const NEXT_SEQ: &str = "next_seq";

/// Messages kept per stream in the cache: a screenful or two of chat, not the history.
pub(crate) const KEPT_MESSAGES: u64 = 200;

/// A post in the offline queue, as persisted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueuedPost {
    /// Order of sending: posts go out by ascending seq, which keeps each stream's order.
    pub(crate) seq: u64,
    pub(crate) stream: StreamId,
    /// With `client_msg_id` always set: it is fixed when the post is queued, so every retry
    /// (across reconnects and restarts) carries the same one and the server stores it once.
    pub(crate) message: NewMessage,
    /// The final refusal, once the server refused the post for good.
    pub(crate) failed: Option<ApiError>,
}

/// The local store; cheap to clone.
#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the store file. One process at a time: a second open fails.
    pub(crate) fn open(path: &Path) -> Result<Store, ClientError> {
        Store::init(Database::create(path)?)
    }

    /// A store that lives as long as the client: nothing survives the process.
    pub(crate) fn in_memory() -> Result<Store, ClientError> {
        let backend = redb::backends::InMemoryBackend::new();
        Store::init(Database::builder().create_with_backend(backend)?)
    }

    fn init(db: Database) -> Result<Store, ClientError> {
        // Creating every table up front lets readers open them without a "missing" case.
        let txn = db.begin_write()?;
        txn.open_table(OUTBOX)?;
        txn.open_table(META)?;
        txn.open_table(STREAMS)?;
        txn.open_table(MESSAGES)?;
        txn.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Runs `job` on the blocking pool.
    pub(crate) async fn run<T, F>(&self, job: F) -> Result<T, ClientError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, ClientError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || job(&store)).await.map_err(|_| ClientError::Closed)?
    }

    /// Appends a post to the queue, durably; returns it with its seq.
    pub(crate) fn enqueue(
        &self,
        stream: StreamId,
        message: NewMessage,
    ) -> Result<QueuedPost, ClientError> {
        let txn = self.db.begin_write()?;
        let post = {
            let mut meta = txn.open_table(META)?;
            let seq = meta.get(NEXT_SEQ)?.map(|guard| guard.value()).unwrap_or(1);
            meta.insert(NEXT_SEQ, seq + 1)?;
            let post = QueuedPost { seq, stream, message, failed: None };
            txn.open_table(OUTBOX)?.insert(seq, encode(&post)?.as_slice())?;
            post
        };
        txn.commit()?;
        Ok(post)
    }

    /// Every queued post, failed ones included, in sending order.
    pub(crate) fn queued(&self) -> Result<Vec<QueuedPost>, ClientError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        let mut posts = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            posts.push(decode(value.value())?);
        }
        Ok(posts)
    }

    /// The first post still to send, if any.
    pub(crate) fn next_unsent(&self) -> Result<Option<QueuedPost>, ClientError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OUTBOX)?;
        for entry in table.iter()? {
            let (_, value) = entry?;
            let post: QueuedPost = decode(value.value())?;
            if post.failed.is_none() {
                return Ok(Some(post));
            }
        }
        Ok(None)
    }

    /// The server acknowledged post `seq` as `message`: it leaves the queue and joins the
    /// cache, in one transaction.
    pub(crate) fn settle_synced(&self, seq: u64, message: &Message) -> Result<(), ClientError> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(OUTBOX)?.remove(seq)?;
            let mut messages = txn.open_table(MESSAGES)?;
            insert_message(&mut messages, message)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The server refused post `seq` for good: it stays, marked, and is never sent again.
    pub(crate) fn settle_failed(&self, seq: u64, error: &ApiError) -> Result<(), ClientError> {
        let txn = self.db.begin_write()?;
        {
            let mut outbox = txn.open_table(OUTBOX)?;
            let stored = outbox.get(seq)?.map(|guard| decode::<QueuedPost>(guard.value()));
            if let Some(post) = stored {
                let failed = QueuedPost { failed: Some(error.clone()), ..post? };
                outbox.insert(seq, encode(&failed)?.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a post from the queue whatever its state.
    pub(crate) fn discard(&self, seq: u64) -> Result<(), ClientError> {
        let txn = self.db.begin_write()?;
        txn.open_table(OUTBOX)?.remove(seq)?;
        txn.commit()?;
        Ok(())
    }

    pub(crate) fn put_stream(&self, stream: &Stream) -> Result<(), ClientError> {
        let mut txn = self.db.begin_write()?;
        // A lost cache write costs a refetch, never data: no fsync for it.
        txn.set_durability(Durability::Eventual);
        txn.open_table(STREAMS)?
            .insert(stream.id().store_key().as_str(), encode(stream)?.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    pub(crate) fn stream(&self, id: &StreamId) -> Result<Option<Stream>, ClientError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STREAMS)?;
        let stored = table.get(id.store_key().as_str())?;
        stored.map(|guard| decode(guard.value())).transpose()
    }

    /// Caches messages (of any streams), keeping the newest [`KEPT_MESSAGES`] of each stream.
    pub(crate) fn put_messages(&self, batch: &[Message]) -> Result<(), ClientError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Eventual);
        {
            let mut messages = txn.open_table(MESSAGES)?;
            for message in batch {
                insert_message(&mut messages, message)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The newest `limit` cached messages of a stream, oldest first.
    pub(crate) fn recent_messages(
        &self,
        id: &StreamId,
        limit: usize,
    ) -> Result<Vec<Message>, ClientError> {
        let key = id.store_key();
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        let mut newest_first = Vec::new();
        for entry in table.range((key.as_str(), 0)..=(key.as_str(), u64::MAX))?.rev() {
            if newest_first.len() >= limit {
                break;
            }
            let (_, value) = entry?;
            newest_first.push(decode::<Message>(value.value())?);
        }
        newest_first.reverse();
        Ok(newest_first)
    }
}

fn insert_message(
    table: &mut redb::Table<(&str, u64), &[u8]>,
    message: &Message,
) -> Result<(), ClientError> {
    let key = message.stream().store_key();
    table.insert((key.as_str(), message.ordinal), encode(message)?.as_slice())?;
    // Trim what fell out of the window; only messages older than the newest one inserted
    // can be cut, so a late old message never evicts newer ones.
    let newest = match table.range((key.as_str(), 0)..=(key.as_str(), u64::MAX))?.next_back() {
        Some(entry) => entry?.0.value().1,
        None => return Ok(()),
    };
    if newest > KEPT_MESSAGES {
        let cut = newest - KEPT_MESSAGES;
        table.retain_in((key.as_str(), 0)..=(key.as_str(), cut), |_, _| false)?;
    }
    Ok(())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|error| ClientError::Corrupt(Arc::new(error)))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|error| ClientError::Corrupt(Arc::new(error)))
}

#[cfg(test)]
mod tests {
    use chorus_types::ErrorCode;
    use serde_json::{Map, json};

    use super::*;

    fn message(stream: &StreamId, ordinal: u64) -> Message {
        Message {
            publisher_id: stream.publisher_id.clone(),
            stream_name: stream.name.clone(),
            ordinal,
            message_type: "Chat/message".into(),
            by_user_id: "u".into(),
            content: format!("m{ordinal}"),
            instructions: None,
            sent_time: None,
            client_msg_id: None,
            extra: Map::new(),
        }
    }

    #[test]
    fn queue_survives_reopen_in_order_and_failures_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.redb");
        let room = StreamId::new("a", "r");
        {
            let store = Store::open(&path).unwrap();
            for i in 0..3 {
                let mut post = NewMessage::new("Chat/message", format!("p{i}"));
                post.client_msg_id = Some(format!("c{i}"));
                store.enqueue(room.clone(), post).unwrap();
            }
            store.settle_failed(1, &ApiError::new(ErrorCode::TooLarge, "big")).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let queued = store.queued().unwrap();
        assert_eq!(queued.iter().map(|p| p.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(queued[0].failed.as_ref().map(|e| e.code), Some(ErrorCode::TooLarge));
        let next = store.next_unsent().unwrap().unwrap();
        assert_eq!((next.seq, next.message.client_msg_id.as_deref()), (2, Some("c1")));
        store.settle_synced(2, &message(&room, 7)).unwrap();
        assert_eq!(store.next_unsent().unwrap().unwrap().seq, 3);
        let fresh = store.enqueue(room.clone(), NewMessage::new("Chat/message", "x")).unwrap();
        assert_eq!(fresh.seq, 4, "seqs are never reused");
    }

    #[test]
    fn message_cache_keeps_the_newest_window_per_stream() {
        let store = Store::in_memory().unwrap();
        let room = StreamId::new("a", "r");
        let other = StreamId::new("a", "r2");
        let batch: Vec<Message> = (1..=KEPT_MESSAGES + 50).map(|o| message(&room, o)).collect();
        store.put_messages(&batch).unwrap();
        store.put_messages(&[message(&other, 1)]).unwrap();
        let all = store.recent_messages(&room, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, KEPT_MESSAGES);
        assert_eq!(all.first().unwrap().ordinal, 51);
        assert_eq!(all.last().unwrap().ordinal, KEPT_MESSAGES + 50);
        let last_two = store.recent_messages(&room, 2).unwrap();
        assert_eq!(last_two.iter().map(|m| m.ordinal).collect::<Vec<_>>(), [249, 250]);
        assert_eq!(store.recent_messages(&other, 10).unwrap().len(), 1);
    }

    #[test]
    fn streams_round_trip() {
        let store = Store::in_memory().unwrap();
        let stream: Stream = serde_json::from_value(
            json!({"publisherId": "a", "name": "r", "title": "T", "messageCount": 4, "updatedTime": "x"}),
        )
        .unwrap();
        store.put_stream(&stream).unwrap();
        assert_eq!(store.stream(&stream.id()).unwrap(), Some(stream));
        assert_eq!(store.stream(&StreamId::new("a", "nope")).unwrap(), None);
    }
}
