//! How `apply` sees state and says what to change.

use std::collections::HashMap;

use chorus_types::{
    AccessRow, ClientMsgId, MessageRecord, Millis, ParticipantRecord, ParticipantState, StreamKey,
    StreamRecord, UserId,
};
use serde::{Deserialize, Serialize};

/// A remembered `clientMsgId`: the ordinal it got and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupeRecord {
    pub ordinal: u64,
    pub time: Millis,
}

/// Point reads of the replicated state. Implemented by the RocksDB store and by test maps.
pub trait StateRead {
    type Error: std::error::Error;

    fn stream(&self, key: &StreamKey) -> Result<Option<StreamRecord>, Self::Error>;
    fn participant(
        &self,
        key: &StreamKey,
        user: &UserId,
    ) -> Result<Option<ParticipantRecord>, Self::Error>;
    /// The first post of `by` (a user id, `""` for the app) with `id` on the stream. Ids are
    /// per poster, so one user's id never answers with another user's message.
    fn dedupe(
        &self,
        key: &StreamKey,
        by: &str,
        id: &ClientMsgId,
    ) -> Result<Option<DedupeRecord>, Self::Error>;
    fn message(&self, key: &StreamKey, ordinal: u64) -> Result<Option<MessageRecord>, Self::Error>;
}

/// One change to the state, in the order `apply` made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Write {
    Stream(StreamRecord),
    Message(MessageRecord),
    /// `prev` is the state before this write, so the store can move the state index entry.
    Participant {
        key: StreamKey,
        prev: Option<ParticipantState>,
        record: ParticipantRecord,
    },
    Dedupe {
        key: StreamKey,
        by: String,
        id: ClientMsgId,
        record: DedupeRecord,
    },
    Access {
        key: StreamKey,
        rows: Vec<AccessRow>,
    },
}

/// The state as a batch sees it: the base store plus the writes of earlier entries.
pub struct Overlay<'r, R> {
    base: &'r R,
    streams: HashMap<StreamKey, StreamRecord>,
    participants: HashMap<(StreamKey, UserId), ParticipantRecord>,
    dedupe: HashMap<(StreamKey, String, ClientMsgId), DedupeRecord>,
    messages: HashMap<(StreamKey, u64), MessageRecord>,
    writes: Vec<Write>,
}

impl<'r, R: StateRead> Overlay<'r, R> {
    pub fn new(base: &'r R) -> Self {
        Overlay {
            base,
            streams: HashMap::new(),
            participants: HashMap::new(),
            dedupe: HashMap::new(),
            messages: HashMap::new(),
            writes: Vec::new(),
        }
    }

    pub fn push(&mut self, write: Write) {
        match &write {
            Write::Stream(s) => {
                self.streams.insert(s.key(), s.clone());
            }
            Write::Message(m) => {
                self.messages.insert((m.stream_key(), m.ordinal), m.clone());
            }
            Write::Participant { key, record, .. } => {
                self.participants.insert((key.clone(), record.user_id.clone()), record.clone());
            }
            Write::Dedupe { key, by, id, record } => {
                self.dedupe.insert((key.clone(), by.clone(), id.clone()), record.clone());
            }
            Write::Access { .. } => {}
        }
        self.writes.push(write);
    }

    pub fn into_writes(self) -> Vec<Write> {
        self.writes
    }
}

impl<R: StateRead> StateRead for Overlay<'_, R> {
    type Error = R::Error;

    fn stream(&self, key: &StreamKey) -> Result<Option<StreamRecord>, Self::Error> {
        match self.streams.get(key) {
            Some(s) => Ok(Some(s.clone())),
            None => self.base.stream(key),
        }
    }

    fn participant(
        &self,
        key: &StreamKey,
        user: &UserId,
    ) -> Result<Option<ParticipantRecord>, Self::Error> {
        match self.participants.get(&(key.clone(), user.clone())) {
            Some(p) => Ok(Some(p.clone())),
            None => self.base.participant(key, user),
        }
    }

    fn dedupe(
        &self,
        key: &StreamKey,
        by: &str,
        id: &ClientMsgId,
    ) -> Result<Option<DedupeRecord>, Self::Error> {
        match self.dedupe.get(&(key.clone(), by.to_owned(), id.clone())) {
            Some(d) => Ok(Some(d.clone())),
            None => self.base.dedupe(key, by, id),
        }
    }

    fn message(&self, key: &StreamKey, ordinal: u64) -> Result<Option<MessageRecord>, Self::Error> {
        match self.messages.get(&(key.clone(), ordinal)) {
            Some(m) => Ok(Some(m.clone())),
            None => self.base.message(key, ordinal),
        }
    }
}
