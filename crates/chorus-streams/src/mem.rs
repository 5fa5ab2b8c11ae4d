//! An in-memory state: the reference store the RocksDB store is compared against, and the
//! store of the domain's unit tests.

use std::collections::BTreeMap;
use std::convert::Infallible;

use chorus_types::{
    AccessRow, ClientMsgId, MessageRecord, ParticipantRecord, StreamKey, StreamRecord, UserId,
};

use crate::state::{DedupeRecord, StateRead, Write};

/// Ordered maps, so two states compare (and print) deterministically.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemState {
    pub streams: BTreeMap<StreamKey, StreamRecord>,
    pub messages: BTreeMap<(StreamKey, u64), MessageRecord>,
    pub participants: BTreeMap<(StreamKey, UserId), ParticipantRecord>,
    pub dedupe: BTreeMap<(StreamKey, String, ClientMsgId), DedupeRecord>,
    pub access: BTreeMap<StreamKey, Vec<AccessRow>>,
}

impl MemState {
    pub fn write(&mut self, writes: Vec<Write>) {
        for w in writes {
            match w {
                Write::Stream(s) => {
                    self.streams.insert(s.key(), s);
                }
                Write::Message(m) => {
                    self.messages.insert((m.stream_key(), m.ordinal), m);
                }
                Write::Participant { key, record, .. } => {
                    self.participants.insert((key, record.user_id.clone()), record);
                }
                Write::Dedupe { key, by, id, record } => {
                    self.dedupe.insert((key, by, id), record);
                }
                Write::Access { key, rows } => {
                    self.access.insert(key, rows);
                }
            }
        }
    }
}

impl StateRead for MemState {
    type Error = Infallible;

    fn stream(&self, key: &StreamKey) -> Result<Option<StreamRecord>, Infallible> {
        Ok(self.streams.get(key).cloned())
    }

    fn participant(
        &self,
        key: &StreamKey,
        user: &UserId,
    ) -> Result<Option<ParticipantRecord>, Infallible> {
        Ok(self.participants.get(&(key.clone(), user.clone())).cloned())
    }

    fn dedupe(
        &self,
        key: &StreamKey,
        by: &str,
        id: &ClientMsgId,
    ) -> Result<Option<DedupeRecord>, Infallible> {
        Ok(self.dedupe.get(&(key.clone(), by.to_owned(), id.clone())).cloned())
    }

    fn message(&self, key: &StreamKey, ordinal: u64) -> Result<Option<MessageRecord>, Infallible> {
        Ok(self.messages.get(&(key.clone(), ordinal)).cloned())
    }
}
